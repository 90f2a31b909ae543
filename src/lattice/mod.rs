//! The lattice: daemons on one NATS (with JetStream) serve one set of peers.
//!
//! - The directory of which worker serves which peer is a KV bucket
//!   (`peerfs_<lattice>`: key = peer, value = worker), see [`directory`].
//! - Messages travel on `peerfs.<lattice>.msg.<to>.<from>` in one stream
//!   (`PEERFS_<lattice>`, work-queue retention); each served peer has one durable
//!   pull consumer filtered on its own subjects, see [`transport`].
//! - Each worker's NATS user may publish only on the subjects whose `<from>` is a
//!   peer it serves, see [`server`] (which writes the server's configuration).
//!
//! The lattice runs on a small tokio runtime on its own thread; the executor's
//! threads hand it work through channels and never block inside it.

pub mod handover;
pub mod server;

pub use read::remote_get;

mod alive;
mod directory;
mod read;
mod transport;
mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::error::err;
use crate::error::Result;
use crate::exec::Core;

/// How to join a lattice (`[lattice]` in the config file, `--nats` and friends).
#[derive(Debug, Clone)]
pub struct Options {
    /// `nats://[user:password@]host:port`.
    pub url: String,
    /// A credentials file written by `peerfs lattice init` (`user` and `password`).
    pub creds: Option<PathBuf>,
    /// The lattice's name: daemons with the same NATS and name see each other.
    pub name: String,
    /// This worker's name in the directory (default: its NATS user).
    pub worker: Option<String>,
    /// How long JetStream waits for a delivered message's acknowledgement before
    /// it hands it out again.
    pub ack_wait: Duration,
    /// How long a request to NATS may take (publish acknowledgements, remote
    /// reads) before it fails with `ETIMEDOUT`.
    pub timeout: Duration,
    /// How long the start waits for NATS before it goes on without it (the
    /// lattice is joined in the background once NATS is there).
    pub start_wait: Duration,
}

impl Options {
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            creds: None,
            name: "default".into(),
            worker: None,
            ack_wait: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            start_wait: Duration::from_secs(5),
        }
    }
}

/// The names of a lattice's NATS objects.
#[derive(Debug, Clone)]
pub struct Names {
    pub lattice: String,
}

impl Names {
    pub fn new(lattice: &str) -> Result<Names> {
        check_token("lattice", lattice)?;
        Ok(Names {
            lattice: lattice.to_string(),
        })
    }
    /// The stream every message of the lattice is kept in until its target took it.
    pub fn stream(&self) -> String {
        format!("PEERFS_{}", self.lattice)
    }
    /// The directory's KV bucket.
    pub fn bucket(&self) -> String {
        format!("peerfs_{}", self.lattice)
    }
    /// The subject a message from `from` to `to` is published on.
    pub fn msg_subject(&self, to: &str, from: &str) -> String {
        format!("peerfs.{}.msg.{to}.{from}", self.lattice)
    }
    /// Every message subject of the lattice.
    pub fn msg_all(&self) -> String {
        format!("peerfs.{}.msg.>", self.lattice)
    }
    /// The consumer that hands out `peer`'s messages (one per peer, shared by
    /// whichever worker serves it: moving a peer moves nothing in JetStream).
    pub fn consumer(&self, peer: &str) -> String {
        format!("peer_{peer}")
    }
    /// `(to, from)` of a message subject of this lattice.
    pub fn parse_msg_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix("peerfs.")?
            .strip_prefix(self.lattice.as_str())?
            .strip_prefix(".msg.")?;
        let (to, from) = rest.split_once('.')?;
        (!from.contains('.')).then_some((to, from))
    }
}

/// A lattice or worker name: one token of a subject and part of stream names.
pub(crate) fn check_token(what: &str, name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(err!(
            libc::EINVAL,
            "{what} name {name:?}: use 1 to 64 letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// A joined lattice.
pub struct Lattice {
    names: Names,
    worker: String,
    opts: Options,
    core: Core,
    rt: tokio::runtime::Handle,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// Peer → worker, as the directory says (kept current by a watch).
    dir: RwLock<HashMap<String, String>>,
    /// The directory has been read once (until then, remote names are unknown).
    dir_loaded: AtomicBool,
    kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The local peers whose consumer runs.
    serving: Mutex<std::collections::HashSet<String>>,
    /// The local peers this process answers for (see `alive`).
    answering: Mutex<std::collections::HashSet<String>>,
    /// This process among the worker's (see `alive`).
    instance: String,
    publisher: tokio::sync::mpsc::UnboundedSender<transport::Publish>,
    stop: tokio::sync::watch::Sender<bool>,
}

static CURRENT: OnceLock<Arc<Lattice>> = OnceLock::new();

/// The lattice this daemon joined, if any.
pub fn current() -> Option<&'static Arc<Lattice>> {
    CURRENT.get()
}

/// Joins the lattice: connects, registers every local peer and starts their
/// consumers, and routes `core`'s messages through NATS. Refuses (`EEXIST`) when
/// another worker serves one of the local peers. When NATS cannot be reached
/// within `start_wait`, local work starts anyway and the lattice is joined in the
/// background.
pub fn join(core: &Core, opts: Options) -> Result<Arc<Lattice>> {
    if CURRENT.get().is_some() {
        return Err(err!(libc::EALREADY, "this daemon already joined a lattice"));
    }
    let names = Names::new(&opts.name)?;
    let (user, password) = match &opts.creds {
        Some(f) => {
            let c = server::Creds::read(f)?;
            (Some(c.user), Some(c.password))
        }
        None => (None, None),
    };
    let worker = match (&opts.worker, &user, url_user(&opts.url)) {
        (Some(w), _, _) => w.clone(),
        (None, Some(u), _) => u.clone(),
        (None, None, Some(u)) => u,
        (None, None, None) => {
            return Err(err!(
                libc::EINVAL,
                "no worker name: pass --nats-creds (its user names the worker), a user in the --nats URL, or set lattice.worker"
            ))
        }
    };
    let rt = runtime()?;
    let mut co = async_nats::ConnectOptions::new()
        .name(format!("peerfs {worker}"))
        .retry_on_initial_connect()
        .connection_timeout(opts.timeout)
        .request_timeout(Some(opts.timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(1000)))
        .event_callback(|e| async move {
            tracing::info!(event = %e, "nats");
        });
    if let (Some(u), Some(p)) = (user, password) {
        co = co.user_and_password(u, p);
    }
    let url = opts.url.clone();
    let client = rt
        .block_on(async move { co.connect(url).await })
        .map_err(|e| err!(libc::EINVAL, "nats {}: {e}", opts.url))?;
    let js = {
        // The context spawns a task of its own.
        let _rt = rt.enter();
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(opts.timeout);
        js
    };
    let (ptx, prx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, _) = tokio::sync::watch::channel(false);
    let l = Arc::new(Lattice {
        names,
        worker,
        opts,
        core: core.clone(),
        rt: rt.clone(),
        client,
        js,
        dir: RwLock::new(HashMap::new()),
        dir_loaded: AtomicBool::new(false),
        kv: tokio::sync::OnceCell::new(),
        serving: Mutex::new(Default::default()),
        answering: Mutex::new(Default::default()),
        instance: alive::instance(),
        publisher: ptx,
        stop,
    });
    rt.spawn(transport::publisher(l.clone(), prx));
    let first = {
        let l = l.clone();
        let wait = l.opts.start_wait;
        rt.block_on(async move { tokio::time::timeout(wait, l.setup()).await })
    };
    match first {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.errno == libc::EEXIST || e.errno == libc::EACCES => {
            l.leave();
            return Err(e);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot join the lattice yet; local work goes on, retrying in the background");
            l.rt.spawn(l.clone().setup_later());
        }
        Err(_) => {
            tracing::warn!(url = %l.opts.url, "NATS is not reachable; local work goes on, the lattice is joined in the background");
            l.rt.spawn(l.clone().setup_later());
        }
    }
    let _ = CURRENT.set(l.clone());
    core.set_transport(Arc::new(transport::Nats(l.clone())));
    tracing::info!(lattice = %l.names.lattice, worker = %l.worker, "joined the lattice");
    Ok(l)
}

/// The user in `nats://user:password@host`, if any.
fn url_user(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (auth, _) = rest.rsplit_once('@')?;
    let user = auth.split(':').next()?;
    (!user.is_empty()).then(|| user.to_string())
}

/// A current-thread runtime driven by its own thread for the life of the process.
fn runtime() -> Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let h = rt.handle().clone();
    std::thread::Builder::new()
        .name("peerfs-lattice".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(h)
}

impl Lattice {
    pub fn worker(&self) -> &str {
        &self.worker
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The worker serving `peer`, as the directory says.
    pub fn worker_of(&self, peer: &str) -> Option<String> {
        self.dir.read().unwrap().get(peer).cloned()
    }

    /// Whether the directory has been read (remote peers are known).
    pub fn ready(&self) -> bool {
        self.dir_loaded.load(Ordering::Acquire)
    }

    /// Stops the consumers and the directory watch (the connection stays until exit).
    pub fn leave(&self) {
        let _ = self.stop.send(true);
    }

    /// Stream, bucket, registration of the local peers, the directory's watch and
    /// the consumers.
    async fn setup(self: Arc<Self>) -> Result<()> {
        transport::ensure_stream(&self).await?;
        let kv = directory::ensure_bucket(&self).await?;
        let _ = self.kv.set(kv);
        for (peer, _) in self.core.registry().list() {
            self.register(&peer).await?;
        }
        directory::load(&self).await?;
        self.rt.spawn(directory::watch(self.clone()));
        for (peer, _) in self.core.registry().list() {
            self.start_consumer(&peer);
        }
        Ok(())
    }

    /// [`Lattice::setup`] until it works (NATS was away at start).
    async fn setup_later(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if *self.stop.borrow() {
                return;
            }
            match self.clone().setup().await {
                Ok(()) => {
                    tracing::info!(lattice = %self.names.lattice, "joined the lattice (NATS is back)");
                    return;
                }
                Err(e) if e.errno == libc::EEXIST || e.errno == libc::EACCES => {
                    tracing::error!(error = %e, "cannot join the lattice: its peers stay local");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "lattice not joined yet"),
            }
        }
    }

    async fn register(self: &Arc<Self>, peer: &str) -> Result<()> {
        let kv = self.kv.get().ok_or_else(|| {
            err!(
                libc::EHOSTUNREACH,
                "the lattice directory is not reachable yet"
            )
        })?;
        if !self.answering.lock().unwrap().contains(peer) {
            alive::refuse_if_served(self, peer).await?;
        }
        let c = self.client.clone();
        let connected = move || c.connection_state() == async_nats::connection::State::Connected;
        directory::register(kv, peer, &self.worker, self.opts.timeout, connected).await?;
        if self.answering.lock().unwrap().insert(peer.to_string()) {
            self.rt.spawn(alive::answer(self.clone(), peer.to_string()));
        }
        self.dir
            .write()
            .unwrap()
            .insert(peer.to_string(), self.worker.clone());
        Ok(())
    }

    fn claim(self: &Arc<Self>, peer: &str) -> Result<()> {
        let l = self.clone();
        let p = peer.to_string();
        self.block_on(async move { l.register(&p).await })
    }

    /// Runs `f` on the lattice's runtime and waits for it (from a thread of the
    /// executor or the mount, never from inside the runtime).
    fn block_on<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv_timeout(self.opts.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(err!(libc::ETIMEDOUT, "the lattice did not answer in time")))
    }

    fn start_consumer(self: &Arc<Self>, peer: &str) {
        if !self.serving.lock().unwrap().insert(peer.to_string()) {
            return;
        }
        self.rt
            .spawn(transport::consume(self.clone(), peer.to_string()));
        self.rt.spawn(read::serve(self.clone(), peer.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let n = Names::new("lab").unwrap();
        let s = n.msg_subject("bob", "alice");
        assert_eq!(s, "peerfs.lab.msg.bob.alice");
        assert_eq!(n.parse_msg_subject(&s), Some(("bob", "alice")));
        assert_eq!(n.parse_msg_subject("peerfs.other.msg.bob.alice"), None);
        assert_eq!(n.parse_msg_subject("peerfs.lab.msg.bob.alice.x"), None);
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("").is_err());
    }

    #[test]
    fn url_users() {
        assert_eq!(
            url_user("nats://w1:s@127.0.0.1:4222").as_deref(),
            Some("w1")
        );
        assert_eq!(url_user("nats://127.0.0.1:4222"), None);
    }
}
