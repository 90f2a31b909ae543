//! Per-peer access policy for peerfs, written in [Cedar](https://www.cedarpolicy.com).
//!
//! Every peer owns a `policy.cedar` that decides what *other* peers' scripts may
//! do to it (the owner itself is never checked: callers skip [`Policy::decide`]
//! when `caller == target`). The vocabulary policies may use is fixed by
//! [`SCHEMA`] and every policy is validated against it in Cedar's *strict* mode.
//!
//! # Entities
//! * principal: `Peer::"<caller>"` (attribute `name: String`), whose parents are
//!   `Group::"<g>"` for every group `g` the caller belongs to in the target's
//!   [`Groups`] file. So `principal in Group::"friends"` works.
//! * action: `Action::"run" | "read" | "write" | "send" | "import"` (no action groups).
//! * resource, by action (the entity id is the same string as the attribute;
//!   a missing [`Request::object`] is the empty string):
//!   * `run`    -> `Script::"<name>"` with `name: String`
//!   * `read`, `write` -> `Key::"<key>"` with `key: String`
//!   * `send`   -> `Target::"<peer>"` with `peer: String`
//!   * `import` -> `Module::"<module>"` with `module: String`
//!
//!   Because each action has exactly one resource type, strict validation types
//!   `resource.key` in a policy whose action scope is `read`/`write` without any
//!   `resource is Key` guard.
//!
//! # Context (same for every action)
//! * `context.script: String` - the script's file name.
//! * `context.now: Long` - unix seconds.
//! * `context.params` - the script's params. Cedar schemas cannot type arbitrary
//!   JSON, so params are exposed as a `Params` entity with **string tags**: every
//!   top-level key of the params object becomes a tag; string values are the
//!   string itself, any other value (number, bool, null, array, object) is its
//!   compact JSON text (`5`, `true`, `[1,2]`). Non-object params give no tags.
//!   Use `context.params.hasTag("mode") && context.params.getTag("mode") == "ro"`
//!   (strict validation requires the `hasTag` guard).
//! * `context.params_json: String` - the whole params value as compact JSON text.
//! * `context.origin: String` - the peer whose script began the chain that led to
//!   this one (the principal itself for a script it dropped or sent first).
//! * `context.chain: Set<String>` - every peer on that chain, the origin and the
//!   principal included. The principal is the *direct* caller; a forbid holds for
//!   every peer on the chain (see `PolicyState::chain_forbid`).
//!
//! # Sandbox limits
//! `permit` policies that can apply to `Action::"run"` may carry annotations
//! `@max_operations("100000")`, `@max_wall_ms`, `@max_string_size`,
//! `@max_array_size`, `@max_map_size`, `@max_output_bytes`, `@max_call_levels`,
//! `@max_sends` (decimal `u64`). When a `run` request is allowed, the limits are
//! the minimum, per limit, over all satisfied permit policies. An unknown
//! `@max_*` annotation, a non-numeric value, a limit on a `forbid`, or a limit on
//! a permit that can never apply to `run` is a parse error. `@id("name")` renames
//! a policy in decisions (must be unique); other annotations are ignored.
//!
//! # How `decide` stays fast
//! Per policy (cached per caller + its groups + action, inside the `Policy`)
//! only the statements whose principal and action scope match are kept. If none
//! remain: deny at once. At parse time the `when`/`unless` conditions of every
//! statement are compiled, when they stay within a common subset of Cedar
//! (literals, `principal` / `resource` / `context.<field>`, attributes, `has`,
//! tags, `like`, `is`, comparisons, `&&` / `||` / `!`, `in`, `if`), into a
//! small expression tree (`native.rs`). If every remaining statement compiled,
//! they are evaluated natively with Cedar's semantics (errors included) and no
//! Cedar entity, context or request is built; tests cross-check this against
//! Cedar. Otherwise Cedar evaluates just those statements, with their (already
//! checked) principal/action scope removed, and only the entities / context
//! fields their conditions mention are built.

mod gate;
mod groups;
mod native;
#[cfg(test)]
mod tests;

pub use gate::{
    capabilities_used, owns, verdict, Peers, PolicyGate, PolicyHost, PolicyState, Question, Verdict,
};
pub use groups::{valid_name, Groups};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint, RestrictedExpression,
    ValidationMode, Validator,
};

/// The Cedar schema (cedarschema syntax) every `policy.cedar` is validated against.
pub const SCHEMA: &str = r#"// peerfs policy schema
entity Group;
entity Peer in [Group] { name: String };
entity Script { name: String };
entity Key { key: String };
entity Target { peer: String };
entity Module { module: String };
// The script's params: one string tag per top-level key (see module docs).
entity Params tags String;

type Ctx = {
  script: String,
  params: Params,
  params_json: String,
  now: Long,
  origin: String,
  chain: Set<String>,
};

action "run" appliesTo { principal: [Peer], resource: [Script], context: Ctx };
action "read", "write" appliesTo { principal: [Peer], resource: [Key], context: Ctx };
action "send" appliesTo { principal: [Peer], resource: [Target], context: Ctx };
action "import" appliesTo { principal: [Peer], resource: [Module], context: Ctx };
"#;

/// What a script wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept the script at all (resource: `Script`).
    Run,
    /// Read a state key (resource: `Key`).
    Read,
    /// Write a state key (resource: `Key`).
    Write,
    /// Send a message to another peer (resource: `Target`).
    Send,
    /// Import a module (resource: `Module`).
    Import,
}

impl Action {
    /// All actions, in declaration order.
    pub const ALL: [Action; 5] = [
        Action::Run,
        Action::Read,
        Action::Write,
        Action::Send,
        Action::Import,
    ];

    /// The Cedar action id (`Action::"<this>"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Read => "read",
            Action::Write => "write",
            Action::Send => "send",
            Action::Import => "import",
        }
    }

    /// Inverse of [`Action::as_str`].
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// (resource entity type, its single attribute name)
    fn resource_shape(self) -> (&'static str, &'static str) {
        match self {
            Action::Run => ("Script", "name"),
            Action::Read | Action::Write => ("Key", "key"),
            Action::Send => ("Target", "peer"),
            Action::Import => ("Module", "module"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy (or groups file) that could not be loaded. `message` starts with
/// `line:col: ` when the position is known; several errors are joined by `; `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Human-readable description.
    pub message: String,
}

impl PolicyError {
    fn new(message: impl Into<String>) -> Self {
        PolicyError {
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyError {}

/// The two texts a peer's policy is made of: each is stored under a meta key of the
/// peer's store and shown as a file of its folder (the mount's and the spool's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyText {
    /// `policy.cedar`: the Cedar policy.
    Policy,
    /// `groups`: the groups file.
    Groups,
}

impl PolicyText {
    pub const ALL: [PolicyText; 2] = [PolicyText::Policy, PolicyText::Groups];

    /// The meta key it is stored under.
    pub const fn key(self) -> &'static str {
        match self {
            PolicyText::Policy => "policy",
            PolicyText::Groups => "groups",
        }
    }

    /// The file name it is shown as.
    pub const fn file(self) -> &'static str {
        match self {
            PolicyText::Policy => "policy.cedar",
            PolicyText::Groups => "groups",
        }
    }

    /// The text stored under the meta key `key`, if it is one.
    pub fn of_key(key: &str) -> Option<PolicyText> {
        PolicyText::ALL.into_iter().find(|t| t.key() == key)
    }
}

/// Sandbox limits from a policy's `@max_*` annotations: `None` = no limit from the
/// policy (the caller applies its own defaults).
pub type Limits = crate::script::Limits<Option<u64>>;

/// The limits a policy's annotations may set (`@max_operations("100000")` ...),
/// in the order its errors name them.
pub const ANNOTATED_LIMITS: [&str; 8] = [
    "max_operations",
    "max_wall_ms",
    "max_string_size",
    "max_array_size",
    "max_map_size",
    "max_output_bytes",
    "max_call_levels",
    "max_sends",
];

/// One authorization question: may `caller`'s script, running against
/// `target`, do `action` on `object`?
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer whose script is running (the principal).
    pub caller: &'a str,
    /// The peer whose policy this is (not visible to policies; informational).
    pub target: &'a str,
    pub action: Action,
    /// The key (read/write), peer (send), module (import) or script name (run).
    pub object: Option<&'a str>,
    /// The script file name (`context.script`).
    pub script: &'a str,
    /// The script's params (`context.params` / `context.params_json`).
    pub params: &'a serde_json::Value,
    /// Unix seconds (`context.now`).
    pub now: i64,
    /// Provenance (`context.origin` is its first peer, `context.chain` all of
    /// them): origin first, the caller last. Empty: just the caller.
    pub chain: &'a [String],
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The action asked about (used by [`Decision::explain`]).
    pub action: Action,
    /// Determining policies, in policy-file order: the satisfied permits when
    /// allowed, the satisfied forbids when denied by a forbid, empty when denied
    /// because nothing permits. Named by `@id("...")` if present, else `policyN`
    /// (N = 0-based position in the file).
    pub policies: Vec<String>,
    /// Sandbox limits (only for an allowed `run`; otherwise all `None`).
    pub limits: Limits,
    /// Policy evaluation errors (a policy that errors is skipped, as in Cedar)
    /// or an internal error (then the decision is deny).
    pub errors: Vec<String>,
}

impl Decision {
    /// One line: `allow (policy1, policy3)`, `deny: no policy permits read`,
    /// `deny (forbid policy4)`; evaluation errors are appended in brackets.
    pub fn explain(&self) -> String {
        let mut s = if self.allowed {
            format!("allow ({})", self.policies.join(", "))
        } else if self.policies.is_empty() {
            format!("deny: no policy permits {}", self.action.as_str())
        } else {
            format!("deny (forbid {})", self.policies.join(", "))
        };
        if !self.errors.is_empty() {
            let errs: Vec<String> = self
                .errors
                .iter()
                .map(|e| e.replace(['\n', '\r'], " "))
                .collect();
            s.push_str(&format!(" [errors: {}]", errs.join("; ")));
        }
        s
    }

    fn internal_error(action: Action, message: String) -> Decision {
        Decision {
            allowed: false,
            action,
            policies: Vec::new(),
            limits: Limits::default(),
            errors: vec![message],
        }
    }
}

// ---------------------------------------------------------------------------
// Cached, process-wide Cedar objects.

struct Env {
    validator: Validator,
    authorizer: Authorizer,
    peer: EntityTypeName,
    group: EntityTypeName,
    /// resource entity type per action (indexed by `Action::index`)
    resource_types: [EntityTypeName; 5],
    /// `Action::"..."` uid per action
    actions: [EntityUid; 5],
    params_uid: EntityUid,
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("entity type `{name}`: {e}"))
}

impl Env {
    fn build() -> Result<Env, String> {
        let (schema, _warnings) = cedar_policy::Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| format!("internal error: peerfs policy schema: {e}"))?;
        let action_type = type_name("Action")?;
        let resource_types = [
            type_name(Action::Run.resource_shape().0)?,
            type_name(Action::Read.resource_shape().0)?,
            type_name(Action::Write.resource_shape().0)?,
            type_name(Action::Send.resource_shape().0)?,
            type_name(Action::Import.resource_shape().0)?,
        ];
        let actions = Action::ALL.map(|a| {
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()))
        });
        Ok(Env {
            validator: Validator::new(schema),
            authorizer: Authorizer::new(),
            peer: type_name("Peer")?,
            group: type_name("Group")?,
            resource_types,
            actions,
            params_uid: EntityUid::from_type_name_and_id(type_name("Params")?, EntityId::new("")),
        })
    }
}

static ENV: LazyLock<Result<Env, String>> = LazyLock::new(Env::build);

fn env() -> Result<&'static Env, PolicyError> {
    ENV.as_ref().map_err(|e| PolicyError::new(e.clone()))
}

pub(crate) fn entity_type(name: &str) -> Result<EntityTypeName, PolicyError> {
    let env = env()?;
    match name {
        "Group" => Ok(env.group.clone()),
        "Peer" => Ok(env.peer.clone()),
        other => type_name(other).map_err(PolicyError::new),
    }
}

// ---------------------------------------------------------------------------
// Policy

/// Per-policy facts computed at parse time.
#[derive(Debug, Clone)]
struct Meta {
    /// position in the file (0-based)
    index: usize,
    /// `@id` or `policyN`
    name: String,
    effect: Effect,
    limits: Limits,
    principal: PrincipalConstraint,
    action: ActionConstraint,
    /// has a `when` / `unless` clause
    conditional: bool,
    /// the resource scope
    rscope: ResourceScope,
    /// the `when` / `unless` clauses compiled for the native evaluator (empty
    /// for an unconditional policy); `None` if outside its subset (Cedar decides)
    native: Option<Vec<native::Cond>>,
    /// what evaluating `eval` needs in the request (see [`Needs`])
    needs: Needs,
    /// What `decide` evaluates: the policy with its principal and action scope
    /// replaced by "any". Only used after `decide` itself checked that both
    /// scopes match, so it is equivalent, but Cedar no longer needs the
    /// principal's group ancestors (no transitive-closure work per request).
    eval: cedar_policy::Policy,
}

/// A resource scope in plain strings (resources have no parents, so
/// `resource in X` is `resource == X`).
#[derive(Debug, Clone)]
enum ResourceScope {
    Any,
    /// `resource is T`
    Type(String),
    /// `resource == T::"id"`, `resource in T::"id"`, `resource is T in T::"id"`
    Uid(String, String),
    /// `resource is T in U::"id"` with `T != U`
    Never,
}

impl ResourceScope {
    fn of(c: &ResourceConstraint) -> ResourceScope {
        let uid = |u: &EntityUid| {
            ResourceScope::Uid(u.type_name().to_string(), u.id().unescaped().to_string())
        };
        match c {
            ResourceConstraint::Any => ResourceScope::Any,
            ResourceConstraint::Is(t) => ResourceScope::Type(t.to_string()),
            ResourceConstraint::Eq(u) | ResourceConstraint::In(u) => uid(u),
            ResourceConstraint::IsIn(t, u) if t == u.type_name() => uid(u),
            ResourceConstraint::IsIn(..) => ResourceScope::Never,
        }
    }

    fn matches(&self, resource_type: &str, object: &str) -> bool {
        match self {
            ResourceScope::Any => true,
            ResourceScope::Type(t) => t == resource_type,
            ResourceScope::Uid(t, id) => t == resource_type && id == object,
            ResourceScope::Never => false,
        }
    }
}

/// The native form of `p`'s conditions (see [`native::compile`]).
fn compile_native(p: &cedar_policy::Policy) -> Option<Vec<native::Cond>> {
    if !p.has_non_scope_constraint() {
        return Some(Vec::new());
    }
    native::compile(p.to_json().ok()?.get("conditions")?)
}

/// `p` with principal and action scope unconstrained, plus its needs.
fn unscoped(p: &cedar_policy::Policy) -> (cedar_policy::Policy, Needs) {
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

/// Which parts of the Cedar request a set of policies can observe; parts
/// nobody looks at are not built (building entities dominates `decide`).
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    /// the principal entity (its `name` attribute or group ancestors)
    principal: bool,
    /// the resource entity (its attribute)
    resource: bool,
    ctx_script: bool,
    /// `context.params` and the `Params` entity
    ctx_params: bool,
    ctx_params_json: bool,
    ctx_now: bool,
    /// `context.origin` / `context.chain`
    ctx_chain: bool,
}

impl Needs {
    const ALL: Needs = Needs {
        principal: true,
        resource: true,
        ctx_script: true,
        ctx_params: true,
        ctx_params_json: true,
        ctx_now: true,
        ctx_chain: true,
    };

    fn or(self, o: Needs) -> Needs {
        Needs {
            principal: self.principal || o.principal,
            resource: self.resource || o.resource,
            ctx_script: self.ctx_script || o.ctx_script,
            ctx_params: self.ctx_params || o.ctx_params,
            ctx_params_json: self.ctx_params_json || o.ctx_params_json,
            ctx_now: self.ctx_now || o.ctx_now,
            ctx_chain: self.ctx_chain || o.ctx_chain,
        }
    }

    /// Conservative analysis of one policy's `when`/`unless` conditions via
    /// its JSON (EST) form.
    fn of(p: &cedar_policy::Policy) -> Needs {
        let mut needs = Needs::default();
        if !p.has_non_scope_constraint() {
            return needs;
        }
        let Ok(json) = p.to_json() else {
            return Needs::ALL;
        };
        let Some(conditions) = json.get("conditions") else {
            return Needs::ALL;
        };
        let (mut ctx_vars, mut ctx_fields) = (0usize, 0usize);
        scan(conditions, &mut needs, &mut ctx_vars, &mut ctx_fields);
        if ctx_vars > ctx_fields {
            // `context` used as a whole value somewhere: provide everything.
            needs = needs.or(Needs {
                principal: false,
                resource: false,
                ..Needs::ALL
            });
        }
        needs
    }
}

fn scan(v: &serde_json::Value, needs: &mut Needs, ctx_vars: &mut usize, ctx_fields: &mut usize) {
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

/// The policies whose principal and action scope can match one (caller,
/// groups, action), as a ready-to-evaluate set.
struct Candidates {
    /// the Cedar policy set (`None` when `native`: built only if asked for)
    set: Option<PolicySet>,
    /// indices into `Inner::ordered`
    chosen: Vec<usize>,
    needs: Needs,
    /// Every candidate's conditions compiled (see [`native`]): `decide`
    /// evaluates them itself and skips Cedar.
    native: bool,
}

/// Cached candidate sets for one caller (valid while its groups are the same).
struct CallerEntry {
    groups: Vec<EntityUid>,
    per_action: [Option<Arc<Candidates>>; 5],
}

/// Bound on cached callers per policy (the cache is simply cleared when full).
const MAX_CACHED_CALLERS: usize = 4096;

struct Inner {
    text: String,
    /// keyed by Cedar's `PolicyId` string (`policyN`)
    meta: HashMap<String, Meta>,
    /// metas in file order
    ordered: Vec<Meta>,
    warnings: Vec<String>,
    cache: RwLock<HashMap<String, CallerEntry>>,
}

/// A parsed and validated `policy.cedar`. Cheap to clone (shared).
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("policies", &self.inner.ordered.len())
            .field("text", &self.inner.text)
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::empty()
    }
}

/// `line:col` (1-based, col in characters) of a byte offset into `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
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

fn at(text: &str, offset: Option<usize>, msg: &str) -> String {
    match offset {
        Some(o) => {
            let (l, c) = line_col(text, o);
            format!("{l}:{c}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// Cedar diagnostic -> (message incl. help, first label offset).
fn detail<E>(e: &E) -> (String, Option<usize>)
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

fn id_str(id: &PolicyId) -> &str {
    AsRef::<str>::as_ref(id)
}

/// `policyN` -> N
fn auto_index(id: &str) -> Option<usize> {
    id.strip_prefix("policy")?.parse().ok()
}

fn covers_action(c: &ActionConstraint, action: &EntityUid) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action),
    }
}

/// Can a principal scope constraint match `me` whose groups are `groups`?
/// (Groups have no parents, so `in` is "is me or one of my groups".)
fn principal_matches(
    c: &PrincipalConstraint,
    env: &Env,
    me: &EntityUid,
    groups: &[EntityUid],
) -> bool {
    let me_or_my_group = |uid: &EntityUid| uid == me || groups.contains(uid);
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) => uid == me,
        PrincipalConstraint::In(uid) => me_or_my_group(uid),
        PrincipalConstraint::Is(t) => *t == env.peer,
        PrincipalConstraint::IsIn(t, uid) => *t == env.peer && me_or_my_group(uid),
    }
}

/// The Cedar policy set evaluating `chosen`.
fn cedar_set(chosen: &[&Meta]) -> Result<PolicySet, String> {
    PolicySet::from_policies(chosen.iter().map(|m| m.eval.clone())).map_err(|e| e.to_string())
}

fn string_entity(
    uid: EntityUid,
    attr: &str,
    value: &str,
    parents: &[EntityUid],
) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid,
        [(
            attr.to_string(),
            RestrictedExpression::new_string(value.to_string()),
        )],
        parents.iter().cloned(),
        [],
    )
    .map_err(|e| e.to_string())
}

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
    fn parse_unvalidated(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, false)
    }

    fn parse_with(text: &str, validate: bool) -> Result<Policy, PolicyError> {
        let env = env()?;
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

        // File order and byte offset of every policy (Cedar numbers them policy0..).
        let mut policies: Vec<&cedar_policy::Policy> = set.policies().collect();
        policies.sort_by_key(|p| auto_index(id_str(p.id())).unwrap_or(usize::MAX));
        let mut starts: HashMap<String, (usize, String)> = HashMap::new();
        let mut cursor = 0;
        for p in &policies {
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
        let start_of = |id: &PolicyId| starts.get(id_str(id)).map(|(s, _)| *s);

        let result = env.validator.validate(&set, ValidationMode::Strict);
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
        let warnings: Vec<String> = result
            .validation_warnings()
            .map(|w| {
                let (m, off) = detail(w);
                at(text, off.or_else(|| start_of(w.policy_id())), &m)
            })
            .collect();

        // Annotations.
        let run = &env.actions[Action::Run.index()];
        let mut meta = HashMap::new();
        let mut ordered = Vec::new();
        let mut names = HashSet::new();
        for (index, p) in policies.iter().enumerate() {
            let (start, src) = starts
                .get(id_str(p.id()))
                .map(|(s, t)| (*s, t.as_str()))
                .unwrap_or((0, ""));
            let err_at = |key: &str, msg: String| {
                let off = src.find(&format!("@{key}")).map_or(start, |o| start + o);
                let msg = format!("for policy `{}`, {msg}", p.id());
                PolicyError::new(at(text, Some(off), &msg))
            };
            let mut name = p.id().to_string();
            let mut limits = Limits::default();
            for (key, value) in p.annotations() {
                if key == "id" {
                    if value.is_empty() {
                        return Err(err_at(key, "@id must not be empty".into()));
                    }
                    name = value.to_string();
                } else if key.starts_with("max_") {
                    let known = ANNOTATED_LIMITS.contains(&key);
                    let Some(slot) = limits.field_mut(key).filter(|_| known) else {
                        return Err(err_at(
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
                        return Err(err_at(
                            key,
                            format!("@{key}(\"{value}\") is not a non-negative integer"),
                        ));
                    };
                    *slot = Some(n);
                    if p.effect() != Effect::Permit {
                        return Err(err_at(
                            key,
                            format!("@{key} is only allowed on permit policies"),
                        ));
                    }
                    if !covers_action(&p.action_constraint(), run) {
                        return Err(err_at(
                            key,
                            format!(
                                "@{key} has no effect: sandbox limits apply only to permits that can match Action::\"run\""
                            ),
                        ));
                    }
                }
            }
            if !names.insert(name.clone()) {
                return Err(err_at(
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

    /// Authorize one request. Never panics; internal failures deny with an error.
    pub fn decide(&self, req: &Request, groups: &Groups) -> Decision {
        if self.inner.ordered.is_empty() {
            return Decision {
                allowed: false,
                action: req.action,
                policies: Vec::new(),
                limits: Limits::default(),
                errors: Vec::new(),
            };
        }
        match self.try_decide(req, groups, true) {
            Ok(d) => d,
            Err(e) => Decision::internal_error(req.action, e),
        }
    }

    /// The candidate policies for (caller, groups, action), cached per caller.
    fn candidates(
        &self,
        env: &Env,
        caller: &str,
        groups: &[EntityUid],
        action: Action,
    ) -> Result<Arc<Candidates>, String> {
        let slot = action.index();
        {
            let cache = self
                .inner
                .cache
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = cache.get(caller) {
                if entry.groups == groups {
                    if let Some(c) = &entry.per_action[slot] {
                        return Ok(Arc::clone(c));
                    }
                }
            }
        }
        let action_uid = &env.actions[slot];
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(caller));
        let chosen: Vec<&Meta> = self
            .inner
            .ordered
            .iter()
            .filter(|m| {
                covers_action(&m.action, action_uid)
                    && principal_matches(&m.principal, env, &me, groups)
            })
            .collect();
        let needs = chosen.iter().fold(Needs::default(), |n, m| n.or(m.needs));
        let native = chosen.iter().all(|m| m.native.is_some());
        let set = if native {
            None
        } else {
            Some(cedar_set(&chosen)?)
        };
        let candidates = Arc::new(Candidates {
            set,
            chosen: chosen.iter().map(|m| m.index).collect(),
            needs,
            native,
        });
        let mut cache = self
            .inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_CALLERS && !cache.contains_key(caller) {
            cache.clear();
        }
        let entry = cache
            .entry(caller.to_string())
            .or_insert_with(|| CallerEntry {
                groups: groups.to_vec(),
                per_action: Default::default(),
            });
        if entry.groups != groups {
            *entry = CallerEntry {
                groups: groups.to_vec(),
                per_action: Default::default(),
            };
        }
        entry.per_action[slot] = Some(Arc::clone(&candidates));
        Ok(candidates)
    }

    fn try_decide(
        &self,
        req: &Request,
        groups: &Groups,
        allow_native: bool,
    ) -> Result<Decision, String> {
        let env = env().map_err(|e| e.message)?;
        let action = req.action;
        let group_uids = groups.uids_of(req.caller);
        let candidates = self.candidates(env, req.caller, group_uids, action)?;
        if candidates.chosen.is_empty() {
            return Ok(self.finish(action, false, Vec::new(), Vec::new()));
        }
        let object = req.object.unwrap_or("");
        if allow_native && candidates.native {
            return self.decide_native(&candidates, req, group_uids, object);
        }
        let needs = candidates.needs;
        let principal =
            EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(req.caller));
        let resource_type = &env.resource_types[action.index()];
        let resource =
            EntityUid::from_type_name_and_id(resource_type.clone(), EntityId::new(object));

        let mut entities = Vec::with_capacity(3);
        if needs.principal {
            entities.push(string_entity(
                principal.clone(),
                "name",
                req.caller,
                group_uids,
            )?);
        }
        if needs.resource {
            entities.push(string_entity(
                resource.clone(),
                action.resource_shape().1,
                object,
                &[],
            )?);
        }
        if needs.ctx_params {
            let tags: Vec<(String, RestrictedExpression)> = match req.params {
                serde_json::Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), RestrictedExpression::new_string(s))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            entities.push(
                Entity::new_with_tags(env.params_uid.clone(), [], [], tags)
                    .map_err(|e| e.to_string())?,
            );
        }
        let entities = if entities.is_empty() {
            Entities::empty()
        } else {
            Entities::from_entities(entities, None).map_err(|e| e.to_string())?
        };

        let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
        if needs.ctx_script {
            pairs.push((
                "script".to_string(),
                RestrictedExpression::new_string(req.script.to_string()),
            ));
        }
        if needs.ctx_params {
            pairs.push((
                "params".to_string(),
                RestrictedExpression::new_entity_uid(env.params_uid.clone()),
            ));
        }
        if needs.ctx_params_json {
            pairs.push((
                "params_json".to_string(),
                RestrictedExpression::new_string(req.params.to_string()),
            ));
        }
        if needs.ctx_now {
            pairs.push(("now".to_string(), RestrictedExpression::new_long(req.now)));
        }
        if needs.ctx_chain {
            let caller = [req.caller.to_string()];
            let chain = if req.chain.is_empty() {
                &caller[..]
            } else {
                req.chain
            };
            pairs.push((
                "origin".to_string(),
                RestrictedExpression::new_string(chain[0].clone()),
            ));
            pairs.push((
                "chain".to_string(),
                RestrictedExpression::new_set(
                    chain
                        .iter()
                        .map(|p| RestrictedExpression::new_string(p.clone())),
                ),
            ));
        }
        let context = if pairs.is_empty() {
            Context::empty()
        } else {
            Context::from_pairs(pairs).map_err(|e| e.to_string())?
        };
        let request = cedar_policy::Request::new(
            principal,
            env.actions[action.index()].clone(),
            resource,
            context,
            None,
        )
        .map_err(|e| e.to_string())?;

        let built;
        let set = match &candidates.set {
            Some(set) => set,
            None => {
                let chosen: Vec<&Meta> = candidates
                    .chosen
                    .iter()
                    .filter_map(|&i| self.inner.ordered.get(i))
                    .collect();
                built = cedar_set(&chosen)?;
                &built
            }
        };
        let response = env.authorizer.is_authorized(&request, set, &entities);
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let determining: Vec<&Meta> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.inner.meta.get(id_str(id)))
            .collect();
        let errors = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                let name = self
                    .inner
                    .meta
                    .get(id_str(pe.policy_id()))
                    .map_or_else(|| pe.policy_id().to_string(), |m| m.name.clone());
                format!("{name}: {}", pe.inner())
            })
            .collect();
        Ok(self.finish(action, allowed, determining, errors))
    }

    /// Decide with the native evaluator (every candidate compiled), with
    /// Cedar's rules: a policy holds when its resource scope matches, every
    /// `when` is true and every `unless` false; one that errors does not hold
    /// and its error is reported; any holding forbid denies (the holding
    /// forbids decide), else any holding permit allows (the permits decide).
    fn decide_native(
        &self,
        candidates: &Candidates,
        req: &Request,
        groups: &[EntityUid],
        object: &str,
    ) -> Result<Decision, String> {
        let action = req.action;
        let (resource_type, resource_attr) = action.resource_shape();
        let nreq = native::Req {
            caller: req.caller,
            groups,
            resource_type,
            resource_attr,
            object,
            script: req.script,
            params: req.params,
            now: req.now,
        };
        let mut permits: Vec<&Meta> = Vec::new();
        let mut forbids: Vec<&Meta> = Vec::new();
        let mut errors = Vec::new();
        for &i in &candidates.chosen {
            let Some(m) = self.inner.ordered.get(i) else {
                continue;
            };
            if !m.rscope.matches(resource_type, object) {
                continue;
            }
            let Some(conds) = &m.native else {
                return Err(format!("internal error: {} is not compiled", m.name));
            };
            match native::satisfied(conds, &nreq) {
                Ok(true) if m.effect == Effect::Forbid => forbids.push(m),
                Ok(true) => permits.push(m),
                Ok(false) => {}
                Err(e) => errors.push(format!("{}: {e}", m.name)),
            }
        }
        Ok(if forbids.is_empty() {
            self.finish(action, !permits.is_empty(), permits, errors)
        } else {
            self.finish(action, false, forbids, errors)
        })
    }

    fn finish(
        &self,
        action: Action,
        allowed: bool,
        mut determining: Vec<&Meta>,
        errors: Vec<String>,
    ) -> Decision {
        determining.sort_by_key(|m| m.index);
        let limits = if allowed && action == Action::Run {
            determining
                .iter()
                .fold(Limits::default(), |acc, m| acc.min(&m.limits))
        } else {
            Limits::default()
        };
        Decision {
            allowed,
            action,
            policies: determining.iter().map(|m| m.name.clone()).collect(),
            limits,
            errors,
        }
    }

    /// `decide` without the native evaluator: Cedar alone. Tests and the
    /// `policy_diff` fuzz target cross-check the two; any difference is a bug.
    #[doc(hidden)]
    pub fn decide_via_cedar(&self, req: &Request, groups: &Groups) -> Decision {
        match self.try_decide(req, groups, false) {
            Ok(d) => d,
            Err(e) => Decision::internal_error(req.action, e),
        }
    }

    /// Conservative static check, for refusing a script before it runs.
    ///
    /// Returns `false` only if no `permit` can ever match `caller` (with
    /// `caller_groups`) and `action` judging by its principal and action scope,
    /// or if an unconditional `forbid` (no `when`/`unless`, resource scope
    /// unconstrained or `is <the action's resource type>`) matches them.
    /// Conditions of permits are ignored (assumed satisfiable).
    pub fn could_ever_allow(&self, caller: &str, caller_groups: &[String], action: Action) -> bool {
        let Ok(env) = env() else {
            return false;
        };
        let me = EntityUid::from_type_name_and_id(env.peer.clone(), EntityId::new(caller));
        let groups: Vec<EntityUid> = caller_groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(env.group.clone(), EntityId::new(g)))
            .collect();
        let principal_matches = |c: &PrincipalConstraint| principal_matches(c, env, &me, &groups);
        let action_uid = &env.actions[action.index()];
        let resource_type = action.resource_shape().0;
        let mut permitted = false;
        for m in &self.inner.ordered {
            if !principal_matches(&m.principal) || !covers_action(&m.action, action_uid) {
                continue;
            }
            match m.effect {
                Effect::Permit => permitted = true,
                Effect::Forbid => {
                    let all_resources = match &m.rscope {
                        ResourceScope::Any => true,
                        ResourceScope::Type(t) => t == resource_type,
                        _ => false,
                    };
                    if !m.conditional && all_resources {
                        return false;
                    }
                }
            }
        }
        permitted
    }
}
