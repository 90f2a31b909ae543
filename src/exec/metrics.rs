//! What the executor records as runs and commits happen, for the metrics that a
//! counter cannot give: run durations, commit latency, policy decisions and
//! per-peer figures. The exposition (the Prometheus text, the HTTP listener) is
//! `crate::metrics`, a layer above: it reads these at scrape time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::script::Status;

/// Upper bounds (seconds) of the run duration buckets: 50 µs to 10 s.
pub const RUN_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0,
];
/// Upper bounds (seconds) of the commit (fsync) latency buckets: 20 µs to 1 s.
pub const COMMIT_BUCKETS: [f64; 11] = [
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0,
];

/// What one peer did since the daemon started.
#[derive(Debug, Clone, Default)]
pub struct PeerStat {
    pub runs: [u64; 5],
    /// Counts per [`RUN_BUCKETS`] bucket (not cumulative), and past the last.
    pub buckets: [u64; RUN_BUCKETS.len() + 1],
    pub seconds: f64,
}

/// The figures the executor records as runs and commits happen.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    pub(crate) top_peers: usize,
    pub(crate) run_duration: Histogram,
    pub(crate) commit_duration: Histogram,
    /// Decisions of the target's policy: [run allowed, run denied, denied inside the run].
    pub(crate) decisions: [AtomicU64; 3],
    pub(crate) peers: Mutex<HashMap<String, PeerStat>>,
}

fn status_index(s: Status) -> usize {
    match s {
        Status::Ok => 0,
        Status::Error => 1,
        Status::Denied => 2,
        Status::Limit => 3,
        Status::Interrupted => 4,
    }
}

pub const STATUSES: [&str; 5] = ["ok", "error", "denied", "limit", "interrupted"];

impl Metrics {
    /// `enabled = false` records nothing (the counters of [`super::Stats`] still count).
    pub fn new(enabled: bool, top_peers: usize) -> Metrics {
        Metrics {
            enabled,
            top_peers,
            run_duration: Histogram::new(RUN_BUCKETS),
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            decisions: Default::default(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// A run of `peer` ended.
    pub fn run(&self, peer: &str, status: Status, took: Duration) {
        if !self.enabled {
            return;
        }
        let secs = took.as_secs_f64();
        self.run_duration.observe(secs);
        let bucket = RUN_BUCKETS.partition_point(|b| *b < secs);
        let mut peers = self.peers.lock().unwrap();
        let st = match peers.get_mut(peer) {
            Some(s) => s,
            None => peers.entry(peer.to_string()).or_default(),
        };
        st.runs[status_index(status)] += 1;
        st.buckets[bucket] += 1;
        st.seconds += secs;
    }

    /// A commit (with its fsync) took this long.
    pub fn commit(&self, took: Duration) {
        if self.enabled {
            self.commit_duration.observe(took.as_secs_f64());
        }
    }

    /// The target's policy decided whether another peer's script may run.
    pub fn run_decision(&self, allowed: bool) {
        if self.enabled {
            self.decisions[usize::from(!allowed)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An admitted script was denied inside its run (the static check over the
    /// compiled script, or a host call).
    pub fn script_denied(&self) {
        if self.enabled {
            self.decisions[2].fetch_add(1, Ordering::Relaxed);
        }
    }
}
