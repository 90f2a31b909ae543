//! Peers: names, the open peer (its stores, its pending work, its waiting readers),
//! and the registry that opens peers lazily and closes idle ones.

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
    Log(String),
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
    pub(crate) queued: AtomicU64,
    pub(crate) has_undelivered: AtomicBool,
    /// Messages handed to their targets and not yet acknowledged.
    pub(crate) inflight: Mutex<std::collections::HashSet<String>>,
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
            queued: AtomicU64::new(0),
            has_undelivered: AtomicBool::new(false),
            inflight: Mutex::new(Default::default()),
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
