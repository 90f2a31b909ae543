//! Opening a store (the writer, read-only handles), its sync mode, and the
//! helpers the `Store` methods share: the log's buffered tail, rows of jobs and
//! outbox entries.

use super::*;

use std::ffi::c_int;
use std::sync::OnceLock;

/// What is called after each commit of a store, once checkpoints are handed
/// over (see [`SqliteStore::hand_checkpoints_over`]).
type CommitHook = Box<dyn Fn(&Path) + Send + Sync>;
static HANDED_OVER: OnceLock<CommitHook> = OnceLock::new();

impl SqliteStore {
    /// From now on, in this process, the stores' own connections never
    /// checkpoint (not automatically, not on close, not at `checkpoint`, which
    /// only makes the log durable) and `on_commit` hears of every commit: the
    /// replica (`src/replica/`) checkpoints a log once it has shipped it. Call
    /// before any store is opened; a second call changes nothing.
    pub fn hand_checkpoints_over(on_commit: CommitHook) {
        let _ = HANDED_OVER.set(on_commit);
    }

    pub(super) fn checkpoints_handed_over() -> bool {
        HANDED_OVER.get().is_some()
    }

    /// Keeps this connection from checkpointing (when they are handed over).
    pub(super) fn keep_log(conn: &Connection, writer: bool) -> Result<()> {
        if Self::checkpoints_handed_over() {
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )?;
            if writer {
                conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
            }
        }
        Ok(())
    }

    pub(super) fn after_commit(&self) {
        if let Some(hook) = HANDED_OVER.get() {
            hook(&self.path);
        }
    }

    /// Closes a store made here with its log checkpointed and removed, even
    /// when checkpoints are handed over (a new peer's file stands alone).
    pub fn close_checkpointed(self) -> Result<()> {
        self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            false,
        )?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if `create`) the store at `path` and runs pending migrations.
    pub fn open(path: &Path, create: bool) -> Result<SqliteStore> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| err!(libc::EIO, "cannot open peer store {}: {e}", path.display()))?;
        set_lookaside(&conn, WRITER_LOOKASIDE);
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            log_end: None,
            in_txn: false,
            reader: false,
            log_buf: String::new(),
            marks: Vec::new(),
            synced: true,
            refused: 0,
            hist: Default::default(),
            tables: Default::default(),
        };
        store.setup()?;
        Ok(store)
    }

    /// A second, read-only connection: sees only committed data, never blocks the writer.
    pub fn open_reader(path: &Path) -> Result<SqliteStore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| err!(libc::EIO, "cannot open peer store {}: {e}", path.display()))?;
        set_lookaside(&conn, READER_LOOKASIDE);
        conn.execute_batch("PRAGMA cache_size=-256; PRAGMA busy_timeout=5000;")?;
        Self::keep_log(&conn, false)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            log_end: None,
            in_txn: false,
            reader: true,
            log_buf: String::new(),
            marks: Vec::new(),
            synced: true,
            refused: 0,
            hist: Default::default(),
            tables: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn set_sync(&mut self, full: bool) -> Result<()> {
        if self.synced != full {
            self.exec(if full {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            })?;
            self.synced = full;
        }
        Ok(())
    }

    pub(super) fn exec(&self, sql: &str) -> Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Writes the buffered log lines as one row at the log's end.
    pub(super) fn flush_log(&mut self) -> Result<()> {
        if self.log_buf.is_empty() {
            return Ok(());
        }
        let off = self.load_log_end()?;
        self.conn
            .prepare_cached("INSERT INTO log(off, line) VALUES(?1, ?2)")?
            .execute(params![off as i64, self.log_buf])?;
        self.log_end = Some(off + self.log_buf.len() as u64);
        self.log_buf.clear();
        Ok(())
    }

    pub(super) fn load_log_end(&mut self) -> Result<u64> {
        if let Some(e) = self.log_end {
            return Ok(e);
        }
        let end: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT off + length(CAST(line AS BLOB)) FROM log ORDER BY off DESC LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()?;
        let end = end.unwrap_or(0) as u64;
        self.log_end = Some(end);
        Ok(end)
    }

    /// The queued jobs of `sql` (selecting [`rows::JOB_COLS`]); rows that fail the
    /// checks are removed from the queue with the reason in the log, never run.
    pub(super) fn jobs(
        &mut self,
        sql: &str,
        args: impl rusqlite::Params,
        refuse: bool,
    ) -> Result<Vec<Job>> {
        let rows: Vec<(i64, std::result::Result<Job, rows::BadRow>)> = {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let it = stmt.query_map(args, rows::job)?;
            it.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, r) in rows {
            match r {
                Ok(j) => out.push(j),
                Err(why) if refuse => {
                    tracing::warn!(store = %self.path.display(), seq, reason = %why, "refusing a queued script whose stored row is invalid: it is removed and never runs");
                    self.dequeue(seq)?;
                    self.append_log(&format!(
                        "{} refuse queued row {seq}: {why}",
                        crate::util::rfc3339(now_ns())
                    ))?;
                    self.refused += 1;
                }
                Err(_) => {}
            }
        }
        Ok(out)
    }

    pub(super) fn row_outbox(r: &rusqlite::Row) -> rusqlite::Result<OutboxEntry> {
        Ok(OutboxEntry {
            target: r.get(0)?,
            name: r.get(1)?,
            run_id: r.get(2)?,
            result: r.get(3)?,
            submitted_at: r.get(4)?,
            finished_at: r.get(5)?,
        })
    }
}

/// SQLite's lookaside (small allocations served from one block a connection),
/// as (slot bytes, slots). SQLite's default, 1,200 × 40 (48 KB), was most of an
/// open peer's memory with thousands of peers open (two connections each);
/// a run's writer keeps under a third of it (the same runs/s, docs/benchmarks.md),
/// the reader, which answers one small read at a time, a little.
const WRITER_LOOKASIDE: (c_int, c_int) = (1200, 12);
const READER_LOOKASIDE: (c_int, c_int) = (256, 8);

fn set_lookaside(conn: &Connection, (slot, n): (c_int, c_int)) {
    // SAFETY: a connection just opened has no lookaside memory in use, the one
    // condition of SQLITE_DBCONFIG_LOOKASIDE; a null buffer has SQLite allocate it.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            slot,
            n,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "SQLite kept its default lookaside");
    }
}
