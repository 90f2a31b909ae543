//! The data directory's files as the daemon keeps them: private to the daemon
//! (folders 0700, files 0600), store files owned by the daemon, and each peer's
//! owner recorded beside them in `DATA/owners/<name>` (an empty file whose uid and
//! gid are the owner's). A peer's owner acts through the mount, never on the store
//! file itself: a store its owner could write would let them put rows in it that
//! the daemon then runs.

pub(crate) use crate::util::{daemon_ids, make_private, sync_dir};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::err;
use crate::error::Result;

/// Creates `dir` (and missing parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "cannot create {}: {e}",
                dir.display()
            )
        })
}

/// The file that records who owns peer `name`.
pub(crate) fn owner_file(data: &Path, name: &str) -> PathBuf {
    data.join("owners").join(name)
}

/// Records `uid:gid` as the owner of peer `name`.
pub(crate) fn write_owner(data: &Path, name: &str, uid: u32, gid: u32) -> Result<()> {
    let dir = data.join("owners");
    private_dir(&dir)?;
    let f = owner_file(data, name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, b"")?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    std::fs::rename(&tmp, &f)?;
    sync_dir(&dir);
    Ok(())
}

/// The owner of peer `name` (uid, gid, ctime in ns): from its owner file, or, for a
/// data directory from before owner files, from the store file, which is then
/// handed to the daemon (its owner could otherwise write it behind the daemon's back).
pub(crate) fn owner_of(data: &Path, name: &str, store: &Path) -> Result<(u32, u32, i64)> {
    let ctime = |md: &std::fs::Metadata| md.ctime() * 1_000_000_000 + md.ctime_nsec();
    if let Ok(md) = std::fs::metadata(owner_file(data, name)) {
        return Ok((md.uid(), md.gid(), ctime(&md)));
    }
    let md = std::fs::metadata(store)?;
    let (uid, gid) = (md.uid(), md.gid());
    write_owner(data, name, uid, gid)?;
    if (uid, gid) != daemon_ids() {
        tracing::warn!(
            peer = name,
            file = %store.display(),
            uid,
            "peer store was owned by its peer's owner, who could write it behind the daemon: \
             it now belongs to the daemon (the owner is recorded in DATA/owners/)"
        );
    }
    for f in store_files(store) {
        if f.exists() {
            make_private(&f)?;
        }
    }
    Ok((uid, gid, ctime(&md)))
}

/// A store and the files SQLite keeps beside it.
pub(crate) fn store_files(store: &Path) -> [PathBuf; 3] {
    let s = store.display();
    [
        store.to_path_buf(),
        PathBuf::from(format!("{s}-wal")),
        PathBuf::from(format!("{s}-shm")),
    ]
}

/// Warns about every folder and file of the data directory that other users can
/// reach (group or other permission bits): peerfs makes its own private, but a
/// directory made by hand or by an older peerfs may not be.
pub(crate) fn warn_if_open(data: &Path) {
    let mut open = Vec::new();
    let mut check = |p: &Path| {
        if let Ok(md) = std::fs::symlink_metadata(p) {
            if md.mode() & 0o077 != 0 {
                open.push(format!("{} ({:o})", p.display(), md.mode() & 0o777));
            }
        }
    };
    check(data);
    for sub in ["peers", "owners", "removed"] {
        let dir = data.join(sub);
        check(&dir);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                check(&e.path());
            }
        }
    }
    if !open.is_empty() {
        tracing::warn!(
            data = %data.display(),
            count = open.len(),
            first = %open[0],
            "the data directory is readable by other local users: they can read every peer's \
             state and policy around the mount. Fix: chmod -R go-rwx {}",
            data.display()
        );
    }
}
