//! What one open file is, as types: a reader (the bytes it shows) or a writer (its
//! buffer, what it has changed that a close would commit, the commits in flight),
//! and the table of open files, each behind its own lock so that requests on
//! different files never wait for each other; which process a writer belongs to
//! (only its opener's close commits). The operations are in `handles`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::budget::Charge;
use super::stream::{Fetch, Stream};
use super::{Caller, Node, Reply};
use crate::error::Result;

/// An open file: the node it was opened on, and as what.
pub(super) struct Handle {
    pub(super) node: Node,
    pub(super) open: Open,
}

pub(super) enum Open {
    Read(Reader),
    Write(Writer),
}

/// A read-only handle.
pub(super) struct Reader {
    /// The bytes it shows: taken at open (a value, a module), or at the first read
    /// that finds them (a result); `None`: read at each request (the log, a
    /// result not read yet).
    snapshot: Option<Arc<Vec<u8>>>,
    /// A table's `.jsonl`, served in pages as it is read.
    stream: Option<Stream>,
    charge: Charge,
}

/// A handle open for writing: nothing reaches the file until a close commits it.
pub(super) struct Writer {
    buf: Buffer,
    pub(super) changes: Changes,
    /// The process (thread group) that opened it; 0 = not known yet (looked up
    /// from `opener` when needed). Only its close commits, see `Vfs::flush`.
    pub(super) opener_process: u32,
    /// The thread that opened it: a close from it needs no /proc lookup.
    pub(super) opener: u32,
    /// Commits of this handle not yet durable, and the closes with nothing new to
    /// commit that wait for them (close returns only once the bytes are durable).
    pub(super) committing: usize,
    pub(super) waiters: Vec<Reply<()>>,
}

/// What a writer holds that its file does not have yet: what a close commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Changes {
    /// Nothing: opened on the file's bytes, and never written through.
    Clean,
    /// Made by create() and not written: a state file is stored at close even so
    /// (`touch`, `> file`).
    Created,
    /// Emptied or cut (`O_TRUNC`, `ftruncate`) and never written through. A
    /// policy, groups or module text is not applied at a flush in this state:
    /// `echo bad > policy.cedar` flushes once at the shell's dup2 before `echo`
    /// writes, and applying the empty text then would replace the policy that
    /// must stay in force when "bad" is refused. The release applies a truncation
    /// that no write followed (`: > policy.cedar`).
    Truncated,
    /// Written (or, once written, cut) since its last commit.
    Written,
    /// Written, and all of it committed.
    Stored,
    /// Its name was removed while it was open: its close stores nothing (POSIX
    /// gives an unlinked file's bytes no name to come back to).
    Unlinked,
}

/// Files whose whole text is checked before it is applied: a truncation of them
/// waits in the handle like a write.
pub(super) fn validated_whole(node: &Node) -> bool {
    matches!(
        node,
        Node::Policy(_)
            | Node::Groups(_)
            | Node::Schema(_)
            | Node::ModuleFile { .. }
            | Node::TableFile { .. }
    )
}

impl Changes {
    /// Bytes were written.
    pub(super) fn wrote(&mut self) {
        if *self != Changes::Unlinked {
            *self = Changes::Written;
        }
    }

    /// The file was cut or extended (`ftruncate`).
    pub(super) fn truncated(&mut self) {
        use Changes::*;
        *self = match *self {
            Clean | Created | Truncated => Truncated,
            Written | Stored => Written,
            Unlinked => Unlinked,
        };
    }

    /// A commit took the buffer as it is now.
    pub(super) fn committed(&mut self) {
        use Changes::*;
        *self = match *self {
            Written => Stored,
            Created | Truncated => Clean,
            c => c,
        };
    }

    /// Whether a close (FLUSH) of a writer on `node` commits it.
    pub(super) fn due_at_flush(self, node: &Node) -> bool {
        use Changes::*;
        match self {
            Written => true,
            // Stored here, at close, not at RELEASE: that comes after close() has
            // returned, and would bring back a key renamed or removed in between.
            Created => matches!(node, Node::StateFile { .. }),
            Truncated => !validated_whole(node),
            Clean | Stored | Unlinked => false,
        }
    }

    /// Whether the release of a writer on `node` commits it (no flush came, or
    /// the flush left a truncation waiting).
    pub(super) fn due_at_release(self, node: &Node) -> bool {
        use Changes::*;
        match self {
            Written | Truncated => true,
            Created => matches!(node, Node::StateFile { .. }),
            Clean | Stored | Unlinked => false,
        }
    }
}

/// A writer's bytes, charged to its peer's budget as they grow and shrink.
pub(super) struct Buffer {
    bytes: Vec<u8>,
    charge: Charge,
}

impl Buffer {
    /// `bytes`, charged to `charge` if the budget allows (`EDQUOT` if not).
    pub(super) fn new(bytes: Vec<u8>, mut charge: Charge) -> Result<Buffer> {
        charge.resize(bytes.len() as u64)?;
        Ok(Buffer { bytes, charge })
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Cuts or extends (with zeros) to `len`; growth is checked against the budget.
    pub(super) fn resize(&mut self, len: u64) -> Result<()> {
        self.charge.resize(len)?;
        self.bytes.resize(len as usize, 0);
        Ok(())
    }

    /// Writes `data` at `offset`, growing the buffer (checked) if it ends past it.
    /// The end must already be within the file's size cap.
    pub(super) fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if (self.bytes.len() as u64) < end {
            self.resize(end)?;
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    /// The bytes, taken out: the buffer then holds (and is charged) nothing.
    pub(super) fn take(&mut self) -> Vec<u8> {
        self.charge.set(0);
        std::mem::take(&mut self.bytes)
    }
}

impl Reader {
    /// A reader showing `snapshot` (charged, checked) or, for `None`, what each
    /// read finds.
    pub(super) fn new(snapshot: Option<Arc<Vec<u8>>>, mut charge: Charge) -> Result<Reader> {
        charge.resize(snapshot.as_ref().map_or(0, |s| s.len() as u64))?;
        Ok(Reader {
            snapshot,
            stream: None,
            charge,
        })
    }

    /// A reader of a file served in pages (see `stream`).
    pub(super) fn streaming(charge: Charge) -> Reader {
        Reader {
            snapshot: None,
            stream: Some(Stream::new()),
            charge,
        }
    }

    pub(super) fn streams(&self) -> bool {
        self.stream.is_some()
    }

    /// A read of a streamed file; the page it holds then is charged (whatever
    /// the budget says: a page is bounded).
    pub(super) fn read_stream(&mut self, offset: u64, size: u32, fetch: Fetch) -> Result<Vec<u8>> {
        let Some(s) = self.stream.as_mut() else {
            return Err(crate::error::err!(libc::EIO, "not a streamed file"));
        };
        let r = s.read(offset, size, fetch);
        self.charge.set(s.held());
        r
    }

    pub(super) fn snapshot(&self) -> Option<&Arc<Vec<u8>>> {
        self.snapshot.as_ref()
    }

    /// Keeps `bytes` (a result, once read) for the next reads: charged whatever
    /// the budget says, as the reader holds them already.
    pub(super) fn keep(&mut self, bytes: Arc<Vec<u8>>) {
        self.charge.set(bytes.len() as u64);
        self.snapshot = Some(bytes);
    }
}

impl Writer {
    /// A writer `who` opened, holding `buf`, with `changes` not yet committed.
    pub(super) fn new(who: &Caller, buf: Buffer, changes: Changes) -> Writer {
        Writer {
            buf,
            changes,
            opener_process: leader(who.pid),
            opener: who.pid,
            committing: 0,
            waiters: Vec::new(),
        }
    }

    pub(super) fn buf(&self) -> &Buffer {
        &self.buf
    }

    pub(super) fn buf_mut(&mut self) -> &mut Buffer {
        &mut self.buf
    }
}

impl Handle {
    /// The bytes it holds (a writer's buffer, a reader's snapshot): the size an
    /// unlinked file's attributes show.
    pub(super) fn held(&self) -> u64 {
        match &self.open {
            Open::Write(w) => w.buf.bytes.len() as u64,
            Open::Read(r) => (r.snapshot.as_ref().map(|s| s.len() as u64))
                .or(r.stream.as_ref().map(Stream::held))
                .unwrap_or(0),
        }
    }

    pub(super) fn writer(&mut self) -> Option<&mut Writer> {
        match &mut self.open {
            Open::Write(w) => Some(w),
            Open::Read(_) => None,
        }
    }
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

/// One open file, behind its own lock.
pub(super) type Shared = Arc<Mutex<Handle>>;

/// The open files by handle number. The table's lock is held only to find
/// (shared), add or remove (exclusive) an entry, never while a handle's own lock
/// is taken.
pub(super) struct Handles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Shared>>,
}

impl Handles {
    pub(super) fn new() -> Handles {
        Handles {
            next: AtomicU64::new(1),
            open: RwLock::new(HashMap::new()),
        }
    }

    /// A number no handle (of a file or of a folder) had before.
    pub(super) fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn insert(&self, h: Handle) -> u64 {
        let fh = self.number();
        self.open
            .write()
            .unwrap()
            .insert(fh, Arc::new(Mutex::new(h)));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> Option<Shared> {
        self.open.read().unwrap().get(&fh).cloned()
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Shared> {
        self.open.write().unwrap().remove(&fh)
    }

    /// Every open file, for the rare scans (unlink, a removed file's fstat).
    pub(super) fn all(&self) -> Vec<Shared> {
        self.open.read().unwrap().values().cloned().collect()
    }
}

/// A handle for an answer that comes later, when it may have been closed.
pub(super) fn weak(h: &Shared) -> Weak<Mutex<Handle>> {
    Arc::downgrade(h)
}
