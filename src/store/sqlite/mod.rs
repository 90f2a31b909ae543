//! The SQLite backend: one file per peer, WAL, `synchronous=FULL` (a commit is on
//! disk when it returns), schema versioned with `PRAGMA user_version`.
//!
//! This file is the [`SqliteStore`] and its [`Store`] implementation:
//! transactions (durability per transaction), state, modules, meta, the queue,
//! runs and the outbox, the log and sent messages. Beside it: `open` (opening the
//! writer and readers, the sync mode, and the helpers the methods share),
//! `schema` (the tables and their migrations), `state` (how a value is kept: the
//! shape of keys and folders, one blob per value, giving space back), `folders`
//! (folders of `state/` kept apart from keys), `history` and `history_read`
//! (what each run changed, kept by reference; undo and restore), `snapshot`
//! (a consistent copy in a file of its own) and the tests.

mod folders;
mod history;
mod history_read;
mod history_rows;
#[cfg(test)]
mod history_rows_tests;
#[cfg(test)]
mod history_tests;
mod open;
mod schema;
mod snapshot;
mod state;
mod tables;
#[cfg(test)]
mod tables_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::history::ItemKind;
use super::value::{parse_file, render};
use super::{
    rows, AuditLog, DirEntry, Documents, FileStat, Folder, Job, Message, Messages, OutboxEntry,
    Queue, Results, StateKeys, Store, Tables,
};
use crate::error::err;
use crate::error::Result;
use crate::util::now_ns;
pub use snapshot::copy_store;
use state::prefix_end;

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Byte offset where the next log line goes (reloaded after a rollback).
    log_end: Option<u64>,
    in_txn: bool,
    reader: bool,
    /// Log lines of the open transaction, written as one row at commit (one insert
    /// per batch instead of one per event); `marks` are its lengths at savepoints.
    log_buf: String,
    marks: Vec<usize>,
    /// Whether commits are fsynced (`synchronous=FULL`); run batches turn it off.
    synced: bool,
    /// Rows refused since the last `take_refused` (see `store::rows`).
    refused: u64,
    /// The history entry being recorded (see `history.rs`).
    hist: history::Recorder,
    /// Declared tables: the schema in force and the query work counted (`tables.rs`).
    tables: tables::TablesState,
}

impl Store for SqliteStore {
    fn reader_opener(&self) -> super::OpenReader {
        let path = self.path.clone();
        Box::new(move || Ok(Box::new(SqliteStore::open_reader(&path)?)))
    }

    fn begin(&mut self) -> Result<()> {
        self.set_sync(true)?;
        self.exec("BEGIN IMMEDIATE")?;
        self.in_txn = true;
        Ok(())
    }

    fn begin_unsynced(&mut self) -> Result<()> {
        // WAL + synchronous=NORMAL: the commit writes the WAL without fsync. The next
        // FULL commit fsyncs the WAL, and with it every earlier frame.
        self.set_sync(false)?;
        self.exec("BEGIN IMMEDIATE")?;
        self.in_txn = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let r = self.flush_log().and_then(|_| self.exec("COMMIT"));
        if r.is_err() {
            let _ = self.exec("ROLLBACK");
            self.log_end = None;
            // What the history cached (version identities reserved) may be gone.
            self.hist_forget();
        } else {
            self.after_commit();
            self.hist_committed();
        }
        self.in_txn = false;
        self.log_buf.clear();
        self.marks.clear();
        r
    }

    fn rollback(&mut self) -> Result<()> {
        self.in_txn = false;
        self.hist_forget();
        self.log_end = None;
        self.log_buf.clear();
        self.marks.clear();
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.exec("ROLLBACK")
    }

    fn savepoint(&mut self) -> Result<()> {
        self.exec("SAVEPOINT run")?;
        self.marks.push(self.log_buf.len());
        Ok(())
    }

    fn release(&mut self) -> Result<()> {
        self.exec("RELEASE run")?;
        self.marks.pop();
        Ok(())
    }

    fn rollback_to(&mut self) -> Result<()> {
        if let Some(m) = self.marks.pop() {
            self.log_buf.truncate(m);
        }
        self.hist_rolled_back();
        self.exec("ROLLBACK TO run")?;
        self.exec("RELEASE run")
    }

    fn checkpoint(&mut self) -> Result<()> {
        if Self::checkpoints_handed_over() {
            // The replica checkpoints; this only makes unsynced commits durable.
            let wal = format!("{}-wal", self.path.display());
            if let Ok(f) = std::fs::File::open(wal) {
                f.sync_all()?;
            }
            return Ok(());
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn integrity_check(&mut self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    fn history(&mut self) -> Option<&mut dyn super::history::History> {
        Some(self)
    }
}

impl Tables for SqliteStore {
    fn schema(&mut self) -> Result<std::sync::Arc<crate::tables::Schema>> {
        self.tables_schema()
    }
    fn apply_schema(&mut self, text: &[u8]) -> Result<super::Migrated> {
        self.tables_apply(text)
    }
    fn row_get(&mut self, table: &str, id: &Value) -> Result<Option<crate::tables::rows::Row>> {
        self.tables_get(table, id)
    }
    fn row_insert(&mut self, table: &str, row: &crate::tables::rows::Row) -> Result<Value> {
        self.tables_insert(table, row)
    }
    fn row_replace(&mut self, table: &str, row: &crate::tables::rows::Row) -> Result<bool> {
        self.tables_replace(table, row)
    }
    fn row_delete(&mut self, table: &str, id: &Value) -> Result<bool> {
        self.tables_delete(table, id)
    }
    fn row_scan(
        &mut self,
        table: &str,
        find: &crate::tables::Find,
        cursor: Option<&crate::tables::rows::Row>,
        visit: &mut dyn FnMut(crate::tables::rows::Row) -> bool,
    ) -> Result<()> {
        self.tables_scan(table, find, cursor, visit)
    }
    fn row_count(&mut self, table: &str, filters: &[crate::tables::Filter]) -> Result<u64> {
        self.tables_count(table, filters)
    }
    fn limit_work(&mut self, limit: Option<u64>) {
        self.tables_limit_work(limit)
    }
    fn work(&self) -> u64 {
        self.tables_work()
    }
}

impl StateKeys for SqliteStore {
    fn get(&mut self, key: &str) -> Result<Option<Value>> {
        Ok(match self.stored(key)? {
            None => None,
            Some((true, json)) => Some(serde_json::from_slice(&json)?),
            Some((false, raw)) => Some(parse_file(&raw)),
        })
    }

    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(match self.stored(key)? {
            None => None,
            Some((true, json)) => Some(render(&serde_json::from_slice(&json)?)),
            Some((false, raw)) => Some(raw),
        })
    }

    fn set(&mut self, key: &str, value: &Value) -> Result<()> {
        let json = serde_json::to_string(value)?;
        let size = match value {
            Value::String(s) => s.len() as u64,
            _ => json.len() as u64 + 1,
        };
        self.put(key, true, json.as_bytes(), size)
    }

    fn set_bytes(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        self.put(key, false, bytes, bytes.len() as u64)
    }

    fn remove(&mut self, key: &str) -> Result<bool> {
        let Some(old) = self.live_version(key)? else {
            return Ok(false);
        };
        self.hist_note(ItemKind::State, key, Some(old.clone()), None)?;
        self.conn
            .prepare_cached("DELETE FROM state WHERE key=?1")?
            .execute([key])?;
        if let Some(d) = old.data() {
            self.free_old(ItemKind::State, key, d)?;
        }
        self.touch_parent(key, now_ns())?;
        self.reclaim()?;
        Ok(true)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        if self.stat_key(from)?.flatten().is_none() {
            return Err(err!(libc::ENOENT, "no state key {from:?}"));
        }
        if from == to {
            return Ok(());
        }
        // The bytes stay where they are: only the key moves (and keeps its mtime,
        // as rename(2) does: rsync sets a temporary file's times, then renames it).
        match self.stat_key(to)? {
            Some(Some(_)) => {
                self.remove(to)?;
            }
            // A folder of keys (EISDIR) or a value among its parents (ENOTDIR).
            _ => self.check_shape(to)?,
        }
        let moved = self.live_version(from)?;
        self.conn
            .prepare_cached("UPDATE state SET key=?2, ctime=?3 WHERE key=?1")?
            .execute(params![from, to, now_ns()])?;
        self.hist_note(ItemKind::State, from, moved.clone(), None)?;
        self.hist_note(ItemKind::State, to, None, moved)?;
        self.touch_parent(from, now_ns())?;
        self.touch_parent(to, now_ns())
    }

    fn rename_dir(&mut self, from: &str, to: &str) -> Result<u64> {
        if to == from || to.starts_with(&format!("{from}/")) {
            return Err(err!(
                libc::EINVAL,
                "state folder {from:?} cannot move into itself ({to:?})"
            ));
        }
        if self.folder_exists(to)? {
            return Err(err!(libc::ENOTEMPTY, "state folder {to:?} holds keys"));
        }
        if self.stat_key(to)?.flatten().is_some() {
            return Err(err!(libc::ENOTDIR, "state key {to:?} holds a value"));
        }
        self.check_shape(to)?;
        let lo = format!("{from}/");
        let hi = prefix_end(&lo);
        // substr counts characters of TEXT: the prefix's length in characters.
        let skip = lo.chars().count() as i64 + 1;
        let moved = self.moved_versions(&lo, &hi)?;
        let n = self
            .conn
            .prepare_cached(
                "UPDATE state SET key = ?3 || '/' || substr(key, ?4) WHERE key >= ?1 AND key < ?2",
            )?
            .execute(params![lo, hi, to, skip])?;
        self.move_folders(from, to)?;
        for (key, v) in moved {
            self.hist_note(ItemKind::State, &key, Some(v.clone()), None)?;
            let new = format!("{to}/{}", &key[lo.len()..]);
            self.hist_note(ItemKind::State, &new, None, Some(v))?;
        }
        Ok(n as u64)
    }

    fn set_mtime(&mut self, key: &str, mtime_ns: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("UPDATE state SET mtime=?2, ctime=?3 WHERE key=?1")?
            .execute(params![key, mtime_ns, now_ns()])?
            > 0)
    }

    fn set_mode(&mut self, key: &str, mode: u32) -> Result<bool> {
        let Some(old) = self.live_version(key)? else {
            return Ok(false);
        };
        self.conn
            .prepare_cached("UPDATE state SET mode=?2, ctime=?3 WHERE key=?1")?
            .execute(params![key, mode, now_ns()])?;
        let new = history::Ver {
            mode: Some(mode),
            ..old.clone()
        };
        self.hist_note(ItemKind::State, key, Some(old), Some(new))?;
        Ok(true)
    }

    fn folder(&mut self, dir: &str) -> Result<Option<Folder>> {
        self.kept_folder(dir)
    }

    fn folders(&mut self, prefix: &str) -> Result<Vec<(String, Folder)>> {
        self.kept_folders(prefix)
    }

    fn keep_folder(&mut self, dir: &str, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()> {
        self.keep(dir, mode, mtime_ns)
    }

    fn forget_folder(&mut self, dir: &str) -> Result<bool> {
        self.forget(dir)
    }

    fn keys(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM state WHERE key>=?1 ORDER BY key LIMIT ?2")?;
        let mut rows = stmt.query(params![prefix, limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let k: String = r.get(0)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k);
        }
        Ok(out)
    }

    fn list_dir(&mut self, dir: &str) -> Result<Vec<DirEntry>> {
        let (lo, hi) = if dir.is_empty() {
            (String::new(), None)
        } else {
            let lo = format!("{dir}/");
            let hi = prefix_end(&lo);
            (lo, Some(hi))
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, size, mtime FROM state WHERE key>=?1 AND (?2 IS NULL OR key<?2) ORDER BY key",
        )?;
        let mut rows = stmt.query(params![lo, hi])?;
        let mut out: Vec<DirEntry> = Vec::new();
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            let rest = &key[lo.len()..];
            match rest.find('/') {
                Some(i) => {
                    let name = &rest[..i];
                    // Keys of one folder are contiguous in key order.
                    if out.last().is_some_and(|e| e.is_dir && e.name == name) {
                        continue;
                    }
                    out.push(DirEntry {
                        name: name.to_string(),
                        is_dir: true,
                        size: 0,
                        mtime_ns: r.get(2)?,
                    });
                }
                None => out.push(DirEntry {
                    name: rest.to_string(),
                    is_dir: false,
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                }),
            }
        }
        // "a-b" sorts between "a" and "a/..." by bytes; sort by name for a stable listing.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat_key(&mut self, key: &str) -> Result<Option<Option<FileStat>>> {
        let row: Option<(i64, i64, Option<u32>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT size, mtime, mode, coalesce(ctime, mtime) FROM state WHERE key=?1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((size, mtime, mode, ctime)) = row {
            return Ok(Some(Some(FileStat {
                size: size as u64,
                mtime_ns: mtime,
                mode,
                ctime_ns: ctime,
            })));
        }
        Ok(
            if self.folder_exists(key)? || self.kept_folder(key)?.is_some() {
                Some(None)
            } else {
                None
            },
        )
    }
}

impl Documents for SqliteStore {
    fn module(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT source FROM modules WHERE name=?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    fn set_module(&mut self, name: &str, source: &[u8]) -> Result<()> {
        if self.recording() {
            let old = self.module(name)?;
            self.hist_note_copy(ItemKind::Module, name, old.as_deref(), Some(source))?;
        }
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO modules(name,source,mtime) VALUES(?1,?2,?3)")?
            .execute(params![name, source, now_ns()])?;
        Ok(())
    }

    fn remove_module(&mut self, name: &str) -> Result<bool> {
        if self.recording() {
            if let Some(old) = self.module(name)? {
                self.hist_note_copy(ItemKind::Module, name, Some(&old), None)?;
            }
        }
        Ok(self
            .conn
            .prepare_cached("DELETE FROM modules WHERE name=?1")?
            .execute([name])?
            > 0)
    }

    fn list_modules(&mut self) -> Result<Vec<DirEntry>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, length(source), mtime FROM modules ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(DirEntry {
                name: r.get(0)?,
                is_dir: false,
                size: r.get::<_, i64>(1)? as u64,
                mtime_ns: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn meta(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT v, mtime FROM meta WHERE k=?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        if self.recording() && history::tracked(key) {
            let old = self.meta(key)?.map(|m| m.0);
            self.hist_note_copy(ItemKind::Meta, key, old.as_deref(), Some(value))?;
        }
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta(k,v,mtime) VALUES(?1,?2,?3)")?
            .execute(params![key, value, now_ns()])?;
        Ok(())
    }

    fn remove_meta(&mut self, key: &str) -> Result<()> {
        if self.recording() && history::tracked(key) {
            if let Some((old, _)) = self.meta(key)? {
                self.hist_note_copy(ItemKind::Meta, key, Some(&old), None)?;
            }
        }
        self.conn
            .prepare_cached("DELETE FROM meta WHERE k=?1")?
            .execute([key])?;
        Ok(())
    }
}

impl Queue for SqliteStore {
    fn enqueue(&mut self, job: &Job) -> Result<i64> {
        self.conn
            .prepare_cached(
                "INSERT INTO queue(id,name,source,caller,params,msg_id,hops,submitted_at,chain,budget,attempts) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            )?
            .execute(params![
                job.id,
                job.name,
                job.source,
                job.caller,
                job.params,
                job.msg_id,
                job.hops as i64,
                job.submitted_at,
                rows::chain_text(&job.chain),
                job.budget as i64,
                job.attempts as i64
            ])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>> {
        // The limit is written into the statement, not bound: SQLite plans an
        // `ORDER BY .. LIMIT ?` for the value bound, so binding it again (even the
        // same value) makes the cached statement be prepared again at its next step.
        let sql = format!(
            "SELECT {} FROM queue ORDER BY seq LIMIT {limit}",
            rows::JOB_COLS
        );
        self.jobs(&sql, [], !self.reader)
    }

    fn count_attempt(&mut self, seq: i64, delta: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE queue SET attempts=max(0, attempts+?2) WHERE seq=?1")?
            .execute([seq, delta])?;
        Ok(())
    }

    fn dequeue_range(&mut self, first: i64, last: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM queue WHERE seq BETWEEN ?1 AND ?2")?
            .execute([first, last])?;
        Ok(())
    }

    fn count_attempts(&mut self, first: i64, last: i64, delta: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE queue SET attempts=max(0, attempts+?3) WHERE seq BETWEEN ?1 AND ?2",
            )?
            .execute([first, last, delta])?;
        Ok(())
    }

    fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    fn dequeue(&mut self, seq: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM queue WHERE seq=?1")?
            .execute([seq])?;
        Ok(())
    }

    fn queue_len(&mut self) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM queue")?
            .query_row([], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn queued_named(&mut self, name: &str) -> Result<Option<Job>> {
        // A bad row is not shown (it is refused when the queue runs).
        let sql = format!(
            "SELECT {} FROM queue WHERE name=?1 ORDER BY seq DESC LIMIT 1",
            rows::JOB_COLS
        );
        Ok(self.jobs(&sql, [name], false)?.pop())
    }

    fn queued_all_named(&mut self, name: &str) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {} FROM queue WHERE name=?1 ORDER BY seq",
            rows::JOB_COLS
        );
        self.jobs(&sql, [name], false)
    }

    fn queue_names(&mut self, limit: usize) -> Result<Vec<(String, u64, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, length(source), submitted_at FROM queue ORDER BY seq LIMIT ?1",
        )?;
        // Names that are not script names (a store from elsewhere) are not listed.
        let rows = stmt.query_map([limit as i64], |r| {
            let name = match r.get_ref(0)? {
                rusqlite::types::ValueRef::Text(b) => std::str::from_utf8(b)
                    .ok()
                    .filter(|n| rows::check_script_name(n).is_ok())
                    .map(str::to_string),
                _ => None,
            };
            Ok(name.map(|n| {
                (
                    n,
                    r.get::<_, i64>(1).unwrap_or(0).max(0) as u64,
                    r.get(2).unwrap_or(0),
                )
            }))
        })?;
        Ok(rows
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect())
    }
}

impl Messages for SqliteStore {
    fn seen_message(&mut self, msg_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM received WHERE msg_id=?1")?
            .query_row([msg_id], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some())
    }

    fn mark_message(&mut self, msg_id: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO received(msg_id, at) VALUES(?1, ?2)")?
            .execute(params![msg_id, now_ns()])?;
        Ok(())
    }

    fn record_outgoing(&mut self, m: &Message) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sent(id,to_peer,kind,name,source,params,hops,payload,created_at,chain,budget) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            )?
            .execute(params![m.id, m.to, m.kind, m.name, m.source, m.params, m.hops as i64, m.payload, m.created_at, rows::chain_text(&m.chain), m.budget as i64])?;
        Ok(())
    }

    fn undelivered(&mut self, limit: usize) -> Result<Vec<Message>> {
        let rows: Vec<(i64, std::result::Result<Message, rows::BadRow>)> = {
            let sql = format!(
                "SELECT {} FROM sent WHERE delivered_at IS NULL ORDER BY seq LIMIT {limit}",
                rows::SENT_COLS
            );
            // The limit written in, as in `queued`.
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let it = stmt.query_map([], rows::outgoing)?;
            it.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, r) in rows {
            match r {
                Ok(m) => out.push(m),
                Err(why) => {
                    // Marked as delivered (kept for whoever investigates), never sent.
                    tracing::warn!(store = %self.path.display(), seq, reason = %why, "refusing an outgoing message whose stored row is invalid: it is never delivered");
                    self.conn
                        .prepare_cached("UPDATE sent SET delivered_at=?2 WHERE seq=?1")?
                        .execute(params![seq, now_ns()])?;
                    self.append_log(&format!(
                        "{} refuse sent row {seq}: {why}",
                        crate::util::rfc3339(now_ns())
                    ))?;
                    self.refused += 1;
                }
            }
        }
        Ok(out)
    }

    fn mark_delivered(&mut self, id: &str, at: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE sent SET delivered_at=?2 WHERE id=?1")?
            .execute(params![id, at])?;
        Ok(())
    }
}

impl Results for SqliteStore {
    fn record_run(
        &mut self,
        job: &Job,
        status: &str,
        result: &str,
        finished_at: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO runs(id,name,caller,status,result,finished_at) VALUES(?1,?2,?3,?4,?5,?6)",
            )?
            .execute(params![job.id, job.name, job.caller, status, result, finished_at])?;
        Ok(())
    }

    fn run_history(&mut self, limit: usize) -> Result<Vec<(String, String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, status, result FROM runs ORDER BY seq DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_pending(&mut self, target: &str, name: &str, run_id: &str, at: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO outbox(target,name,run_id,result,submitted_at,finished_at) VALUES(?1,?2,?3,NULL,?4,NULL)",
            )?
            .execute(params![target, name, run_id, at])?;
        Ok(())
    }

    fn outbox_finish(
        &mut self,
        target: &str,
        name: &str,
        run_id: &str,
        result: &str,
        at: i64,
    ) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET result=?4, finished_at=?5 WHERE target=?1 AND name=?2 AND run_id=?3",
            )?
            .execute(params![target, name, run_id, result, at])?
            > 0)
    }

    fn outbox_get(&mut self, target: &str, name: &str) -> Result<Option<OutboxEntry>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT target,name,run_id,result,submitted_at,finished_at FROM outbox WHERE target=?1 AND name=?2",
            )?
            .query_row([target, name], Self::row_outbox)
            .optional()?)
    }

    fn outbox_list(&mut self, target: &str) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT target,name,run_id,result,submitted_at,finished_at FROM outbox WHERE target=?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([target], Self::row_outbox)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_remove(&mut self, target: &str, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM outbox WHERE target=?1 AND name=?2")?
            .execute([target, name])?
            > 0)
    }

    fn outbox_unfinished(&mut self) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT target,name,run_id,result,submitted_at,finished_at FROM outbox WHERE result IS NULL",
        )?;
        let rows = stmt.query_map([], Self::row_outbox)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn prune_runs(&mut self, keep: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM runs WHERE seq <= (SELECT max(seq) FROM runs) - ?1")?
            .execute([keep as i64])?;
        Ok(())
    }
}

impl AuditLog for SqliteStore {
    fn append_log(&mut self, line: &str) -> Result<()> {
        // One event is one line: newlines inside it are escaped.
        for c in line.chars() {
            match c {
                '\n' => self.log_buf.push_str("\\n"),
                '\r' => self.log_buf.push_str("\\r"),
                c => self.log_buf.push(c),
            }
        }
        self.log_buf.push('\n');
        if !self.in_txn {
            self.flush_log()?;
        }
        Ok(())
    }

    fn log_size(&mut self) -> Result<u64> {
        if self.reader {
            // Another connection appends: never trust a cached end.
            self.log_end = None;
        }
        self.load_log_end()
    }

    fn read_log(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT off, line FROM log WHERE off >= coalesce((SELECT max(off) FROM log WHERE off <= ?1), 0) ORDER BY off",
        )?;
        let mut rows = stmt.query([offset as i64])?;
        let mut out = Vec::with_capacity(len.min(1 << 20));
        while let Some(r) = rows.next()? {
            let off: i64 = r.get(0)?;
            let line: String = r.get(1)?;
            let b = line.as_bytes();
            let skip = (offset as i64 - off).max(0) as usize;
            if skip < b.len() {
                let take = (b.len() - skip).min(len - out.len());
                out.extend_from_slice(&b[skip..skip + take]);
            }
            if out.len() >= len {
                break;
            }
        }
        Ok(out)
    }
}
