//! Delivery: committed outgoing messages handed to their targets and retried
//! until they land, and what becomes of a message that cannot be delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::op::Op;
use super::provenance::unreadable_result;
use super::run::failed_outcome;
use super::state::actor;
use super::submit::message_job;
use super::transport::{Delivery, DeliveryAck};
use super::{provenance, Core, MessageKind, RunResult};
use crate::error::Error;
use crate::names::script_stem;
use crate::peer::Peer;
use crate::script::Status;
use crate::store::Message;
use crate::util::{new_id, now_ns};

impl Core {
    /// Hands committed outgoing messages to their targets; retried until they land.
    pub(super) fn deliver(&self, peer: &Arc<Peer>) {
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
                actor(peer).has_undelivered.store(false, Ordering::Relaxed);
            }
            return;
        }
        let transport = self.transport();
        // Started to join a lattice that is not joined yet (recovery runs before
        // the lattice's transport is set): a message for a peer not served here
        // waits, so that the directory decides, not the in-process transport.
        let unjoined = self.0.cfg.joins_lattice && !transport.spans_daemons();
        for msg in msgs {
            if unjoined && !self.0.registry.exists(&msg.to) {
                continue;
            }
            if !actor(peer).inflight.lock().unwrap().insert(msg.id.clone()) {
                continue;
            }
            tracing::trace!(peer = %peer.name, to = %msg.to, id = %msg.id, "to deliver");
            let ack = self.delivery_ack(peer, msg.clone());
            transport.deliver(&peer.name, msg, ack);
        }
    }

    /// What the sender does when the transport answers for `msg`: marks it
    /// delivered, makes it an error result (no such peer, or refused too often),
    /// or lets it wait for the next try (see [`super::Transport::deliver`]).
    fn delivery_ack(&self, peer: &Arc<Peer>, msg: Message) -> DeliveryAck {
        let core = self.clone();
        let sender = peer.clone();
        Box::new(move |r| {
            let id = msg.id.clone();
            match r {
                Delivery::Taken => {
                    tracing::trace!(peer = %sender.name, id = %id, "delivered");
                    core.0
                        .stats
                        .messages_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    {
                        let mut f = actor(&sender).delivery_failures.lock().unwrap();
                        if !f.is_empty() {
                            f.remove(&id);
                        }
                    }
                    core.mark_delivered(&sender, id);
                }
                // The target does not exist (or was removed): the sender gets a
                // clear error result instead of a message lost in silence.
                Delivery::NoSuchPeer(e) => core.undeliverable(&sender, msg, &e),
                Delivery::WayDown(e) => {
                    tracing::warn!(peer = %sender.name, to = %msg.to, error = %e, "delivery failed; will retry");
                    actor(&sender).inflight.lock().unwrap().remove(&id);
                }
                Delivery::Refused(e) => {
                    let tries = {
                        let mut f = actor(&sender).delivery_failures.lock().unwrap();
                        let n = f.entry(id.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    if tries >= core.0.cfg.delivery_tries {
                        actor(&sender).delivery_failures.lock().unwrap().remove(&id);
                        core.undeliverable(&sender, msg, &e);
                    } else {
                        tracing::warn!(peer = %sender.name, error = %e, tries, "delivery failed; will retry");
                        actor(&sender).inflight.lock().unwrap().remove(&id);
                    }
                }
            }
        })
    }

    /// Marks message `id` of `sender` delivered (no more tries); it leaves the
    /// messages in flight once the mark is applied.
    fn mark_delivered(&self, sender: &Arc<Peer>, id: String) {
        let s2 = sender.clone();
        let id2 = id.clone();
        self.push(
            sender,
            Op::Delivered(id),
            Some(Box::new(move |_| {
                actor(&s2).inflight.lock().unwrap().remove(&id2);
            })),
        );
    }

    /// Ends a message that cannot be delivered: a script becomes an `error` result
    /// at its sender, a result is dropped (logged) and its reader at the target
    /// gets an `error` result in its place.
    pub(super) fn undeliverable(&self, peer: &Arc<Peer>, msg: Message, e: &Error) {
        let id = msg.id.clone();
        let kind = MessageKind::of(&msg).ok();
        let op = if kind == Some(MessageKind::Script) {
            let now = now_ns();
            let job = message_job(&msg, &peer.name);
            let outcome = failed_outcome(
                Status::Error,
                format!("cannot deliver {} to {}: {}", msg.name, msg.to, e.message),
            );
            let result = RunResult::new(&job, &msg.to, &outcome, msg.created_at, now);
            let payload = serde_json::to_string(&result).unwrap_or_default();
            Op::Deliver {
                from: msg.to.clone(),
                msg: Message {
                    id: new_id(),
                    to: peer.name.clone(),
                    kind: MessageKind::Result.as_str().into(),
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
        if kind == Some(MessageKind::Result) && !provenance::is_replacement(&msg.id) {
            // Its reader waits at the target: it gets an `error` result that says
            // why, in place of the one that cannot be delivered (when the target
            // is a peer of this daemon).
            let v = unreadable_result(&peer.name, &msg, &e.message);
            let replacement = Message {
                id: provenance::replacement_id(&msg.id),
                payload: v.to_string(),
                ..msg.clone()
            };
            self.deliver_local(&peer.name, replacement, Box::new(|_| {}));
        }
        let core = self.clone();
        let sender = peer.clone();
        self.push(
            peer,
            op,
            Some(Box::new(move |r| {
                if r.is_ok() {
                    core.mark_delivered(&sender, id);
                } else {
                    actor(&sender).inflight.lock().unwrap().remove(&id);
                }
            })),
        );
    }
}
