//! Open and rename flags as types: the FUSE adapter turns the kernel's integers
//! into these once, and the vfs asks them questions (`write`, `truncate`, ...)
//! instead of masking raw libc bits.

/// What an `open(2)` or `creat(2)` asked for, as far as peerfs looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub write: bool,
    /// `O_TRUNC`: the handle starts empty.
    pub truncate: bool,
    /// `O_EXCL` (with `O_CREAT`): an existing name is `EEXIST`.
    pub exclusive: bool,
    /// `O_NONBLOCK`: a pending result is `EAGAIN` instead of a wait.
    pub nonblock: bool,
}

impl OpenFlags {
    /// Read only.
    pub const READ: OpenFlags = OpenFlags {
        write: false,
        truncate: false,
        exclusive: false,
        nonblock: false,
    };
    /// Write, keeping what the file holds.
    pub const WRITE: OpenFlags = OpenFlags {
        write: true,
        ..OpenFlags::READ
    };

    /// The flags of `open(2)`'s `flags` argument.
    pub fn from_libc(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            exclusive: flags & libc::O_EXCL != 0,
            nonblock: flags & libc::O_NONBLOCK != 0,
        }
    }

    /// The same flags with `O_TRUNC`.
    pub fn truncating(self) -> OpenFlags {
        OpenFlags {
            truncate: true,
            ..self
        }
    }

    /// The same flags with `O_EXCL`.
    pub fn exclusive(self) -> OpenFlags {
        OpenFlags {
            exclusive: true,
            ..self
        }
    }
}

impl From<i32> for OpenFlags {
    fn from(flags: i32) -> OpenFlags {
        OpenFlags::from_libc(flags)
    }
}

/// What a `renameat2(2)` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: an existing target is `EEXIST`.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two names (not supported: `EINVAL`).
    pub exchange: bool,
}

impl RenameFlags {
    /// A plain `rename(2)`.
    pub const NONE: RenameFlags = RenameFlags {
        noreplace: false,
        exchange: false,
    };

    /// The flags of `renameat2(2)`'s `flags` argument.
    pub fn from_libc(flags: u32) -> RenameFlags {
        RenameFlags {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        }
    }
}

impl From<u32> for RenameFlags {
    fn from(flags: u32) -> RenameFlags {
        RenameFlags::from_libc(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_read_the_access_mode_and_the_bits() {
        assert_eq!(OpenFlags::from_libc(libc::O_RDONLY), OpenFlags::READ);
        assert!(OpenFlags::from_libc(libc::O_RDWR).write);
        let f = OpenFlags::from_libc(libc::O_WRONLY | libc::O_TRUNC | libc::O_EXCL);
        assert!(f.write && f.truncate && f.exclusive && !f.nonblock);
        assert!(OpenFlags::from_libc(libc::O_RDONLY | libc::O_NONBLOCK).nonblock);
    }

    #[test]
    fn rename_flags_read_the_bits() {
        assert_eq!(RenameFlags::from_libc(0), RenameFlags::NONE);
        assert!(RenameFlags::from_libc(libc::RENAME_NOREPLACE).noreplace);
        assert!(RenameFlags::from_libc(libc::RENAME_EXCHANGE).exchange);
    }
}
