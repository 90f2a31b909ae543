//! A peer's policy as the gate uses it: its parsed `policy.cedar` and `groups`
//! (read from the peer's store), with a memo of its decisions, and the provenance
//! rule that makes a forbid hold for every peer on a script's chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Action, Decision, Groups, Policy, PolicyText, Request};
use crate::error::Result;
use crate::store::Store;

/// A peer's parsed `policy.cedar` and `groups`, with a memo of its decisions.
pub struct PolicyState {
    pub policy: Policy,
    pub groups: Groups,
    /// The peer's declared tables (the policy was validated against them).
    pub tables: Arc<crate::tables::Schema>,
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
    decision: Arc<Decision>,
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

/// Why [`PolicyState::ask_chain`] refused; its `Display` is the explanation a
/// denial shows.
#[derive(Debug, Clone)]
pub enum Denied {
    /// The target's policy does not allow the question.
    Policy(Arc<Decision>),
    /// A forbid of `peer`, who is on the script's chain (`a>b>c`), holds.
    Chain {
        peer: String,
        decision: Arc<Decision>,
        chain: String,
    },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Policy(d) => f.write_str(&d.explain()),
            Denied::Chain {
                peer,
                decision,
                chain,
            } => write!(
                f,
                "{} for {peer}, who is on this script's chain ({chain}): a forbid holds for every peer on the chain",
                decision.explain()
            ),
        }
    }
}

impl std::error::Error for Denied {}

impl PolicyState {
    /// Parses stored texts; a stored text that no longer parses (it was validated
    /// when written) denies everything rather than failing open.
    pub fn from_texts(policy: &[u8], groups: &[u8]) -> PolicyState {
        PolicyState::with_tables(policy, groups, Arc::default())
    }

    /// [`PolicyState::from_texts`] of a peer that declares `tables`.
    pub fn with_tables(
        policy: &[u8],
        groups: &[u8],
        tables: Arc<crate::tables::Schema>,
    ) -> PolicyState {
        let p = std::str::from_utf8(policy)
            .ok()
            .and_then(|t| Policy::parse_for(t, &tables).ok())
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
            tables,
            memo: Mutex::new(Memo::default()),
            ever: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a peer's policy and groups from its store ([`PolicyState::from_texts`]).
    pub fn load(s: &mut dyn Store) -> Result<PolicyState> {
        let p = s.meta(PolicyText::Policy.key())?.map(|x| x.0);
        let g = s.meta(PolicyText::Groups.key())?.map(|x| x.0);
        Ok(PolicyState::with_tables(
            &p.unwrap_or_default(),
            &g.unwrap_or_default(),
            s.schema()?,
        ))
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
    ) -> Decision {
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
    pub fn ask(&self, q: &Question) -> Arc<Decision> {
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
    pub fn chain_forbid(&self, q: &Question) -> Option<(String, Arc<Decision>)> {
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

    /// [`PolicyState::ask`] with the provenance rule ([`PolicyState::chain_forbid`]).
    pub fn ask_chain(&self, q: &Question) -> std::result::Result<Arc<Decision>, Denied> {
        let d = self.ask(q);
        if !d.allowed {
            return Err(Denied::Policy(d));
        }
        match self.chain_forbid(q) {
            None => Ok(d),
            Some((peer, decision)) => Err(Denied::Chain {
                peer,
                decision,
                chain: q.chain.join(">"),
            }),
        }
    }

    /// `Policy::could_ever_allow` for `caller` (in its groups) and `action`, memoized.
    pub(super) fn could_ever_allow(&self, caller: &str, action: Action) -> bool {
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
}
