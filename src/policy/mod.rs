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
//! `@max_array_size`, `@max_map_size`, `@max_memory_bytes`, `@max_output_bytes`, `@max_call_levels`,
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
//!
//! # Where things are
//! This file holds the vocabulary (the schema, [`Action`], [`PolicyText`],
//! [`Request`], [`Decision`]) and the parsed [`Policy`]'s shape; `parse.rs` reads
//! and validates a policy text, `decide.rs` answers requests, `native.rs` is the
//! native evaluator, `groups.rs` the groups file, `state.rs` a peer's policy with
//! its memo of decisions, and `gate.rs` the policy at work for runs, host calls
//! and reads of another peer's state.

pub(crate) mod calls;
mod decide;
mod gate;
mod groups;
mod native;
mod parse;
mod rows;
pub mod sight;
mod state;
#[cfg(test)]
mod tests;

pub use calls::capabilities_used;
pub use gate::{owns, verdict, Peers, PolicyGate, PolicyHost, Verdict};
pub use groups::{valid_name, Groups};
pub use rows::{check_schema_text, schema_text, RowAsk, RowRule};
pub use state::{Denied, PolicyState, Question};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint, RestrictedExpression,
    ValidationMode, Validator,
};

use parse::scan;

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
/// peer's store and shown as a file of its folder (the mount's and the spool's,
/// see `crate::layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyText {
    /// `policy.cedar`: the Cedar policy.
    Policy,
    /// `groups`: the groups file.
    Groups,
    /// `schema.toml`: the declared tables (`crate::tables`).
    Schema,
}

impl PolicyText {
    pub const ALL: [PolicyText; 3] = [PolicyText::Policy, PolicyText::Groups, PolicyText::Schema];

    /// The meta key it is stored under.
    pub const fn key(self) -> &'static str {
        match self {
            PolicyText::Policy => "policy",
            PolicyText::Groups => "groups",
            PolicyText::Schema => crate::tables::META_KEY,
        }
    }

    /// The file name it is shown as.
    pub const fn file(self) -> &'static str {
        match self {
            PolicyText::Policy => "policy.cedar",
            PolicyText::Groups => "groups",
            PolicyText::Schema => "schema.toml",
        }
    }

    /// The text stored under the meta key `key`, if it is one.
    pub fn of_key(key: &str) -> Option<PolicyText> {
        PolicyText::ALL.into_iter().find(|t| t.key() == key)
    }

    /// Whether `bytes` are a text of this kind that can be applied: UTF-8 that
    /// parses (and, for a policy, validates).
    pub fn check(self, bytes: &[u8]) -> Result<(), PolicyError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| PolicyError::new(format!("{} is not UTF-8 text", self.key())))?;
        match self {
            PolicyText::Policy => Policy::parse(text).map(|_| ()),
            PolicyText::Groups => Groups::parse(text).map(|_| ()),
            PolicyText::Schema => crate::tables::parse::parse(text)
                .map(|_| ())
                .map_err(|e| PolicyError::new(e.message)),
        }
    }

    /// The command that checks a file of this kind before it is copied in.
    pub const fn check_command(self) -> &'static str {
        match self {
            PolicyText::Policy => "peerfs policy check FILE",
            PolicyText::Groups => "peerfs policy check POLICY --groups FILE",
            PolicyText::Schema => "peerfs policy check POLICY --schema FILE",
        }
    }
}

/// Sandbox limits from a policy's `@max_*` annotations: `None` = no limit from the
/// policy (the caller applies its own defaults).
pub type Limits = crate::script::Limits<Option<u64>>;

/// The limits a policy's annotations may set (`@max_operations("100000")` ...),
/// in the order its errors name them.
pub const ANNOTATED_LIMITS: [&str; 9] = [
    "max_operations",
    "max_wall_ms",
    "max_string_size",
    "max_array_size",
    "max_map_size",
    "max_memory_bytes",
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

    fn internal_error(action: Action, e: PolicyError) -> Decision {
        Decision {
            allowed: false,
            action,
            policies: Vec::new(),
            limits: Limits::default(),
            errors: vec![e.message],
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

fn type_name(name: &str) -> Result<EntityTypeName, PolicyError> {
    EntityTypeName::from_str(name)
        .map_err(|e| PolicyError::new(format!("entity type `{name}`: {e}")))
}

impl Env {
    fn build() -> Result<Env, PolicyError> {
        let (schema, _warnings) = cedar_policy::Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| PolicyError::new(format!("internal error: peerfs policy schema: {e}")))?;
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

static ENV: LazyLock<Result<Env, PolicyError>> = LazyLock::new(Env::build);

fn env() -> Result<&'static Env, PolicyError> {
    ENV.as_ref().map_err(Clone::clone)
}

pub(crate) fn entity_type(name: &str) -> Result<EntityTypeName, PolicyError> {
    let env = env()?;
    match name {
        "Group" => Ok(env.group.clone()),
        "Peer" => Ok(env.peer.clone()),
        other => type_name(other),
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
