//! One error type for every layer: an errno (what the kernel or the CLI answers)
//! and a message for people (what the log and the result say).

use std::fmt;

/// An error with the errno a file system caller should see and a message that names
/// the thing, the reason and, where there is one, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `err!(libc::EINVAL, "peer name {name:?} ...")`: an [`Error`] with a formatted
/// message.
macro_rules! err {
    ($errno:expr, $($arg:tt)*) => {
        $crate::error::Error::new($errno, format!($($arg)*))
    };
}
pub(crate) use err;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        use rusqlite::ffi::ErrorCode;
        let errno = match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                ErrorCode::DiskFull => libc::ENOSPC,
                ErrorCode::ReadOnly => libc::EROFS,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => libc::EBUSY,
                ErrorCode::PermissionDenied => libc::EACCES,
                ErrorCode::TooBig => libc::EFBIG,
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => libc::EIO,
                ErrorCode::CannotOpen => libc::EIO,
                _ => libc::EIO,
            },
            _ => libc::EIO,
        };
        Error::new(errno, format!("storage: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::new(libc::EINVAL, format!("json: {e}"))
    }
}
