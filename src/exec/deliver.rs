//! Delivery: committed outgoing messages handed to their targets and retried
//! until they land, and what becomes of a message that cannot be delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::provenance::unreadable_result;
use super::{provenance, Core, RunResult};
use crate::error::Error;
use crate::peer::name::script_stem;
use crate::peer::{Ack, Op, Peer};
use crate::script::{Outcome, Status};
use crate::store::{Job, Outgoing, Store};
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
                peer.has_undelivered.store(false, Ordering::Relaxed);
            }
            return;
        }
        for msg in msgs {
            {
                let mut inflight = peer.inflight.lock().unwrap();
                if !inflight.insert(msg.id.clone()) {
                    continue;
                }
            }
            let id = msg.id.clone();
            match self.peer(&msg.to) {
                Ok(target) => {
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
                    self.push(
                        &target,
                        Op::Deliver {
                            from: peer.name.clone(),
                            msg,
                        },
                        Some(ack),
                    );
                }
                Err(e) if e.errno == libc::ENOENT => {
                    // The target does not exist (or was removed): the sender gets a
                    // clear error result instead of a message lost in silence.
                    self.undeliverable(peer, msg, &e);
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.name, to = %msg.to, error = %e, "delivery failed; will retry");
                    peer.inflight.lock().unwrap().remove(&id);
                }
            }
        }
    }

    pub(super) fn undeliverable(&self, peer: &Arc<Peer>, msg: Outgoing, e: &Error) {
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
