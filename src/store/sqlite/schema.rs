//! The SQLite backend's tables: every migration, in order, and the setup of a
//! connection that applies the ones a store lacks.

use super::SqliteStore;
use crate::error::{err, Result};

/// Every migration, in order; `user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE state(key TEXT PRIMARY KEY, json TEXT NOT NULL, raw BLOB, size INTEGER NOT NULL, mtime INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE modules(name TEXT PRIMARY KEY, source BLOB NOT NULL, mtime INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE meta(k TEXT PRIMARY KEY, v BLOB NOT NULL, mtime INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        source BLOB NOT NULL, caller TEXT NOT NULL, params TEXT NOT NULL, msg_id TEXT, hops INTEGER NOT NULL,
        submitted_at INTEGER NOT NULL);
     CREATE TABLE runs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, name TEXT NOT NULL,
        caller TEXT NOT NULL, status TEXT NOT NULL, result TEXT NOT NULL, finished_at INTEGER NOT NULL);
     CREATE TABLE outbox(target TEXT NOT NULL, name TEXT NOT NULL, run_id TEXT NOT NULL, result TEXT,
        submitted_at INTEGER NOT NULL, finished_at INTEGER, PRIMARY KEY(target, name)) WITHOUT ROWID;
     CREATE TABLE log(off INTEGER PRIMARY KEY, line TEXT NOT NULL);
     CREATE TABLE sent(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, to_peer TEXT NOT NULL,
        kind TEXT NOT NULL, name TEXT NOT NULL, source BLOB NOT NULL, params TEXT NOT NULL, hops INTEGER NOT NULL,
        payload TEXT NOT NULL, created_at INTEGER NOT NULL, delivered_at INTEGER);
     CREATE INDEX sent_undelivered ON sent(seq) WHERE delivered_at IS NULL;
     CREATE TABLE received(msg_id TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;",
    // 2: find a queued script by name without scanning the queue (inbox lookups).
    "CREATE INDEX queue_name ON queue(name, seq);",
    // 3: run history without AUTOINCREMENT: a new seq is still above every kept one
    // (pruning removes the oldest), and a run no longer writes sqlite_sequence.
    "CREATE TABLE runs_v3(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL,
        caller TEXT NOT NULL, status TEXT NOT NULL, result TEXT NOT NULL, finished_at INTEGER NOT NULL);
     INSERT INTO runs_v3 SELECT seq, id, name, caller, status, result, finished_at FROM runs;
     DROP TABLE runs;
     ALTER TABLE runs_v3 RENAME TO runs;",
    // 4: provenance and budgets of queued scripts and messages, and the starts of
    // each queued script (a script that crashes the daemon is not retried forever).
    "ALTER TABLE queue ADD COLUMN chain TEXT;
     ALTER TABLE queue ADD COLUMN budget INTEGER;
     ALTER TABLE queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE sent ADD COLUMN chain TEXT;
     ALTER TABLE sent ADD COLUMN budget INTEGER;",
    // 5: a value's metadata apart from its bytes, and its bytes stored once. The
    // size and time of a key were read from a row whose big blobs came first, so a
    // stat walked the overflow chain of a 64 MiB value; and a value written through
    // a file was kept twice (the raw bytes and their JSON text, ~14x for NULs).
    // `state` rows are small; `state_data` holds one blob per key: JSON text of a
    // value set by a script (`typed` 1) or the bytes written to the file (0).
    "CREATE TABLE state_data(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
     CREATE TABLE state_v4(key TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
        typed INTEGER NOT NULL, id INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO state_v4(key, size, mtime, typed, id)
        SELECT key, size, mtime, raw IS NULL, row_number() OVER (ORDER BY key) FROM state;
     INSERT INTO state_data(id, data)
        SELECT v.id, coalesce(s.raw, CAST(s.json AS BLOB)) FROM state_v4 v JOIN state s USING(key);
     DROP TABLE state;
     ALTER TABLE state_v4 RENAME TO state;",
    // 6: what chmod sets on a value, and folders kept apart from keys (an empty
    // folder survives a remount; a folder's mode and time are kept), see `folders.rs`.
    "ALTER TABLE state ADD COLUMN mode INTEGER;
     CREATE TABLE state_dirs(dir TEXT PRIMARY KEY, mode INTEGER, mtime INTEGER) WITHOUT ROWID;",
    // 7: a change time of its own (ctime moves on chmod, chown, utimens and rename,
    // where mtime stays); NULL: the same as mtime (rows from before).
    "ALTER TABLE state ADD COLUMN ctime INTEGER;
     ALTER TABLE state_dirs ADD COLUMN ctime INTEGER;",
    // 8: history (see `history.rs`): an entry per run that changed something, a
    // row per item it changed, before and after by reference to `state_data`
    // rows; `state(id)` indexed, so a value row is freed only when no live key
    // and no kept entry names it.
    "CREATE TABLE IF NOT EXISTS hist_runs(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, caller TEXT NOT NULL, chain TEXT, at INTEGER NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE IF NOT EXISTS hist_changes(seq INTEGER NOT NULL, kind TEXT NOT NULL, item TEXT NOT NULL,
        b_ref INTEGER, b_typed INTEGER, b_size INTEGER, b_mode INTEGER,
        a_ref INTEGER, a_typed INTEGER, a_size INTEGER, a_mode INTEGER,
        PRIMARY KEY(seq, kind, item)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS hist_item ON hist_changes(kind, item, seq);
     CREATE INDEX IF NOT EXISTS hist_bref ON hist_changes(b_ref) WHERE b_ref IS NOT NULL;
     CREATE INDEX IF NOT EXISTS state_id ON state(id);",
    // 9: history in one table, fewer pages per run (see `history.rs`): a
    // rowid table (appending a row writes one page; an index-ordered table
    // rebalances its right edge every few rows), the entry's head (id, name,
    // caller, chain, time, bytes, `n` rows) on its first row, whose rowid is the
    // entry's seq, its other rows right after it; values up to 512 bytes inline
    // (`b_val`, `a_val`); a state value's version an identity of its own
    // (`state.ver`, `b_ver`, `a_ver`; NULL: its value row's id), so that a small
    // value's row is rewritten in place and the entry keeps a copy. Kept entries
    // are renumbered in their order and keep their references.
    "CREATE TABLE hist(rid INTEGER PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        item TEXT NOT NULL, b_ref INTEGER, b_val BLOB, b_typed INTEGER, b_size INTEGER, b_mode INTEGER,
        a_ref INTEGER, a_val BLOB, a_typed INTEGER, a_size INTEGER, a_mode INTEGER,
        id TEXT, name TEXT, caller TEXT, chain TEXT, at INTEGER, bytes INTEGER, n INTEGER,
        b_ver INTEGER, a_ver INTEGER);
     ALTER TABLE state ADD COLUMN ver INTEGER;
     INSERT INTO hist
        SELECT c.rn, c.first, c.kind, c.item, c.b_ref, NULL, c.b_typed, c.b_size, c.b_mode,
               c.a_ref, NULL, c.a_typed, c.a_size, c.a_mode,
               CASE WHEN c.rn=c.first THEN r.id END, CASE WHEN c.rn=c.first THEN r.name END,
               CASE WHEN c.rn=c.first THEN r.caller END, CASE WHEN c.rn=c.first THEN r.chain END,
               CASE WHEN c.rn=c.first THEN r.at END, CASE WHEN c.rn=c.first THEN r.bytes END,
               CASE WHEN c.rn=c.first THEN c.cnt END, NULL, NULL
        FROM (SELECT x.*, min(x.rn) OVER (PARTITION BY x.seq) AS first,
                     count(*) OVER (PARTITION BY x.seq) AS cnt
              FROM (SELECT h.*, row_number() OVER (ORDER BY h.seq, h.kind, h.item) AS rn
                    FROM hist_changes h JOIN hist_runs USING(seq)) x) c
        JOIN hist_runs r ON r.seq=c.seq;
     DROP TABLE hist_changes;
     DROP TABLE hist_runs;
     CREATE INDEX hist_item ON hist(kind, item, seq);
     CREATE UNIQUE INDEX hist_id ON hist(id) WHERE id IS NOT NULL;
     CREATE INDEX hist_bref ON hist(b_ref) WHERE b_ref IS NOT NULL;",
];

impl SqliteStore {
    pub(super) fn setup(&mut self) -> Result<()> {
        // auto_vacuum first: switching to WAL writes the file's first page, after
        // which a fresh store can no longer take auto_vacuum without a VACUUM.
        let fresh: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if fresh == 0 {
            self.conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL")?;
        }
        // synchronous=FULL in WAL mode: every commit fsyncs the WAL before it returns.
        self.conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-512;
             PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF;",
        )?;
        Self::keep_log(&self.conn, true)?;
        // Room for every statement this store uses (about 50): none is parsed twice.
        self.conn.set_prepared_statement_cache_capacity(128);
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let version = version as usize;
        if version > MIGRATIONS.len() {
            return Err(err!(
                libc::EIO,
                "peer store {} has schema version {version}, newer than this peerfs knows ({}): upgrade peerfs",
                self.path.display(),
                MIGRATIONS.len()
            ));
        }
        if version < MIGRATIONS.len() {
            let tx = self.conn.transaction()?;
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.execute_batch(m)?;
                tx.execute_batch(&format!("PRAGMA user_version={}", i + 1))?;
            }
            tx.commit()?;
        }
        let vacuum: i64 = self
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if vacuum != 2 {
            // A store made before incremental vacuum: switched once (VACUUM
            // rewrites the file), so that space of removed values is reclaimed.
            tracing::debug!(store = %self.path.display(), "enabling incremental vacuum");
            self.conn
                .execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")?;
        }
        Ok(())
    }
}
