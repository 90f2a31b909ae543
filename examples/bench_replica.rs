//! `scripts-ci/bench replica`: what replicas in object storage cost, against an
//! S3 server on loopback (moto's server mode, started here), in the same run:
//!
//! - `replica.drop_result_ratio`: drops whose result is read back (`cp` then
//!   `cat`, one at a time), per second, with an async replica over without one;
//!   two daemons mounted side by side, rounds alternating which goes first
//!   (the median of the rounds' ratios; the goal is ≥ 0.95).
//! - `replica.lag_ms.p99`: 100 peers taking drops at `RATE` runs/s in all for
//!   `LAG_SECS` s; every 50 ms the largest `lag_ms` in `.peerfs/replica` (the
//!   oldest change not yet stored, over every peer); the p99 of those (the goal
//!   is ≤ 1500 ms with `sync_ms` 1000). `replica.lag_runs_per_s` is the rate
//!   the drivers reached.
//! - `replica.restore_vs_download_ratio`: restoring a peer of ~100 MB
//!   (`peerfs::replica::restore`) over downloading the same objects from the same
//!   server with the same client (`object_store`); the goal is ≤ 3.
//!
//! Files live under `$PEERFS_BENCH_DIR/replica`; this run's folder is removed at
//! the end. `PEERFS_BENCH_VERBOSE=1` prints every round on stderr.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod bench_support;
use bench_support::{fusermount_u, verbose};

const ROUNDS: usize = 12;
const DROPS: usize = 100;
const PEERS: usize = 100;
const RATE: u64 = 1000;
const LAG_SECS: u64 = 10;
const BIG_VALUES: usize = 100;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server with the bucket `bench`; killed by pid on drop.
struct Moto(Child, u16);

impl Moto {
    fn start(log: &Path) -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("python3 -m moto.server (scripts-ci/setup installs moto[server])");
        let m = Moto(child, port);
        let end = Instant::now() + Duration::from_secs(30);
        while !m.make_bucket() {
            assert!(Instant::now() < end, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn make_bucket(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.1)) else {
            return false;
        };
        let req = format!(
            "PUT /bench HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.1
        );
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// `peerfs mount` as a child process, unmounted and reaped on drop.
struct Mount {
    child: Child,
    mnt: PathBuf,
}

impl Mount {
    fn start(dir: &Path, name: &str, replica: Option<(&Moto, &str)>) -> Mount {
        let (data, mnt) = (
            dir.join(format!("{name}-data")),
            dir.join(format!("{name}-mnt")),
        );
        std::fs::create_dir_all(&mnt).unwrap();
        let mut cmd = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/peerfs"
        ));
        cmd.arg("mount").arg(&mnt).arg("--data").arg(&data);
        if let Some((m, prefix)) = replica {
            cmd.args(["-o", &format!("replica.url=s3://bench/{prefix}")])
                .args(["-o", &format!("replica.endpoint={}", m.endpoint())])
                .env("AWS_ACCESS_KEY_ID", "bench")
                .env("AWS_SECRET_ACCESS_KEY", "bench")
                .env("AWS_REGION", "us-east-1");
        }
        let child = cmd
            .env("RUST_LOG", "peerfs=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while std::fs::read(mnt.join(".peerfs/version")).is_err() {
            assert!(
                Instant::now() < end,
                "peerfs did not mount at {}",
                mnt.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mount { child, mnt }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn stop(mut self) {
        fusermount_u(&self.mnt);
        let _ = self.child.wait();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        fusermount_u(&self.mnt);
        let _ = self.child.wait();
    }
}

/// `DROPS` drops at `peer`, each result read back; drops per second.
fn drop_round(m: &Mount, peer: &str, round: usize) -> f64 {
    let t = Instant::now();
    for i in 0..DROPS {
        std::fs::write(m.p(&format!("{peer}/inbox/r{round}-{i}.rhai")), "1 + 2").unwrap();
        let out = m.p(&format!("{peer}/outbox/r{round}-{i}.json"));
        bench_support::check_ok(&out, &std::fs::read(&out).unwrap());
    }
    DROPS as f64 / t.elapsed().as_secs_f64()
}

fn drop_result_ratio(dir: &Path, moto: &Moto) {
    let (plain, rep) = (
        Mount::start(dir, "plain", None),
        Mount::start(dir, "rep", Some((moto, "ratio"))),
    );
    for m in [&plain, &rep] {
        std::fs::create_dir(m.p("alice")).unwrap();
        drop_round(m, "alice", 999);
    }
    let mut ratios = Vec::new();
    for r in 0..ROUNDS {
        // Which goes first alternates: a burst of load from elsewhere on the
        // machine falls on either.
        let (a, b) = if r % 2 == 0 {
            let a = drop_round(&plain, "alice", r);
            (a, drop_round(&rep, "alice", r))
        } else {
            let b = drop_round(&rep, "alice", r);
            (drop_round(&plain, "alice", r), b)
        };
        if verbose() {
            eprintln!("round {r}: none {a:.0}/s, replica {b:.0}/s");
        }
        ratios.push(b / a);
    }
    ratios.sort_by(f64::total_cmp);
    println!("replica.drop_result_ratio: {:.3}", ratios[ROUNDS / 2]);
    plain.stop();
    rep.stop();
}

/// The largest `lag_ms` in `.peerfs/replica` now.
fn max_lag(m: &Mount) -> u64 {
    let text = std::fs::read_to_string(m.p(".peerfs/replica")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("lag_ms="))
        .filter_map(|v| v.parse().ok())
        .max()
        .unwrap_or(0)
}

fn lag(dir: &Path, moto: &Moto) {
    let m = Arc::new(Mount::start(dir, "lag", Some((moto, "lag"))));
    for i in 0..PEERS {
        std::fs::create_dir(m.p(&format!("p{i}"))).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let drivers: Vec<_> = (0..4)
        .map(|w| {
            let (m, stop, done) = (m.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Paced: this driver's share of RATE.
                    let due = start + Duration::from_micros(n * 4_000_000 / RATE);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let peer = w + 4 * (n as usize % (PEERS / 4));
                    std::fs::write(m.p(&format!("p{peer}/inbox/d{w}-{n}.rhai")), "1 + 2").unwrap();
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t = Instant::now();
    let mut samples = Vec::new();
    while t.elapsed() < Duration::from_secs(LAG_SECS) {
        std::thread::sleep(Duration::from_millis(50));
        samples.push(max_lag(&m));
    }
    stop.store(true, Ordering::Relaxed);
    for d in drivers {
        d.join().unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    samples.sort();
    println!(
        "replica.lag_ms.p99: {} ms",
        samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
    );
    println!("replica.lag_runs_per_s: {rate:.0}");
    match Arc::try_unwrap(m) {
        Ok(m) => m.stop(),
        Err(_) => unreachable!("the drivers ended"),
    }
}

fn restore_ratio(dir: &Path, moto: &Moto) {
    let m = Mount::start(dir, "big", Some((moto, "big")));
    std::fs::create_dir(m.p("big")).unwrap();
    let value: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for i in 0..BIG_VALUES {
        std::fs::write(m.p(&format!("big/state/v{i}")), &value).unwrap();
    }
    m.stop();
    let mut o =
        peerfs::replica::Options::new(peerfs::replica::Url::parse("s3://bench/big").unwrap());
    o.endpoint = Some(moto.endpoint());
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
    std::env::set_var("AWS_REGION", "us-east-1");
    let t = Instant::now();
    let r = peerfs::replica::restore(&peerfs::replica::RestoreArgs {
        name: "big".into(),
        opts: o.clone(),
        at: None,
        data: dir.join("restored"),
        force: false,
    })
    .unwrap();
    let restore = t.elapsed();
    let bytes = std::fs::metadata(&r.path).unwrap().len();
    let t = Instant::now();
    let got = peerfs::replica::download_generation(&o, "big", &r.generation).unwrap();
    let download = t.elapsed();
    if verbose() {
        eprintln!("restore of {bytes} bytes: {restore:?}; download of {got} bytes: {download:?}");
    }
    println!("replica.restored_bytes: {bytes}");
    println!(
        "replica.restore_vs_download_ratio: {:.2}",
        restore.as_secs_f64() / download.as_secs_f64()
    );
}

fn main() {
    let root = std::env::var_os("PEERFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")))
        .join("replica");
    let dir = root.join(bench_support::run_id());
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("bench_replica: still running after 10 minutes: unmounting and failing");
        for n in ["plain", "rep", "lag", "big"] {
            fusermount_u(&d.join(format!("{n}-mnt")));
        }
        std::process::exit(2);
    });
    let moto = Moto::start(&dir.join("moto.log"));
    drop_result_ratio(&dir, &moto);
    lag(&dir, &moto);
    restore_ratio(&dir, &moto);
    drop(moto);
    let _ = std::fs::remove_dir_all(&dir);
}
