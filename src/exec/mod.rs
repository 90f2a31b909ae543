//! The executor: one serial actor per peer on a bounded pool of worker threads.
//!
//! A peer's actor applies the writes queued for it (submissions, file writes,
//! deliveries) in one transaction, then runs queued scripts in another, one
//! savepoint per run, and commits many runs per fsync (group commit: whatever is
//! queued right now, no timer). Only after a commit are results published to
//! waiting readers and messages delivered to other peers.

pub mod metrics;
mod provenance;
mod result;
mod test_hooks;
pub mod transport;
mod wait;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::err;
use crate::error::{Error, Result};
use crate::peer::name::{check_peer_name, script_stem};
use crate::peer::{Ack, Op, Peer, PendingResult, Registry, Waiter};
use crate::script::{self, AstCache, Host, Library, Limits, Outcome, RunInput, Status};
use crate::store::{Job, OutboxEntry, Outgoing, Store};
use crate::util::{new_id, now_ns, rfc3339};

use provenance::{chain_note, unreadable_result};
pub use result::RunResult;

/// The outbox row target under which a peer keeps the results of scripts `caller`
/// dropped at it (`@caller`: `@` is never part of a peer name, so these rows never
/// mix with the peer's own outbox or its views of others).
pub fn caller_slot(caller: &str) -> String {
    format!("@{caller}")
}

/// The caller whose slot an outbox row's target is, if it is one.
pub fn slot_caller(target: &str) -> Option<&str> {
    target.strip_prefix('@')
}

/// Where `peer` keeps the result of a run for `caller`: its own outbox, or the
/// caller's slot.
fn result_slot(peer: &str, caller: &str) -> String {
    if peer == caller {
        peer.to_string()
    } else {
        caller_slot(caller)
    }
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Worker threads that run peers' actors.
    pub workers: usize,
    /// Open peers kept at most (idle ones beyond this are closed first).
    pub max_open_peers: usize,
    /// An open peer with no work is closed after this long.
    pub idle_close: Duration,
    /// Sandbox limits for scripts other peers send (the target's policy can only
    /// tighten them): config `[limits.others]`.
    pub limits: Limits,
    /// Sandbox limits for a peer's own scripts: config `[limits.own]`.
    pub own_limits: Limits,
    /// Runs kept in each peer's history.
    pub run_retention: u64,
    pub library: Library,
    /// Most runs committed together; a batch also ends after `batch_max_time`.
    pub batch_max_runs: usize,
    pub batch_max_time: Duration,
    /// Runs made inside a write transaction, before its commit (see `apply_ops`):
    /// at most this long in all; a run still going then gives way and stays queued.
    /// Zero: runs always have a transaction of their own.
    pub inline_runs: Duration,
    /// Serve only these peers (isolated deployment).
    pub only: Option<Vec<String>>,
    /// Runs a chain may make in all: the first script of a chain has this budget,
    /// and every run shares what is left of its own among the scripts it sends, so
    /// any chain ends (a send worm too), however it fans out.
    pub chain_budget: u64,
    /// A queued script whose runs started this many times without finishing (the
    /// daemon crashed or was killed each time) ends with an `error` result.
    pub max_attempts: u32,
    /// A message whose delivery failed this many times becomes an `error` result.
    pub delivery_tries: u32,
    /// Longest a read of a pending result waits (then `ETIMEDOUT`; the result
    /// stays pending). A reader killed or interrupted meanwhile gets `EINTR`.
    pub result_wait: Duration,
    /// Record run durations, commit latency, decisions and per-peer figures
    /// (config `metrics.enabled`), and export the busiest `metrics_top_peers`.
    pub metrics: bool,
    pub metrics_top_peers: usize,
    /// Compiled scripts and modules cached at most.
    pub script_cache_entries: usize,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Config {
            data_dir: data_dir.into(),
            workers: (cores * 2).max(4),
            max_open_peers: 4096,
            idle_close: Duration::from_secs(30),
            limits: Limits::others(),
            own_limits: Limits::own(),
            run_retention: 10_000,
            library: Library::Embedded,
            batch_max_runs: 256,
            batch_max_time: Duration::from_millis(20),
            inline_runs: Duration::from_millis(1),
            only: None,
            chain_budget: 1000,
            max_attempts: 3,
            delivery_tries: 5,
            result_wait: Duration::from_secs(120),
            metrics: true,
            metrics_top_peers: 20,
            script_cache_entries: crate::script::cache::MAX_ENTRIES,
        }
    }
}

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
}

pub trait Listener: Send + Sync {
    fn changed(&self, peer: &str, change: Change);
}

/// Counters shown in `.peerfs/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub submissions: AtomicU64,
    pub runs: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_error: AtomicU64,
    pub runs_denied: AtomicU64,
    pub runs_limit: AtomicU64,
    /// Runs started inside a write transaction that gave way (rolled back, run
    /// again from the queue).
    pub runs_gave_way: AtomicU64,
    pub commits: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub writes: AtomicU64,
}

/// Decides, for a run, what the script may do and under which limits.
pub trait Gate: Send + Sync {
    /// `Err` = refused at `run` (the message names the action and the policy).
    fn prepare(
        &self,
        core: &Core,
        target: &Arc<Peer>,
        job: &Job,
    ) -> std::result::Result<(Box<dyn Host>, Limits), String>;
}

struct Inner {
    cfg: Config,
    registry: Registry,
    ready: Mutex<VecDeque<Arc<Peer>>>,
    ready_cv: Condvar,
    /// Runs in flight end as interrupted (rolled back, still queued).
    stop: AtomicBool,
    /// Workers exit once the ready queue is empty.
    quit: AtomicBool,
    cache: Arc<AstCache>,
    listener: RwLock<Option<Arc<dyn Listener>>>,
    gate: Arc<dyn Gate>,
    policy: Arc<crate::policy::PolicyGate>,
    stats: Stats,
    metrics: metrics::Metrics,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Reads waiting for results, watched for their reader's signals and time.
    watch: wait::Watch,
    /// How messages leave (`None`: in process).
    transport: RwLock<Option<Arc<dyn transport::Transport>>>,
}

/// The running core: registry, worker pool, executor. Cheap to clone.
#[derive(Clone)]
pub struct Core(Arc<Inner>);

/// An in-memory consequence of an op or run, applied after its commit.
enum Effect {
    None,
    Queued,
    Pending {
        target: String,
        name: String,
        run_id: String,
    },
    Result {
        target: String,
        name: String,
        run_id: String,
        bytes: Arc<Vec<u8>>,
        submitted_at: i64,
        finished_at: i64,
    },
    Undelivered,
    /// A queued script left the queue without a run of the batch (withdrawn).
    Dequeued,
    Changed(Change),
}

impl Core {
    /// Opens the data directory and starts the workers.
    pub fn start(cfg: Config) -> Result<Core> {
        let registry = Registry::new(&cfg.data_dir, cfg.only.clone())?;
        let policy = Arc::new(crate::policy::PolicyGate::new());
        let core = Core(Arc::new(Inner {
            registry,
            ready: Mutex::new(VecDeque::new()),
            ready_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            cache: Arc::new(AstCache::with_capacity(cfg.script_cache_entries)),
            listener: RwLock::new(None),
            gate: Arc::new(policy.clone()),
            policy,
            stats: Stats::default(),
            metrics: metrics::Metrics::new(cfg.metrics, cfg.metrics_top_peers),
            threads: Mutex::new(Vec::new()),
            watch: wait::Watch::default(),
            transport: RwLock::new(None),
            cfg,
        }));
        let mut threads = Vec::new();
        for i in 0..core.0.cfg.workers.max(1) {
            let c = core.clone();
            // Big stacks: Rhai's own depth limits must trip before the thread's stack.
            threads.push(
                std::thread::Builder::new()
                    .name(format!("peerfs-worker-{i}"))
                    .stack_size(64 << 20)
                    .spawn(move || c.worker())?,
            );
        }
        let c = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("peerfs-sweeper".into())
                .spawn(move || c.sweeper())?,
        );
        let c = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("peerfs-watch".into())
                .spawn(move || {
                    while !c.0.quit.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        c.0.watch.tick();
                    }
                })?,
        );
        let c = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("peerfs-recovery".into())
                .spawn(move || c.recover_all())?,
        );
        *core.0.threads.lock().unwrap() = threads;
        Ok(core)
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

    /// The peers' policies (what the gate decides runs and host calls with).
    pub fn policy(&self) -> &Arc<crate::policy::PolicyGate> {
        &self.0.policy
    }

    fn notify(&self, peer: &str, change: Change) {
        if let Some(l) = self.0.listener.read().unwrap().as_ref() {
            l.changed(peer, change);
        }
    }

    /// Creates a peer owned by `uid:gid`.
    pub fn create_peer(&self, name: &str, uid: u32, gid: u32) -> Result<()> {
        if self.0.registry.exists(name) {
            return Err(err!(libc::EEXIST, "peer {name:?} already exists"));
        }
        crate::lattice::claim(name)?;
        self.0.registry.create(name, uid, gid)?;
        crate::lattice::serve_new(name);
        tracing::info!(peer = name, uid, "peer created");
        Ok(())
    }

    /// Moves a peer's store aside; returns where it went.
    pub fn remove_peer(&self, name: &str) -> Result<PathBuf> {
        let p = self.0.registry.remove(name)?;
        tracing::info!(peer = name, to = %p.display(), "peer removed (store moved aside)");
        Ok(p)
    }

    /// The open peer (opening and recovering it on first use).
    pub fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        let (peer, opened) = self.0.registry.open(name)?;
        if opened {
            self.recover(&peer)?;
        }
        Ok(peer)
    }

    /// After open: count queued runs, track unfinished results, and schedule work.
    fn recover(&self, peer: &Arc<Peer>) -> Result<()> {
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
        peer.queued.store(queued, Ordering::Relaxed);
        peer.has_undelivered.store(undelivered, Ordering::Relaxed);
        {
            let mut w = peer.waits.lock().unwrap();
            for e in unfinished {
                w.entry((e.target, e.name)).or_insert(PendingResult {
                    run_id: e.run_id,
                    waiters: Vec::new(),
                });
            }
        }
        if queued > 0 || undelivered {
            tracing::info!(peer = %peer.name, queued, undelivered, "recovering queued work");
            self.schedule(peer);
        }
        Ok(())
    }

    /// Opens every peer once in the background so queued work from before a restart
    /// runs without waiting for someone to touch the peer; idle ones close again.
    fn recover_all(&self) {
        for (name, _) in self.0.registry.list() {
            if self.0.quit.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = self.peer(&name) {
                tracing::error!(peer = %name, error = %e, "cannot open peer for recovery");
            }
        }
    }

    fn schedule(&self, peer: &Arc<Peer>) {
        let mut w = peer.work.lock().unwrap();
        if !w.scheduled {
            w.scheduled = true;
            drop(w);
            self.0.ready.lock().unwrap().push_back(peer.clone());
            self.0.ready_cv.notify_one();
        }
    }

    /// Queues `op` for `peer`'s actor; `ack` is called after it committed (or failed).
    pub fn apply_async(&self, peer: &str, op: Op, ack: Option<Ack>) {
        match self.peer(peer) {
            Ok(p) => self.push(&p, op, ack),
            Err(e) => {
                if let Some(a) = ack {
                    a(Err(e))
                }
            }
        }
    }

    fn push(&self, p: &Arc<Peer>, op: Op, ack: Option<Ack>) {
        let mut w = p.work.lock().unwrap();
        w.ops.push((op, ack));
        if !w.scheduled {
            w.scheduled = true;
            drop(w);
            self.0.ready.lock().unwrap().push_back(p.clone());
            self.0.ready_cv.notify_one();
        }
    }

    /// Applies `op` and waits until it is durable.
    pub fn apply(&self, peer: &str, op: Op) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.apply_async(
            peer,
            op,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.recv().map_err(|_| {
            err!(
                libc::EIO,
                "the daemon stopped before the change was applied"
            )
        })?
    }

    /// A new job for `peer`'s own queue (the owner's script).
    pub fn new_job(&self, peer: &str, name: &str, source: Vec<u8>, params: &Value) -> Result<Job> {
        self.check_script_size(name, source.len(), true)?;
        Ok(Job {
            seq: 0,
            id: new_id(),
            name: name.to_string(),
            source,
            caller: peer.to_string(),
            params: serde_json::to_string(params)?,
            msg_id: None,
            hops: 0,
            submitted_at: now_ns(),
            chain: vec![peer.to_string()],
            budget: self.0.cfg.chain_budget,
            attempts: 0,
        })
    }

    /// Submits the owner's script and waits until it is durable; returns the run id.
    pub fn submit(&self, peer: &str, name: &str, source: Vec<u8>) -> Result<String> {
        let job = self.new_job(peer, name, source, &Value::Object(Default::default()))?;
        let id = job.id.clone();
        self.apply(peer, Op::Submit(job))?;
        Ok(id)
    }

    /// A script `caller` drops at `target` (`MOUNT/caller/peers/target/inbox/`): it
    /// goes straight into the target's queue (one durable commit at the target, as
    /// for the owner's scripts) and its result is kept at the target, in a slot of
    /// the caller's ([`caller_slot`]), shown in `caller/peers/target/outbox/`.
    pub fn new_job_from(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &Value,
    ) -> Result<Job> {
        check_peer_name(caller)?;
        check_peer_name(target)?;
        self.check_script_size(name, source.len(), caller == target)?;
        let mut job = self.new_job(caller, name, source, params)?;
        job.hops = u32::from(caller != target);
        Ok(job)
    }

    /// The limits a run gets before any policy: the owner's own, or others'.
    pub fn base_limits(&self, own: bool) -> &Limits {
        if own {
            &self.0.cfg.own_limits
        } else {
            &self.0.cfg.limits
        }
    }

    fn check_script_size(&self, name: &str, len: usize, own: bool) -> Result<()> {
        let (max, set) = (
            self.base_limits(own).max_script_bytes,
            if own { "own" } else { "others" },
        );
        if len as u64 > max {
            return Err(err!(
                libc::EFBIG,
                "script {name} is {len} bytes: the most a script may have is {max} (limits.{set}.max_script_bytes)"
            ));
        }
        Ok(())
    }

    /// Submits a script from `caller` to run at `target` (caller's `peers/target/inbox`)
    /// and waits until it is durable; returns the run id.
    pub fn submit_to(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &Value,
    ) -> Result<String> {
        if crate::lattice::serves_elsewhere(self, target) {
            // Served by another daemon of the lattice: a message from the caller.
            let msg = self.drop_message(caller, target, name, source, params)?;
            let id = msg.id.clone();
            self.apply(caller, Op::Send(msg))?;
            return Ok(id);
        }
        let job = self.new_job_from(caller, target, name, source, params)?;
        let id = job.id.clone();
        self.apply(target, Op::Submit(job))?;
        Ok(id)
    }

    /// Where the result `name` of `peer`'s outbox for `target` lives: the peer
    /// holding it and the outbox row's target. A script `peer` dropped at `target`
    /// has its result at `target` (in `peer`'s slot); one that `peer`'s own script
    /// sent has it at `peer`. When both exist, the dropped one shows.
    fn result_place(&self, peer: &str, target: &str, name: &str) -> Result<(Arc<Peer>, String)> {
        self.result_at(peer, target, name, false)
            .map(|(p, key, _)| (p, key))
    }

    /// [`Core::result_place`], with the entry found there (`None`: none, or its
    /// submission is not committed yet). `fetch`: also read it when it is `peer`'s
    /// own (a held one is read anyway, to know where it is).
    fn result_at(
        &self,
        peer: &str,
        target: &str,
        name: &str,
        fetch: bool,
    ) -> Result<(Arc<Peer>, String, Option<OutboxEntry>)> {
        if peer != target {
            if let Ok(t) = self.peer(target) {
                let slot = caller_slot(peer);
                let e = Self::entry(&t, &slot, name)?;
                if e.is_some()
                    || t.waits
                        .lock()
                        .unwrap()
                        .contains_key(&(slot.clone(), name.to_string()))
                {
                    return Ok((t, slot, e));
                }
            }
        }
        let p = self.peer(peer)?;
        let e = if fetch {
            Self::entry(&p, target, name)?
        } else {
            None
        };
        Ok((p, target.to_string(), e))
    }

    /// The outbox row `(key, name)` of `p`: from memory if just published.
    fn entry(p: &Peer, key: &str, name: &str) -> Result<Option<OutboxEntry>> {
        if let Some(r) = p.recent.lock().unwrap().get(key, name) {
            return Ok(Some(OutboxEntry {
                target: key.to_string(),
                name: name.to_string(),
                run_id: r.run_id.clone(),
                result: Some(String::from_utf8_lossy(&r.bytes).into_owned()),
                submitted_at: r.submitted_at,
                finished_at: Some(r.finished_at),
            }));
        }
        p.read(|s| s.outbox_get(key, name))
    }

    /// The results in `peer`'s outbox for `target` (`peer` itself: its own outbox).
    pub fn outbox_list(&self, peer: &str, target: &str) -> Result<Vec<OutboxEntry>> {
        let mut out = self.peer(peer)?.read(|s| s.outbox_list(target))?;
        if peer != target {
            if let Ok(t) = self.peer(target) {
                let slot = caller_slot(peer);
                let held = t.read(|s| s.outbox_list(&slot))?;
                out.retain(|e| !held.iter().any(|h| h.name == e.name));
                out.extend(held.into_iter().map(|mut h| {
                    h.target = target.to_string();
                    h
                }));
            }
        }
        Ok(out)
    }

    /// One result of `peer`'s outbox for `target`.
    pub fn outbox_get(&self, peer: &str, target: &str, name: &str) -> Result<Option<OutboxEntry>> {
        let (_, _, e) = self.result_at(peer, target, name, true)?;
        Ok(e.map(|mut e| {
            e.target = target.to_string();
            e
        }))
    }

    /// Withdraws the queued scripts named `name` of `peer`'s own queue (`rm` in its
    /// inbox): they end unrun with an `error` result that says so.
    pub fn withdraw(&self, peer: &str, name: &str) -> Result<()> {
        self.apply(peer, Op::Withdraw(name.to_string()))
    }

    /// Discards a result (`rm` in an outbox).
    pub fn outbox_remove(&self, peer: &str, target: &str, name: &str) -> Result<()> {
        let (p, key) = self.result_place(peer, target, name)?;
        let holder = p.name.clone();
        drop(p);
        self.apply(&holder, Op::OutboxRemove(key, name.to_string()))
    }

    pub fn new_message(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &Value,
        hops: u32,
    ) -> Result<Outgoing> {
        check_peer_name(target)?;
        let job = self.new_job(caller, name, source, params)?;
        Ok(Outgoing {
            id: job.id,
            to: target.to_string(),
            kind: "script".into(),
            name: job.name,
            source: job.source,
            params: job.params,
            hops,
            payload: String::new(),
            created_at: job.submitted_at,
            chain: job.chain,
            budget: job.budget,
        })
    }

    /// The job a script message from `from` becomes at its target: its chain ends
    /// with `from` whatever the message says (a sender cannot leave itself out),
    /// its hops within the hop limit, its budget within the daemon's.
    fn received_job(&self, from: &str, msg: &Outgoing) -> Result<Job> {
        // A bound on the row, not the run's own limit (which the run checks): no
        // script of either set of limits may have come through more sends.
        let hop_limit = self
            .0
            .cfg
            .limits
            .hop_limit
            .max(self.0.cfg.own_limits.hop_limit);
        if u64::from(msg.hops) > hop_limit {
            return Err(err!(
                libc::EINVAL,
                "message {} from {from} came through {} sends: more than hop_limit ({hop_limit})",
                msg.id,
                msg.hops,
            ));
        }
        let mut chain = msg.chain.clone();
        if chain.last().map(String::as_str) != Some(from) {
            chain.push(from.to_string());
        }
        Ok(Job {
            seq: 0,
            id: msg.id.clone(),
            name: msg.name.clone(),
            source: msg.source.clone(),
            caller: from.to_string(),
            params: msg.params.clone(),
            msg_id: Some(msg.id.clone()),
            hops: msg.hops,
            submitted_at: msg.created_at,
            chain,
            budget: match msg.budget {
                0 => self.0.cfg.chain_budget,
                b => b.min(self.0.cfg.chain_budget),
            },
            attempts: 0,
        })
    }

    /// Calls `waiter` with the result in `peer`'s outbox for `target` (`peer` itself
    /// for its own runs) named `name` (e.g. `job.json`), as soon as it is ready.
    pub fn read_result(&self, peer: &str, target: &str, name: &str, waiter: Waiter) {
        let (p, target) = match self.result_place(peer, target, name) {
            Ok(r) => r,
            Err(e) => return waiter(Err(e)),
        };
        let target = target.as_str();
        let key = (target.to_string(), name.to_string());
        let mut waits = p.waits.lock().unwrap();
        if let Some(pending) = waits.get_mut(&key) {
            pending.waiters.push(waiter);
            return;
        }
        // Not pending: the committed row is final (read under the lock, so a run that
        // finishes now publishes after we looked).
        let recent = p
            .recent
            .lock()
            .unwrap()
            .get(target, name)
            .map(|r| r.bytes.clone());
        if let Some(bytes) = recent {
            drop(waits);
            return waiter(Ok(bytes));
        }
        match p.read(|s| s.outbox_get(target, name)) {
            Ok(Some(e)) => match e.result {
                Some(r) => {
                    drop(waits);
                    waiter(Ok(Arc::new(r.into_bytes())))
                }
                None => waits
                    .entry(key)
                    .or_insert(PendingResult {
                        run_id: e.run_id,
                        waiters: vec![],
                    })
                    .waiters
                    .push(waiter),
            },
            Ok(None) => {
                drop(waits);
                waiter(Err(err!(
                    libc::ENOENT,
                    "no result named {name} in {peer}'s outbox"
                )))
            }
            Err(e) => {
                drop(waits);
                waiter(Err(e))
            }
        }
    }

    /// [`Core::read_result`] for a reader, thread `pid` (0: unknown), whose wait
    /// is bounded by `Config::result_wait` and ends with `EINTR` when the reader
    /// is killed or interrupted meanwhile (see `exec::wait`).
    pub fn read_result_as(&self, peer: &str, target: &str, name: &str, pid: u32, waiter: Waiter) {
        let (slot, w) = wait::shared(waiter);
        self.read_result(peer, target, name, w);
        let what = format!("{peer}'s result {name} from {target}");
        self.0.watch.add(slot, pid, self.0.cfg.result_wait, what);
    }

    /// Answers every read waiting for a result with `ENOTCONN` (the daemon stops).
    pub fn end_waits(&self) {
        self.0.watch.clear();
    }

    /// Whether a result is still pending (for `O_NONBLOCK` opens).
    pub fn result_pending(&self, peer: &str, target: &str, name: &str) -> Result<bool> {
        let (p, key) = self.result_place(peer, target, name)?;
        let pending = p
            .waits
            .lock()
            .unwrap()
            .contains_key(&(key, name.to_string()));
        Ok(pending)
    }

    /// Waits for a result (blocking).
    pub fn wait_result(&self, peer: &str, target: &str, name: &str) -> Result<Arc<Vec<u8>>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.read_result(
            peer,
            target,
            name,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .map_err(|_| err!(libc::EIO, "the daemon stopped before the result was ready"))?
    }

    /// Submits the owner's script, waits for its result and returns it parsed.
    pub fn run(&self, peer: &str, name: &str, source: &str) -> Result<Value> {
        self.submit(peer, name, source.as_bytes().to_vec())?;
        let bytes = self.wait_result(peer, peer, &format!("{}.json", script_stem(name)))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Stops: runs in flight are rolled back (they stay queued), queued writes are
    /// applied, workers exit, and every store is closed.
    pub fn shutdown(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.quit.store(true, Ordering::SeqCst);
        self.0.ready_cv.notify_all();
        let threads = std::mem::take(&mut *self.0.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
        // Anyone still waiting learns that the daemon stopped.
        self.0.watch.clear();
        for p in self.0.registry.open_peers() {
            let waits = std::mem::take(&mut *p.waits.lock().unwrap());
            for (_, pr) in waits {
                for w in pr.waiters {
                    w(Err(err!(
                        libc::EINTR,
                        "the daemon stopped before the result was ready"
                    )));
                }
            }
            let ops = std::mem::take(&mut p.work.lock().unwrap().ops);
            for (_, ack) in ops {
                if let Some(a) = ack {
                    a(Err(err!(
                        libc::EIO,
                        "the daemon stopped before the change was applied"
                    )));
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
    }

    pub fn stopping(&self) -> bool {
        self.0.stop.load(Ordering::Relaxed)
    }

    fn sweeper(&self) {
        let idle = self.0.cfg.idle_close.as_nanos() as i64;
        let mut tick = 0u64;
        while !self.0.quit.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            tick += 1;
            if tick.is_multiple_of(5) {
                self.0.registry.sweep(idle, self.0.cfg.max_open_peers);
                // Retry deliveries that did not land (target busy, disk full, ...).
                for p in self.0.registry.open_peers() {
                    if p.has_undelivered.load(Ordering::Relaxed) {
                        self.schedule(&p);
                    }
                }
            } else if self.0.registry.open_count() > self.0.cfg.max_open_peers {
                self.0.registry.sweep(idle, self.0.cfg.max_open_peers);
            }
        }
    }

    fn worker(&self) {
        loop {
            let peer = {
                let mut q = self.0.ready.lock().unwrap();
                loop {
                    if let Some(p) = q.pop_front() {
                        break p;
                    }
                    if self.0.quit.load(Ordering::SeqCst) {
                        return;
                    }
                    q = self
                        .0
                        .ready_cv
                        .wait_timeout(q, Duration::from_millis(200))
                        .unwrap()
                        .0;
                }
            };
            self.process(&peer);
            let stop = self.0.stop.load(Ordering::Relaxed);
            let mut w = peer.work.lock().unwrap();
            if !w.ops.is_empty() || (!stop && peer.queued() > 0) {
                drop(w);
                self.0.ready.lock().unwrap().push_back(peer);
                self.0.ready_cv.notify_one();
            } else {
                w.scheduled = false;
            }
        }
    }

    /// One turn of a peer's actor.
    fn process(&self, peer: &Arc<Peer>) {
        let ops = std::mem::take(&mut peer.work.lock().unwrap().ops);
        if !ops.is_empty() {
            self.apply_ops(peer, ops);
        }
        if peer.queued() > 0 && !self.0.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.run_batch(peer) {
                tracing::error!(peer = %peer.name, error = %e, "run batch failed; the scripts stay queued");
                // Do not spin on a failing store: the sweeper's retry comes later.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Not while stopping: deliveries make work at other peers, which makes
        // more deliveries; what is undelivered stays in `sent` for the next start.
        if peer.has_undelivered.load(Ordering::Relaxed) && !self.0.stop.load(Ordering::Relaxed) {
            self.deliver(peer);
        }
    }

    fn apply_ops(&self, peer: &Arc<Peer>, ops: Vec<(Op, Option<Ack>)>) {
        let mut st = peer.writer.lock().unwrap();
        // Marks of delivered messages need no fsync of their own: if one is lost,
        // the message is sent again and the target, which remembers its id, ignores it.
        let only_marks = ops
            .iter()
            .all(|(op, _)| matches!(op, Op::Delivered(_) | Op::Forget(_)));
        let begin = |st: &mut dyn Store| {
            if only_marks {
                st.begin_unsynced()
            } else {
                st.begin()
            }
        };
        if let Err(e) = begin(&mut *st) {
            drop(st);
            tracing::error!(peer = %peer.name, error = %e, "cannot begin a transaction");
            for (_, ack) in ops {
                if let Some(a) = ack {
                    a(Err(e.clone()));
                }
            }
            return;
        }
        // Fast path: every op in one go. If one fails, start over with a savepoint
        // per op so that only the failing ones are refused.
        let mut effects = Vec::with_capacity(ops.len());
        let mut fast = true;
        // A script submitted to an empty queue runs right here, in the transaction
        // that makes its submission durable (for at most `inline_runs` in all).
        // Not when the batch changes the policy or groups: runs are checked against
        // the committed policy, and a script submitted after a change must meet it.
        // Nor in a batch of delivery marks, which has no fsync to share.
        let budget = if only_marks
            || self.0.stop.load(Ordering::Relaxed)
            || ops.iter().any(|(op, _)| matches!(op, Op::SetMeta(..)))
        {
            Duration::ZERO
        } else {
            self.0.cfg.inline_runs
        };
        let inline_until = Instant::now() + budget;
        let mut inline = (!budget.is_zero() && peer.queued() == 0).then_some(inline_until);
        for (op, _) in &ops {
            let r = match op {
                Op::Submit(job) if inline.is_some() => {
                    self.submit_and_run(&mut *st, peer, job, &mut inline)
                }
                Op::Intake { job, .. } if inline.is_some() => Self::intake_records(&mut *st, op)
                    .and_then(|_| self.submit_and_run(&mut *st, peer, job, &mut inline)),
                _ => self.apply_one(&mut *st, peer, op),
            };
            match r {
                Ok(fx) => effects.extend(fx),
                Err(_) => {
                    fast = false;
                    break;
                }
            }
        }
        let mut results: Vec<Result<()>> = Vec::with_capacity(ops.len());
        if fast {
            results.resize_with(ops.len(), || Ok(()));
        } else {
            effects.clear();
            let restart = st.rollback().and_then(|_| begin(&mut *st));
            if let Err(e) = restart {
                drop(st);
                for (_, ack) in ops {
                    if let Some(a) = ack {
                        a(Err(e.clone()));
                    }
                }
                return;
            }
            for (op, _) in &ops {
                let r = st.savepoint().and_then(|_| {
                    let r = self.apply_one(&mut *st, peer, op);
                    match &r {
                        Ok(_) => st.release()?,
                        Err(_) => st.rollback_to()?,
                    }
                    r
                });
                match r {
                    Ok(fx) => {
                        effects.extend(fx);
                        results.push(Ok(()));
                    }
                    Err(e) => {
                        tracing::warn!(peer = %peer.name, error = %e, "change refused");
                        results.push(Err(e));
                    }
                }
            }
        }
        let acks: Vec<(Option<Ack>, Result<()>)> =
            ops.into_iter().map(|(_, a)| a).zip(results).collect();
        // Scripts already queued run in `run_batch`, never here: their starts are
        // counted in a commit before they run (see `Config::max_attempts`).
        // Pending results are tracked before the commit so no reader misses them.
        let pre = self.pre_register(peer, &effects);
        let t = Instant::now();
        let committed = st.commit();
        self.0.metrics.commit(t.elapsed());
        drop(st);
        self.0.stats.commits.fetch_add(1, Ordering::Relaxed);
        match committed {
            Ok(()) => {
                self.publish(peer, effects);
                for (ack, r) in acks {
                    if let Some(a) = ack {
                        a(r);
                    }
                }
            }
            Err(e) => {
                tracing::error!(peer = %peer.name, error = %e, "commit failed; the changes were rolled back");
                self.unregister(peer, pre, &e);
                for (ack, _) in acks {
                    if let Some(a) = ack {
                        a(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// A submission whose script runs at once, in the same transaction: no queue
    /// row, one commit for both. A run that does not end by `inline` gives way (rolled
    /// back) and is queued as usual; so is every later script of the batch
    /// (`inline` becomes `None`), which keeps the peer's scripts in order.
    fn submit_and_run(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
        inline: &mut Option<Instant>,
    ) -> Result<Vec<Effect>> {
        let deadline = match *inline {
            Some(d) if Instant::now() < d => d,
            _ => {
                *inline = None;
                return self.queue_submission(st, peer, job);
            }
        };
        if test_hooks::marked(job) {
            return self.queue_submission(st, peer, job);
        }
        let mut fx = self.record_submission(st, peer, job)?;
        // A submission is not in the queue yet (`seq` 0): the run's dequeue removes
        // nothing.
        debug_assert_eq!(job.seq, 0);
        let gate = self.0.gate.clone();
        match self.run_one(st, peer, job, &*gate, Some(deadline), None)? {
            Some(run_fx) => {
                self.count_runs(st, 1)?;
                fx.extend(run_fx);
            }
            None => {
                self.0.stats.runs_gave_way.fetch_add(1, Ordering::Relaxed);
                *inline = None;
                st.enqueue(job)?;
                fx.push(Effect::Queued);
            }
        }
        Ok(fx)
    }

    /// The spool intake's records of an [`Op::Intake`] or [`Op::Forget`].
    fn intake_records(st: &mut dyn Store, op: &Op) -> Result<()> {
        let forget = match op {
            Op::Intake {
                key,
                record,
                forget,
                ..
            } => {
                st.set_meta(key, record)?;
                forget
            }
            Op::Forget(forget) => forget,
            _ => return Ok(()),
        };
        for k in forget {
            st.remove_meta(k)?;
        }
        Ok(())
    }

    /// A submission into the queue (it runs later).
    fn queue_submission(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
    ) -> Result<Vec<Effect>> {
        let mut fx = self.record_submission(st, peer, job)?;
        st.enqueue(job)?;
        fx.push(Effect::Queued);
        Ok(fx)
    }

    /// What every submission records, queued or run at once: its pending result
    /// (in the caller's slot for another peer's script) and its log line.
    fn record_submission(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
    ) -> Result<Vec<Effect>> {
        if job.caller != peer.name && !self.0.registry.exists(&job.caller) {
            return Err(err!(
                libc::ENOENT,
                "no peer named {:?} to take the result of {}",
                job.caller,
                job.name
            ));
        }
        let out = format!("{}.json", script_stem(&job.name));
        let slot = result_slot(&peer.name, &job.caller);
        st.outbox_pending(&slot, &out, &job.id, job.submitted_at)?;
        st.append_log(&format!(
            "{} submit {} {} caller={}",
            rfc3339(now_ns()),
            job.id,
            job.name,
            job.caller
        ))?;
        self.0.stats.submissions.fetch_add(1, Ordering::Relaxed);
        Ok(vec![
            Effect::Pending {
                target: slot,
                name: out,
                run_id: job.id.clone(),
            },
            Effect::Changed(Change::Log),
        ])
    }

    /// Counts `n` finished runs; the run history is pruned every 1,024.
    fn count_runs(&self, st: &mut dyn Store, n: u64) -> Result<()> {
        let total = self.0.stats.runs.fetch_add(n, Ordering::Relaxed) + n;
        if total % 1024 < n {
            st.prune_runs(self.0.cfg.run_retention)?;
        }
        Ok(())
    }

    fn apply_one(&self, st: &mut dyn Store, peer: &Arc<Peer>, op: &Op) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        Ok(match op {
            Op::Submit(job) => self.queue_submission(st, peer, job)?,
            Op::Intake { job, .. } => {
                Self::intake_records(st, op)?;
                self.queue_submission(st, peer, job)?
            }
            Op::Forget(_) => {
                Self::intake_records(st, op)?;
                vec![Effect::None]
            }
            Op::SetBytes(key, bytes) => {
                crate::peer::name::check_key(key)?;
                st.set_bytes(key, bytes)?;
                st.append_log(&format!("{ts} write state/{key} {} bytes", bytes.len()))?;
                self.0.stats.writes.fetch_add(1, Ordering::Relaxed);
                vec![Effect::Changed(Change::State), Effect::Changed(Change::Log)]
            }
            Op::Remove(key) => {
                if !st.remove(key)? {
                    return Err(err!(libc::ENOENT, "no state key {key:?}"));
                }
                st.append_log(&format!("{ts} remove state/{key}"))?;
                vec![Effect::Changed(Change::State), Effect::Changed(Change::Log)]
            }
            Op::Rename(from, to) => {
                crate::peer::name::check_key(to)?;
                st.rename(from, to)?;
                st.append_log(&format!("{ts} rename state/{from} state/{to}"))?;
                vec![Effect::Changed(Change::State), Effect::Changed(Change::Log)]
            }
            Op::RenameDir(from, to) => {
                crate::peer::name::check_key(to)?;
                let n = st.rename_dir(from, to)?;
                st.append_log(&format!("{ts} rename state/{from}/ state/{to}/ ({n} keys)"))?;
                vec![Effect::Changed(Change::State), Effect::Changed(Change::Log)]
            }
            Op::SetMtime(key, mtime) => {
                if !st.set_mtime(key, *mtime)? {
                    return Err(err!(libc::ENOENT, "no state key {key:?}"));
                }
                vec![Effect::Changed(Change::State)]
            }
            Op::SetModule(name, src) => {
                st.set_module(name, src)?;
                st.append_log(&format!("{ts} module {name} {} bytes", src.len()))?;
                vec![
                    Effect::Changed(Change::Modules),
                    Effect::Changed(Change::Log),
                ]
            }
            Op::RemoveModule(name) => {
                if !st.remove_module(name)? {
                    return Err(err!(libc::ENOENT, "no module {name:?}"));
                }
                st.append_log(&format!("{ts} remove module {name}"))?;
                vec![
                    Effect::Changed(Change::Modules),
                    Effect::Changed(Change::Log),
                ]
            }
            Op::SetMeta(k, v) => {
                st.set_meta(k, v)?;
                st.append_log(&format!("{ts} {k} updated ({} bytes)", v.len()))?;
                vec![
                    Effect::Changed(Change::Meta(k.clone())),
                    Effect::Changed(Change::Log),
                ]
            }
            Op::OutboxRemove(target, name) => {
                if !st.outbox_remove(target, name)? {
                    return Err(err!(libc::ENOENT, "no result {name:?}"));
                }
                vec![Effect::Changed(Change::Outbox {
                    target: target.clone(),
                    name: Some(name.clone()),
                })]
            }
            Op::Log(line) => {
                st.append_log(&format!("{ts} {line}"))?;
                vec![Effect::Changed(Change::Log)]
            }
            Op::Withdraw(name) => {
                // Every queued script of that name ends unrun, with a result that
                // says so (its readers and its sender are answered).
                let jobs = st.queued_all_named(name)?;
                if jobs.is_empty() {
                    return Err(err!(libc::ENOENT, "no queued script named {name:?}"));
                }
                let gate = self.0.gate.clone();
                let mut fx = vec![Effect::Changed(Change::Inbox)];
                for job in &jobs {
                    let why = format!("withdrawn by {}'s owner before it ran", peer.name);
                    if let Some(f) = self.run_one(st, peer, job, &*gate, None, Some(why))? {
                        fx.extend(f);
                    }
                    fx.push(Effect::Dequeued);
                }
                st.append_log(&format!("{ts} withdraw {name} ({} queued)", jobs.len()))?;
                fx
            }
            Op::Delivered(id) => {
                st.mark_delivered(id, now_ns())?;
                vec![Effect::None]
            }
            Op::Send(msg) => {
                let out = format!("{}.json", script_stem(&msg.name));
                st.outbox_pending(&msg.to, &out, &msg.id, msg.created_at)?;
                st.record_outgoing(msg)?;
                st.append_log(&format!("{ts} send {} {} to {}", msg.id, msg.name, msg.to))?;
                vec![
                    Effect::Pending {
                        target: msg.to.clone(),
                        name: out,
                        run_id: msg.id.clone(),
                    },
                    Effect::Undelivered,
                    Effect::Changed(Change::Log),
                ]
            }
            Op::Deliver { from, msg } => {
                if st.seen_message(&msg.id)? {
                    return Ok(vec![Effect::None]);
                }
                st.mark_message(&msg.id)?;
                match msg.kind.as_str() {
                    "script" => {
                        let job = self.received_job(from, msg)?;
                        st.enqueue(&job)?;
                        st.append_log(&format!(
                            "{ts} receive {} {} caller={from}{}",
                            msg.id,
                            msg.name,
                            chain_note(&job.chain, from)
                        ))?;
                        vec![Effect::Queued, Effect::Changed(Change::Log)]
                    }
                    "result" => {
                        let (v, payload) = match serde_json::from_str::<Value>(&msg.payload) {
                            Ok(v) => (v, msg.payload.clone()),
                            // A result that cannot be read is shown as an error
                            // result saying so, never retried: its reader is waiting.
                            Err(e) => {
                                let v = unreadable_result(from, msg, &e.to_string());
                                let text = v.to_string();
                                (v, text)
                            }
                        };
                        let msg = &Outgoing {
                            payload,
                            ..msg.clone()
                        };
                        let run_id = v
                            .get("id")
                            .and_then(|i| i.as_str())
                            .unwrap_or_default()
                            .to_string();
                        st.outbox_finish(from, &msg.name, &run_id, &msg.payload, now_ns())?;
                        vec![
                            Effect::Result {
                                target: from.clone(),
                                name: msg.name.clone(),
                                run_id,
                                bytes: Arc::new(msg.payload.clone().into_bytes()),
                                submitted_at: msg.created_at,
                                finished_at: now_ns(),
                            },
                            Effect::Changed(Change::Outbox {
                                target: from.clone(),
                                name: None,
                            }),
                        ]
                    }
                    other => return Err(err!(libc::EINVAL, "unknown message kind {other:?}")),
                }
            }
        })
    }

    fn pre_register(&self, peer: &Arc<Peer>, effects: &[Effect]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut waits = peer.waits.lock().unwrap();
        {
            // A result about to be replaced or removed is no longer served from memory.
            let mut recent = peer.recent.lock().unwrap();
            for fx in effects {
                match fx {
                    Effect::Pending { target, name, .. }
                    | Effect::Changed(Change::Outbox {
                        target,
                        name: Some(name),
                    }) => recent.remove(target, name),
                    _ => {}
                }
            }
        }
        for fx in effects {
            if let Effect::Pending {
                target,
                name,
                run_id,
            } = fx
            {
                let key = (target.clone(), name.clone());
                // A newer run of the same name: its readers wait for the newer result.
                waits
                    .entry(key.clone())
                    .or_insert(PendingResult {
                        run_id: String::new(),
                        waiters: vec![],
                    })
                    .run_id = run_id.clone();
                out.push(key);
            }
        }
        out
    }

    fn unregister(&self, peer: &Arc<Peer>, keys: Vec<(String, String)>, e: &Error) {
        let mut waits = peer.waits.lock().unwrap();
        for k in keys {
            if let Some(p) = waits.remove(&k) {
                for w in p.waiters {
                    w(Err(e.clone()));
                }
            }
        }
    }

    fn publish(&self, peer: &Arc<Peer>, effects: Vec<Effect>) {
        for fx in effects {
            match fx {
                Effect::None | Effect::Pending { .. } => {}
                Effect::Queued => {
                    peer.queued.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Undelivered => peer.has_undelivered.store(true, Ordering::Relaxed),
                Effect::Dequeued => {
                    let _ = peer
                        .queued
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
                }
                Effect::Result {
                    target,
                    name,
                    run_id,
                    bytes,
                    submitted_at,
                    finished_at,
                } => {
                    let key = (target.clone(), name);
                    let done = {
                        let mut waits = peer.waits.lock().unwrap();
                        let newer = waits.get(&key).is_some_and(|p| p.run_id != run_id);
                        if !newer {
                            peer.recent.lock().unwrap().insert(
                                key.clone(),
                                crate::peer::RecentResult {
                                    run_id: run_id.clone(),
                                    bytes: bytes.clone(),
                                    submitted_at,
                                    finished_at,
                                },
                            );
                        }
                        // A newer run of the same name keeps its readers waiting.
                        if newer {
                            None
                        } else {
                            waits.remove(&key).map(|p| p.waiters)
                        }
                    };
                    for w in done.into_iter().flatten() {
                        w(Ok(bytes.clone()));
                    }
                    self.notify(
                        &peer.name,
                        Change::Outbox {
                            target,
                            name: Some(key.1),
                        },
                    );
                }
                Effect::Changed(c) => {
                    if let Change::Meta(_) = c {
                        peer.policy_gen.fetch_add(1, Ordering::AcqRel);
                    }
                    self.notify(&peer.name, c)
                }
            }
        }
    }

    /// Runs queued scripts in one transaction. Its commit is not fsynced on its own
    /// (see `Store::begin_unsynced`): the runs are replays of durable submissions.
    /// Before they start, their starts are counted in a commit of their own, so a
    /// script that kills the daemon is counted too (see `Config::max_attempts`).
    fn run_batch(&self, peer: &Arc<Peer>) -> Result<()> {
        let mut st = peer.writer.lock().unwrap();
        let mut jobs = match self.count_starts(&mut *st, peer) {
            Ok(j) => j,
            Err(e) => {
                let _ = st.rollback();
                return Err(e);
            }
        };
        if jobs.is_empty() {
            if !self.0.stop.load(Ordering::Relaxed) {
                peer.queued.store(0, Ordering::Relaxed);
            }
            return Ok(());
        }
        st.begin_unsynced()?;
        let (effects, finished) = match self.runs_in_txn(&mut *st, peer, &mut jobs) {
            Ok(r) => r,
            Err(e) => {
                let _ = st.rollback();
                // A failing store (a full disk) is not a crash of the script: its
                // starts are taken back (best effort), so it is not ended for it.
                let undo = st.begin_unsynced().and_then(|_| {
                    for j in &jobs {
                        st.count_attempt(j.seq, -1)?;
                    }
                    st.commit()
                });
                if undo.is_err() {
                    let _ = st.rollback();
                }
                return Err(e);
            }
        };
        let pre = self.pre_register(peer, &effects);
        let t = Instant::now();
        let committed = st.commit();
        self.0.metrics.commit(t.elapsed());
        if let Err(e) = committed {
            self.unregister(peer, pre, &e);
            return Err(e);
        }
        drop(st);
        self.0.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.publish(peer, effects);
        peer.queued
            .fetch_sub(finished.min(peer.queued()), Ordering::Relaxed);
        Ok(())
    }

    /// The next queued scripts to run, their starts counted and committed. A script
    /// that started before and never finished runs alone, so that only the script
    /// that crashes the daemon collects the attempts. Rows refused as invalid leave
    /// the queue in the same commit.
    fn count_starts(&self, st: &mut dyn Store, peer: &Arc<Peer>) -> Result<Vec<Job>> {
        st.begin_unsynced()?;
        let mut jobs = st.queued(self.0.cfg.batch_max_runs)?;
        if jobs.first().is_some_and(|j| j.attempts > 0) {
            jobs.truncate(1);
        }
        for j in &mut jobs {
            st.count_attempt(j.seq, 1)?;
            j.attempts += 1;
        }
        let refused = st.take_refused();
        st.commit()?;
        if refused > 0 {
            peer.queued
                .fetch_sub(refused.min(peer.queued()), Ordering::Relaxed);
            self.notify(&peer.name, Change::Log);
        }
        Ok(jobs)
    }

    /// Runs `jobs` (their starts counted) inside the open transaction, until
    /// `batch_max_time` has passed. Returns their effects and how many finished;
    /// the starts of those that did not are uncounted (shutdown stopped them).
    fn runs_in_txn(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        jobs: &mut [Job],
    ) -> Result<(Vec<Effect>, u64)> {
        let gate = self.0.gate.clone();
        let started = Instant::now();
        let budget = self.0.cfg.batch_max_time;
        let mut effects = Vec::new();
        let mut finished = 0usize;
        for job in jobs.iter() {
            if self.0.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.run_one(st, peer, job, &*gate, None, None)? {
                Some(fx) => {
                    effects.extend(fx);
                    finished += 1;
                }
                // interrupted (stopping): rolled back, stays queued
                None => break,
            }
            if started.elapsed() > budget {
                break;
            }
        }
        for job in &jobs[finished..] {
            st.count_attempt(job.seq, -1)?;
        }
        self.count_runs(st, finished as u64)?;
        Ok((effects, finished as u64))
    }

    /// One run inside the batch's transaction; the engine keeps the script's own
    /// effects in a savepoint. `Ok(None)`: interrupted (rolled back, still queued).
    /// With `end`, the script does not run and ends with status `error` and that
    /// message (a withdrawn script), recorded like a run.
    fn run_one(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
        gate: &dyn Gate,
        yield_at: Option<Instant>,
        end: Option<String>,
    ) -> Result<Option<Vec<Effect>>> {
        let submitted = job.submitted_at;
        let params: Value =
            serde_json::from_str(&job.params).unwrap_or(Value::Object(Default::default()));
        let max_attempts = self.0.cfg.max_attempts;
        let crashed = end.or_else(|| (max_attempts > 0 && job.attempts > max_attempts).then(|| {
            tracing::error!(peer = %peer.name, run = %job.id, script = %job.name, attempts = max_attempts,
                "a queued script crashed the daemon every time it ran: it ends with an error and is not run again");
            format!("crashed the daemon {max_attempts} times: it is not run again")
        }));
        if crashed.is_none() {
            test_hooks::abort_if_marked(job);
        }
        // The run's share of its chain's budget (a row from before budgets: a new one).
        let budget = match job.budget {
            0 => self.0.cfg.chain_budget,
            b => b.min(self.0.cfg.chain_budget),
        };
        let foreign = job.caller != peer.name;
        let prepared = match crashed {
            Some(e) => Err((Status::Error, e)),
            None => {
                let p = gate.prepare(self, peer, job);
                if foreign {
                    self.0.metrics.run_decision(p.is_ok());
                }
                p.map_err(|m| (Status::Denied, m))
            }
        };
        let admitted = prepared.is_ok();
        let outcome = match prepared {
            Ok((host, limits)) => {
                let hop_block = (u64::from(job.hops) >= limits.hop_limit).then(|| {
                    format!(
                        "hop_limit ({}) reached: this script came through {} sends and may not send more",
                        limits.hop_limit, job.hops
                    )
                });
                let input = RunInput {
                    script_name: &job.name,
                    source: &job.source,
                    caller: &job.caller,
                    target: &peer.name,
                    params: &params,
                    limits: &limits,
                    stop: &self.0.stop,
                    send_block: hop_block.as_deref(),
                    yield_at,
                    chain: &job.chain,
                    budget,
                };
                script::with_engine(&self.0.cache, &self.0.cfg.library, |e| {
                    e.run(&input, st, &*host)
                })
            }
            Err((status, msg)) => Outcome {
                status,
                value: Value::Null,
                output: String::new(),
                error: Some(msg),
                operations: 0,
                logs: vec![],
                sends: vec![],
                duration: Duration::ZERO,
                wrote: false,
                storage_error: None,
            },
        };
        if let Some(e) = outcome.storage_error {
            return Err(e);
        }
        if outcome.status == Status::Interrupted {
            return Ok(None);
        }
        if foreign && admitted && outcome.status == Status::Denied {
            self.0.metrics.script_denied();
        }
        let finished_at = now_ns();
        let result = RunResult::new(job, &peer.name, &outcome, submitted, finished_at);
        let json = serde_json::to_string(&result)?;
        let ts = rfc3339(finished_at);
        let mut fx = Vec::new();
        let status = outcome.status.as_str();
        st.record_run(job, status, &json, finished_at)?;
        let err_txt = outcome
            .error
            .as_deref()
            .map(|e| format!(" error={e}"))
            .unwrap_or_default();
        st.append_log(&format!(
            "{ts} run {} {} caller={} status={status} {}us{err_txt}{}",
            job.id,
            job.name,
            job.caller,
            outcome.duration.as_micros(),
            chain_note(&job.chain, &job.caller)
        ))?;
        if outcome.status == Status::Ok {
            for l in &outcome.logs {
                st.append_log(&format!("{ts} log {} {l}", job.id))?;
            }
            let stem = script_stem(&job.name);
            // Every script sent carries this run's chain (with this peer last) and
            // an equal part of what is left of its budget (the send limit in the
            // host keeps each part at least 1).
            let share = (budget.saturating_sub(1) / outcome.sends.len().max(1) as u64).max(1);
            let mut chain = job.chain.clone();
            if chain.last() != Some(&peer.name) {
                chain.push(peer.name.clone());
            }
            for (i, s) in outcome.sends.iter().enumerate() {
                let name = format!("{stem}-{}.rhai", i + 1);
                let mut msg = self.new_message(
                    &peer.name,
                    &s.to,
                    &name,
                    s.source.clone().into_bytes(),
                    &s.params,
                    job.hops + 1,
                )?;
                // The same id if the run is replayed: the target runs it once.
                msg.id = format!("{}-{}", job.id, i + 1);
                msg.chain = chain.clone();
                msg.budget = share;
                let out = format!("{stem}-{}.json", i + 1);
                st.outbox_pending(&s.to, &out, &msg.id, msg.created_at)?;
                st.record_outgoing(&msg)?;
                fx.push(Effect::Pending {
                    target: s.to.clone(),
                    name: out,
                    run_id: msg.id.clone(),
                });
                fx.push(Effect::Undelivered);
            }
            if !outcome.sends.is_empty() {
                fx.push(Effect::Changed(Change::State));
            }
        }
        let out_name = format!("{}.json", script_stem(&job.name));
        if job.caller == peer.name || job.msg_id.is_none() {
            // The owner's script, or one dropped here by the caller: the result is
            // kept here (see `Core::new_job_from`).
            let slot = result_slot(&peer.name, &job.caller);
            st.outbox_finish(&slot, &out_name, &job.id, &json, finished_at)?;
            fx.push(Effect::Result {
                target: slot,
                name: out_name,
                run_id: job.id.clone(),
                bytes: Arc::new(json.into_bytes()),
                submitted_at: submitted,
                finished_at,
            });
        } else {
            st.record_outgoing(&Outgoing {
                // Deterministic, like sends: a replayed run's result is shown once.
                id: format!("{}-result", job.id),
                to: job.caller.clone(),
                kind: "result".into(),
                name: out_name,
                source: Vec::new(),
                params: String::new(),
                hops: job.hops,
                payload: json,
                created_at: finished_at,
                ..Default::default()
            })?;
            fx.push(Effect::Undelivered);
        }
        st.dequeue(job.seq)?;
        let counter = match outcome.status {
            Status::Ok => &self.0.stats.runs_ok,
            Status::Denied => &self.0.stats.runs_denied,
            Status::Limit => &self.0.stats.runs_limit,
            _ => &self.0.stats.runs_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.0
            .metrics
            .run(&peer.name, outcome.status, outcome.duration);
        // Only a run that wrote changes what the mount shows of the state (a notice
        // makes the mount invalidate the kernel's cached state entries).
        if outcome.status == Status::Ok && outcome.wrote {
            fx.push(Effect::Changed(Change::State));
        }
        Ok(Some(fx))
    }

    /// Hands committed outgoing messages to their targets; retried until they land.
    fn deliver(&self, peer: &Arc<Peer>) {
        let (msgs, refused) = {
            let mut st = peer.writer.lock().unwrap();
            match st.undelivered(256) {
                Ok(m) => (m, st.take_refused()),
                Err(e) => {
                    tracing::error!(peer = %peer.name, error = %e, "cannot read outgoing messages");
                    return;
                }
            }
        };
        if msgs.is_empty() {
            // Refused rows were marked: more may follow them.
            if refused == 0 {
                peer.has_undelivered.store(false, Ordering::Relaxed);
            }
            return;
        }
        let transport = self.transport();
        for msg in msgs {
            {
                let mut inflight = peer.inflight.lock().unwrap();
                if !inflight.insert(msg.id.clone()) {
                    continue;
                }
            }
            let id = msg.id.clone();
            let core = self.clone();
            let sender = peer.clone();
            let again = msg.clone();
            let ack: Ack = Box::new(move |r| match r {
                Ok(()) => {
                    core.0
                        .stats
                        .messages_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    {
                        let mut f = sender.delivery_failures.lock().unwrap();
                        if !f.is_empty() {
                            f.remove(&id);
                        }
                    }
                    let s2 = sender.clone();
                    let id2 = id.clone();
                    core.push(
                        &sender,
                        Op::Delivered(id.clone()),
                        Some(Box::new(move |_| {
                            s2.inflight.lock().unwrap().remove(&id2);
                        })),
                    );
                }
                // The target does not exist (or was removed): the sender gets a
                // clear error result instead of a message lost in silence.
                Err(e) if e.errno == libc::ENOENT => core.undeliverable(&sender, again, &e),
                Err(e) if transport::is_transient(e.errno) => {
                    tracing::warn!(peer = %sender.name, to = %again.to, error = %e, "delivery failed; will retry");
                    sender.inflight.lock().unwrap().remove(&id);
                }
                Err(e) => {
                    let tries = {
                        let mut f = sender.delivery_failures.lock().unwrap();
                        let n = f.entry(id.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    if tries >= core.0.cfg.delivery_tries {
                        sender.delivery_failures.lock().unwrap().remove(&id);
                        core.undeliverable(&sender, again, &e);
                    } else {
                        tracing::warn!(peer = %sender.name, error = %e, tries, "delivery failed; will retry");
                        sender.inflight.lock().unwrap().remove(&id);
                    }
                }
            });
            transport.deliver(&peer.name, msg, ack);
        }
    }

    fn undeliverable(&self, peer: &Arc<Peer>, msg: Outgoing, e: &Error) {
        let id = msg.id.clone();
        let op = if msg.kind == "script" {
            let now = now_ns();
            let job = Job {
                seq: 0,
                id: msg.id.clone(),
                name: msg.name.clone(),
                source: vec![],
                caller: peer.name.clone(),
                params: msg.params.clone(),
                msg_id: Some(msg.id.clone()),
                hops: msg.hops,
                submitted_at: msg.created_at,
                ..Default::default()
            };
            let outcome = Outcome {
                status: Status::Error,
                value: Value::Null,
                output: String::new(),
                error: Some(format!(
                    "cannot deliver {} to {}: {}",
                    msg.name, msg.to, e.message
                )),
                operations: 0,
                logs: vec![],
                sends: vec![],
                duration: Duration::ZERO,
                wrote: false,
                storage_error: None,
            };
            let result = RunResult::new(&job, &msg.to, &outcome, msg.created_at, now);
            let payload = serde_json::to_string(&result).unwrap_or_default();
            Op::Deliver {
                from: msg.to.clone(),
                msg: Outgoing {
                    id: new_id(),
                    to: peer.name.clone(),
                    kind: "result".into(),
                    name: format!("{}.json", script_stem(&msg.name)),
                    source: vec![],
                    params: String::new(),
                    hops: msg.hops,
                    payload,
                    created_at: now,
                    ..Default::default()
                },
            }
        } else {
            Op::Log(format!(
                "drop result {} for {}: {}",
                msg.name, msg.to, e.message
            ))
        };
        tracing::warn!(peer = %peer.name, to = %msg.to, error = %e, "undeliverable message");
        if msg.kind == "result" && !provenance::is_replacement(&msg.id) {
            // Its reader waits at the target: it gets an `error` result that says
            // why, in place of the one that cannot be delivered.
            if let Ok(target) = self.peer(&msg.to) {
                let v = unreadable_result(&peer.name, &msg, &e.message);
                let replacement = Outgoing {
                    id: provenance::replacement_id(&msg.id),
                    payload: v.to_string(),
                    ..msg.clone()
                };
                self.push(
                    &target,
                    Op::Deliver {
                        from: peer.name.clone(),
                        msg: replacement,
                    },
                    None,
                );
            }
        }
        let core = self.clone();
        let sender = peer.clone();
        self.push(
            peer,
            op,
            Some(Box::new(move |r| {
                if r.is_ok() {
                    let s2 = sender.clone();
                    core.push(
                        &sender,
                        Op::Delivered(id.clone()),
                        Some(Box::new(move |_| {
                            s2.inflight.lock().unwrap().remove(&id);
                        })),
                    );
                } else {
                    sender.inflight.lock().unwrap().remove(&id);
                }
            })),
        );
    }
}
