//! The policy at work: decides, for every run and host call of another peer's
//! script, what it may do ([`PolicyGate::prepare`], which the executor calls before
//! every run), and what one peer may read of another's state (the mount's
//! `peers/<other>/state/`). It reaches other peers only through [`Peers`], which
//! the executor implements: the policy layer knows nothing of the executor.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rhai::AST;
use serde_json::Value;

use super::calls::{capabilities_used, row_calls_used};
use super::rows::{RowAsk, RowRule};
use super::state::{Denied, PolicyState, Question};
use super::{Action, Decision};
use crate::error::{err, Result};
use crate::peer::Peer;
use crate::script::{Access, Capability, Host, Limits, OwnerHost, RowAction};
use crate::store::{Job, Store};

/// What the policy needs of the daemon around it: other peers, opened by name (a
/// script's caller, whose own policy guards what the target may read of it), and
/// the limits a run gets before any policy.
pub trait Peers: Clone + Send + Sync + 'static {
    /// The open peer `name` (opened, and recovered, if it was closed).
    fn peer(&self, name: &str) -> Result<Arc<Peer>>;
    /// The limits a run gets before any policy: the owner's own, or others'.
    fn base_limits(&self, own: bool) -> &Limits;
    /// Whether `name` is served by another daemon of the lattice (not here).
    fn serves_elsewhere(&self, _name: &str) -> bool {
        false
    }
    /// `key` of `owner` (served elsewhere) for `reader`, as `owner`'s policy decides
    /// where it is served.
    fn remote_get(
        &self,
        owner: &str,
        _reader: &str,
        _key: &str,
        _script: &str,
        _params: &Value,
    ) -> Result<Option<Value>> {
        Err(err!(libc::ENOENT, "peer {owner:?} is not served here"))
    }
}

/// The rule every run and host call meets, stated once: the owner's own scripts
/// have every capability, and its policy is not even read for them; every other
/// peer's script gets what the owner's policy decides.
pub fn owns(caller: &str, target: &str) -> bool {
    caller == target
}

/// What a peer's policy answers one question, by the rule of a run
/// ([`owns`], then [`PolicyState::ask_chain`]): what `peerfs policy explain` shows.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The caller is the target: every capability.
    Owner,
    Allowed(Arc<Decision>),
    Denied(Denied),
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Verdict::Denied(_))
    }

    /// One line, as [`Decision::explain`].
    pub fn explain(&self) -> String {
        match self {
            Verdict::Owner => "allow (the owner's own scripts have every capability)".into(),
            Verdict::Allowed(d) => d.explain(),
            Verdict::Denied(why) => why.to_string(),
        }
    }
}

/// What `target`'s policy, read from its store `s`, answers `caller` doing `action`
/// on `object` (which is also the script's name; no params, no chain): the
/// same rule and decision a run meets.
pub fn verdict(
    s: &mut dyn Store,
    caller: &str,
    target: &str,
    action: Action,
    object: &str,
) -> Result<Verdict> {
    if owns(caller, target) {
        return Ok(Verdict::Owner);
    }
    let state = PolicyState::load(s)?;
    let params = serde_json::json!({});
    Ok(
        match state.ask_chain(&Question {
            caller,
            target,
            action,
            object,
            script: object,
            params: &params,
            params_json: None,
            chain: &[],
        }) {
            Ok(d) => Verdict::Allowed(d),
            Err(why) => Verdict::Denied(why),
        },
    )
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
    pub fn state(&self, peer: &Peer) -> Result<Arc<PolicyState>> {
        let gen = peer.policy_gen.load(Ordering::Acquire);
        if let Some((g, s)) = self.cache.lock().unwrap().get(&peer.name) {
            if *g == gen {
                return Ok(s.clone());
            }
        }
        let st = Arc::new(peer.read(|s| PolicyState::load(s))?);
        let mut c = self.cache.lock().unwrap();
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(peer.name.clone(), (gen, st.clone()));
        Ok(st)
    }

    /// Whether `reader` may read `key` of `owner` (for `peers/<owner>/state/`).
    pub fn may_read(&self, peers: &impl Peers, reader: &str, owner: &str, key: &str) -> bool {
        let Ok(p) = peers.peer(owner) else {
            return false;
        };
        let Ok(st) = self.state(&p) else { return false };
        st.decide(reader, owner, Action::Read, key, "", &Value::Null)
            .allowed
    }
}

impl PolicyGate {
    /// Before a run of `job` at `target`: its host (what decides each host call)
    /// and its limits, or `Err` (`EACCES`) = refused at `run` (the message names
    /// the action and the policy).
    pub fn prepare<P: Peers>(
        self: &Arc<Self>,
        peers: &P,
        target: &Arc<Peer>,
        job: &Job,
    ) -> Result<(Box<dyn Host>, Limits)> {
        if owns(&job.caller, &target.name) {
            return Ok((Box::new(OwnerHost), peers.base_limits(true).clone()));
        }
        let state = self.state(target).map_err(|e| {
            err!(
                libc::EACCES,
                "denied: {}'s policy cannot be read: {e}",
                target.name
            )
            .with_source(e)
        })?;
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
                err!(
                    libc::EACCES,
                    "denied: run {} by {} at {}: {why} (policy.cedar of {})",
                    job.name,
                    job.caller,
                    target.name,
                    target.name
                )
                .with_source(why)
            })?;
        let limits = peers.base_limits(false).tightened(&d.limits);
        Ok((
            Box::new(PolicyHost {
                gate: self.clone(),
                peers: peers.clone(),
                state,
                caller: job.caller.clone(),
                target: target.name.clone(),
                script: job.name.clone(),
                params,
                params_json: job.params.clone(),
                chain: job.chain.clone(),
                rows: Mutex::new(HashMap::new()),
            }),
            limits,
        ))
    }
}

/// What another peer's script may do, decided by the target's policy at every call.
pub struct PolicyHost<P> {
    gate: Arc<PolicyGate>,
    peers: P,
    state: Arc<PolicyState>,
    caller: String,
    target: String,
    script: String,
    params: Value,
    params_json: String,
    chain: Vec<String>,
    /// The rule of each (row action, table) this run asked about.
    rows: Mutex<HashMap<(RowAction, String), Arc<RowRule>>>,
}

impl<P> PolicyHost<P> {
    fn row_rule(&self, action: RowAction, table: &str) -> Arc<RowRule> {
        let key = (action, table.to_string());
        if let Some(r) = self.rows.lock().unwrap().get(&key) {
            return r.clone();
        }
        let groups = self.state.groups.groups_of(&self.caller);
        let rule = Arc::new(
            self.state
                .policy
                .row_rule(&self.ask(&groups), action, table),
        );
        self.rows.lock().unwrap().insert(key, rule.clone());
        rule
    }

    fn ask<'a>(&'a self, groups: &'a [String]) -> RowAsk<'a> {
        RowAsk {
            caller: &self.caller,
            groups,
            script: &self.script,
            params: &self.params,
            chain: &self.chain,
        }
    }
}

fn action_of(cap: Capability) -> Action {
    match cap {
        Capability::Read => Action::Read,
        Capability::Write => Action::Write,
        Capability::Send => Action::Send,
        Capability::Import => Action::Import,
    }
}

impl<P: Peers> Host for PolicyHost<P> {
    fn check(&self, cap: Capability, object: &str) -> Result<()> {
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
            err!(
                libc::EACCES,
                "denied: {action} {object:?} by {} at {}: {why} (policy.cedar of {})",
                self.caller,
                self.target,
                self.target
            )
            .with_source(why)
        })
    }

    fn row_access(&self, action: RowAction, table: &str) -> Access {
        self.row_rule(action, table).access
    }

    fn check_row(
        &self,
        action: RowAction,
        table: &str,
        row: &crate::tables::rows::Row,
    ) -> Result<()> {
        let rule = self.row_rule(action, table);
        rule.decide(&self.state.tables, row).map_err(|why| {
            err!(
                libc::EACCES,
                "denied: {why}, for {} at {} (policy.cedar of {})",
                self.caller,
                self.target,
                self.target
            )
        })
    }

    fn check_script(&self, ast: &AST) -> Result<()> {
        for (cap, f) in capabilities_used(ast) {
            let action = action_of(cap);
            if !self.state.could_ever_allow(&self.caller, action) {
                return Err(err!(
                    libc::EACCES,
                    "denied before running: the script calls {f}(), and no rule in the policy.cedar of {} can ever allow {} to {action}",
                    self.target, self.caller
                ));
            }
        }
        for (action, table) in row_calls_used(ast) {
            // `select` never denies: rows the caller may not see are not there.
            if action != RowAction::Select
                && self.state.tables.table(&table).is_some()
                && self.row_access(action, &table) == Access::None
            {
                return Err(err!(
                    libc::EACCES,
                    "denied before running: the script calls db.{table}.{}(), and no rule in the policy.cedar of {} can ever allow {} to {} rows of {table}",
                    match action {
                        RowAction::Insert => "insert",
                        RowAction::Update => "update",
                        _ => "delete",
                    },
                    self.target,
                    self.caller,
                    action.as_str()
                ));
            }
        }
        Ok(())
    }

    fn caller_get(&self, key: &str) -> Result<Option<Value>> {
        // The caller's own policy decides what the target may read of it (no
        // confused deputy: the target's code cannot read more than the caller allows).
        if self.peers.serves_elsewhere(&self.caller) {
            let (c, t) = (&self.caller, &self.target);
            return self.peers.remote_get(c, t, key, &self.script, &self.params);
        }
        let caller = self.peers.peer(&self.caller)?;
        let st = self.gate.state(&caller)?;
        let d = st.decide(
            &self.target,
            &self.caller,
            Action::Read,
            key,
            &self.script,
            &self.params,
        );
        if !d.allowed {
            return Err(err!(
                libc::EACCES,
                "denied: caller_get {key:?}: the policy.cedar of {} does not let {} read it: {}",
                self.caller,
                self.target,
                d.explain()
            ));
        }
        caller.read(|s| s.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

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
