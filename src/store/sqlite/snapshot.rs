//! A consistent copy of a store in a file of its own (`VACUUM INTO`, inside one
//! read transaction of its own connection): what `.snapshots/NAME` holds.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{err, Result};

/// Copies the store at `src` into `dest` (which must not exist), durably.
pub fn copy_store(src: &Path, dest: &Path) -> Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(src, flags)
        .map_err(|e| err!(libc::EIO, "cannot open peer store {}: {e}", src.display()))?;
    conn.execute_batch("PRAGMA busy_timeout=5000;")?;
    let to = dest
        .to_str()
        .ok_or_else(|| err!(libc::EINVAL, "{} is not UTF-8", dest.display()))?;
    conn.execute("VACUUM INTO ?1", [to])?;
    std::fs::File::open(dest)?.sync_all()?;
    Ok(())
}
