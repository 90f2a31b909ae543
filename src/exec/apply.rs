//! What each [`Op`] does to a peer's store, and the log line it writes
//! (`apply_one`, by what an op touches: state, the peer's other files, its queue,
//! a received message), with the submissions a write transaction makes and may
//! run at once (`submit_and_run`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::op::Op;
use super::provenance::{chain_note, unreadable_result};
use super::run::Queued;
use super::slot::result_slot;
use super::txn::Effect;
use super::{test_hooks, Change, Core, MessageKind};
use crate::error::err;
use crate::error::Result;
use crate::names::script_stem;
use crate::peer::Peer;
use crate::store::{Job, Message, Store};
use crate::util::{now_ns, rfc3339};

impl Core {
    /// A submission whose script runs at once, in the same transaction: no queue
    /// row, one commit for both. A run that does not end by `inline` gives way (rolled
    /// back) and is queued as usual; so is every later script of the batch
    /// (`inline` becomes `None`), which keeps the peer's scripts in order.
    pub(super) fn submit_and_run(
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
        // A submission is not in the queue yet (`seq` 0): nothing to dequeue.
        debug_assert_eq!(job.seq, 0);
        match self.run_one(st, peer, &Queued::No(job), Some(deadline), None)? {
            Some(run_fx) => {
                self.count_runs(st, 1)?;
                // Later submissions meet the policy this run put in force, once
                // committed: they are queued.
                if super::run::changes_policy(&run_fx) {
                    *inline = None;
                }
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

    /// The spool intake's records of an [`Op::Intake`], [`Op::IntakeSend`] or
    /// [`Op::Forget`].
    pub(super) fn intake_records(st: &mut dyn Store, op: &Op) -> Result<()> {
        let forget = match op {
            Op::Intake {
                key,
                record,
                forget,
                ..
            }
            | Op::IntakeSend {
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

    /// A script this peer sends to a peer of another daemon ([`Op::Send`]): its
    /// pending result in this peer's outbox for the target and its outgoing row,
    /// delivered after the commit.
    fn record_send(st: &mut dyn Store, msg: &Message) -> Result<Vec<Effect>> {
        let out = format!("{}.json", script_stem(&msg.name));
        st.outbox_pending(&msg.to, &out, &msg.id, msg.created_at)?;
        st.record_outgoing(msg)?;
        st.append_log(&format!(
            "{} send {} {} to {}",
            rfc3339(now_ns()),
            msg.id,
            msg.name,
            msg.to
        ))?;
        Ok(vec![
            Effect::Pending {
                target: msg.to.clone(),
                name: out,
                run_id: msg.id.clone(),
            },
            Effect::Undelivered,
            Effect::Changed(Change::Log),
        ])
    }

    /// A submission into the queue (it runs later).
    pub(super) fn queue_submission(
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
    pub(super) fn record_submission(
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

    /// Applies one op to the peer's store, inside the caller's transaction, and
    /// says what changed. Ops are grouped by what they touch: submissions and the
    /// spool's records here, state ([`Core::apply_state`]), the peer's other files
    /// ([`Core::apply_files`]), withdrawals and received messages.
    pub(super) fn apply_one(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        op: &Op,
    ) -> Result<Vec<Effect>> {
        match op {
            Op::Submit(job)
            | Op::Journaled {
                job,
                withdrawn: false,
            } => self.queue_submission(st, peer, job),
            Op::Journaled {
                job,
                withdrawn: true,
            } => self.withdraw_journaled(st, peer, job),
            Op::JournalMark { key, seq } => {
                st.set_meta(key, seq.to_string().as_bytes())?;
                Ok(vec![Effect::None])
            }
            Op::Intake { job, .. } => {
                Self::intake_records(st, op)?;
                self.queue_submission(st, peer, job)
            }
            Op::IntakeSend { msg, .. } => {
                Self::intake_records(st, op)?;
                Self::record_send(st, msg)
            }
            Op::Forget(_) => {
                Self::intake_records(st, op)?;
                Ok(vec![Effect::None])
            }
            Op::SetBytes(..)
            | Op::Remove(_)
            | Op::Rename(..)
            | Op::RenameDir(..)
            | Op::SetMtime(..)
            | Op::SetMode(..)
            | Op::MakeDir(_)
            | Op::RemoveDir(_)
            | Op::SetDirAttrs { .. } => {
                self.with_history(st, &peer.name, op, |st| self.apply_state(st, op))
            }
            Op::PutRow { .. } | Op::DeleteRow { .. } => {
                self.with_history(st, &peer.name, op, |st| Self::apply_row(st, &peer.name, op))
            }
            Op::SetMeta(k, text) if k == crate::tables::META_KEY => {
                self.with_history(st, &peer.name, op, |st| self.apply_schema(st, peer, text))
            }
            Op::SetMeta(k, text) if k == crate::policy::PolicyText::Policy.key() => {
                Self::check_policy(st, text)?;
                self.with_history(st, &peer.name, op, |st| Self::apply_files(st, op))
            }
            Op::SetModule(..)
            | Op::RemoveModule(_)
            | Op::SetMeta(..)
            | Op::OutboxRemove(..)
            | Op::Log(_) => self.with_history(st, &peer.name, op, |st| Self::apply_files(st, op)),
            Op::Withdraw(name) => self.withdraw_queued(st, peer, name),
            Op::Delivered(id) => {
                st.mark_delivered(id, now_ns())?;
                Ok(vec![Effect::None])
            }
            Op::Send(msg) => Self::record_send(st, msg),
            Op::Deliver { from, msg } => self.receive(st, from, msg),
        }
    }

    /// An op on the peer's state (`state/`): its keys, folders and their attributes.
    fn apply_state(&self, st: &mut dyn Store, op: &Op) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        let changed_and_logged = vec![Effect::Changed(Change::State), Effect::Changed(Change::Log)];
        match op {
            Op::SetBytes(key, bytes) => {
                crate::names::check_key(key)?;
                st.set_bytes(key, bytes)?;
                st.append_log(&format!("{ts} write state/{key} {} bytes", bytes.len()))?;
                self.0.stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            Op::Remove(key) => {
                if !st.remove(key)? {
                    return Err(err!(libc::ENOENT, "no state key {key:?}"));
                }
                // Removed through the mount: its folders stay until rmdir.
                crate::store::keep_parents(st, key, now_ns())?;
                st.append_log(&format!("{ts} remove state/{key}"))?;
            }
            Op::Rename(from, to) => {
                crate::names::check_key(to)?;
                st.rename(from, to)?;
                crate::store::keep_parents(st, from, now_ns())?;
                st.append_log(&format!("{ts} rename state/{from} state/{to}"))?;
            }
            Op::RenameDir(from, to) => {
                crate::names::check_key(to)?;
                let n = st.rename_dir(from, to)?;
                crate::store::keep_parents(st, from, now_ns())?;
                st.append_log(&format!("{ts} rename state/{from}/ state/{to}/ ({n} keys)"))?;
            }
            Op::MakeDir(dir) => {
                crate::names::check_key(dir)?;
                st.keep_folder(dir, None, Some(now_ns()))?;
                st.append_log(&format!("{ts} mkdir state/{dir}/"))?;
            }
            Op::RemoveDir(dir) => {
                if !st.forget_folder(dir)? {
                    return Err(err!(libc::ENOENT, "no state folder {dir:?}"));
                }
                st.append_log(&format!("{ts} rmdir state/{dir}/"))?;
            }
            // Attributes only: no log line.
            Op::SetMtime(key, mtime) => {
                if !st.set_mtime(key, *mtime)? {
                    return Err(err!(libc::ENOENT, "no state key {key:?}"));
                }
                return Ok(vec![Effect::Changed(Change::State)]);
            }
            Op::SetMode(key, mode) => {
                if !st.set_mode(key, *mode)? {
                    return Err(err!(libc::ENOENT, "no state key {key:?}"));
                }
                return Ok(vec![Effect::Changed(Change::State)]);
            }
            Op::SetDirAttrs { dir, mode, mtime } => {
                st.keep_folder(dir, *mode, *mtime)?;
                return Ok(vec![Effect::Changed(Change::State)]);
            }
            _ => unreachable!("apply_one routes only state ops to apply_state"),
        }
        Ok(changed_and_logged)
    }

    /// An op on the peer's other files: modules, meta texts (policy, groups),
    /// results in its outbox, its log.
    fn apply_files(st: &mut dyn Store, op: &Op) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        Ok(match op {
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
            _ => unreachable!("apply_one routes only file ops to apply_files"),
        })
    }

    /// [`Op::Withdraw`]: every queued script of that name ends unrun, with a result
    /// that says so (its readers and its sender are answered).
    fn withdraw_queued(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        name: &str,
    ) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        let jobs = st.queued_all_named(name)?;
        if jobs.is_empty() {
            return Err(err!(libc::ENOENT, "no queued script named {name:?}"));
        }
        let mut fx = vec![Effect::Changed(Change::Inbox)];
        for job in &jobs {
            let why = format!("withdrawn by {}'s owner before it ran", peer.name);
            if let Some(f) = self.run_one(st, peer, &Queued::Row(job), None, Some(why))? {
                fx.extend(f);
            }
            fx.push(Effect::Dequeued);
        }
        st.append_log(&format!("{ts} withdraw {name} ({} queued)", jobs.len()))?;
        Ok(fx)
    }

    /// [`Op::Journaled`] withdrawn while it waited in the intake journal: recorded
    /// like a submission that the owner then withdrew.
    fn withdraw_journaled(
        &self,
        st: &mut dyn Store,
        peer: &Arc<Peer>,
        job: &Job,
    ) -> Result<Vec<Effect>> {
        let ts = rfc3339(now_ns());
        let mut fx = self.record_submission(st, peer, job)?;
        let why = format!("withdrawn by {}'s owner before it ran", peer.name);
        fx.extend(
            self.run_one(st, peer, &Queued::No(job), None, Some(why))?
                .unwrap_or_default(),
        );
        st.append_log(&format!("{ts} withdraw {} (1 queued)", job.name))?;
        fx.push(Effect::Changed(Change::Inbox));
        Ok(fx)
    }

    /// [`Op::Deliver`]: a message from `from`, taken once: a script is queued, a
    /// result finishes the pending one in the outbox.
    fn receive(&self, st: &mut dyn Store, from: &str, msg: &Message) -> Result<Vec<Effect>> {
        // Recognised by sender and id: another sender (a rogue worker's peer)
        // using the same id marks only its own. Rows from before the sender was
        // part of the key hold the id alone.
        let key = received_key(from, &msg.id);
        if st.seen_message(&key)? || st.seen_message(&msg.id)? {
            return Ok(vec![Effect::None]);
        }
        st.mark_message(&key)?;
        match MessageKind::of(msg)? {
            MessageKind::Script => {
                let job = self.received_job(from, msg)?;
                st.enqueue(&job)?;
                st.append_log(&format!(
                    "{} receive {} {} caller={from}{}",
                    rfc3339(now_ns()),
                    msg.id,
                    msg.name,
                    chain_note(&job.chain, from)
                ))?;
                Ok(vec![Effect::Queued, Effect::Changed(Change::Log)])
            }
            MessageKind::Result => Self::receive_result(st, from, msg),
        }
    }

    /// A received result: stored as the finished result in the outbox (one that
    /// cannot be read as JSON becomes an error result saying so, never retried:
    /// its reader is waiting).
    fn receive_result(st: &mut dyn Store, from: &str, msg: &Message) -> Result<Vec<Effect>> {
        let (v, payload) = match serde_json::from_str::<Value>(&msg.payload) {
            Ok(v) => (v, msg.payload.clone()),
            Err(e) => {
                let v = unreadable_result(from, msg, &e.to_string());
                let text = v.to_string();
                (v, text)
            }
        };
        let msg = &Message {
            payload,
            ..msg.clone()
        };
        let run_id = v
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_string();
        st.outbox_finish(from, &msg.name, &run_id, &msg.payload, now_ns())?;
        Ok(vec![
            Effect::Result {
                target: from.to_string(),
                name: msg.name.clone(),
                run_id,
                bytes: Arc::new(msg.payload.clone().into_bytes()),
                submitted_at: msg.created_at,
                finished_at: now_ns(),
            },
            Effect::Changed(Change::Outbox {
                target: from.to_string(),
                name: None,
            }),
        ])
    }
}

/// How a received message is remembered: its sender and its id (a peer name
/// holds no `/`).
fn received_key(from: &str, id: &str) -> String {
    format!("{from}/{id}")
}
