//! Hooks for crash tests, off unless their environment variables are set.
//!
//! `PEERFS_TEST_ABORT_ON=MARKER`: a queued script whose source contains MARKER
//! aborts the daemon (`abort(3)`, as a crash would) when its run starts. Such a
//! script is never run inside its submission's transaction, so its submission is
//! durable before the crash. Only tests set it; it costs one check per run.
//!
//! `PEERFS_TEST_ABORT_AFTER_TAKE=MARKER`: a script the spool took whose source
//! contains MARKER aborts the daemon once its intake has committed and before
//! the file leaves the inbox (the window a restart must recognise).

use std::sync::OnceLock;

use crate::store::Job;

/// The marker in the environment variable `var` (unset or empty: none).
fn env_marker(var: &str) -> Option<Vec<u8>> {
    std::env::var(var)
        .ok()
        .filter(|m| !m.is_empty())
        .map(String::into_bytes)
}

fn contains(hay: &[u8], m: &[u8]) -> bool {
    hay.windows(m.len()).any(|w| w == m)
}

fn marker() -> Option<&'static [u8]> {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| env_marker("PEERFS_TEST_ABORT_ON"))
        .as_deref()
}

/// Whether `job` carries the crash marker.
pub(crate) fn marked(job: &Job) -> bool {
    marker().is_some_and(|m| contains(&job.source, m))
}

/// Aborts the process when `job` carries the marker (see the module docs).
pub(crate) fn abort_if_marked(job: &Job) {
    if marked(job) {
        tracing::error!(run = %job.id, script = %job.name, "PEERFS_TEST_ABORT_ON: aborting the daemon (test hook)");
        std::process::abort();
    }
}

fn take_marker() -> Option<&'static [u8]> {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| env_marker("PEERFS_TEST_ABORT_AFTER_TAKE"))
        .as_deref()
}

/// Whether a script the spool took (`source`) carries the after-take marker.
pub(crate) fn take_marked(source: &[u8]) -> bool {
    take_marker().is_some_and(|m| contains(source, m))
}

/// Aborts the process (see the module docs): the intake of `file` committed.
pub(crate) fn abort_after_take(file: &std::path::Path) {
    tracing::error!(file = %file.display(), "PEERFS_TEST_ABORT_AFTER_TAKE: aborting the daemon after the intake committed (test hook)");
    std::process::abort();
}
