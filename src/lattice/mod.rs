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

pub mod arrive;
pub mod creds;
pub mod handover;
pub mod provision;
pub mod server;

mod alive;
mod directory;
mod read;
mod transport;
mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::error::err;
use crate::error::Result;
use crate::exec::Core;

/// How to join a lattice (`[lattice]` in the config file, `--nats` and friends).
#[derive(Debug, Clone)]
pub struct Options {
    /// `nats://host:port` (credentials come only from `creds`).
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
    /// The messages to `peer` (its consumer's filter, and its subjects of the stream).
    pub fn msg_to(&self, peer: &str) -> String {
        format!("peerfs.{}.msg.{peer}.*", self.lattice)
    }
    /// The messages from `peer` (what its worker may publish).
    pub fn msg_from(&self, peer: &str) -> String {
        format!("peerfs.{}.msg.*.{peer}", self.lattice)
    }
    /// The JetStream API subject `verb` (`INFO`, `MSG.NEXT`) of `peer`'s consumer.
    pub fn consumer_api(&self, verb: &str, peer: &str) -> String {
        format!(
            "$JS.API.CONSUMER.{verb}.{}.{}",
            self.stream(),
            self.consumer(peer)
        )
    }
    /// The acknowledgements of the messages `peer`'s consumer hands out.
    pub fn acks_of(&self, peer: &str) -> String {
        format!("$JS.ACK.{}.{}.>", self.stream(), self.consumer(peer))
    }
    /// The directory's stream.
    pub fn kv_stream(&self) -> String {
        format!("KV_{}", self.bucket())
    }
    /// `peer`'s entry of the directory.
    pub fn entry_subject(&self, peer: &str) -> String {
        format!("$KV.{}.{peer}", self.bucket())
    }
    /// The reads of `owner`'s state (what `owner`'s worker answers).
    pub fn read_all(&self, owner: &str) -> String {
        format!("peerfs.{}.read.{owner}.*", self.lattice)
    }
    /// The reads as `reader` (what `reader`'s worker may ask).
    pub fn read_as(&self, reader: &str) -> String {
        format!("peerfs.{}.read.*.{reader}", self.lattice)
    }
    /// The inbox prefix of a NATS user: its replies and JetStream deliveries
    /// arrive under it, and only it may subscribe there.
    pub fn inbox_prefix(&self, user: &str) -> String {
        format!("_INBOX_{user}")
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
    /// The peers the stream has subjects for (provisioned), as read at setup: a
    /// message to one of them waits in the stream even before its worker first
    /// claimed it.
    provisioned: RwLock<std::collections::HashSet<String>>,
    /// The directory has been read once (until then, remote names are unknown).
    dir_loaded: AtomicBool,
    kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The local peers whose consumer runs.
    serving: Mutex<std::collections::HashSet<String>>,
    /// The local peers this process answers for (see `alive`).
    answering: Mutex<std::collections::HashSet<String>>,
    /// This process among the worker's (see `alive`).
    instance: String,
    /// The peers the credentials file says this worker may serve (`None`: a file
    /// from before it said).
    allowed: Option<std::collections::HashSet<String>>,
    /// The key of the message ids this process publishes (see [`Lattice::msg_id`]).
    msg_key: (u64, u64),
    publisher: tokio::sync::mpsc::UnboundedSender<transport::Publish>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Joins the lattice: connects, registers every local peer and starts their
/// consumers, and routes `core`'s messages through NATS. Refuses (`EEXIST`) when
/// another worker serves one of the local peers. When NATS cannot be reached
/// within `start_wait`, local work starts anyway and the lattice is joined in the
/// background.
pub fn join(core: &Core, opts: Options) -> Result<Arc<Lattice>> {
    let names = Names::new(&opts.name)?;
    let (creds, worker) = identity(&opts)?;
    let rt = runtime()?;
    let (client, js) = connect(&rt, &opts, &names, &worker, creds.as_ref())?;
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
        provisioned: RwLock::new(Default::default()),
        kv: tokio::sync::OnceCell::new(),
        serving: Mutex::new(Default::default()),
        answering: Mutex::new(Default::default()),
        instance: alive::instance(),
        allowed: creds
            .as_ref()
            .and_then(|c| c.peers.as_ref())
            .map(|p| p.iter().cloned().collect()),
        msg_key: msg_key(),
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
    core.set_transport(Arc::new(transport::Nats(l.clone())));
    tracing::info!(lattice = %l.names.lattice, worker = %l.worker, "joined the lattice");
    Ok(l)
}

/// Who this worker is: its credentials (if a file was given, for this lattice)
/// and its name (the credentials' user, or `lattice.worker` without them).
fn identity(opts: &Options) -> Result<(Option<creds::Creds>, String)> {
    refuse_secret_in_url(&opts.url)?;
    let creds = opts.creds.as_deref().map(creds::Creds::read).transpose()?;
    if let Some(c) = &creds {
        if let Some(l) = c.lattice.as_deref().filter(|l| *l != opts.name) {
            return Err(err!(
                libc::EINVAL,
                "the credentials {} are for the lattice {l}, not {}: drop --lattice (the file names it) or pass that worker's credentials",
                opts.creds.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
                opts.name
            ));
        }
    }
    if opts.url.is_empty() {
        return Err(err!(
            libc::EINVAL,
            "no NATS server: pass --nats nats://HOST:PORT (the credentials file names none)"
        ));
    }
    let worker = match (&opts.worker, &creds) {
        (Some(w), Some(c)) if *w != c.user => {
            return Err(err!(
                libc::EINVAL,
                "lattice.worker {w:?} is not the user of the credentials ({}): a worker's name is its NATS user; drop lattice.worker",
                c.user
            ))
        }
        (Some(w), _) => w.clone(),
        (None, Some(c)) => c.user.clone(),
        (None, None) => {
            return Err(err!(
                libc::EINVAL,
                "no worker name: pass --nats-creds (its user names the worker) or set lattice.worker"
            ))
        }
    };
    Ok((creds, worker))
}

/// The NATS connection of `worker` (retrying while the server is away) and its
/// JetStream context.
fn connect(
    rt: &tokio::runtime::Handle,
    opts: &Options,
    names: &Names,
    worker: &str,
    creds: Option<&creds::Creds>,
) -> Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let co = connect_options(opts, names, worker, creds);
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
    Ok((client, js))
}

/// How `worker` connects: its name, its credentials, its own inbox prefix,
/// retries while the server is away.
fn connect_options(
    opts: &Options,
    names: &Names,
    worker: &str,
    creds: Option<&creds::Creds>,
) -> async_nats::ConnectOptions {
    let mut co = async_nats::ConnectOptions::new()
        .name(format!("peerfs {worker}"))
        .retry_on_initial_connect()
        .connection_timeout(opts.timeout)
        .request_timeout(Some(opts.timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(1000)))
        .event_callback(|e| async move {
            use async_nats::Event;
            match e {
                Event::Connected | Event::Disconnected => tracing::info!(event = %e, "nats"),
                // A permissions violation: this worker asked for something its
                // credentials do not allow (a configuration to fix, not noise).
                Event::ServerError(_) => tracing::warn!(event = %e, "nats"),
                // Connection attempts while the server is away, slow consumers:
                // every retry would say it again.
                _ => tracing::debug!(event = %e, "nats"),
            }
        });
    // Replies and deliveries under the worker's (its user's) own prefix: the
    // server lets no other worker read there.
    co = co.custom_inbox_prefix(names.inbox_prefix(worker));
    if let Some(c) = creds {
        co = co.user_and_password(c.user.clone(), c.password.clone());
    }
    co
}

/// Credentials in a URL would be in argv (every local user's `ps`) and in
/// `config show`: they come from a file (`--nats-creds`) only.
pub(crate) fn refuse_secret_in_url(url: &str) -> Result<()> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains('@') {
        return Err(err!(
            libc::EINVAL,
            "--nats: credentials in the URL would be readable in the process list; pass nats://HOST:PORT and the credentials file from `peerfs lattice init` with --nats-creds"
        ));
    }
    Ok(())
}

/// A random key from the kernel (a fixed one only if there is no
/// `/dev/urandom`, where ids then stay unique but not secret).
fn msg_key() -> (u64, u64) {
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if let Err(e) = read {
        tracing::warn!(error = %e, "no random key for message ids");
    }
    (
        u64::from_le_bytes(b[..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..].try_into().unwrap()),
    )
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

    /// Whether `reply` is in the inbox of `worker` (its NATS user): the only place
    /// an answer to a request from that worker goes. A request names its own
    /// reply subject, so a worker could otherwise have another publish anything
    /// anywhere that one may publish (its directory entry, its peers' messages,
    /// their acknowledgements).
    fn reply_goes_to(&self, reply: &str, worker: &str) -> bool {
        reply
            .strip_prefix(self.names.inbox_prefix(worker).as_str())
            .is_some_and(|rest| rest.starts_with('.') && !rest.contains(['*', '>']))
    }

    /// The worker serving `peer`, as the directory says.
    pub fn worker_of(&self, peer: &str) -> Option<String> {
        self.dir.read().unwrap().get(peer).cloned()
    }

    /// The same, asked of the server: the copy [`Lattice::worker_of`] reads
    /// follows the directory a moment behind (a peer that has just joined).
    pub(super) async fn worker_of_now(&self, peer: &str) -> Option<String> {
        let kv = self.kv.get()?;
        let v = tokio::time::timeout(self.opts.timeout, kv.get(peer)).await;
        let v = v.ok()?.ok()??;
        Some(String::from_utf8_lossy(&v).into_owned())
    }

    /// The `Nats-Msg-Id` of a message (or batch) `id` on `subject`: the id and a
    /// keyed hash of both that no other worker can compute. JetStream's
    /// duplicate window is the stream's, so an id another worker could predict
    /// (a result's is its script's id and `-result`) would let it publish first
    /// under that id and have the real message dropped as a duplicate. The key
    /// is this process's: a message published again after a restart gets another
    /// id, and its target recognises it by sender and id in its store.
    fn msg_id(&self, subject: &str, id: &str) -> String {
        use siphasher::sip128::{Hasher128, SipHasher13};
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.msg_key.0, self.msg_key.1);
        h.write(subject.as_bytes());
        h.write_u8(0);
        h.write(id.as_bytes());
        format!("{id}.{:032x}", h.finish128().as_u128())
    }

    /// `EACCES` when the credentials file does not name `peer` among this
    /// worker's peers (the server would refuse every publish as it).
    fn check_allowed(&self, peer: &str) -> Result<()> {
        match &self.allowed {
            Some(a) if !a.contains(peer) => {
                let mut list: Vec<&str> = a.iter().map(String::as_str).collect();
                list.sort();
                Err(err!(
                    libc::EACCES,
                    "peer {peer} is not among the peers of worker {} in the lattice {} (its credentials allow {}): add it with `peerfs lattice init ... --worker {}={},{peer}` and `peerfs lattice provision`, then reload nats-server and restart this worker",
                    self.worker,
                    self.names.lattice,
                    if list.is_empty() { "none".to_string() } else { list.join(", ") },
                    self.worker,
                    list.join(",")
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether `peer` is a peer of the lattice: in the directory, or provisioned
    /// (its worker has not claimed it yet).
    pub fn knows(&self, peer: &str) -> bool {
        self.worker_of(peer).is_some() || self.provisioned.read().unwrap().contains(peer)
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
        let peers: Vec<String> = self
            .core
            .registry()
            .list()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        // Served by another worker (moved away): said first, before anything
        // this worker may no longer ask about the peer.
        let kv = directory::check_bucket(&self).await?;
        for p in &peers {
            directory::refuse_if_elsewhere(&kv, p, &self.worker).await?;
            self.check_allowed(p)?;
        }
        let s = transport::check_stream(&self, &peers).await?;
        let prefix = format!("peerfs.{}.msg.", self.names.lattice);
        *self.provisioned.write().unwrap() = s
            .cached_info()
            .config
            .subjects
            .iter()
            .filter_map(|x| x.strip_prefix(&prefix)?.strip_suffix(".*"))
            .map(String::from)
            .collect();
        for p in &peers {
            transport::check_consumer(&self, &s, p).await?;
        }
        let _ = self.kv.set(kv);
        for peer in &peers {
            self.register(peer).await?;
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
        let mut said = None;
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
                Err(e) if e.errno == libc::EEXIST => {
                    tracing::error!(error = %e, "cannot join the lattice: its peers stay local");
                    return;
                }
                // Not provisioned (yet: the operator may run `lattice provision`
                // now, or JetStream is still loading its streams after a
                // restart): said once, tried again.
                Err(e) if e.errno == libc::EACCES => {
                    if said.as_ref() != Some(&e.message) {
                        tracing::error!(error = %e, "cannot join the lattice yet: its peers stay local until it is provisioned");
                        said = Some(e.message);
                    }
                    tokio::time::sleep(Duration::from_millis(1500)).await;
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

    /// Claims a peer made while the daemon runs (`mkdir`): refused at once, with
    /// the reason, when this worker may not serve it or it is not provisioned.
    fn claim(self: &Arc<Self>, peer: &str) -> Result<()> {
        if let Some(w) = self.worker_of(peer).filter(|w| *w != self.worker) {
            return Err(directory::served_by(peer, &w));
        }
        self.check_allowed(peer)?;
        let l = self.clone();
        let p = peer.to_string();
        self.block_on(async move {
            let s = transport::check_stream(&l, std::slice::from_ref(&p)).await?;
            transport::check_consumer(&l, &s, &p).await?;
            l.register(&p).await
        })
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
        // A claim asks several times (stream, consumer, who serves, the entry's
        // create, which may wait 3 timeouts); each step has its own deadline.
        rx.recv_timeout(self.opts.timeout * 6 + Duration::from_secs(1))
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
    fn secrets_in_urls_are_refused() {
        assert!(refuse_secret_in_url("nats://w1:s@127.0.0.1:4222").is_err());
        assert!(refuse_secret_in_url("w1@127.0.0.1:4222").is_err());
        refuse_secret_in_url("nats://127.0.0.1:4222").unwrap();
        refuse_secret_in_url("127.0.0.1:4222").unwrap();
    }
}
