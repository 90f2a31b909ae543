//! Messages between daemons over JetStream.
//!
//! Out: a message for a peer served elsewhere is published on
//! `peerfs.<lattice>.msg.<to>.<from>` with its id as `Nats-Msg-Id` (JetStream drops
//! a second copy within the duplicate window); the sender marks it delivered only
//! after JetStream's acknowledgement. Publishes go out in the order they were
//! handed over (one task), so the order per sender→target pair holds.
//!
//! In: each served peer has a durable pull consumer on `...msg.<peer>.*`. A message
//! becomes an `Op::Deliver` through `Core::deliver_local`, and is acknowledged to
//! JetStream only after the transaction that records it committed. A redelivery
//! is recognised by the store (it remembers every message id) and applied once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt;

use super::directory::unreachable;
use super::{wire, Lattice};
use crate::error::err;
use crate::error::Result;
use crate::exec::{is_transient, Ack, Transport};
use crate::store::{DirEntry, Outgoing};

/// A publish handed to the publisher task.
pub(super) struct Publish {
    subject: String,
    id: String,
    payload: Vec<u8>,
    ack: Ack,
}

/// The lattice's [`Transport`]: local targets in process, others through JetStream.
pub(super) struct Nats(pub(super) Arc<Lattice>);

impl Transport for Nats {
    fn spans_daemons(&self) -> bool {
        true
    }

    fn serves_elsewhere(&self, peer: &str) -> bool {
        self.0.worker_of(peer).is_some()
    }

    fn remote_peers(&self) -> Vec<String> {
        self.0.dir.read().unwrap().keys().cloned().collect()
    }

    /// Claims it in the directory (`EEXIST` when another worker serves a peer of
    /// that name; `EHOSTUNREACH` when NATS is away).
    fn claim(&self, peer: &str) -> Result<()> {
        self.0.claim(peer)
    }

    fn serve_new(&self, peer: &str) {
        self.0.start_consumer(peer);
    }

    fn remote_get(
        &self,
        owner: &str,
        reader: &str,
        key: &str,
        script: &str,
        params: &serde_json::Value,
    ) -> std::result::Result<Option<serde_json::Value>, String> {
        super::read::remote_get(owner, reader, key, script, params)
    }

    fn remote_view_list(&self, owner: &str, reader: &str, dir: &str) -> Result<Vec<DirEntry>> {
        super::read::remote_view_list(owner, reader, dir)
    }

    fn remote_view_stat(&self, owner: &str, reader: &str, key: &str) -> Result<Option<DirEntry>> {
        super::read::remote_view_stat(owner, reader, key)
    }

    fn remote_view_bytes(&self, owner: &str, reader: &str, key: &str) -> Result<Vec<u8>> {
        super::read::remote_view_bytes(owner, reader, key)
    }

    fn deliver(&self, from: &str, msg: Outgoing, ack: Ack) {
        let l = &self.0;
        if l.core.registry().exists(&msg.to) {
            return l.core.deliver_local(from, msg, ack);
        }
        if !l.ready() {
            return ack(Err(err!(
                libc::EHOSTUNREACH,
                "the lattice is not joined yet (NATS unreachable?): {} waits in {from}'s store",
                msg.id
            )));
        }
        if l.worker_of(&msg.to).is_none() {
            return ack(Err(err!(
                libc::ENOENT,
                "no peer {} here or anywhere in the lattice {}",
                msg.to,
                l.names.lattice
            )));
        }
        if l.client.connection_state() != async_nats::connection::State::Connected {
            return ack(Err(err!(
                libc::EHOSTUNREACH,
                "NATS is unreachable: {} to {} waits in {from}'s store",
                msg.id,
                msg.to
            )));
        }
        let p = Publish {
            subject: l.names.msg_subject(&msg.to, from),
            id: msg.id.clone(),
            payload: wire::encode(from, &msg),
            ack,
        };
        if let Err(e) = l.publisher.send(p) {
            (e.0.ack)(Err(err!(libc::EAGAIN, "the lattice is stopping")));
        }
    }
}

/// Publishes in order; each acknowledgement is awaited on its own task.
pub(super) async fn publisher(
    l: Arc<Lattice>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Publish>,
) {
    while let Some(p) = rx.recv().await {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", p.id.as_str());
        let sent =
            l.js.publish_with_headers(p.subject, h, p.payload.into())
                .await;
        let timeout = l.opts.timeout;
        match sent {
            Ok(fut) => {
                tokio::spawn(async move {
                    let r = match tokio::time::timeout(timeout, fut).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(unreachable(&format!("publish of {}", p.id), e)),
                        Err(_) => Err(err!(
                            libc::ETIMEDOUT,
                            "no acknowledgement from JetStream for {} within {timeout:?}",
                            p.id
                        )),
                    };
                    (p.ack)(r);
                });
            }
            Err(e) => (p.ack)(Err(unreachable(&format!("publish of {}", p.id), e))),
        }
    }
}

pub(super) async fn ensure_stream(l: &Lattice) -> Result<stream::Stream> {
    let name = l.names.stream();
    if let Ok(s) = l.js.get_stream(&name).await {
        return Ok(s);
    }
    l.js.create_stream(stream::Config {
        name: name.clone(),
        description: Some(
            "peerfs: messages between peers, kept until their target took them".into(),
        ),
        subjects: vec![l.names.msg_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| unreachable(&format!("the lattice stream {name}"), e))
}

/// Hands the messages for the local `peer` to its actor, for as long as this
/// daemon serves it (re-creating the consumer after NATS comes back).
pub(super) async fn consume(l: Arc<Lattice>, peer: String) {
    let mut stop = l.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        match open_consumer(&l, &peer).await {
            Ok(mut msgs) => loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = msgs.next() => match m {
                        Some(Ok(m)) => take(&l, &peer, m),
                        Some(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "consumer");
                            if l.client.connection_state() != async_nats::connection::State::Connected {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            },
            Err(e) => tracing::debug!(peer = %peer, error = %e, "cannot open the consumer yet"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn open_consumer(l: &Lattice, peer: &str) -> Result<consumer::pull::Stream> {
    let s = ensure_stream(l).await?;
    let name = l.names.consumer(peer);
    let c: consumer::PullConsumer = s
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("peerfs.{}.msg.{peer}.*", l.names.lattice),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: l.opts.ack_wait,
                deliver_policy: consumer::DeliverPolicy::All,
                max_ack_pending: 10_000,
                // Its state is rebuilt from the stream (docs/lattice.md, sizing).
                num_replicas: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unreachable(&format!("consumer {name}"), e))?;
    c.stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| unreachable(&format!("consumer {name}"), e))
}

/// One delivered message: checked, queued at its target, acknowledged after the commit.
fn take(l: &Arc<Lattice>, peer: &str, m: jetstream::Message) {
    let subject = m.subject.to_string();
    let checked = match (
        l.names.parse_msg_subject(&subject),
        wire::decode(&m.payload),
    ) {
        (Some((to, from)), Ok((sender, msg))) => {
            if to != peer || msg.to != peer {
                Err(format!(
                    "a message on {subject} for {} handed to {peer}",
                    msg.to
                ))
            } else if from != sender {
                // Identity by subject permission: only `from`'s worker may publish
                // on this subject, whatever the message claims.
                Err(format!(
                    "message {} on {subject} claims to come from {sender}: refused",
                    msg.id
                ))
            } else {
                Ok((sender, msg))
            }
        }
        (None, _) => Err(format!("a message on an unexpected subject {subject}")),
        (_, Err(e)) => Err(format!("{e} (on {subject})")),
    };
    let (from, msg) = match checked {
        Ok(x) => x,
        Err(why) => {
            tracing::warn!(peer, "{why}");
            tokio::spawn(async move {
                let _ = m.ack_with(AckKind::Term).await;
            });
            return;
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    l.core.deliver_local(
        &from,
        msg,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let tries = l.core.config().delivery_tries as i64;
    let peer = peer.to_string();
    tokio::spawn(async move {
        let r = rx
            .await
            .unwrap_or_else(|_| Err(err!(libc::EAGAIN, "the daemon stopped")));
        let kind = match r {
            Ok(()) => AckKind::Ack,
            Err(e) if is_transient(e.errno) => AckKind::Nak(Some(Duration::from_millis(500))),
            Err(e) => {
                let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
                if delivered >= tries {
                    tracing::error!(peer = %peer, error = %e, delivered, "message refused; dropped");
                    AckKind::Term
                } else {
                    tracing::warn!(peer = %peer, error = %e, delivered, "message refused; will retry");
                    AckKind::Nak(Some(Duration::from_millis(500)))
                }
            }
        };
        if let Err(e) = m.ack_with(kind).await {
            // Redelivered after the ack wait, and recognised by its id then.
            tracing::debug!(error = %e, "acknowledgement not sent");
        }
    });
}
