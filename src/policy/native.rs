//! A native evaluator for the common subset of Cedar `when` / `unless`
//! conditions, with Cedar's semantics (see [`compile`] for the subset).
//!
//! [`compile`] turns a policy's `conditions` (its EST JSON form, as produced by
//! `Policy::to_json()`) into a small expression tree, or returns `None` when
//! anything falls outside the subset; such policies are left to Cedar.
//! [`satisfied`] evaluates the tree against one request without building any
//! Cedar entity, context or request, and without allocating unless a value has
//! to be materialized (`context.params_json`, a non-string params tag, a set
//! compared with `==`) or an error is reported.
//!
//! The entity store it models is the one `decide` gives Cedar:
//! * the principal `Peer::"<caller>"`: attribute `name`, parents = the
//!   caller's groups;
//! * the resource (its type depends on the action): one string attribute,
//!   no parents;
//! * `Params::""`: no attributes, one string tag per top-level params key;
//! * nothing else (any other entity, e.g. a `Group`, does not exist: it has
//!   no attributes, no tags and no parents).

use std::borrow::Cow;

use cedar_policy::EntityUid;
use serde_json::Value as Json;

/// One `when` (`want == true`) or `unless` (`want == false`) clause.
#[derive(Debug, Clone)]
pub(super) struct Cond {
    want: bool,
    body: Expr,
}

/// Context record fields the subset can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtxField {
    Script,
    Now,
    ParamsJson,
    Params,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A `like` pattern: the literal runs between its wildcards (so `n`
/// wildcards give `n + 1` runs, possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    runs: Vec<Box<str>>,
}

impl Pattern {
    /// Cedar `like`: every `*` matches any sequence of characters (an
    /// escaped `\*` is a literal run character). Greedy: the first run is a
    /// prefix, the last a suffix, the ones between are found leftmost-first.
    fn matches(&self, s: &str) -> bool {
        let Some((first, rest)) = self.runs.split_first() else {
            return s.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return same(s.as_bytes(), first.as_bytes());
        };
        let (first, last) = (first.as_bytes(), last.as_bytes());
        if s.len() < first.len() || !same(&s.as_bytes()[..first.len()], first) {
            return false;
        }
        // a whole UTF-8 string matched: the cut is on a character boundary
        let mut tail = &s[first.len()..];
        for run in middle {
            match tail.find(&**run) {
                Some(at) => tail = &tail[at + run.len()..],
                None => return false,
            }
        }
        let tail = tail.as_bytes();
        tail.len() >= last.len() && same(&tail[tail.len() - last.len()..], last)
    }
}

/// Byte equality without a `memcmp` call for the short strings policies
/// compare (keys, names, type names).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[derive(Debug, Clone)]
enum Expr {
    Bool(bool),
    Long(i64),
    Str(Box<str>),
    /// entity literal: (type, id)
    Entity(Box<str>, Box<str>),
    Principal,
    Resource,
    Ctx(CtxField),
    Set(Vec<Expr>),
    Attr(Box<Expr>, Box<str>),
    Has(Box<Expr>, Box<str>),
    HasTag(Box<Expr>, Box<Expr>),
    GetTag(Box<Expr>, Box<Expr>),
    Like(Box<Expr>, Pattern),
    Is(Box<Expr>, Box<str>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    In(Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Compile a policy's EST `conditions` array (`[{kind, body}]`), or `None`
/// if some construct is outside the subset:
///
/// literals (bool, long, string, entity), sets; `principal`, `resource`,
/// `context.<script|now|params_json|params>`; `.attr` and `has attr` (not on
/// `context` itself); `.hasTag(s)` / `.getTag(s)`; `like`; `is` (and
/// `is .. in`); `==`, `!=`, `<`, `<=`, `>`, `>=`; `&&`, `||`, `!`; `in`;
/// `if .. then .. else`.
pub(super) fn compile(conditions: &Json) -> Option<Vec<Cond>> {
    conditions
        .as_array()?
        .iter()
        .map(|c| {
            let want = match c.get("kind")?.as_str()? {
                "when" => true,
                "unless" => false,
                _ => return None,
            };
            Some(Cond {
                want,
                body: expr(c.get("body")?)?,
            })
        })
        .collect()
}

fn boxed(v: &Json) -> Option<Box<Expr>> {
    expr(v).map(Box::new)
}

fn expr(v: &Json) -> Option<Expr> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let (op, arg) = obj.iter().next()?;
    let field = |name: &str| arg.get(name);
    let binary = |f: fn(Box<Expr>, Box<Expr>) -> Expr| {
        Some(f(boxed(field("left")?)?, boxed(field("right")?)?))
    };
    let cmp = |c: Cmp| {
        Some(Expr::Cmp(
            c,
            boxed(field("left")?)?,
            boxed(field("right")?)?,
        ))
    };
    let is_context = |e: &Json| e.get("Var").and_then(Json::as_str) == Some("context");
    match op.as_str() {
        "Value" => literal(arg),
        "Var" => match arg.as_str()? {
            "principal" => Some(Expr::Principal),
            "resource" => Some(Expr::Resource),
            // `action`, and `context` as a whole record: left to Cedar
            _ => None,
        },
        "Set" => Some(Expr::Set(
            arg.as_array()?.iter().map(expr).collect::<Option<_>>()?,
        )),
        "." => {
            let left = field("left")?;
            let attr = field("attr")?.as_str()?;
            if is_context(left) {
                Some(Expr::Ctx(ctx_field(attr)?))
            } else {
                Some(Expr::Attr(boxed(left)?, attr.into()))
            }
        }
        "has" => {
            let left = field("left")?;
            if is_context(left) {
                return None;
            }
            Some(Expr::Has(boxed(left)?, field("attr")?.as_str()?.into()))
        }
        "hasTag" => binary(Expr::HasTag),
        "getTag" => binary(Expr::GetTag),
        "like" => Some(Expr::Like(
            boxed(field("left")?)?,
            pattern(field("pattern")?)?,
        )),
        "is" => is_expr(arg),
        "==" => binary(Expr::Eq),
        "!=" => binary(Expr::Ne),
        "<" => cmp(Cmp::Lt),
        "<=" => cmp(Cmp::Le),
        ">" => cmp(Cmp::Gt),
        ">=" => cmp(Cmp::Ge),
        "&&" => binary(Expr::And),
        "||" => binary(Expr::Or),
        "in" => binary(Expr::In),
        "!" => Some(Expr::Not(boxed(field("arg")?)?)),
        "if-then-else" => Some(Expr::If(
            boxed(field("if")?)?,
            boxed(field("then")?)?,
            boxed(field("else")?)?,
        )),
        _ => None,
    }
}

/// `e is T`, and `e is T in X` as `e is T && e in X`.
fn is_expr(arg: &Json) -> Option<Expr> {
    let left = arg.get("left")?;
    let ty: Box<str> = arg.get("entity_type")?.as_str()?.into();
    let is = Expr::Is(boxed(left)?, ty);
    match arg.get("in") {
        None | Some(Json::Null) => Some(is),
        Some(x) => Some(Expr::And(
            Box::new(is),
            Box::new(Expr::In(boxed(left)?, boxed(x)?)),
        )),
    }
}

/// A field of `context` the native evaluator reads (`context.params` as the
/// `Params` entity); others are left to Cedar.
fn ctx_field(attr: &str) -> Option<CtxField> {
    Some(match attr {
        "script" => CtxField::Script,
        "now" => CtxField::Now,
        "params_json" => CtxField::ParamsJson,
        "params" => CtxField::Params,
        _ => return None,
    })
}

/// A `like` pattern from its JSON form: literal runs between wildcards.
fn pattern(elems: &Json) -> Option<Pattern> {
    let mut runs = vec![String::new()];
    for elem in elems.as_array()? {
        match elem {
            Json::String(s) if s == "Wildcard" => runs.push(String::new()),
            Json::Object(o) if o.len() == 1 => {
                runs.last_mut()?.push_str(o.get("Literal")?.as_str()?)
            }
            _ => return None,
        }
    }
    let runs = runs.into_iter().map(String::into_boxed_str).collect();
    Some(Pattern { runs })
}

fn literal(v: &Json) -> Option<Expr> {
    match v {
        Json::Bool(b) => Some(Expr::Bool(*b)),
        Json::Number(n) => Some(Expr::Long(n.as_i64()?)),
        Json::String(s) => Some(Expr::Str(s.as_str().into())),
        Json::Object(o) if o.len() == 1 => {
            let e = o.get("__entity")?.as_object()?;
            if e.len() != 2 {
                return None;
            }
            Some(Expr::Entity(
                e.get("type")?.as_str()?.into(),
                e.get("id")?.as_str()?.into(),
            ))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Evaluation

/// An attribute of a row of a declared table (the resource of a row action),
/// borrowed from the row where it can be.
#[derive(Debug)]
pub(super) enum RowAttr<'a> {
    Bool(bool),
    Long(i64),
    Str(Cow<'a, str>),
    /// `owner`: the entity `Peer::"<name>"`.
    Peer(&'a str),
    Set(Vec<RowAttr<'a>>),
}

impl<'a> RowAttr<'a> {
    fn val(&'a self) -> Val<'a> {
        match self {
            RowAttr::Bool(b) => Val::Bool(*b),
            RowAttr::Long(n) => Val::Long(*n),
            RowAttr::Str(s) => Val::Str(Cow::Borrowed(s)),
            RowAttr::Peer(p) => Val::Entity(PEER, p),
            RowAttr::Set(items) => Val::Set(items.iter().map(RowAttr::val).collect()),
        }
    }
}

/// The request as the evaluator sees it.
pub(super) struct Req<'a> {
    pub caller: &'a str,
    /// the caller's groups (all of type `Group`)
    pub groups: &'a [EntityUid],
    pub resource_type: &'a str,
    pub resource_attr: &'static str,
    /// For a row action: the row's attributes (then `resource_attr` is unused).
    pub row: Option<&'a [(&'a str, RowAttr<'a>)]>,
    pub object: &'a str,
    pub script: &'a str,
    pub params: &'a Json,
    pub now: i64,
}

const PEER: &str = "Peer";
const GROUP: &str = "Group";
const PARAMS: &str = "Params";

#[derive(Debug)]
enum Val<'a> {
    Bool(bool),
    Long(i64),
    Str(Cow<'a, str>),
    /// (type, id)
    Entity(&'a str, &'a str),
    Set(Vec<Val<'a>>),
}

impl Val<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Bool(_) => "bool",
            Val::Long(_) => "long",
            Val::Str(_) => "string",
            Val::Entity(..) => "entity",
            Val::Set(_) => "set",
        }
    }

    fn type_error(&self, expected: &str) -> EvalError {
        EvalError(format!(
            "type error: expected {expected}, got {}",
            self.type_name()
        ))
    }

    fn bool(&self) -> Result<bool, EvalError> {
        match self {
            Val::Bool(b) => Ok(*b),
            other => Err(other.type_error("bool")),
        }
    }

    fn long(&self) -> Result<i64, EvalError> {
        match self {
            Val::Long(n) => Ok(*n),
            other => Err(other.type_error("long")),
        }
    }

    fn entity(&self) -> Result<(&str, &str), EvalError> {
        match self {
            Val::Entity(t, id) => Ok((t, id)),
            other => Err(other.type_error("entity")),
        }
    }

    fn string(&self) -> Result<&str, EvalError> {
        match self {
            Val::Str(s) => Ok(s),
            other => Err(other.type_error("string")),
        }
    }
}

/// Cedar `==`: values of different types are unequal; sets compare as sets.
fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Long(x), Val::Long(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Entity(t1, i1), Val::Entity(t2, i2)) => t1 == t2 && i1 == i2,
        (Val::Set(x), Val::Set(y)) => {
            x.iter().all(|v| y.iter().any(|w| equal(v, w)))
                && y.iter().all(|w| x.iter().any(|v| equal(v, w)))
        }
        _ => false,
    }
}

fn entity_str(ty: &str, id: &str) -> String {
    format!("{ty}::\"{}\"", id.escape_debug())
}

impl<'a> Req<'a> {
    fn is_principal(&self, ty: &str, id: &str) -> bool {
        ty == PEER && id == self.caller
    }

    fn is_resource(&self, ty: &str, id: &str) -> bool {
        ty == self.resource_type && id == self.object
    }

    fn is_params(&self, ty: &str, id: &str) -> bool {
        ty == PARAMS && id.is_empty()
    }

    /// Cedar `a in b` for entities: equal, or `b` is an ancestor of `a` (only
    /// the principal has ancestors: its groups).
    fn within(&self, (t1, i1): (&str, &str), (t2, i2): (&str, &str)) -> bool {
        (t1 == t2 && i1 == i2)
            || (self.is_principal(t1, i1)
                && t2 == GROUP
                && self.groups.iter().any(|g| g.id().unescaped() == i2))
    }

    fn attr(&self, (ty, id): (&'a str, &'a str), attr: &str) -> Result<Val<'a>, EvalError> {
        if self.is_principal(ty, id) {
            if attr == "name" {
                return Ok(Val::Str(Cow::Borrowed(self.caller)));
            }
        } else if self.is_resource(ty, id) {
            if let Some(row) = self.row {
                if let Some((_, a)) = row.iter().find(|(n, _)| *n == attr) {
                    return Ok(a.val());
                }
            } else if attr == self.resource_attr {
                return Ok(Val::Str(Cow::Borrowed(self.object)));
            }
        } else if !self.is_params(ty, id) {
            return Err(EvalError(format!(
                "entity `{}` does not exist",
                entity_str(ty, id)
            )));
        }
        Err(EvalError(format!(
            "`{}` does not have the attribute `{attr}`",
            entity_str(ty, id)
        )))
    }

    fn has(&self, (ty, id): (&str, &str), attr: &str) -> bool {
        (self.is_principal(ty, id) && attr == "name")
            || (self.is_resource(ty, id)
                && match self.row {
                    Some(row) => row.iter().any(|(n, _)| *n == attr),
                    None => attr == self.resource_attr,
                })
    }

    fn tag(&self, (ty, id): (&str, &str), tag: &str) -> Option<Val<'a>> {
        if !self.is_params(ty, id) {
            return None;
        }
        let Json::Object(map) = self.params else {
            return None;
        };
        Some(Val::Str(match map.get(tag)? {
            Json::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        }))
    }

    fn entity_exists(&self, ty: &str, id: &str) -> bool {
        self.is_principal(ty, id) || self.is_resource(ty, id) || self.is_params(ty, id)
    }

    fn eval(&self, e: &'a Expr) -> Result<Val<'a>, EvalError> {
        Ok(match e {
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Long(n) => Val::Long(*n),
            Expr::Str(s) => Val::Str(Cow::Borrowed(s)),
            Expr::Entity(t, id) => Val::Entity(t, id),
            Expr::Principal => Val::Entity(PEER, self.caller),
            Expr::Resource => Val::Entity(self.resource_type, self.object),
            Expr::Ctx(f) => match f {
                CtxField::Script => Val::Str(Cow::Borrowed(self.script)),
                CtxField::Now => Val::Long(self.now),
                CtxField::ParamsJson => Val::Str(Cow::Owned(self.params.to_string())),
                CtxField::Params => Val::Entity(PARAMS, ""),
            },
            Expr::Set(items) => Val::Set(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Result<_, _>>()?,
            ),
            // the common case, without the entity lookup
            Expr::Attr(left, attr)
                if self.row.is_none()
                    && matches!(**left, Expr::Resource)
                    && **attr == *self.resource_attr =>
            {
                Val::Str(Cow::Borrowed(self.object))
            }
            Expr::Attr(left, attr) => match self.eval(left)? {
                Val::Entity(t, id) => self.attr((t, id), attr)?,
                other => return Err(other.type_error("record or entity")),
            },
            Expr::Has(left, attr) => match self.eval(left)? {
                Val::Entity(t, id) => Val::Bool(self.has((t, id), attr)),
                other => return Err(other.type_error("record or entity")),
            },
            Expr::HasTag(left, key) => {
                let (l, k) = (self.eval(left)?, self.eval(key)?);
                let ent = l.entity()?;
                Val::Bool(self.tag(ent, k.string()?).is_some())
            }
            Expr::GetTag(left, key) => self.get_tag(left, key)?,
            Expr::Like(left, pattern) => Val::Bool(pattern.matches(self.eval(left)?.string()?)),
            Expr::Is(left, ty) => Val::Bool(self.eval(left)?.entity()?.0 == &**ty),
            Expr::Eq(l, r) => Val::Bool(equal(&self.eval(l)?, &self.eval(r)?)),
            Expr::Ne(l, r) => Val::Bool(!equal(&self.eval(l)?, &self.eval(r)?)),
            Expr::Cmp(op, l, r) => {
                let (l, r) = (self.eval(l)?, self.eval(r)?);
                let (a, b) = (l.long()?, r.long()?);
                Val::Bool(match op {
                    Cmp::Lt => a < b,
                    Cmp::Le => a <= b,
                    Cmp::Gt => a > b,
                    Cmp::Ge => a >= b,
                })
            }
            Expr::And(l, r) => Val::Bool(self.eval(l)?.bool()? && self.eval(r)?.bool()?),
            Expr::Or(l, r) => Val::Bool(self.eval(l)?.bool()? || self.eval(r)?.bool()?),
            Expr::Not(arg) => Val::Bool(!self.eval(arg)?.bool()?),
            Expr::If(c, t, f) => {
                if self.eval(c)?.bool()? {
                    self.eval(t)?
                } else {
                    self.eval(f)?
                }
            }
            Expr::In(l, r) => Val::Bool(self.is_in(l, r)?),
        })
    }

    /// `left.getTag(key)`: the params' tag, or Cedar's error.
    fn get_tag(&self, left: &'a Expr, key: &'a Expr) -> Result<Val<'a>, EvalError> {
        let (l, k) = (self.eval(left)?, self.eval(key)?);
        let (ty, id) = l.entity()?;
        let tag = k.string()?;
        match self.tag((ty, id), tag) {
            Some(v) => Ok(v),
            None if !self.entity_exists(ty, id) => Err(EvalError(format!(
                "entity `{}` does not exist",
                entity_str(ty, id)
            ))),
            None => Err(EvalError(format!(
                "`{}` does not have the tag `{tag}`",
                entity_str(ty, id)
            ))),
        }
    }

    /// `l in r`: `r` an entity or a set of entities (every element must be an
    /// entity, even after a match, as in Cedar).
    fn is_in(&self, l: &'a Expr, r: &'a Expr) -> Result<bool, EvalError> {
        let lv = self.eval(l)?;
        // a set literal: no need to build the set
        if let Expr::Set(items) = r {
            let me = lv.entity()?;
            let mut found = false;
            for item in items {
                let v = self.eval(item)?;
                let other = v.entity()?;
                found = found || self.within(me, other);
            }
            return Ok(found);
        }
        let rv = self.eval(r)?;
        let me = lv.entity()?;
        match &rv {
            Val::Entity(t2, i2) => Ok(self.within(me, (t2, i2))),
            Val::Set(items) => {
                let mut found = false;
                for v in items {
                    let other = v.entity()?;
                    found = found || self.within(me, other);
                }
                Ok(found)
            }
            other => Err(other.type_error("set or entity")),
        }
    }
}

/// An error evaluating a condition, worded as Cedar words its own: the policy
/// then does not hold, and the error is reported with the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Does a policy with these conditions hold for `req` (its scopes already
/// matched)? `Err` = evaluation error (the policy is then not satisfied).
pub(super) fn satisfied(conds: &[Cond], req: &Req) -> Result<bool, EvalError> {
    for c in conds {
        if req.eval(&c.body)?.bool()? != c.want {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `*` = wildcard, every other character literal.
    fn pat(s: &str) -> Pattern {
        Pattern {
            runs: s.split('*').map(Into::into).collect(),
        }
    }

    #[test]
    fn like_matches_like_cedar() {
        for (p, s, want) in [
            ("shared/*", "shared/k1", true),
            ("shared/*", "shared/", true),
            ("shared/*", "shared", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyycd", false),
            ("*a", "baaa", true),
            ("**", "x", true),
            ("a*", "b", false),
            ("é*ü", "éxyzü", true),
            ("*ü", "ü", true),
            ("x*y*", "xyyy", true),
            ("*ab", "aab", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("ab*ba", "aba", false),
            ("ab*ba", "abba", true),
            ("*a*", "", false),
            ("*a*", "bab", true),
            ("a**b", "ab", true),
        ] {
            assert_eq!(pat(p).matches(s), want, "{p:?} like {s:?}");
        }
        // an escaped star is a literal character
        let lit = Pattern {
            runs: vec!["a*".into()],
        };
        assert!(lit.matches("a*"));
        assert!(!lit.matches("ab"));
        let lit = Pattern {
            runs: vec!["*".into(), "x".into()],
        };
        assert!(lit.matches("*yx"));
        assert!(!lit.matches("yx"));
    }
}
