//! The FUSE adapter: a thin translation between fuser 0.18 and [`crate::vfs`].
//!
//! Each callback turns the kernel's arguments into the vfs's (an inode number into a
//! `Node`, an `OsStr` into a `&str`, raw flags into `vfs::OpenFlags`/`RenameFlags`),
//! calls the vfs, and answers. Every rule about what a path means, what SETATTR
//! changes and how long the kernel may cache lives in the vfs, which `tests/it/vfs.rs`
//! drives without FUSE. The only state kept here is the inode table (`inodes`).
//!
//! Replies are owned values in fuser 0.18: `read`, `flush` and `fsync` hand theirs
//! to the vfs, which answers later from another thread (a pending result waits for
//! its run while other requests keep flowing). A reply that is dropped unanswered
//! becomes EIO, so every path below answers.

mod dir;
mod inodes;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::vfs::{flags, Attr, Caller, Invalidate, Kind, Node, Opened, SetAttr, SetTime, Vfs};
use crate::Error;
use inodes::{InodeTable, ROOT_INO};

/// How long the kernel may keep a node's entry and attributes: the vfs's rule
/// (see `vfs::entry_ttl`, `vfs::attr_ttl`), in fuser's terms.
fn ttl(kind: FileType) -> Duration {
    crate::vfs::entry_ttl(kind_of(kind))
}

fn attr_ttl(node: &Node, kind: FileType) -> Duration {
    crate::vfs::attr_ttl(node, kind_of(kind))
}

fn kind_of(kind: FileType) -> Kind {
    match kind {
        FileType::Directory => Kind::Dir,
        _ => Kind::File,
    }
}

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;

/// Dispatch threads by default (see `MountOptions::n_threads`).
pub const DISPATCH_THREADS: usize = 4;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the daemon's own uid in (`allow_other`; needs
    /// `user_allow_other` in /etc/fuse.conf unless the daemon runs as root).
    pub allow_other: bool,
    /// fuser dispatch threads. One is fastest for small files on 2 cores, but then
    /// one slow request (opening a 64 MiB value reads all of it) stalls every user
    /// of the mount; with several, a neighbour's requests keep flowing.
    pub n_threads: usize,
    /// The source column of /proc/mounts.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            allow_other: false,
            n_threads: DISPATCH_THREADS,
            fsname: "peerfs".to_string(),
        }
    }
}

/// A mounted peerfs. Dropping it unmounts (without waiting for the dispatch threads).
pub struct Session {
    inner: Option<BackgroundSession>,
    vfs: Arc<Vfs>,
}

impl Session {
    /// Unmount and wait for the dispatch threads to end. Fails with EBUSY while a
    /// process still uses the mount.
    pub fn unmount_and_join(mut self) -> crate::Result<()> {
        self.detach_invalidator();
        match self.inner.take() {
            Some(bg) => bg
                .umount_and_join()
                .map_err(|e| mount_error("unmounting", e)),
            None => Ok(()),
        }
    }

    /// Block until the mount is unmounted from outside (`fusermount3 -u MOUNT`,
    /// `umount MOUNT`).
    pub fn join(mut self) -> crate::Result<()> {
        let result = match self.inner.take() {
            // A connection the kernel reports as aborted rather than unmounted
            // (seen once as a lazily unmounted mount went with its last open
            // file, after SIGTERM): the mount is gone either way.
            Some(bg) => match bg.join() {
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                    tracing::warn!("the mount's FUSE connection was aborted: the mount is gone");
                    Ok(())
                }
                r => r.map_err(|e| mount_error("serving", e)),
            },
            None => Ok(()),
        };
        self.detach_invalidator();
        result
    }

    /// The invalidator holds the session's channel; once the mount is gone there is
    /// nothing to invalidate, and dropping it ends the invalidation thread.
    fn detach_invalidator(&self) {
        self.vfs.set_invalidator(Box::new(|_| {}));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.detach_invalidator();
        }
        // Dropping the BackgroundSession unmounts.
        self.inner.take();
    }
}

fn mount_error(what: &str, e: std::io::Error) -> Error {
    Error::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what} the peerfs mount: {e}"),
    )
}

/// The file system type of a peerfs mount made through fusermount3; one that
/// root makes with mount(2) shows as plain `fuse` with the source `peerfs`.
pub const FSTYPE: &str = "fuse.peerfs";

/// The mount points of peerfs mounts in `table` (the text of /proc/self/mounts),
/// for `peerfs run` without `--mount`. The kernel writes a space, tab, newline
/// or backslash in a path as an octal escape (`\040`).
pub fn mounts_in(table: &str) -> Vec<std::path::PathBuf> {
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, point, fstype) = (f.next()?, f.next()?, f.next()?);
            let ours = fstype == FSTYPE || (fstype == "fuse" && source == "peerfs");
            ours.then(|| unescape_mount_path(point))
        })
        .collect()
}

fn unescape_mount_path(p: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out).into()
}

/// Mount `vfs` at `mountpoint` and serve it on background threads.
pub fn spawn(vfs: Arc<Vfs>, mountpoint: &Path, opts: &MountOptions) -> crate::Result<Session> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype(FSTYPE["fuse.".len()..].to_string()),
        // Peer directories are 0700 and owned by the peer's owner: the kernel's
        // permission checks are what make "identity is the path" hold.
        MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.n_threads.max(1));

    let inodes = Arc::new(InodeTable::new(Node::Root));
    let fs = PeerFs {
        vfs: vfs.clone(),
        inodes: inodes.clone(),
    };
    let bg = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "cannot mount peerfs at {}: {e} (is it an existing empty directory, and is \
                 fusermount3 installed (Debian package fuse3) when not running as root?)",
                mountpoint.display()
            ),
        )
    })?;
    install_invalidator(&vfs, bg.notifier(), inodes);
    Ok(Session {
        inner: Some(bg),
        vfs,
    })
}

/// The vfs reports changes from the threads that serve and commit (the dispatch
/// threads, the executor's runners); the notifications go through a thread of their
/// own. `inval_inode` may wait in the kernel for page locks held by a READ that one
/// of those threads is about to answer, so calling it there could deadlock; a
/// separate thread also lets bursts of changes coalesce.
fn install_invalidator(vfs: &Vfs, notifier: Notifier, inodes: Arc<InodeTable<Node>>) {
    let (tx, rx) = mpsc::channel::<Invalidate>();
    let known = inodes.clone();
    let spawned = std::thread::Builder::new()
        .name("peerfs-inval".to_string())
        .spawn(move || {
            // Ends when the sender (inside the vfs's invalidator) is dropped.
            while let Ok(first) = rx.recv() {
                let mut inos = HashSet::new();
                let mut state_of = HashSet::new();
                for inv in std::iter::once(first).chain(rx.try_iter()) {
                    match inv {
                        Invalidate::Dir(node) | Invalidate::File(node) => {
                            // A node the kernel never saw has nothing cached.
                            if let Some(ino) = inodes.get(&node) {
                                inos.insert(ino);
                            }
                        }
                        Invalidate::State(peer) => {
                            state_of.insert(peer);
                        }
                    }
                }
                if !state_of.is_empty() {
                    inos.extend(
                        inodes.matching(|n| n.state_of().is_some_and(|p| state_of.contains(p))),
                    );
                }
                for ino in inos {
                    // offset 0, len 0: attributes and all cached pages. ENOENT just
                    // means the kernel has already dropped the inode.
                    if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                        tracing::debug!(ino, "inval_inode: {e}");
                    }
                }
            }
        });
    match spawned {
        Ok(_) => vfs.set_invalidator(Box::new(move |inv| {
            // A file the kernel does not hold needs no notice (and no wake-up of
            // the thread): the usual case for a result just published.
            if let Invalidate::File(node) = &inv {
                if known.get(node).is_none() {
                    return;
                }
            }
            let _ = tx.send(inv);
        })),
        Err(e) => tracing::warn!(
            "cannot start the invalidation thread ({e}): listings may lag up to {:?}",
            crate::vfs::CACHE_TTL
        ),
    }
}

impl dir::DirSink for ReplyDirectory {
    fn add(&mut self, ino: u64, next_offset: u64, kind: Option<Kind>, name: &str) -> bool {
        let kind = kind.map_or(FileType::Directory, |k| file_type(&k));
        ReplyDirectory::add(self, INodeNo(ino), next_offset, kind, name)
    }
}

/// The `fuser::Filesystem`.
struct PeerFs {
    vfs: Arc<Vfs>,
    inodes: Arc<InodeTable<Node>>,
}

/// Log an error once, where it is answered: debug for the expected ones (a lookup
/// of a missing name, a non-blocking open of a pending result), warn for the rest.
fn errno(op: &str, e: &Error) -> Errno {
    if e.errno == libc::ENOENT || e.errno == libc::EAGAIN {
        tracing::debug!(op, errno = e.errno, "{}", e.message);
    } else {
        tracing::warn!(op, errno = e.errno, "{}", e.message);
    }
    Errno::from_i32(e.errno)
}

fn name_str<'a>(op: &str, name: &'a OsStr) -> Result<&'a str, Errno> {
    name.to_str().ok_or_else(|| {
        errno(
            op,
            &Error::new(
                libc::EINVAL,
                format!("name {name:?} is not UTF-8: peerfs names are UTF-8"),
            ),
        )
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.mtime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(&a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn open_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.read_only {
        // Closing a read-only handle does nothing in the vfs: spare the round trip.
        f |= FopenFlags::FOPEN_NOFLUSH;
    }
    f
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(time_ns(t)),
        TimeOrNow::Now => SetTime::Now,
    }
}

impl PeerFs {
    /// The node behind an ino the kernel sent. An unknown ino is one the kernel was
    /// told to forget or never got: ESTALE makes it look the path up again.
    fn node(&self, op: &str, ino: INodeNo) -> Result<Node, Errno> {
        self.inodes.key(ino.0).ok_or_else(|| {
            errno(
                op,
                &Error::new(libc::ESTALE, format!("unknown inode {}", ino.0)),
            )
        })
    }

    /// [`errno`], and the refusal in the peer's log (the vfs decides which
    /// errors are refusals worth a line).
    fn refuse(&self, op: &str, at: &Node, name: Option<&str>, e: &Error) -> Errno {
        self.vfs.refused(op, at, name, e);
        errno(op, e)
    }

    /// Counts the lookup before the reply goes out, so a FORGET cannot overtake it.
    fn entry(&self, reply: ReplyEntry, node: &Node, attr: &Attr) {
        entry_reply(&self.inodes, reply, node, attr)
    }

    /// A mkdir that takes long (the vfs says which: `.snapshots/NAME` copies the
    /// whole store), answered from a thread of its own, so the dispatch threads
    /// go on serving meanwhile.
    fn long_mkdir(&self, parent: Node, name: String, who: crate::vfs::Caller, reply: ReplyEntry) {
        let (vfs, inodes) = (self.vfs.clone(), self.inodes.clone());
        let spawned = std::thread::Builder::new()
            .name("peerfs-snapshot".into())
            .spawn(move || match vfs.mkdir(&parent, &name, &who) {
                Ok((node, attr)) => entry_reply(&inodes, reply, &node, &attr),
                Err(e) => {
                    vfs.refused("mkdir", &parent, Some(&name), &e);
                    reply.error(errno("mkdir", &e))
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to take a snapshot");
        }
    }
}

/// Counts the lookup before the reply goes out, so a FORGET cannot overtake it.
fn entry_reply(inodes: &InodeTable<Node>, reply: ReplyEntry, node: &Node, attr: &Attr) {
    let ino = inodes.lookup(node);
    let fa = file_attr(ino, attr);
    reply.entry_with_ttls(&attr_ttl(node, fa.kind), &ttl(fa.kind), &fa, Generation(0));
}

impl Filesystem for PeerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Without it O_TRUNC arrives as a separate SETATTR(size=0) after OPEN.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::warn!("the kernel lacks {missing:?}: O_TRUNC comes as a separate setattr");
        }
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        const OP: &str = "lookup";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            self.vfs
                .lookup(&parent, name)
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))
        })();
        match r {
            Ok((node, attr)) => self.entry(reply, &node, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // batch_forget's default (ForgetOne is not exported by fuser 0.18) calls this.
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        const OP: &str = "getattr";
        let r = self.node(OP, ino).and_then(|node| {
            self.vfs
                .getattr(&node, fh.map(|f| f.0))
                .map(|a| (node, a))
                .map_err(|e| errno(OP, &e))
        });
        match r {
            Ok((node, attr)) => {
                let fa = file_attr(ino.0, &attr);
                reply.attr(&attr_ttl(&node, fa.kind), &fa)
            }
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        const OP: &str = "setattr";
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let r = self.node(OP, ino).and_then(|node| {
            self.vfs
                .setattr(&node, fh.map(|f| f.0), change)
                .map_err(|e| self.refuse(OP, &node, None, &e))
        });
        match r {
            Ok(attr) => {
                let fa = file_attr(ino.0, &attr);
                reply.attr(&ttl(fa.kind), &fa)
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        const OP: &str = "mkdir";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            if parent.mkdir_takes_long() {
                return Ok(Err((parent, name.to_string())));
            }
            self.vfs
                .mkdir(&parent, name, &caller(req))
                .map(Ok)
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))
        })();
        match r {
            Ok(Ok((node, attr))) => self.entry(reply, &node, &attr),
            Ok(Err((parent, name))) => self.long_mkdir(parent, name, caller(req), reply),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // fuser's default is ENOSYS; the rule is the vfs's.
        reply.error(errno(
            "mknod",
            &crate::vfs::special_file(&name.to_string_lossy()),
        ));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        const OP: &str = "unlink";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            self.vfs
                .unlink(&parent, name)
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        const OP: &str = "rmdir";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            self.vfs
                .rmdir(&parent, name)
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        const OP: &str = "rename";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            let newparent = self.node(OP, newparent)?;
            let newname = name_str(OP, newname)?;
            // The node the kernel's inode stands for, to move its ino along.
            let from = self.vfs.lookup(&parent, name).ok().map(|(n, _)| n);
            self.vfs
                .rename(
                    &parent,
                    name,
                    &newparent,
                    newname,
                    flags::RenameFlags::from_libc(flags.bits()),
                )
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))?;
            if let Some(from) = from {
                let to = self.vfs.lookup(&newparent, newname).ok().map(|(n, _)| n);
                if let (Node::State { peer, dir: old }, Some(Node::State { dir: new, .. })) =
                    (&from, &to)
                {
                    // A folder: everything under it the kernel holds moves too.
                    self.inodes.rekey(|n| n.moved(peer, old, new));
                } else {
                    self.inodes.renamed(&from, to.as_ref());
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        const OP: &str = "open";
        let r = self.node(OP, ino).and_then(|node| {
            self.vfs
                .open(&node, flags::OpenFlags::from_libc(flags.0), &caller(req))
                .map_err(|e| self.refuse(OP, &node, None, &e))
        });
        match r {
            Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o)),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Answered whenever the vfs calls back: at once, or when a pending result's
        // run finishes. If the vfs drops the callback, fuser answers EIO.
        self.vfs.read_from(
            fh.0,
            offset,
            size,
            req.pid(),
            Box::new(move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => {
                self.vfs.refused_fh("write", fh.0, &e);
                reply.error(errno("write", &e))
            }
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) waits for this answer: the vfs gives it once a submission is durable.
        self.vfs.flush(
            fh.0,
            &caller(req),
            Box::new(move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("flush", &e)),
            }),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.vfs.fsync(
            fh.0,
            Box::new(move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fsync", &e)),
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        const OP: &str = "opendir";
        let r = self
            .node(OP, ino)
            .and_then(|node| self.vfs.opendir(&node).map_err(|e| errno(OP, &e)));
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.vfs.readdir_handle(fh.0) else {
            let e = Error::new(libc::EBADF, format!("no open directory handle {}", fh.0));
            reply.error(errno("readdir", &e));
            return;
        };
        // The parent's ino is not known here; the kernel resolves ".." itself, and
        // the root is a valid answer.
        dir::fill(&mut reply, ino.0, ROOT_INO, &entries, offset, |node| {
            self.inodes.ino(node)
        });
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vfs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        const OP: &str = "create";
        let r = (|| {
            let parent = self.node(OP, parent)?;
            let name = name_str(OP, name)?;
            self.vfs
                .create(
                    &parent,
                    name,
                    flags::OpenFlags::from_libc(flags),
                    &caller(req),
                )
                .map_err(|e| self.refuse(OP, &parent, Some(name), &e))
        })();
        match r {
            Ok((node, attr, opened)) => {
                let ino = self.inodes.lookup(&node);
                reply.created(
                    &ttl(FileType::RegularFile),
                    &file_attr(ino, &attr),
                    Generation(0),
                    FileHandle(opened.fh),
                    open_flags(&opened),
                );
            }
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod mounts_tests {
    use super::*;

    #[test]
    fn mounts_in_finds_peerfs_mounts_only_with_escaped_paths() {
        let table = "proc /proc proc rw 0 0\n\
                     peerfs /tmp/a\\040b fuse.peerfs rw,nosuid 0 0\n\
                     other /mnt/x fuse.sshfs rw 0 0\n\
                     peerfs /srv/m fuse.peerfs rw 0 0\n\
                     peerfs /srv/root fuse rw,default_permissions 0 0\n\
                     sshfs /mnt/y fuse rw 0 0\n";
        assert_eq!(
            mounts_in(table),
            [
                std::path::PathBuf::from("/tmp/a b"),
                "/srv/m".into(),
                "/srv/root".into()
            ]
        );
        assert!(mounts_in("").is_empty());
    }
}
