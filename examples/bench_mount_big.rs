//! `scripts-ci/bench mount`, second part: what big values do to everyone else.
//!
//! - `mount.meta_big_value_ratio`: `ls -la` of a folder (readdir, then a stat of
//!   every entry) beside a 16 MiB value, over the same listing of a folder without
//!   one (same number of entries). Metadata must not cost more because a value is
//!   big: target <= 1.2.
//! - `mount.neighbour_stall_ratio`: a small read at alice (open, read, close of a
//!   short key) while another peer writes and reads back 16 MiB values without
//!   pause, over the same reads with that peer idle (p50 of each): target <= 2.
//!
//! Both are ratios of figures taken in this one run, interleaved and best-of.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerfs::exec::{Config, Core};

const BIG: usize = 16 << 20;
/// Entries of each listed folder.
const ENTRIES: usize = 20;
const LS_ROUNDS: usize = 30;
const READS: usize = 400;

fn unmount(path: &Path) {
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}

/// readdir, then a stat of each entry: what `ls -la` asks.
fn ls_la(dir: &Path) -> Duration {
    let t = Instant::now();
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let md = std::fs::metadata(e.unwrap().path()).unwrap();
        n += md.len() as usize & 1;
    }
    std::hint::black_box(n);
    t.elapsed()
}

/// p50 of READS small reads, and of more until `until` says stop.
fn small_reads(file: &Path, until: impl Fn() -> bool) -> Duration {
    let mut v = Vec::with_capacity(READS);
    while v.len() < READS || !until() {
        let t = Instant::now();
        let b = std::fs::read(file).unwrap();
        v.push(t.elapsed());
        assert_eq!(b, b"small");
    }
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = std::env::var_os("PEERFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")))
        .join(format!("mount-big-{}", std::process::id()));
    let (data, mnt) = (root.join("data"), root.join("mnt"));
    for d in [&data, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (m1, r1) = (mnt.clone(), root.clone());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(300));
        eprintln!("bench_mount_big: still running after 5 minutes: unmounting and failing");
        unmount(&m1);
        let _ = std::fs::remove_dir_all(&r1);
        std::process::exit(2);
    });
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let core = Core::start(Config::new(&data)).unwrap();
    for p in ["alice", "mal"] {
        core.create_peer(p, uid, gid).unwrap();
    }
    let vfs = peerfs::vfs::Vfs::new(core.clone());
    let session = peerfs::fuse::spawn(vfs, &mnt, &peerfs::fuse::MountOptions::default())
        .unwrap_or_else(|e| panic!("mounting peerfs at {}: {e}", mnt.display()));

    let state = mnt.join("alice/state");
    for dir in ["plain", "beside"] {
        std::fs::create_dir_all(state.join(dir)).unwrap();
        for i in 0..ENTRIES - 1 {
            std::fs::write(state.join(format!("{dir}/k{i:02}")), b"v").unwrap();
        }
    }
    std::fs::write(state.join("plain/k99"), b"v").unwrap();
    std::fs::write(state.join("beside/big"), vec![0u8; BIG]).unwrap();
    let (mut plain, mut beside) = (Duration::MAX, Duration::MAX);
    for _ in 0..LS_ROUNDS {
        plain = plain.min(ls_la(&state.join("plain")));
        beside = beside.min(ls_la(&state.join("beside")));
    }

    std::fs::write(state.join("x"), b"small").unwrap();
    let x = state.join("x");
    let idle = small_reads(&x, || true);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let (s, d, mal) = (stop.clone(), done.clone(), mnt.join("mal/state"));
    let streamer = std::thread::spawn(move || {
        let big = vec![7u8; BIG];
        let mut i = 0;
        while !s.load(Ordering::Relaxed) {
            let f = mal.join(format!("z{}", i % 4));
            std::fs::write(&f, &big).unwrap();
            assert_eq!(std::fs::read(&f).unwrap().len(), BIG);
            i += 1;
            d.store(i, Ordering::Relaxed);
        }
        i
    });
    // Let the streamer get going, then read while it writes and reads 4 values.
    std::thread::sleep(Duration::from_millis(300));
    let start = done.load(Ordering::Relaxed);
    let busy = small_reads(&x, || done.load(Ordering::Relaxed) >= start + 4);
    stop.store(true, Ordering::Relaxed);
    let streamed = streamer.join().unwrap();
    let idle2 = small_reads(&x, || true);
    let idle = idle.min(idle2);

    drop(session);
    unmount(&mnt);
    core.shutdown();
    let _ = std::fs::remove_dir_all(&root);

    if std::env::var("PEERFS_BENCH_VERBOSE").as_deref() == Ok("1") {
        eprintln!(
            "ls -la: plain {plain:?}, beside a 16 MiB value {beside:?}; small read p50: \
             idle {idle:?}, busy {busy:?} ({streamed} big values streamed)"
        );
    }
    println!("mount.ls_la_20_entries_us: {} us", plain.as_micros());
    println!(
        "mount.meta_big_value_ratio: {:.3}",
        beside.as_secs_f64() / plain.as_secs_f64()
    );
    println!("mount.small_read_idle_us.p50: {} us", idle.as_micros());
    println!(
        "mount.neighbour_stall_ratio: {:.3}",
        busy.as_secs_f64() / idle.as_secs_f64()
    );
}
