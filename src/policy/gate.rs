//! The policy at work: decides, for every run and host call of another peer's
//! script, what it may do (the executor's [`Gate`]), and what one peer may read of
//! another's state (the mount's `peers/<other>/state/`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rhai::{ASTNode, Expr, Stmt, AST};
use serde_json::Value;

use super::{Action, Groups, Policy, Request};
use crate::exec::{Core, Gate};
use crate::peer::Peer;
use crate::script::{Capability, Host, Limits, OwnerHost};
use crate::store::{Job, Store};

/// A peer's parsed `policy.cedar` and `groups`, with a memo of its decisions.
pub struct PolicyState {
    pub policy: Policy,
    pub groups: Groups,
    /// Which parts of the context the policy text mentions: only those go into a
    /// memo key, so a decision is reused exactly when Cedar would decide the same.
    uses_script: bool,
    uses_params: bool,
    uses_now: bool,
    memo: Mutex<HashMap<MemoKey, super::Decision>>,
}

#[derive(Hash, PartialEq, Eq)]
struct MemoKey {
    caller: String,
    action: Action,
    object: String,
    script: Option<String>,
    params: Option<String>,
    now: Option<i64>,
}

/// Most memoized decisions per peer; past this the memo starts over.
const MEMO_MAX: usize = 4096;

impl PolicyState {
    /// Parses stored texts; a stored text that no longer parses (it was validated
    /// when written) denies everything rather than failing open.
    pub fn from_texts(policy: &[u8], groups: &[u8]) -> PolicyState {
        let p = std::str::from_utf8(policy)
            .ok()
            .and_then(|t| Policy::parse(t).ok())
            .unwrap_or_else(Policy::empty);
        let g = std::str::from_utf8(groups)
            .ok()
            .and_then(|t| Groups::parse(t).ok())
            .unwrap_or_default();
        let text = p.text();
        PolicyState {
            uses_script: text.contains("script"),
            uses_params: text.contains("params"),
            uses_now: text.contains("now"),
            policy: p,
            groups: g,
            memo: Mutex::new(HashMap::new()),
        }
    }

    /// What the policy decides (memoized: the same question gets the same answer
    /// until the policy changes, and a new policy is a new `PolicyState`).
    pub fn decide(
        &self,
        caller: &str,
        target: &str,
        action: Action,
        object: &str,
        script: &str,
        params: &Value,
    ) -> super::Decision {
        let now = crate::util::now_ns() / 1_000_000_000;
        let key = MemoKey {
            caller: caller.to_string(),
            action,
            object: object.to_string(),
            script: self.uses_script.then(|| script.to_string()),
            params: self.uses_params.then(|| params.to_string()),
            now: self.uses_now.then_some(now),
        };
        if let Some(d) = self.memo.lock().unwrap().get(&key) {
            return d.clone();
        }
        let req = Request {
            caller,
            target,
            action,
            object: Some(object),
            script,
            params,
            now,
        };
        let d = self.policy.decide(&req, &self.groups);
        let mut m = self.memo.lock().unwrap();
        if m.len() >= MEMO_MAX {
            m.clear();
        }
        m.insert(key, d.clone());
        d
    }
}

/// Cached policy states, by peer, valid while the peer's policy generation holds.
#[derive(Default)]
pub struct PolicyGate {
    cache: Mutex<HashMap<String, (u64, Arc<PolicyState>)>>,
}

impl PolicyGate {
    pub fn new() -> PolicyGate {
        PolicyGate::default()
    }

    /// The current policy of `peer` (loaded from committed data on first use and
    /// after every change).
    pub fn state(&self, peer: &Peer) -> crate::Result<Arc<PolicyState>> {
        let gen = peer.policy_gen.load(Ordering::Acquire);
        if let Some((g, s)) = self.cache.lock().unwrap().get(&peer.name) {
            if *g == gen {
                return Ok(s.clone());
            }
        }
        let (p, g) = peer.read(|s| Ok((s.meta("policy")?, s.meta("groups")?)))?;
        let st = Arc::new(PolicyState::from_texts(
            &p.map(|x| x.0).unwrap_or_default(),
            &g.map(|x| x.0).unwrap_or_default(),
        ));
        let mut c = self.cache.lock().unwrap();
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(peer.name.clone(), (gen, st.clone()));
        Ok(st)
    }

    /// Whether `reader` may read `key` of `owner` (for `peers/<owner>/state/`).
    pub fn may_read(&self, core: &Core, reader: &str, owner: &str, key: &str) -> bool {
        let Ok(p) = core.peer(owner) else {
            return false;
        };
        let Ok(st) = self.state(&p) else { return false };
        st.decide(reader, owner, Action::Read, key, "", &Value::Null)
            .allowed
    }
}

fn limits_from(base: &Limits, d: &super::Limits) -> Limits {
    let mut l = base.clone();
    let tighten = |v: &mut u64, p: Option<u64>| {
        if let Some(p) = p {
            *v = (*v).min(p);
        }
    };
    tighten(&mut l.max_operations, d.max_operations);
    tighten(&mut l.max_wall_ms, d.max_wall_ms);
    tighten(&mut l.max_string_size, d.max_string_size);
    tighten(&mut l.max_array_size, d.max_array_size);
    tighten(&mut l.max_map_size, d.max_map_size);
    tighten(&mut l.max_output_bytes, d.max_output_bytes);
    tighten(&mut l.max_call_levels, d.max_call_levels);
    tighten(&mut l.max_sends, d.max_sends);
    l
}

impl Gate for Arc<PolicyGate> {
    fn prepare(
        &self,
        core: &Core,
        target: &Arc<Peer>,
        job: &Job,
    ) -> Result<(Box<dyn Host>, Limits), String> {
        if job.caller == target.name {
            return Ok((Box::new(OwnerHost), core.config().limits.clone()));
        }
        let state = self
            .state(target)
            .map_err(|e| format!("denied: {}'s policy cannot be read: {e}", target.name))?;
        let params: Value = serde_json::from_str(&job.params).unwrap_or(Value::Null);
        let d = state.decide(
            &job.caller,
            &target.name,
            Action::Run,
            &job.name,
            &job.name,
            &params,
        );
        if !d.allowed {
            return Err(format!(
                "denied: run {} by {} at {}: {} (policy.cedar of {})",
                job.name,
                job.caller,
                target.name,
                d.explain(),
                target.name
            ));
        }
        let limits = limits_from(&core.config().limits, &d.limits);
        Ok((
            Box::new(PolicyHost {
                gate: self.clone(),
                core: core.clone(),
                state,
                caller: job.caller.clone(),
                target: target.name.clone(),
                script: job.name.clone(),
                params,
            }),
            limits,
        ))
    }
}

/// What another peer's script may do, decided by the target's policy at every call.
pub struct PolicyHost {
    gate: Arc<PolicyGate>,
    core: Core,
    state: Arc<PolicyState>,
    caller: String,
    target: String,
    script: String,
    params: Value,
}

fn action_of(cap: Capability) -> Action {
    match cap {
        Capability::Read => Action::Read,
        Capability::Write => Action::Write,
        Capability::Send => Action::Send,
        Capability::Import => Action::Import,
    }
}

/// The host calls a script can make, found by walking its AST.
pub fn capabilities_used(ast: &AST) -> Vec<(Capability, &'static str)> {
    let mut used: Vec<(Capability, &'static str)> = Vec::new();
    let mut add = |c, f| {
        if !used.iter().any(|(u, _)| *u == c) {
            used.push((c, f));
        }
    };
    ast.walk(&mut |nodes: &[ASTNode]| {
        // Calls as statements, in expressions and as methods ("k".get()) all count.
        let name = match nodes.last() {
            Some(ASTNode::Expr(Expr::FnCall(f, _))) | Some(ASTNode::Stmt(Stmt::FnCall(f, _))) => {
                Some(f.name.as_str())
            }
            Some(ASTNode::Expr(Expr::MethodCall(f, _))) => Some(f.name.as_str()),
            Some(ASTNode::Stmt(Stmt::Import(..))) => Some("import"),
            _ => None,
        };
        match name {
            Some("get") => add(Capability::Read, "get"),
            Some("keys") => add(Capability::Read, "keys"),
            Some("set") => add(Capability::Write, "set"),
            Some("remove") => add(Capability::Write, "remove"),
            Some("send") => add(Capability::Send, "send"),
            Some("import") => add(Capability::Import, "import"),
            _ => {}
        }
        true
    });
    used
}

impl Host for PolicyHost {
    fn check(&self, cap: Capability, object: &str) -> Result<(), String> {
        let action = action_of(cap);
        let d = self.state.decide(
            &self.caller,
            &self.target,
            action,
            object,
            &self.script,
            &self.params,
        );
        if d.allowed {
            Ok(())
        } else {
            Err(format!(
                "denied: {action} {object:?} by {} at {}: {} (policy.cedar of {})",
                self.caller,
                self.target,
                d.explain(),
                self.target
            ))
        }
    }

    fn check_script(&self, ast: &AST) -> Result<(), String> {
        let groups = self.state.groups.groups_of(&self.caller);
        for (cap, f) in capabilities_used(ast) {
            let action = action_of(cap);
            if !self
                .state
                .policy
                .could_ever_allow(&self.caller, &groups, action)
            {
                return Err(format!(
                    "denied before running: the script calls {f}(), and no rule in the policy.cedar of {} can ever allow {} to {action}",
                    self.target, self.caller
                ));
            }
        }
        Ok(())
    }

    fn caller_get(&self, key: &str) -> Result<Option<Value>, String> {
        // The caller's own policy decides what the target may read of it (no
        // confused deputy: the target's code cannot read more than the caller allows).
        let caller = self.core.peer(&self.caller).map_err(|e| e.message)?;
        let st = self.gate.state(&caller).map_err(|e| e.message)?;
        let d = st.decide(
            &self.target,
            &self.caller,
            Action::Read,
            key,
            &self.script,
            &self.params,
        );
        if !d.allowed {
            return Err(format!(
                "denied: caller_get {key:?}: the policy.cedar of {} does not let {} read it: {}",
                self.caller,
                self.target,
                d.explain()
            ));
        }
        caller.read(|s| s.get(key)).map_err(|e| e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memoized_decisions_still_follow_the_context() {
        let st = PolicyState::from_texts(
            br#"permit(principal == Peer::"alice", action == Action::"read", resource) when { context.script == "ok.rhai" };"#,
            b"",
        );
        let p = serde_json::json!({});
        for _ in 0..2 {
            assert!(
                st.decide("alice", "bob", Action::Read, "k", "ok.rhai", &p)
                    .allowed
            );
            assert!(
                !st.decide("alice", "bob", Action::Read, "k", "other.rhai", &p)
                    .allowed
            );
            assert!(
                !st.decide("eve", "bob", Action::Read, "k", "ok.rhai", &p)
                    .allowed
            );
        }
        let st = PolicyState::from_texts(
            br#"permit(principal, action == Action::"read", resource) when { context.params.hasTag("m") && context.params.getTag("m") == "ro" };"#,
            b"",
        );
        for _ in 0..2 {
            assert!(
                st.decide(
                    "a",
                    "b",
                    Action::Read,
                    "k",
                    "s",
                    &serde_json::json!({"m": "ro"})
                )
                .allowed
            );
            assert!(
                !st.decide(
                    "a",
                    "b",
                    Action::Read,
                    "k",
                    "s",
                    &serde_json::json!({"m": "rw"})
                )
                .allowed
            );
        }
    }

    #[test]
    fn finds_host_calls_in_scripts_and_functions() {
        let e = rhai::Engine::new();
        let ast = e
            .compile(r#"print("x"); set("k", 1); fn f() { send("b", "1") } import "m" as m;"#)
            .unwrap();
        let used: Vec<Capability> = capabilities_used(&ast).into_iter().map(|c| c.0).collect();
        assert!(used.contains(&Capability::Write), "{used:?}");
        assert!(used.contains(&Capability::Send), "{used:?}");
        assert!(used.contains(&Capability::Import), "{used:?}");
        assert!(!used.contains(&Capability::Read), "{used:?}");
        let p = Policy::parse(
            r#"permit(principal == Peer::"alice", action == Action::"run", resource);"#,
        )
        .unwrap();
        assert!(!p.could_ever_allow("alice", &[], Action::Write));
        assert!(p.could_ever_allow("alice", &[], Action::Run));
    }
}
