//! Peers: names, the open peer (its stores, and a slot for the executor's state of
//! it), and the registry that opens peers lazily and closes idle ones.

pub(crate) mod files;
/// What a peer name, key or script name may be ([`crate::names`]), also here.
pub use files::private_dir;
mod registry;
mod restore;
mod view;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub use registry::{PeerInfo, Registry};
pub use restore::restore_offline;

use crate::error::Result;
use crate::store::{OpenReader, Store};

/// What a layer above keeps for each open peer (the executor's queue, counters
/// and waiting readers), held here without this layer knowing its type. The
/// registry asks it whether the peer has work, before it closes the peer.
pub trait Attached: std::any::Any + Send + Sync {
    /// Whether the peer has work in flight (it must stay open).
    fn busy(&self) -> bool;
    /// Queued runs not finished yet.
    fn queued(&self) -> u64;
}

/// An open peer. Its writer connection is used by one actor at a time (the
/// executor's, see [`Attached`]); readers use a second, read-only connection.
pub struct Peer {
    pub name: String,
    // Field order is drop order: the read-only connection closes first, so that the
    // writer is the last connection and its close checkpoints the WAL away.
    reader: Mutex<Option<Box<dyn Store>>>,
    open_reader: OpenReader,
    pub(crate) writer: Mutex<Box<dyn Store>>,
    /// The executor's state of this peer, made on first use.
    attached: OnceLock<Box<dyn Attached>>,
    pub(crate) last_used: AtomicI64,
    /// Bumped when `policy.cedar` or `groups` changes (invalidates cached policies).
    pub policy_gen: AtomicU64,
}

impl Peer {
    pub(crate) fn new(name: String, store: Box<dyn Store>) -> Peer {
        Peer {
            name,
            open_reader: store.reader_opener(),
            writer: Mutex::new(store),
            reader: Mutex::new(None),
            attached: OnceLock::new(),
            last_used: AtomicI64::new(crate::util::now_ns()),
            policy_gen: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_used
            .store(crate::util::now_ns(), Ordering::Relaxed);
    }

    /// Runs `f` on the read-only connection (opened on first use): committed data only.
    pub fn read<T>(&self, f: impl FnOnce(&mut dyn Store) -> Result<T>) -> Result<T> {
        self.touch();
        let mut g: MutexGuard<Option<Box<dyn Store>>> = self.reader.lock().unwrap();
        if g.is_none() {
            *g = Some((self.open_reader)()?);
        }
        f(g.as_deref_mut().expect("reader opened"))
    }

    /// The state a layer above attached to this peer, made with `T::default()`
    /// by whoever asks first. One type per daemon: asking for another is a bug.
    pub fn attached<T: Attached + Default>(&self) -> &T {
        let a: &dyn std::any::Any = &**self
            .attached
            .get_or_init(|| Box::new(T::default()) as Box<dyn Attached>);
        a.downcast_ref::<T>()
            .expect("one type of state is attached to peers")
    }

    /// Queued runs not finished yet.
    pub fn queued(&self) -> u64 {
        self.attached.get().map_or(0, |a| a.queued())
    }

    /// Whether the peer has work in flight (it must stay open).
    pub(crate) fn busy(&self) -> bool {
        self.attached.get().is_some_and(|a| a.busy())
    }
}
