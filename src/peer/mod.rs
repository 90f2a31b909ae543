//! Peers: names, the open peer (its stores, its pending work, its waiting readers),
//! and the registry that opens peers lazily and closes idle ones.

mod files;
pub use files::private_dir;
pub mod name;
mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use registry::{PeerInfo, Registry};

use crate::error::Result;
use crate::store::{Outgoing, SqliteStore};

/// A change to a peer's storage, made by its actor in a transaction.
pub enum Op {
    /// A script for this peer's queue; `outbox` is where its result will show.
    Submit(crate::store::Job),
    SetBytes(String, Vec<u8>),
    Remove(String),
    Rename(String, String),
    /// Every key under the folder `from` moved under `to`, in one transaction.
    RenameDir(String, String),
    /// A key's modification time set (`touch -d`, `utimensat`, rsync's times).
    SetMtime(String, i64),
    SetModule(String, Vec<u8>),
    RemoveModule(String),
    SetMeta(String, Vec<u8>),
    OutboxRemove(String, String),
    /// A message from another peer (a script to run, or a result to show).
    Deliver {
        from: String,
        msg: Outgoing,
    },
    /// The target took the message: stop retrying it.
    Delivered(String),
    /// A script this peer sends to a peer of another daemon (dropped into its
    /// `peers/<to>/inbox/`): recorded with its pending result row, delivered after
    /// the commit; its result comes back into this peer's outbox for `to`.
    Send(Outgoing),
    Log(String),
    /// The owner withdraws the queued scripts of this name.
    Withdraw(String),
    /// A script a spool intake took from a folder: submitted like [`Op::Submit`],
    /// and in the same transaction `record` is stored under the meta key `key` (what
    /// was taken, so a restart that finds the file still there skips it) and the
    /// meta keys in `forget` (files already removed) are dropped.
    Intake {
        job: crate::store::Job,
        key: String,
        record: Vec<u8>,
        forget: Vec<String>,
    },
    /// Drops spool intake records of files already removed (no fsync of its own: a
    /// record left behind only matches a file with the same name, size, inode,
    /// mtime and content hash).
    Forget(Vec<String>),
}

/// Called once with the outcome of an [`Op`]: after its transaction committed (the
/// change is on disk) or failed.
pub type Ack = Box<dyn FnOnce(Result<()>) + Send>;

/// Called once with a result's JSON bytes (or an error) when it is ready.
pub type Waiter = Box<dyn FnOnce(Result<Arc<Vec<u8>>>) + Send>;

#[derive(Default)]
pub(crate) struct Work {
    pub(crate) ops: Vec<(Op, Option<Ack>)>,
    pub(crate) scheduled: bool,
}

/// A published result kept in memory (see [`Recent`]).
pub(crate) struct RecentResult {
    pub(crate) run_id: String,
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) submitted_at: i64,
    pub(crate) finished_at: i64,
}

/// The last few results published at a peer, bounded in count and bytes: a copy of
/// committed outbox rows, dropped before a change to the row commits.
#[derive(Default)]
pub(crate) struct Recent {
    map: HashMap<(String, String), RecentResult>,
    order: std::collections::VecDeque<(String, String)>,
    bytes: usize,
}

impl Recent {
    const MAX_ENTRIES: usize = 64;
    const MAX_BYTES: usize = 64 * 1024;

    pub(crate) fn insert(&mut self, key: (String, String), r: RecentResult) {
        if r.bytes.len() > Self::MAX_BYTES / 4 {
            self.remove(&key.0, &key.1);
            return;
        }
        self.bytes += r.bytes.len();
        if let Some(old) = self.map.insert(key.clone(), r) {
            self.bytes -= old.bytes.len();
        } else {
            self.order.push_back(key);
        }
        while self.map.len() > Self::MAX_ENTRIES || self.bytes > Self::MAX_BYTES {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&k) {
                self.bytes -= old.bytes.len();
            }
        }
    }

    pub(crate) fn get(&self, target: &str, name: &str) -> Option<&RecentResult> {
        // Keys are owned pairs; a lookup by borrowed parts would need a second map.
        self.map.get(&(target.to_string(), name.to_string()))
    }

    pub(crate) fn remove(&mut self, target: &str, name: &str) {
        let key = (target.to_string(), name.to_string());
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.bytes.len();
            self.order.retain(|k| *k != key);
        }
    }
}

pub(crate) struct PendingResult {
    pub(crate) run_id: String,
    pub(crate) waiters: Vec<Waiter>,
}

/// An open peer. Its writer connection is used by one actor at a time (the worker
/// that holds `work.scheduled`); readers use a second, read-only connection.
pub struct Peer {
    pub name: String,
    pub(crate) path: PathBuf,
    // Field order is drop order: the read-only connection closes first, so that the
    // writer is the last connection and its close checkpoints the WAL away.
    reader: Mutex<Option<SqliteStore>>,
    pub(crate) writer: Mutex<SqliteStore>,
    pub(crate) work: Mutex<Work>,
    /// Outbox entries whose result is not in yet, by (target, file name).
    pub(crate) waits: Mutex<HashMap<(String, String), PendingResult>>,
    /// The latest results, served without a read of the store (a script's result
    /// is usually read right after it is published).
    pub(crate) recent: Mutex<Recent>,
    pub(crate) queued: AtomicU64,
    pub(crate) has_undelivered: AtomicBool,
    /// Messages handed to their targets and not yet acknowledged.
    pub(crate) inflight: Mutex<std::collections::HashSet<String>>,
    /// Failed deliveries per message id (past a bound the message becomes an
    /// `error` result instead of being retried forever).
    pub(crate) delivery_failures: Mutex<HashMap<String, u32>>,
    pub(crate) last_used: AtomicI64,
    /// Bumped when `policy.cedar` or `groups` changes (invalidates cached policies).
    pub policy_gen: AtomicU64,
}

impl Peer {
    pub(crate) fn new(name: String, path: PathBuf, store: SqliteStore) -> Peer {
        Peer {
            name,
            path,
            writer: Mutex::new(store),
            reader: Mutex::new(None),
            work: Mutex::new(Work::default()),
            waits: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
            queued: AtomicU64::new(0),
            has_undelivered: AtomicBool::new(false),
            inflight: Mutex::new(Default::default()),
            delivery_failures: Mutex::new(HashMap::new()),
            last_used: AtomicI64::new(crate::util::now_ns()),
            policy_gen: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_used
            .store(crate::util::now_ns(), Ordering::Relaxed);
    }

    /// Runs `f` on the read-only connection (opened on first use): committed data only.
    pub fn read<T>(&self, f: impl FnOnce(&mut SqliteStore) -> Result<T>) -> Result<T> {
        self.touch();
        let mut g: MutexGuard<Option<SqliteStore>> = self.reader.lock().unwrap();
        if g.is_none() {
            *g = Some(SqliteStore::open_reader(&self.path)?);
        }
        f(g.as_mut().expect("reader opened"))
    }

    /// Queued runs not finished yet.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether the peer has work in flight (it must stay open).
    pub(crate) fn busy(&self) -> bool {
        let w = self.work.lock().unwrap();
        w.scheduled
            || !w.ops.is_empty()
            || self.queued() > 0
            || self.has_undelivered.load(Ordering::Relaxed)
            || !self.waits.lock().unwrap().is_empty()
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn r(id: &str, len: usize) -> RecentResult {
        RecentResult {
            run_id: id.to_string(),
            bytes: Arc::new(vec![b'x'; len]),
            submitted_at: 1,
            finished_at: 2,
        }
    }

    #[test]
    fn recent_results_stay_bounded_and_forget_on_request() {
        let mut rec = Recent::default();
        for i in 0..200 {
            rec.insert(("p".into(), format!("{i}.json")), r(&i.to_string(), 100));
        }
        assert_eq!(rec.map.len(), Recent::MAX_ENTRIES);
        assert!(rec.get("p", "0.json").is_none(), "the oldest went first");
        assert_eq!(rec.get("p", "199.json").unwrap().run_id, "199");
        assert_eq!(rec.bytes, Recent::MAX_ENTRIES * 100);
        // Replacing keeps one entry and counts bytes once.
        rec.insert(("p".into(), "199.json".into()), r("new", 10));
        assert_eq!(rec.get("p", "199.json").unwrap().run_id, "new");
        assert_eq!(rec.bytes, (Recent::MAX_ENTRIES - 1) * 100 + 10);
        rec.remove("p", "199.json");
        assert!(rec.get("p", "199.json").is_none());
        assert_eq!(rec.order.len(), rec.map.len());
        // Byte bound: large results are not kept at all.
        rec.insert(("p".into(), "big.json".into()), r("b", Recent::MAX_BYTES));
        assert!(rec.get("p", "big.json").is_none());
        for i in 0..40 {
            rec.insert(("q".into(), format!("{i}")), r("m", Recent::MAX_BYTES / 8));
        }
        assert!(rec.bytes <= Recent::MAX_BYTES);
        assert_eq!(rec.order.len(), rec.map.len());
    }
}
