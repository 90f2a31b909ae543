//! The executor: one serial actor per peer on a bounded pool of runner threads.
//!
//! A peer's actor applies the writes queued for it (submissions, file writes,
//! deliveries) in one transaction, then runs queued scripts in another, one
//! savepoint per run, and commits many runs per fsync (group commit: whatever is
//! queued right now, no timer). Only after a commit are results published to
//! waiting readers and messages delivered to other peers.
//!
//! This file holds the [`Core`] (start, the open peers and their recovery,
//! shutdown); the rest lives beside it: `config` (settings and counters),
//! `op` (the [`Op`]s and their callbacks), `state` (the executor's state of an
//! open peer), `pool` (ready queue, runners, sweeper), `submit` (jobs and
//! messages), `txn` (group commit and its effects), `apply` (what each op does),
//! `run` (batches of runs, one run), `deliver` and `transport` (messages to
//! other peers), `slot`, `outbox` and `wait` (results and the readers waiting
//! for them), `result` (the result file's JSON), `provenance` (chains in the log,
//! stand-ins for undeliverable results), `metrics` (the recorder) and
//! `test_hooks` (crash tests).

mod apply;
mod config;
mod deliver;
mod history;
mod intake;
pub mod metrics;
mod op;
mod outbox;
mod pool;
mod provenance;
mod result;
mod run;
mod schema;
mod slot;
mod state;
mod submit;
pub(crate) mod test_hooks;
mod transport;
mod txn;
mod wait;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::err;
use crate::error::Result;
use crate::peer::{Peer, Registry};
use crate::script::{AstCache, Limits};

pub use config::{Config, Stats};
pub use intake::settle_journal;
pub use op::{Ack, Op, Waiter};
pub use result::RunResult;
pub use slot::{caller_slot, slot_caller};
use state::{actor, PendingResult};
pub use submit::{Dropped, Route};
pub use transport::{Delivery, DeliveryAck, InProcess, MessageKind, Transport};
pub(crate) use wait::block_on;

/// What changed at a peer, for caches above (the mount's kernel entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Inbox,
    /// A result appeared, changed or went (`name`: which one, when known).
    Outbox {
        target: String,
        name: Option<String>,
    },
    State,
    Log,
    Modules,
    Meta(String),
    /// Rows of declared tables were written (by a run or a row file).
    Rows,
}

pub trait Listener: Send + Sync {
    fn changed(&self, peer: &str, change: Change);
}

/// What the policy reaches through the core: peers (opened and recovered as
/// [`Core::peer`] does) and the configured limits.
impl crate::policy::Peers for Core {
    fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        Core::peer(self, name)
    }
    fn base_limits(&self, own: bool) -> &Limits {
        Core::base_limits(self, own)
    }
    fn serves_elsewhere(&self, name: &str) -> bool {
        Core::serves_elsewhere(self, name)
    }
    fn remote_get(
        &self,
        owner: &str,
        reader: &str,
        key: &str,
        script: &str,
        params: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>> {
        self.transport()
            .remote_get(owner, reader, key, script, params)
    }
}

struct Inner {
    cfg: Config,
    registry: Registry,
    ready: Mutex<VecDeque<Arc<Peer>>>,
    ready_cv: Condvar,
    /// Runs in flight end as interrupted (rolled back, still queued).
    stop: AtomicBool,
    /// Runners exit once the ready queue is empty.
    quit: AtomicBool,
    cache: Arc<AstCache>,
    listener: RwLock<Option<Arc<dyn Listener>>>,
    /// How messages of local peers reach their targets.
    transport: RwLock<Arc<dyn Transport>>,
    /// The peers' policies: what decides every run and host call.
    policy: Arc<crate::policy::PolicyGate>,
    stats: Stats,
    metrics: metrics::Metrics,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Reads waiting for results, watched for their reader's signals and time.
    waits: wait::WaitingReads,
    /// Where submissions become durable without waiting for their peer's runs.
    /// `None` when it cannot be opened (a read-only data folder): submissions
    /// then wait for their peer's actor, as everything else does.
    journal: Option<crate::store::journal::Journal>,
    /// To the journal's writer thread (`None` once stopping).
    intake: intake::Intake,
    /// Every store shipped to object storage, when configured.
    replica: Option<Arc<crate::replica::Replica>>,
}

/// How long a peer's first open waits for its replica's lease (an object
/// store slower than this: the peer is served, the lease taken at its upload).
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// The running core: registry, runner pool, executor. Cheap to clone.
#[derive(Clone)]
pub struct Core(Arc<Inner>);

impl Core {
    /// Opens the data directory and starts the runners.
    pub fn start(cfg: Config) -> Result<Core> {
        let registry = Registry::new(&cfg.data_dir, cfg.only.clone())?;
        // Before any store opens: the replica takes over their checkpoints.
        let replica = match &cfg.replica {
            Some(o) => {
                let names = registry.list().into_iter().map(|(n, _)| n).collect();
                Some(crate::replica::Replica::start(
                    o.clone(),
                    &cfg.data_dir,
                    names,
                )?)
            }
            None => None,
        };
        let journal = match crate::store::journal::Journal::open_in(&cfg.data_dir) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!(error = %e, "no intake journal: a submission waits for its peer's run in progress");
                None
            }
        };
        let (intake_tx, intake_rx) = std::sync::mpsc::channel();
        let policy = Arc::new(crate::policy::PolicyGate::new());
        let core = Core(Arc::new_cyclic(|me| Inner {
            transport: RwLock::new(Arc::new(InProcess::of(me.clone()))),
            registry,
            ready: Mutex::new(VecDeque::new()),
            ready_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            cache: Arc::new(AstCache::with_capacity(cfg.script_cache_entries)),
            listener: RwLock::new(None),
            policy,
            stats: Stats::default(),
            metrics: metrics::Metrics::new(cfg.metrics, cfg.metrics_top_peers),
            threads: Mutex::new(Vec::new()),
            waits: wait::WaitingReads::default(),
            journal,
            intake: Mutex::new(Some(intake_tx)),
            replica,
            cfg,
        }));
        let threads = core.spawn_threads(intake_rx)?;
        *core.0.threads.lock().unwrap() = threads;
        Ok(core)
    }

    /// The core's threads: the runners (big stacks: Rhai's own depth limits must
    /// trip before a thread's stack), the intake journal's writer, the sweeper,
    /// the thread that ends waiting reads, and recovery.
    fn spawn_threads(
        &self,
        intake_rx: std::sync::mpsc::Receiver<intake::Submission>,
    ) -> Result<Vec<std::thread::JoinHandle<()>>> {
        let spawn = |name: String, stack: Option<usize>, f: Box<dyn FnOnce() + Send>| {
            let b = std::thread::Builder::new().name(name);
            match stack {
                Some(n) => b.stack_size(n),
                None => b,
            }
            .spawn(f)
        };
        let mut threads = Vec::new();
        for i in 0..self.0.cfg.runners.max(1) {
            let c = self.clone();
            let runner = Box::new(move || c.runner());
            threads.push(spawn(format!("peerfs-runner-{i}"), Some(64 << 20), runner)?);
        }
        let c = self.clone();
        let writer = Box::new(move || c.journal_writer(intake_rx));
        threads.push(spawn("peerfs-intake".into(), None, writer)?);
        let c = self.clone();
        threads.push(spawn(
            "peerfs-sweeper".into(),
            None,
            Box::new(move || c.sweeper()),
        )?);
        let c = self.clone();
        let waits = Box::new(move || {
            while !c.0.quit.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                c.0.waits.tick();
            }
        });
        threads.push(spawn("peerfs-waits".into(), None, waits)?);
        let c = self.clone();
        threads.push(spawn(
            "peerfs-recovery".into(),
            None,
            Box::new(move || c.recover_all()),
        )?);
        Ok(threads)
    }

    pub fn config(&self) -> &Config {
        &self.0.cfg
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    pub fn cache(&self) -> &Arc<AstCache> {
        &self.0.cache
    }

    pub fn set_listener(&self, l: Arc<dyn Listener>) {
        *self.0.listener.write().unwrap() = Some(l);
    }

    /// The peers' policies (what decides runs and host calls).
    pub fn policy(&self) -> &Arc<crate::policy::PolicyGate> {
        &self.0.policy
    }

    pub(super) fn notify(&self, peer: &str, change: Change) {
        if let Some(l) = self.0.listener.read().unwrap().as_ref() {
            l.changed(peer, change);
        }
    }

    /// Creates a peer owned by `uid:gid`.
    pub fn create_peer(&self, name: &str, uid: u32, gid: u32) -> Result<()> {
        if self.0.registry.exists(name) {
            return Err(err!(libc::EEXIST, "peer {name:?} already exists"));
        }
        // In a lattice: no other daemon may serve a peer of this name.
        let transport = self.transport();
        transport.claim(name)?;
        self.0.registry.create(name, uid, gid)?;
        transport.serve_new(name);
        tracing::info!(peer = name, uid, "peer created");
        Ok(())
    }

    /// Moves a peer's store aside; returns where it went.
    pub fn remove_peer(&self, name: &str) -> Result<PathBuf> {
        if self.journal().map(|j| j.holds(name)).transpose()? == Some(true) {
            return Err(err!(
                libc::EBUSY,
                "peer {name:?} has submissions not yet in its queue: try again when it is idle"
            ));
        }
        let p = self.0.registry.remove(name)?;
        tracing::info!(peer = name, to = %p.display(), "peer removed (store moved aside)");
        Ok(p)
    }

    /// The open peer (opening and recovering it on first use).
    pub fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        if let Some(r) = &self.0.replica {
            // Moved to another worker, which took the replica's lease.
            if let Some(why) = r.fenced(name) {
                return Err(err!(libc::ESTALE, "{why}"));
            }
            if !self.0.registry.is_open(name) && self.0.registry.exists(name) {
                r.hold(name, LEASE_WAIT)?;
            }
        }
        let (peer, opened) = self.0.registry.open(name)?;
        if opened {
            self.recover(&peer)?;
        }
        Ok(peer)
    }

    /// After open: count queued runs, track unfinished results, and schedule work.
    pub(super) fn recover(&self, peer: &Arc<Peer>) -> Result<()> {
        let mut st = peer.writer.lock().unwrap();
        let queued = st.queue_len()?;
        let unfinished = st.outbox_unfinished()?;
        // Invalid rows are refused (marked) as they are read: look past them.
        let undelivered = loop {
            let some = !st.undelivered(1)?.is_empty();
            if some || st.take_refused() == 0 {
                break some;
            }
        };
        drop(st);
        actor(peer).queued.store(queued, Ordering::Relaxed);
        actor(peer)
            .has_undelivered
            .store(undelivered, Ordering::Relaxed);
        {
            let mut w = actor(peer).waits.lock().unwrap();
            for e in unfinished {
                w.entry((e.target, e.name)).or_insert(PendingResult {
                    run_id: e.run_id,
                    waiters: Vec::new(),
                });
            }
        }
        // What the intake journal holds for the peer is listed and pending from now.
        if let Err(e) = self.load_journal(peer) {
            // Read again at the actor's first turn.
            tracing::error!(peer = %peer.name, error = %e, "cannot read the intake journal");
        }
        let journaled = !actor(peer).held.lock().unwrap().entries.is_empty();
        if queued > 0 || undelivered || journaled {
            tracing::info!(peer = %peer.name, queued, undelivered, journaled, "recovering queued work");
            self.schedule(peer);
        }
        Ok(())
    }

    /// Opens every peer once in the background so queued work from before a restart
    /// runs without waiting for someone to touch the peer; idle ones close again.
    pub(super) fn recover_all(&self) {
        for (name, _) in self.0.registry.list() {
            if self.0.quit.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = self.peer(&name) {
                tracing::error!(peer = %name, error = %e, "cannot open peer for recovery");
            }
        }
    }

    /// Stops: runs in flight are rolled back (they stay queued), queued writes are
    /// applied, runners exit, and every store is closed.
    pub fn shutdown(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.quit.store(true, Ordering::SeqCst);
        self.0.ready_cv.notify_all();
        // The journal's writer commits what it was given, then ends.
        self.0.intake.lock().unwrap().take();
        let threads = std::mem::take(&mut *self.0.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
        // What the journal holds goes into the peers' queues (it runs at the next
        // start), so a peer's store is complete when the daemon stops.
        for p in self.0.registry.open_peers() {
            self.apply_turn(&p, Vec::new());
        }
        if let Some(j) = self.journal() {
            j.close();
        }
        // Anyone still waiting learns that the daemon stopped.
        self.0.waits.clear();
        for p in self.0.registry.open_peers() {
            let waits = std::mem::take(&mut *actor(&p).waits.lock().unwrap());
            for (_, pr) in waits {
                for w in pr.waiters {
                    w(Err(crate::Error::stopped("the result was ready")));
                }
            }
            let ops = std::mem::take(&mut actor(&p).work.lock().unwrap().ops);
            for (_, ack) in ops {
                if let Some(a) = ack {
                    a(Err(crate::Error::stopped("the change was applied")));
                }
            }
        }
        // Runs commit without their own fsync: make them durable before exiting.
        for p in self.0.registry.open_peers() {
            if let Err(e) = p.writer.lock().unwrap().checkpoint() {
                tracing::error!(peer = %p.name, error = %e, "checkpoint at shutdown failed");
            }
        }
        self.0.registry.sweep(-1, 0);
        // Last: what the stores committed is shipped, then checkpointed.
        if let Some(r) = &self.0.replica {
            r.stop();
        }
    }

    /// The replica of the stores, when configured.
    pub fn replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        self.0.replica.as_ref()
    }

    pub fn stopping(&self) -> bool {
        self.0.stop.load(Ordering::Relaxed)
    }
}
