//! A new `schema.toml` applied at its peer (an `Op::SetMeta` of the schema key):
//! the tables migrated in the batch's transaction (`Store::apply_schema`), the
//! data dropped with the owner's consent kept as JSON lines under
//! `DATA/removed/<peer>/` before the commit, and a log line saying what changed.
//! A refusal fails the op alone: the old schema stays in force. Also the row
//! files the owner writes and removes on the mount (`Op::PutRow`, `Op::DeleteRow`).

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

    /// A row file written or removed by the owner.
    pub(super) fn apply_row(
        st: &mut dyn Store,
        peer: &str,
        op: &super::op::Op,
    ) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        let (table, key) = match op {
            super::op::Op::PutRow { table, key, json } => {
                put_row(st, peer, table, key, json)?;
                (table, key)
            }
            super::op::Op::DeleteRow { table, key } => {
                let id = row_id(st, table, key)?;
                if !st.row_delete(table, &id)? {
                    return Err(err!(libc::ENOENT, "no row {key:?} in table {table}"));
                }
                st.append_log(&format!("{ts} remove tables/{table}/{key}.json"))?;
                return Ok(vec![
                    Effect::Changed(Change::Rows),
                    Effect::Changed(Change::Log),
                ]);
            }
            _ => unreachable!("apply_one routes only row ops to apply_row"),
        };
        st.append_log(&format!("{ts} write tables/{table}/{key}.json"))?;
        Ok(vec![
            Effect::Changed(Change::Rows),
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

/// The key of a row file's name in `table`.
fn row_id(st: &mut dyn Store, table: &str, key: &str) -> Result<serde_json::Value> {
    let schema = st.schema()?;
    let t = crate::tables::rows::table(&schema, table)?;
    let id = match t.key {
        crate::tables::KeyKind::Int => serde_json::Value::from(
            key.parse::<i64>()
                .map_err(|_| err!(libc::EINVAL, "table {table}: {key:?} is not an integer key"))?,
        ),
        _ => serde_json::Value::String(key.to_string()),
    };
    crate::tables::value::key_sql(t, &id)?;
    Ok(id)
}

/// A row file's JSON as the row of its key: inserted (the owner its owner), or
/// replacing the row whole (fields left out take their defaults). `id` and
/// `owner`, if the file has them, must be the row's.
fn put_row(st: &mut dyn Store, peer: &str, table: &str, key: &str, json: &[u8]) -> Result<()> {
    let id = row_id(st, table, key)?;
    let schema = st.schema()?;
    let t = crate::tables::rows::table(&schema, table)?;
    let mut values = match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => {
            return Err(err!(
                libc::EINVAL,
                "tables/{table}/{key}.json: expected one JSON object (a row)"
            ))
        }
    };
    let before = st.row_get(table, &id)?;
    if values.get(crate::tables::ID).is_some_and(|v| *v != id) {
        return Err(err!(
            libc::EINVAL,
            "table {table}, field id: the file's name says {key:?}"
        ));
    }
    values.remove(crate::tables::ID);
    let owner = before
        .as_ref()
        .and_then(|b| b.get(crate::tables::OWNER))
        .and_then(|o| o.as_str())
        .unwrap_or(peer)
        .to_string();
    if t.owner
        && values
            .remove(crate::tables::OWNER)
            .is_some_and(|o| o != owner.as_str())
    {
        return Err(err!(libc::EINVAL, "table {table}, field owner: read-only"));
    }
    values.insert(crate::tables::ID.into(), id);
    let row = crate::tables::rows::prepare_insert(&schema, t, &owner, &values, now_ns())?;
    if before.is_some() {
        st.row_replace(table, &row)?;
    } else {
        st.row_insert(table, &row)?;
    }
    Ok(())
}
