//! A hook for crash tests, off unless its environment variable is set.
//!
//! `PEERFS_TEST_ABORT_ON=MARKER`: a queued script whose source contains MARKER
//! aborts the daemon (`abort(3)`, as a crash would) when its run starts. Such a
//! script is never run inside its submission's transaction, so its submission is
//! durable before the crash. Only tests set it; it costs one check per run.

use std::sync::OnceLock;

use crate::store::Job;

fn marker() -> Option<&'static [u8]> {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| {
        std::env::var("PEERFS_TEST_ABORT_ON")
            .ok()
            .filter(|m| !m.is_empty())
            .map(String::into_bytes)
    })
    .as_deref()
}

/// Whether `job` carries the crash marker.
pub(crate) fn marked(job: &Job) -> bool {
    marker().is_some_and(|m| job.source.windows(m.len()).any(|w| w == m))
}

/// Aborts the process when `job` carries the marker (see the module docs).
pub(crate) fn abort_if_marked(job: &Job) {
    if marked(job) {
        tracing::error!(run = %job.id, script = %job.name, "PEERFS_TEST_ABORT_ON: aborting the daemon (test hook)");
        std::process::abort();
    }
}
