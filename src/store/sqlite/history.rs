//! The SQLite backend's history (table `hist`, one row per item an entry
//! changed, the entry's head on its first row, whose rowid is the entry's
//! seq, the others right after it): recording changes as they happen, state
//! values kept by reference to their `state_data` row (a row is freed only
//! when neither the live state nor a kept entry names it), copies of texts and
//! rows inline when small, and pruning. Reading the past, undo and restore are
//! in `history_read.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::error::Result;
use crate::store::history::{Ended, EntryHead, ItemKind, Retention, TRACKED_META};
use crate::util::now_ns;

/// The rows of the entry whose seq is `?1` (a rowid range: no index).
pub(super) const OF_ENTRY: &str = "rid BETWEEN ?1 AND ?1 + (SELECT n FROM hist WHERE rid=?1) - 1";

/// Values up to this many bytes are kept in the history's rows (a copy costs
/// less than the pages a reference costs: a new value row, its index entries,
/// and the `hist_bref` entry); bigger ones by reference.
pub(super) const INLINE_MAX: i64 = 512;

/// A small value's bytes, read with its version (see
/// [`SqliteStore::live_version_small`]).
pub(super) type Small = Arc<[u8]>;

/// Version identities reserved at a time (see [`SqliteStore::fresh_ver`]).
const VER_BLOCK: i64 = 1024;

/// Where a version's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    /// The `state_data` row.
    Ref(i64),
    /// A copy (small values).
    Inline(Arc<[u8]>),
}

/// The columns of an entry's `before` as [`history_read::ver_at`] reads them.
pub(super) const B_COLS: &str = "b_ref, b_val, b_typed, b_size, b_mode, coalesce(b_ver, b_ref)";
/// The same of its `after`.
pub(super) const A_COLS: &str = "a_ref, a_val, a_typed, a_size, a_mode, coalesce(a_ver, a_ref)";

/// One version of an item: its bytes (by reference or a copy), identity, type,
/// size and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ver {
    pub body: Body,
    /// Which version it is: a state value's is new at every write and kept
    /// when it is set back or moved (a value row rewritten in place holds a
    /// new version); a copy kept by reference is its row's id; a copy kept
    /// inline has none (each is a version of its own).
    pub ver: Option<i64>,
    pub typed: bool,
    pub size: i64,
    pub mode: Option<u32>,
}

impl Ver {
    /// The version `ver` held by the value row `data`.
    pub(super) fn at(data: i64, ver: i64, typed: bool, size: i64, mode: Option<u32>) -> Ver {
        Ver {
            body: Body::Ref(data),
            ver: Some(ver),
            typed,
            size,
            mode,
        }
    }

    /// The value row it names, if kept by reference.
    pub(super) fn data(&self) -> Option<i64> {
        match self.body {
            Body::Ref(d) => Some(d),
            Body::Inline(_) => None,
        }
    }

    fn inline(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Ref(_) => None,
            Body::Inline(b) => Some(b),
        }
    }
}

/// What the open entry changed of one item: the first `before`, the last `after`.
#[derive(Debug, Clone)]
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
    /// The time of the oldest kept entry (`Some(None)`: none is kept), once
    /// known (forgotten at a rollback): pruning by age reads nothing until
    /// it falls out of retention.
    oldest: Option<Option<i64>>,
    /// Version identities reserved and not used yet: the next, and the last
    /// (forgotten at a rollback: the reservation may be gone with it).
    vers: Option<(i64, i64)>,
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
            .prepare_cached(
                "SELECT id, coalesce(ver, id), typed, size, mode FROM state WHERE key=?1",
            )?
            .query_row([key], |r| {
                Ok(Ver::at(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?)
    }

    /// The live version of a state key and, when it is small enough to be
    /// kept inline (see [`INLINE_MAX`]), its bytes: one statement for what a
    /// write needs before it changes the key.
    pub(super) fn live_version_small(&mut self, key: &str) -> Result<Option<(Ver, Option<Small>)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT s.id, coalesce(s.ver, s.id), s.typed, s.size, s.mode,
                   CASE WHEN s.size <= ?2 THEN d.data END
                 FROM state s LEFT JOIN state_data d ON d.id=s.id WHERE s.key=?1",
            )?
            .query_row(params![key, INLINE_MAX], |r| {
                let v = Ver::at(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                let small: Option<Vec<u8>> = r.get(5)?;
                Ok((v, small.map(Arc::from)))
            })
            .optional()?)
    }

    /// A version's bytes.
    pub(super) fn ver_bytes(&mut self, v: &Ver) -> Result<Vec<u8>> {
        match &v.body {
            Body::Inline(b) => Ok(b.to_vec()),
            Body::Ref(id) => Ok(self
                .conn
                .prepare_cached("SELECT data FROM state_data WHERE id=?1")?
                .query_row([id], |r| r.get(0))?),
        }
    }

    /// Whether an item's change came back to where it began: the same
    /// version and mode, or absent both times. A copy kept inline (a text, a
    /// row) is a version of its own, as a new value row would be.
    fn same(b: &Option<Ver>, a: &Option<Ver>) -> bool {
        match (b, a) {
            (None, None) => true,
            (Some(b), Some(a)) => b.mode == a.mode && b.ver.is_some() && b.ver == a.ver,
            _ => false,
        }
    }

    /// A small state version by reference as a copy (its value row may then
    /// be rewritten in place: no entry names it).
    fn inline_copy(&mut self, kind: ItemKind, v: Ver) -> Result<Ver> {
        if kind != ItemKind::State || v.data().is_none() || v.size > INLINE_MAX {
            return Ok(v);
        }
        let b = self.ver_bytes(&v)?;
        Ok(Ver {
            body: Body::Inline(b.into()),
            ..v
        })
    }

    /// A new version's identity: negative numbers (value row ids are
    /// positive), reserved 1,024 at a time in `meta` (`history.ver`) so that
    /// none is used twice across restarts and pruning.
    pub(super) fn fresh_ver(&mut self) -> Result<i64> {
        if let Some((next, end)) = self.hist.vers {
            if next > end {
                self.hist.vers = Some((next - 1, end));
                return Ok(next);
            }
        }
        let last: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT v FROM meta WHERE k='history.ver'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let last: i64 = (last.and_then(|v| String::from_utf8(v).ok()?.parse().ok())).unwrap_or(0);
        let end = last - VER_BLOCK;
        self.conn
            .prepare_cached(
                "INSERT INTO meta(k, v, mtime) VALUES('history.ver', ?1, ?2)
                 ON CONFLICT(k) DO UPDATE SET v=excluded.v, mtime=excluded.mtime",
            )?
            .execute(params![end.to_string().into_bytes(), now_ns()])?;
        self.hist.vers = Some((last - 2, end));
        Ok(last - 1)
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
                .prepare_cached("SELECT coalesce(max(rid), 0) + 1 FROM hist")?
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

    /// Stops recording after a commit: what is cached stays true.
    pub(super) fn hist_committed(&mut self) {
        self.hist.cur = None;
        self.hist.items.clear();
    }

    /// After a rollback (to a savepoint too): what is cached may be gone. An
    /// open entry's changes all sit inside the savepoint of its run or op, so
    /// they go with it.
    pub(super) fn hist_rolled_back(&mut self) {
        self.hist.items.clear();
        self.hist.bytes = None;
        self.hist.next = None;
        self.hist.oldest = None;
        self.hist.vers = None;
    }

    /// Ends the open entry: a row per item it changed, the first carrying the
    /// entry's head (changes that came back to where they began are none), or
    /// nothing when it changed nothing.
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
        let mut changed = Vec::with_capacity(items.len());
        for ((kind, item), mut p) in items {
            if !Self::same(&p.b, &p.a) {
                // Kept as a copy: the value row may be rewritten in place later.
                p.a = p.a.map(|a| self.inline_copy(kind, a)).transpose()?;
                changed.push(((kind, item), p));
            } else if let Some(d) = p.b.as_ref().and_then(Ver::data) {
                // Back to its version in another row (set back from a copy):
                // the row kept for the `before` is named by nothing now.
                if p.a.as_ref().and_then(Ver::data) != Some(d) {
                    self.free_data(d)?;
                }
            }
        }
        if changed.is_empty() {
            return Ok(ended);
        }
        let bytes: i64 = (changed.iter())
            .filter_map(|(_, p)| p.b.as_ref().map(|v| v.size))
            .sum();
        let chain = crate::store::rows::chain_text(&head.chain);
        let at = now_ns();
        if self.hist.oldest == Some(None) {
            self.hist.oldest = Some(Some(at));
        }
        let n = changed.len() as i64;
        let first = (&head, chain.as_str(), at, bytes, n);
        for (i, ((kind, item), p)) in changed.iter().enumerate() {
            self.hist_row(seq, i as i64, *kind, item, p, (i == 0).then_some(first))?;
        }
        self.hist.next = Some(seq + n);
        if let Some(b) = self.hist.bytes.as_mut() {
            *b += bytes as u64;
        }
        ended.kept = true;
        Ok(ended)
    }

    /// The `i`th row of entry `seq`; the first carries its head (id, name,
    /// caller, chain, time, bytes of old values, rows).
    fn hist_row(
        &mut self,
        seq: i64,
        i: i64,
        kind: ItemKind,
        item: &str,
        p: &Pending,
        head: Option<(&EntryHead, &str, i64, i64, i64)>,
    ) -> Result<()> {
        let (b, a) = (p.b.as_ref(), p.a.as_ref());
        self.conn
            .prepare_cached(
                "INSERT INTO hist(rid, seq, kind, item, b_ref, b_val, b_typed, b_size, b_mode,
                   a_ref, a_val, a_typed, a_size, a_mode, id, name, caller, chain, at, bytes, n,
                   b_ver, a_ver)
                 VALUES(?1+?2,?1,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,
                   ?22,?23)",
            )?
            .execute(params![
                seq,
                i,
                kind.as_str(),
                item,
                b.and_then(Ver::data),
                b.and_then(Ver::inline),
                b.map(|v| v.typed),
                b.map(|v| v.size),
                b.and_then(|v| v.mode),
                a.and_then(Ver::data),
                a.and_then(Ver::inline),
                a.map(|v| v.typed),
                a.map(|v| v.size),
                a.and_then(|v| v.mode),
                head.map(|h| &h.0.id),
                head.map(|h| &h.0.name),
                head.map(|h| &h.0.caller),
                head.map(|h| h.1),
                head.map(|h| h.2),
                head.map(|h| h.3),
                head.map(|h| h.4),
                b.and_then(|v| v.ver.filter(|x| Some(*x) != v.data())),
                a.and_then(|v| v.ver.filter(|x| Some(*x) != v.data())),
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
                let prev = self.hist.items.get(&key).cloned();
                self.hist.log.push((key, prev));
            }
            match self.hist.items.entry((kind, item.to_string())) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().a = after,
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Pending {
                        b: before,
                        a: after,
                    });
                }
            }
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
        (self.hist.items.values()).any(|p| p.b.as_ref().and_then(Ver::data) == Some(data))
    }

    /// What a change of `item`, whose live version is `old`, does with its
    /// value row: `(pinned, before)`. Pinned: the row must outlive the change
    /// (a kept entry names it, or it is about to be the open entry's
    /// `before`), so the new value gets a row of its own; else it is rewritten
    /// in place. `before` is the version the open entry notes: at the first
    /// change of a small value no entry names, a copy (and the row is not
    /// pinned: the copy keeps the version, without a `hist_bref` entry).
    /// `small`: the old value's bytes when already read (a small state value).
    pub(super) fn hist_keep(
        &mut self,
        old: &Ver,
        kind: ItemKind,
        item: &str,
        small: Option<Small>,
    ) -> Result<(bool, Ver)> {
        let Some(data) = old.data() else {
            return Ok((false, old.clone()));
        };
        if !self.recording() {
            let pinned = self.kept_names(kind, item, data)?;
            return Ok((pinned, old.clone()));
        }
        let first = !self.hist.items.contains_key(&(kind, item.to_string()));
        if first && old.size <= INLINE_MAX && !self.named(kind, item, data)? {
            let copy = match small {
                Some(b) if kind == ItemKind::State => Ver {
                    body: Body::Inline(b),
                    ..old.clone()
                },
                _ => self.inline_copy(kind, old.clone())?,
            };
            return Ok((false, copy));
        }
        let pinned = match self.hist.items.get(&(kind, item.to_string())) {
            // The first change of the item in this entry: `data` becomes its before.
            None => true,
            Some(p) if p.b.as_ref().and_then(Ver::data) == Some(data) => true,
            // `data` came to the item in this entry: made here (only this
            // entry's `after` names it), or a kept version (some `before` does).
            Some(_) => self.open_before(data) || self.named_before(data)?,
        };
        Ok((pinned, old.clone()))
    }

    /// Whether anything but the live state names the value row `data` of `item`.
    fn named(&mut self, kind: ItemKind, item: &str, data: i64) -> Result<bool> {
        Ok(self.open_before(data) || self.kept_names(kind, item, data)?)
    }

    /// Whether a kept entry names the value row `data` of `item`: as a
    /// `before` ([`Self::named_before`]) or as the `after` of the latest
    /// entry that changed the item ([`Self::latest_after`]), in one statement.
    fn kept_names(&mut self, kind: ItemKind, item: &str, data: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM hist WHERE b_ref=?1)
                   OR coalesce((SELECT a_ref FROM hist WHERE kind=?2 AND item=?3
                                ORDER BY seq DESC LIMIT 1) = ?1, 0)",
            )?
            .query_row(params![data, kind.as_str(), item], |r| r.get(0))?)
    }

    /// Whether a kept entry's `before` names the value row `data`.
    fn named_before(&mut self, data: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM hist WHERE b_ref=?1 LIMIT 1")?
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
                "SELECT a_ref FROM hist WHERE kind=?1 AND item=?2 ORDER BY seq DESC LIMIT 1",
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
                   AND NOT EXISTS (SELECT 1 FROM hist WHERE b_ref=?1)",
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

    /// Records a change of a module, a meta text or a row (kept in their own
    /// tables, so the history keeps copies: inline when small, else a value
    /// row). `before` is the live text.
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
            .map(|p| p.a.as_ref().and_then(Ver::data));
        // An item changed before in this entry keeps its first `before`.
        let b = match (mine, before) {
            (None, Some(d)) => Some(self.reuse_or_copy(kind, item, d)?),
            _ => None,
        };
        let a = match after {
            Some(d) => Some(self.insert_copy(d)?),
            None => None,
        };
        self.hist_note(kind, item, b, a)?;
        if let Some(Some(old_a)) = mine {
            self.free_data(old_a)?;
        }
        Ok(())
    }

    /// A copy of `d`: inline when small, else a value row of its own.
    fn insert_copy(&mut self, d: &[u8]) -> Result<Ver> {
        let size = d.len() as i64;
        if size <= INLINE_MAX {
            return Ok(Ver {
                body: Body::Inline(d.into()),
                ver: None,
                typed: false,
                size,
                mode: None,
            });
        }
        self.conn
            .prepare_cached("INSERT INTO state_data(data) VALUES(?1)")?
            .execute([d])?;
        let id = self.conn.last_insert_rowid();
        Ok(Ver::at(id, id, false, size, None))
    }

    /// The latest entry's copy of an item's text when it holds `d`, else a new copy.
    fn reuse_or_copy(&mut self, kind: ItemKind, item: &str, d: &[u8]) -> Result<Ver> {
        if d.len() as i64 <= INLINE_MAX {
            return self.insert_copy(d);
        }
        let same: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT d.id FROM (SELECT a_ref FROM hist WHERE kind=?1 AND item=?2 ORDER BY seq DESC LIMIT 1) c
                 JOIN state_data d ON d.id=c.a_ref WHERE d.data=?3",
            )?
            .query_row(params![kind.as_str(), item, d], |r| r.get(0))
            .optional()?;
        match same {
            Some(id) => Ok(Ver::at(id, id, false, d.len() as i64, None)),
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
            .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM hist")?
            .query_row([], |r| r.get(0))?;
        self.hist.bytes = Some(b as u64);
        Ok(b as u64)
    }

    pub(super) fn hist_prune(&mut self, now: i64, ret: &Retention) -> Result<u64> {
        let cutoff = now.saturating_sub(ret.max_age_ns);
        if let Some(oldest) = self.hist.oldest {
            if ret.max_bytes == 0 && oldest.is_none_or(|at| at >= cutoff) {
                return Ok(0);
            }
        }
        let mut n = 0;
        loop {
            let oldest: Option<(i64, i64, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT rid, at, bytes FROM hist WHERE id IS NOT NULL ORDER BY rid LIMIT 1",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            self.hist.oldest = Some(oldest.map(|o| o.1));
            let Some((seq, at, bytes)) = oldest else {
                break;
            };
            let too_old = at < cutoff;
            let too_big = ret.max_bytes > 0 && self.hist_bytes()? > ret.max_bytes;
            if !too_old && !too_big {
                break;
            }
            self.hist.oldest = None;
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
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT b_ref FROM hist WHERE {OF_ENTRY} AND b_ref IS NOT NULL UNION
                 SELECT a_ref FROM hist WHERE {OF_ENTRY} AND a_ref IS NOT NULL"
            ))?;
            let rows = stmt.query_map([seq], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        self.conn
            .prepare_cached(&format!("DELETE FROM hist WHERE {OF_ENTRY}"))?
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
