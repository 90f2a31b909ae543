//! `scripts-ci/bench spool`: spool mode (`serve --spool`) against the mount, in
//! the same run. Four writers, each with its own peer (`w0`..`w3`, as in
//! `bench_mount`), drop 5,000 scripts in all and await every result:
//!
//! - pipelined: a writer drops all its scripts (written in place and closed, like
//!   `cp`), then reads all its results: `spool.drop_to_result.per_s`, and the mount
//!   doing the same, `spool.mount_drop_to_result.per_s`; their quotient is
//!   `spool.vs_mount_ratio`.
//! - one at a time: each drop waits for its result before the next (a shell loop
//!   of `peerfs run`): `spool.one_at_a_time.per_s` and the mount's
//!   `spool.mount_one_at_a_time.per_s`, quotient `spool.one_at_a_time_vs_mount_ratio`.
//!
//! A spool waiter polls for its result file (every 200 us); on the mount the read
//! itself waits. Rounds alternate spool, mount, spool, ...; the best of each counts.
//! Files live under `$PEERFS_BENCH_DIR/spool/run-*` with fresh names per round
//! (see `bench_mount` for why nothing is deleted between measured rounds); runs
//! older than a day are removed at the end. `PEERFS_BENCH_VERBOSE=1` prints rounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod bench_support;

use bench_support::{check_ok, timed_writers, WRITERS};
use peerfs::exec::{Config, Core};

const FILES: usize = 5_000;
const ROUNDS: usize = 3;
const SCRIPT: &[u8] = b"1 + 2";

/// Reads a result: on the mount the read waits; in a spool the file appears whole.
fn await_result(path: &Path, poll: bool) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        match std::fs::read(path) {
            Ok(b) => return check_ok(path, &b),
            Err(e) if poll && e.kind() == std::io::ErrorKind::NotFound => {
                assert!(Instant::now() < end, "no result at {}", path.display());
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }
}

/// One round over the tree at `root` (a mount or a spool): scripts per second.
fn round(root: &Path, tag: &str, round: usize, pipelined: bool, poll: bool) -> f64 {
    let root = root.to_path_buf();
    let tag = tag.to_string();
    let took = timed_writers(move |w| {
        let peer = root.join(format!("w{w}"));
        let n = FILES / WRITERS;
        let name = |i: usize| format!("{tag}{round}-{w}-{i}");
        let drop_one = |i: usize| {
            let p = peer.join("inbox").join(format!("{}.rhai", name(i)));
            peerfs::util::write_and_close(&p, SCRIPT)
                .unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        };
        let await_one =
            |i: usize| await_result(&peer.join("outbox").join(format!("{}.json", name(i))), poll);
        if pipelined {
            (0..n).for_each(drop_one);
            (0..n).for_each(await_one);
        } else {
            for i in 0..n {
                drop_one(i);
                await_one(i);
            }
        }
    });
    FILES as f64 / took.as_secs_f64()
}

fn start_core(data: &Path) -> Core {
    std::fs::create_dir_all(data).unwrap();
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let core = Core::start(Config::new(data)).unwrap();
    for w in 0..WRITERS {
        core.create_peer(&format!("w{w}"), uid, gid).unwrap();
    }
    core
}

fn main() {
    let verbose = std::env::var("PEERFS_BENCH_VERBOSE").as_deref() == Ok("1");
    let base = std::env::var_os("PEERFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")))
        .join("spool");
    let run = base.join(bench_support::run_id());
    let (sdir, mnt) = (run.join("spool"), run.join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let score = start_core(&run.join("data-spool"));
    let mut spool = peerfs::spool::Spool::start(score.clone(), &sdir).unwrap();
    let mcore = start_core(&run.join("data-mount"));
    let vfs = peerfs::vfs::Vfs::new(mcore.clone());
    let session = peerfs::fuse::spawn(vfs, &mnt, &peerfs::fuse::MountOptions::default())
        .unwrap_or_else(|e| panic!("mounting peerfs at {}: {e}", mnt.display()));
    // A hung mount must not hang CI.
    let m2 = mnt.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("bench_spool: still running after 10 minutes: unmounting and failing");
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&m2)
            .status();
        std::process::exit(2);
    });
    let mut best = [0f64; 4];
    for r in 0..ROUNDS {
        for (k, (pipelined, is_spool)) in
            [(true, true), (true, false), (false, true), (false, false)]
                .into_iter()
                .enumerate()
        {
            let (root, tag) = if is_spool { (&sdir, "s") } else { (&mnt, "m") };
            let tag = format!("{tag}{}", if pipelined { "p" } else { "o" });
            let v = round(root, &tag, r, pipelined, is_spool);
            if verbose {
                eprintln!("round {r} {tag}: {v:.0} scripts/s");
            }
            best[k] = best[k].max(v);
        }
    }
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status();
    drop(session);
    mcore.shutdown();
    spool.stop();
    score.shutdown();
    spool.finish();
    println!("spool.drop_to_result.per_s: {:.0} scripts/s", best[0]);
    println!("spool.mount_drop_to_result.per_s: {:.0} scripts/s", best[1]);
    println!("spool.vs_mount_ratio: {:.3}", best[0] / best[1]);
    println!("spool.one_at_a_time.per_s: {:.0} scripts/s", best[2]);
    println!("spool.mount_one_at_a_time.per_s: {:.0} scripts/s", best[3]);
    println!(
        "spool.one_at_a_time_vs_mount_ratio: {:.3}",
        best[2] / best[3]
    );
    // Runs older than a day (after measuring; see bench_mount on deletions).
    let day = Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let _ = std::fs::remove_dir(&mnt);
}
