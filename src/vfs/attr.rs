//! Attributes: what `stat` shows for each [`Node`] kind ([`Vfs::getattr`]), how long
//! the kernel may keep them ([`entry_ttl`], [`attr_ttl`]), and what SETATTR changes
//! ([`Vfs::setattr`]: size, times, and the chmod/chown rule). The modes of a
//! peer's fixed entries are the layout's (`crate::layout`).

use std::time::Duration;

use super::handle::{Changes, Open};
use super::*;
use crate::error::err;
use crate::error::Result;
use crate::exec::Op;
use crate::layout::Room;
use crate::util::now_ns;

/// Whether the kernel may keep `node`'s attributes for a while (entries of files
/// are never kept, so every path lookup still reaches the daemon): scripts in an
/// inbox (nothing but their writer changes them) and results (read with direct
/// I/O, so a size that lags never cuts a read short; a result that changes has its
/// inode invalidated). It saves the GETATTR after a LOOKUP and on `fstat`.
pub fn attrs_keep(node: &Node) -> bool {
    matches!(node, Node::InboxFile { .. } | Node::OutboxFile { .. })
}

/// Folders' entries and attributes (files get none, see [`entry_ttl`]). Short on
/// purpose: the daemon changes directories behind the kernel's back (a result
/// appears, a script leaves the inbox) and invalidation covers only the nodes it
/// names; a stale folder entry lives at most this long.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// How long the kernel may keep a node's entry (and, but for [`attr_ttl`]'s
/// exceptions, its attributes). Files: not at all. A run changes state, results
/// and the log behind the kernel's back, and its change notice reaches the kernel
/// only after the result does (invalidation is asynchronous): a cached size could
/// be stale right after `jq .value outbox/x.json`. The entry goes with the
/// attributes: a cached entry of a file a run removed would make the next
/// `open(O_CREAT)` fail with ENOENT (the kernel checks the attributes, finds the
/// file gone, and never sends CREATE). A LOOKUP is one read of the store.
pub fn entry_ttl(kind: Kind) -> Duration {
    match kind {
        Kind::File => Duration::ZERO,
        Kind::Dir => CACHE_TTL,
    }
}

/// How long the kernel may keep a node's attributes (see [`attrs_keep`]).
pub fn attr_ttl(node: &Node, kind: Kind) -> Duration {
    if attrs_keep(node) {
        CACHE_TTL
    } else {
        entry_ttl(kind)
    }
}

/// A time SETATTR sets (`utimensat(2)`'s `UTIME_NOW` or a given time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    /// Nanoseconds since the epoch.
    At(i64),
}

impl SetTime {
    fn ns(self) -> i64 {
        match self {
            SetTime::Now => now_ns(),
            SetTime::At(t) => t,
        }
    }
}

/// The SETATTR fields peerfs looks at (`None`: left as it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

impl SetAttr {
    /// A truncate to `size`.
    pub fn size(size: u64) -> SetAttr {
        SetAttr {
            size: Some(size),
            ..SetAttr::default()
        }
    }

    /// A chmod to `mode`.
    pub fn mode(mode: u32) -> SetAttr {
        SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        }
    }

    /// A `touch -d` to `ns` nanoseconds since the epoch.
    pub fn mtime(ns: i64) -> SetAttr {
        SetAttr {
            mtime: Some(SetTime::At(ns)),
            ..SetAttr::default()
        }
    }
}

impl Vfs {
    pub(super) fn info(&self, peer: &str) -> Result<crate::peer::PeerInfo> {
        self.core
            .registry()
            .info(peer)
            .ok_or_else(|| err!(libc::ENOENT, "no peer named {peer:?}"))
    }

    pub(super) fn dir_attr(&self, peer: Option<&str>, perm: u16) -> Result<Attr> {
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

    pub(super) fn file_attr(
        &self,
        peer: Option<&str>,
        size: u64,
        perm: u16,
        mtime_ns: i64,
    ) -> Result<Attr> {
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

    pub(super) fn staged_attr(&self, s: &Staged) -> Attr {
        Attr {
            kind: Kind::File,
            size: s.data.len() as u64,
            perm: s.mode.map_or(0o644, |m| m as u16),
            uid: s.uid,
            gid: s.gid,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            nlink: 1,
        }
    }

    /// The attributes of a node (which must exist).
    pub fn getattr(&self, node: &Node, fh: Option<u64>) -> Result<Attr> {
        let mut snapshot = None;
        if let Some(h) = fh.and_then(|fh| self.handles.get(fh)) {
            let h = h.lock().unwrap();
            let peer = h.node.peer().map(str::to_string);
            match &h.open {
                Open::Write(w) => {
                    let (len, node) = (h.held(), h.node.clone());
                    let unlinked = w.changes == Changes::Unlinked;
                    drop(h);
                    let perm = self.perm_of(&node);
                    let mut a = self.file_attr(peer.as_deref(), len, perm, now_ns())?;
                    if unlinked {
                        a.nlink = 0;
                    }
                    return Ok(a);
                }
                Open::Read(r) => snapshot = r.snapshot().map(|s| (peer, s.len() as u64)),
            }
        }
        match self.attr(node) {
            // fstat of a file removed while open (the kernel sends no handle with
            // it): what an open handle of it still shows, with no link left.
            Err(e) if e.errno == libc::ENOENT => {
                let held = snapshot.or_else(|| {
                    self.handles.all().iter().find_map(|h| {
                        let h = h.lock().unwrap();
                        (&h.node == node).then(|| (h.node.peer().map(str::to_string), h.held()))
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

    pub(super) fn attr(&self, node: &Node) -> Result<Attr> {
        use Node::*;
        match node {
            Root => self.dir_attr(None, 0o755),
            MetaDir => self.dir_attr(None, 0o555),
            MetaFile(n) => self.file_attr(None, self.meta_text(n).len() as u64, 0o444, now_ns()),
            Peer(p) => self.dir_attr(Some(p), 0o700),
            Inbox { peer, .. } => self.dir_attr(Some(peer), self.entry_mode(Room::Inbox)),
            Outbox { peer, .. } => self.dir_attr(Some(peer), self.entry_mode(Room::Outbox)),
            Modules(peer) => self.dir_attr(Some(peer), self.entry_mode(Room::Modules)),
            Tables {
                peer,
                target,
                table,
            } => {
                if let Some(t) = table {
                    self.tables_child(peer, target, &None, t)?;
                }
                self.dir_attr(Some(peer), self.entry_mode(Room::Tables))
            }
            TableFile { .. } => self.table_file_attr(node),
            Peers(peer) => self.dir_attr(Some(peer), self.entry_mode(Room::Peers)),
            View { peer, .. } | ViewState { peer, .. } => self.dir_attr(Some(peer), 0o755),
            Reserved {
                peer, name, kind, ..
            } => {
                let perm = self.layout.entry(name).map_or(0o555, |e| e.mode);
                match kind {
                    Kind::Dir => self.dir_attr(Some(peer), perm),
                    Kind::File => self.file_attr(Some(peer), 0, perm, now_ns()),
                }
            }
            State { peer, dir } => self.state_dir_attr(node, peer, dir),
            EditFile { peer, name } => match self.staged_get(&Peer(peer.clone()), name) {
                Some(s) => Ok(self.staged_attr(&s)),
                None => Err(err!(libc::ENOENT, "no file {name:?}")),
            },
            InboxFile { peer, target, name } => self.inbox_file_attr(peer, target, name),
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
            StateFile { peer, key } => self.state_file_attr(node, peer, key),
            ModuleFile { peer, name } => self.module_file_attr(peer, name),
            ViewStateFile { peer, other, key } => self.view_attr(peer, other, key),
            Policy(_) | Groups(_) | Schema(_) => {
                let (p, text) = node.as_text().expect("a policy text");
                let (b, t) = self.meta_bytes(p, text)?;
                self.file_attr(
                    Some(p),
                    b.len() as u64,
                    self.entry_mode(Room::Text(text)),
                    t,
                )
            }
            History(_)
            | HistAt { .. }
            | HistState { .. }
            | HistStateFile { .. }
            | HistChanges { .. }
            | HistTables { .. }
            | HistTable { .. } => self.hist_attr(node),
            Snapshots(_)
            | Snapshot { .. }
            | SnapState { .. }
            | SnapStateFile { .. }
            | SnapTables { .. }
            | SnapTable { .. } => self.snap_attr(node),
            Log(p) => {
                let peer = self.core.peer(p)?;
                let size = peer.read(|s| s.log_size())?;
                self.file_attr(Some(p), size, self.entry_mode(Room::Log), now_ns())
            }
        }
    }

    /// A folder of `peer`'s state: the mode and times the store keeps for it
    /// (`state/` itself: the layout's mode), or the times of a change through the mount.
    fn state_dir_attr(&self, node: &Node, peer: &str, dir: &str) -> Result<Attr> {
        if !dir.is_empty() && !self.state_dir_exists(peer, dir)? {
            return Err(err!(libc::ENOENT, "no state folder {dir:?}"));
        }
        let kept = if dir.is_empty() {
            None
        } else {
            self.core.peer(peer)?.read(|s| s.folder(dir))?
        };
        let perm = kept
            .and_then(|f| f.mode)
            .map_or(self.entry_mode(Room::State), |m| m as u16);
        let mut a = self.dir_attr(Some(peer), perm)?;
        if let Some(t) = kept.and_then(|f| f.mtime_ns) {
            a.mtime_ns = t;
        }
        if let Some(t) = kept.and_then(|f| f.ctime_ns) {
            a.ctime_ns = t;
        }
        // Its subfolders are not counted (that would scan every key under
        // it): 1 is the convention for "not counted", so find and fts never
        // take 2 to mean "no subfolders" and skip them.
        a.nlink = 1;
        if let Some(&(m, c)) = self.dir_times.lock().unwrap().get(node) {
            a.mtime_ns = m;
            a.ctime_ns = c;
        }
        Ok(a)
    }

    /// A script being written, or (in a peer's own inbox) one queued.
    fn inbox_file_attr(&self, peer: &str, target: &str, name: &str) -> Result<Attr> {
        use Node::*;
        let parent = Inbox {
            peer: peer.to_string(),
            target: target.to_string(),
        };
        if let Some(s) = self.staged_get(&parent, name) {
            return Ok(self.staged_attr(&s));
        }
        if peer == target {
            if let Some(j) = self.core.queued_named(peer, name)? {
                // Writable: writing the name again submits another run.
                return self.file_attr(Some(peer), j.source.len() as u64, 0o644, j.submitted_at);
            }
        }
        Err(err!(libc::ENOENT, "no script {name:?} in the inbox"))
    }

    /// A state value being written, or stored.
    fn state_file_attr(&self, node: &Node, peer: &str, key: &str) -> Result<Attr> {
        if let Some((parent, name)) = Node::parent_of(node) {
            if let Some(s) = self.staged_get(&parent, &name) {
                return Ok(self.staged_attr(&s));
            }
        }
        let p = self.core.peer(peer)?;
        match p.read(|s| s.stat_key(key))? {
            Some(Some(st)) => {
                let perm = st.mode.map_or(0o644, |m| m as u16);
                let mut a = self.file_attr(Some(peer), st.size, perm, st.mtime_ns)?;
                a.ctime_ns = st.ctime_ns;
                Ok(a)
            }
            Some(None) => Err(err!(libc::EISDIR, "state key {key:?} is a folder")),
            None => Err(err!(libc::ENOENT, "no state key {key:?}")),
        }
    }

    /// A module file being written, or `x.rhai` of a stored module.
    fn module_file_attr(&self, peer: &str, name: &str) -> Result<Attr> {
        use Node::*;
        if let Some(s) = self.staged_get(&Modules(peer.to_string()), name) {
            return Ok(self.staged_attr(&s));
        }
        let m = module_name(name).ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
        let p = self.core.peer(peer)?;
        let list = p.read(|s| s.list_modules())?;
        match list.into_iter().find(|e| e.name == m) {
            Some(e) => self.file_attr(Some(peer), e.size, 0o644, e.mtime_ns),
            None => Err(err!(libc::ENOENT, "no module {m:?}")),
        }
    }

    /// The permission bits the layout gives the entry that `room` serves.
    fn entry_mode(&self, room: Room) -> u16 {
        self.layout.of_room(room).map_or(0o555, |e| e.mode)
    }

    /// The permission bits a state file shows (see [`Vfs::chmod`]): those set on
    /// it, else 0644; other files' are the daemon's.
    pub(super) fn perm_of(&self, node: &Node) -> u16 {
        if let Some((p, n)) = Node::parent_of(node) {
            if let Some(m) = self.staged.get(&(p, n)).and_then(|s| s.mode) {
                return m as u16;
            }
        }
        let Node::StateFile { peer, key } = node else {
            return 0o644;
        };
        let mode = self
            .core
            .peer(peer)
            .and_then(|p| p.read(|s| s.stat_key(key)));
        match mode {
            Ok(Some(Some(st))) => st.mode.map_or(0o644, |m| m as u16),
            _ => 0o644,
        }
    }

    /// chmod/chown, accepted within what the peer's owner may do (as vfat's
    /// `quiet` option does for what it cannot keep), so that `rsync -a`,
    /// `install -m` and `cp -p` work, and what `ls -l` shows is what is enforced
    /// (the kernel checks the modes shown, `default_permissions`). In `state/` the
    /// permission bits of files and folders are kept (set-id and sticky bits are
    /// not); elsewhere the daemon's modes stay. Owners are not kept anywhere: a
    /// peer's files belong to its owner, and the peer's folder stays 0700.
    pub(super) fn chmod(
        &self,
        node: &Node,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Attr> {
        let cur = self.getattr(node, fh)?;
        if uid.is_some_and(|u| u != cur.uid) || gid.is_some_and(|g| g != cur.gid) {
            tracing::debug!(
                ?node,
                ?uid,
                ?gid,
                "chown accepted, not kept: the peer's owner owns it"
            );
        }
        // A chown changes nothing kept but the change time (POSIX): the mode
        // shown is set again, which moves it.
        let Some(mode) = mode.or((uid.is_some() || gid.is_some()).then_some(cur.perm as u32))
        else {
            return Ok(cur);
        };
        if mode & 0o7000 != 0 {
            tracing::debug!(?node, mode, "set-id and sticky bits are not kept");
        }
        let perm = mode & 0o777;
        match node {
            Node::StateFile { peer, key } => {
                // Made and not yet closed (rsync's temporary file, `install`): kept
                // with it, and stored when it is.
                if let Some((p, n)) = Node::parent_of(node) {
                    self.staged.update(&(p, n), |s| {
                        s.mode = Some(perm);
                        s.ctime_ns = now_ns();
                    });
                }
                match self.core.apply(peer, Op::SetMode(key.clone(), perm)) {
                    // Not stored yet (staged), or unlinked while open.
                    Err(e) if e.errno == libc::ENOENT => {}
                    r => r?,
                }
                self.getattr(node, fh)
            }
            Node::State { peer, dir } if !dir.is_empty() => {
                let set = Op::SetDirAttrs {
                    dir: dir.clone(),
                    mode: Some(perm),
                    mtime: None,
                };
                self.core.apply(peer, set)?;
                if let Some(t) = self.dir_times.lock().unwrap().get_mut(node) {
                    t.1 = now_ns();
                }
                self.getattr(node, fh)
            }
            _ => {
                if perm as u16 != cur.perm {
                    tracing::debug!(
                        ?node,
                        mode,
                        "chmod accepted, not kept: the daemon's own mode"
                    );
                }
                Ok(cur)
            }
        }
    }

    /// SETATTR of `node` (through handle `fh` when the kernel names one): chmod and
    /// chown (see [`Vfs::chmod`]), a new size, new times. An atime alone changes
    /// nothing peerfs keeps (it shows a file's mtime as its atime) and answers the
    /// current attributes.
    pub fn setattr(&self, node: &Node, fh: Option<u64>, change: SetAttr) -> Result<Attr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: _,
            mtime,
        } = change;
        if mode.is_some() || uid.is_some() || gid.is_some() {
            let cur = self.chmod(node, fh, mode, uid, gid)?;
            if size.is_none() && mtime.is_none() {
                return Ok(cur);
            }
        }
        let mtime_ns = mtime.map(SetTime::ns);
        if size.is_none() && mtime_ns.is_none() {
            return self.getattr(node, fh);
        }
        let r = self.set_size(node, fh, size)?;
        let Some(t) = mtime_ns else {
            return Ok(r);
        };
        // The time set is kept: by the store for a value or a folder, in memory
        // for a staging file; the daemon's own files keep their times.
        if let Some((p, n)) = Node::parent_of(node) {
            let set = self.staged.update(&(p, n), |s| {
                s.mtime_ns = t;
                s.ctime_ns = now_ns();
                self.staged_attr(s)
            });
            if let Some(a) = set {
                return Ok(a);
            }
        }
        match node {
            Node::StateFile { peer, key } => {
                self.core.apply(peer, Op::SetMtime(key.clone(), t))?;
            }
            Node::State { peer, dir } => {
                if !dir.is_empty() {
                    let set = Op::SetDirAttrs {
                        dir: dir.clone(),
                        mode: None,
                        mtime: Some(t),
                    };
                    self.core.apply(peer, set)?;
                }
                self.dir_times
                    .lock()
                    .unwrap()
                    .insert(node.clone(), (t, now_ns()));
            }
            _ => {}
        }
        self.getattr(node, fh)
    }

    pub(super) fn set_size(&self, node: &Node, fh: Option<u64>, size: Option<u64>) -> Result<Attr> {
        if let Some(size) = size {
            self.check_size(node, size)?;
            if let Some(h) = fh.and_then(|fh| self.handles.get(fh)) {
                let mut h = h.lock().unwrap();
                if let Some(w) = h.writer() {
                    w.buf_mut().resize(size)?;
                    w.changes.truncated();
                    drop(h);
                    return self.getattr(node, fh);
                }
            }
            return self.truncate_path(node, size);
        }
        self.attr(node)
    }

    /// truncate(2) by path (or through a read-only handle): applied now.
    fn truncate_path(&self, node: &Node, size: u64) -> Result<Attr> {
        match node {
            Node::StateFile { peer, key } => {
                let mut b = self.contents(node)?;
                b.resize(size as usize, 0);
                self.core.apply(peer, Op::SetBytes(key.clone(), b))?;
            }
            Node::InboxFile { .. } | Node::ModuleFile { .. } | Node::EditFile { .. } => {
                if let Some((p, n)) = Node::parent_of(node) {
                    if !self.staged.resize(&(p, n), size, now_ns())? {
                        return Err(err!(libc::EACCES, "truncate a module by writing it"));
                    }
                }
            }
            Node::Policy(_) | Node::Groups(_) | Node::Schema(_) => {
                return Err(err!(libc::EACCES, "write the whole file instead"))
            }
            _ => return Err(ro("this file")),
        }
        self.attr(node)
    }
}
