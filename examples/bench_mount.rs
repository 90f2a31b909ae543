//! `scripts-ci/bench mount`: peerfs through a real FUSE mount, side by side with
//! bindfs (a bare FUSE passthrough over a plain directory on the same disk).
//! Prints `name: value unit` lines; every figure comes from this one process run.
//!
//! Files live under `$PEERFS_BENCH_DIR/mount` (the script sets it to
//! `target/bench`). On this ext4 (no journal) creates in the minutes after many
//! deletions are 3-8x slower (recently deleted inodes are skipped), which would slow
//! bindfs's creates, not peerfs's (it writes into SQLite), and flatter peerfs's ratio. So
//! bindfs's files are not deleted right away: each run creates fresh folders
//! (~15,000 files, ~60 MB), the 100,000-file folder for the listing is made once
//! and reused, and a run deletes, after measuring, only other runs' folders older
//! than a day. The peerfs stores (a dozen files) go at the end of the run.
//!
//! `PEERFS_BENCH_VERBOSE=1` prints every round on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod bench_support;

use bench_support::{check_ok, fusermount_u, is_mounted, timed_writers, verbose, WRITERS};
use peerfs::exec::{Config, Core, Op};

/// Files (scripts) per throughput round, over all writers.
const FILES: usize = 5_000;
/// Rounds of each loop, interleaved peerfs, bindfs, peerfs, ...; the best counts.
const ROUNDS: usize = 3;
const RT_SAMPLES: usize = 500;
const LS_KEYS: usize = 100_000;
const LS_ROUNDS: usize = 3;
/// Every script, and every bindfs file: the same 5 bytes.
const SCRIPT: &[u8] = b"1 + 2";

/// A FUSE mount that is unmounted (`fusermount3 -u`, lazily if busy) when dropped,
/// also on panic. For peerfs it also holds the session, dropped after the unmount.
struct Mounted {
    path: PathBuf,
    session: Option<peerfs::fuse::Session>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        fusermount_u(&self.path);
        drop(self.session.take());
    }
}

fn mount_bindfs(src: &Path, dst: &Path) -> Mounted {
    let st = Command::new("bindfs")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot start bindfs ({e}): PEERFS_BENCH=1 scripts-ci/setup installs it")
        });
    assert!(
        st.success(),
        "bindfs {} {} failed: {st}",
        src.display(),
        dst.display()
    );
    let m = Mounted {
        path: dst.to_path_buf(),
        session: None,
    };
    let t = Instant::now();
    while !is_mounted(dst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "bindfs did not mount {}",
            dst.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    m
}

fn mkdirs(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// The peer writer `w` drops its scripts at (`PEERFS_BENCH_SHARED_PEER=1`: all at
/// `w0`, to compare).
fn peer_of(w: usize) -> usize {
    if std::env::var("PEERFS_BENCH_SHARED_PEER").as_deref() == Ok("1") {
        0
    } else {
        w
    }
}

/// Drop a script, read its result (the read waits for the run), per writer's peer.
fn peerfs_round(mnt: &Path, round: usize) -> f64 {
    let mnt = mnt.to_path_buf();
    let took = timed_writers(move |w| {
        let peer = mnt.join(format!("w{}", peer_of(w)));
        let (inbox, outbox) = (peer.join("inbox"), peer.join("outbox"));
        for i in 0..FILES / WRITERS {
            let script = inbox.join(format!("r{round}-{w}-{i}.rhai"));
            std::fs::write(&script, SCRIPT)
                .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
            let result = outbox.join(format!("r{round}-{w}-{i}.json"));
            let bytes = std::fs::read(&result)
                .unwrap_or_else(|e| panic!("reading {}: {e}", result.display()));
            check_ok(&result, &bytes);
        }
    });
    FILES as f64 / took.as_secs_f64()
}

/// The same loop on bindfs: create-write-close, then open-read-close the same file,
/// in directories made fresh for this round. `durable`: each file is fsynced before
/// its close (what peerfs guarantees at close; the folder itself is not synced, which
/// favours bindfs).
fn bindfs_round(run: &Path, round: usize, durable: bool) -> f64 {
    let tag = if durable { "s" } else { "r" };
    for w in 0..WRITERS {
        mkdirs(&run.join(format!("{tag}{round}/w{w}")));
    }
    let run = run.to_path_buf();
    let took = timed_writers(move |w| {
        let dir = run.join(format!("{tag}{round}/w{w}"));
        for i in 0..FILES / WRITERS {
            let f = dir.join(format!("{tag}{round}-{w}-{i}.rhai"));
            if durable {
                use std::io::Write;
                let mut file = std::fs::File::create(&f)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", f.display()));
                file.write_all(SCRIPT)
                    .and_then(|_| file.sync_all())
                    .unwrap_or_else(|e| panic!("writing {}: {e}", f.display()));
            } else {
                std::fs::write(&f, SCRIPT)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", f.display()));
            }
            let bytes =
                std::fs::read(&f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            assert_eq!(bytes, SCRIPT, "{}", f.display());
        }
    });
    FILES as f64 / took.as_secs_f64()
}

/// `ls -f DIR | wc -l` in a shell: its wall time and the count.
fn time_ls(dir: &Path) -> (Duration, usize) {
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ls -f \"$1\" | wc -l")
        .arg("sh")
        .arg(dir)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "ls -f {}: {:?}", dir.display(), out);
    let n = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (took, n)
}

fn bench_root() -> PathBuf {
    std::env::var_os("PEERFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")))
        .join("mount")
}

/// What the run measures (`PEERFS_BENCH_ONLY`): everything (unset), or one part
/// for profiling: `drop` (the peerfs drop-to-result rounds), `ls` (the listings),
/// `core` (the drop-to-result loop through the Core API, no FUSE: how much of the
/// mount's time is the core's).
fn only() -> Option<String> {
    std::env::var("PEERFS_BENCH_ONLY").ok()
}

struct Bench {
    core: Core,
    mnt: PathBuf,
    bmnt: PathBuf,
    /// This run's fresh folder on bindfs.
    bruns: PathBuf,
    bsrc: PathBuf,
    // Dropped in this order: bindfs, then peerfs (before `core.shutdown()`).
    bindfs_mount: Option<Mounted>,
    peerfs_mount: Option<Mounted>,
}

impl Bench {
    fn start() -> Bench {
        let root = bench_root();
        let run_id = bench_support::run_id();
        let run = root.join(&run_id);
        let (data, mnt, bmnt) = (run.join("data"), run.join("mnt"), run.join("bindfs-mnt"));
        // bindfs's source: every run's fresh folders and the reused 100k folder.
        let bsrc = root.join("bindfs-src");
        for d in [&data, &mnt, &bmnt, &bsrc] {
            mkdirs(d);
        }
        // A hung mount must not hang CI: after 5 minutes unmount everything and fail.
        let (m1, m2) = (mnt.clone(), bmnt.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(300));
            eprintln!("bench_mount: still running after 5 minutes: unmounting and failing");
            fusermount_u(&m1);
            fusermount_u(&m2);
            std::process::exit(2);
        });

        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // The daemon's defaults (what `peerfs mount` runs with).
        let core = Core::start(Config::new(&data)).unwrap();
        for w in 0..WRITERS {
            core.create_peer(&format!("w{w}"), uid, gid).unwrap();
        }
        core.create_peer("lsp", uid, gid).unwrap();
        let vfs = peerfs::vfs::Vfs::new(core.clone());
        let session = peerfs::fuse::spawn(vfs, &mnt, &peerfs::fuse::MountOptions::default())
            .unwrap_or_else(|e| panic!("mounting peerfs at {}: {e}", mnt.display()));
        let peerfs_mount = Mounted {
            path: mnt.clone(),
            session: Some(session),
        };
        let bindfs_mount = mount_bindfs(&bsrc, &bmnt);
        Bench {
            core,
            bruns: bmnt.join(&run_id),
            mnt,
            bmnt,
            bsrc,
            bindfs_mount: Some(bindfs_mount),
            peerfs_mount: Some(peerfs_mount),
        }
    }

    fn finish(mut self) {
        drop(self.bindfs_mount.take());
        drop(self.peerfs_mount.take());
        self.core.shutdown();
        // This run's stores and mount points: a few files, no measurable trap.
        // `remove_dir` on the mount points: never anything through a mount.
        if let Some(run) = self.mnt.parent() {
            let _ = std::fs::remove_dir_all(run.join("data"));
            let _ = std::fs::remove_dir(&self.mnt);
            let _ = std::fs::remove_dir(&self.bmnt);
            let _ = std::fs::remove_dir(run);
        }
        // bindfs's folders of runs older than a day (after measuring, see the top).
        let day = Duration::from_secs(24 * 3600);
        for e in std::fs::read_dir(&self.bsrc)
            .into_iter()
            .flatten()
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
            if old && e.file_name().to_string_lossy().starts_with("run-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// A short warm-up of both (opens the peers' stores, fills the kernel's
    /// dentries for the fixed folders); not counted.
    fn warm_up(&self) {
        mkdirs(&self.bruns.join("warm/w0"));
        for i in 0..100 {
            let f = self
                .mnt
                .join(format!("w{}/inbox/warm-{i}.rhai", i % WRITERS));
            std::fs::write(&f, SCRIPT).unwrap();
            let r = self
                .mnt
                .join(format!("w{}/outbox/warm-{i}.json", i % WRITERS));
            check_ok(&r, &std::fs::read(&r).unwrap());
            let f = self.bruns.join(format!("warm/w0/warm-{i}.rhai"));
            std::fs::write(&f, SCRIPT).unwrap();
            assert_eq!(std::fs::read(&f).unwrap(), SCRIPT);
        }
    }

    /// Best of ROUNDS interleaved rounds: (peerfs scripts/s, bindfs files/s,
    /// bindfs files/s with an fsync before each close).
    fn throughput(&self) -> (f64, f64, f64) {
        let (mut best_p, mut best_b, mut best_s) = (0f64, 0f64, 0f64);
        for round in 0..ROUNDS {
            // Rotate which goes first, so none always runs on a warmer machine.
            let mut p = 0.0;
            let mut b = 0.0;
            let mut s = 0.0;
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => p = peerfs_round(&self.mnt, round),
                    1 => b = bindfs_round(&self.bruns, round, false),
                    _ => s = bindfs_round(&self.bruns, round, true),
                }
            }
            if verbose() {
                eprintln!(
                    "round {round}: peerfs {p:.0} scripts/s, bindfs {b:.0} files/s, \
                     bindfs+fsync {s:.0} files/s"
                );
            }
            best_p = best_p.max(p);
            best_b = best_b.max(b);
            best_s = best_s.max(s);
        }
        (best_p, best_b, best_s)
    }

    /// Diagnosis: the drop-to-result loop through the Core API (durable submit,
    /// wait for the result), same writers and peers, no FUSE.
    fn core_loop(&self) -> f64 {
        let mut best = 0f64;
        for round in 0..ROUNDS {
            let c = self.core.clone();
            let took = timed_writers(move |w| {
                let p = format!("w{}", peer_of(w));
                for i in 0..FILES / WRITERS {
                    let name = format!("c{round}-{w}-{i}");
                    c.submit(&p, &format!("{name}.rhai"), SCRIPT.to_vec())
                        .unwrap();
                    let b = c.wait_result(&p, &p, &format!("{name}.json")).unwrap();
                    check_ok(Path::new(&name), &b);
                }
            });
            best = best.max(FILES as f64 / took.as_secs_f64());
        }
        best
    }

    /// One writer, one script at a time: p50 of drop + read of its result.
    fn round_trip(&self) -> Duration {
        let mut samples = Vec::with_capacity(RT_SAMPLES);
        let (inbox, outbox) = (self.mnt.join("w0/inbox"), self.mnt.join("w0/outbox"));
        for i in 0..RT_SAMPLES + 20 {
            let start = Instant::now();
            std::fs::write(inbox.join(format!("rt-{i}.rhai")), SCRIPT).unwrap();
            let r = outbox.join(format!("rt-{i}.json"));
            let bytes = std::fs::read(&r).unwrap();
            let took = start.elapsed();
            check_ok(&r, &bytes);
            if i >= 20 {
                samples.push(took);
            }
        }
        samples.sort();
        samples[samples.len() / 2]
    }

    /// `ls -f` of 100,000 keys in one state folder vs 100,000 files on bindfs:
    /// best of LS_ROUNDS interleaved.
    fn listing(&self) -> (Duration, Duration) {
        // The keys go in through the Core in one burst of async ops (the actor
        // commits whatever is queued at once).
        let failed = Arc::new(AtomicUsize::new(0));
        for i in 0..LS_KEYS {
            let f = failed.clone();
            self.core.apply_async(
                "lsp",
                Op::SetBytes(format!("k{i:06}"), b"v".to_vec()),
                Some(Box::new(move |r| {
                    if r.is_err() {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                })),
            );
        }
        // Ops of one peer apply in order: when this one is durable, all are.
        self.core
            .apply("lsp", Op::Log("ls keys loaded".into()))
            .unwrap();
        assert_eq!(failed.load(Ordering::Relaxed), 0, "some keys were refused");
        // bindfs: as many 1-byte files, made in the source folder directly (through
        // bindfs takes ~10x longer and lists the same), once, and reused by later runs.
        let ls_src = self.bsrc.join("ls-100k");
        let have = std::fs::read_dir(&ls_src).map(|d| d.count()).unwrap_or(0);
        if have != LS_KEYS {
            mkdirs(&ls_src);
            for i in 0..LS_KEYS {
                let f = ls_src.join(format!("k{i:06}"));
                if !f.exists() {
                    std::fs::write(&f, b"v").unwrap();
                }
            }
        }
        let (p_dir, b_dir) = (self.mnt.join("lsp/state"), self.bmnt.join("ls-100k"));
        let (mut ls_p, mut ls_b) = (Duration::MAX, Duration::MAX);
        for round in 0..LS_ROUNDS {
            let (tp, np) = time_ls(&p_dir);
            let (tb, nb) = time_ls(&b_dir);
            // `ls -f` shows `.` and `..` too.
            assert_eq!(np, LS_KEYS + 2, "ls -f {}", p_dir.display());
            assert_eq!(nb, LS_KEYS + 2, "ls -f {}", b_dir.display());
            if verbose() {
                eprintln!("ls round {round}: peerfs {tp:?}, bindfs {tb:?}");
            }
            ls_p = ls_p.min(tp);
            ls_b = ls_b.min(tb);
        }
        (ls_p, ls_b)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() {
    let b = Bench::start();
    match only().as_deref() {
        None => {
            b.warm_up();
            let (p, bf, bs) = b.throughput();
            let rt = b.round_trip();
            let (ls_p, ls_b) = b.listing();
            b.finish();
            println!("mount.drop_to_result.per_s: {p:.0} scripts/s");
            println!("mount.bindfs_create_read.per_s: {bf:.0} files/s");
            println!("mount.vs_bindfs_ratio: {:.3}", p / bf);
            // Reference: bindfs made as durable at close as peerfs is.
            println!("mount.bindfs_create_fsync_read.per_s: {bs:.0} files/s");
            println!("mount.vs_bindfs_fsync_ratio: {:.3}", p / bs);
            println!("mount.round_trip_us.p50: {} us", rt.as_micros());
            println!("mount.ls_100k_keys_ms: {} ms", ms(ls_p));
            println!("mount.bindfs_ls_100k_ms: {} ms", ms(ls_b));
        }
        Some("drop") => {
            b.warm_up();
            let best = (0..ROUNDS * 2)
                .map(|round| peerfs_round(&b.mnt, round))
                .fold(0f64, f64::max);
            b.finish();
            println!("mount.drop_to_result.per_s: {best:.0} scripts/s");
        }
        Some("core") => {
            b.warm_up();
            let best = b.core_loop();
            b.finish();
            println!("core.drop_to_result.per_s: {best:.0} scripts/s");
        }
        Some("ls") => {
            let (ls_p, ls_b) = b.listing();
            b.finish();
            println!("mount.ls_100k_keys_ms: {} ms", ms(ls_p));
            println!("mount.bindfs_ls_100k_ms: {} ms", ms(ls_b));
        }
        Some(other) => {
            b.finish();
            panic!("PEERFS_BENCH_ONLY={other}: use drop, core or ls");
        }
    }
}
