//! One process at a time on a data folder or a spool folder: the daemon that
//! serves it, or `peerfs peer create|remove` changing it. Two daemons on one data
//! folder would apply the same peer's changes twice over (both commit a log row at
//! the same offset: one of them fails with EIO), and a peer removed behind a
//! daemon's back stays listed as a ghost.
//!
//! The lock is flock(2) on a file in the folder (`DATA/.lock`,
//! `SPOOL/.peerfs/lock`), so the kernel drops it when its holder dies, even by
//! SIGKILL: nothing stale is ever left to clean up. The holder's pid is written in
//! the file, for the refusal to name it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{err, Result};

/// The errno of a refusal because another process holds the lock (the
/// command's exit status 75 says "try again once it has stopped").
pub const HELD: i32 = libc::EWOULDBLOCK;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

impl FolderLock {
    /// The lock of data folder `data` (which must exist).
    pub fn data(data: &Path, who: &str) -> Result<FolderLock> {
        FolderLock::take(&data.join(".lock"), data, who)
    }

    /// The lock of spool folder `spool` (`SPOOL/.peerfs/` is made if missing).
    pub fn spool(spool: &Path, who: &str) -> Result<FolderLock> {
        let dir = spool.join(".peerfs");
        std::fs::create_dir_all(&dir).map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "cannot create {}: {e}",
                dir.display()
            )
        })?;
        FolderLock::take(&dir.join("lock"), spool, who)
    }

    /// Takes the lock at `path` without waiting; `who` says what wants it, for
    /// the refusal ("peer create needs DATA to itself").
    fn take(path: &Path, folder: &Path, who: &str) -> Result<FolderLock> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                err!(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    "cannot open the lock file {}: {e}",
                    path.display()
                )
            })?;
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err!(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    "cannot lock {}: {e}",
                    path.display()
                ));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("another peerfs process (pid {pid})"),
                // The holder writes its pid just after taking the lock.
                Err(_) => "another peerfs process".to_string(),
            };
            return Err(err!(
                HELD,
                "{} is in use by {holder}: {who} needs it to itself; stop that process first \
                 (one daemon per data folder and per spool folder)",
                folder.display()
            ));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(FolderLock {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // The pid goes before the lock: a pid in an unlocked file would name a
        // process that no longer holds it. The file stays (removing it would
        // race with a process that just opened it).
        let _ = self.file.set_len(0);
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let first = FolderLock::data(d.path(), "a test").unwrap();
        let e = FolderLock::data(d.path(), "peer create").unwrap_err();
        assert_eq!(e.errno, HELD);
        let pid = std::process::id().to_string();
        assert!(e.message.contains(&format!("pid {pid}")), "{e}");
        assert!(e.message.contains("peer create"), "{e}");
        drop(first);
        let again = FolderLock::data(d.path(), "a test").unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().trim(), pid);
    }

    #[test]
    fn the_spool_lock_lives_in_its_dot_peerfs_folder() {
        let d = tempfile::tempdir().unwrap();
        let l = FolderLock::spool(d.path(), "serve").unwrap();
        assert_eq!(l.path(), d.path().join(".peerfs/lock"));
        assert_eq!(
            FolderLock::spool(d.path(), "serve").unwrap_err().errno,
            HELD
        );
    }
}
