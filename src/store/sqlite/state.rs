//! How the SQLite backend keeps state values: the shape rule (a key is a value
//! or a folder, never both), one blob per value apart from its metadata, and free
//! pages given back after big values go.

use rusqlite::{params, OptionalExtension};

use super::history::{Ver, INLINE_MAX};
use super::SqliteStore;
use crate::error::{err, Result};
use crate::store::history::ItemKind;
use crate::util::now_ns;

/// Free pages past which a change that freed them gives them back to the file
/// system (`auto_vacuum=INCREMENTAL`): about 1 MiB.
const RECLAIM_PAGES: i64 = 256;

/// The exclusive upper bound of keys beginning with `prefix` that ends in `/`.
pub(super) fn prefix_end(prefix: &str) -> String {
    // '/' + 1 == '0': every key in the folder sorts below "<folder>0".
    let mut s = prefix.to_string();
    s.pop();
    s.push('0');
    s
}

impl SqliteStore {
    /// Gives free pages back to the file system once there are many (after a big
    /// value was removed or replaced by a smaller one), inside the open transaction.
    pub(super) fn reclaim(&mut self) -> Result<()> {
        let free: i64 = self
            .conn
            .prepare_cached("PRAGMA freelist_count")?
            .query_row([], |r| r.get(0))?;
        if free > RECLAIM_PAGES {
            let mut stmt = self.conn.prepare_cached("PRAGMA incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok(())
    }

    /// Refuses a key that would make a value and a folder share a name.
    pub(super) fn check_shape(&mut self, key: &str) -> Result<()> {
        // No ancestor may be a value...
        let mut idx = 0;
        while let Some(p) = key[idx..].find('/') {
            let anc = &key[..idx + p];
            let is_val: Option<i64> = self
                .conn
                .prepare_cached("SELECT 1 FROM state WHERE key=?1")?
                .query_row([anc], |r| r.get(0))
                .optional()?;
            if is_val.is_some() {
                return Err(err!(
                    libc::ENOTDIR,
                    "state key {key:?}: {anc:?} holds a value, so it cannot be a folder"
                ));
            }
            idx += p + 1;
        }
        // ...and the key itself may not be a folder.
        if self.folder_exists(key)? {
            return Err(err!(
                libc::EISDIR,
                "state key {key:?} is a folder of other keys: remove them first"
            ));
        }
        Ok(())
    }

    pub(super) fn folder_exists(&mut self, key: &str) -> Result<bool> {
        let lo = format!("{key}/");
        let hi = prefix_end(&lo);
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM state WHERE key>=?1 AND key<?2 LIMIT 1")?
            .query_row([&lo, &hi], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some())
    }

    /// Stores `data` (JSON text if `typed`, else a file's bytes) as `key`'s value.
    /// The old value's row is rewritten in place unless the history keeps it:
    /// then the new value gets a row of its own (nothing is copied).
    pub(super) fn put(&mut self, key: &str, typed: bool, data: &[u8], size: u64) -> Result<()> {
        let now = now_ns();
        if let Some((old, small)) = self.live_version_small(key)? {
            let (pinned, before) = self.hist_keep(&old, ItemKind::State, key, small)?;
            let (id, moved) = match old.data() {
                Some(d) if !pinned => {
                    self.conn
                        .prepare_cached("UPDATE state_data SET data=?2 WHERE id=?1")?
                        .execute(params![d, data])?;
                    (d, false)
                }
                _ => (self.insert_data(data)?, true),
            };
            let ver = self.fresh_ver()?;
            // The same row rewritten: `id` (indexed by `state_id`) stays, so the
            // statement leaves it out and the index is not touched.
            let sql = if moved {
                "UPDATE state SET size=?2, mtime=?3, ctime=?3, typed=?4, id=?5, ver=?6 WHERE key=?1"
            } else {
                "UPDATE state SET size=?2, mtime=?3, ctime=?3, typed=?4, ver=?6 WHERE key=?1 AND id=?5"
            };
            self.conn.prepare_cached(sql)?.execute(params![
                key,
                size as i64,
                now,
                typed,
                id,
                ver
            ])?;
            let new = Ver::at(id, ver, typed, size as i64, old.mode);
            self.hist_note(ItemKind::State, key, Some(before), Some(new))?;
            // Only a value that may have had overflow pages frees pages when
            // it is rewritten (a small one is rewritten within its page).
            if old.size > INLINE_MAX {
                self.reclaim()?;
            }
            return Ok(());
        }
        self.check_shape(key)?;
        let id = self.insert_data(data)?;
        let ver = self.fresh_ver()?;
        self.conn
            .prepare_cached(
                "INSERT INTO state(key,size,mtime,ctime,typed,id,ver) VALUES(?1,?2,?3,?3,?4,?5,?6)",
            )?
            .execute(params![key, size as i64, now, typed, id, ver])?;
        let new = Ver::at(id, ver, typed, size as i64, None);
        self.hist_note(ItemKind::State, key, None, Some(new))?;
        self.touch_parent(key, now)
    }

    pub(super) fn insert_data(&mut self, data: &[u8]) -> Result<i64> {
        self.conn
            .prepare_cached("INSERT INTO state_data(data) VALUES(?1)")?
            .execute(params![data])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The keys under the folder prefix `lo` (up to `hi`) and their versions,
    /// when the history records (a folder about to move).
    pub(super) fn moved_versions(&mut self, lo: &str, hi: &str) -> Result<Vec<(String, Ver)>> {
        if !self.recording() {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, id, coalesce(ver, id), typed, size, mode FROM state WHERE key>=?1 AND key<?2",
        )?;
        let rows = stmt.query_map(params![lo, hi], |r| {
            Ok((
                r.get(0)?,
                Ver::at(r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A key's stored form: whether it is JSON text, and the blob.
    pub(super) fn stored(&mut self, key: &str) -> Result<Option<(bool, Vec<u8>)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT s.typed, d.data FROM state s JOIN state_data d ON d.id=s.id WHERE s.key=?1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}
