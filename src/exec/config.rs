//! The daemon's settings ([`Config`]) and the counters it shows ([`Stats`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::script::{Library, Limits};

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Runner threads that run peers' actors (config key `runners`).
    pub runners: usize,
    /// Open peers kept at most (idle ones beyond this are closed first).
    pub max_open_peers: usize,
    /// An open peer with no work is closed after this long.
    pub idle_close: Duration,
    /// Sandbox limits for scripts other peers send (the target's policy can only
    /// tighten them): config `[limits.others]`.
    pub limits: Limits,
    /// Sandbox limits for a peer's own scripts: config `[limits.own]`.
    pub own_limits: Limits,
    /// Runs kept in each peer's history.
    pub run_retention: u64,
    pub library: Library,
    /// Most runs committed together; a batch also ends after `batch_max_time`.
    pub batch_max_runs: usize,
    pub batch_max_time: Duration,
    /// Runs made inside a write transaction, before its commit (see `apply_ops`):
    /// at most this long in all; a run still going then gives way and stays queued.
    /// Zero: runs always have a transaction of their own.
    pub inline_runs: Duration,
    /// Serve only these peers (isolated deployment).
    pub only: Option<Vec<String>>,
    /// Runs a chain may make in all: the first script of a chain has this budget,
    /// and every run shares what is left of its own among the scripts it sends, so
    /// any chain ends (a send worm too), however it fans out.
    pub chain_budget: u64,
    /// A queued script whose runs started this many times without finishing (the
    /// daemon crashed or was killed each time) ends with an `error` result.
    pub max_attempts: u32,
    /// A message whose delivery failed this many times becomes an `error` result.
    pub delivery_tries: u32,
    /// Longest a read of a pending result waits (then `ETIMEDOUT`; the result
    /// stays pending). A reader killed or interrupted meanwhile gets `EINTR`.
    pub result_wait: Duration,
    /// Record run durations, commit latency, decisions and per-peer figures
    /// (config `metrics.enabled`), and export the busiest `metrics_top_peers`.
    pub metrics: bool,
    pub metrics_top_peers: usize,
    /// Export per-peer series (labelled with peer names) at all (config
    /// `metrics.peer_labels`): the metrics are readable by every user of the mount
    /// and every client of the listener, and peer names are who has a peer.
    pub metrics_peer_labels: bool,
    /// Compiled scripts and modules cached at most.
    pub script_cache_entries: usize,
    /// The daemon joins a lattice once started (`lattice.nats` is set): until its
    /// transport is in place, a message for a peer not served here waits in its
    /// sender's store (the directory decides once it is read), and scripts may
    /// `send` to any peer, as in the lattice.
    pub joins_lattice: bool,
    /// Ship every store to object storage (config `[replica]`); `None`: off.
    pub replica: Option<crate::replica::Options>,
    /// What each peer's history keeps (config `[history]`); an age of 0 keeps none.
    pub history: crate::store::history::Retention,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Config {
            data_dir: data_dir.into(),
            runners: (cores * 2).max(4),
            max_open_peers: 4096,
            idle_close: Duration::from_secs(30),
            limits: Limits::others(),
            own_limits: Limits::own(),
            run_retention: 10_000,
            library: Library::Embedded,
            batch_max_runs: 256,
            batch_max_time: Duration::from_millis(20),
            inline_runs: Duration::from_millis(1),
            only: None,
            chain_budget: 1000,
            max_attempts: 3,
            delivery_tries: 5,
            result_wait: Duration::from_secs(120),
            metrics: true,
            metrics_top_peers: 20,
            metrics_peer_labels: false,
            script_cache_entries: crate::script::cache::MAX_ENTRIES,
            joins_lattice: false,
            replica: None,
            history: Default::default(),
        }
    }
}

/// Counters shown in `.peerfs/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub submissions: AtomicU64,
    pub runs: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_error: AtomicU64,
    pub runs_denied: AtomicU64,
    pub runs_limit: AtomicU64,
    /// Runs started inside a write transaction that gave way (rolled back, run
    /// again from the queue).
    pub runs_gave_way: AtomicU64,
    pub commits: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub writes: AtomicU64,
}
