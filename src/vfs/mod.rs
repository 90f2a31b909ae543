//! The mount's tree as plain Rust: what every path means, its attributes, and what
//! each file operation does. No FUSE types: `tests/it/vfs.rs`, `tests/it/vfs_model.rs`
//! and the `vfs_ops`/`vfs_paths` fuzz targets drive it directly, and the FUSE
//! adapter only translates.
//!
//! Writes are buffered per open handle and committed when the handle is flushed
//! (`close(2)`): a script is submitted, a state value or module is stored, a policy
//! is validated and applied, and `close` returns only once that is durable.
//!
//! Where things live:
//! - [`node`]: the [`Node`] kinds (one per kind of path) and naming rules;
//! - `tree`: lookup (the path grammar), readdir, mkdir, rmdir; a peer's folder
//!   and a view's are derived from the [`Layout`] (`crate::layout`);
//! - `attr`: attributes, cache lifetimes, setattr (size, times, chmod/chown);
//! - [`flags`]: open and rename flags as types;
//! - `handle`: what an open file is (a reader or a writer, and a writer's
//!   changes) as types, and the table of open files, a lock for each;
//! - `handles`: open, read, write, close, the size checks, the opener rule;
//! - `budget`: each peer's buffer budget as a counter of the bytes it holds;
//! - `staging`: files that live only in memory, counted against that budget;
//! - `commit`: create, write-back at close, rename, unlink, submission;
//! - `meta`: `.peerfs/` files and statfs;
//! - `view`: another peer's view (`peers/<other>/`, the part of its state a peer may read).
//!
//! This file holds the shared types and the [`Vfs`] itself.

mod attr;
mod budget;
mod commit;
pub mod flags;
mod handle;
mod handles;
mod history;
mod meta;
pub mod node;
mod snapshots;
mod staging;
mod stream;
mod tables;
mod tree;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

pub use attr::{attr_ttl, attrs_keep, entry_ttl, SetAttr, SetTime, CACHE_TTL};
pub use flags::{OpenFlags, RenameFlags};
pub use node::{is_edit_name, join_key, module_name, Node};
pub use tree::special_file;

/// A file or a folder (one name across the crate: the layout's).
pub use crate::layout::Kind;
use crate::layout::Layout;
use crate::policy::PolicyText;

use budget::Budget;
use handle::Handles;
use staging::{Staged, Staging};

use crate::error::err;
use crate::error::{Error, Result};
use crate::exec::{self, Change, Core, Listener};
use crate::util::now_ns;

/// Largest state value written through a file.
pub const MAX_STATE_FILE: u64 = 64 << 20;
/// Largest policy or groups file.
pub const MAX_META_FILE: u64 = 1 << 20;
/// Bytes one peer may hold in the daemon's memory at once in open handles (a
/// writer's buffer, a reader's snapshot) and staging files (beyond it `EDQUOT`):
/// one peer cannot take the memory that every other peer's files need.
pub const BUFFER_BUDGET: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub direct_io: bool,
    /// A read-only handle: its close needs no FLUSH (the kernel is told so).
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// An answer that may come later, from another thread.
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// What the daemon changed, for the kernel's caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    Dir(Node),
    File(Node),
    /// Every node that shows this peer's state (`Node::state_of`): a run changed
    /// keys without saying which, so any of them may have a new size or be gone.
    State(String),
}

pub type Listing = Arc<Vec<(String, Node, Kind)>>;

/// Lists (and checks) the keys of `other` that `peer` may read: `(peer, other, key)`.
pub type ReadCheck = Box<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;
/// Tells the FUSE adapter what to invalidate in the kernel's caches.
pub type Invalidator = Box<dyn Fn(Invalidate) + Send + Sync>;

pub struct Vfs {
    core: Core,
    /// The entries of every peer's folder (see `crate::layout`).
    layout: Arc<Layout>,
    started_ns: i64,
    uid: u32,
    gid: u32,
    handles: Handles,
    staged: Arc<Staging>,
    dirs: Mutex<HashMap<u64, Listing>>,
    /// What each peer holds against [`BUFFER_BUDGET`].
    budget: Arc<Budget>,
    /// When an entry last came or went in a folder through the mount (its mtime
    /// and ctime; a folder not changed since the mount started shows the peer's).
    dir_times: Mutex<HashMap<Node, (i64, i64)>>,
    /// The unknown names looked up under `peers/` whose reason was logged.
    unknown_peers: Mutex<std::collections::HashSet<String>>,
    /// The last refusals at the mount's root (no peer's log to put them in):
    /// `.peerfs/refused`.
    root_refusals: Mutex<std::collections::VecDeque<String>>,
    invalidator: RwLock<Option<Invalidator>>,
    read_check: RwLock<Option<ReadCheck>>,
}

struct ChangeRelay(Arc<Vfs>);

impl Listener for ChangeRelay {
    fn changed(&self, peer: &str, change: Change) {
        let p = peer.to_string();
        // Entries of files are never cached by the kernel, so the log, the inbox and
        // the policy need no notice; results' attributes and folders are cached for a
        // second, so a change of a result or of state's folders does.
        let inv = match change {
            // A result came in, was replaced or removed: its size changed (results'
            // attributes live a second in the kernel, see `fuse::attr_ttl`).
            Change::Outbox {
                target,
                name: Some(name),
            } => Invalidate::File(match crate::exec::slot_caller(&target) {
                // The slot of a caller: the caller's view of this peer.
                Some(caller) => Node::OutboxFile {
                    peer: caller.to_string(),
                    target: p,
                    name,
                },
                None => Node::OutboxFile {
                    peer: p,
                    target,
                    name,
                },
            }),
            Change::Inbox
            | Change::Outbox { .. }
            | Change::Log
            | Change::Meta(_)
            | Change::Rows => return,
            Change::State => Invalidate::State(p),
            Change::Modules => Invalidate::Dir(Node::Modules(p)),
        };
        if let Some(f) = self.0.invalidator.read().unwrap().as_ref() {
            f(inv);
        }
    }
}

/// Lines kept in `.peerfs/refused`.
const ROOT_REFUSALS_KEPT: usize = 32;

fn ro(what: &str) -> Error {
    err!(libc::EACCES, "{what} is read-only")
}

impl Vfs {
    /// A vfs over `core` serving the standard layout; it registers itself for
    /// change notices.
    pub fn new(core: Core) -> Arc<Vfs> {
        Vfs::with_layout(core, Arc::new(Layout::standard()))
    }

    /// A vfs over `core` whose peers' folders hold `layout`'s entries.
    pub fn with_layout(core: Core, layout: Arc<Layout>) -> Arc<Vfs> {
        let budget = Arc::new(Budget::new(BUFFER_BUDGET));
        let vfs = Arc::new(Vfs {
            core: core.clone(),
            layout,
            started_ns: now_ns(),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            handles: Handles::new(),
            staged: Arc::new(Staging::new(budget.clone())),
            dirs: Mutex::new(HashMap::new()),
            budget,
            dir_times: Mutex::new(HashMap::new()),
            unknown_peers: Mutex::new(Default::default()),
            root_refusals: Mutex::new(Default::default()),
            invalidator: RwLock::new(None),
            read_check: RwLock::new(None),
        });
        core.set_listener(Arc::new(ChangeRelay(vfs.clone())));
        let c = core.clone();
        vfs.set_read_check(Box::new(move |reader, owner, key| {
            c.policy().may_read(&c, reader, owner, key)
        }));
        vfs
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn set_invalidator(&self, f: Invalidator) {
        *self.invalidator.write().unwrap() = Some(f);
    }

    /// The bytes one peer may hold in write handles and staging files.
    pub fn set_buffer_budget(&self, bytes: u64) {
        self.budget.set_limit(bytes);
    }

    pub fn set_read_check(&self, f: ReadCheck) {
        *self.read_check.write().unwrap() = Some(f);
    }

    /// Writes a refused file operation, in words, to the log of the peer whose
    /// folder it was in (`at` is the node acted on, or the folder of `name`), so
    /// that a user who sees only `Invalid argument` finds the reason in `log`.
    /// The answers every program expects (no such name, already there, not yet,
    /// no extended attributes, the daemon stopped) are no refusals. Refusals at the mount's root have
    /// no peer: they stay in the daemon's log.
    pub fn refused(&self, op: &str, at: &Node, name: Option<&str>, e: &Error) {
        let expected = [
            libc::ENOENT,
            libc::EEXIST,
            libc::EAGAIN,
            libc::EINTR,
            crate::error::STOPPED,
            libc::ENODATA,
            libc::ENOSYS,
            libc::EOPNOTSUPP,
            libc::ERANGE,
            libc::ESTALE,
        ];
        if expected.contains(&e.errno) {
            return;
        }
        let what = match (at, name) {
            (Node::Root, Some(n)) => n.to_string(),
            (_, Some(n)) => format!("{at}/{n}"),
            (_, None) => at.to_string(),
        };
        // One line, whatever the name and the message hold.
        let why = e.message.replace(['\n', '\r'], " ");
        let line = format!("refused {op} {}: {why}", what.escape_debug());
        match at.peer() {
            Some(peer) if self.core.registry().exists(peer) => {
                self.core.apply_async(peer, exec::Op::Log(line), None)
            }
            Some(_) => {}
            // A peer that could not be made (`mkdir 'a b'`) has no log yet.
            None => {
                let mut r = self.root_refusals.lock().unwrap();
                if r.len() == ROOT_REFUSALS_KEPT {
                    r.pop_front();
                }
                r.push_back(format!("{} {line}\n", crate::util::rfc3339(now_ns())));
            }
        }
    }

    /// [`Vfs::refused`] for an operation on an open handle.
    pub fn refused_fh(&self, op: &str, fh: u64, e: &Error) {
        let node = self.handles.get(fh).map(|h| h.lock().unwrap().node.clone());
        if let Some(node) = node {
            self.refused(op, &node, None, e);
        }
    }

    fn may_read(&self, peer: &str, other: &str, key: &str) -> bool {
        match self.read_check.read().unwrap().as_ref() {
            Some(f) => f(peer, other, key),
            None => false,
        }
    }
}
