//! The executor's side of the history: every run, and every write through the
//! mount, is an entry of the peer's history (begun before it changes anything,
//! ended after), and the history is pruned to its retention after each kept
//! entry. An entry that changed the policy texts or modules tells the daemon,
//! which caches them.

use super::op::Op;
use super::txn::Effect;
use super::{Change, Core};
use crate::error::Result;
use crate::store::history::EntryHead;
use crate::store::Store;
use crate::util::now_ns;

impl Core {
    /// Begins the entry of a run or write, when history is kept.
    pub(super) fn history_begin(
        &self,
        st: &mut dyn Store,
        id: &str,
        name: &str,
        caller: &str,
        chain: &[String],
    ) -> Result<()> {
        if !self.0.cfg.history.records() {
            return Ok(());
        }
        let Some(h) = st.history() else {
            return Ok(());
        };
        let chain = if chain.is_empty() {
            vec![caller.to_string()]
        } else {
            chain.to_vec()
        };
        h.begin_entry(&EntryHead {
            id: id.to_string(),
            name: name.to_string(),
            caller: caller.to_string(),
            chain,
        })
    }

    /// Ends the entry begun last; prunes the history when it was kept. The
    /// effects of what it changed beyond state (the policy texts, modules).
    pub(super) fn history_end(&self, st: &mut dyn Store) -> Result<Vec<Effect>> {
        let Some(h) = st.history() else {
            return Ok(Vec::new());
        };
        let ended = h.end_entry()?;
        let mut fx = Vec::new();
        if !self.0.cfg.history.records() {
            // History turned off: entries kept from before go (once), so that no
            // entry outlives changes it did not see.
            h.prune(now_ns(), &self.0.cfg.history)?;
        }
        if !ended.kept {
            return Ok(fx);
        }
        h.prune(now_ns(), &self.0.cfg.history)?;
        if ended.meta {
            for t in crate::policy::PolicyText::ALL {
                fx.push(Effect::Changed(Change::Meta(t.key().to_string())));
            }
        }
        if ended.modules {
            fx.push(Effect::Changed(Change::Modules));
        }
        Ok(fx)
    }

    /// An op through the mount, as an entry of its own when it changes a value,
    /// a module or a policy text.
    pub(super) fn with_history(
        &self,
        st: &mut dyn Store,
        owner: &str,
        op: &Op,
        apply: impl FnOnce(&mut dyn Store) -> Result<Vec<Effect>>,
    ) -> Result<Vec<Effect>> {
        let Some(name) = op_label(op) else {
            return apply(st);
        };
        let chain = [owner.to_string()];
        self.history_begin(st, &crate::util::new_id(), &name, owner, &chain)?;
        let fx = apply(st);
        let ended = self.history_end(st);
        let mut fx = fx?;
        fx.extend(ended?);
        Ok(fx)
    }
}

/// What an op through the mount is called in the history; `None`: it changes
/// nothing the history records. Every op that writes what the history records
/// needs a name here: without one it begins no entry and its change goes
/// unrecorded.
fn op_label(op: &Op) -> Option<String> {
    Some(match op {
        Op::SetBytes(k, _) => format!("write state/{k}"),
        Op::Remove(k) => format!("rm state/{k}"),
        Op::Rename(a, b) => format!("mv state/{a} state/{b}"),
        Op::RenameDir(a, b) => format!("mv state/{a}/ state/{b}/"),
        Op::SetMode(k, _) => format!("chmod state/{k}"),
        Op::SetModule(m, _) => format!("write modules/{m}.rhai"),
        Op::RemoveModule(m) => format!("rm modules/{m}.rhai"),
        Op::PutRow { table, key, .. } => format!("write tables/{table}/{key}.json"),
        Op::DeleteRow { table, key } => format!("rm tables/{table}/{key}.json"),
        Op::SetMeta(k, _) => match crate::policy::PolicyText::of_key(k) {
            Some(t) => format!("write {}", t.file()),
            None => return None,
        },
        _ => return None,
    })
}
