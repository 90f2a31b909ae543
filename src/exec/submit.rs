//! New work: the jobs and messages the owner's and other peers' scripts become
//! (`new_job`, `new_job_from`, `new_message`, `received_job`), their size check,
//! and the submissions that wait until they are durable.

use serde_json::Value;

use super::op::Op;
use super::Core;
use super::MessageKind;
use crate::error::err;
use crate::error::Result;
use crate::names::check_peer_name;
use crate::script::Limits;
use crate::store::{Job, Message};
use crate::util::{new_id, now_ns};

impl Core {
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
    /// the caller's ([`super::caller_slot`]), shown in `caller/peers/target/outbox/`.
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

    pub(super) fn check_script_size(&self, name: &str, len: usize, own: bool) -> Result<()> {
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

    /// A script `caller` drops for `target`, for the mount
    /// (`caller/peers/target/inbox/`), the spool and `peerfs run` alike: into the
    /// target's queue when it is [`Route::Here`], else a message from the caller.
    pub fn drop_script(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &Value,
    ) -> Result<Dropped> {
        Ok(match self.route(caller, target)? {
            Route::Here => {
                Dropped::Submit(self.new_job_from(caller, target, name, source, params)?)
            }
            Route::Elsewhere => {
                Dropped::Send(self.drop_message(caller, target, name, source, params)?)
            }
        })
    }

    /// The one rule of where a script from `caller` for `target` goes, for a
    /// dropped script and a run's `send` alike: a peer of this daemon (the
    /// caller itself among them) here; a peer another daemon of the lattice
    /// serves, or may serve (the directory decides at delivery, and NATS may be
    /// away for now), elsewhere; with no lattice, a peer that is not here is
    /// `ENOENT`.
    pub fn route(&self, caller: &str, target: &str) -> Result<Route> {
        check_peer_name(target)?;
        if target == caller || self.0.registry.exists(target) {
            Ok(Route::Here)
        } else if self.may_send_to(target) {
            Ok(Route::Elsewhere)
        } else {
            Err(err!(
                libc::ENOENT,
                "no peer {target} here: this daemon is in no lattice (--nats), so \
                 peers/{target}/inbox/ reaches nobody"
            ))
        }
    }

    /// Drops a script ([`Core::drop_script`]); `ack` once it is durable (at the
    /// target, or at the caller for a message).
    pub fn drop_script_async(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        ack: super::Ack,
    ) {
        match self.drop_script(
            caller,
            target,
            name,
            source,
            &Value::Object(Default::default()),
        ) {
            Ok(d) => self.apply_async(d.store(caller, target), d.op(), Some(ack)),
            Err(e) => ack(Err(e)),
        }
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
        let d = self.drop_script(caller, target, name, source, params)?;
        let id = d.id().to_string();
        self.apply(d.store(caller, target), d.op())?;
        Ok(id)
    }

    pub fn new_message(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &Value,
        hops: u32,
    ) -> Result<Message> {
        check_peer_name(target)?;
        let job = self.new_job(caller, name, source, params)?;
        Ok(Message {
            id: job.id,
            to: target.to_string(),
            kind: MessageKind::Script.as_str().into(),
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
    pub(super) fn received_job(&self, from: &str, msg: &Message) -> Result<Job> {
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
        let mut job = message_job(msg, from);
        if job.chain.last().map(String::as_str) != Some(from) {
            job.chain.push(from.to_string());
        }
        job.budget = self.budget_within(msg.budget);
        Ok(job)
    }

    /// A budget a row carries, within the daemon's `chain_budget` (0, a row from
    /// before budgets: a new chain's).
    pub(super) fn budget_within(&self, budget: u64) -> u64 {
        match budget {
            0 => self.0.cfg.chain_budget,
            b => b.min(self.0.cfg.chain_budget),
        }
    }
}

/// The job that message `msg` stands for, from `caller`: its id, name, source,
/// params, hops, time, chain and budget as the message has them.
pub(super) fn message_job(msg: &Message, caller: &str) -> Job {
    Job {
        seq: 0,
        id: msg.id.clone(),
        name: msg.name.clone(),
        source: msg.source.clone(),
        caller: caller.to_string(),
        params: msg.params.clone(),
        msg_id: Some(msg.id.clone()),
        hops: msg.hops,
        submitted_at: msg.created_at,
        chain: msg.chain.clone(),
        budget: msg.budget,
        attempts: 0,
    }
}

/// A dropped script, where [`Core::drop_script`] sends it.
#[derive(Debug)]
pub enum Dropped {
    /// Into the target's queue (a peer of this daemon).
    Submit(Job),
    /// A message from the caller (a peer another daemon serves).
    Send(Message),
}

impl Dropped {
    /// The peer whose store records the drop: the target for a submission,
    /// the caller for a message (it leaves with the caller's other messages).
    pub fn store<'a>(&self, caller: &'a str, target: &'a str) -> &'a str {
        match self {
            Dropped::Submit(_) => target,
            Dropped::Send(_) => caller,
        }
    }

    /// The run id.
    pub fn id(&self) -> &str {
        match self {
            Dropped::Submit(j) => &j.id,
            Dropped::Send(m) => &m.id,
        }
    }

    /// The op that records it.
    pub(super) fn op(self) -> Op {
        match self {
            Dropped::Submit(job) => Op::Submit(job),
            Dropped::Send(msg) => Op::Send(msg),
        }
    }
}

/// Where a script for a peer goes ([`Core::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A peer of this daemon.
    Here,
    /// A peer another daemon of the lattice serves (or may).
    Elsewhere,
}
