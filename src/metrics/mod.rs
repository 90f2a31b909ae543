//! Metrics in the Prometheus text exposition format (version 0.0.4, the format of
//! node_exporter's textfile collector), written with the `prometheus-client` crate.
//!
//! Shown as `MOUNT/.peerfs/metrics` and, with `metrics.listen`, served over HTTP
//! ([`serve`]). The daemon-wide counters are the executor's [`Stats`] read at
//! scrape time; what a counter cannot give (run durations, commit latency, policy
//! decisions, per-peer figures) is recorded here as it happens.
//!
//! Per-peer series are bounded: every peer's figures are kept (a few dozen bytes
//! each), but only the `top_peers` busiest are exported, so ten thousand peers do
//! not make ten thousand series.

mod http;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::exec::{Core, Stats};
use crate::script::Status;

pub use http::serve;

/// Upper bounds (seconds) of the run duration buckets: 50 µs to 10 s.
const RUN_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0,
];
/// Upper bounds (seconds) of the commit (fsync) latency buckets: 20 µs to 1 s.
const COMMIT_BUCKETS: [f64; 11] = [
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0,
];

/// What one peer did since the daemon started.
#[derive(Debug, Clone, Default)]
struct PeerStat {
    runs: [u64; 5],
    /// Counts per [`RUN_BUCKETS`] bucket (not cumulative), and past the last.
    buckets: [u64; RUN_BUCKETS.len() + 1],
    seconds: f64,
}

/// The figures the executor records as runs and commits happen.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    top_peers: usize,
    run_duration: Histogram,
    commit_duration: Histogram,
    /// Decisions of the target's policy: [run allowed, run denied, denied inside the run].
    decisions: [AtomicU64; 3],
    peers: Mutex<HashMap<String, PeerStat>>,
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

const STATUSES: [&str; 5] = ["ok", "error", "denied", "limit", "interrupted"];

impl Metrics {
    /// `enabled = false` records nothing (the counters of [`Stats`] still count).
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

/// `name value` in the Prometheus text format, for the mount's `.peerfs/metrics`
/// and `GET /metrics`.
pub fn text(core: &Core) -> String {
    let mut reg = Registry::with_prefix("peerfs");
    let s = core.stats();
    let m = core.metrics();
    let c = |a: &AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    reg.register(
        "submissions",
        "Scripts submitted (inboxes and sends)",
        c(&s.submissions),
    );
    reg.register_collector(Box::new(RunsByStatus::from(s)));
    reg.register(
        "runs_gave_way",
        "Runs started inside a write transaction that gave way and ran again from the queue",
        c(&s.runs_gave_way),
    );
    reg.register_with_unit(
        "run_duration",
        "How long runs took",
        Unit::Seconds,
        m.run_duration.clone(),
    );
    reg.register("commits", "Store transactions committed", c(&s.commits));
    reg.register_with_unit(
        "commit_duration",
        "How long a commit took, fsync included",
        Unit::Seconds,
        m.commit_duration.clone(),
    );
    reg.register(
        "messages_delivered",
        "Messages (sends and results) delivered to their target",
        c(&s.messages_delivered),
    );
    reg.register(
        "writes",
        "File writes applied (state, modules, policy)",
        c(&s.writes),
    );
    reg.register_collector(Box::new(Decisions(
        m.decisions.each_ref().map(|a| a.load(Ordering::Relaxed)),
    )));
    let open = core.registry().open_peers();
    let queued: u64 = open.iter().map(|p| p.queued()).sum();
    let g = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(
        "peers",
        "Peers in the data folder",
        g(core.registry().len() as u64),
    );
    reg.register("open_peers", "Peers open now", g(open.len() as u64));
    reg.register(
        "queue_depth",
        "Scripts queued at the open peers, not yet run",
        g(queued),
    );
    reg.register(
        "script_cache_entries",
        "Compiled scripts and modules in the cache",
        g(core.cache().len() as u64),
    );
    reg.register_with_unit(
        "resident_memory",
        "Resident memory of the daemon",
        Unit::Bytes,
        g(rss_bytes()),
    );
    let queue_of: HashMap<&str, u64> = open.iter().map(|p| (&*p.name, p.queued())).collect();
    let peers = top_peers(m, |p| queue_of.get(p).copied().unwrap_or(0));
    reg.register_collector(Box::new(peers));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}

/// Resident memory of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64)
}

#[derive(Debug)]
struct RunsByStatus([u64; 5]);

impl From<&Stats> for RunsByStatus {
    fn from(s: &Stats) -> RunsByStatus {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // The executor counts interrupted runs with the errors.
        RunsByStatus([
            g(&s.runs_ok),
            g(&s.runs_error),
            g(&s.runs_denied),
            g(&s.runs_limit),
            0,
        ])
    }
}

impl Collector for RunsByStatus {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m =
            enc.encode_descriptor("runs", "Runs ended, by status", None, MetricType::Counter)?;
        for (st, v) in STATUSES.iter().zip(self.0).take(4) {
            ConstCounter::new(v).encode(m.encode_family(&[("status", *st)])?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Decisions([u64; 3]);

impl Collector for Decisions {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "policy_decisions",
            "Policy decisions about other peers' scripts: at run, and inside the run (static check, host calls)",
            None,
            MetricType::Counter,
        )?;
        let labels = [
            [("stage", "run"), ("outcome", "allow")],
            [("stage", "run"), ("outcome", "deny")],
            [("stage", "script"), ("outcome", "deny")],
        ];
        for (l, v) in labels.iter().zip(self.0) {
            ConstCounter::new(v).encode(m.encode_family(l)?)?;
        }
        Ok(())
    }
}

/// The busiest peers' figures at scrape time.
#[derive(Debug)]
struct TopPeers(Vec<(String, PeerStat, u64)>);

fn top_peers(m: &Metrics, queued: impl Fn(&str) -> u64) -> TopPeers {
    let peers = m.peers.lock().unwrap();
    let mut v: Vec<(&String, &PeerStat)> = peers.iter().collect();
    let total = |s: &PeerStat| s.runs.iter().sum::<u64>();
    v.sort_by(|a, b| total(b.1).cmp(&total(a.1)).then(a.0.cmp(b.0)));
    v.truncate(m.top_peers);
    TopPeers(
        v.into_iter()
            .map(|(n, s)| (n.clone(), s.clone(), queued(n)))
            .collect(),
    )
}

impl Collector for TopPeers {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "peer_runs",
            "Runs of the busiest peers (metrics.top_peers of them), by status",
            None,
            MetricType::Counter,
        )?;
        for (peer, s, _) in &self.0 {
            for (st, v) in STATUSES.iter().zip(s.runs) {
                let l = [("peer", peer.as_str()), ("status", st)];
                ConstCounter::new(v).encode(m.encode_family(&l)?)?;
            }
        }
        let unit = Unit::Seconds;
        let mut m = enc.encode_descriptor(
            "peer_run_duration",
            "How long the busiest peers' runs took",
            Some(&unit),
            MetricType::Histogram,
        )?;
        for (peer, s, _) in &self.0 {
            // Counts per bucket: the encoder sums them up and adds `+Inf`.
            let buckets: Vec<(f64, u64)> = RUN_BUCKETS.iter().copied().zip(s.buckets).collect();
            let count: u64 = s.buckets.iter().sum();
            let l = [("peer", peer.as_str())];
            m.encode_family(&l)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    s.seconds, count, &buckets, None,
                )?;
        }
        let mut m = enc.encode_descriptor(
            "peer_queue_depth",
            "Scripts queued at the busiest peers",
            None,
            MetricType::Gauge,
        )?;
        for (peer, _, q) in &self.0 {
            let v = i64::try_from(*q).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(m.encode_family(&[("peer", peer.as_str())])?)?;
        }
        Ok(())
    }
}
