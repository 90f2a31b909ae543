//! Helpers for tests that mount peerfs for real: an in-process mount (`Mounted`)
//! and the `peerfs` binary as a child process (`Daemon`). Both unmount in `Drop`.
//! A test that needs FUSE fails loudly where FUSE is missing; it never skips.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use peerfs::exec::{Config, Core};
use peerfs::fuse::{MountOptions, Session};
use serde_json::Value;

pub fn uid() -> u32 {
    unsafe { libc::getuid() }
}

pub fn gid() -> u32 {
    unsafe { libc::getgid() }
}

/// Panics (never skips) when this machine cannot mount FUSE.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount peerfs for real and need FUSE \
         (load the fuse module, or run the container with --device /dev/fuse)"
    );
}

/// The errno of an io::Error, with the error in the panic message if it has none.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("error without an errno: {e}"))
}

/// close(2) that reports its error (dropping a `File` ignores it, and close is
/// where peerfs commits a handle's writes).
pub fn close(f: std::fs::File) -> io::Result<()> {
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The in-process daemon's log on stderr when RUST_LOG asks for it (e.g.
/// `RUST_LOG=peerfs=warn`), once per process.
pub fn trace_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "off".into()),
            )
            .with_writer(std::io::stderr)
            .try_init();
    });
}

/// Expects `r` to fail with `want`.
#[track_caller]
pub fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected errno {want}"),
        Err(e) => assert_eq!(
            errno(&e),
            want,
            "{what}: got {e}, expected {}",
            io::Error::from_raw_os_error(want)
        ),
    }
}

/// `sh -c cmd`; returns the output whatever the exit status.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh -c {cmd:?}: {e}"))
}

/// `sh -c cmd`, which must succeed; returns its standard output.
#[track_caller]
pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A shell-quoted path.
pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Whether `path` is a mount point in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = canon.to_string_lossy().to_string();
    let want2 = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let m = l.split(' ').nth(1).unwrap_or("");
            m == want || m == want2
        })
}

/// A fresh temp dir with mnt/ and work/: `(dir, data, mnt, work)`; data/ is
/// left for the daemon to make.
pub fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mnt = d.path().join("mnt");
    let work = d.path().join("work");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    (d, data, mnt, work)
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn force_unmount(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
    if is_mounted(mnt) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// Paths inside a mount, and the operations every test repeats.
pub trait MountPaths {
    fn mnt(&self) -> &Path;
    fn work(&self) -> &Path;

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// `mkdir MOUNT/name`: a new peer.
    fn add_peer(&self, name: &str) {
        std::fs::create_dir(self.p(name))
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.p(name).display()));
    }

    /// Writes `text` to a file outside the mount (in the test's work dir).
    fn local(&self, name: &str, text: &str) -> PathBuf {
        let p = self.work().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Drops `src` as `name` into `dir` (an inbox, relative to the mount) and reads
    /// the result from the matching outbox (which waits for the run).
    fn run_in(&self, dir: &str, name: &str, src: &str) -> Value {
        let inbox = self.p(dir).join("inbox").join(name);
        std::fs::write(&inbox, src).unwrap_or_else(|e| panic!("write {}: {e}", inbox.display()));
        let stem = name.strip_suffix(".rhai").unwrap_or(name);
        let out = self.p(dir).join("outbox").join(format!("{stem}.json"));
        let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {:?}",
                out.display(),
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Runs `src` as `peer`'s own script.
    fn run(&self, peer: &str, name: &str, src: &str) -> Value {
        self.run_in(peer, name, src)
    }

    /// Runs `src` and expects status ok; returns the value.
    #[track_caller]
    fn run_ok(&self, peer: &str, name: &str, src: &str) -> Value {
        let r = self.run(peer, name, src);
        assert_eq!(r["status"], "ok", "{name}: {r}");
        r["value"].clone()
    }

    fn log_of(&self, peer: &str) -> String {
        std::fs::read_to_string(self.p(&format!("{peer}/log"))).unwrap()
    }

    fn names(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.p(rel))
            .unwrap_or_else(|e| panic!("ls {rel}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// peerfs mounted in this process, over a fresh temp dir (data/, mnt/, work/).
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub work: PathBuf,
    pub core: Core,
    session: Option<Session>,
}

impl Mounted {
    /// Small limits, so that hostile scripts end fast.
    pub fn config(data: &Path) -> Config {
        let mut cfg = Config::new(data);
        cfg.runners = 2;
        cfg.limits.max_wall_ms = 2000;
        cfg.own_limits.max_wall_ms = 2000;
        cfg
    }

    pub fn new() -> Mounted {
        Mounted::with(|_| {}, MountOptions::default())
    }

    pub fn with(tune: impl FnOnce(&mut Config), opts: MountOptions) -> Mounted {
        require_fuse();
        trace_warnings();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        let work = dir.path().join("work");
        for d in [&data, &mnt, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut cfg = Mounted::config(&data);
        tune(&mut cfg);
        let core = Core::start(cfg).expect("Core::start");
        let vfs = peerfs::vfs::Vfs::new(core.clone());
        let session = match peerfs::fuse::spawn(vfs, &mnt, &opts) {
            Ok(s) => s,
            Err(e) => {
                core.shutdown();
                panic!(
                    "mounting peerfs at {} failed: {e}. These tests need a working FUSE \
                     (/dev/fuse, fusermount3, and root or user_allow_other); they never skip.",
                    mnt.display()
                );
            }
        };
        assert!(
            is_mounted(&mnt),
            "peerfs::fuse::spawn returned but {} is not in /proc/self/mounts",
            mnt.display()
        );
        Mounted {
            dir,
            data,
            mnt,
            work,
            core,
            session: Some(session),
        }
    }
}

impl MountPaths for Mounted {
    fn mnt(&self) -> &Path {
        &self.mnt
    }
    fn work(&self) -> &Path {
        &self.work
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.unmount_and_join() {
                eprintln!("unmount_and_join failed ({e}): lazy unmount");
                force_unmount(&self.mnt);
            }
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        self.core.shutdown();
    }
}

/// The `peerfs mount` binary as a child process. Drop kills it (by pid) if it is
/// still running and unmounts whatever it left.
pub struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub work: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    /// Starts `peerfs mount MNT --data DATA ARGS...` and waits until the mount serves.
    /// MNT is made first, as an operator does (`peerfs mount` refuses a missing
    /// one); a stale mount there (ENOTCONN) is the daemon's to refuse or clean.
    pub fn start(data: &Path, mnt: &Path, work: &Path, args: &[&str]) -> Daemon {
        require_fuse();
        let _ = std::fs::create_dir_all(mnt);
        let mut cmd = vec![
            OsStr::new("mount"),
            mnt.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        cmd.extend(args.iter().map(OsStr::new));
        let mut d = Daemon::spawn(&cmd, mnt, work);
        let up = wait_until(Duration::from_secs(20), || {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "peerfs mount exited early ({st}): {}",
                    std::fs::read_to_string(&d.stderr).unwrap_or_default()
                );
            }
            is_mounted(mnt) && std::fs::read(mnt.join(".peerfs/version")).is_ok()
        });
        assert!(
            up,
            "peerfs mount did not come up at {} within 20 s: {}",
            mnt.display(),
            std::fs::read_to_string(&d.stderr).unwrap_or_default()
        );
        d
    }

    /// Starts `peerfs ARGS...` (stderr to a new log in `work`) without waiting.
    pub fn spawn(args: &[&OsStr], mnt: &Path, work: &Path) -> Daemon {
        Daemon::spawn_env(args, mnt, work, &[])
    }

    /// [`Daemon::spawn`] with `env` set too (test hooks).
    pub fn spawn_env(args: &[&OsStr], mnt: &Path, work: &Path, env: &[(&str, &str)]) -> Daemon {
        std::fs::create_dir_all(work).unwrap();
        let n = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let stderr = work.join(format!("daemon-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .args(args)
            // PEERFS_TEST_LOG (e.g. `peerfs=debug`) to see more of a failing test.
            .env(
                "RUST_LOG",
                std::env::var("PEERFS_TEST_LOG").unwrap_or("peerfs=info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn peerfs");
        Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            work: work.to_path_buf(),
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// SIGSTOP, returning once every thread of the daemon has stopped: kill(2)
    /// returns before a thread that is running stops, and one may still
    /// answer a request sent just after.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = || {
            std::fs::read_dir(&tasks).unwrap().flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command's closing parenthesis.
                let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
                matches!(state, Some(Some('T' | 't'))) || stat.is_empty()
            })
        };
        assert!(
            wait_until(Duration::from_secs(10), stopped),
            "the daemon's threads did not all stop"
        );
    }

    /// Waits for the daemon to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("peerfs did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait(Duration::from_secs(10));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl MountPaths for Daemon {
    fn mnt(&self) -> &Path {
        &self.mnt
    }
    fn work(&self) -> &Path {
        &self.work
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            }
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

// Shared by the mount tests.

pub const BIN: &str = env!("CARGO_BIN_EXE_peerfs");

pub fn log_lines_with<'a>(log: &'a str, words: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.split(' ').any(|t| t == *w)))
        .collect()
}

/// Opens `path` read-only with O_NONBLOCK; the errno on failure.
pub fn open_nonblock(path: &Path) -> Result<(), i32> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    unsafe { libc::close(fd) };
    Ok(())
}

/// A loop that keeps `peer`'s actor busy for about `secs`, calibrated on the run's
/// own `duration_us` (not the round trip, which load and fsync stretch); the
/// mount's max_operations must allow it. Returns the loop count.
pub fn busy_loops(m: &impl MountPaths, peer: &str, secs: f64) -> u64 {
    let r = m.run(
        peer,
        "calibrate.rhai",
        "let i = 0; while i < 300000 { i += 1 } i",
    );
    assert_eq!(r["status"], "ok", "{r}");
    let per = r["duration_us"].as_f64().unwrap().max(1000.0) / 1e6;
    ((300_000.0 * secs / per) as u64).clamp(300_000, 400_000_000)
}

pub fn busy_script(m: &impl MountPaths, peer: &str, secs: f64) -> (String, u64) {
    let n = busy_loops(m, peer, secs);
    (format!("let i = 0; while i < {n} {{ i += 1 }} i"), n)
}
