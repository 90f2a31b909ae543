//! Metrics: `.peerfs/metrics` parsed by a Prometheus text parser (the
//! `prometheus-parse` crate) with the values the runs must have produced; per-peer
//! series only when asked for (`metrics.peer_labels`) and bounded to the busiest
//! peers; `--metrics-listen` serving the same over HTTP; `--log-format json`.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use peerfs::exec::{Config, Core};
use prometheus_parse::{Sample, Scrape, Value};

/// Parses the text strictly: every line that is not a comment must become a
/// sample (the parser skips what it does not understand, so count them).
fn parse(text: &str) -> Scrape {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let lines: Vec<&str> = text.lines().collect();
    let data_lines = lines
        .iter()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    for l in &lines {
        if let Some(rest) = l.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "a comment line Prometheus 0.0.4 does not know: {l}"
            );
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            // A histogram sample holds its bucket lines (its _sum and _count lines
            // are samples of their own).
            Value::Histogram(b) => b.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, data_lines, "lines the parser did not take:\n{text}");
    scrape
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match &find(s, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape"))
        .value
    {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        v => panic!("{name} is not a plain value: {v:?}"),
    }
}

/// (count of +Inf bucket, every bucket count non-decreasing) of a histogram.
fn histogram_count(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Value::Histogram(b) = &find(s, name, labels)
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"))
        .value
    else {
        panic!("{name} is not a histogram")
    };
    let mut last = 0.0;
    for h in b {
        assert!(h.count >= last, "{name}: buckets must be cumulative: {b:?}");
        last = h.count;
    }
    let inf = b
        .iter()
        .find(|h| h.less_than.is_infinite())
        .expect("+Inf bucket");
    inf.count
}

#[test]
fn the_metrics_file_parses_and_counts_what_happened() {
    let m = Mounted::with(
        |c| c.metrics_peer_labels = true,
        peerfs::fuse::MountOptions::default(),
    );
    m.add_peer("alice");
    m.add_peer("bob");
    m.add_peer("mallory");
    std::fs::write(
        m.p("bob/policy.cedar"),
        "permit(principal == Peer::\"alice\", action == Action::\"run\", resource);\n",
    )
    .unwrap();
    for i in 0..3 {
        m.run_ok("alice", &format!("ok{i}.rhai"), "1 + 1");
    }
    assert_eq!(m.run("alice", "err.rhai", "throw 1")["status"], "error");
    assert_eq!(m.run("alice", "lim.rhai", "loop {}")["status"], "limit");
    // Admitted by bob's policy, then denied a write: a denial inside the run.
    let r = m.run_in("alice/peers/bob", "w.rhai", "set(\"x\", 1)");
    assert_eq!(r["status"], "denied", "{r}");
    let r = m.run_in("alice/peers/bob", "r.rhai", "40 + 2");
    assert_eq!(r["status"], "ok", "{r}");
    let r = m.run_in("mallory/peers/bob", "no.rhai", "1");
    assert_eq!(r["status"], "denied", "{r}");

    let names: Vec<String> = std::fs::read_dir(m.p(".peerfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"metrics".to_string()), "{names:?}");
    let text = std::fs::read_to_string(m.p(".peerfs/metrics")).unwrap();
    let s = parse(&text);

    assert_eq!(
        value(&s, "peerfs_runs_total", &[("status", "ok")]),
        4.0,
        "{text}"
    );
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "error")]), 1.0);
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "limit")]), 1.0);
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "denied")]), 2.0);
    assert_eq!(value(&s, "peerfs_submissions_total", &[]), 8.0);
    let d = |stage, outcome| {
        value(
            &s,
            "peerfs_policy_decisions_total",
            &[("stage", stage), ("outcome", outcome)],
        )
    };
    assert_eq!(d("run", "allow"), 2.0);
    assert_eq!(d("run", "deny"), 1.0);
    assert_eq!(d("script", "deny"), 1.0);
    assert_eq!(histogram_count(&s, "peerfs_run_duration_seconds", &[]), 8.0);
    let commits = value(&s, "peerfs_commits_total", &[]);
    assert!(commits >= 8.0, "every submission commits: {commits}");
    assert_eq!(
        histogram_count(&s, "peerfs_commit_duration_seconds", &[]),
        commits,
        "every commit is timed"
    );
    assert_eq!(value(&s, "peerfs_peers", &[]), 3.0);
    assert!(value(&s, "peerfs_open_peers", &[]) >= 1.0);
    assert_eq!(value(&s, "peerfs_queue_depth", &[]), 0.0);
    let rss = value(&s, "peerfs_resident_memory_bytes", &[]);
    assert!(rss > 1e6, "resident memory {rss}");
    // Per peer: alice ran 5 of her own, bob 4 from others.
    let p = |peer, st| {
        value(
            &s,
            "peerfs_peer_runs_total",
            &[("peer", peer), ("status", st)],
        )
    };
    assert_eq!(p("alice", "ok"), 3.0);
    assert_eq!(p("alice", "limit"), 1.0);
    assert_eq!(p("bob", "denied"), 2.0);
    assert_eq!(p("bob", "ok"), 1.0);
    assert_eq!(
        histogram_count(&s, "peerfs_peer_run_duration_seconds", &[("peer", "alice")]),
        5.0
    );
    assert_eq!(
        value(&s, "peerfs_peer_queue_depth", &[("peer", "bob")]),
        0.0
    );
    assert!(
        s.docs.contains_key("peerfs_runs_total"),
        "HELP lines: {:?}",
        s.docs.keys()
    );
}

#[test]
fn per_peer_series_are_bounded_to_the_busiest() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.runners = 2;
    cfg.metrics_top_peers = 3;
    cfg.metrics_peer_labels = true;
    let c = Core::start(cfg).unwrap();
    for i in 0..8 {
        let name = format!("p{i}");
        c.create_peer(&name, uid(), gid()).unwrap();
        for j in 0..=i {
            c.run(&name, &format!("j{j}.rhai"), "1").unwrap();
        }
    }
    let s = parse(&peerfs::metrics::text(&c));
    let mut peers: Vec<String> = s
        .samples
        .iter()
        .filter(|x| x.metric == "peerfs_peer_runs_total")
        .map(|x| x.labels.get("peer").unwrap().to_string())
        .collect();
    peers.sort();
    peers.dedup();
    assert_eq!(peers, ["p5", "p6", "p7"], "only the three busiest");
    assert_eq!(
        value(
            &s,
            "peerfs_peer_runs_total",
            &[("peer", "p7"), ("status", "ok")]
        ),
        8.0
    );
    // The daemon-wide figures still count every peer.
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "ok")]), 36.0);
    c.shutdown();

    // metrics.enabled = false records no durations or per-peer figures; the
    // plain counters still count.
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.metrics = false;
    cfg.metrics_peer_labels = true;
    let c = Core::start(cfg).unwrap();
    c.create_peer("a", uid(), gid()).unwrap();
    c.run("a", "x.rhai", "1").unwrap();
    let s = parse(&peerfs::metrics::text(&c));
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "ok")]), 1.0);
    assert_eq!(histogram_count(&s, "peerfs_run_duration_seconds", &[]), 0.0);
    assert!(find(&s, "peerfs_peer_runs_total", &[]).is_none());
    c.shutdown();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> (String, HashMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[test]
fn the_http_listener_serves_the_same_metrics_and_logs_can_be_json() {
    let (_dir, data, mnt, work) = dirs();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(
        &data,
        &mnt,
        &work,
        &[
            "--metrics-listen",
            &addr,
            "--log-format",
            "json",
            "-o",
            "metrics.peer_labels=true",
        ],
    );
    d.add_peer("alice");
    d.run_ok("alice", "a.rhai", "1");
    d.run_ok("alice", "b.rhai", "2");
    let (status, headers, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    assert_eq!(headers["content-length"], body.len().to_string());
    let s = parse(&body);
    assert_eq!(value(&s, "peerfs_runs_total", &[("status", "ok")]), 2.0);
    assert_eq!(
        value(
            &s,
            "peerfs_peer_runs_total",
            &[("peer", "alice"), ("status", "ok")]
        ),
        2.0
    );
    // The file on the mount says the same.
    let f = parse(&std::fs::read_to_string(d.p(".peerfs/metrics")).unwrap());
    assert_eq!(value(&f, "peerfs_runs_total", &[("status", "ok")]), 2.0);
    let (status, _, _) = http_get(port, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Every log line is one JSON object with a level and the message.
    let log = d.log_text();
    let mut mounted = false;
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
        mounted |= v["fields"]["message"] == "peerfs mounted";
    }
    assert!(mounted, "the mount's start is logged:\n{log}");
    assert!(
        log.contains("serving metrics at http://127.0.0.1:"),
        "{log}"
    );
}

#[test]
fn a_taken_metrics_address_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .arg("mount")
        .arg(dir.path().join("mnt"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--metrics-listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("metrics.listen"),
        "{err}"
    );
    assert!(!is_mounted(&dir.path().join("mnt")));
}

/// Both surfaces are open to more than the peers' owners (every user of the mount,
/// every client of the listener): by default they name no peer, and still count
/// every run daemon-wide.
#[test]
fn by_default_neither_surface_names_a_peer() {
    let (_dir, data, mnt, work) = dirs();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&data, &mnt, &work, &["--metrics-listen", &addr]);
    d.add_peer("alice");
    d.add_peer("bobbity");
    d.run_ok("alice", "a.rhai", "1");
    d.run_ok("bobbity", "b.rhai", "2");
    let (status, _, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let file = std::fs::read_to_string(d.p(".peerfs/metrics")).unwrap();
    for text in [&body, &file] {
        let s = parse(text);
        assert_eq!(value(&s, "peerfs_runs_total", &[("status", "ok")]), 2.0);
        assert_eq!(histogram_count(&s, "peerfs_run_duration_seconds", &[]), 2.0);
        assert!(
            !text.contains("alice") && !text.contains("bobbity"),
            "{text}"
        );
        assert!(
            !text.contains("peer=") && !text.contains("peerfs_peer_"),
            "{text}"
        );
    }
}

/// A daemon serving metrics on a free loopback port.
fn listening() -> (tempfile::TempDir, Daemon, u16) {
    let (dir, data, mnt, work) = dirs();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&data, &mnt, &work, &["--metrics-listen", &addr]);
    (dir, d, port)
}

/// Whether a scrape on a fresh connection is answered 200 with the metrics.
fn scrape_ok(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    resp.starts_with("HTTP/1.1 200 OK") && resp.contains("peerfs_runs_total")
}

/// The daemon's resident memory, from `/proc/PID/status`.
fn rss_bytes_of(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

fn cut_off(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

#[test]
fn a_request_line_without_end_is_cut_off_and_memory_stays_bounded() {
    let (_dir, d, port) = listening();
    assert!(scrape_ok(port));
    let before = rss_bytes_of(d.pid());
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /").unwrap();
    // 64 MiB of one request line, no newline, as fast as the daemon takes it.
    let chunk = vec![b'a'; 1 << 20];
    let mut refused = None;
    for _ in 0..64 {
        if let Err(e) = s.write_all(&chunk) {
            refused = Some(e);
            break;
        }
    }
    let after = rss_bytes_of(d.pid());
    match refused {
        Some(e) => assert!(cut_off(&e), "the write failed, but not by a close: {e}"),
        None => panic!("the daemon read a 64 MiB request line"),
    }
    assert!(
        after < before + (32 << 20),
        "resident memory grew from {before} to {after} bytes"
    );
    drop(s);
    assert!(scrape_ok(port), "a scrape after is answered");
}

#[test]
fn a_slow_client_does_not_hold_up_a_scrape_and_is_cut_off() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (_dir, _d, port) = listening();
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = {
        let sent = sent.clone();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // One byte every 2 s, for at most a minute: returns how it ended.
        std::thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
                .iter()
                .cycle()
                .take(30)
            {
                if let Err(e) = s.write_all(&[*b]) {
                    return Some(e);
                }
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(2));
            }
            None
        })
    };
    assert!(wait_until(Duration::from_secs(10), || sent
        .load(Ordering::SeqCst)
        >= 2));
    assert!(
        scrape_ok(port),
        "a scrape is answered while the slow client sends"
    );
    assert!(!slow.is_finished(), "the slow client was still connected");
    match slow.join().unwrap() {
        Some(e) => assert!(cut_off(&e), "{e}"),
        None => panic!("the slow client was never cut off"),
    }
    assert!(scrape_ok(port));
}

#[test]
fn a_flood_of_connections_is_turned_away_and_scrapes_go_on() {
    let (_dir, mut d, port) = listening();
    // Held open, sending nothing, far more than the daemon serves at once.
    let flood: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The excess is closed at once, the rest when their head is overdue: a scrape
    // is answered while the flood's sockets are all still open.
    assert!(
        wait_until(Duration::from_secs(60), || scrape_ok(port)),
        "no scrape answered while the flood held its connections"
    );
    let alive = d.child.as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(alive, "the daemon is still running");
    let text = std::fs::read_to_string(d.p(".peerfs/metrics")).unwrap();
    assert!(text.contains("peerfs_runs_total"));
    drop(flood);
    assert!(scrape_ok(port));
}
