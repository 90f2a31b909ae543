//! The write transaction of a peer's actor: the queued ops applied together
//! (group commit, a savepoint per op when one fails), and the in-memory
//! [`Effect`]s of a commit (pending results registered before it, results
//! published and listeners told after it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::op::{Ack, Op};
use super::state::{actor, PendingResult, RecentResult};
use super::{Change, Core};
use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::store::{Store, Txn};

/// An in-memory consequence of an op or run, applied after its commit.
pub(super) enum Effect {
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

/// What [`Core::apply_in_txn`] did: the commit's outcome, the pending results
/// registered before it, the effects and each op's outcome.
struct Applied {
    committed: Result<()>,
    pre: Vec<(String, String)>,
    effects: Vec<Effect>,
    results: Vec<Result<()>>,
}

impl Core {
    /// Applies a batch of ops in one transaction and answers each op's ack after
    /// the commit: all in one go when every op succeeds, else again with a
    /// savepoint per op so that only the failing ones are refused.
    pub(super) fn apply_ops(&self, peer: &Arc<Peer>, ops: Vec<(Op, Option<Ack>)>) {
        let mut st = peer.writer.lock().unwrap();
        let applied = self.apply_in_txn(&mut **st, peer, &ops);
        drop(st);
        match applied {
            Ok(a) => {
                let acks = ops.into_iter().map(|(_, a)| a).zip(a.results).collect();
                self.answer(peer, a.committed, a.pre, a.effects, acks);
            }
            Err(e) => {
                tracing::error!(peer = %peer.name, error = %e, "cannot begin a transaction");
                fail_all(ops, &e);
            }
        }
    }

    /// The ops applied in one transaction and committed (the commit's outcome in
    /// [`Applied`]); `Err` when no transaction could begin. The guard rolls the
    /// fast path back when an op fails, and each op's savepoint likewise.
    fn apply_in_txn(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        ops: &[(Op, Option<Ack>)],
    ) -> Result<Applied> {
        // Marks of delivered messages need no fsync of their own: if one is lost,
        // the message is sent again and the target, which remembers its id, ignores it.
        let only_marks = ops
            .iter()
            .all(|(op, _)| matches!(op, Op::Delivered(_) | Op::Forget(_)));
        let inline = self.inline_until(peer, ops, only_marks);
        let mut txn = Txn::begin(&mut *st, !only_marks)?;
        let (txn, effects, results) = match self.apply_all(&mut *txn, peer, ops, inline) {
            Some(effects) => (txn, effects, ops.iter().map(|_| Ok(())).collect()),
            None => {
                // Rolled back; again with a savepoint per op.
                drop(txn);
                let mut txn = Txn::begin(&mut *st, !only_marks)?;
                let (effects, results) = self.apply_each(&mut txn, peer, ops);
                (txn, effects, results)
            }
        };
        // Pending results are tracked before the commit so no reader misses them.
        let pre = self.pre_register(peer, &effects);
        let t = Instant::now();
        let committed = txn.commit();
        self.0.metrics.commit(t.elapsed());
        Ok(Applied {
            committed,
            pre,
            effects,
            results,
        })
    }

    /// Until when a script submitted to an empty queue runs right here, in the
    /// transaction that makes its submission durable (for at most `inline_runs`
    /// in all). Not when the batch changes the policy or groups: runs are checked
    /// against the committed policy, and a script submitted after a change must
    /// meet it. Nor in a batch of delivery marks, which has no fsync to share.
    fn inline_until(
        &self,
        peer: &Arc<Peer>,
        ops: &[(Op, Option<Ack>)],
        only_marks: bool,
    ) -> Option<Instant> {
        let budget = if only_marks
            || self.0.stop.load(Ordering::Relaxed)
            || ops.iter().any(|(op, _)| matches!(op, Op::SetMeta(..)))
        {
            Duration::ZERO
        } else {
            self.0.cfg.inline_runs
        };
        let inline_until = Instant::now() + budget;
        (!budget.is_zero() && actor(peer).queued() == 0).then_some(inline_until)
    }

    /// The fast path: every op in one go, submissions run inline while `inline`
    /// lasts. `None` when an op fails (the transaction must be rolled back).
    fn apply_all(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        ops: &[(Op, Option<Ack>)],
        mut inline: Option<Instant>,
    ) -> Option<Vec<Effect>> {
        let mut effects = Vec::with_capacity(ops.len());
        for (op, _) in ops {
            let r = match op {
                Op::Submit(job) if inline.is_some() => {
                    self.submit_and_run(st, peer, job, &mut inline)
                }
                Op::Journaled {
                    job,
                    withdrawn: false,
                } if inline.is_some() => self.submit_and_run(st, peer, job, &mut inline),
                Op::Intake { job, .. } if inline.is_some() => Self::intake_records(st, op)
                    .and_then(|_| self.submit_and_run(st, peer, job, &mut inline)),
                _ => self.apply_one(st, peer, op),
            };
            effects.extend(r.ok()?);
        }
        Some(effects)
    }

    /// The slow path: each op under its own savepoint, so that a failing op is
    /// refused alone. Its effects, and each op's outcome.
    fn apply_each(
        &self,
        txn: &mut Txn<'_>,
        peer: &Arc<Peer>,
        ops: &[(Op, Option<Ack>)],
    ) -> (Vec<Effect>, Vec<Result<()>>) {
        let mut effects = Vec::with_capacity(ops.len());
        let mut results = Vec::with_capacity(ops.len());
        for (op, _) in ops {
            let r = txn.savepoint().and_then(|mut sp| {
                let r = self.apply_one(&mut *sp, peer, op);
                match &r {
                    Ok(_) => sp.release()?,
                    Err(_) => sp.rollback()?,
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
        (effects, results)
    }

    /// After the commit (its outcome `committed`): publishes the effects and
    /// answers the acks, or, when the commit failed, forgets the pending results
    /// (`pre`) and answers every ack with the failure. Scripts already queued run
    /// in `run_batch`, never here: their starts are counted in a commit before
    /// they run (see `Config::max_attempts`).
    fn answer(
        &self,
        peer: &Arc<Peer>,
        committed: Result<()>,
        pre: Vec<(String, String)>,
        effects: Vec<Effect>,
        acks: Vec<(Option<Ack>, Result<()>)>,
    ) {
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

    pub(super) fn pre_register(
        &self,
        peer: &Arc<Peer>,
        effects: &[Effect],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut waits = actor(peer).waits.lock().unwrap();
        {
            // A result about to be replaced or removed is no longer served from memory.
            let mut recent = actor(peer).recent.lock().unwrap();
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

    pub(super) fn unregister(&self, peer: &Arc<Peer>, keys: Vec<(String, String)>, e: &Error) {
        let mut waits = actor(peer).waits.lock().unwrap();
        for k in keys {
            if let Some(p) = waits.remove(&k) {
                for w in p.waiters {
                    w(Err(e.clone()));
                }
            }
        }
    }

    pub(super) fn publish(&self, peer: &Arc<Peer>, effects: Vec<Effect>) {
        tracing::trace!(peer = %peer.name, effects = effects.len(), "committed");
        for fx in effects {
            match fx {
                Effect::None | Effect::Pending { .. } => {}
                Effect::Queued => {
                    actor(peer).queued.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Undelivered => actor(peer).has_undelivered.store(true, Ordering::Relaxed),
                Effect::Dequeued => {
                    let _ = actor(peer).queued.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| Some(n.saturating_sub(1)),
                    );
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
                        let mut waits = actor(peer).waits.lock().unwrap();
                        let newer = waits.get(&key).is_some_and(|p| p.run_id != run_id);
                        if !newer {
                            actor(peer).recent.lock().unwrap().insert(
                                key.clone(),
                                RecentResult {
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
}

/// Answers every op of a batch that could not start with `e`.
fn fail_all(ops: Vec<(Op, Option<Ack>)>, e: &Error) {
    for (_, ack) in ops {
        if let Some(a) = ack {
            a(Err(e.clone()));
        }
    }
}
