//! The runner pool: the ready queue of peers with work, one actor turn at a time
//! per peer (`schedule`, `runner`, `process`), the sweeper that closes idle peers
//! and retries deliveries, and the entry points that queue an [`Op`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::op::{Ack, Op};
use super::state::actor;
use super::{wait, Core};
use crate::error::Result;
use crate::peer::Peer;

impl Core {
    /// Makes sure `peer`'s actor gets a turn (its work, queued runs, deliveries).
    pub(super) fn schedule(&self, peer: &Arc<Peer>) {
        self.push_work(peer, None);
    }

    /// Queues `op` for `peer`'s actor and schedules it.
    pub(super) fn push(&self, peer: &Arc<Peer>, op: Op, ack: Option<Ack>) {
        self.push_work(peer, Some((op, ack)));
    }

    /// Adds `work` (if any) to `peer`'s ops and puts the peer in the ready queue
    /// unless it is there or a runner holds it already.
    fn push_work(&self, peer: &Arc<Peer>, work: Option<(Op, Option<Ack>)>) {
        let mut w = actor(peer).work.lock().unwrap();
        w.ops.extend(work);
        if !w.scheduled {
            w.scheduled = true;
            drop(w);
            self.ready(peer.clone());
        }
    }

    /// Puts a scheduled peer at the back of the ready queue.
    pub(super) fn ready(&self, peer: Arc<Peer>) {
        self.0.ready.lock().unwrap().push_back(peer);
        self.0.ready_cv.notify_one();
    }

    /// Queues `op` for `peer`'s actor; `ack` is called after it committed (or failed).
    pub fn apply_async(&self, peer: &str, op: Op, ack: Option<Ack>) {
        match self.peer(peer) {
            // A submission never waits for the peer's runs (see `intake`).
            Ok(p) => match op {
                Op::Submit(job) => {
                    let ack = self.replicated(peer, ack);
                    self.submit_job(p, job, ack)
                }
                op => self.push(&p, op, ack),
            },
            Err(e) => {
                if let Some(a) = ack {
                    a(Err(e))
                }
            }
        }
    }

    /// In the replica's `sync` mode, a submission is answered once its commit
    /// is in the replica too (or with `ETIMEDOUT` when that takes too long).
    fn replicated(&self, peer: &str, ack: Option<Ack>) -> Option<Ack> {
        match (self.sync_replica(), ack) {
            (Some(r), Some(a)) => {
                let (r, peer) = (r.clone(), peer.to_string());
                Some(Box::new(move |res| match res {
                    Ok(()) => r.after_upload(&peer, a),
                    Err(e) => a(Err(e)),
                }))
            }
            (_, a) => a,
        }
    }

    /// The replica, when it is in `sync` mode.
    pub(super) fn sync_replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        self.replica()
            .filter(|r| r.options().mode == crate::replica::Mode::Sync)
    }

    /// Applies `op` and waits until it is durable.
    pub fn apply(&self, peer: &str, op: Op) -> Result<()> {
        wait::block_on("the change was applied", |ack| {
            self.apply_async(peer, op, Some(ack))
        })
    }

    pub(super) fn sweeper(&self) {
        let idle = self.0.cfg.idle_close.as_nanos() as i64;
        let mut tick = 0u64;
        while !self.0.quit.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            tick += 1;
            if tick.is_multiple_of(5) {
                self.0.registry.sweep(idle, self.0.cfg.max_open_peers);
                // Retry deliveries that did not land (target busy, disk full, ...).
                for p in self.0.registry.open_peers() {
                    if actor(&p).has_undelivered.load(Ordering::Relaxed) {
                        self.schedule(&p);
                    }
                }
            } else if self.0.registry.open_count() > self.0.cfg.max_open_peers {
                self.0.registry.sweep(idle, self.0.cfg.max_open_peers);
            }
        }
    }

    /// A runner thread: takes the next ready peer and gives its actor a turn,
    /// until the core quits and the ready queue is empty.
    pub(super) fn runner(&self) {
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
            let mut w = actor(&peer).work.lock().unwrap();
            let held = !actor(&peer).held.lock().unwrap().entries.is_empty();
            if !w.ops.is_empty() || held || (!stop && actor(&peer).queued() > 0) {
                drop(w);
                self.ready(peer);
            } else {
                w.scheduled = false;
            }
        }
    }

    /// Whether the actor may start a batch of runs now: not while ops wait (a
    /// submission that found the actor idle comes first, so that its close does
    /// not wait for the batch), unless batches were put off a few times in a row.
    fn may_run(&self, peer: &Arc<Peer>) -> bool {
        let mut w = actor(peer).work.lock().unwrap();
        if !w.ops.is_empty() && w.deferred < 4 {
            w.deferred += 1;
            return false;
        }
        w.deferred = 0;
        w.running = true;
        true
    }

    /// One turn of a peer's actor.
    pub(super) fn process(&self, peer: &Arc<Peer>) {
        let ops = std::mem::take(&mut actor(peer).work.lock().unwrap().ops);
        self.apply_turn(peer, ops);
        if actor(peer).queued() > 0 && !self.0.stop.load(Ordering::Relaxed) && self.may_run(peer) {
            let r = self.run_batch(peer);
            actor(peer).work.lock().unwrap().running = false;
            if let Err(e) = r {
                tracing::error!(peer = %peer.name, error = %e, "run batch failed; the scripts stay queued");
                // Do not spin on a failing store: the sweeper's retry comes later.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Not while stopping: deliveries make work at other peers, which makes
        // more deliveries; what is undelivered stays in `sent` for the next start.
        if actor(peer).has_undelivered.load(Ordering::Relaxed)
            && !self.0.stop.load(Ordering::Relaxed)
        {
            self.deliver(peer);
        }
    }
}
