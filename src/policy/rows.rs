//! Declared tables in the policy (DESIGN §7): the Cedar schema a `policy.cedar`
//! is validated against when the peer declares tables (each table an entity type
//! `Table::<name>` whose attributes are the row's fields plus `table`, `id` and
//! `owner`; actions `select`, `insert`, `update`, `delete`), and decisions on
//! rows: how far a caller may act on a table before any row is read
//! ([`RowRule::access`]), and each row decided by Cedar.
//!
//! Attribute types: string → `String`, int → `Long`, bool → `Bool`, datetime →
//! `Long` (unix seconds, like `context.now`), float → `String` (its JSON text),
//! `list<T>` → `Set<T>`, `ref<t>` → the key (`String`, or `Long` for an int
//! key), `owner` → the `Peer` who inserted the row; a nullable field is an
//! optional attribute (`resource has tag`); `map` fields are not shown.

use serde_json::Value;

use super::decide::{cedar_context_full, cedar_principal_and_params, principal_matches};
use super::parse::covers_action;
use super::*;
use crate::script::{Access, RowAction};
use crate::tables::{KeyKind, Schema as Tables, Table, Type};

/// The actions on rows, as Cedar names them.
pub fn row_action_uid(a: RowAction) -> EntityUid {
    static UIDS: LazyLock<[EntityUid; 4]> = LazyLock::new(|| {
        let t = EntityTypeName::from_str("Action").expect("a valid type name");
        RowAction::ALL
            .map(|a| EntityUid::from_type_name_and_id(t.clone(), EntityId::new(a.as_str())))
    });
    UIDS[a as usize].clone()
}

fn attr_type(s: &Tables, ty: &Type) -> Option<String> {
    Some(match ty {
        Type::String | Type::Float => "String".into(),
        Type::Int | Type::Datetime => "Long".into(),
        Type::Bool => "Bool".into(),
        Type::List(t) => format!("Set<{}>", attr_type(s, t)?),
        Type::Map => return None,
        Type::Ref(t) => match s.table(t).map(|t| t.key) {
            Some(KeyKind::Int) => "Long".into(),
            _ => "String".into(),
        },
    })
}

fn key_type(t: &Table) -> &'static str {
    match t.key {
        KeyKind::Int => "Long",
        _ => "String",
    }
}

/// [`SCHEMA`] with the declared tables: the text a policy is validated against.
pub fn schema_text(tables: &Tables) -> String {
    let mut s = SCHEMA.to_string();
    if tables.tables.is_empty() {
        return s;
    }
    s.push_str("namespace Table {\n");
    for t in tables.tables.values() {
        let mut attrs = vec![
            "\"table\": String".to_string(),
            format!("\"id\": {}", key_type(t)),
        ];
        if t.owner {
            attrs.push("\"owner\": Peer".into());
        }
        for f in t.fields.values() {
            if let Some(ty) = attr_type(tables, &f.ty) {
                let opt = if f.nullable { "?" } else { "" };
                attrs.push(format!("\"{}\"{opt}: {ty}", f.name));
            }
        }
        s.push_str(&format!(
            "  entity {} = {{ {} }};\n",
            t.name,
            attrs.join(", ")
        ));
    }
    s.push_str("}\n");
    let types: Vec<String> = tables
        .tables
        .keys()
        .map(|n| format!("Table::{n}"))
        .collect();
    s.push_str(&format!(
        "action \"select\", \"insert\", \"update\", \"delete\" appliesTo {{ principal: [Peer], resource: [{}], context: Ctx }};\n",
        types.join(", ")
    ));
    s
}

/// Whether Cedar takes the schema [`schema_text`] makes of `tables` (it always
/// should: for tests and fuzzing).
pub fn check_schema_text(tables: &Tables) -> Result<(), PolicyError> {
    validator_for(tables).map(|_| ())
}

/// The validator of policies of a peer that declares `tables`.
pub(super) fn validator_for(tables: &Tables) -> Result<Validator, PolicyError> {
    let (schema, _warnings) = cedar_policy::Schema::from_cedarschema_str(&schema_text(tables))
        .map_err(|e| PolicyError::new(format!("internal error: the tables' policy schema: {e}")))?;
    Ok(Validator::new(schema))
}

/// What a run may do with the rows of one table: decided once per (action,
/// table), then per row.
pub struct RowRule {
    pub access: Access,
    /// The candidate statements (principal and action matched), for rows.
    set: Option<PolicySet>,
    names: Vec<String>,
    table: String,
    action: RowAction,
    /// What every row's request shares, made once: the principal (and the
    /// params entity), the context.
    base: Option<Base>,
    /// Every candidate's conditions compiled for the native evaluator (and its
    /// resource scope a type or none): rows are decided without Cedar.
    native: Option<Vec<(Effect, Vec<native::Cond>)>>,
}

struct Base {
    /// `Table::<name>`.
    rtype: EntityTypeName,
    rtype_text: String,
    me: EntityUid,
    groups: Vec<EntityUid>,
    caller: String,
    script: String,
    params: Value,
    now: i64,
    entities: Entities,
    context: Context,
}

impl Base {
    fn of(ask: &RowAsk, table: &str) -> Result<Base, PolicyError> {
        let env = env()?;
        let groups: Vec<EntityUid> = (ask.groups.iter())
            .map(|g| EntityUid::from_type_name_and_id(env.group.clone(), EntityId::new(g)))
            .collect();
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(ask.caller));
        let entities = cedar_principal_and_params(env, ask.caller, ask.params, (&me, &groups))?;
        let now = crate::util::now_ns() / 1_000_000_000;
        let context = cedar_context_full(env, ask.caller, ask.script, ask.params, ask.chain, now)?;
        Ok(Base {
            rtype: type_name(&format!("Table::{table}"))?,
            rtype_text: format!("Table::{table}"),
            me,
            caller: ask.caller.to_string(),
            script: ask.script.to_string(),
            params: ask.params.clone(),
            now,
            groups,
            entities,
            context,
        })
    }
}

/// The parts of a run a row decision reads besides the row.
pub struct RowAsk<'a> {
    pub caller: &'a str,
    pub groups: &'a [String],
    pub script: &'a str,
    pub params: &'a Value,
    pub chain: &'a [String],
}

impl Policy {
    /// The rule for `action` on rows of `table` by `ask.caller`.
    pub fn row_rule(&self, ask: &RowAsk, action: RowAction, table: &str) -> RowRule {
        let none = |names| RowRule {
            access: Access::None,
            set: None,
            names,
            table: table.to_string(),
            action,
            base: None,
            native: None,
        };
        let Ok(env) = env() else { return none(vec![]) };
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(ask.caller));
        let groups: Vec<EntityUid> = (ask.groups.iter())
            .map(|g| EntityUid::from_type_name_and_id(env.group.clone(), EntityId::new(g)))
            .collect();
        let auid = row_action_uid(action);
        let rtype = format!("Table::{table}");
        let chosen: Vec<&Meta> = (self.inner.ordered.iter())
            .filter(|m| {
                covers_action(&m.action, &auid)
                    && principal_matches(&m.principal, env, &me, &groups)
                    && match &m.rscope {
                        ResourceScope::Any => true,
                        ResourceScope::Type(t) => *t == rtype,
                        ResourceScope::Uid(t, _) => *t == rtype,
                        ResourceScope::Never => false,
                    }
            })
            .collect();
        let names = chosen.iter().map(|m| m.name.clone()).collect();
        let any_permit = chosen.iter().any(|m| m.effect == Effect::Permit);
        if !any_permit {
            return none(names);
        }
        let unconditional = |m: &&&Meta| {
            !m.conditional && matches!(m.rscope, ResourceScope::Any | ResourceScope::Type(_))
        };
        let all = chosen
            .iter()
            .any(|m| m.effect == Effect::Permit && unconditional(&m))
            && !chosen.iter().any(|m| m.effect == Effect::Forbid);
        let access = if all { Access::All } else { Access::PerRow };
        let per_row = access == Access::PerRow;
        let native = (chosen.iter())
            .map(|m| match (&m.native, &m.rscope) {
                (Some(c), ResourceScope::Any | ResourceScope::Type(_)) => {
                    Some((m.effect, c.clone()))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>();
        RowRule {
            access,
            set: per_row
                .then(|| super::decide::cedar_set(&chosen).ok())
                .flatten(),
            names,
            table: table.to_string(),
            action,
            base: per_row.then(|| Base::of(ask, table).ok()).flatten(),
            native: native.filter(|_| per_row),
        }
    }
}

impl RowRule {
    /// Whether `row` may be acted on; `Err` says which rule denied.
    pub fn decide(&self, tables: &Tables, row: &crate::tables::rows::Row) -> Result<(), String> {
        match self.access {
            Access::All => return Ok(()),
            Access::None => return Err(self.denied("no policy permits it")),
            Access::PerRow => {}
        }
        let (Some(set), Some(base)) = (&self.set, &self.base) else {
            return Err(self.denied("the policy could not be evaluated"));
        };
        let allowed = match &self.native {
            Some(n) => self.evaluate_native(n, base, tables, row),
            None => self.evaluate(set, base, tables, row),
        };
        let allowed = allowed.map_err(|e| self.denied(&e.message))?;
        if allowed {
            Ok(())
        } else {
            Err(self.denied(&format!("the row does not meet {}", self.names.join(", "))))
        }
    }

    fn denied(&self, why: &str) -> String {
        format!("{} on table {}: {why}", self.action.as_str(), self.table)
    }

    /// [`RowRule::evaluate`] without Cedar (the same answer: tests compare them).
    fn evaluate_native(
        &self,
        natives: &[(Effect, Vec<native::Cond>)],
        base: &Base,
        tables: &Tables,
        row: &crate::tables::rows::Row,
    ) -> Result<bool, PolicyError> {
        let t = tables
            .table(&self.table)
            .ok_or_else(|| PolicyError::new(format!("no table {}", self.table)))?;
        let id_text = match row.get(crate::tables::ID) {
            Some(Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
            Some(v) => std::borrow::Cow::Owned(v.to_string()),
            None => std::borrow::Cow::Borrowed(""),
        };
        let attrs = row_attrs(tables, t, row);
        let req = native::Req {
            caller: &base.caller,
            groups: &base.groups,
            resource_type: &base.rtype_text,
            resource_attr: "",
            row: Some(&attrs),
            object: &id_text,
            script: &base.script,
            params: &base.params,
            now: base.now,
        };
        let mut permitted = false;
        for (effect, conds) in natives {
            // An erroring policy does not hold, as in Cedar.
            if native::satisfied(conds, &req).unwrap_or(false) {
                match effect {
                    Effect::Forbid => return Ok(false),
                    Effect::Permit => permitted = true,
                }
            }
        }
        Ok(permitted)
    }

    /// Cedar's answer for one row.
    #[doc(hidden)]
    pub fn decide_via_cedar(
        &self,
        tables: &Tables,
        row: &crate::tables::rows::Row,
    ) -> Option<bool> {
        match self.access {
            Access::All => Some(true),
            Access::None => Some(false),
            Access::PerRow => {
                let (set, base) = (self.set.as_ref()?, self.base.as_ref()?);
                self.evaluate(set, base, tables, row).ok()
            }
        }
    }

    /// Whether rows are decided natively (for tests).
    #[doc(hidden)]
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    fn evaluate(
        &self,
        set: &PolicySet,
        base: &Base,
        tables: &Tables,
        row: &crate::tables::rows::Row,
    ) -> Result<bool, PolicyError> {
        let env = env()?;
        let t = tables
            .table(&self.table)
            .ok_or_else(|| PolicyError::new(format!("no table {}", self.table)))?;
        let id_text = match row.get(crate::tables::ID) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let resource =
            EntityUid::from_type_name_and_id(base.rtype.clone(), EntityId::new(&id_text));
        let attrs = attributes(env, tables, t, row);
        let entity = Entity::new(resource.clone(), attrs, HashSet::new())
            .map_err(|e| PolicyError::new(format!("internal error: row entity: {e}")))?;
        let entities = (base.entities.clone())
            .add_entities([entity], None)
            .map_err(|e| PolicyError::new(format!("internal error: {e}")))?;
        let request = cedar_policy::Request::new(
            base.me.clone(),
            row_action_uid(self.action),
            resource,
            base.context.clone(),
            None,
        )
        .map_err(|e| PolicyError::new(format!("internal error: {e}")))?;
        let response = env.authorizer.is_authorized(&request, set, &entities);
        Ok(response.decision() == cedar_policy::Decision::Allow)
    }
}

/// The row's attributes as Cedar values (nulls and maps left out).
fn attributes(
    env: &Env,
    tables: &Tables,
    t: &Table,
    row: &crate::tables::rows::Row,
) -> HashMap<String, RestrictedExpression> {
    let mut out = HashMap::new();
    out.insert(
        "table".to_string(),
        RestrictedExpression::new_string(t.name.clone()),
    );
    if let Some(id) = row
        .get(crate::tables::ID)
        .and_then(|v| value(&t.column_type(crate::tables::ID).unwrap_or(Type::String), v))
    {
        out.insert("id".to_string(), id);
    }
    if t.owner {
        if let Some(Value::String(o)) = row.get(crate::tables::OWNER) {
            let uid = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(o));
            out.insert(
                "owner".to_string(),
                RestrictedExpression::new_entity_uid(uid),
            );
        }
    }
    for f in t.fields.values() {
        if attr_type(tables, &f.ty).is_none() {
            continue;
        }
        if let Some(v) = row.get(&f.name).and_then(|v| value(&f.ty, v)) {
            out.insert(f.name.clone(), v);
        }
    }
    out
}

/// The row's attributes for the native evaluator: the same as [`attributes`].
fn row_attrs<'a>(
    tables: &Tables,
    t: &Table,
    row: &'a crate::tables::rows::Row,
) -> Vec<(&'a str, native::RowAttr<'a>)> {
    let mut out = Vec::with_capacity(t.fields.len() + 3);
    out.push((
        "table",
        native::RowAttr::Str(std::borrow::Cow::Owned(t.name.clone())),
    ));
    let id_ty = t.column_type(crate::tables::ID).unwrap_or(Type::String);
    if let Some((k, v)) = row.get_key_value(crate::tables::ID) {
        if let Some(a) = row_value(&id_ty, v) {
            out.push((k.as_str(), a));
        }
    }
    if t.owner {
        if let Some((k, Value::String(o))) = row.get_key_value(crate::tables::OWNER) {
            out.push((k.as_str(), native::RowAttr::Peer(o)));
        }
    }
    for f in t.fields.values() {
        if attr_type(tables, &f.ty).is_none() {
            continue;
        }
        if let Some((k, v)) = row.get_key_value(&f.name) {
            if let Some(a) = row_value(&f.ty, v) {
                out.push((k.as_str(), a));
            }
        }
    }
    out
}

fn row_value<'a>(ty: &Type, v: &'a Value) -> Option<native::RowAttr<'a>> {
    use native::RowAttr;
    Some(match (ty, v) {
        (_, Value::Null) => return None,
        (Type::Bool, Value::Bool(b)) => RowAttr::Bool(*b),
        (Type::Int | Type::Ref(_), Value::Number(n)) => RowAttr::Long(n.as_i64()?),
        (Type::Float, Value::Number(n)) => RowAttr::Str(std::borrow::Cow::Owned(n.to_string())),
        (Type::Datetime, Value::String(s)) => RowAttr::Long(
            crate::util::parse_rfc3339(s)
                .ok()?
                .div_euclid(1_000_000_000),
        ),
        (Type::List(t), Value::Array(a)) => {
            RowAttr::Set(a.iter().filter_map(|x| row_value(t, x)).collect())
        }
        (_, Value::String(s)) => RowAttr::Str(std::borrow::Cow::Borrowed(s)),
        _ => return None,
    })
}

fn value(ty: &Type, v: &Value) -> Option<RestrictedExpression> {
    Some(match (ty, v) {
        (_, Value::Null) => return None,
        (Type::Bool, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
        (Type::Int | Type::Ref(_), Value::Number(n)) => RestrictedExpression::new_long(n.as_i64()?),
        (Type::Float, Value::Number(n)) => RestrictedExpression::new_string(n.to_string()),
        (Type::Datetime, Value::String(s)) => RestrictedExpression::new_long(
            crate::util::parse_rfc3339(s)
                .ok()?
                .div_euclid(1_000_000_000),
        ),
        (Type::List(t), Value::Array(a)) => {
            RestrictedExpression::new_set(a.iter().filter_map(|x| value(t, x)))
        }
        (_, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
        _ => return None,
    })
}

impl Policy {
    /// Parse `text` and validate it against [`SCHEMA`] with `tables` declared.
    pub fn parse_for(text: &str, tables: &Tables) -> Result<Policy, PolicyError> {
        if tables.tables.is_empty() {
            return Policy::parse(text);
        }
        let validator = validator_for(tables)?;
        Policy::parse_validated(text, Some(&validator))
    }
}
