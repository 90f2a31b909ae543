//! The SQLite backend's [`History`]: entries listed, the state as right after an
//! entry (the first later change of a key holds its value then; no later
//! change: the live value), and undo and restore, which set items back to
//! versions the history keeps, by reference, inside the open entry.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension};

use super::history::{Body, Ver, A_COLS, B_COLS, OF_ENTRY};
use super::state::prefix_end;
use super::SqliteStore;
use crate::error::{err, Result};
use crate::store::history::{
    Ended, Entry, EntryHead, History, ItemChange, ItemKind, Point, Retention, Shown,
};
use crate::store::prelude::*;
use crate::store::value::render;
use crate::store::DirEntry;
use crate::util::{now_ns, rfc3339};

const ENTRY_COLS: &str = "seq, id, name, caller, chain, at, bytes";

/// The version in the columns `ref, val, typed, size, mode, ver` from `i` on.
pub(super) fn ver_at(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<Ver>> {
    let data: Option<i64> = r.get(i)?;
    let val: Option<Vec<u8>> = r.get(i + 1)?;
    let body = match (data, val) {
        (Some(d), _) => Body::Ref(d),
        (None, Some(v)) => Body::Inline(v.into()),
        (None, None) => return Ok(None),
    };
    Ok(Some(Ver {
        body,
        ver: r.get(i + 5)?,
        typed: r.get::<_, Option<bool>>(i + 2)?.unwrap_or(false),
        size: r.get::<_, Option<i64>>(i + 3)?.unwrap_or(0),
        mode: r.get(i + 4)?,
    }))
}

fn entry_row(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    let caller: String = r.get(3)?;
    let chain: Option<String> = r.get(4)?;
    Ok(Entry {
        seq: r.get(0)?,
        head: EntryHead {
            id: r.get(1)?,
            name: r.get(2)?,
            chain: chain
                .filter(|c| !c.is_empty())
                .map(|c| c.split(' ').map(str::to_string).collect())
                .unwrap_or_else(|| vec![caller.clone()]),
            caller,
        },
        at: r.get(5)?,
        bytes: r.get::<_, i64>(6)? as u64,
    })
}

impl SqliteStore {
    /// A key's version right after the entry `seq` (outer `None`: not changed
    /// after it, the live one holds).
    pub(super) fn later_before(
        &mut self,
        kind: ItemKind,
        item: &str,
        seq: i64,
    ) -> Result<Option<Option<Ver>>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {B_COLS} FROM hist
                 WHERE kind=?1 AND item=?2 AND seq>?3 ORDER BY seq LIMIT 1"
            ))?
            .query_row(params![kind.as_str(), item, seq], |r| ver_at(r, 0))
            .optional()?)
    }

    fn state_at(&mut self, seq: i64, key: &str) -> Result<Option<Ver>> {
        match self.later_before(ItemKind::State, key, seq)? {
            Some(v) => Ok(v),
            None => self.live_version(key),
        }
    }

    /// A version's bytes as its file shows them.
    fn shown_bytes(&mut self, v: &Ver) -> Result<Vec<u8>> {
        let d = self.ver_bytes(v)?;
        Ok(if v.typed {
            render(&serde_json::from_slice(&d)?)
        } else {
            d
        })
    }

    fn shown(&mut self, v: Option<Ver>, up_to: u64) -> Result<Option<Shown>> {
        let Some(v) = v else { return Ok(None) };
        let value = if (v.size as u64) <= up_to {
            Some(self.shown_bytes(&v)?)
        } else {
            None
        };
        Ok(Some(Shown {
            size: v.size as u64,
            typed: v.typed,
            mode: v.mode,
            value,
        }))
    }

    /// Every key under `lo` (a folder prefix, "" for all) as right after `seq`.
    fn keys_at(&mut self, seq: i64, lo: &str) -> Result<BTreeMap<String, Ver>> {
        let hi = (!lo.is_empty()).then(|| prefix_end(lo));
        let mut cands: BTreeSet<String> = BTreeSet::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT key FROM state WHERE key>=?1 AND (?2 IS NULL OR key<?2)")?;
            let rows = stmt.query_map(params![lo, hi], |r| r.get::<_, String>(0))?;
            for k in rows {
                cands.insert(k?);
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT item FROM hist WHERE kind='state' AND item>=?1
                   AND (?2 IS NULL OR item<?2) AND seq>?3",
            )?;
            let rows = stmt.query_map(params![lo, hi, seq], |r| r.get::<_, String>(0))?;
            for k in rows {
                cands.insert(k?);
            }
        }
        let mut out = BTreeMap::new();
        for k in cands {
            if let Some(v) = self.state_at(seq, &k)? {
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Every item changed after `seq` (by entries other than the open one), and
    /// its version right after `seq`.
    fn items_after(&mut self, seq: i64) -> Result<Vec<(ItemKind, String, Option<Ver>)>> {
        let cur = self.open_seq();
        let rows: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT kind, item FROM hist NOT INDEXED WHERE rid>?1 AND seq>?1 AND seq<>?2",
            )?;
            let rows = stmt.query_map(params![seq, cur], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for (kind, item) in rows {
            let Some(kind) = ItemKind::parse(&kind) else {
                continue;
            };
            if let Some(v) = self.later_before(kind, &item, seq)? {
                out.push((kind, item, v));
            }
        }
        Ok(out)
    }

    fn open_seq(&self) -> i64 {
        self.hist_open_seq().unwrap_or(-1)
    }

    /// Sets an item to a version the history keeps (`None`: absent), recorded
    /// in the open entry.
    pub(super) fn set_item(&mut self, kind: ItemKind, item: &str, to: Option<Ver>) -> Result<()> {
        match kind {
            ItemKind::State => self.set_state_ref(item, to),
            ItemKind::Module => match to {
                Some(v) => {
                    let d = self.ver_bytes(&v)?;
                    self.set_module(item, &d)
                }
                None => self.remove_module(item).map(|_| ()),
            },
            ItemKind::Row => self.set_items(vec![(kind, item.to_string(), to)]),
            ItemKind::Meta => match to {
                Some(v) => {
                    let d = self.ver_bytes(&v)?;
                    self.set_meta(item, &d)
                }
                None => self.remove_meta(item),
            },
        }
    }

    /// Points a state key at a kept value row (no copy of its bytes); a
    /// version kept inline (a text) gets a row of its own.
    fn set_state_ref(&mut self, key: &str, to: Option<Ver>) -> Result<()> {
        let old = self.live_version(key)?;
        let same = |o: &Ver, t: &Ver| (o.ver, o.mode, o.typed) == (t.ver, t.mode, t.typed);
        match (&old, &to) {
            (None, None) => return Ok(()),
            (Some(o), Some(t)) if same(o, t) => return Ok(()),
            _ => {}
        }
        let Some(v) = to else {
            self.remove(key)?;
            return Ok(());
        };
        let v = match &v.body {
            Body::Ref(_) => v,
            // A version of its own, as the kept row would be.
            Body::Inline(b) => {
                let ver = v.ver.map_or_else(|| self.fresh_ver(), Ok)?;
                Ver::at(self.insert_data(b)?, ver, v.typed, v.size, v.mode)
            }
        };
        let Some(data) = v.data() else {
            return Ok(());
        };
        let now = now_ns();
        if old.is_none() {
            self.check_shape(key)?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO state(key, size, mtime, ctime, typed, id, mode, ver) VALUES(?1,?2,?3,?3,?4,?5,?6,?7)
                 ON CONFLICT(key) DO UPDATE SET size=?2, mtime=?3, ctime=?3, typed=?4, id=?5, mode=?6, ver=?7",
            )?
            .execute(params![key, v.size, now, v.typed, data, v.mode, v.ver])?;
        self.hist_note(ItemKind::State, key, old.clone(), Some(v))?;
        if let Some(o) = old.as_ref().and_then(Ver::data) {
            self.free_old(ItemKind::State, key, o)?;
        } else {
            self.touch_parent(key, now)?;
        }
        Ok(())
    }

    /// The entries that must be undone with `seq` (it, and every later entry
    /// that changed an item one of them changed), newest first.
    fn undo_set(&mut self, seq: i64, cascade: bool) -> Result<Vec<i64>> {
        let cur = self.open_seq();
        let mut set: BTreeSet<i64> = BTreeSet::from([seq]);
        let mut todo = vec![seq];
        while let Some(s) = todo.pop() {
            let later: Vec<i64> = {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT DISTINCT l.seq FROM hist c JOIN hist l
                       ON l.kind=c.kind AND l.item=c.item AND l.seq>c.seq
                     WHERE c.{OF_ENTRY} AND l.seq<>?2"
                ))?;
                let rows = stmt.query_map(params![s, cur], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let later = later.into_iter().chain(self.schema_conflicts(s, cur)?);
            for l in later {
                if set.insert(l) {
                    todo.push(l);
                }
            }
        }
        if set.len() > 1 && !cascade {
            let ids = self.ids_of(set.iter().skip(1).copied())?;
            return Err(err!(
                libc::EBUSY,
                "cannot undo run {}: later runs changed the same items: {} (undo them first, or pass #{{ cascade: true }})",
                self.ids_of([seq])?.join(""),
                ids.join(", ")
            ));
        }
        Ok(set.into_iter().rev().collect())
    }

    fn ids_of(&mut self, seqs: impl IntoIterator<Item = i64>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for s in seqs {
            let id: String = self
                .conn
                .prepare_cached("SELECT id FROM hist WHERE rid=?1 AND id IS NOT NULL")?
                .query_row([s], |r| r.get(0))?;
            out.push(id);
        }
        Ok(out)
    }

    /// The error for a run id the history does not hold.
    fn not_kept(&mut self, id: &str) -> Result<crate::error::Error> {
        let pruned = self.hist_pruned_at()?;
        let run: Option<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT status, finished_at FROM runs WHERE id=?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT at FROM hist WHERE id IS NOT NULL ORDER BY rid LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(match (run, pruned) {
            (Some((_, at)), Some(p)) if oldest.is_none_or(|o| at < o) => err!(
                libc::ENOENT,
                "run {id} is out of the history's retention (entries up to {} were pruned): it cannot be undone or restored to",
                rfc3339(p)
            ),
            (Some((status, _)), _) => err!(
                libc::ENOENT,
                "run {id} (status {status}) changed nothing: it has no entry in the history"
            ),
            (None, Some(p)) => err!(
                libc::ENOENT,
                "no run {id} in the history: unknown, or out of its retention (entries up to {} were pruned)",
                rfc3339(p)
            ),
            (None, None) => err!(libc::ENOENT, "no run {id} in the history"),
        })
    }

    fn log_undo(&mut self, what: &str, undone: &[String]) -> Result<()> {
        let by = self.hist_open_id().unwrap_or_default();
        let list = if undone.is_empty() {
            "nothing".to_string()
        } else {
            undone.join(",")
        };
        self.append_log(&format!(
            "{} {what} by {by}: undid {list}",
            rfc3339(now_ns())
        ))
    }
}

impl History for SqliteStore {
    fn begin_entry(&mut self, head: &EntryHead) -> Result<()> {
        self.hist_begin(head)
    }

    fn end_entry(&mut self) -> Result<Ended> {
        self.hist_end()
    }

    fn entries(&mut self, after_seq: i64, limit: usize) -> Result<Vec<Entry>> {
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM hist WHERE rid>?1 AND id IS NOT NULL ORDER BY rid LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![after_seq, limit as i64], entry_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn entry(&mut self, id: &str) -> Result<Option<Entry>> {
        let sql = format!("SELECT {ENTRY_COLS} FROM hist WHERE id=?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([id], entry_row)
            .optional()?)
    }

    fn seq_of(&mut self, point: &Point) -> Result<i64> {
        match point {
            Point::Run(id) => match self.entry(id)? {
                Some(e) => Ok(e.seq),
                None => Err(self.not_kept(id)?),
            },
            Point::Time(t) => {
                if let Some(p) = self.hist_pruned_at()? {
                    if *t < p {
                        return Err(err!(
                            libc::ENOENT,
                            "{} is out of the history's retention (entries up to {} were pruned)",
                            rfc3339(*t),
                            rfc3339(p)
                        ));
                    }
                }
                // Entries end in seq order: the newest first, back to the time.
                let seq: Option<i64> = self
                    .conn
                    .prepare_cached("SELECT seq FROM hist WHERE at<=?1 ORDER BY rid DESC LIMIT 1")?
                    .query_row([t], |r| r.get(0))
                    .optional()?;
                Ok(seq.unwrap_or(0))
            }
        }
    }

    fn changes(&mut self, seq: i64, up_to: u64) -> Result<Vec<ItemChange>> {
        let rows: Vec<(String, String, Option<Ver>, Option<Ver>)> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT kind, item, {B_COLS}, {A_COLS} FROM hist WHERE {OF_ENTRY} ORDER BY kind, item"
            ))?;
            let rows = stmt.query_map([seq], |r| {
                Ok((r.get(0)?, r.get(1)?, ver_at(r, 2)?, ver_at(r, 8)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (kind, item, b, a) in rows {
            let Some(kind) = ItemKind::parse(&kind) else {
                continue;
            };
            out.push(ItemChange {
                kind,
                item,
                before: self.shown(b, up_to)?,
                after: self.shown(a, up_to)?,
            });
        }
        Ok(out)
    }

    fn stat_at(&mut self, seq: i64, key: &str) -> Result<Option<Option<Shown>>> {
        if let Some(v) = self.state_at(seq, key)? {
            return Ok(Some(self.shown(Some(v), 0)?));
        }
        let lo = format!("{key}/");
        Ok(if self.keys_at_any(seq, &lo)? {
            Some(None)
        } else {
            None
        })
    }

    fn bytes_at(&mut self, seq: i64, key: &str) -> Result<Option<Vec<u8>>> {
        match self.state_at(seq, key)? {
            Some(v) => Ok(Some(self.shown_bytes(&v)?)),
            None => Ok(None),
        }
    }

    fn list_at(&mut self, seq: i64, dir: &str) -> Result<Vec<DirEntry>> {
        let lo = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let keys = self.keys_at(seq, &lo)?;
        let mut out: Vec<DirEntry> = Vec::new();
        for (key, v) in keys {
            let rest = &key[lo.len()..];
            match rest.find('/') {
                Some(i) => {
                    let name = &rest[..i];
                    if !out.iter().any(|e| e.is_dir && e.name == name) {
                        out.push(DirEntry {
                            name: name.to_string(),
                            is_dir: true,
                            size: 0,
                            mtime_ns: 0,
                        });
                    }
                }
                None => out.push(DirEntry {
                    name: rest.to_string(),
                    is_dir: false,
                    size: v.size as u64,
                    mtime_ns: 0,
                }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn tables_at(&mut self, seq: i64) -> Result<Vec<String>> {
        Ok(self.schema_at(seq)?.tables.into_keys().collect())
    }

    fn table_at(&mut self, seq: i64, table: &str) -> Result<Option<Vec<crate::tables::rows::Row>>> {
        self.rows_at(seq, table)
    }

    fn undo(&mut self, run: &str, cascade: bool) -> Result<Vec<String>> {
        let Some(e) = self.entry(run)? else {
            return Err(self.not_kept(run)?);
        };
        if Some(e.seq) == self.hist_open_seq() {
            return Err(err!(libc::EINVAL, "a run cannot undo itself"));
        }
        let seqs = self.undo_set(e.seq, cascade)?;
        self.undo_entries(&seqs)?;
        let ids = self.ids_of(seqs)?;
        self.log_undo(&format!("undo {run}"), &ids)?;
        Ok(ids)
    }

    fn restore(&mut self, point: &Point) -> Result<Vec<String>> {
        let seq = self.seq_of(point)?;
        let cur = self.open_seq();
        if self.schema_changed_after(seq, cur)? {
            // Rows were written under other schemas: entry by entry, newest first.
            let later: Vec<i64> = {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT rid FROM hist WHERE rid>?1 AND rid<>?2 AND id IS NOT NULL ORDER BY rid DESC",
                )?;
                let rows = stmt.query_map(params![seq, cur], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            self.undo_entries(&later)?;
        } else {
            let items = self.items_after(seq)?;
            self.set_items(items)?;
        }
        let undone: Vec<i64> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT rid FROM hist WHERE rid>?1 AND rid<>?2 AND id IS NOT NULL ORDER BY rid DESC",
            )?;
            let rows = stmt.query_map(params![seq, cur], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let ids = self.ids_of(undone)?;
        let what = match point {
            Point::Run(id) => format!("restore_to {id}"),
            Point::Time(t) => format!("restore_to {}", rfc3339(*t)),
        };
        self.log_undo(&what, &ids)?;
        Ok(ids)
    }

    fn prune(&mut self, now: i64, ret: &Retention) -> Result<u64> {
        self.hist_prune(now, ret)
    }
}

impl SqliteStore {
    /// Whether any key under `lo` exists right after `seq`.
    fn keys_at_any(&mut self, seq: i64, lo: &str) -> Result<bool> {
        Ok(!self.keys_at(seq, lo)?.is_empty())
    }

    /// Sets every item of the entries `seqs` (newest first) back to its
    /// version before that entry.
    fn undo_entries(&mut self, seqs: &[i64]) -> Result<()> {
        for s in seqs {
            let id = self.ids_of([*s])?.join("");
            self.check_schema_undo(*s, &id)?;
            let items = self.changes_raw(*s)?;
            self.set_items(items)?;
        }
        Ok(())
    }

    /// An entry's items and their versions before it.
    fn changes_raw(&mut self, seq: i64) -> Result<Vec<(ItemKind, String, Option<Ver>)>> {
        let rows: Vec<(String, String, Option<Ver>)> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT kind, item, {B_COLS} FROM hist WHERE {OF_ENTRY}"
            ))?;
            let rows = stmt.query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, ver_at(r, 2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        Ok(rows
            .into_iter()
            .filter_map(|(k, item, v)| Some((ItemKind::parse(&k)?, item, v)))
            .collect())
    }
}
