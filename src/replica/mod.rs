//! Replicas of every peer's store in object storage (DESIGN §9): the settings,
//! and the [`Replica`] that ships stores from a thread of its own.
//!
//! How a store is shipped (`ship.rs`): a snapshot of the whole file, then each
//! transaction of its write-ahead log as SQLite wrote it (`wal.rs`), read back
//! from the `-wal` file after commits and uploaded at most `sync_ms` later. The
//! stores' own connections never checkpoint while a replica runs (the store's
//! hook [`crate::store::SqliteStore::hand_checkpoints_over`]); the replica does,
//! only up to what it has uploaded, so no transaction leaves the log before it
//! is in the replica. `restore.rs` rebuilds a store from the objects
//! (`remote.rs` names them).
//!
//! Threads: `peerfs-replica` runs a current-thread tokio runtime for the
//! uploads; commits only mark their peer (a set under a mutex) and, in `sync`
//! mode, a submission's answer waits in a list that the thread answers after
//! the upload that holds its commit (or at `sync_timeout`, `ETIMEDOUT`).

pub mod lease;
mod remote;
pub mod restore;
mod ship;
pub mod wal;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{err, Result};

pub use restore::{download_generation, restore, RestoreArgs};

/// Where replicas go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Url {
    /// `file:///PATH`: a folder (tests, network file systems).
    File(PathBuf),
    /// `s3://BUCKET/PREFIX`.
    S3 { bucket: String, prefix: String },
}

impl Url {
    pub fn parse(url: &str) -> Result<Url> {
        let bad = |why: &str| {
            err!(
                libc::EINVAL,
                "replica url {url:?} {why}: use s3://BUCKET/PREFIX or file:///PATH"
            )
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("is not an absolute path"));
            }
            return Ok(Url::File(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad("has an unknown scheme"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad(
                "holds credentials (they would show in `ps`): name a credentials file in replica.credentials or use the AWS_* variables, and",
            ));
        }
        if bucket.is_empty() {
            return Err(bad("names no bucket"));
        }
        Ok(Url::S3 {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
        })
    }
}

/// Whether a submission's close waits for its commit to be in the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Async,
    Sync,
}

/// `7d`, `12h`, `30m`, `45s` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    match crate::util::parse_age(text)? {
        d if d.is_zero() => Err(err!(
            libc::EINVAL,
            "{text:?}: a replica's duration is more than 0 (7d, 12h, 30m, 45s or seconds)"
        )),
        d => Ok(d),
    }
}

/// The replica's settings (`[replica]` in the config file).
#[derive(Debug, Clone)]
pub struct Options {
    pub url: Url,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<PathBuf>,
    /// How far behind the replica may be.
    pub sync: Duration,
    pub mode: Mode,
    pub retention: Duration,
    /// In `sync` mode, the longest a close waits.
    pub sync_timeout: Duration,
}

impl Options {
    pub fn new(url: Url) -> Options {
        Options {
            url,
            endpoint: None,
            region: None,
            credentials: None,
            sync: Duration::from_millis(1000),
            mode: Mode::Async,
            retention: Duration::from_secs(7 * 86_400),
            sync_timeout: Duration::from_millis(5000),
        }
    }
}

/// What `.peerfs/replica` and the metrics show of one peer.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// When the oldest change not uploaded yet was committed (0: none waiting).
    pub pending_since_ns: i64,
    pub last_upload_ns: i64,
    pub bytes: u64,
    pub uploads: u64,
    pub last_error: Option<String>,
}

/// Commits counted and uploaded, per peer: a `sync` close waits for its count.
#[derive(Default)]
struct Counts {
    committed: HashMap<String, u64>,
    uploaded: HashMap<String, u64>,
}

/// A close waiting for its commit to be in the replica (`sync` mode).
struct Waiting {
    peer: String,
    ticket: u64,
    until: std::time::Instant,
    answer: Box<dyn FnOnce(Result<()>) + Send>,
}

struct Shared {
    opts: Options,
    waiting: Mutex<Vec<Waiting>>,
    data: PathBuf,
    /// Peers with commits not looked at yet, and whether the thread must stop.
    dirty: Mutex<(HashSet<String>, bool)>,
    wake: Condvar,
    counts: Mutex<Counts>,
    status: Mutex<BTreeMap<String, Status>>,
    /// Where the peers' leases are written (the fence).
    fence: lease::Fence,
    /// Each peer's lease as known: its epoch, or why it is fenced.
    leases: Mutex<HashMap<String, std::result::Result<u64, String>>>,
    lease_known: Condvar,
    /// Peers whose lease an open waits for (looked at in the next turn, at once).
    wanted: Mutex<HashSet<String>>,
    /// Whether any peer is fenced (a lookup only then).
    any_fenced: AtomicBool,
}

/// The running replica of a data folder's stores.
pub struct Replica {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Replica {
    /// Starts shipping the stores of `data` (`peers`: every peer there, each
    /// looked at once). Call before any store is opened: the stores' own
    /// checkpoints are handed over here.
    pub fn start(opts: Options, data: &Path, peers: Vec<String>) -> Result<Arc<Replica>> {
        let (store, prefix) = remote::open(&opts, true)?;
        let fence = lease::Fence {
            store: store.clone(),
            folder: match &opts.url {
                Url::File(dir) => Some(dir.clone()),
                Url::S3 { .. } => None,
            },
            holder: holder(data),
        };
        let shared = Arc::new(Shared {
            fence,
            leases: Mutex::new(HashMap::new()),
            lease_known: Condvar::new(),
            wanted: Mutex::new(HashSet::new()),
            any_fenced: AtomicBool::new(false),
            opts,
            waiting: Mutex::new(Vec::new()),
            data: data.to_path_buf(),
            dirty: Mutex::new((peers.into_iter().collect(), false)),
            wake: Condvar::new(),
            counts: Mutex::new(Counts::default()),
            status: Mutex::new(BTreeMap::new()),
        });
        let hook = shared.clone();
        crate::store::SqliteStore::hand_checkpoints_over(Box::new(move |path: &Path| {
            hook.committed(path)
        }));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("peerfs-replica".into())
            .spawn(move || ship::run(s, store, prefix))?;
        Ok(Arc::new(Replica {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// The number of `peer`'s commits so far.
    pub fn ticket(&self, peer: &str) -> u64 {
        let c = self.shared.counts.lock().unwrap();
        c.committed.get(peer).copied().unwrap_or(0)
    }

    /// Calls `answer` once `peer`'s commits so far are in the replica, or
    /// with `ETIMEDOUT` after `sync_timeout` (the commit is kept and uploaded
    /// later), from the replica's thread: nobody blocks meanwhile.
    pub fn after_upload(&self, peer: &str, answer: Box<dyn FnOnce(Result<()>) + Send>) {
        let ticket = self.ticket(peer);
        self.shared.waiting.lock().unwrap().push(Waiting {
            peer: peer.to_string(),
            ticket,
            until: std::time::Instant::now() + self.shared.opts.sync_timeout,
            answer,
        });
        self.shared.kick(peer);
    }

    /// Why `peer` is not served here: another worker took its replica's
    /// lease (it moved).
    pub fn fenced(&self, peer: &str) -> Option<String> {
        if !self.shared.any_fenced.load(Ordering::Acquire) {
            return None;
        }
        match self.shared.leases.lock().unwrap().get(peer) {
            Some(Err(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// Takes (or checks) `peer`'s lease before it is served, waiting up to
    /// `wait`: `ESTALE` when another worker holds it at a later epoch. An
    /// object store that does not answer in time lets the peer be served
    /// (local work goes on); its first upload takes the lease then.
    pub fn hold(&self, peer: &str, wait: Duration) -> Result<()> {
        let sh = &self.shared;
        if sh.leases.lock().unwrap().contains_key(peer) {
            return self
                .fenced(peer)
                .map_or(Ok(()), |w| Err(err!(libc::ESTALE, "{w}")));
        }
        sh.wanted.lock().unwrap().insert(peer.to_string());
        sh.kick(peer);
        let until = std::time::Instant::now() + wait;
        let mut l = sh.leases.lock().unwrap();
        loop {
            match l.get(peer) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(why)) => return Err(err!(libc::ESTALE, "{why}")),
                None => {}
            }
            let now = std::time::Instant::now();
            if now >= until {
                return Ok(());
            }
            l = sh.lease_known.wait_timeout(l, until - now).unwrap().0;
        }
    }

    /// One line per peer: `NAME lag_ms=.. last_upload=.. bytes=.. error=..`.
    pub fn status_text(&self) -> String {
        let now = crate::util::now_ns();
        let mut s = String::new();
        for (name, st) in self.shared.status.lock().unwrap().iter() {
            // Anything waiting shows as at least 1 ms: 0 means caught up.
            let lag = if st.pending_since_ns == 0 {
                0
            } else {
                ((now - st.pending_since_ns) / 1_000_000).max(1)
            };
            let last = if st.last_upload_ns == 0 {
                "-".to_string()
            } else {
                crate::util::rfc3339(st.last_upload_ns)
            };
            let e = st.last_error.as_deref().unwrap_or("-").replace('\n', " ");
            s.push_str(&format!(
                "{name} lag_ms={lag} last_upload={last} bytes={} uploads={} error={e}\n",
                st.bytes, st.uploads
            ));
        }
        s
    }

    /// Every peer's status.
    pub fn statuses(&self) -> BTreeMap<String, Status> {
        self.shared.status.lock().unwrap().clone()
    }

    /// Uploads what is left (once more, bounded), checkpoints what was
    /// uploaded, and ends the thread. Call after every store stopped writing.
    pub fn stop(&self) {
        {
            let mut d = self.shared.dirty.lock().unwrap();
            d.1 = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

/// Who holds a lease: host, process and data folder.
fn holder(data: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{} pid {} data {}",
        host.trim(),
        std::process::id(),
        data.display()
    )
}

impl Shared {
    /// `peer`'s lease as found: held at an epoch, or fenced (why).
    fn lease_found(&self, peer: &str, held: std::result::Result<u64, String>) {
        if held.is_err() {
            self.any_fenced.store(true, Ordering::Release);
        }
        self.leases.lock().unwrap().insert(peer.to_string(), held);
        self.lease_known.notify_all();
    }

    /// Whether an open waits for `peer`'s lease (and no longer, once asked).
    fn take_wanted(&self, peer: &str) -> bool {
        self.wanted.lock().unwrap().remove(peer)
    }

    /// A commit of the store at `path` (a peer's, `DATA/peers/NAME.sqlite`).
    fn committed(&self, path: &Path) {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            return;
        };
        if name.starts_with('.') {
            return;
        }
        *self
            .counts
            .lock()
            .unwrap()
            .committed
            .entry(name.to_string())
            .or_default() += 1;
        let mut d = self.dirty.lock().unwrap();
        if d.0.insert(name.to_string()) {
            let mut st = self.status.lock().unwrap();
            let s = st.entry(name.to_string()).or_default();
            if s.pending_since_ns == 0 {
                s.pending_since_ns = crate::util::now_ns();
            }
        }
        if self.opts.mode == Mode::Sync {
            self.wake.notify_one();
        }
    }

    /// Answers the waiting closes whose commits are uploaded, or whose time
    /// is up (all of them when `stopped`).
    fn answer_waiting(&self, stopped: bool) {
        let now = std::time::Instant::now();
        let fenced = |peer: &str| match self.leases.lock().unwrap().get(peer) {
            Some(Err(why)) => Some(why.clone()),
            _ => None,
        };
        let ready: Vec<(Waiting, bool)> = {
            let c = self.counts.lock().unwrap();
            let mut w = self.waiting.lock().unwrap();
            let (ready, keep): (Vec<_>, Vec<_>) = w.drain(..).partition(|x| {
                c.uploaded.get(&x.peer).copied().unwrap_or(0) >= x.ticket
                    || now >= x.until
                    || stopped
                    || fenced(&x.peer).is_some()
            });
            *w = keep;
            ready
                .into_iter()
                .map(|x| {
                    let up = c.uploaded.get(&x.peer).copied().unwrap_or(0) >= x.ticket;
                    (x, up)
                })
                .collect()
        };
        for (x, up) in ready {
            (x.answer)(if up {
                Ok(())
            } else if let Some(why) = fenced(&x.peer) {
                Err(err!(libc::ESTALE, "{why}"))
            } else {
                Err(err!(
                    libc::ETIMEDOUT,
                    "peer {}: the submission is stored here but not yet in the replica after {} ms: it stays queued and is uploaded when the object store answers (see .peerfs/replica)",
                    x.peer,
                    self.opts.sync_timeout.as_millis()
                ))
            });
        }
    }

    fn has_waiting(&self) -> bool {
        !self.waiting.lock().unwrap().is_empty()
    }

    fn kick(&self, peer: &str) {
        self.dirty.lock().unwrap().0.insert(peer.to_string());
        self.wake.notify_one();
    }
}
