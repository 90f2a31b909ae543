//! One error type for every layer: an errno (what the kernel or the CLI answers)
//! and a message for people (what the log and the result say).

use std::fmt;
use std::sync::Arc;

/// What an [`Error`] was made from (a storage, I/O or parse error), kept for
/// `std::error::Error::source`; shared so that an `Error` stays `Clone`.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error with the errno a file system caller should see and a message that names
/// the thing, the reason and, where there is one, the fix.
#[derive(Debug, Clone)]
pub struct Error {
    pub errno: i32,
    pub message: String,
    /// The lower error this one was made from, if any. Not compared by `==`: two
    /// errors are the same when a caller sees the same errno and message.
    pub source: Option<Source>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.errno == other.errno && self.message == other.message
    }
}

impl Eq for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: message.into(),
            source: None,
        }
    }

    /// This error, remembering `source` as the one it was made from.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Arc::new(source));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

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
        Error::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string()).with_source(e)
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
        Error::new(errno, format!("storage: {e}")).with_source(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::new(libc::EINVAL, format!("json: {e}")).with_source(e)
    }
}
