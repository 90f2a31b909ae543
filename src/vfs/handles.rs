//! Open files: the handle table, what a handle holds (a write buffer, or a
//! snapshot for reading), staging files that live in memory (`inbox/.x`,
//! `modules/` drafts), the per-peer buffer budget, the size and offset checks, and
//! the opener-process rule (only the opener's close commits).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::*;
use crate::error::err;
use crate::error::Result;

/// A file that exists only in memory: created and not yet flushed, or a staging
/// name (`.x`, `x~`) in an inbox or modules folder.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub(super) data: Vec<u8>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime_ns: i64,
    /// When it was made or last changed (contents, mode or times).
    pub(super) ctime_ns: i64,
    /// Permission bits set by chmod before it was stored (state files).
    pub(super) mode: Option<u32>,
}

pub(super) struct Handle {
    pub(super) node: Node,
    pub(super) write: bool,
    /// Made by create(): committed at release even if never written (`touch`).
    pub(super) created: bool,
    pub(super) buf: Vec<u8>,
    pub(super) dirty: bool,
    /// Bytes were written through this handle (not only truncated). A policy,
    /// groups or module handle that was only truncated is not applied at a flush
    /// (see `flush_now`).
    pub(super) wrote: bool,
    /// Its name was removed while it was open: its close stores nothing.
    pub(super) unlinked: bool,
    pub(super) snapshot: Option<Arc<Vec<u8>>>,
    /// The process (thread group) that opened a writing handle; 0 = not known yet
    /// (looked up from `opener` when needed). Only its close commits, see `flush`.
    pub(super) owner: u32,
    /// The thread that opened it: a close from it needs no /proc lookup.
    pub(super) opener: u32,
    /// Commits of this handle not yet durable, and the closes with nothing new to
    /// commit that wait for them (close returns only once the bytes are durable).
    pub(super) committing: usize,
    pub(super) waiters: Vec<Reply<()>>,
}

impl Handle {
    /// A handle `who` opened for writing, holding `buf`.
    pub(super) fn writer(
        node: &Node,
        who: &Caller,
        buf: Vec<u8>,
        created: bool,
        dirty: bool,
    ) -> Handle {
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
    pub(super) fn reader(node: &Node, snapshot: Option<Arc<Vec<u8>>>) -> Handle {
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

/// `pid` if it leads its thread group (is its own process), else 0: the process is
/// then looked up only if a close comes from another thread (see `Vfs::flush`).
pub(super) fn leader(pid: u32) -> u32 {
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
pub(super) fn process_of(pid: u32) -> u32 {
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

/// Files whose whole text is checked before it is applied: a truncation of them
/// waits in the handle like a write.
pub(super) fn validated_whole(node: &Node) -> bool {
    matches!(
        node,
        Node::Policy(_) | Node::Groups(_) | Node::ModuleFile { .. }
    )
}

impl Vfs {
    /// Refuses `more` bytes of buffers for the peer acting at `node` when it would
    /// pass its budget. `hs` is the handle table, locked by the caller.
    pub(super) fn check_budget(
        &self,
        node: &Node,
        hs: &HashMap<u64, Handle>,
        more: u64,
    ) -> Result<()> {
        let Some(peer) = node.peer() else {
            return Ok(());
        };
        // A writer holds its buffer, a reader the snapshot it shows (a value's
        // bytes read at open, a result once read): both are the daemon's memory.
        let in_handles: u64 = hs
            .values()
            .filter(|h| h.node.peer() == Some(peer))
            .map(|h| {
                if h.write {
                    h.buf.len() as u64
                } else {
                    h.snapshot.as_ref().map_or(0, |s| s.len() as u64)
                }
            })
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
                "{peer} holds {held} bytes in open files (read or written) and staging files, and {more} more \
                 would pass its budget of {budget}: close or remove some first"
            ));
        }
        Ok(())
    }

    pub(super) fn staged_get(&self, parent: &Node, name: &str) -> Option<Staged> {
        self.staged
            .lock()
            .unwrap()
            .get(&(parent.clone(), name.to_string()))
            .cloned()
    }

    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    /// The bytes a file shows now.
    pub(super) fn contents(&self, node: &Node) -> Result<Vec<u8>> {
        use Node::*;
        if let Some((parent, name)) = Node::parent_of(node) {
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
            ViewStateFile { peer, other, key } => self.view_bytes(peer, other, key),
            ModuleFile { peer, name } => {
                let m = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                let p = self.core.peer(peer)?;
                p.read(|s| s.module(m))?
                    .ok_or_else(|| err!(libc::ENOENT, "no module {m:?}"))
            }
            InboxFile { peer, name, .. } => self
                .core
                .queued_named(peer, name)?
                .map(|j| j.source)
                .ok_or_else(|| err!(libc::ENOENT, "no script {name:?} in the inbox")),
            Policy(p) => Ok(self.meta_bytes(p, "policy")?.0),
            Groups(p) => Ok(self.meta_bytes(p, "groups")?.0),
            _ => Err(err!(libc::EISDIR, "not a file")),
        }
    }

    pub fn open(&self, node: &Node, flags: impl Into<OpenFlags>, who: &Caller) -> Result<Opened> {
        let flags = flags.into();
        use Node::*;
        if node.is_dir() {
            return Err(err!(libc::EISDIR, "is a folder"));
        }
        if flags.write {
            if !matches!(
                node,
                InboxFile { .. }
                    | StateFile { .. }
                    | ModuleFile { .. }
                    | Policy(_)
                    | Groups(_)
                    | EditFile { .. }
            ) {
                return Err(ro(&node.to_string()));
            }
            // An inbox file that is queued is not changed by this: whatever the
            // handle holds at close is submitted as a new run of the same name
            // (`cp job.rhai inbox/` again while the first is still queued).
            let trunc = flags.truncate;
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
                if flags.nonblock && self.core.result_pending(peer, target, name)? {
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
                let mut hs = self.handles.lock().unwrap();
                self.check_budget(node, &hs, data.len() as u64)?;
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                hs.insert(fh, Handle::reader(node, Some(Arc::new(data))));
                Ok(Opened {
                    fh,
                    direct_io: true,
                    read_only: true,
                })
            }
        }
    }

    /// A read-only handle, with the bytes it shows (or `None`: read at each request).
    pub(super) fn open_reader(&self, node: &Node, snapshot: Option<Arc<Vec<u8>>>) -> Opened {
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
            // An editor's file becomes a policy or groups file, or goes.
            Node::Policy(_) | Node::Groups(_) | Node::EditFile { .. } => MAX_META_FILE,
            Node::StateFile { .. } => self.core.base_limits(true).max_value_bytes,
            _ => MAX_STATE_FILE,
        }
    }

    /// Every size or end offset the kernel hands in is checked here, before
    /// anything is allocated from it: `EFBIG` past the cap, nothing changed.
    pub(super) fn check_size(&self, node: &Node, size: u64) -> Result<()> {
        let max = self.size_cap(node);
        if size > max {
            return Err(err!(
                libc::EFBIG,
                "file would be {size} bytes: the most allowed here is {max}"
            ));
        }
        Ok(())
    }

    /// The handle table, for replies that come later (after the file may be closed).
    pub(super) fn handles_ptr(&self) -> std::sync::Weak<Mutex<HashMap<u64, Handle>>> {
        Arc::downgrade(&self.handles)
    }

    pub(super) fn staged_ptr(&self) -> std::sync::Weak<Mutex<HashMap<(Node, String), Staged>>> {
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
}
