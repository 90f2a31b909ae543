//! Plain-file helpers of the spool: taking a script out of a folder (and what the
//! submission records of it), and replacing a file atomically.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of the spool's own temporary files: a staging name (leading `.`), so the
/// intake and the mirrors never take them for anything.
pub const TMP_PREFIX: &str = ".peerfs-tmp-";

/// A file read whole, with what identifies the version that was read.
pub struct Taken {
    pub data: Vec<u8>,
    pub ident: Ident,
}

/// What the submission records of a taken file: a restart that finds a file with
/// the same name and the same `Ident` knows it was taken already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub size: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub hash: u128,
}

impl Ident {
    pub fn record(&self) -> Vec<u8> {
        format!(
            "{} {} {} {:032x}",
            self.size, self.ino, self.mtime_ns, self.hash
        )
        .into_bytes()
    }

    /// Same file as when taken (size, inode, mtime): the content hash is in the
    /// record for a restart, which reads the file anyway.
    pub fn same_file(&self, m: &std::fs::Metadata) -> bool {
        m.len() == self.size && m.ino() == self.ino && mtime_ns(m) == self.mtime_ns
    }
}

pub(super) fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

pub fn content_hash(data: &[u8]) -> u128 {
    use std::hash::Hasher;
    // Fixed keys: the hash must be the same after a restart (and a rebuild).
    let mut h = siphasher::sip128::SipHasher13::new_with_keys(0x7065_6572_6673, 0x0073_706f_6f6c);
    h.write(data);
    siphasher::sip128::Hasher128::finish128(&h).as_u128()
}

/// Why a file was not taken.
#[derive(Debug)]
pub enum Skip {
    /// Gone, or not a regular file (a symlink, a folder, a fifo).
    NotAFile,
    /// Someone still has it open for writing: its close brings another event.
    BeingWritten,
    /// Owned by another user than the peer's owner (or root).
    Foreign(u32),
    TooBig(u64),
}

/// Reads the script at `path` if it is complete: a regular file (symlinks are not
/// followed), owned by `uid` or root, that nobody has open for writing. The last
/// is asked of the kernel with a read lease (`F_SETLEASE`), which cannot be taken
/// while a writer holds the file; where leases are not available (NFS, another
/// user without CAP_LEASE) the file is taken as found.
pub fn take(path: &Path, uid: u32, max: u64) -> io::Result<Result<Taken, Skip>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
            ) =>
        {
            return Ok(Err(Skip::NotAFile))
        }
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Ok(Err(Skip::NotAFile));
    }
    if m.uid() != uid && m.uid() != 0 {
        return Ok(Err(Skip::Foreign(m.uid())));
    }
    if m.len() > max {
        return Ok(Err(Skip::TooBig(m.len())));
    }
    let fd = f.as_raw_fd();
    // A writer opening the file breaks the lease and the kernel signals the holder:
    // SIGIO by default, which would end the daemon. SIGURG is ignored by default.
    unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) };
    let leased = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0;
    if !leased && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
        return Ok(Err(Skip::BeingWritten));
    }
    let mut data = Vec::with_capacity(m.len() as usize);
    let r = (&f).take(max + 1).read_to_end(&mut data);
    let m2 = f.metadata();
    // A lease being broken shows as F_UNLCK: a writer opened it while we read.
    let kept = !leased || unsafe { libc::fcntl(fd, libc::F_GETLEASE) } == libc::F_RDLCK;
    if leased {
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    }
    if !kept {
        return Ok(Err(Skip::BeingWritten));
    }
    r?;
    let m2 = m2?;
    if data.len() as u64 > max {
        return Ok(Err(Skip::TooBig(data.len() as u64)));
    }
    Ok(Ok(Taken {
        ident: Ident {
            size: data.len() as u64,
            ino: m2.ino(),
            mtime_ns: mtime_ns(&m2),
            hash: content_hash(&data),
        },
        data,
    }))
}

/// Runs `f` with the file-system identity of `user` (uid, gid) when the daemon
/// runs as root: fsuid, fsgid and no supplementary groups, for this thread only
/// (raw syscalls; glibc would apply `setgroups` to every thread). So a peer's folder
/// gives the daemon no more than its user has: a symlink in it to `/etc`, or a
/// file only root may read, fails as it would for that user.
pub fn as_user<T>(user: (u32, u32), f: impl FnOnce() -> T) -> T {
    if unsafe { libc::geteuid() } != 0 || user.0 == 0 {
        return f();
    }
    // Restores what was before (also inside an outer `as_user`).
    struct Back {
        uid: libc::c_int,
        gid: libc::c_int,
        groups: Vec<libc::gid_t>,
    }
    impl Drop for Back {
        fn drop(&mut self) {
            unsafe {
                libc::setfsuid(self.uid as libc::uid_t);
                libc::setfsgid(self.gid as libc::gid_t);
                libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
            }
        }
    }
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) }.max(0) as usize;
    let mut groups = vec![0; n];
    let n = unsafe { libc::getgroups(n as libc::c_int, groups.as_mut_ptr()) }.max(0) as usize;
    groups.truncate(n);
    let _back = unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
        let gid = libc::setfsgid(user.1);
        let uid = libc::setfsuid(user.0);
        Back { uid, gid, groups }
    };
    f()
}

/// fcntl's F_SETSIG (asm-generic/fcntl.h; the libc crate has it only for musl).
const F_SETSIG: libc::c_int = 10;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary name beside `path`, unique in this process.
fn tmp_beside(path: &Path) -> PathBuf {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
}

/// Writes `data` under a temporary name beside `path` (mode `mode`, owned by
/// `user` (uid, gid) when the daemon may give files away), fsynced when `sync`, and returns
/// the temporary name: [`std::fs::rename`] it over `path` to publish it whole.
pub fn write_tmp(
    path: &Path,
    data: &[u8],
    mode: u32,
    user: (u32, u32),
    sync: bool,
) -> io::Result<PathBuf> {
    let tmp = tmp_beside(path);
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        // Only root can give a file away; a daemon run by that user needs not.
        unsafe { libc::fchown(f.as_raw_fd(), user.0, user.1) };
        f.write_all(data)?;
        if sync {
            f.sync_data()?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `path` with `data` atomically (see [`write_tmp`]).
pub fn replace(
    path: &Path,
    data: &[u8],
    mode: u32,
    user: (u32, u32),
    sync: bool,
) -> io::Result<()> {
    let tmp = write_tmp(path, data, mode, user, sync)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Makes `path` with `data` unless it exists: never replaces a file someone
/// else made meanwhile (the temporary file is linked, which fails with
/// `EEXIST` where a rename would replace). `Ok(false)`: it existed.
pub fn create_new(path: &Path, data: &[u8], mode: u32, user: (u32, u32)) -> io::Result<bool> {
    let tmp = write_tmp(path, data, mode, user, false)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes `dir` (and its parents) with `mode`, owned by `user` (uid, gid).
pub fn make_dir(dir: &Path, mode: u32, user: (u32, u32)) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    let _ = std::os::unix::fs::chown(dir, Some(user.0), Some(user.1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_never_replaces_a_file_made_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.cedar");
        let me = unsafe { (libc::getuid(), libc::getgid()) };
        assert!(create_new(&p, b"stored", 0o644, me).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"stored");
        std::fs::write(&p, b"the user's").unwrap();
        assert!(!create_new(&p, b"stored", 0o644, me).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"the user's");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn take_reads_a_closed_file_and_skips_an_open_writer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.rhai");
        let uid = unsafe { libc::getuid() };
        let mut w = std::fs::File::create(&p).unwrap();
        w.write_all(b"1 + 1").unwrap();
        // Leases need the file's owner or CAP_LEASE: both hold in tests.
        assert!(matches!(
            take(&p, uid, 100).unwrap(),
            Err(Skip::BeingWritten)
        ));
        drop(w);
        let t = take(&p, uid, 100).unwrap().unwrap();
        assert_eq!(t.data, b"1 + 1");
        assert_eq!(t.ident.hash, content_hash(b"1 + 1"));
        assert!(t.ident.same_file(&std::fs::metadata(&p).unwrap()));
        assert!(matches!(take(&p, uid, 3).unwrap(), Err(Skip::TooBig(5))));
        std::os::unix::fs::symlink(&p, d.path().join("l.rhai")).unwrap();
        assert!(matches!(
            take(&d.path().join("l.rhai"), uid, 100).unwrap(),
            Err(Skip::NotAFile)
        ));
    }

    #[test]
    fn writers_opening_during_takes_neither_end_the_process_nor_are_taken_half() {
        // A writer's open breaks a lease held by a take: the kernel signals the
        // holder (SIGIO, deadly, unless the take chose another signal).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.rhai");
        std::fs::write(&p, b"1").unwrap();
        let uid = unsafe { libc::getuid() };
        let p2 = p.clone();
        let w = std::thread::spawn(move || {
            for _ in 0..2000 {
                drop(std::fs::OpenOptions::new().append(true).open(&p2).unwrap());
            }
        });
        let (mut taken, mut busy) = (0, 0);
        // At least one take, however soon a loaded machine ends the writer.
        loop {
            match take(&p, uid, 100).unwrap() {
                Ok(t) => {
                    assert_eq!(t.data, b"1");
                    taken += 1
                }
                Err(Skip::BeingWritten) => busy += 1,
                Err(s) => panic!("{s:?}"),
            }
            if w.is_finished() {
                break;
            }
        }
        w.join().unwrap();
        assert!(taken + busy > 0);
    }

    #[test]
    fn replace_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        let me = unsafe { (libc::getuid(), libc::getgid()) };
        replace(&p, b"{}", 0o644, me, true).unwrap();
        replace(&p, b"{\"a\":1}", 0o644, me, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
