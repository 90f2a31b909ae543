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
    uses_chain: bool,
    memo: Mutex<Memo>,
    /// `Policy::could_ever_allow` per caller and action (the static check).
    ever: Mutex<HashMap<String, [Option<bool>; 5]>>,
}

/// Decisions by caller, action and object, then by the context parts the policy
/// uses. Nested by `&str`-keyed maps so that a hit allocates nothing.
#[derive(Default)]
struct Memo {
    by_caller: HashMap<String, [HashMap<String, Vec<MemoEntry>>; 5]>,
    len: usize,
}

struct MemoEntry {
    script: Option<String>,
    params: Option<String>,
    now: Option<i64>,
    chain: Option<String>,
    decision: Arc<super::Decision>,
}

/// Most memoized decisions per peer; past this the memo starts over.
const MEMO_MAX: usize = 4096;

/// One question to a peer's policy.
#[derive(Clone, Copy)]
pub struct Question<'a> {
    pub caller: &'a str,
    pub target: &'a str,
    pub action: Action,
    pub object: &'a str,
    pub script: &'a str,
    pub params: &'a Value,
    /// `params` as JSON text, when the asker has it at hand (saves serializing it).
    pub params_json: Option<&'a str>,
    /// Provenance: origin first, `caller` last (empty: just the caller).
    pub chain: &'a [String],
}

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
            uses_chain: text.contains("origin") || text.contains("chain"),
            policy: p,
            groups: g,
            memo: Mutex::new(Memo::default()),
            ever: Mutex::new(HashMap::new()),
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
        (*self.ask(&Question {
            caller,
            target,
            action,
            object,
            script,
            params,
            params_json: None,
            chain: &[],
        }))
        .clone()
    }

    /// [`PolicyState::decide`], shared: a memoized answer costs no allocation.
    pub fn ask(&self, q: &Question) -> Arc<super::Decision> {
        let now = crate::util::now_ns() / 1_000_000_000;
        let script = self.uses_script.then_some(q.script);
        let owned_params;
        let params: Option<&str> = if self.uses_params {
            Some(match q.params_json {
                Some(p) => p,
                None => {
                    owned_params = q.params.to_string();
                    owned_params.as_str()
                }
            })
        } else {
            None
        };
        let req = Request {
            caller: q.caller,
            target: q.target,
            action: q.action,
            object: Some(q.object),
            script: q.script,
            params: q.params,
            now,
            chain: q.chain,
        };
        if q.action == Action::Run {
            // Its object is the script's name, new at nearly every run: a memo
            // would only fill up (a decision costs well under a microsecond).
            return Arc::new(self.policy.decide(&req, &self.groups));
        }
        let now_key = self.uses_now.then_some(now);
        let chain_key = self.uses_chain.then(|| q.chain.join(" "));
        let slot = q.action.index();
        {
            let memo = self.memo.lock().unwrap();
            if let Some(e) = memo
                .by_caller
                .get(q.caller)
                .and_then(|per| per[slot].get(q.object))
                .and_then(|v| {
                    v.iter().find(|e| {
                        e.script.as_deref() == script
                            && e.params.as_deref() == params
                            && e.now == now_key
                            && e.chain == chain_key
                    })
                })
            {
                return e.decision.clone();
            }
        }
        let d = Arc::new(self.policy.decide(&req, &self.groups));
        let mut memo = self.memo.lock().unwrap();
        if memo.len >= MEMO_MAX {
            *memo = Memo::default();
        }
        memo.len += 1;
        memo.by_caller.entry(q.caller.to_string()).or_default()[slot]
            .entry(q.object.to_string())
            .or_default()
            .push(MemoEntry {
                script: script.map(str::to_string),
                params: params.map(str::to_string),
                now: now_key,
                chain: chain_key,
                decision: d.clone(),
            });
        d
    }

    /// The provenance rule: permits are decided for the direct caller, forbids for
    /// every peer on the chain. So a peer this policy forbids cannot act through
    /// another peer's script (its code sent on by a peer that is permitted): the
    /// first other peer of the chain (neither the caller nor this policy's owner)
    /// for whom a forbid holds, with that decision. Its reasons: the direct
    /// caller is who vouches for the script (its own policy let it send), so its
    /// permits apply; a forbid names someone whose code must not act here, by any
    /// path.
    pub fn chain_forbid(&self, q: &Question) -> Option<(String, Arc<super::Decision>)> {
        for p in q.chain {
            if p == q.caller || p == q.target {
                continue;
            }
            let d = self.ask(&Question { caller: p, ..*q });
            if !d.allowed && !d.policies.is_empty() {
                return Some((p.clone(), d));
            }
        }
        None
    }

    /// [`PolicyState::ask`] with the provenance rule ([`PolicyState::chain_forbid`]):
    /// `Err` is the denial's explanation.
    fn ask_chain(&self, q: &Question) -> std::result::Result<Arc<super::Decision>, String> {
        let d = self.ask(q);
        if !d.allowed {
            return Err(d.explain());
        }
        match self.chain_forbid(q) {
            None => Ok(d),
            Some((p, f)) => Err(format!(
                "{} for {p}, who is on this script's chain ({}): a forbid holds for every peer on the chain",
                f.explain(),
                q.chain.join(">")
            )),
        }
    }

    /// `Policy::could_ever_allow` for `caller` (in its groups) and `action`, memoized.
    fn could_ever_allow(&self, caller: &str, action: Action) -> bool {
        let slot = action.index();
        if let Some(Some(v)) = self.ever.lock().unwrap().get(caller).map(|a| a[slot]) {
            return v;
        }
        let groups = self.groups.groups_of(caller);
        let v = self.policy.could_ever_allow(caller, &groups, action);
        let mut ever = self.ever.lock().unwrap();
        if ever.len() >= MEMO_MAX {
            ever.clear();
        }
        ever.entry(caller.to_string()).or_default()[slot] = Some(v);
        v
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
            return Ok((Box::new(OwnerHost), core.config().own_limits.clone()));
        }
        let state = self
            .state(target)
            .map_err(|e| format!("denied: {}'s policy cannot be read: {e}", target.name))?;
        let params: Value = serde_json::from_str(&job.params).unwrap_or(Value::Null);
        let d = state
            .ask_chain(&Question {
                caller: &job.caller,
                target: &target.name,
                action: Action::Run,
                object: &job.name,
                script: &job.name,
                params: &params,
                params_json: Some(&job.params),
                chain: &job.chain,
            })
            .map_err(|why| {
                format!(
                    "denied: run {} by {} at {}: {why} (policy.cedar of {})",
                    job.name, job.caller, target.name, target.name
                )
            })?;
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
                params_json: job.params.clone(),
                chain: job.chain.clone(),
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
    params_json: String,
    chain: Vec<String>,
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
        let q = Question {
            caller: &self.caller,
            target: &self.target,
            action,
            object,
            script: &self.script,
            params: &self.params,
            params_json: Some(&self.params_json),
            chain: &self.chain,
        };
        self.state.ask_chain(&q).map(|_| ()).map_err(|why| {
            format!(
                "denied: {action} {object:?} by {} at {}: {why} (policy.cedar of {})",
                self.caller, self.target, self.target
            )
        })
    }

    fn check_script(&self, ast: &AST) -> Result<(), String> {
        for (cap, f) in capabilities_used(ast) {
            let action = action_of(cap);
            if !self.state.could_ever_allow(&self.caller, action) {
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
        if crate::lattice::serves_elsewhere(&self.core, &self.caller) {
            let (c, t) = (&self.caller, &self.target);
            return crate::lattice::remote_get(c, t, key, &self.script, &self.params);
        }
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
    fn shared_answers_key_on_the_params_text_and_objects() {
        let st = PolicyState::from_texts(
            br#"permit(principal, action == Action::"write", resource) when { resource.key like "pub/*" && context.params.hasTag("m") };
permit(principal in Group::"g", action == Action::"read", resource);"#,
            b"g: a\n",
        );
        let q = |caller, action, object, json: &str| {
            let v: Value = serde_json::from_str(json).unwrap();
            st.ask(&Question {
                caller,
                target: "b",
                action,
                object,
                script: "s",
                params: &v,
                params_json: Some(json),
                chain: &[],
            })
            .allowed
        };
        for _ in 0..3 {
            assert!(q("a", Action::Write, "pub/x", r#"{"m":"1"}"#));
            assert!(!q("a", Action::Write, "pub/x", "{}"));
            assert!(!q("a", Action::Write, "priv/x", r#"{"m":"1"}"#));
            assert!(q("z", Action::Write, "pub/y", r#"{"m":"1"}"#));
            assert!(q("a", Action::Read, "anything", "{}"));
            assert!(!q("z", Action::Read, "anything", "{}"));
            // The static check, memoized per caller and action.
            assert!(st.could_ever_allow("a", Action::Read));
            assert!(!st.could_ever_allow("z", Action::Read));
            assert!(!st.could_ever_allow("a", Action::Send));
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
