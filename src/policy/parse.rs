//! Reading a `policy.cedar`: Cedar's parse, strict validation against [`SCHEMA`],
//! the `@id` and `@max_*` annotations, and what each statement's conditions need
//! at decision time (compiled for the native evaluator when they can be).

use super::*;

impl Policy {
    /// The empty policy: denies everything.
    pub fn empty() -> Policy {
        Policy {
            inner: Arc::new(Inner {
                text: String::new(),
                meta: HashMap::new(),
                ordered: Vec::new(),
                warnings: Vec::new(),
                cache: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Parse `text`, validate it against [`SCHEMA`] (strict mode) and check the
    /// `@max_*` / `@id` annotations. Templates (`?principal`) are rejected.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, true)
    }

    /// [`Policy::parse`] without the schema validation, so that tests can
    /// reach evaluation errors (type errors, missing attributes and tags) that
    /// validated policies cannot have.
    #[cfg(test)]
    pub(super) fn parse_unvalidated(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, false)
    }

    fn parse_with(text: &str, validate: bool) -> Result<Policy, PolicyError> {
        Policy::parse_checked(text, validate, None)
    }

    /// [`Policy::parse`] against `validator` (a peer's declared tables, see
    /// `rows.rs`) instead of [`SCHEMA`]'s.
    pub(super) fn parse_validated(
        text: &str,
        validator: Option<&Validator>,
    ) -> Result<Policy, PolicyError> {
        Policy::parse_checked(text, true, validator)
    }

    fn parse_checked(
        text: &str,
        validate: bool,
        validator: Option<&Validator>,
    ) -> Result<Policy, PolicyError> {
        let env = env()?;
        let set = parse_set(text)?;
        // File order and byte offset of every policy (Cedar numbers them policy0..).
        let mut policies: Vec<&cedar_policy::Policy> = set.policies().collect();
        policies.sort_by_key(|p| auto_index(id_str(p.id())).unwrap_or(usize::MAX));
        let starts = locate(text, &policies);
        let validator = validator.unwrap_or(&env.validator);
        let warnings = check_schema(validator, &set, text, &starts, validate)?;

        let run = &env.actions[Action::Run.index()];
        let mut meta = HashMap::new();
        let mut ordered = Vec::new();
        let mut names = HashSet::new();
        for (index, p) in policies.iter().enumerate() {
            let (start, src) = starts
                .get(id_str(p.id()))
                .map(|(s, t)| (*s, t.as_str()))
                .unwrap_or((0, ""));
            let in_file = InFile { text, start, src };
            let (name, limits) = annotations(p, &in_file, run)?;
            if !names.insert(name.clone()) {
                return Err(in_file.error(
                    p,
                    "id",
                    format!("duplicate policy name `{name}` (@id must be unique)"),
                ));
            }
            let (eval, needs) = unscoped(p);
            let m = Meta {
                index,
                name,
                effect: p.effect(),
                limits,
                principal: p.principal_constraint(),
                action: p.action_constraint(),
                conditional: p.has_non_scope_constraint(),
                rscope: ResourceScope::of(&p.resource_constraint()),
                native: compile_native(p),
                needs,
                eval,
            };
            meta.insert(p.id().to_string(), m.clone());
            ordered.push(m);
        }

        Ok(Policy {
            inner: Arc::new(Inner {
                text: text.to_string(),
                meta,
                ordered,
                warnings,
                cache: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// The source text this policy was parsed from.
    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// Number of policies (permit + forbid statements).
    pub fn len(&self) -> usize {
        self.inner.ordered.len()
    }

    /// True for an empty policy set (denies everything).
    pub fn is_empty(&self) -> bool {
        self.inner.ordered.is_empty()
    }

    /// Validator warnings (e.g. a policy that can never apply), `line:col: msg`.
    pub fn warnings(&self) -> &[String] {
        &self.inner.warnings
    }
}

/// Cedar's parse of `text`, refusing templates (`?principal`, `?resource`).
fn parse_set(text: &str) -> Result<PolicySet, PolicyError> {
    let set = match PolicySet::from_str(text) {
        Ok(s) => s,
        Err(errs) => {
            let msgs: Vec<String> = errs
                .iter()
                .map(|e| {
                    let (m, off) = detail(e);
                    at(text, off, &m)
                })
                .collect();
            return Err(PolicyError::new(msgs.join("; ")));
        }
    };
    if let Some(t) = set.templates().next() {
        let off = ["?principal", "?resource"]
            .iter()
            .filter_map(|slot| text.find(slot))
            .min();
        return Err(PolicyError::new(at(
            text,
            off,
            &format!(
                "policy `{}` is a template (uses ?principal/?resource); templates are not supported",
                t.id()
            ),
        )));
    }
    Ok(set)
}

/// Each policy's byte offset in `text` and its own text, by policy id.
fn locate(text: &str, policies: &[&cedar_policy::Policy]) -> HashMap<String, (usize, String)> {
    let mut starts = HashMap::new();
    let mut cursor = 0;
    for p in policies {
        let src = p.to_cedar().unwrap_or_default();
        let start = text
            .get(cursor..)
            .and_then(|rest| rest.find(&src))
            .map(|o| o + cursor);
        if let Some(s) = start {
            cursor = s + src.len();
        }
        starts.insert(p.id().to_string(), (start.unwrap_or(0), src));
    }
    starts
}

/// Strict validation against [`SCHEMA`]: its errors refuse the policy (when
/// `validate`), its warnings are kept, each with its line and column.
fn check_schema(
    validator: &Validator,
    set: &PolicySet,
    text: &str,
    starts: &HashMap<String, (usize, String)>,
    validate: bool,
) -> Result<Vec<String>, PolicyError> {
    let start_of = |id: &PolicyId| starts.get(id_str(id)).map(|(s, _)| *s);
    let result = validator.validate(set, ValidationMode::Strict);
    let errors: Vec<String> = result
        .validation_errors()
        .map(|e| {
            let (m, off) = detail(e);
            at(text, off.or_else(|| start_of(e.policy_id())), &m)
        })
        .collect();
    if validate && !errors.is_empty() {
        return Err(PolicyError::new(errors.join("; ")));
    }
    Ok(result
        .validation_warnings()
        .map(|w| {
            let (m, off) = detail(w);
            at(text, off.or_else(|| start_of(w.policy_id())), &m)
        })
        .collect())
}

/// Where one policy is in the file, for errors about its annotations.
struct InFile<'a> {
    text: &'a str,
    start: usize,
    src: &'a str,
}

impl InFile<'_> {
    /// An error about annotation `@key` of `p`, at that annotation.
    fn error(&self, p: &cedar_policy::Policy, key: &str, msg: String) -> PolicyError {
        let off = self
            .src
            .find(&format!("@{key}"))
            .map_or(self.start, |o| self.start + o);
        let msg = format!("for policy `{}`, {msg}", p.id());
        PolicyError::new(at(self.text, Some(off), &msg))
    }
}

/// A policy's name (`@id`, else Cedar's) and the sandbox limits of its `@max_*`
/// annotations, which only permits that can match `run` may carry.
fn annotations(
    p: &cedar_policy::Policy,
    in_file: &InFile,
    run: &EntityUid,
) -> Result<(String, Limits), PolicyError> {
    let mut name = p.id().to_string();
    let mut limits = Limits::default();
    for (key, value) in p.annotations() {
        if key == "id" {
            if value.is_empty() {
                return Err(in_file.error(p, key, "@id must not be empty".into()));
            }
            name = value.to_string();
        } else if key.starts_with("max_") {
            let known = ANNOTATED_LIMITS.contains(&key);
            let Some(slot) = limits.field_mut(key).filter(|_| known) else {
                return Err(in_file.error(
                    p,
                    key,
                    format!(
                        "unknown sandbox limit @{key} (known: {})",
                        ANNOTATED_LIMITS.join(", ")
                    ),
                ));
            };
            let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<u64>().ok()
            } else {
                None
            };
            let Some(n) = parsed else {
                return Err(in_file.error(
                    p,
                    key,
                    format!("@{key}(\"{value}\") is not a non-negative integer"),
                ));
            };
            *slot = Some(n);
            if p.effect() != Effect::Permit {
                return Err(in_file.error(
                    p,
                    key,
                    format!("@{key} is only allowed on permit policies"),
                ));
            }
            if !covers_action(&p.action_constraint(), run) {
                return Err(in_file.error(
                    p,
                    key,
                    format!(
                        "@{key} has no effect: sandbox limits apply only to permits that can match Action::\"run\""
                    ),
                ));
            }
        }
    }
    Ok((name, limits))
}

/// The native form of `p`'s conditions (see [`native::compile`]).
pub(super) fn compile_native(p: &cedar_policy::Policy) -> Option<Vec<native::Cond>> {
    if !p.has_non_scope_constraint() {
        return Some(Vec::new());
    }
    native::compile(p.to_json().ok()?.get("conditions")?)
}

/// `p` with principal and action scope unconstrained, plus its needs.
pub(super) fn unscoped(p: &cedar_policy::Policy) -> (cedar_policy::Policy, Needs) {
    let needs = Needs::of(p);
    let rewritten = p.to_json().ok().and_then(|mut json| {
        let obj = json.as_object_mut()?;
        obj.insert("principal".into(), serde_json::json!({ "op": "All" }));
        obj.insert("action".into(), serde_json::json!({ "op": "All" }));
        cedar_policy::Policy::from_json(Some(p.id().clone()), json).ok()
    });
    match rewritten {
        Some(q) => (q, needs),
        None => {
            let scope_needs_groups = matches!(
                p.principal_constraint(),
                PrincipalConstraint::In(_) | PrincipalConstraint::IsIn(..)
            );
            (
                p.clone(),
                Needs {
                    principal: needs.principal || scope_needs_groups,
                    ..needs
                },
            )
        }
    }
}

pub(super) fn scan(
    v: &serde_json::Value,
    needs: &mut Needs,
    ctx_vars: &mut usize,
    ctx_fields: &mut usize,
) {
    match v {
        serde_json::Value::Object(map) => {
            // An entity literal can name the principal, the resource or the
            // params entity (`Peer::"alice" in Group::"g"`, `Key::"k".key`):
            // provide the entity it may denote, as plain Cedar would see it.
            if let Some(ty) = map
                .get("__entity")
                .and_then(|e| e.get("type"))
                .and_then(|t| t.as_str())
            {
                match ty {
                    "Peer" => needs.principal = true,
                    "Params" => needs.ctx_params = true,
                    t if Action::ALL.iter().any(|a| a.resource_shape().0 == t) => {
                        needs.resource = true
                    }
                    _ => {}
                }
            }
            if let Some(var) = map.get("Var").and_then(|v| v.as_str()) {
                match var {
                    "principal" => needs.principal = true,
                    "resource" => needs.resource = true,
                    "context" => *ctx_vars += 1,
                    _ => {}
                }
            }
            for op in [".", "has"] {
                let Some(inner) = map.get(op) else { continue };
                let is_context = inner.get("left").and_then(|l| l.get("Var"))
                    == Some(&serde_json::Value::from("context"));
                if !is_context {
                    continue;
                }
                *ctx_fields += 1;
                match inner.get("attr").and_then(|a| a.as_str()) {
                    Some("script") => needs.ctx_script = true,
                    Some("params") => needs.ctx_params = true,
                    Some("params_json") => needs.ctx_params_json = true,
                    Some("now") => needs.ctx_now = true,
                    Some("origin" | "chain") => needs.ctx_chain = true,
                    // unknown field (cannot pass validation): provide all
                    _ => *ctx_fields = 0,
                }
            }
            for child in map.values() {
                scan(child, needs, ctx_vars, ctx_fields);
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                scan(child, needs, ctx_vars, ctx_fields);
            }
        }
        _ => {}
    }
}

/// `line:col` (1-based, col in characters) of a byte offset into `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

pub(super) fn at(text: &str, offset: Option<usize>, msg: &str) -> String {
    match offset {
        Some(o) => {
            let (l, c) = line_col(text, o);
            format!("{l}:{c}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// Cedar diagnostic -> (message incl. help, first label offset).
pub(super) fn detail<E>(e: &E) -> (String, Option<usize>)
where
    for<'a> cedar_policy::ffi::DetailedError: From<&'a E>,
{
    let d = cedar_policy::ffi::DetailedError::from(e);
    let mut msg = d.message;
    if let Some(help) = d.help {
        msg.push_str(&format!(" (help: {help})"));
    }
    (msg, d.source_locations.first().map(|l| l.loc.start))
}

pub(super) fn id_str(id: &PolicyId) -> &str {
    AsRef::<str>::as_ref(id)
}

/// `policyN` -> N
pub(super) fn auto_index(id: &str) -> Option<usize> {
    id.strip_prefix("policy")?.parse().ok()
}

pub(super) fn covers_action(c: &ActionConstraint, action: &EntityUid) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action),
    }
}
