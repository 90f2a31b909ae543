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
//!
//! `PEERFS_TEST_ABORT_AFTER_JOURNAL=MARKER`: a submission whose source contains
//! MARKER aborts the daemon right after the intake journal committed it, before
//! its close is answered and before its peer takes it.
//!
//! `PEERFS_TEST_ABORT_AFTER_DRAIN=PEER`: the daemon aborts once peer PEER has
//! taken held submissions into its queue (committed) and before the journal
//! drops them.
//!
//! `PEERFS_TEST_ABORT_IN_MIGRATION=MARKER`: a `schema.toml` whose text contains
//! MARKER aborts the daemon once its migration has run in the open transaction,
//! before the commit.

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

/// Aborts the process when a schema text carries the migration marker.
pub(crate) fn abort_in_migration(text: &[u8]) {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let m = M.get_or_init(|| env_marker("PEERFS_TEST_ABORT_IN_MIGRATION"));
    if m.as_deref().is_some_and(|m| contains(text, m)) {
        tracing::error!(
            "PEERFS_TEST_ABORT_IN_MIGRATION: aborting the daemon mid-migration (test hook)"
        );
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

fn journal_marker() -> Option<&'static [u8]> {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| env_marker("PEERFS_TEST_ABORT_AFTER_JOURNAL"))
        .as_deref()
}

/// Whether a submission carries the after-journal marker.
pub(crate) fn journal_marked(job: &Job) -> bool {
    journal_marker().is_some_and(|m| contains(&job.source, m))
}

/// Aborts the process (see the module docs): the journal committed.
pub(crate) fn abort_after_journal() {
    tracing::error!(
        "PEERFS_TEST_ABORT_AFTER_JOURNAL: aborting the daemon after the journal commit (test hook)"
    );
    std::process::abort();
}

/// Aborts the process when `peer` is the after-drain peer (see the module docs).
pub(crate) fn abort_after_drain(peer: &crate::peer::Peer, mark: i64) {
    static M: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let m = M.get_or_init(|| env_marker("PEERFS_TEST_ABORT_AFTER_DRAIN"));
    if m.as_deref() == Some(peer.name.as_bytes()) {
        tracing::error!(peer = %peer.name, mark, "PEERFS_TEST_ABORT_AFTER_DRAIN: aborting the daemon before the journal forgets (test hook)");
        std::process::abort();
    }
}
