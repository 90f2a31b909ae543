//! What the benchmarks that drive writer threads or mounts share (`bench_mount`,
//! `bench_spool`, `bench_intake`).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Writer threads in the throughput loops. Each drives its own peer (`w0`..`w3`):
/// a peer is a serial actor, so one peer per writer is the design's parallelism
/// (four owners at work), and is the fair match for bindfs's four independent
/// directories. A single shared peer serializes every run on one actor (its group
/// commit batches the writers instead: `PEERFS_BENCH_SHARED_PEER=1` measures that;
/// it was within the noise of this choice on this 2-core machine).
pub const WRITERS: usize = 4;

/// A result of `1 + 2` that ran fine.
pub fn check_ok(path: &Path, bytes: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {bytes:?}", path.display()));
    assert!(
        v["status"] == "ok" && v["value"] == 3,
        "{}: {v}",
        path.display()
    );
}

/// Runs `work(writer)` on WRITERS threads started together; returns the wall time.
pub fn timed_writers(work: impl Fn(usize) + Send + Sync + 'static) -> Duration {
    let work = Arc::new(work);
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (work, barrier) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                work(w)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for t in threads {
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
    }
    start.elapsed()
}

/// A fresh folder name for this run (`run-<unix seconds>-<pid>`).
pub fn run_id() -> String {
    format!(
        "run-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        std::process::id()
    )
}

/// `PEERFS_BENCH_VERBOSE=1`: each round's figures on stderr.
pub fn verbose() -> bool {
    std::env::var("PEERFS_BENCH_VERBOSE").as_deref() == Ok("1")
}

pub fn is_mounted(path: &Path) -> bool {
    // A mount whose daemon died cannot be canonicalized (ENOTCONN): use the path.
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*canon.to_string_lossy()))
}

/// Unmounts `path` (lazily if it is busy), if it is mounted.
pub fn fusermount_u(path: &Path) {
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}
