//! Storage: the trait every backend implements (this file, with the plain types
//! it speaks in), and beside it the SQLite backend (`sqlite`, the default), the
//! checks of rows read back (`rows`) and how a value maps to a file (`value`).
//!
//! A store belongs to one peer and is used by one thread at a time. Writes happen
//! inside `begin()`..`commit()`; each run inside that is wrapped in a savepoint so
//! that one run's failure never undoes another's (group commit).

pub mod history;
pub mod journal;
pub mod rows;
pub mod sqlite;
mod txn;
pub mod value;

use std::sync::Arc;

use crate::error::{err, Result};
use crate::tables::rows::Row;
use crate::tables::{Filter, Find, Schema};
pub use sqlite::SqliteStore;
pub use txn::{Savepoint, Txn};

/// Every trait of the store, for code that calls them on a concrete store (a
/// `dyn Store` needs none of them in scope), as `std::io::prelude` does.
pub mod prelude {
    pub use super::{AuditLog, Documents, Messages, Queue, Results, StateKeys, Store, Tables};
}

/// What a schema change did: words for the log, and the data it dropped with
/// the owner's consent, as (what: `table` or `table.field`, JSON lines), to be
/// kept under `DATA/removed/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migrated {
    pub summary: String,
    pub removed: Vec<(String, String)>,
}

fn no_tables<T>() -> Result<T> {
    Err(err!(libc::ENOSYS, "this store has no declared tables"))
}

/// A submitted script waiting in a peer's queue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Job {
    pub seq: i64,
    /// The run id (also the result's `id`).
    pub id: String,
    /// The script's file name, e.g. `job.rhai`.
    pub name: String,
    pub source: Vec<u8>,
    /// The peer the script runs for; equal to the target for the owner's own scripts.
    pub caller: String,
    /// JSON object text.
    pub params: String,
    /// For scripts sent by another peer: the message id (deduplicated on arrival).
    pub msg_id: Option<String>,
    /// How many sends led to this script (a cycle bound).
    pub hops: u32,
    pub submitted_at: i64,
    /// Provenance: the peers whose scripts led to this one, the origin first and
    /// the direct caller last (the owner's own script: just the owner).
    pub chain: Vec<String>,
    /// Runs this script and everything it leads to may make in all (its share of
    /// the chain's budget); 0: not set yet (a new chain: the daemon's default).
    pub budget: u64,
    /// Runs of this queued script that started and never finished (counted
    /// durably before each start: a script that crashes the daemon ends).
    pub attempts: u32,
}

/// One child of a listed folder (also what a lattice answers for a remote
/// peer's view, hence serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime_ns: i64,
}

/// A file-like thing in a store: its bytes' length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    /// Permission bits set with chmod (`None`: never set, the mount shows 0644).
    pub mode: Option<u32>,
    /// When its contents, mode, times or name last changed (POSIX ctime).
    pub ctime_ns: i64,
}

/// A folder of `state/` kept apart from its keys: made with mkdir, left by the
/// removal or move of its last key through the mount, or given a mode or a time.
/// A folder exists while it holds keys or is kept; a kept one lasts until rmdir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folder {
    /// Permission bits set with chmod (`None`: the mount shows 0755).
    pub mode: Option<u32>,
    /// When it was made, last changed entries, or the time set (`None`: not known).
    pub mtime_ns: Option<i64>,
    /// When it was made, changed entries, mode or times (`None`: not known).
    pub ctime_ns: Option<i64>,
}

/// Keeps the folders above `key` (a key that left them through the mount): they
/// stay, empty, until rmdir, as on any file system; the parent's time moves to `now`.
pub fn keep_parents(st: &mut dyn Store, key: &str, now: i64) -> Result<()> {
    let mut dir = key;
    let mut first = true;
    while let Some(i) = dir.rfind('/') {
        dir = &dir[..i];
        st.keep_folder(dir, None, first.then_some(now))?;
        first = false;
    }
    Ok(())
}

/// The latest result of one script name, as the outbox shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub target: String,
    pub name: String,
    pub run_id: String,
    /// `None` while the run is pending.
    pub result: Option<String>,
    pub submitted_at: i64,
    pub finished_at: Option<i64>,
}

/// A message recorded in the sender's transaction, delivered after it commits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub id: String,
    pub to: String,
    /// `script` (run this at `to`) or `result` (a result for `to`'s outbox).
    pub kind: String,
    pub name: String,
    pub source: Vec<u8>,
    pub params: String,
    pub hops: u32,
    /// For `result`: the result JSON.
    pub payload: String,
    pub created_at: i64,
    /// For `script`: the chain of the run that sent it, ending with the sender.
    pub chain: Vec<String>,
    /// For `script`: the share of the chain's budget it carries.
    pub budget: u64,
}

/// Opens read-only handles on one store, each seeing only committed data and never
/// blocking its writer (see [`Store::reader_opener`]).
pub type OpenReader = Box<dyn Fn() -> Result<Box<dyn Store>> + Send + Sync>;

/// The storage of one peer. Object safe so that backends can be swapped: a peer
/// holds its store as a `Box<dyn Store>`. Split by concern: [`StateKeys`],
/// [`Documents`], [`Queue`], [`Messages`], [`Results`], [`AuditLog`] and
/// [`Tables`]; `Store`
/// itself adds transactions (used through the guards [`Txn`] and [`Savepoint`])
/// and upkeep. Their methods are callable on a `dyn Store` as they are.
pub trait Store:
    StateKeys + Documents + Queue + Messages + Results + AuditLog + Tables + Send
{
    /// How to open read-only handles on this store, for its readers (asked once,
    /// when the peer opens; the handle itself is opened on first read).
    fn reader_opener(&self) -> OpenReader;

    // Transactions. `savepoint`/`release`/`rollback_to` nest inside `begin`/`commit`.
    fn begin(&mut self) -> Result<()>;

    /// A transaction whose commit is atomic and survives a crash of the process, but
    /// is not fsynced on its own: it reaches the disk with the next synced commit,
    /// checkpoint or close. For work that is replayed from durable input after a
    /// power loss (runs of queued scripts).
    fn begin_unsynced(&mut self) -> Result<()> {
        self.begin()
    }

    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self) -> Result<()>;
    fn savepoint(&mut self) -> Result<()>;
    fn release(&mut self) -> Result<()>;
    fn rollback_to(&mut self) -> Result<()>;

    /// Makes every commit durable and folds the log into the main file.
    fn checkpoint(&mut self) -> Result<()>;

    /// Runs `PRAGMA integrity_check`.
    fn integrity_check(&mut self) -> Result<String>;

    /// The store's history, if it keeps one (see [`history`]).
    fn history(&mut self) -> Option<&mut dyn history::History> {
        None
    }
}

/// Declared tables (DESIGN §7, `crate::tables`); a backend without them has none.
pub trait Tables {
    /// The schema in force (none declared: no tables).
    fn schema(&mut self) -> Result<Arc<Schema>> {
        Ok(Arc::default())
    }
    /// Applies a new `schema.toml` in the open transaction (and keeps its text),
    /// or refuses it (`EINVAL`, naming the rule and the rows that fail it).
    fn apply_schema(&mut self, _text: &[u8]) -> Result<Migrated> {
        no_tables()
    }
    /// The row of `table` with key `id`.
    fn row_get(&mut self, _table: &str, _id: &serde_json::Value) -> Result<Option<Row>> {
        no_tables()
    }
    /// Inserts a whole row (`tables::rows::prepare_insert`); its key.
    /// `EEXIST` on a unique clash, `EINVAL` for a ref to no row.
    fn row_insert(&mut self, _table: &str, _row: &Row) -> Result<serde_json::Value> {
        no_tables()
    }
    /// Replaces the row with `row`'s key; false if there is none.
    fn row_replace(&mut self, _table: &str, _row: &Row) -> Result<bool> {
        no_tables()
    }
    /// Deletes a row (cascading, setting null or refused with `EBUSY` as its
    /// refs say); false if there is none.
    fn row_delete(&mut self, _table: &str, _id: &serde_json::Value) -> Result<bool> {
        no_tables()
    }
    /// Visits the rows of `find` in its order, after the row `cursor`, until
    /// `visit` returns false.
    fn row_scan(
        &mut self,
        _table: &str,
        _find: &Find,
        _cursor: Option<&Row>,
        _visit: &mut dyn FnMut(Row) -> bool,
    ) -> Result<()> {
        no_tables()
    }
    /// How many rows meet `filters`.
    fn row_count(&mut self, _table: &str, _filters: &[Filter]) -> Result<u64> {
        no_tables()
    }
    /// Counts query work from now on; a statement past `limit` operations is
    /// interrupted (`None`: stop counting).
    fn limit_work(&mut self, _limit: Option<u64>) {}
    /// Query work counted since [`Store::limit_work`], in operations.
    fn work(&self) -> u64 {
        0
    }
}

/// The peer's state: typed values (JSON) and their file bytes, and the kept folders of `state/`.
pub trait StateKeys {
    fn get(&mut self, key: &str) -> Result<Option<serde_json::Value>>;
    fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>>;
    fn set(&mut self, key: &str, value: &serde_json::Value) -> Result<()>;
    fn set_bytes(&mut self, key: &str, bytes: &[u8]) -> Result<()>;
    fn remove(&mut self, key: &str) -> Result<bool>;

    /// Moves a value to another key (replacing it), keeping its bytes and type.
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;

    /// Moves every key under the folder `from` under `to` (which must hold no key
    /// and not be a value); returns how many moved.
    fn rename_dir(&mut self, from: &str, to: &str) -> Result<u64>;

    /// Sets a value's modification time; false if there is no such key.
    fn set_mtime(&mut self, key: &str, mtime_ns: i64) -> Result<bool>;

    /// Sets a value's permission bits; false if there is no such key.
    fn set_mode(&mut self, key: &str, mode: u32) -> Result<bool>;

    /// `dir`, if it is a kept folder (see [`Folder`]).
    fn folder(&mut self, dir: &str) -> Result<Option<Folder>>;

    /// The kept folders whose path begins with `prefix`, sorted.
    fn folders(&mut self, prefix: &str) -> Result<Vec<(String, Folder)>>;

    /// Keeps `dir` as a folder; a mode or time given replaces the one kept. A folder
    /// newly kept is a new entry of its parent (whose time moves).
    fn keep_folder(&mut self, dir: &str, mode: Option<u32>, mtime_ns: Option<i64>) -> Result<()>;

    /// Stops keeping `dir` (rmdir); false if it was not kept.
    fn forget_folder(&mut self, dir: &str) -> Result<bool>;

    /// Every key that begins with `prefix`, sorted.
    fn keys(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>>;

    /// The immediate children of the folder `dir` ("" for the top), sorted by name.
    fn list_dir(&mut self, dir: &str) -> Result<Vec<DirEntry>>;

    /// A key as a file (`Some(Some(stat))`), a folder (`Some(None)`), or nothing.
    fn stat_key(&mut self, key: &str) -> Result<Option<Option<FileStat>>>;
}

/// Modules and small named documents (`policy`, `groups`, settings).
pub trait Documents {
    fn module(&mut self, name: &str) -> Result<Option<Vec<u8>>>;
    fn set_module(&mut self, name: &str, source: &[u8]) -> Result<()>;
    fn remove_module(&mut self, name: &str) -> Result<bool>;
    fn list_modules(&mut self) -> Result<Vec<DirEntry>>;
    fn meta(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>>;
    fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()>;
    fn remove_meta(&mut self, key: &str) -> Result<()>;
}

/// The queue of scripts waiting to run.
pub trait Queue {
    fn enqueue(&mut self, job: &Job) -> Result<i64>;
    fn queued(&mut self, limit: usize) -> Result<Vec<Job>>;
    fn dequeue(&mut self, seq: i64) -> Result<()>;

    /// Adds `delta` to the starts of the queued script `seq` (see
    /// [`Job::attempts`]); the caller commits a start before the run starts.
    fn count_attempt(&mut self, _seq: i64, _delta: i64) -> Result<()> {
        Ok(())
    }

    /// Removes the queued scripts from `first` to `last` (`seq`s, both included).
    fn dequeue_range(&mut self, first: i64, last: i64) -> Result<()> {
        for seq in first..=last {
            self.dequeue(seq)?;
        }
        Ok(())
    }

    /// [`Queue::count_attempt`] for every queued script from `first` to `last`
    /// (`seq`s, both included), in one statement.
    fn count_attempts(&mut self, first: i64, last: i64, delta: i64) -> Result<()> {
        for seq in first..=last {
            self.count_attempt(seq, delta)?;
        }
        Ok(())
    }

    /// Queued scripts and outgoing messages refused since the last call because
    /// their rows are invalid (see [`rows`]); they were removed or marked.
    fn take_refused(&mut self) -> u64 {
        0
    }

    fn queue_len(&mut self) -> Result<u64>;

    /// The newest queued script with this name.
    fn queued_named(&mut self, name: &str) -> Result<Option<Job>>;

    /// Every queued script with this name, oldest first.
    fn queued_all_named(&mut self, name: &str) -> Result<Vec<Job>>;

    /// Queued scripts by name: (name, size, submitted_at), oldest first.
    fn queue_names(&mut self, limit: usize) -> Result<Vec<(String, u64, i64)>>;
}

/// Messages between peers: the transactional outbox of those sent, the ids of those received (exactly once).
pub trait Messages {
    /// Whether a message id was already accepted (exactly-once delivery).
    fn seen_message(&mut self, msg_id: &str) -> Result<bool>;
    fn mark_message(&mut self, msg_id: &str) -> Result<()>;
    fn record_outgoing(&mut self, msg: &Message) -> Result<()>;
    fn undelivered(&mut self, limit: usize) -> Result<Vec<Message>>;
    fn mark_delivered(&mut self, id: &str, at: i64) -> Result<()>;
}

/// Results and the run history.
pub trait Results {
    fn record_run(&mut self, job: &Job, status: &str, result: &str, finished_at: i64)
        -> Result<()>;

    fn run_history(&mut self, limit: usize) -> Result<Vec<(String, String, String)>>;
    fn outbox_pending(&mut self, target: &str, name: &str, run_id: &str, at: i64) -> Result<()>;

    /// Fills in a pending outbox entry; ignored when a newer run took the name.
    fn outbox_finish(
        &mut self,
        target: &str,
        name: &str,
        run_id: &str,
        result: &str,
        at: i64,
    ) -> Result<bool>;

    fn outbox_get(&mut self, target: &str, name: &str) -> Result<Option<OutboxEntry>>;
    fn outbox_list(&mut self, target: &str) -> Result<Vec<OutboxEntry>>;
    fn outbox_remove(&mut self, target: &str, name: &str) -> Result<bool>;

    /// Every outbox entry still waiting for its result (recovered on open).
    fn outbox_unfinished(&mut self) -> Result<Vec<OutboxEntry>>;
    fn prune_runs(&mut self, keep: u64) -> Result<()>;
}

/// The audit log: append-only lines addressed by byte offset.
pub trait AuditLog {
    fn append_log(&mut self, line: &str) -> Result<()>;
    fn log_size(&mut self) -> Result<u64>;
    fn read_log(&mut self, offset: u64, len: usize) -> Result<Vec<u8>>;
}
