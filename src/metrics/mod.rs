//! Metrics in the Prometheus text exposition format (version 0.0.4, the format of
//! node_exporter's textfile collector), written with the `prometheus-client` crate.
//!
//! Shown as `MOUNT/.peerfs/metrics` and, with `metrics.listen`, served over HTTP
//! ([`serve`]). The daemon-wide counters are the executor's [`Stats`] read at
//! scrape time; what a counter cannot give (run durations, commit latency, policy
//! decisions, per-peer figures) the executor records as it happens
//! (`crate::exec::metrics`), and this module reads at scrape time.
//!
//! Per-peer series name peers, and both surfaces are open to more than the peers'
//! owners (every user of the mount, every client of the listener), so they are
//! exported only when the operator asks (`metrics.peer_labels`); the daemon-wide
//! series carry no peer label. They are bounded too: every peer's figures are kept
//! (a few dozen bytes each), but only the `top_peers` busiest are exported, so ten
//! thousand peers do not make ten thousand series.

mod http;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::exec::metrics::{Metrics, PeerStat, RUN_BUCKETS, STATUSES};
use crate::exec::{Core, Stats};

pub use http::serve;

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
    if let Some(r) = core.replica() {
        replica(&mut reg, r);
    }
    if core.config().metrics_peer_labels {
        let queue_of: HashMap<&str, u64> = open.iter().map(|p| (&*p.name, p.queued())).collect();
        let peers = top_peers(m, |p| queue_of.get(p).copied().unwrap_or(0));
        reg.register_collector(Box::new(peers));
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}

/// The replica's figures, over every peer (no peer label).
fn replica(reg: &mut Registry, r: &crate::replica::Replica) {
    let st = r.statuses();
    let now = crate::util::now_ns();
    let lag_ns = st
        .values()
        .filter(|s| s.pending_since_ns > 0)
        .map(|s| now - s.pending_since_ns)
        .max()
        .unwrap_or(0)
        .max(0);
    let uploads: u64 = st.values().map(|s| s.uploads).sum();
    let bytes: u64 = st.values().map(|s| s.bytes).sum();
    let failing = st.values().filter(|s| s.last_error.is_some()).count();
    reg.register(
        "replica_uploads",
        "Objects stored in the replica (snapshots and log segments)",
        ConstCounter::new(uploads),
    );
    reg.register_with_unit(
        "replica_uploaded",
        "Bytes stored in the replica",
        Unit::Bytes,
        ConstCounter::new(bytes),
    );
    reg.register_with_unit(
        "replica_lag",
        "How long the oldest change not yet in the replica has waited",
        Unit::Seconds,
        ConstGauge::new(lag_ns as f64 / 1e9),
    );
    reg.register(
        "replica_failing_peers",
        "Peers whose last upload failed",
        ConstGauge::new(failing as i64),
    );
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
