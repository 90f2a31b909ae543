//! Running queued scripts: a batch in one unsynced transaction (`run_batch`),
//! its starts counted first (`count_starts`), and one run (`run_one`): the gate,
//! the engine, the result and the messages it sends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::provenance::chain_note;
use super::slot::result_slot;
use super::state::actor;
use super::txn::Effect;
use super::{test_hooks, Change, Core, MessageKind, RunResult};
use crate::error::Result;
use crate::names::script_stem;
use crate::peer::Peer;
use crate::script::{self, Capability, Host, Outcome, RunInput, Status};
use crate::store::{Job, Message, Store, Txn};
use crate::util::{now_ns, rfc3339};

impl Core {
    /// Runs queued scripts in one transaction. Its commit is not fsynced on its own
    /// (see `Store::begin_unsynced`): the runs are replays of durable submissions.
    /// Before they start, their starts are counted in a commit of their own, so a
    /// script that kills the daemon is counted too (see `Config::max_attempts`).
    pub(super) fn run_batch(&self, peer: &Arc<Peer>) -> Result<()> {
        let mut st = peer.writer.lock().unwrap();
        let mut jobs = self.count_starts(&mut **st, peer)?;
        if jobs.is_empty() {
            if !self.0.stop.load(Ordering::Relaxed) {
                actor(peer).queued.store(0, Ordering::Relaxed);
            }
            return Ok(());
        }
        let mut txn = Txn::begin(&mut **st, false)?;
        let (effects, finished) = match self.runs_in_txn(&mut *txn, peer, &mut jobs) {
            Ok(r) => {
                let max = self.0.cfg.batch_max_runs;
                actor(peer).batch_ran(jobs.len(), r.1 as usize, max);
                r
            }
            Err(e) => {
                drop(txn);
                // A failing store (a full disk) is not a crash of the script: its
                // starts are taken back (best effort), so it is not ended for it.
                let _ = Txn::begin(&mut **st, false).and_then(|mut t| {
                    count_range(&mut *t, &jobs, -1)?;
                    t.commit()
                });
                return Err(e);
            }
        };
        let pre = self.pre_register(peer, &effects);
        let t = Instant::now();
        let committed = txn.commit();
        self.0.metrics.commit(t.elapsed());
        if let Err(e) = committed {
            self.unregister(peer, pre, &e);
            return Err(e);
        }
        drop(st);
        self.0.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.publish(peer, effects);
        actor(peer)
            .queued
            .fetch_sub(finished.min(actor(peer).queued()), Ordering::Relaxed);
        Ok(())
    }

    /// The next queued scripts to run, their starts counted and committed. A script
    /// that started before and never finished runs alone, so that only the script
    /// that crashes the daemon collects the attempts. Rows refused as invalid leave
    /// the queue in the same commit.
    pub(super) fn count_starts(&self, st: &mut dyn Store, peer: &Arc<Peer>) -> Result<Vec<Job>> {
        let mut txn = Txn::begin(st, false)?;
        let mut jobs = txn.queued(actor(peer).batch_limit(self.0.cfg.batch_max_runs))?;
        if jobs.first().is_some_and(|j| j.attempts > 0) {
            jobs.truncate(1);
        }
        count_range(&mut *txn, &jobs, 1)?;
        for j in &mut jobs {
            j.attempts += 1;
        }
        let refused = txn.take_refused();
        txn.commit()?;
        if refused > 0 {
            actor(peer)
                .queued
                .fetch_sub(refused.min(actor(peer).queued()), Ordering::Relaxed);
            self.notify(&peer.name, Change::Log);
        }
        Ok(jobs)
    }

    /// Runs `jobs` (their starts counted) inside the open transaction, until
    /// `batch_max_time` has passed. Returns their effects and how many finished;
    /// the starts of those that did not are uncounted (shutdown stopped them).
    pub(super) fn runs_in_txn(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        jobs: &mut [Job],
    ) -> Result<(Vec<Effect>, u64)> {
        let started = Instant::now();
        let budget = self.0.cfg.batch_max_time;
        let mut effects = Vec::new();
        let mut finished = 0usize;
        for job in jobs.iter() {
            if self.0.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.run_one(st, peer, &Queued::Batch(job), None, None)? {
                Some(fx) => {
                    // A run that put another policy text in force (an undo or a
                    // restore) ends the batch: the next run meets the new one.
                    let policy = changes_policy(&fx);
                    effects.extend(fx);
                    finished += 1;
                    if policy {
                        break;
                    }
                }
                // interrupted (stopping): rolled back, stays queued
                None => break,
            }
            if started.elapsed() > budget {
                break;
            }
        }
        // The finished ones leave the queue together (see `Queued::Batch`).
        if let (Some(f), Some(l)) = (jobs.first(), jobs[..finished].last()) {
            st.dequeue_range(f.seq, l.seq)?;
        }
        count_range(st, &jobs[finished..], -1)?;
        self.count_runs(st, finished as u64)?;
        Ok((effects, finished as u64))
    }

    /// One run inside the batch's transaction; the engine keeps the script's own
    /// effects in a savepoint. `Ok(None)`: interrupted (rolled back, still queued).
    /// With `end`, the script does not run and ends with status `error` and that
    /// message (a withdrawn script), recorded like a run.
    pub(super) fn run_one(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        queued: &Queued,
        yield_at: Option<Instant>,
        end: Option<String>,
    ) -> Result<Option<Vec<Effect>>> {
        let job = queued.job();
        let crashed = end.or_else(|| self.crashed_too_often(peer, job));
        if crashed.is_none() {
            test_hooks::abort_if_marked(job);
        }
        // The run's share of its chain's budget (a row from before budgets: a new one).
        let budget = self.budget_within(job.budget);
        self.history_begin(st, &job.id, &job.name, &job.caller, &job.chain)?;
        let outcome = self.evaluate(st, peer, job, crashed, yield_at, budget);
        if let Some(e) = outcome.storage_error {
            return Err(e);
        }
        let history_fx = self.history_end(st)?;
        if outcome.status == Status::Interrupted {
            return Ok(None);
        }
        let finished_at = now_ns();
        let result = RunResult::new(job, &peer.name, &outcome, job.submitted_at, finished_at);
        let json = serde_json::to_string(&result)?;
        st.record_run(job, outcome.status.as_str(), &json, finished_at)?;
        self.log_run(st, job, &outcome, finished_at)?;
        let mut fx = Vec::new();
        if outcome.status == Status::Ok {
            fx.extend(self.record_sends(st, peer, job, &outcome, budget)?);
        }
        fx.push(Self::record_result(st, peer, job, json, finished_at)?);
        if let Queued::Row(job) = queued {
            st.dequeue(job.seq)?;
        }
        self.count_outcome(peer, &outcome);
        // Only a run that wrote changes what the mount shows of the state (a notice
        // makes the mount invalidate the kernel's cached state entries).
        if outcome.status == Status::Ok && outcome.wrote {
            fx.push(Effect::Changed(Change::State));
        }
        if outcome.status == Status::Ok && outcome.wrote_rows {
            fx.push(Effect::Changed(Change::Rows));
        }
        fx.extend(history_fx);
        Ok(Some(fx))
    }

    /// The end of a script that crashed the daemon more than `max_attempts` times.
    fn crashed_too_often(&self, peer: &Peer, job: &Job) -> Option<String> {
        let max_attempts = self.0.cfg.max_attempts;
        (max_attempts > 0 && job.attempts > max_attempts).then(|| {
            tracing::error!(peer = %peer.name, run = %job.id, script = %job.name, attempts = max_attempts,
                "a queued script crashed the daemon every time it ran: it ends with an error and is not run again");
            format!("crashed the daemon {max_attempts} times: it is not run again")
        })
    }

    /// The gate, then the engine: the run's outcome (`crashed`: it ends so
    /// without running).
    fn evaluate(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
        crashed: Option<String>,
        yield_at: Option<Instant>,
        budget: u64,
    ) -> Outcome {
        let foreign = job.caller != peer.name;
        let prepared = match crashed {
            Some(e) => Err((Status::Error, e)),
            None => {
                let p = self.0.policy.prepare(self, peer, job);
                if foreign {
                    self.0.metrics.run_decision(p.is_ok());
                }
                p.map_err(|e| (Status::Denied, e.message))
            }
        };
        let (host, limits) = match prepared {
            Ok(p) => p,
            Err((status, msg)) => return failed_outcome(status, msg),
        };
        let hop_block = (u64::from(job.hops) >= limits.hop_limit).then(|| {
            format!(
                "hop_limit ({}) reached: this script came through {} sends and may not send more",
                limits.hop_limit, job.hops
            )
        });
        let params: Value =
            serde_json::from_str(&job.params).unwrap_or(Value::Object(Default::default()));
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
        let host = KnownPeers {
            inner: host,
            core: self,
        };
        let outcome = script::with_engine(&self.0.cache, &self.0.cfg.library, |e| {
            e.run(&input, st, &host)
        });
        if foreign && outcome.status == Status::Denied {
            self.0.metrics.script_denied();
        }
        outcome
    }

    /// The run's line in the log, and the script's own `log` lines.
    fn log_run(&self, st: &mut dyn Store, job: &Job, outcome: &Outcome, at: i64) -> Result<()> {
        let ts = rfc3339(at);
        let status = outcome.status.as_str();
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
        }
        Ok(())
    }

    /// The scripts an ok run sent, recorded to go out with its commit.
    fn record_sends(
        &self,
        st: &mut dyn Store,
        peer: &Peer,
        job: &Job,
        outcome: &Outcome,
        budget: u64,
    ) -> Result<Vec<Effect>> {
        let mut fx = Vec::new();
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
        Ok(fx)
    }

    /// The result: kept here (the owner's script, or one its caller dropped here,
    /// see `Core::new_job_from`), or a message back to the caller's daemon.
    fn record_result(
        st: &mut dyn Store,
        peer: &Peer,
        job: &Job,
        json: String,
        finished_at: i64,
    ) -> Result<Effect> {
        let out_name = format!("{}.json", script_stem(&job.name));
        if job.caller == peer.name || job.msg_id.is_none() {
            let slot = result_slot(&peer.name, &job.caller);
            st.outbox_finish(&slot, &out_name, &job.id, &json, finished_at)?;
            return Ok(Effect::Result {
                target: slot,
                name: out_name,
                run_id: job.id.clone(),
                bytes: Arc::new(json.into_bytes()),
                submitted_at: job.submitted_at,
                finished_at,
            });
        }
        st.record_outgoing(&Message {
            // Deterministic, like sends: a replayed run's result is shown once.
            id: format!("{}-result", job.id),
            to: job.caller.clone(),
            kind: MessageKind::Result.as_str().into(),
            name: out_name,
            source: Vec::new(),
            params: String::new(),
            hops: job.hops,
            payload: json,
            created_at: finished_at,
            ..Default::default()
        })?;
        Ok(Effect::Undelivered)
    }

    /// The daemon's counters and the metrics of a finished run.
    fn count_outcome(&self, peer: &Peer, outcome: &Outcome) {
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
    }

    /// Counts `n` finished runs; the run history is pruned every 1,024.
    pub(super) fn count_runs(&self, st: &mut dyn Store, n: u64) -> Result<()> {
        let total = self.0.stats.runs.fetch_add(n, Ordering::Relaxed) + n;
        if total % 1024 < n {
            st.prune_runs(self.0.cfg.run_retention)?;
        }
        Ok(())
    }
}

/// Whether a run's effects change the policy texts (see `Core::history_end`).
pub(super) fn changes_policy(fx: &[Effect]) -> bool {
    fx.iter()
        .any(|f| matches!(f, Effect::Changed(Change::Meta(_))))
}

/// Where the job of a run is, for its removal from the queue.
pub(super) enum Queued<'a> {
    /// Not in the queue (run inside its submission's transaction).
    No(&'a Job),
    /// A queue row, removed with the run's result.
    Row(&'a Job),
    /// A row of a batch: the batch removes its finished rows together, in the
    /// same transaction (`runs_in_txn`).
    Batch(&'a Job),
}

impl Queued<'_> {
    fn job(&self) -> &Job {
        match self {
            Queued::No(j) | Queued::Row(j) | Queued::Batch(j) => j,
        }
    }
}

/// Adds `delta` to the starts of `jobs`: the first queued scripts, in order, so
/// the queue holds no other row between the first's `seq` and the last's (rows
/// refused as invalid on the way left the queue).
fn count_range(st: &mut dyn Store, jobs: &[Job], delta: i64) -> Result<()> {
    match (jobs.first(), jobs.last()) {
        (Some(f), Some(l)) => st.count_attempts(f.seq, l.seq, delta),
        _ => Ok(()),
    }
}

/// The outcome of a script that did not run: `status` and the `error` that says
/// why (refused by the policy, withdrawn, undeliverable, crashed too often).
pub(super) fn failed_outcome(status: Status, error: String) -> Outcome {
    Outcome {
        status,
        value: Value::Null,
        output: String::new(),
        error: Some(error),
        operations: 0,
        logs: vec![],
        sends: vec![],
        duration: Duration::ZERO,
        wrote: false,
        wrote_rows: false,
        storage_error: None,
    }
}

/// The run's host, which also knows which peers exist (here or in the lattice),
/// so that a `send` to no peer at all is an error of the run.
struct KnownPeers<'a> {
    inner: Box<dyn Host>,
    core: &'a Core,
}

impl Host for KnownPeers<'_> {
    fn check(&self, cap: Capability, object: &str) -> Result<()> {
        self.inner.check(cap, object)
    }
    fn check_script(&self, ast: &rhai::AST) -> Result<()> {
        self.inner.check_script(ast)
    }
    fn caller_get(&self, key: &str) -> Result<Option<Value>> {
        self.inner.caller_get(key)
    }
    fn knows_peer(&self, peer: &str) -> bool {
        // The rule of a dropped script's way (`Core::route`); the running peer
        // is here, so its own name needs no caller to compare with.
        self.core.route("", peer).is_ok()
    }
    fn row_access(&self, action: crate::script::RowAction, table: &str) -> crate::script::Access {
        self.inner.row_access(action, table)
    }
    fn check_row(
        &self,
        action: crate::script::RowAction,
        table: &str,
        row: &crate::tables::rows::Row,
    ) -> Result<()> {
        self.inner.check_row(action, table, row)
    }
}
