//! The mount's tree as plain Rust: what every path means, its attributes, and what
//! each file operation does. No FUSE types: tests drive this directly, and the FUSE
//! adapter only translates.
//!
//! Writes are buffered per open handle and committed when the handle is flushed
//! (`close(2)`): a script is submitted, a state value or module is stored, a policy
//! is validated and applied, and `close` returns only once that is durable.

mod node;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use node::{join_key, Node};

use crate::err;
use crate::error::{Error, Result};
use crate::exec::{Change, Core, Listener};
use crate::peer::name::{check_key, check_peer_name, check_segment, is_staging_name};
use crate::peer::Op;
use crate::store::Store;
use crate::util::now_ns;

/// Largest state value written through a file.
pub const MAX_STATE_FILE: u64 = 64 << 20;
/// Largest policy or groups file.
pub const MAX_META_FILE: u64 = 1 << 20;
/// Bytes one peer may hold in the daemon's memory at once in open write handles
/// and staging files (beyond it `EDQUOT`): one peer cannot take the memory that
/// every other peer's writes need.
pub const BUFFER_BUDGET: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

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

/// Validates `policy.cedar` / `groups` text before it is applied.
pub type Validator = Box<dyn Fn(&str, &[u8]) -> Result<()> + Send + Sync>;
/// Lists (and checks) the keys of `other` that `peer` may read: `(peer, other, key)`.
pub type ReadCheck = Box<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;
/// Tells the FUSE adapter what to invalidate in the kernel's caches.
pub type Invalidator = Box<dyn Fn(Invalidate) + Send + Sync>;

/// A file that exists only in memory: created and not yet flushed, or a staging
/// name (`.x`, `x~`) in an inbox or modules folder.
#[derive(Debug, Clone)]
struct Staged {
    data: Vec<u8>,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

struct Handle {
    node: Node,
    write: bool,
    /// Made by create(): committed at release even if never written (`touch`).
    created: bool,
    buf: Vec<u8>,
    dirty: bool,
    /// Bytes were written through this handle (not only truncated). A policy,
    /// groups or module handle that was only truncated is not applied at a flush
    /// (see `flush_now`).
    wrote: bool,
    /// Its name was removed while it was open: its close stores nothing.
    unlinked: bool,
    snapshot: Option<Arc<Vec<u8>>>,
    /// The process (thread group) that opened a writing handle; 0 = not known yet
    /// (looked up from `opener` when needed). Only its close commits, see `flush`.
    owner: u32,
    /// The thread that opened it: a close from it needs no /proc lookup.
    opener: u32,
    /// Commits of this handle not yet durable, and the closes with nothing new to
    /// commit that wait for them (close returns only once the bytes are durable).
    committing: usize,
    waiters: Vec<Reply<()>>,
}

impl Handle {
    /// A handle `who` opened for writing, holding `buf`.
    fn writer(node: &Node, who: &Caller, buf: Vec<u8>, created: bool, dirty: bool) -> Handle {
        Handle {
            node: node.clone(),
            write: true,
            created,
            buf,
            dirty,
            wrote: false,
            unlinked: false,
            snapshot: None,
            owner: leader(who.pid),
            opener: who.pid,
            committing: 0,
            waiters: Vec::new(),
        }
    }

    /// A read-only handle showing `snapshot` (or `None`: read at each request).
    fn reader(node: &Node, snapshot: Option<Arc<Vec<u8>>>) -> Handle {
        Handle {
            node: node.clone(),
            write: false,
            created: false,
            buf: Vec::new(),
            dirty: false,
            wrote: false,
            unlinked: false,
            snapshot,
            owner: 0,
            opener: 0,
            committing: 0,
            waiters: Vec::new(),
        }
    }
}

/// Whether the kernel may keep `node`'s attributes for a while (entries of files
/// are never kept, so every path lookup still reaches the daemon): scripts in an
/// inbox (nothing but their writer changes them) and results (read with direct
/// I/O, so a size that lags never cuts a read short; a result that changes has its
/// inode invalidated). It saves the GETATTR after a LOOKUP and on `fstat`.
pub fn attrs_keep(node: &Node) -> bool {
    matches!(node, Node::InboxFile { .. } | Node::OutboxFile { .. })
}

/// `pid` if it leads its thread group (is its own process), else 0: the process is
/// then looked up only if a close comes from another thread (see `Vfs::flush`).
fn leader(pid: u32) -> u32 {
    if pid == 0 {
        return 0;
    }
    // SAFETY: a plain syscall with integer arguments; the fd it returns is closed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd >= 0 {
        unsafe { libc::close(fd as libc::c_int) };
        pid
    } else {
        0
    }
}

/// The thread group of `pid` (FUSE requests carry the thread's id), or `pid` itself
/// when /proc does not say; 0 stays 0 (a process outside the daemon's pid namespace).
fn process_of(pid: u32) -> u32 {
    if pid == 0 {
        return 0;
    }
    // Fast path: the usual single-threaded `cp`, shell or editor is its own process.
    if leader(pid) == pid {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

pub struct Vfs {
    core: Core,
    started_ns: i64,
    uid: u32,
    gid: u32,
    next_fh: AtomicU64,
    handles: Arc<Mutex<HashMap<u64, Handle>>>,
    staged: Arc<Mutex<HashMap<(Node, String), Staged>>>,
    /// Empty folders made with `mkdir` in state/ (they hold no key yet).
    empty_dirs: Mutex<HashSet<(String, String)>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    /// See [`BUFFER_BUDGET`].
    budget: AtomicU64,
    /// When an entry last came or went in a folder through the mount (its mtime
    /// and ctime; a folder not changed since the mount started shows the peer's).
    dir_times: Mutex<HashMap<Node, i64>>,
    invalidator: RwLock<Option<Invalidator>>,
    validator: RwLock<Option<Validator>>,
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
            Change::Inbox | Change::Outbox { .. } | Change::Log | Change::Meta(_) => return,
            Change::State => Invalidate::State(p),
            Change::Modules => Invalidate::Dir(Node::Modules(p)),
        };
        if let Some(f) = self.0.invalidator.read().unwrap().as_ref() {
            f(inv);
        }
    }
}

fn ro(what: &str) -> Error {
    err!(libc::EACCES, "{what} is read-only")
}

impl Vfs {
    /// A vfs over `core`; it registers itself for change notices.
    pub fn new(core: Core) -> Arc<Vfs> {
        let vfs = Arc::new(Vfs {
            core: core.clone(),
            started_ns: now_ns(),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            next_fh: AtomicU64::new(1),
            handles: Arc::new(Mutex::new(HashMap::new())),
            staged: Arc::new(Mutex::new(HashMap::new())),
            empty_dirs: Mutex::new(HashSet::new()),
            dirs: Mutex::new(HashMap::new()),
            budget: AtomicU64::new(BUFFER_BUDGET),
            dir_times: Mutex::new(HashMap::new()),
            invalidator: RwLock::new(None),
            validator: RwLock::new(None),
            read_check: RwLock::new(None),
        });
        core.set_listener(Arc::new(ChangeRelay(vfs.clone())));
        vfs.set_validator(Box::new(|kind, bytes| {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| err!(libc::EINVAL, "{kind} is not UTF-8 text"))?;
            let r = if kind == "policy" {
                crate::policy::Policy::parse(text).map(|_| ())
            } else {
                crate::policy::Groups::parse(text).map(|_| ())
            };
            r.map_err(|e| err!(libc::EINVAL, "{e}"))
        }));
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

    pub fn set_validator(&self, f: Validator) {
        *self.validator.write().unwrap() = Some(f);
    }

    /// The bytes one peer may hold in write handles and staging files.
    pub fn set_buffer_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// Refuses `more` bytes of buffers for the peer acting at `node` when it would
    /// pass its budget. `hs` is the handle table, locked by the caller.
    fn check_budget(&self, node: &Node, hs: &HashMap<u64, Handle>, more: u64) -> Result<()> {
        let Some(peer) = node.peer() else {
            return Ok(());
        };
        let in_handles: u64 = hs
            .values()
            .filter(|h| h.write && h.node.peer() == Some(peer))
            .map(|h| h.buf.len() as u64)
            .sum();
        let staged: u64 = self
            .staged
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _), _)| p.peer() == Some(peer))
            .map(|(_, s)| s.data.len() as u64)
            .sum();
        let budget = self.budget.load(Ordering::Relaxed);
        let held = in_handles + staged;
        if held.saturating_add(more) > budget {
            return Err(err!(
                libc::EDQUOT,
                "{peer} holds {held} bytes in open files and staging files, and {more} more \
                 would pass its budget of {budget}: close or remove some first"
            ));
        }
        Ok(())
    }

    pub fn set_read_check(&self, f: ReadCheck) {
        *self.read_check.write().unwrap() = Some(f);
    }

    fn may_read(&self, peer: &str, other: &str, key: &str) -> bool {
        match self.read_check.read().unwrap().as_ref() {
            Some(f) => f(peer, other, key),
            None => false,
        }
    }

    fn info(&self, peer: &str) -> Result<crate::peer::PeerInfo> {
        self.core
            .registry()
            .info(peer)
            .ok_or_else(|| err!(libc::ENOENT, "no peer named {peer:?}"))
    }

    fn dir_attr(&self, peer: Option<&str>, perm: u16) -> Result<Attr> {
        let (uid, gid, t) = match peer {
            Some(p) => {
                let i = self.info(p)?;
                (i.uid, i.gid, i.ctime_ns)
            }
            None => (self.uid, self.gid, self.started_ns),
        };
        Ok(Attr {
            kind: Kind::Dir,
            size: 0,
            perm,
            uid,
            gid,
            mtime_ns: t,
            ctime_ns: t,
            nlink: 2,
        })
    }

    fn file_attr(&self, peer: Option<&str>, size: u64, perm: u16, mtime_ns: i64) -> Result<Attr> {
        let mut a = self.dir_attr(peer, perm)?;
        a.kind = Kind::File;
        a.size = size;
        a.nlink = 1;
        if mtime_ns > 0 {
            // The store keeps one time per file: its contents' or the one set.
            a.mtime_ns = mtime_ns;
            a.ctime_ns = mtime_ns;
        }
        Ok(a)
    }

    fn staged_attr(&self, s: &Staged) -> Attr {
        Attr {
            kind: Kind::File,
            size: s.data.len() as u64,
            perm: 0o644,
            uid: s.uid,
            gid: s.gid,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.mtime_ns,
            nlink: 1,
        }
    }

    fn staged_get(&self, parent: &Node, name: &str) -> Option<Staged> {
        self.staged
            .lock()
            .unwrap()
            .get(&(parent.clone(), name.to_string()))
            .cloned()
    }

    /// The parent folder of a file node, and the file's name in it.
    fn parent_of(node: &Node) -> Option<(Node, String)> {
        Some(match node {
            Node::InboxFile { peer, target, name } => (
                Node::Inbox {
                    peer: peer.clone(),
                    target: target.clone(),
                },
                name.clone(),
            ),
            Node::StateFile { peer, key } => {
                let (dir, name) = match key.rfind('/') {
                    Some(i) => (key[..i].to_string(), key[i + 1..].to_string()),
                    None => (String::new(), key.clone()),
                };
                (
                    Node::State {
                        peer: peer.clone(),
                        dir,
                    },
                    name,
                )
            }
            Node::ModuleFile { peer, name } => (Node::Modules(peer.clone()), name.clone()),
            _ => return None,
        })
    }

    fn meta_text(&self, name: &str) -> String {
        match name {
            "version" => format!("version {}\n", env!("CARGO_PKG_VERSION")),
            "metrics" => crate::metrics::text(&self.core),
            _ => {
                let s = self.core.stats();
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                format!(
                    "peers {}\nopen_peers {}\nsubmissions {}\nruns {}\nruns_ok {}\nruns_error {}\nruns_denied {}\nruns_limit {}\nruns_gave_way {}\ncommits {}\nmessages_delivered {}\nwrites {}\nscript_cache {}\n",
                    self.core.registry().len(),
                    self.core.registry().open_count(),
                    g(&s.submissions),
                    g(&s.runs),
                    g(&s.runs_ok),
                    g(&s.runs_error),
                    g(&s.runs_denied),
                    g(&s.runs_limit),
                    g(&s.runs_gave_way),
                    g(&s.commits),
                    g(&s.messages_delivered),
                    g(&s.writes),
                    self.core.cache().len(),
                )
            }
        }
    }

    fn meta_bytes(&self, peer: &str, key: &str) -> Result<(Vec<u8>, i64)> {
        let p = self.core.peer(peer)?;
        Ok(p.read(|s| s.meta(key))?.unwrap_or_default())
    }

    /// The attributes of a node (which must exist).
    pub fn getattr(&self, node: &Node, fh: Option<u64>) -> Result<Attr> {
        let mut snapshot = None;
        if let Some(fh) = fh {
            let h = self.handles.lock().unwrap();
            if let Some(h) = h.get(&fh) {
                let peer = h.node.peer().map(str::to_string);
                if h.write {
                    let mut a =
                        self.file_attr(peer.as_deref(), h.buf.len() as u64, 0o644, now_ns())?;
                    if h.unlinked {
                        a.nlink = 0;
                    }
                    return Ok(a);
                }
                snapshot = h.snapshot.as_ref().map(|s| (peer, s.len() as u64));
            }
        }
        match self.attr(node) {
            // fstat of a file removed while open (the kernel sends no handle with
            // it): what an open handle of it still shows, with no link left.
            Err(e) if e.errno == libc::ENOENT => {
                let held = snapshot.or_else(|| {
                    let hs = self.handles.lock().unwrap();
                    hs.values().find(|h| &h.node == node).map(|h| {
                        let len = if h.write {
                            h.buf.len()
                        } else {
                            h.snapshot.as_ref().map_or(0, |s| s.len())
                        };
                        (h.node.peer().map(str::to_string), len as u64)
                    })
                });
                let Some((peer, len)) = held else {
                    return Err(e);
                };
                let mut a = self.file_attr(peer.as_deref(), len, 0o644, now_ns())?;
                a.nlink = 0;
                Ok(a)
            }
            r => r,
        }
    }

    fn attr(&self, node: &Node) -> Result<Attr> {
        use Node::*;
        match node {
            Root => self.dir_attr(None, 0o755),
            MetaDir => self.dir_attr(None, 0o555),
            MetaFile(n) => self.file_attr(None, self.meta_text(n).len() as u64, 0o444, now_ns()),
            Peer(p) => self.dir_attr(Some(p), 0o700),
            Inbox { peer, .. }
            | Outbox { peer, .. }
            | Modules(peer)
            | Peers(peer)
            | View { peer, .. }
            | ViewState { peer, .. } => self.dir_attr(Some(peer), 0o755),
            State { peer, dir } => {
                if !dir.is_empty() && !self.state_dir_exists(peer, dir)? {
                    return Err(err!(libc::ENOENT, "no state folder {dir:?}"));
                }
                let mut a = self.dir_attr(Some(peer), 0o755)?;
                // Its subfolders are not counted (that would scan every key under
                // it): 1 is the convention for "not counted", so find and fts never
                // take 2 to mean "no subfolders" and skip them.
                a.nlink = 1;
                if let Some(&t) = self.dir_times.lock().unwrap().get(node) {
                    a.mtime_ns = t;
                    a.ctime_ns = t;
                }
                Ok(a)
            }
            InboxFile { peer, target, name } => {
                let parent = Inbox {
                    peer: peer.clone(),
                    target: target.clone(),
                };
                if let Some(s) = self.staged_get(&parent, name) {
                    return Ok(self.staged_attr(&s));
                }
                if peer == target {
                    let p = self.core.peer(peer)?;
                    // An empty queue needs no look (the usual lookup of a new name).
                    let queued = if p.queued() > 0 {
                        p.read(|s| s.queued_named(name))?
                    } else {
                        None
                    };
                    if let Some(j) = queued {
                        // Writable: writing the name again submits another run.
                        return self.file_attr(
                            Some(peer),
                            j.source.len() as u64,
                            0o644,
                            j.submitted_at,
                        );
                    }
                }
                Err(err!(libc::ENOENT, "no script {name:?} in the inbox"))
            }
            OutboxFile { peer, target, name } => match self.core.outbox_get(peer, target, name)? {
                Some(e) => {
                    let size = e.result.as_ref().map(|r| r.len() as u64).unwrap_or(0);
                    self.file_attr(
                        Some(peer),
                        size,
                        0o444,
                        e.finished_at.unwrap_or(e.submitted_at),
                    )
                }
                None => Err(err!(libc::ENOENT, "no result {name:?} in the outbox")),
            },
            StateFile { peer, key } => {
                if let Some((parent, name)) = Self::parent_of(node) {
                    if let Some(s) = self.staged_get(&parent, &name) {
                        return Ok(self.staged_attr(&s));
                    }
                }
                let p = self.core.peer(peer)?;
                match p.read(|s| s.stat_key(key))? {
                    Some(Some(st)) => self.file_attr(Some(peer), st.size, 0o644, st.mtime_ns),
                    Some(None) => Err(err!(libc::EISDIR, "state key {key:?} is a folder")),
                    None => Err(err!(libc::ENOENT, "no state key {key:?}")),
                }
            }
            ModuleFile { peer, name } => {
                if let Some(s) = self.staged_get(&Modules(peer.clone()), name) {
                    return Ok(self.staged_attr(&s));
                }
                let m = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                let p = self.core.peer(peer)?;
                let list = p.read(|s| s.list_modules())?;
                match list.into_iter().find(|e| e.name == m) {
                    Some(e) => self.file_attr(Some(peer), e.size, 0o644, e.mtime_ns),
                    None => Err(err!(libc::ENOENT, "no module {m:?}")),
                }
            }
            ViewStateFile { peer, other, key } => {
                if !self.may_read(peer, other, key) {
                    return Err(err!(libc::ENOENT, "no readable key {key:?} of {other}"));
                }
                let o = self.core.peer(other)?;
                match o.read(|s| s.stat_key(key))? {
                    Some(Some(st)) => self.file_attr(Some(peer), st.size, 0o444, st.mtime_ns),
                    _ => Err(err!(libc::ENOENT, "no readable key {key:?} of {other}")),
                }
            }
            Policy(p) => {
                let (b, t) = self.meta_bytes(p, "policy")?;
                self.file_attr(Some(p), b.len() as u64, 0o644, t)
            }
            Groups(p) => {
                let (b, t) = self.meta_bytes(p, "groups")?;
                self.file_attr(Some(p), b.len() as u64, 0o644, t)
            }
            Log(p) => {
                let peer = self.core.peer(p)?;
                let size = peer.read(|s| s.log_size())?;
                self.file_attr(Some(p), size, 0o444, now_ns())
            }
        }
    }

    fn state_dir_exists(&self, peer: &str, dir: &str) -> Result<bool> {
        let p = self.core.peer(peer)?;
        Ok(match p.read(|s| s.stat_key(dir))? {
            Some(None) => true,
            Some(Some(_)) => false,
            None => self
                .empty_dirs
                .lock()
                .unwrap()
                .contains(&(peer.to_string(), dir.to_string())),
        })
    }

    /// A key left `peer`'s state through the mount (rm, mv): its folders stay, empty,
    /// as they would on any file system, until rmdir (`rm -r` removes the key, then
    /// the folders, and must find them).
    fn keep_folders_of(&self, peer: &str, key: &str) {
        let mut e = self.empty_dirs.lock().unwrap();
        let mut dir = key;
        while let Some(i) = dir.rfind('/') {
            dir = &dir[..i];
            e.insert((peer.to_string(), dir.to_string()));
        }
    }

    /// An entry came or went in `dir`: its times move (POSIX: mtime and ctime).
    fn entries_changed(&self, dir: &Node) {
        if matches!(dir, Node::State { .. }) {
            self.dir_times.lock().unwrap().insert(dir.clone(), now_ns());
        }
    }

    /// The child `name` of `parent`, if it exists.
    pub fn lookup(&self, parent: &Node, name: &str) -> Result<(Node, Attr)> {
        let node = self.child(parent, name)?;
        let attr = self.attr(&node)?;
        Ok((node, attr))
    }

    /// The node `name` under `parent` would be (it may not exist).
    fn child(&self, parent: &Node, name: &str) -> Result<Node> {
        use Node::*;
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        Ok(match parent {
            Root => {
                if name == ".peerfs" {
                    MetaDir
                } else {
                    if check_peer_name(name).is_err() || !self.core.registry().exists(name) {
                        return Err(missing());
                    }
                    Peer(name.to_string())
                }
            }
            MetaDir => match name {
                "version" => MetaFile("version"),
                "stats" => MetaFile("stats"),
                "metrics" => MetaFile("metrics"),
                _ => return Err(missing()),
            },
            Peer(p) => {
                let p = p.clone();
                match name {
                    "inbox" => Inbox {
                        peer: p.clone(),
                        target: p,
                    },
                    "outbox" => Outbox {
                        peer: p.clone(),
                        target: p,
                    },
                    "state" => State {
                        peer: p,
                        dir: String::new(),
                    },
                    "modules" => Modules(p),
                    "peers" => Peers(p),
                    "policy.cedar" => Policy(p),
                    "groups" => Groups(p),
                    "log" => Log(p),
                    _ => return Err(missing()),
                }
            }
            Inbox { peer, target } => {
                check_segment("script name", name)?;
                InboxFile {
                    peer: peer.clone(),
                    target: target.clone(),
                    name: name.to_string(),
                }
            }
            Outbox { peer, target } => {
                check_segment("result name", name)?;
                OutboxFile {
                    peer: peer.clone(),
                    target: target.clone(),
                    name: name.to_string(),
                }
            }
            State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                if self.staged_get(parent, name).is_some() {
                    return Ok(StateFile {
                        peer: peer.clone(),
                        key,
                    });
                }
                // The store first: a key a script set wins over a folder that
                // only lives in memory (made by mkdir, or left by rm of its last key).
                let p = self.core.peer(peer)?;
                match p.read(|s| s.stat_key(&key))? {
                    Some(Some(_)) => StateFile {
                        peer: peer.clone(),
                        key,
                    },
                    Some(None) => State {
                        peer: peer.clone(),
                        dir: key,
                    },
                    None if self
                        .empty_dirs
                        .lock()
                        .unwrap()
                        .contains(&(peer.clone(), key.clone())) =>
                    {
                        State {
                            peer: peer.clone(),
                            dir: key,
                        }
                    }
                    None => return Err(missing()),
                }
            }
            Modules(p) => {
                check_segment("module file name", name)?;
                ModuleFile {
                    peer: p.clone(),
                    name: name.to_string(),
                }
            }
            Peers(p) => {
                if name == p
                    || check_peer_name(name).is_err()
                    || !crate::lattice::known(&self.core, name)
                {
                    return Err(missing());
                }
                View {
                    peer: p.clone(),
                    other: name.to_string(),
                }
            }
            View { peer, other } => match name {
                "inbox" => Inbox {
                    peer: peer.clone(),
                    target: other.clone(),
                },
                "outbox" => Outbox {
                    peer: peer.clone(),
                    target: other.clone(),
                },
                "state" => ViewState {
                    peer: peer.clone(),
                    other: other.clone(),
                    dir: String::new(),
                },
                _ => return Err(missing()),
            },
            ViewState { peer, other, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                let o = self.core.peer(other)?;
                match o.read(|s| s.stat_key(&key))? {
                    Some(Some(_)) if self.may_read(peer, other, &key) => ViewStateFile {
                        peer: peer.clone(),
                        other: other.clone(),
                        key,
                    },
                    Some(None) => {
                        let keys = o.read(|s| s.keys(&format!("{key}/"), 100_000))?;
                        if !keys.iter().any(|k| self.may_read(peer, other, k)) {
                            return Err(missing());
                        }
                        ViewState {
                            peer: peer.clone(),
                            other: other.clone(),
                            dir: key,
                        }
                    }
                    _ => return Err(missing()),
                }
            }
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        })
    }

    /// The children of a folder, sorted by name (the adapter adds `.` and `..`).
    pub fn readdir(&self, node: &Node) -> Result<Vec<(String, Node, Kind)>> {
        use Node::*;
        let mut out: Vec<(String, Node, Kind)> = Vec::new();
        let staged_in =
            |out: &mut Vec<(String, Node, Kind)>, parent: &Node, mk: &dyn Fn(String) -> Node| {
                for ((p, n), _) in self.staged.lock().unwrap().iter() {
                    if p == parent {
                        out.push((n.clone(), mk(n.clone()), Kind::File));
                    }
                }
            };
        match node {
            Root => {
                out.push((".peerfs".into(), MetaDir, Kind::Dir));
                for (n, _) in self.core.registry().list() {
                    out.push((n.clone(), Peer(n), Kind::Dir));
                }
            }
            MetaDir => {
                out.push(("metrics".into(), MetaFile("metrics"), Kind::File));
                out.push(("stats".into(), MetaFile("stats"), Kind::File));
                out.push(("version".into(), MetaFile("version"), Kind::File));
            }
            Peer(p) => {
                for n in [
                    "inbox",
                    "outbox",
                    "state",
                    "modules",
                    "peers",
                    "policy.cedar",
                    "groups",
                    "log",
                ] {
                    let c = self.child(node, n)?;
                    let k = if c.is_dir() { Kind::Dir } else { Kind::File };
                    out.push((n.to_string(), c, k));
                }
                let _ = p;
            }
            Inbox { peer, target } => {
                let (pe, t) = (peer.clone(), target.clone());
                staged_in(&mut out, node, &|n| InboxFile {
                    peer: pe.clone(),
                    target: t.clone(),
                    name: n,
                });
                if peer == target {
                    let p = self.core.peer(peer)?;
                    for (n, _, _) in p.read(|s| s.queue_names(100_000))? {
                        out.push((
                            n.clone(),
                            InboxFile {
                                peer: peer.clone(),
                                target: target.clone(),
                                name: n,
                            },
                            Kind::File,
                        ));
                    }
                }
            }
            Outbox { peer, target } => {
                for e in self.core.outbox_list(peer, target)? {
                    out.push((
                        e.name.clone(),
                        OutboxFile {
                            peer: peer.clone(),
                            target: target.clone(),
                            name: e.name,
                        },
                        Kind::File,
                    ));
                }
            }
            State { peer, dir } => {
                let p = self.core.peer(peer)?;
                for e in p.read(|s| s.list_dir(dir))? {
                    let key = join_key(dir, &e.name);
                    if e.is_dir {
                        out.push((
                            e.name,
                            State {
                                peer: peer.clone(),
                                dir: key,
                            },
                            Kind::Dir,
                        ));
                    } else {
                        out.push((
                            e.name,
                            StateFile {
                                peer: peer.clone(),
                                key,
                            },
                            Kind::File,
                        ));
                    }
                }
                let pe = peer.clone();
                let d = dir.clone();
                staged_in(&mut out, node, &|n| StateFile {
                    peer: pe.clone(),
                    key: join_key(&d, &n),
                });
                let prefix = if dir.is_empty() {
                    String::new()
                } else {
                    format!("{dir}/")
                };
                for (ep, ed) in self.empty_dirs.lock().unwrap().iter() {
                    if ep == peer {
                        if let Some(rest) = ed.strip_prefix(&prefix) {
                            if !rest.contains('/') && !rest.is_empty() {
                                out.push((
                                    rest.to_string(),
                                    State {
                                        peer: peer.clone(),
                                        dir: ed.clone(),
                                    },
                                    Kind::Dir,
                                ));
                            }
                        }
                    }
                }
            }
            Modules(p) => {
                let peer = self.core.peer(p)?;
                for e in peer.read(|s| s.list_modules())? {
                    let n = format!("{}.rhai", e.name);
                    out.push((
                        n.clone(),
                        ModuleFile {
                            peer: p.clone(),
                            name: n,
                        },
                        Kind::File,
                    ));
                }
                let pe = p.clone();
                staged_in(&mut out, node, &|n| ModuleFile {
                    peer: pe.clone(),
                    name: n,
                });
            }
            Peers(p) => {
                let local = self.core.registry().list().into_iter().map(|(n, _)| n);
                for n in local.chain(crate::lattice::remote_peers(&self.core)) {
                    if &n != p {
                        out.push((
                            n.clone(),
                            View {
                                peer: p.clone(),
                                other: n,
                            },
                            Kind::Dir,
                        ));
                    }
                }
            }
            View { peer, other } => {
                out.push((
                    "inbox".into(),
                    Inbox {
                        peer: peer.clone(),
                        target: other.clone(),
                    },
                    Kind::Dir,
                ));
                out.push((
                    "outbox".into(),
                    Outbox {
                        peer: peer.clone(),
                        target: other.clone(),
                    },
                    Kind::Dir,
                ));
                out.push((
                    "state".into(),
                    ViewState {
                        peer: peer.clone(),
                        other: other.clone(),
                        dir: String::new(),
                    },
                    Kind::Dir,
                ));
            }
            ViewState { peer, other, dir } => {
                if self.read_check.read().unwrap().is_some() {
                    let o = self.core.peer(other)?;
                    let prefix = if dir.is_empty() {
                        String::new()
                    } else {
                        format!("{dir}/")
                    };
                    let keys = o.read(|s| s.keys(&prefix, 1_000_000))?;
                    let mut seen = HashSet::new();
                    for k in keys {
                        if !self.may_read(peer, other, &k) {
                            continue;
                        }
                        let rest = &k[prefix.len()..];
                        match rest.find('/') {
                            Some(i) => {
                                let n = &rest[..i];
                                if seen.insert(n.to_string()) {
                                    out.push((
                                        n.to_string(),
                                        ViewState {
                                            peer: peer.clone(),
                                            other: other.clone(),
                                            dir: join_key(dir, n),
                                        },
                                        Kind::Dir,
                                    ));
                                }
                            }
                            None => out.push((
                                rest.to_string(),
                                ViewStateFile {
                                    peer: peer.clone(),
                                    other: other.clone(),
                                    key: k.clone(),
                                },
                                Kind::File,
                            )),
                        }
                    }
                }
            }
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    pub fn opendir(&self, node: &Node) -> Result<u64> {
        let list = Arc::new(self.readdir(node)?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, list);
        Ok(fh)
    }

    pub fn readdir_handle(&self, fh: u64) -> Option<Listing> {
        self.dirs.lock().unwrap().get(&fh).cloned()
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    pub fn mkdir(&self, parent: &Node, name: &str, who: &Caller) -> Result<(Node, Attr)> {
        match parent {
            Node::Root => {
                if name == ".peerfs" {
                    return Err(err!(libc::EEXIST, ".peerfs is the daemon's own folder"));
                }
                self.core.create_peer(name, who.uid, who.gid)?;
                self.lookup(parent, name)
            }
            Node::State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                if self.child(parent, name).is_ok() {
                    return Err(err!(libc::EEXIST, "state/{key} already exists"));
                }
                self.empty_dirs
                    .lock()
                    .unwrap()
                    .insert((peer.clone(), key.clone()));
                let node = Node::State {
                    peer: peer.clone(),
                    dir: key,
                };
                self.entries_changed(parent);
                let attr = self.attr(&node)?;
                Ok((node, attr))
            }
            _ => Err(err!(
                libc::EACCES,
                "folders can only be made at the top (a new peer) or under state/"
            )),
        }
    }

    pub fn rmdir(&self, parent: &Node, name: &str) -> Result<()> {
        match parent {
            Node::Root => {
                check_peer_name(name)?;
                self.core.remove_peer(name).map(|_| ())
            }
            Node::State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                let p = self.core.peer(peer)?;
                if !p.read(|s| s.keys(&format!("{key}/"), 1))?.is_empty() {
                    return Err(err!(
                        libc::ENOTEMPTY,
                        "state/{key} holds keys: remove them first"
                    ));
                }
                let mut e = self.empty_dirs.lock().unwrap();
                let pre = format!("{key}/");
                if e.iter().any(|(ep, d)| ep == peer && d.starts_with(&pre)) {
                    return Err(err!(libc::ENOTEMPTY, "state/{key} holds folders"));
                }
                if !e.remove(&(peer.clone(), key.clone())) {
                    return Err(err!(libc::ENOENT, "no state folder {key:?}"));
                }
                drop(e);
                self.entries_changed(parent);
                Ok(())
            }
            _ => Err(err!(libc::EACCES, "this folder cannot be removed")),
        }
    }

    pub fn unlink(&self, parent: &Node, name: &str) -> Result<()> {
        let r = self.unlink_inner(parent, name);
        if r.is_ok() {
            // Handles still open on it store nothing at their close: the name is
            // gone, and POSIX gives an unlinked file's bytes no name to come back to.
            if let Ok(node) = self.child(parent, name).or_else(|_| match parent {
                Node::State { peer, dir } => Ok(Node::StateFile {
                    peer: peer.clone(),
                    key: join_key(dir, name),
                }),
                _ => Err(err!(libc::ENOENT, "gone")),
            }) {
                for h in self.handles.lock().unwrap().values_mut() {
                    if h.write && h.node == node {
                        h.unlinked = true;
                    }
                }
            }
        }
        r
    }

    fn unlink_inner(&self, parent: &Node, name: &str) -> Result<()> {
        if self
            .staged
            .lock()
            .unwrap()
            .remove(&(parent.clone(), name.to_string()))
            .is_some()
        {
            return Ok(());
        }
        let node = self.child(parent, name)?;
        match &node {
            Node::StateFile { peer, key } => {
                self.core.apply(peer, Op::Remove(key.clone()))?;
                self.keep_folders_of(peer, key);
                self.entries_changed(parent);
                Ok(())
            }
            Node::ModuleFile { peer, name } => {
                let m = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                self.core.apply(peer, Op::RemoveModule(m.to_string()))
            }
            Node::OutboxFile { peer, target, name } => self.core.outbox_remove(peer, target, name),
            // The owner withdraws its own queued script (it ends unrun, with a
            // result saying so); another peer's queue is not the caller's to empty.
            Node::InboxFile { peer, target, .. } if peer == target => {
                self.core.withdraw(peer, name)
            }
            Node::InboxFile { .. } => {
                self.attr(&node)?;
                Err(err!(
                    libc::EBUSY,
                    "{name} is queued to run: a submitted script cannot be withdrawn"
                ))
            }
            Node::State { .. } => Err(err!(libc::EISDIR, "{name} is a folder: use rmdir")),
            _ => Err(err!(libc::EACCES, "{name} cannot be removed")),
        }
    }

    pub fn rename(
        &self,
        parent: &Node,
        name: &str,
        newparent: &Node,
        newname: &str,
        flags: u32,
    ) -> Result<()> {
        if parent.peer() != newparent.peer() {
            return Err(err!(
                libc::EXDEV,
                "rename across peers: copy the file instead"
            ));
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(err!(libc::EINVAL, "RENAME_EXCHANGE is not supported"));
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if noreplace
            && self
                .child(newparent, newname)
                .and_then(|n| self.attr(&n))
                .is_ok()
        {
            return Err(err!(libc::EEXIST, "{newname} exists"));
        }
        let src_key = (parent.clone(), name.to_string());
        let staged = self.staged.lock().unwrap().get(&src_key).cloned();
        match (parent, newparent) {
            (Node::Inbox { .. }, Node::Inbox { .. }) => {
                let s = staged.ok_or_else(|| {
                    err!(libc::EBUSY, "{name} is queued to run: it cannot be renamed")
                })?;
                let dst = self.child(newparent, newname)?;
                if is_staging_name(newname) {
                    let mut st = self.staged.lock().unwrap();
                    st.remove(&src_key);
                    st.insert((newparent.clone(), newname.to_string()), s);
                    return Ok(());
                }
                // Renamed into the inbox under a real name: submitted, durably, now.
                self.submit(&dst, s.data)?;
                self.staged.lock().unwrap().remove(&src_key);
                Ok(())
            }
            (Node::State { peer, .. }, Node::State { .. }) => {
                self.entries_changed(parent);
                self.entries_changed(newparent);
                let src = self.child(parent, name)?;
                if let Node::State { dir: from, .. } = &src {
                    return self.rename_folder(peer, from, newparent, newname);
                }
                let dst = match self.child(newparent, newname) {
                    Ok(n) => n,
                    Err(_) => {
                        let Node::State { peer, dir } = newparent else {
                            unreachable!()
                        };
                        let key = join_key(dir, newname);
                        check_key(&key)?;
                        Node::StateFile {
                            peer: peer.clone(),
                            key,
                        }
                    }
                };
                let Node::StateFile { key: to, .. } = &dst else {
                    return Err(err!(libc::EISDIR, "{newname} is a folder"));
                };
                match (&src, staged) {
                    (_, Some(s)) => {
                        self.core.apply(peer, Op::SetBytes(to.clone(), s.data))?;
                        self.staged.lock().unwrap().remove(&src_key);
                        Ok(())
                    }
                    (Node::StateFile { key: from, .. }, None) => {
                        self.core
                            .apply(peer, Op::Rename(from.clone(), to.clone()))?;
                        self.keep_folders_of(peer, from);
                        Ok(())
                    }
                    // mv falls back to copy-and-remove for folders.
                    _ => Err(err!(
                        libc::EXDEV,
                        "renaming a state folder: mv copies it instead"
                    )),
                }
            }
            (Node::Modules(peer), Node::Modules(_)) => {
                if let Some(s) = staged {
                    if is_staging_name(newname) || module_name(newname).is_none() {
                        let mut st = self.staged.lock().unwrap();
                        st.remove(&src_key);
                        st.insert((newparent.clone(), newname.to_string()), s);
                        return Ok(());
                    }
                    let m = module_name(newname).expect("checked");
                    self.core
                        .apply(peer, Op::SetModule(m.to_string(), s.data))?;
                    self.staged.lock().unwrap().remove(&src_key);
                    return Ok(());
                }
                let from = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                let to = module_name(newname)
                    .ok_or_else(|| err!(libc::EINVAL, "module files end in .rhai: {newname:?}"))?;
                let p = self.core.peer(peer)?;
                let src = p
                    .read(|s| s.module(from))?
                    .ok_or_else(|| err!(libc::ENOENT, "no module {from:?}"))?;
                self.core.apply(peer, Op::SetModule(to.to_string(), src))?;
                self.core.apply(peer, Op::RemoveModule(from.to_string()))
            }
            _ => Err(err!(libc::EACCES, "{name} cannot be moved there")),
        }
    }

    /// rename(2) of a folder in `state/`: every key under it moves in one
    /// transaction; over an empty folder it replaces it, over one with entries it
    /// is `ENOTEMPTY`, over a file `ENOTDIR`.
    fn rename_folder(&self, peer: &str, from: &str, newparent: &Node, newname: &str) -> Result<()> {
        let Node::State { dir, .. } = newparent else {
            return Err(err!(libc::EXDEV, "a state folder stays in state/"));
        };
        let to = join_key(dir, newname);
        check_key(&to)?;
        if to == from {
            return Ok(());
        }
        match self.child(newparent, newname) {
            Ok(Node::State { .. }) => {
                if !self
                    .readdir(&Node::State {
                        peer: peer.to_string(),
                        dir: to.clone(),
                    })?
                    .is_empty()
                {
                    return Err(err!(libc::ENOTEMPTY, "state/{to} is not empty"));
                }
            }
            Ok(_) => return Err(err!(libc::ENOTDIR, "state/{to} is a file")),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(err!(libc::EINVAL, "state/{from} cannot move into itself"));
        }
        self.core
            .apply(peer, Op::RenameDir(from.to_string(), to.clone()))?;
        // Empty folders inside move along; the old folder's parents stay.
        let mut e = self.empty_dirs.lock().unwrap();
        let pre = format!("{from}/");
        let moved: Vec<(String, String)> = e
            .iter()
            .filter(|(p, d)| p == peer && (d == from || d.starts_with(&pre)))
            .cloned()
            .collect();
        for (p, d) in moved {
            e.remove(&(p.clone(), d.clone()));
            e.insert((p, format!("{to}{}", &d[from.len()..])));
        }
        e.remove(&(peer.to_string(), to.clone()));
        // The new folder shows even when it holds no key.
        e.insert((peer.to_string(), to.clone()));
        drop(e);
        self.keep_folders_of(peer, from);
        Ok(())
    }

    /// Submits a complete script dropped at `node` (an inbox file), durably.
    fn submit(&self, node: &Node, data: Vec<u8>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit_async(
            node,
            data,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .map_err(|_| err!(libc::EIO, "the daemon stopped"))?
    }

    fn submit_async(&self, node: &Node, data: Vec<u8>, reply: Reply<()>) {
        let Node::InboxFile { peer, target, name } = node else {
            return reply(Err(err!(libc::EINVAL, "not an inbox file")));
        };
        if crate::lattice::serves_elsewhere(&self.core, target) {
            return self.core.drop_remote(peer, target, name, data, reply);
        }
        // A script for another peer goes straight into that peer's queue.
        match self
            .core
            .new_job_from(peer, target, name, data, &serde_json::json!({}))
        {
            Ok(job) => self.core.apply_async(target, Op::Submit(job), Some(reply)),
            Err(e) => reply(Err(e)),
        }
    }

    pub fn create(
        &self,
        parent: &Node,
        name: &str,
        flags: i32,
        who: &Caller,
    ) -> Result<(Node, Attr, Opened)> {
        let node = self.child(parent, name).or_else(|e| match parent {
            Node::State { peer, dir } if e.errno == libc::ENOENT => {
                let key = join_key(dir, name);
                check_key(&key)?;
                Ok(Node::StateFile {
                    peer: peer.clone(),
                    key,
                })
            }
            // Only inbox, state and modules folders take new files: elsewhere a new
            // name is a read-only place, not a missing one.
            _ if e.errno == libc::ENOENT => Err(err!(
                libc::EACCES,
                "{name:?}: files can only be made in inbox/, state/ and modules/"
            )),
            _ => Err(e),
        })?;
        if !matches!(
            node,
            Node::InboxFile { .. } | Node::StateFile { .. } | Node::ModuleFile { .. }
        ) {
            return Err(ro(name));
        }
        if self.attr(&node).is_ok() {
            if flags & libc::O_EXCL != 0 {
                return Err(err!(libc::EEXIST, "{name} exists"));
            }
            if !matches!(node, Node::InboxFile { .. }) {
                let opened = self.open(&node, flags | libc::O_TRUNC, who)?;
                let attr = self.getattr(&node, Some(opened.fh))?;
                return Ok((node, attr, opened));
            }
        }
        let staged = Staged {
            data: Vec::new(),
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now_ns(),
        };
        let attr = self.staged_attr(&staged);
        self.staged
            .lock()
            .unwrap()
            .insert((parent.clone(), name.to_string()), staged);
        self.entries_changed(parent);
        let fh = self.new_handle(Handle::writer(&node, who, Vec::new(), true, false));
        Ok((
            node,
            attr,
            Opened {
                fh,
                direct_io: false,
                read_only: false,
            },
        ))
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    /// The bytes a file shows now.
    fn contents(&self, node: &Node) -> Result<Vec<u8>> {
        use Node::*;
        if let Some((parent, name)) = Self::parent_of(node) {
            if let Some(s) = self.staged_get(&parent, &name) {
                return Ok(s.data);
            }
        }
        match node {
            MetaFile(n) => Ok(self.meta_text(n).into_bytes()),
            StateFile { peer, key } => {
                let p = self.core.peer(peer)?;
                p.read(|s| s.get_bytes(key))?
                    .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?}"))
            }
            ViewStateFile { peer, other, key } => {
                // Checked again here, not only at lookup: the kernel may hold the
                // inode from before the policy changed.
                if !self.may_read(peer, other, key) {
                    return Err(err!(libc::ENOENT, "no readable key {key:?} of {other}"));
                }
                let p = self.core.peer(other)?;
                p.read(|s| s.get_bytes(key))?
                    .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?}"))
            }
            ModuleFile { peer, name } => {
                let m = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                let p = self.core.peer(peer)?;
                p.read(|s| s.module(m))?
                    .ok_or_else(|| err!(libc::ENOENT, "no module {m:?}"))
            }
            InboxFile { peer, name, .. } => {
                let p = self.core.peer(peer)?;
                p.read(|s| s.queued_named(name))?
                    .map(|j| j.source)
                    .ok_or_else(|| err!(libc::ENOENT, "no script {name:?} in the inbox"))
            }
            Policy(p) => Ok(self.meta_bytes(p, "policy")?.0),
            Groups(p) => Ok(self.meta_bytes(p, "groups")?.0),
            _ => Err(err!(libc::EISDIR, "not a file")),
        }
    }

    pub fn open(&self, node: &Node, flags: i32, who: &Caller) -> Result<Opened> {
        use Node::*;
        if node.is_dir() {
            return Err(err!(libc::EISDIR, "is a folder"));
        }
        let acc = flags & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if write {
            if !matches!(
                node,
                InboxFile { .. } | StateFile { .. } | ModuleFile { .. } | Policy(_) | Groups(_)
            ) {
                return Err(ro(&format!("{node:?}")));
            }
            // An inbox file that is queued is not changed by this: whatever the
            // handle holds at close is submitted as a new run of the same name
            // (`cp job.rhai inbox/` again while the first is still queued).
            let trunc = flags & libc::O_TRUNC != 0;
            let buf = if trunc {
                Vec::new()
            } else {
                self.contents(node).or_else(|e| {
                    if e.errno == libc::ENOENT {
                        Ok(Vec::new())
                    } else {
                        Err(e)
                    }
                })?
            };
            let mut hs = self.handles.lock().unwrap();
            self.check_budget(node, &hs, buf.len() as u64)?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            hs.insert(fh, Handle::writer(node, who, buf, false, trunc));
            return Ok(Opened {
                fh,
                direct_io: false,
                read_only: false,
            });
        }
        match node {
            OutboxFile { peer, target, name } => {
                self.attr(node)?;
                if flags & libc::O_NONBLOCK != 0 && self.core.result_pending(peer, target, name)? {
                    return Err(err!(
                        libc::EAGAIN,
                        "{name} is pending: its run has not finished"
                    ));
                }
                // Read when asked (the read waits for the run).
                Ok(self.open_reader(node, None))
            }
            // Read at every request, so `tail -f` sees it grow.
            Log(_) => Ok(self.open_reader(node, None)),
            _ => {
                let data = self.contents(node)?;
                Ok(self.open_reader(node, Some(Arc::new(data))))
            }
        }
    }

    /// A read-only handle, with the bytes it shows (or `None`: read at each request).
    fn open_reader(&self, node: &Node, snapshot: Option<Arc<Vec<u8>>>) -> Opened {
        let fh = self.new_handle(Handle::reader(node, snapshot));
        Opened {
            fh,
            direct_io: true,
            read_only: true,
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, reply: Reply<Vec<u8>>) {
        self.read_from(fh, offset, size, 0, reply)
    }

    /// [`Vfs::read`] by thread `pid` (the FUSE request's): a read that waits for a
    /// result ends when that reader is killed or interrupted, or after the
    /// daemon's `result_wait` (see `exec::wait`).
    pub fn read_from(&self, fh: u64, offset: u64, size: u32, pid: u32, reply: Reply<Vec<u8>>) {
        let slice = move |d: &[u8]| -> Vec<u8> {
            let start = (offset as usize).min(d.len());
            let end = (start + size as usize).min(d.len());
            d[start..end].to_vec()
        };
        let (node, snap) = {
            let h = self.handles.lock().unwrap();
            let Some(h) = h.get(&fh) else {
                return reply(Err(err!(libc::EBADF, "no open file {fh}")));
            };
            if h.write {
                return reply(Ok(slice(&h.buf)));
            }
            (h.node.clone(), h.snapshot.clone())
        };
        if let Some(s) = snap {
            return reply(Ok(slice(&s)));
        }
        match &node {
            Node::Log(p) => {
                let r = self
                    .core
                    .peer(p)
                    .and_then(|peer| peer.read(|s| s.read_log(offset, size as usize)));
                reply(r)
            }
            Node::OutboxFile { peer, target, name } => {
                // Answered when the run has finished; the handle keeps the bytes.
                let handles = self.handles_ptr();
                self.core.read_result_as(
                    peer,
                    target,
                    name,
                    pid,
                    Box::new(move |r| match r {
                        Ok(bytes) => {
                            if let Some(h) = handles.upgrade() {
                                if let Some(h) = h.lock().unwrap().get_mut(&fh) {
                                    h.snapshot = Some(bytes.clone());
                                }
                            }
                            reply(Ok(slice(&bytes)))
                        }
                        Err(e) => reply(Err(e)),
                    }),
                );
            }
            _ => reply(Err(err!(libc::EIO, "nothing to read"))),
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let mut hs = self.handles.lock().unwrap();
        let h = hs
            .get_mut(&fh)
            .ok_or_else(|| err!(libc::EBADF, "no open file {fh}"))?;
        if !h.write {
            return Err(err!(libc::EBADF, "file not open for writing"));
        }
        let end = offset.saturating_add(data.len() as u64);
        self.check_size(&h.node, end)?;
        if h.buf.len() < end as usize {
            let (node, more) = (h.node.clone(), end - h.buf.len() as u64);
            self.check_budget(&node, &hs, more)?;
        }
        let h = hs.get_mut(&fh).expect("looked up above");
        if h.buf.len() < end as usize {
            h.buf.resize(end as usize, 0);
        }
        h.buf[offset as usize..end as usize].copy_from_slice(data);
        h.dirty = true;
        h.wrote = true;
        Ok(data.len() as u32)
    }

    /// The largest a file at `node` may grow: a value, a script or module, a
    /// policy or groups file.
    pub fn size_cap(&self, node: &Node) -> u64 {
        match node {
            Node::InboxFile { peer, target, .. } => {
                self.core.base_limits(peer == target).max_script_bytes
            }
            Node::ModuleFile { .. } => self.core.base_limits(true).max_script_bytes,
            Node::Policy(_) | Node::Groups(_) => MAX_META_FILE,
            Node::StateFile { .. } => self.core.base_limits(true).max_value_bytes,
            _ => MAX_STATE_FILE,
        }
    }

    /// Every size or end offset the kernel hands in is checked here, before
    /// anything is allocated from it: `EFBIG` past the cap, nothing changed.
    fn check_size(&self, node: &Node, size: u64) -> Result<()> {
        let max = self.size_cap(node);
        if size > max {
            return Err(err!(
                libc::EFBIG,
                "file would be {size} bytes: the most allowed here is {max}"
            ));
        }
        Ok(())
    }

    /// chmod/chown: accepted and not kept, as vfat's `quiet` option does, so that
    /// `rsync -a`, `install -m` and `cp -p` work. What `ls -l` shows stays what is
    /// enforced: a peer's files belong to its owner (the kernel lets only the owner
    /// or root get here, `default_permissions`) and the peer's folder is 0700.
    pub fn chmod(
        &self,
        node: &Node,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Attr> {
        let cur = self.getattr(node, fh)?;
        let differs = mode.is_some_and(|m| (m & 0o7777) as u16 != cur.perm & 0o7777)
            || uid.is_some_and(|u| u != cur.uid)
            || gid.is_some_and(|g| g != cur.gid);
        if differs {
            tracing::debug!(?node, ?mode, ?uid, ?gid, "chmod/chown accepted, not kept");
        }
        Ok(cur)
    }

    pub fn setattr(
        &self,
        node: &Node,
        fh: Option<u64>,
        size: Option<u64>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        let r = self.set_size(node, fh, size)?;
        let Some(t) = mtime_ns else {
            return Ok(r);
        };
        // The time set is kept: by the store for a value, in memory for a staging
        // file; the daemon's own files keep their times.
        if let Some((p, n)) = Self::parent_of(node) {
            if let Some(s) = self.staged.lock().unwrap().get_mut(&(p, n)) {
                s.mtime_ns = t;
                return Ok(self.staged_attr(s));
            }
        }
        match node {
            Node::StateFile { peer, key } => {
                self.core.apply(peer, Op::SetMtime(key.clone(), t))?;
            }
            Node::State { .. } => {
                self.dir_times.lock().unwrap().insert(node.clone(), t);
            }
            _ => {}
        }
        self.getattr(node, fh)
    }

    fn set_size(&self, node: &Node, fh: Option<u64>, size: Option<u64>) -> Result<Attr> {
        if let Some(size) = size {
            self.check_size(node, size)?;
            if let Some(fh) = fh {
                let mut hs = self.handles.lock().unwrap();
                if let Some(len) = hs.get(&fh).filter(|h| h.write).map(|h| h.buf.len() as u64) {
                    self.check_budget(node, &hs, size.saturating_sub(len))?;
                    let h = hs.get_mut(&fh).expect("looked up above");
                    h.buf.resize(size as usize, 0);
                    h.dirty = true;
                    drop(hs);
                    return self.getattr(node, Some(fh));
                }
            }
            // truncate(2) by path: applied now.
            match node {
                Node::StateFile { peer, key } => {
                    let mut b = self.contents(node)?;
                    b.resize(size as usize, 0);
                    self.core.apply(peer, Op::SetBytes(key.clone(), b))?;
                }
                Node::InboxFile { .. } | Node::ModuleFile { .. } => {
                    if let Some((p, n)) = Self::parent_of(node) {
                        let len = self.staged_get(&p, &n).map_or(0, |s| s.data.len() as u64);
                        self.check_budget(
                            node,
                            &self.handles.lock().unwrap(),
                            size.saturating_sub(len),
                        )?;
                        if let Some(s) = self.staged.lock().unwrap().get_mut(&(p, n)) {
                            s.data.resize(size as usize, 0);
                        } else {
                            return Err(err!(libc::EACCES, "truncate a module by writing it"));
                        }
                    }
                }
                Node::Policy(_) | Node::Groups(_) => {
                    return Err(err!(libc::EACCES, "write the whole file instead"))
                }
                _ => return Err(ro("this file")),
            }
        }
        self.attr(node)
    }

    /// The handle table, for replies that come later (after the file may be closed).
    fn handles_ptr(&self) -> std::sync::Weak<Mutex<HashMap<u64, Handle>>> {
        Arc::downgrade(&self.handles)
    }

    fn staged_ptr(&self) -> std::sync::Weak<Mutex<HashMap<(Node, String), Staged>>> {
        Arc::downgrade(&self.staged)
    }

    /// close(2) of a descriptor of `fh` by `who`: commits the handle's writes, and
    /// answers once they are durable. Only the opening process's close commits. A
    /// child that inherited the descriptor closes it too, when it exits, often in
    /// the middle of the writing (`{ echo 'let d ='; cat d.json; echo '; f(d)'; } >
    /// inbox/x.rhai`: `cat` exits before the last line is written); committing then
    /// would run half a script. Such a close leaves the handle as it is; the
    /// opener's close, or else the release, commits it.
    pub fn flush(&self, fh: u64, who: &Caller, reply: Reply<()>) {
        {
            let mut hs = self.handles.lock().unwrap();
            if let Some(h) = hs.get_mut(&fh) {
                if h.write && who.pid != 0 && h.opener != 0 && who.pid != h.opener {
                    // Another thread or process: does it belong to the opener's?
                    if h.owner == 0 {
                        h.owner = process_of(h.opener);
                    }
                    if process_of(who.pid) != h.owner {
                        return reply(Ok(()));
                    }
                }
            }
        }
        self.flush_now(fh, reply)
    }

    fn flush_now(&self, fh: u64, reply: Reply<()>) {
        let (node, data) = {
            let mut hs = self.handles.lock().unwrap();
            let Some(h) = hs.get_mut(&fh) else {
                return reply(Ok(()));
            };
            // A state file made and never written (`touch`, `> file`) is stored
            // here, at close, not at RELEASE: that comes after close() has returned,
            // and would bring back a key renamed or removed in between.
            let touch = h.created && matches!(h.node, Node::StateFile { .. });
            // A policy, groups or module handle that was truncated (`O_TRUNC`,
            // `ftruncate`) and not written since is not applied at a flush: `echo
            // bad > policy.cedar` flushes once at the shell's dup2 before `echo`
            // writes, and applying the empty text then would replace the policy
            // that must stay in force when "bad" is refused. The release applies a
            // truncation that no write followed (`: > policy.cedar`).
            let truncated_only = h.dirty && !h.wrote && validated_whole(&h.node);
            if !h.write || (!h.dirty && !touch) || truncated_only || h.unlinked {
                if h.committing > 0 {
                    // Another close of this handle took the bytes; answer with it.
                    h.waiters.push(reply);
                    return;
                }
                return reply(Ok(()));
            }
            h.dirty = false;
            h.created = false;
            h.committing += 1;
            (h.node.clone(), h.buf.clone())
        };
        let handles = self.handles_ptr();
        self.commit(
            node,
            data,
            Box::new(move |r: Result<()>| {
                let waiters = handles.upgrade().and_then(|hs| {
                    let mut hs = hs.lock().unwrap();
                    let h = hs.get_mut(&fh)?;
                    h.committing -= 1;
                    (h.committing == 0).then(|| std::mem::take(&mut h.waiters))
                });
                for w in waiters.into_iter().flatten() {
                    w(r.clone());
                }
                reply(r)
            }),
        );
    }

    pub fn fsync(&self, fh: u64, reply: Reply<()>) {
        // Every commit is already durable when it returns: fsync only flushes a
        // handle's unsaved writes, whoever asks.
        self.flush_now(fh, reply)
    }

    /// Makes a handle's bytes the file's content: submission, value, module, policy.
    fn commit(&self, node: Node, data: Vec<u8>, reply: Reply<()>) {
        let staged_key = Self::parent_of(&node);
        let unstage = {
            let staged = self.staged_ptr();
            let key = staged_key.clone();
            move || {
                if let (Some(s), Some(k)) = (staged.upgrade(), key) {
                    s.lock().unwrap().remove(&k);
                }
            }
        };
        match &node {
            Node::InboxFile { name, .. } | Node::ModuleFile { name, .. }
                if is_staging_name(name)
                    || (matches!(node, Node::ModuleFile { .. }) && module_name(name).is_none()) =>
            {
                // Staging files live in memory until renamed to a real name.
                if let Some(k) = staged_key {
                    let mut st = self.staged.lock().unwrap();
                    let e = st.entry(k).or_insert(Staged {
                        data: vec![],
                        uid: self.uid,
                        gid: self.gid,
                        mtime_ns: now_ns(),
                    });
                    e.data = data;
                    e.mtime_ns = now_ns();
                }
                reply(Ok(()))
            }
            Node::InboxFile { .. } => self.submit_async(
                &node,
                data,
                Box::new(move |r| {
                    unstage();
                    reply(r)
                }),
            ),
            Node::StateFile { peer, key } => self.core.apply_async(
                peer,
                Op::SetBytes(key.clone(), data),
                Some(Box::new(move |r| {
                    if r.is_ok() {
                        unstage();
                    }
                    reply(r)
                })),
            ),
            Node::ModuleFile { peer, name } => {
                let m = module_name(name).expect("checked above").to_string();
                self.core.apply_async(
                    peer,
                    Op::SetModule(m, data),
                    Some(Box::new(move |r| {
                        if r.is_ok() {
                            unstage();
                        }
                        reply(r)
                    })),
                )
            }
            Node::Policy(peer) | Node::Groups(peer) => {
                let kind = if matches!(node, Node::Policy(_)) {
                    "policy"
                } else {
                    "groups"
                };
                if let Some(v) = self.validator.read().unwrap().as_ref() {
                    if let Err(e) = v(kind, &data) {
                        let msg =
                            format!("{kind} refused, the old one stays in force: {}", e.message);
                        // close() fails once the reason is in the log, so that the
                        // log shows it as soon as the writer learns of the refusal.
                        let refusal = err!(libc::EINVAL, "{msg}");
                        self.core.apply_async(
                            peer,
                            Op::Log(msg),
                            Some(Box::new(move |_| reply(Err(refusal)))),
                        );
                        return;
                    }
                }
                self.core
                    .apply_async(peer, Op::SetMeta(kind.to_string(), data), Some(reply))
            }
            _ => reply(Err(ro("this file"))),
        }
    }

    pub fn release(&self, fh: u64) {
        let h = self.handles.lock().unwrap().remove(&fh);
        if let Some(h) = h {
            let touch = h.created && matches!(h.node, Node::StateFile { .. });
            if h.write && !h.unlinked && (h.dirty || touch) {
                // No flush came (unusual): commit anyway; nobody waits for the answer.
                self.commit(
                    h.node.clone(),
                    h.buf,
                    Box::new(|r| {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "write at release failed");
                        }
                    }),
                );
            } else if h.write {
                // A created file that was never written and is not a staging name:
                // its flush committed it; drop the in-memory entry if one is left.
                if let Some((p, n)) = Self::parent_of(&h.node) {
                    if !is_staging_name(&n)
                        && !matches!(h.node, Node::ModuleFile { .. } if module_name(&n).is_none())
                    {
                        self.staged.lock().unwrap().remove(&(p, n));
                    }
                }
            }
        }
    }

    pub fn statfs(&self) -> Statfs {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(
            self.core
                .registry()
                .data_dir()
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap_or_default();
        let ok = unsafe { libc::statvfs(path.as_ptr(), &mut s) } == 0;
        if !ok {
            return Statfs {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                files: 0,
                ffree: 0,
                bsize: 4096,
                namelen: 255,
            };
        }
        Statfs {
            blocks: s.f_blocks as u64 * s.f_frsize as u64 / 4096,
            bfree: s.f_bfree as u64 * s.f_frsize as u64 / 4096,
            bavail: s.f_bavail as u64 * s.f_frsize as u64 / 4096,
            files: s.f_files as u64,
            ffree: s.f_ffree as u64,
            bsize: 4096,
            namelen: 255,
        }
    }
}

/// mknod (fifos, sockets, devices): a peer's store holds values, not special files.
/// Symbolic and hard links are refused the same way (`EPERM`, fuser's answer).
pub fn special_file(name: &str) -> Error {
    err!(
        libc::EPERM,
        "{name:?}: peerfs holds files and folders only (no fifos, sockets or devices)"
    )
}

/// Files whose whole text is checked before it is applied: a truncation of them
/// waits in the handle like a write.
fn validated_whole(node: &Node) -> bool {
    matches!(
        node,
        Node::Policy(_) | Node::Groups(_) | Node::ModuleFile { .. }
    )
}

/// `x.rhai` -> module `x` (module files end in `.rhai`; others are staging files).
pub fn module_name(file: &str) -> Option<&str> {
    let m = file.strip_suffix(".rhai")?;
    if m.is_empty() || is_staging_name(file) {
        return None;
    }
    Some(m)
}
