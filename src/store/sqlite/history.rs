//! The SQLite backend's history (tables `hist_runs`, one row per entry, and
//! `hist_changes`, one row per item an entry changed): recording changes as
//! they happen, values kept by reference to their `state_data` row (a row is
//! freed only when neither the live state nor a kept entry names it), and
//! pruning. Reading the past, undo and restore are in `history_read.rs`.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::error::Result;
use crate::store::history::{Ended, EntryHead, ItemKind, Retention, TRACKED_META};
use crate::util::now_ns;

/// One version of an item, by reference: the `state_data` row of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ver {
    pub data: i64,
    pub typed: bool,
    pub size: i64,
    pub mode: Option<u32>,
}

/// What the open entry changed of one item: the first `before`, the last `after`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    b: Option<Ver>,
    a: Option<Ver>,
}

/// The entry being recorded (its changes are kept here and written as rows
/// when it ends: one row per item however often it changed), and what is
/// cached of the kept ones.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    cur: Option<(i64, EntryHead)>,
    items: BTreeMap<(ItemKind, String), Pending>,
    pub(super) bytes: Option<u64>,
    /// The next entry's seq, once known (forgotten at a rollback).
    next: Option<i64>,
    /// The open entry changed a policy text / a module.
    meta: bool,
    modules: bool,
    /// While a mark is set (see [`SqliteStore::hist_mark`]): each item's
    /// change noted since, with what the entry held of it before.
    log: Vec<((ItemKind, String), Option<Pending>)>,
    marks: usize,
}

/// Whether the history records changes of the meta row `key`.
pub(super) fn tracked(key: &str) -> bool {
    TRACKED_META.contains(&key)
}

impl SqliteStore {
    /// The live version of a state key.
    pub(super) fn live_version(&mut self, key: &str) -> Result<Option<Ver>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, typed, size, mode FROM state WHERE key=?1")?
            .query_row([key], |r| {
                Ok(Ver {
                    data: r.get(0)?,
                    typed: r.get(1)?,
                    size: r.get(2)?,
                    mode: r.get(3)?,
                })
            })
            .optional()?)
    }

    pub(super) fn recording(&self) -> bool {
        self.hist.cur.is_some()
    }

    pub(super) fn hist_open_seq(&self) -> Option<i64> {
        self.hist.cur.as_ref().map(|c| c.0)
    }

    pub(super) fn hist_open_id(&self) -> Option<String> {
        self.hist.cur.as_ref().map(|c| c.1.id.clone())
    }

    pub(super) fn hist_begin(&mut self, head: &EntryHead) -> Result<()> {
        let seq = match self.hist.next {
            Some(s) => s,
            None => self
                .conn
                .prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM hist_runs")?
                .query_row([], |r| r.get(0))?,
        };
        self.hist.next = Some(seq);
        self.hist.items.clear();
        self.hist.cur = Some((seq, head.clone()));
        self.hist.meta = false;
        self.hist.modules = false;
        Ok(())
    }

    /// Stops recording (after a rollback the entry is gone with its changes).
    pub(super) fn hist_forget(&mut self) {
        self.hist.cur = None;
        self.hist_rolled_back();
    }

    /// After a rollback (to a savepoint too): what is cached may be gone. An
    /// open entry's changes all sit inside the savepoint of its run or op, so
    /// they go with it.
    pub(super) fn hist_rolled_back(&mut self) {
        self.hist.items.clear();
        self.hist.bytes = None;
        self.hist.next = None;
    }

    /// Ends the open entry: its row and a row per item it changed (changes that
    /// came back to where they began are none), or nothing when it changed nothing.
    pub(super) fn hist_end(&mut self) -> Result<Ended> {
        let Some((seq, head)) = self.hist.cur.take() else {
            return Ok(Ended::default());
        };
        let items = std::mem::take(&mut self.hist.items);
        let mut ended = Ended {
            kept: false,
            meta: self.hist.meta,
            modules: self.hist.modules,
        };
        let changed: Vec<_> = items
            .into_iter()
            .filter(|(_, p)| p.b.map(|v| (v.data, v.mode)) != p.a.map(|v| (v.data, v.mode)))
            .collect();
        if changed.is_empty() {
            return Ok(ended);
        }
        let bytes: i64 = changed
            .iter()
            .filter_map(|(_, p)| p.b.map(|v| v.size))
            .sum();
        self.conn
            .prepare_cached(
                "INSERT INTO hist_runs(seq, id, name, caller, chain, at, bytes) VALUES(?1,?2,?3,?4,?5,?6,?7)",
            )?
            .execute(params![
                seq,
                head.id,
                head.name,
                head.caller,
                crate::store::rows::chain_text(&head.chain),
                now_ns(),
                bytes
            ])?;
        for ((kind, item), p) in &changed {
            self.hist_row(seq, *kind, item, p)?;
        }
        self.hist.next = Some(seq + 1);
        if let Some(b) = self.hist.bytes.as_mut() {
            *b += bytes as u64;
        }
        ended.kept = true;
        Ok(ended)
    }

    fn hist_row(&mut self, seq: i64, kind: ItemKind, item: &str, p: &Pending) -> Result<()> {
        let (b, a) = (p.b.as_ref(), p.a.as_ref());
        self.conn
            .prepare_cached(
                "INSERT INTO hist_changes(seq, kind, item, b_ref, b_typed, b_size, b_mode, a_ref, a_typed, a_size, a_mode)
                 VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            )?
            .execute(params![
                seq,
                kind.as_str(),
                item,
                b.map(|v| v.data),
                b.map(|v| v.typed),
                b.map(|v| v.size),
                b.and_then(|v| v.mode),
                a.map(|v| v.data),
                a.map(|v| v.typed),
                a.map(|v| v.size),
                a.and_then(|v| v.mode),
            ])?;
        Ok(())
    }

    /// Records that `item` went from `before` to `after` in the open entry (the
    /// first change of an item keeps its `before`; later ones move `after`).
    pub(super) fn hist_note(
        &mut self,
        kind: ItemKind,
        item: &str,
        before: Option<Ver>,
        after: Option<Ver>,
    ) -> Result<()> {
        if self.recording() {
            if self.hist.marks > 0 {
                let key = (kind, item.to_string());
                let prev = self.hist.items.get(&key).copied();
                self.hist.log.push((key, prev));
            }
            self.hist
                .items
                .entry((kind, item.to_string()))
                .or_insert(Pending {
                    b: before,
                    a: after,
                })
                .a = after;
        }
        Ok(())
    }

    /// Marks where the open entry's items are before a step that a savepoint
    /// of its own may roll back (marks nest).
    pub(super) fn hist_mark(&mut self) -> usize {
        self.hist.marks += 1;
        self.hist.log.len()
    }

    /// The step of `mark` was kept.
    pub(super) fn hist_release(&mut self, _mark: usize) {
        self.hist.marks -= 1;
        if self.hist.marks == 0 {
            self.hist.log.clear();
        }
    }

    /// The step of `mark` was rolled back: the items as they were at the mark.
    pub(super) fn hist_undo_to(&mut self, mark: usize) {
        while self.hist.log.len() > mark {
            let Some((key, prev)) = self.hist.log.pop() else {
                break;
            };
            match prev {
                Some(p) => self.hist.items.insert(key, p),
                None => self.hist.items.remove(&key),
            };
        }
        self.hist.marks -= 1;
        if self.hist.marks == 0 {
            self.hist.log.clear();
        }
    }

    /// Whether the open entry keeps `data` as the `before` of one of its items.
    fn open_before(&self, data: i64) -> bool {
        (self.hist.items.values()).any(|p| p.b.map(|v| v.data) == Some(data))
    }

    /// Whether the value row `data`, now `item`'s, must outlive a change of it:
    /// named by a kept entry, or about to become the open entry's `before`.
    pub(super) fn hist_pinned(&mut self, data: i64, kind: ItemKind, item: &str) -> Result<bool> {
        if self.recording() {
            match self.hist.items.get(&(kind, item.to_string())) {
                // The first change of the item in this entry: `data` becomes its before.
                None => return Ok(true),
                Some(p) if p.b.map(|v| v.data) == Some(data) => return Ok(true),
                Some(_) => {}
            }
            // `data` came to the item in this entry: made here (only this
            // entry's `after` names it), or a kept version (some `before` does).
            return Ok(self.open_before(data) || self.named_before(data)?);
        }
        Ok(self.named_before(data)? || self.latest_after(kind, item, data)?)
    }

    /// Whether a kept entry's `before` names the value row `data`.
    fn named_before(&mut self, data: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM hist_changes WHERE b_ref=?1 LIMIT 1")?
            .query_row([data], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some())
    }

    /// Whether `data` is the `after` of the latest entry that changed the item.
    /// (An older entry's `after` is the `before` of the next change: a value
    /// named only as an `after` is the item's live value or one this entry made.)
    fn latest_after(&mut self, kind: ItemKind, item: &str, data: i64) -> Result<bool> {
        let a: Option<Option<i64>> = self
            .conn
            .prepare_cached(
                "SELECT a_ref FROM hist_changes WHERE kind=?1 AND item=?2 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![kind.as_str(), item], |r| r.get(0))
            .optional()?;
        Ok(a == Some(Some(data)))
    }

    /// Deletes the value row `data` unless the live state or a kept entry's
    /// `before` names it (see `latest_after`), or, outside an entry, it is the
    /// `after` of the latest entry that changed `item`, whose value it was.
    pub(super) fn free_data(&mut self, data: i64) -> Result<()> {
        if self.open_before(data) {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "DELETE FROM state_data WHERE id=?1
                   AND NOT EXISTS (SELECT 1 FROM state WHERE id=?1)
                   AND NOT EXISTS (SELECT 1 FROM hist_changes WHERE b_ref=?1)",
            )?
            .execute([data])?;
        Ok(())
    }

    /// [`SqliteStore::free_data`] of the value `item` held until now.
    pub(super) fn free_old(&mut self, kind: ItemKind, item: &str, data: i64) -> Result<()> {
        if !self.recording() && self.latest_after(kind, item, data)? {
            return Ok(());
        }
        self.free_data(data)
    }

    /// Records a change of a module or a meta text (kept in their own tables,
    /// so the history keeps copies: small texts). `before` is the live text.
    pub(super) fn hist_note_copy(
        &mut self,
        kind: ItemKind,
        item: &str,
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) -> Result<()> {
        if !self.recording() || (kind == ItemKind::Meta && !TRACKED_META.contains(&item)) {
            return Ok(());
        }
        match kind {
            ItemKind::Meta => self.hist.meta = true,
            ItemKind::Module => self.hist.modules = true,
            ItemKind::State | ItemKind::Row => {}
        }
        let mine = (self.hist.items.get(&(kind, item.to_string())))
            .map(|p| (p.b.map(|v| v.data), p.a.map(|v| v.data)));
        let b = match mine {
            Some((b, _)) => match b {
                Some(id) => Some(self.copy_ver(id)?),
                None => None,
            },
            None => match before {
                Some(d) => Some(self.reuse_or_copy(kind, item, d)?),
                None => None,
            },
        };
        let a = match after {
            Some(d) => Some(self.insert_copy(d)?),
            None => None,
        };
        self.hist_note(kind, item, b, a)?;
        if let Some((_, Some(old_a))) = mine {
            self.free_data(old_a)?;
        }
        Ok(())
    }

    fn copy_ver(&mut self, id: i64) -> Result<Ver> {
        let size: i64 = self
            .conn
            .prepare_cached("SELECT length(data) FROM state_data WHERE id=?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(Ver {
            data: id,
            typed: false,
            size,
            mode: None,
        })
    }

    fn insert_copy(&mut self, d: &[u8]) -> Result<Ver> {
        self.conn
            .prepare_cached("INSERT INTO state_data(data) VALUES(?1)")?
            .execute([d])?;
        Ok(Ver {
            data: self.conn.last_insert_rowid(),
            typed: false,
            size: d.len() as i64,
            mode: None,
        })
    }

    /// The latest entry's copy of an item's text when it holds `d`, else a new copy.
    fn reuse_or_copy(&mut self, kind: ItemKind, item: &str, d: &[u8]) -> Result<Ver> {
        let same: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT d.id FROM (SELECT a_ref FROM hist_changes WHERE kind=?1 AND item=?2 ORDER BY seq DESC LIMIT 1) c
                 JOIN state_data d ON d.id=c.a_ref WHERE d.data=?3",
            )?
            .query_row(params![kind.as_str(), item, d], |r| r.get(0))
            .optional()?;
        match same {
            Some(id) => self.copy_ver(id),
            None => self.insert_copy(d),
        }
    }

    /// Bytes of old values every entry keeps (cached between calls).
    fn hist_bytes(&mut self) -> Result<u64> {
        if let Some(b) = self.hist.bytes {
            return Ok(b);
        }
        let b: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM hist_runs")?
            .query_row([], |r| r.get(0))?;
        self.hist.bytes = Some(b as u64);
        Ok(b as u64)
    }

    pub(super) fn hist_prune(&mut self, now: i64, ret: &Retention) -> Result<u64> {
        let cutoff = now.saturating_sub(ret.max_age_ns);
        let mut n = 0;
        loop {
            let oldest: Option<(i64, i64, i64)> = self
                .conn
                .prepare_cached("SELECT seq, at, bytes FROM hist_runs ORDER BY seq LIMIT 1")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((seq, at, bytes)) = oldest else {
                break;
            };
            let too_old = at < cutoff;
            let too_big = ret.max_bytes > 0 && self.hist_bytes()? > ret.max_bytes;
            if !too_old && !too_big {
                break;
            }
            self.drop_entry(seq, at)?;
            if let Some(b) = self.hist.bytes.as_mut() {
                *b = b.saturating_sub(bytes as u64);
            }
            n += 1;
        }
        if n > 0 {
            self.reclaim()?;
        }
        Ok(n)
    }

    /// Drops one entry, its changes and the values only it kept; the time of
    /// the newest dropped entry is remembered (`history.pruned`).
    fn drop_entry(&mut self, seq: i64, at: i64) -> Result<()> {
        let refs: Vec<i64> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT b_ref FROM hist_changes WHERE seq=?1 AND b_ref IS NOT NULL UNION
                 SELECT a_ref FROM hist_changes WHERE seq=?1 AND a_ref IS NOT NULL",
            )?;
            let rows = stmt.query_map([seq], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        self.conn
            .prepare_cached("DELETE FROM hist_changes WHERE seq=?1")?
            .execute([seq])?;
        self.conn
            .prepare_cached("DELETE FROM hist_runs WHERE seq=?1")?
            .execute([seq])?;
        for r in refs {
            self.free_data(r)?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO meta(k, v, mtime) VALUES('history.pruned', ?1, ?2)
                 ON CONFLICT(k) DO UPDATE SET v=excluded.v, mtime=excluded.mtime",
            )?
            .execute(params![at.to_string().into_bytes(), now_ns()])?;
        Ok(())
    }

    /// The time of the newest entry dropped from the history, if any.
    pub(super) fn hist_pruned_at(&mut self) -> Result<Option<i64>> {
        let v: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT v FROM meta WHERE k='history.pruned'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|v| String::from_utf8(v).ok()?.parse().ok()))
    }
}
