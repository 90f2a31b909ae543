//! Helpers for lattice tests: a nats-server of their own (free loopback port,
//! temporary store, stopped by pid), the configuration `peerfs lattice init`
//! writes, and a TCP proxy that can stop forwarding (a partition).

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The flags that join `lattice` at `url` with the credentials file `creds`.
pub fn join_args(url: &str, creds: &Path, lattice: &str) -> Vec<String> {
    vec![
        "--nats".into(),
        url.into(),
        "--nats-creds".into(),
        creds.to_str().unwrap().into(),
        "--lattice".into(),
        lattice.into(),
    ]
}

/// A 1 s acknowledgement wait and timeout: faults show within a test's patience.
pub const QUICK: [&str; 4] = [
    "-o",
    "lattice.ack_wait_ms=1000",
    "-o",
    "lattice.timeout_ms=1000",
];

/// `peerfs lattice init DIR --lattice NAME --listen 127.0.0.1:PORT --worker ...`.
pub fn init(dir: &Path, lattice: &str, port: u16, workers: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peerfs"));
    cmd.args(["lattice", "init"])
        .arg(dir)
        .args(["--lattice", lattice, "--listen"])
        .arg(format!("127.0.0.1:{port}"));
    for w in workers {
        cmd.args(["--worker", w]);
    }
    let out = cmd.output().expect("peerfs lattice init");
    assert!(
        out.status.success(),
        "lattice init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary folder with a lattice's configuration (`nats/`, from
/// `peerfs lattice init`), data folders with their first peers, and its own
/// nats-server (stopped by pid on drop).
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub nats: Nats,
}

impl Setup {
    /// `workers` as for `--worker` (`w1=alice,carol`); `peers`: (data folder, peer)
    /// made before the server starts.
    pub fn new(lattice: &str, workers: &[&str], peers: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        init(&dir.path().join("nats"), lattice, port, workers);
        for (data, peer) in peers {
            create_peer(&dir.path().join(data), peer);
        }
        let nats = Nats::start(&dir.path().join("nats/nats-server.conf"), port);
        Setup { dir, nats }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// `peerfs peer create PEER --data DATA`.
pub fn create_peer(data: &Path, peer: &str) {
    let st = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(["peer", "create", peer, "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A nats-server started from `conf`; stopped (SIGKILL, by pid) on drop.
pub struct Nats {
    pub conf: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Nats {
    pub fn start(conf: &Path, port: u16) -> Nats {
        let mut n = Nats {
            conf: conf.to_path_buf(),
            port,
            log: conf.with_extension("log"),
            child: None,
        };
        n.restart();
        n
    }

    /// Starts it (again, on the same store).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (scripts-ci/setup installs it)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "nats-server did not listen: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.provision();
    }

    /// `peerfs lattice provision` of its folder, as the operator runs it after
    /// starting the server (and after each `lattice init`): the stream, the
    /// directory and the peers' consumers (with the 1 s ack wait of [`QUICK`]).
    pub fn provision(&self) {
        let dir = self.conf.parent().unwrap();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
                .args(["lattice", "provision"])
                .arg(dir)
                .args(["--ack-wait-ms", "1000"])
                .output()
                .expect("peerfs lattice provision");
            if out.status.success() {
                return;
            }
            // JetStream may need a moment after the server listens.
            assert!(
                Instant::now() < end,
                "lattice provision failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A TCP proxy from a free loopback port to `to`. `cut()` drops every connection
/// and refuses new ones' traffic until `heal()` (a partition).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(to: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, k2, s2) = (cut.clone(), conns.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((a, _)) => {
                        a.set_nonblocking(false).unwrap();
                        if c2.load(Ordering::Relaxed) {
                            let _ = a.shutdown(Shutdown::Both);
                            continue;
                        }
                        let Ok(b) = TcpStream::connect(("127.0.0.1", to)) else {
                            continue;
                        };
                        k2.lock().unwrap().push(a.try_clone().unwrap());
                        k2.lock().unwrap().push(b.try_clone().unwrap());
                        pump(a.try_clone().unwrap(), b.try_clone().unwrap(), c2.clone());
                        pump(b, a, c2.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            cut,
            conns,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if cut.load(Ordering::Relaxed) || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Nats {
    /// Reloads its configuration (SIGHUP, by pid) and waits until it says so.
    pub fn reload(&self) {
        const DONE: &str = "Reloaded server configuration";
        let before = self.log_text().matches(DONE).count();
        let pid = self.child.as_ref().expect("running").id() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "SIGHUP {pid}");
        let end = Instant::now() + Duration::from_secs(15);
        while self.log_text().matches(DONE).count() == before {
            assert!(
                Instant::now() < end,
                "nats-server did not reload: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.provision();
    }
}

/// A state file holding an integer.
pub fn state_int(path: &Path) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The names in a folder, sorted (none when it cannot be read).
pub fn ls(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The value of an `ok` result file (a read waits for the run).
pub fn value(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "ok", "{}: {v}", path.display());
    v["value"].clone()
}

/// A runtime for a test's own NATS client, and the client, connected with `c`'s
/// credentials (`request_timeout`: async-nats' default when `None`).
pub fn raw_client(
    url: &str,
    c: &peerfs::lattice::creds::Creds,
    request_timeout: Option<Duration>,
) -> (tokio::runtime::Runtime, async_nats::Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = async_nats::ConnectOptions::new()
        .user_and_password(c.user.clone(), c.password.clone())
        // The only inbox the server lets this user read.
        .custom_inbox_prefix(format!("_INBOX_{}", c.user));
    if request_timeout.is_some() {
        opts = opts.request_timeout(request_timeout);
    }
    let client = rt.block_on(opts.connect(url)).unwrap();
    (rt, client)
}
