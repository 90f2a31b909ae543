//! What `peerfs top` shows, computed from two readings of `.peerfs/metrics`: plain
//! Rust, tested without a terminal.
//!
//! The reader takes only the exposition peerfs itself writes (`name{k="v",...}
//! value` lines, label values without quotes or commas: peer names cannot have
//! them), so a few lines of parsing do instead of a parser crate in the binary.

use std::collections::BTreeMap;

/// One reading: `(name, sorted labels) -> value`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading(pub BTreeMap<(String, Vec<(String, String)>), f64>);

impl Reading {
    pub fn parse(text: &str) -> Reading {
        let mut m = BTreeMap::new();
        for l in text.lines() {
            if l.starts_with('#') || l.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>().or_else(|e| match value {
                "+Inf" => Ok(f64::INFINITY),
                _ => Err(e),
            }) else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let mut ls: Vec<(String, String)> = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                        .collect();
                    ls.sort();
                    (n.to_string(), ls)
                }
                None => (series.to_string(), Vec::new()),
            };
            m.insert((name, labels), v);
        }
        Reading(m)
    }

    /// The value of `name` with exactly these labels (0 when absent).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut ls: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ls.sort();
        self.0.get(&(name.to_string(), ls)).copied().unwrap_or(0.0)
    }

    /// The sum of `name` over every series whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, ls), _)| n == name && has(ls, with))
            .map(|(_, v)| v)
            .sum()
    }

    /// The peers with per-peer series.
    pub fn peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .keys()
            .filter(|(n, _)| n == "peerfs_peer_runs_total")
            .filter_map(|(_, ls)| ls.iter().find(|(k, _)| k == "peer").map(|(_, v)| v.clone()))
            .collect();
        v.dedup();
        v
    }

    /// `(upper bound, cumulative count)` of a histogram's buckets, sorted.
    fn buckets(&self, name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut b: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|((n, ls), _)| *n == bucket && has(ls, with))
            .filter_map(|((_, ls), v)| {
                let le = ls.iter().find(|(k, _)| k == "le")?;
                let le = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
        b
    }
}

fn has(ls: &[(String, String)], with: &[(&str, &str)]) -> bool {
    with.iter()
        .all(|(k, v)| ls.iter().any(|(a, b)| a == k && b == v))
}

/// The `q` quantile of cumulative buckets, interpolated within its bucket as
/// Prometheus' `histogram_quantile` does; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, c);
    }
    Some(prev.0)
}

/// One row of the peer table.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub peer: String,
    pub runs_per_s: f64,
    pub runs: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub queued: u64,
    pub denied: u64,
    pub limit: u64,
    pub errors: u64,
}

/// The daemon-wide line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub runs_per_s: f64,
    pub runs: u64,
    pub commits_per_s: f64,
    pub commit_p99: Option<f64>,
    pub queued: u64,
    pub open_peers: u64,
    pub peers: u64,
    pub denials: u64,
    pub memory_bytes: u64,
}

/// What the screen shows: rates from `prev` to `now` over `secs` seconds, peers
/// busiest first (runs/s, then runs, then name).
pub fn view(prev: Option<&Reading>, now: &Reading, secs: f64) -> (Summary, Vec<PeerRow>) {
    let rate = |name: &str, with: &[(&str, &str)]| -> f64 {
        match prev {
            Some(p) if secs > 0.0 => ((now.sum(name, with) - p.sum(name, with)) / secs).max(0.0),
            _ => 0.0,
        }
    };
    let runs = "peerfs_runs_total";
    let summary = Summary {
        runs_per_s: rate(runs, &[]),
        runs: now.sum(runs, &[]) as u64,
        commits_per_s: rate("peerfs_commits_total", &[]),
        commit_p99: quantile(&now.buckets("peerfs_commit_duration_seconds", &[]), 0.99),
        queued: now.get("peerfs_queue_depth", &[]) as u64,
        open_peers: now.get("peerfs_open_peers", &[]) as u64,
        peers: now.get("peerfs_peers", &[]) as u64,
        denials: now.sum(runs, &[("status", "denied")]) as u64,
        memory_bytes: now.get("peerfs_resident_memory_bytes", &[]) as u64,
    };
    let pr = "peerfs_peer_runs_total";
    let mut rows: Vec<PeerRow> = now
        .peers()
        .into_iter()
        .map(|peer| {
            let p: &[(&str, &str)] = &[("peer", &peer)];
            let st = |s: &str| now.sum(pr, &[("peer", &peer), ("status", s)]) as u64;
            let b = now.buckets("peerfs_peer_run_duration_seconds", p);
            PeerRow {
                runs_per_s: rate(pr, p),
                runs: now.sum(pr, p) as u64,
                p50: quantile(&b, 0.5),
                p99: quantile(&b, 0.99),
                queued: now.get("peerfs_peer_queue_depth", p) as u64,
                denied: st("denied"),
                limit: st("limit"),
                errors: st("error"),
                peer,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.runs_per_s
            .total_cmp(&a.runs_per_s)
            .then(b.runs.cmp(&a.runs))
            .then(a.peer.cmp(&b.peer))
    });
    (summary, rows)
}

/// `250µs`, `3.2ms`, `1.50s`; `-` for none.
pub fn duration(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x y\n\
peerfs_runs_total{status=\"ok\"} 10\n\
peerfs_runs_total{status=\"denied\"} 2\n\
peerfs_peer_runs_total{peer=\"a\",status=\"ok\"} 4\n\
peerfs_peer_runs_total{peer=\"b\",status=\"ok\"} 6\n\
peerfs_peer_runs_total{peer=\"b\",status=\"denied\"} 2\n\
peerfs_peer_run_duration_seconds_bucket{peer=\"a\",le=\"0.001\"} 2\n\
peerfs_peer_run_duration_seconds_bucket{peer=\"a\",le=\"0.01\"} 4\n\
peerfs_peer_run_duration_seconds_bucket{peer=\"a\",le=\"+Inf\"} 4\n\
peerfs_peer_queue_depth{peer=\"b\"} 3\n\
peerfs_open_peers 2\n";

    #[test]
    fn rates_sorting_and_quantiles() {
        let a = Reading::parse(A);
        let b = Reading::parse(&A.replace(
            "{peer=\"a\",status=\"ok\"} 4",
            "{peer=\"a\",status=\"ok\"} 24",
        ));
        let (s, rows) = view(Some(&a), &b, 2.0);
        assert_eq!(s.open_peers, 2);
        assert_eq!(s.denials, 2);
        // a went from 4 to 24 runs in 2 s: the busiest now, though b has more queued.
        assert_eq!(rows[0].peer, "a");
        assert_eq!(rows[0].runs_per_s, 10.0);
        assert_eq!(rows[1].peer, "b");
        assert_eq!((rows[1].queued, rows[1].denied, rows[1].runs), (3, 2, 8));
        // Half of a's runs took at most 1 ms: p50 is the first bucket's top.
        assert_eq!(rows[0].p50, Some(0.001));
        let p99 = rows[0].p99.unwrap();
        assert!(p99 > 0.009 && p99 <= 0.01, "{p99}");
        assert_eq!(rows[1].p50, None);
        // With no earlier reading, no rates: the most runs come first.
        let (s, rows) = view(None, &a, 1.0);
        assert_eq!(s.runs_per_s, 0.0);
        assert_eq!(rows[0].peer, "b");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(0.00025)), "250µs");
        assert_eq!(duration(Some(0.0032)), "3.2ms");
        assert_eq!(duration(Some(1.5)), "1.50s");
    }
}
