//! Open files: opening a reader or a writer (charged to the peer's budget), read,
//! write, the bytes a file shows, the size and offset checks, and the opener rule
//! at a close (only the opener's close commits; `commit` does the rest). What a
//! handle is, as types, is in `handle`.

use std::sync::Arc;

use super::handle::{process_of, Buffer, Changes, Handle, Open, Reader, Writer};
use super::staging::Staged;
use super::*;
use crate::error::err;
use crate::error::Result;

impl Vfs {
    pub(super) fn staged_get(&self, parent: &Node, name: &str) -> Option<Staged> {
        self.staged.get(&(parent.clone(), name.to_string()))
    }

    /// A charge of nothing yet against the budget of the peer acting at `node`.
    fn charge(&self, node: &Node) -> super::budget::Charge {
        self.budget.charge(node.peer())
    }

    /// The bytes `peer` holds now in open files and staging files, against its
    /// budget ([`BUFFER_BUDGET`]).
    pub fn held_bytes(&self, peer: &str) -> u64 {
        self.budget.held(peer)
    }

    /// A writer on `node` opened by `who`, holding `buf` (`EDQUOT` past the budget).
    pub(super) fn open_writer(
        &self,
        node: &Node,
        who: &Caller,
        buf: Vec<u8>,
        changes: Changes,
    ) -> Result<Opened> {
        let buf = Buffer::new(buf, self.charge(node))?;
        let fh = self.handles.insert(Handle {
            node: node.clone(),
            open: Open::Write(Writer::new(who, buf, changes)),
        });
        Ok(Opened {
            fh,
            direct_io: false,
            read_only: false,
        })
    }

    /// A read-only handle, with the bytes it shows (or `None`: read at each
    /// request); `EDQUOT` past the budget.
    pub(super) fn open_reader(
        &self,
        node: &Node,
        snapshot: Option<Arc<Vec<u8>>>,
    ) -> Result<Opened> {
        let reader = Reader::new(snapshot, self.charge(node))?;
        let fh = self.handles.insert(Handle {
            node: node.clone(),
            open: Open::Read(reader),
        });
        Ok(Opened {
            fh,
            direct_io: true,
            read_only: true,
        })
    }

    /// A reader of a table's `.jsonl` of a peer of this daemon: served in
    /// pages as it is read (see `stream`).
    fn open_stream(&self, node: &Node) -> Result<Opened> {
        let reader = Reader::streaming(self.charge(node));
        let fh = self.handles.insert(Handle {
            node: node.clone(),
            open: Open::Read(reader),
        });
        Ok(Opened {
            fh,
            direct_io: true,
            read_only: true,
        })
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
            Policy(p) => Ok(self.meta_bytes(p, PolicyText::Policy)?.0),
            Groups(p) => Ok(self.meta_bytes(p, PolicyText::Groups)?.0),
            Schema(p) => Ok(self.meta_bytes(p, PolicyText::Schema)?.0),
            TableFile {
                peer,
                target,
                table,
                key,
            } => self.table_bytes(peer, target, table, key),
            Reserved {
                kind: Kind::File, ..
            } => Ok(Vec::new()),
            HistStateFile { .. } | HistChanges { .. } | HistTable { .. } => {
                self.hist_contents(node)
            }
            SnapStateFile { .. } | SnapTable { .. } => self.snap_contents(node),
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
            return self.open_for_writing(node, flags.truncate, who);
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
                self.open_reader(node, None)
            }
            // Read at every request, so `tail -f` sees it grow.
            Log(_) => self.open_reader(node, None),
            TableFile { key: None, .. } if self.table_streams(node)? => self.open_stream(node),
            _ => {
                let data = self.contents(node)?;
                self.open_reader(node, Some(Arc::new(data)))
            }
        }
    }

    fn open_for_writing(&self, node: &Node, trunc: bool, who: &Caller) -> Result<Opened> {
        use Node::*;
        if !matches!(
            node,
            InboxFile { .. }
                | StateFile { .. }
                | ModuleFile { .. }
                | Policy(_)
                | Groups(_)
                | Schema(_)
                | EditFile { .. }
        ) && !node.is_own_row_file()
        {
            return Err(ro(&node.to_string()));
        }
        // An inbox file that is queued is not changed by this: whatever the
        // handle holds at close is submitted as a new run of the same name
        // (`cp job.rhai inbox/` again while the first is still queued).
        if trunc {
            return self.open_writer(node, who, Vec::new(), Changes::Truncated);
        }
        let buf = self.contents(node).or_else(|e| {
            if e.errno == libc::ENOENT {
                Ok(Vec::new())
            } else {
                Err(e)
            }
        })?;
        self.open_writer(node, who, buf, Changes::Clean)
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
        let Some(shared) = self.handles.get(fh) else {
            return reply(Err(err!(libc::EBADF, "no open file {fh}")));
        };
        let node = {
            let mut h = shared.lock().unwrap();
            let Handle { node, open } = &mut *h;
            match open {
                Open::Write(w) => return reply(Ok(slice(w.buf().bytes()))),
                Open::Read(r) if r.streams() => {
                    // The handle's lock is held while a page is read: reads of
                    // one handle take their turns, others go on.
                    let fetch =
                        &mut |after: Option<&serde_json::Value>| self.table_page(node, after);
                    return reply(r.read_stream(offset, size, fetch));
                }
                Open::Read(r) => match r.snapshot() {
                    Some(s) => return reply(Ok(slice(s))),
                    None => node.clone(),
                },
            }
        };
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
                let handle = handle::weak(&shared);
                self.core.read_result_as(
                    peer,
                    target,
                    name,
                    pid,
                    Box::new(move |r| match r {
                        Ok(bytes) => {
                            if let Some(h) = handle.upgrade() {
                                if let Open::Read(r) = &mut h.lock().unwrap().open {
                                    r.keep(bytes.clone());
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
        let shared = self
            .handles
            .get(fh)
            .ok_or_else(|| err!(libc::EBADF, "no open file {fh}"))?;
        let mut h = shared.lock().unwrap();
        let Handle { node, open } = &mut *h;
        let Open::Write(w) = open else {
            return Err(err!(libc::EBADF, "file not open for writing"));
        };
        let end = offset.saturating_add(data.len() as u64);
        self.check_size(node, end)?;
        w.buf_mut().write_at(offset, data)?;
        w.changes.wrote();
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
            Node::Policy(_) | Node::Groups(_) | Node::Schema(_) | Node::EditFile { .. } => {
                MAX_META_FILE
            }
            Node::StateFile { .. } | Node::TableFile { .. } => {
                self.core.base_limits(true).max_value_bytes
            }
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

    /// close(2) of a descriptor of `fh` by `who`: commits the handle's writes, and
    /// answers once they are durable. Only the opening process's close commits. A
    /// child that inherited the descriptor closes it too, when it exits, often in
    /// the middle of the writing (`{ echo 'let d ='; cat d.json; echo '; f(d)'; } >
    /// inbox/x.rhai`: `cat` exits before the last line is written); committing then
    /// would run half a script. Such a close leaves the handle as it is; the
    /// opener's close, or else the release, commits it.
    pub fn flush(&self, fh: u64, who: &Caller, reply: Reply<()>) {
        if let Some(shared) = self.handles.get(fh) {
            let mut h = shared.lock().unwrap();
            if let Some(w) = h.writer() {
                if who.pid != 0 && w.opener != 0 && who.pid != w.opener {
                    // Another thread or process: does it belong to the opener's?
                    if w.opener_process == 0 {
                        w.opener_process = process_of(w.opener);
                    }
                    if process_of(who.pid) != w.opener_process {
                        return reply(Ok(()));
                    }
                }
            }
        }
        self.flush_now(fh, reply)
    }
}
