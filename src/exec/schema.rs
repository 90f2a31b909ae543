//! A new `schema.toml` applied at its peer (an `Op::SetMeta` of the schema key):
//! the tables migrated in the batch's transaction (`Store::apply_schema`), the
//! data dropped with the owner's consent kept as JSON lines under
//! `DATA/removed/<peer>/` before the commit, and a log line saying what changed.
//! A refusal fails the op alone: the old schema stays in force.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::sync::Arc;

use super::txn::Effect;
use super::{Change, Core};
use crate::error::{err, Result};
use crate::peer::Peer;
use crate::store::Store;
use crate::util::{now_ns, rfc3339};

impl Core {
    pub(super) fn apply_schema(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        text: &[u8],
    ) -> Result<Vec<Effect>> {
        Self::check_policy_with(st, text)?;
        let m = st.apply_schema(text)?;
        super::test_hooks::abort_in_migration(text);
        let ts = rfc3339(now_ns());
        let mut kept = Vec::new();
        for (what, lines) in &m.removed {
            kept.push(self.keep_removed(&peer.name, &ts, what, lines)?);
        }
        let mut line = format!("{ts} schema.toml applied: {}", m.summary);
        if !kept.is_empty() {
            line.push_str(&format!("; dropped data kept in {}", kept.join(", ")));
        }
        st.append_log(&line)?;
        Ok(vec![
            Effect::Changed(Change::Meta(crate::tables::META_KEY.to_string())),
            Effect::Changed(Change::Log),
        ])
    }

    /// A new `policy.cedar` validated against the peer's declared tables.
    pub(super) fn check_policy(st: &mut dyn Store, text: &[u8]) -> Result<()> {
        let tables = st.schema()?;
        let text = std::str::from_utf8(text)
            .map_err(|_| err!(libc::EINVAL, "policy.cedar is not UTF-8 text"))?;
        crate::policy::Policy::parse_for(text, &tables)
            .map(|_| ())
            .map_err(|e| err!(libc::EINVAL, "{e}"))
    }

    /// The policy in force still validates against the tables of a new schema.
    fn check_policy_with(st: &mut dyn Store, schema: &[u8]) -> Result<()> {
        let Some((policy, _)) = st.meta(crate::policy::PolicyText::Policy.key())? else {
            return Ok(());
        };
        let schema = std::str::from_utf8(schema)
            .map_err(|_| err!(libc::EINVAL, "schema.toml is not UTF-8 text"))?;
        let tables = crate::tables::parse::parse(schema)?;
        let policy = String::from_utf8_lossy(&policy);
        crate::policy::Policy::parse_for(&policy, &tables).map_err(|e| {
            err!(
                libc::EINVAL,
                "policy.cedar would no longer validate against it: {e} (change the policy first)"
            )
        })?;
        Ok(())
    }

    /// Writes dropped data to `DATA/removed/<peer>/<time>-<what>.jsonl`, synced,
    /// private; its path (relative to DATA) for the log.
    fn keep_removed(&self, peer: &str, ts: &str, what: &str, lines: &str) -> Result<String> {
        let rel = format!("removed/{peer}/{ts}-{what}.jsonl");
        let path = self.0.cfg.data_dir.join(&rel);
        let dir = path.parent().expect("a file under removed/");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err!(libc::EIO, "cannot make {}: {e}", dir.display()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                err!(
                    libc::EIO,
                    "cannot keep dropped data in {}: {e}",
                    path.display()
                )
            })?;
        f.write_all(lines.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| {
                err!(
                    libc::EIO,
                    "cannot keep dropped data in {}: {e}",
                    path.display()
                )
            })?;
        crate::util::sync_dir(dir);
        Ok(rel)
    }
}
