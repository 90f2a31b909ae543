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

/// The errno of [`Error::stopped`].
pub const STOPPED: i32 = libc::ENOTCONN;

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: message.into(),
            source: None,
        }
    }

    /// The daemon stopped before `what` happened (a result was ready, a change
    /// applied, a message taken). One errno for every such answer: `ENOTCONN`, what
    /// the kernel answers for a mount whose daemon is gone. Not `EINTR` (readers
    /// such as coreutils' retry it when no signal came, and it would fail again),
    /// not `EIO` (that says the data is broken), not `EAGAIN` (nothing comes back
    /// before the next start).
    pub fn stopped(what: impl fmt::Display) -> Error {
        Error::new(STOPPED, format!("the daemon stopped before {what}"))
    }

    /// Whether this is [`Error::stopped`].
    pub fn is_stopped(&self) -> bool {
        self.errno == STOPPED
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_is_one_errno_and_says_what_did_not_happen() {
        let e = Error::stopped("the result was ready");
        assert!(e.is_stopped());
        assert_eq!(e.errno, libc::ENOTCONN);
        assert_eq!(
            e.to_string(),
            "the daemon stopped before the result was ready"
        );
        assert!(!err!(libc::EIO, "broken").is_stopped());
    }

    #[test]
    fn a_converted_error_keeps_its_source() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::from(io);
        assert_eq!(e.errno, libc::ENOSPC);
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), e.message);
        assert_eq!(e.clone(), e, "a clone shares its source");
        assert!(std::error::Error::source(&err!(libc::EIO, "x")).is_none());
    }
}
