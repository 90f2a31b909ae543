//! Messages between daemons over JetStream.
//!
//! Out: a message for a peer served elsewhere is published on
//! `peerfs.<lattice>.msg.<to>.<from>` with a `Nats-Msg-Id` made of its id and a
//! keyed hash of it that no other worker can compute (JetStream drops a second
//! copy within the duplicate window, and that window, which is the stream's and
//! not a subject's, cannot be used to drop another's message by guessing its
//! id); the sender marks it delivered only
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
use super::read::max_payload;
use super::{provision, wire, Lattice};
use crate::error::err;
use crate::error::Result;
use crate::exec::{Ack, Delivery, DeliveryAck, Transport};
use crate::store::{DirEntry, Message};

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
    ) -> Result<Option<serde_json::Value>> {
        super::read::remote_get(&self.0, owner, reader, key, script, params)
    }

    fn remote_view_list(&self, owner: &str, reader: &str, dir: &str) -> Result<Vec<DirEntry>> {
        super::read::remote_view_list(&self.0, owner, reader, dir)
    }

    fn remote_view_stat(&self, owner: &str, reader: &str, key: &str) -> Result<Option<DirEntry>> {
        super::read::remote_view_stat(&self.0, owner, reader, key)
    }

    fn remote_view_bytes(&self, owner: &str, reader: &str, key: &str) -> Result<Vec<u8>> {
        super::read::remote_view_bytes(&self.0, owner, reader, key)
    }

    fn remote_tables(&self, owner: &str, reader: &str) -> Result<Vec<String>> {
        super::read::remote_tables(&self.0, owner, reader)
    }

    fn remote_rows(
        &self,
        owner: &str,
        reader: &str,
        table: &str,
        key: Option<&str>,
    ) -> Result<Vec<crate::tables::rows::Row>> {
        super::read::remote_rows(&self.0, owner, reader, table, key)
    }

    fn deliver(&self, from: &str, msg: Message, ack: DeliveryAck) {
        let l = &self.0;
        if l.core.registry().exists(&msg.to) {
            return l.core.deliver_local(from, msg, ack);
        }
        // The lattice's own errors, named by errno where NATS' errors are mapped
        // (`directory::unreachable`), become what the sender does next here.
        let ack: Ack = Box::new(move |r| ack(outcome(r)));
        if !l.ready() {
            return ack(Err(err!(
                libc::EHOSTUNREACH,
                "the lattice is not joined yet (NATS unreachable?): {} waits in {from}'s store",
                msg.id
            )));
        }
        if !l.knows(&msg.to) {
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
            (e.0.ack)(Err(crate::Error::stopped("the message was published")));
        }
    }
}

/// How a publish (or its refusal before it) ended, for the sender.
fn outcome(r: Result<()>) -> Delivery {
    match r {
        Ok(()) => Delivery::Taken,
        Err(e) if e.errno == libc::ENOENT => Delivery::NoSuchPeer(e),
        Err(e) if e.is_stopped() || matches!(e.errno, libc::EHOSTUNREACH | libc::ETIMEDOUT) => {
            Delivery::WayDown(e)
        }
        Err(e) => Delivery::Refused(e),
    }
}

/// What a message's headers and subject may take of `max_payload`.
const HEADER_ROOM: usize = 1024;
/// Most messages one JetStream message carries.
const BATCH_MESSAGES: usize = 256;
/// Most bytes of a batch (and at most half the server's `max_payload`); a single
/// message may be larger, up to `max_payload`.
const BATCH_BYTES: usize = 256 << 10;

/// Publishes in order; each acknowledgement is awaited on its own task.
///
/// Messages already waiting for the same subject (one sender to one target) go
/// out together, as one JetStream message ([`wire::batch`]): under load the
/// server stores, delivers and acknowledges one message for many. Nothing waits
/// to fill a batch, so a lone message goes out at once. Each message of a batch
/// is marked delivered only after JetStream acknowledged the batch; the target
/// applies each message once by its id, whatever batches it came in.
pub(super) async fn publisher(
    l: Arc<Lattice>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Publish>,
) {
    let mut next: Option<Publish> = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let cap = BATCH_BYTES.min(max_payload(&l) / 2);
        let batch = group(first, &mut rx, &mut next, cap);
        publish(&l, batch).await;
    }
}

/// `first` and the publishes waiting behind it for the same subject, up to
/// [`BATCH_MESSAGES`] and `cap` bytes; the first one for another subject is kept
/// in `next`.
fn group(
    first: Publish,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Publish>,
    next: &mut Option<Publish>,
    cap: usize,
) -> Vec<Publish> {
    let mut size = first.payload.len();
    let mut batch = vec![first];
    while batch.len() < BATCH_MESSAGES {
        match rx.try_recv() {
            Ok(p) if p.subject == batch[0].subject && size + p.payload.len() < cap => {
                size += p.payload.len() + 1;
                batch.push(p);
            }
            Ok(p) => {
                *next = Some(p);
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// One JetStream publish of `batch` (one message or several for one subject);
/// its acknowledgement answers each of them.
async fn publish(l: &Lattice, mut batch: Vec<Publish>) {
    let subject = batch[0].subject.clone();
    let (id, payload) = if batch.len() == 1 {
        (batch[0].id.clone(), std::mem::take(&mut batch[0].payload))
    } else {
        (
            // The same messages sent again make the same id, which JetStream's
            // duplicate window drops; other groupings the target recognises.
            format!("{}..{}", batch[0].id, batch[batch.len() - 1].id),
            wire::batch(batch.iter().map(|p| &p.payload[..])),
        )
    };
    let acks: Vec<Ack> = batch.into_iter().map(|p| p.ack).collect();
    let acks_n = acks.len();
    let answer = move |r: Result<()>| {
        for ack in acks {
            ack(r.clone());
        }
    };
    // Too big for the server, now and at every retry: the sender's delivery
    // tries end it as an error result that says why.
    let max = max_payload(l);
    if payload.len() + HEADER_ROOM > max {
        return answer(Err(err!(
            libc::EFBIG,
            "message {id} is {} bytes: more than the lattice's NATS max_payload ({max})",
            payload.len()
        )));
    }
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", l.msg_id(&subject, &id).as_str());
    let timeout = l.opts.timeout;
    tracing::trace!(%subject, %id, messages = acks_n, "publish");
    match l.js.publish_with_headers(subject, h, payload.into()).await {
        Ok(fut) => {
            tokio::spawn(async move {
                let r = match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(_)) => {
                        tracing::trace!(%id, "stored");
                        Ok(())
                    }
                    Ok(Err(e)) => Err(unreachable(&format!("publish of {id}"), e)),
                    Err(_) => Err(err!(
                        libc::ETIMEDOUT,
                        "no acknowledgement from JetStream for {id} within {timeout:?}"
                    )),
                };
                answer(r);
            });
        }
        Err(e) => answer(Err(unreachable(&format!("publish of {id}"), e))),
    }
}

/// The lattice's stream, made by `peerfs lattice provision` (a worker may not
/// make or change it), checked to be as provisioning makes it for `peers`.
pub(super) async fn check_stream(l: &Lattice, peers: &[String]) -> Result<stream::Stream> {
    let name = l.names.stream();
    let mut s = match l.js.get_stream(&name).await {
        Ok(s) => s,
        Err(e) if provision::not_found(&e) => {
            return Err(err!(
                libc::EACCES,
                "the lattice stream {name} does not exist: make it with `peerfs lattice provision` (the operator's credentials; docs/lattice.md)"
            ))
        }
        Err(e) => return Err(unreachable(&format!("the lattice stream {name}"), e)),
    };
    let info = s
        .info()
        .await
        .map_err(|e| unreachable(&format!("the lattice stream {name}"), e))?;
    provision::check_stream(&l.names, &info.config, peers)?;
    Ok(s)
}

/// `peer`'s consumer, made by `peerfs lattice provision`, checked to hand out
/// `peer`'s messages only (`EACCES` naming what differs, or that it is missing).
pub(super) async fn check_consumer(
    l: &Lattice,
    s: &stream::Stream,
    peer: &str,
) -> Result<consumer::PullConsumer> {
    let name = l.names.consumer(peer);
    match s.get_consumer::<consumer::pull::Config>(&name).await {
        Ok(c) => {
            provision::check_consumer(&l.names, peer, &c.cached_info().config)?;
            Ok(c)
        }
        Err(e) if provision::not_found(&e) => Err(err!(
            libc::EACCES,
            "peer {peer} has no consumer {name} in the lattice {}: add it to the lattice (`peerfs lattice init` with {peer} among this worker's peers, `peerfs lattice provision`, and a reload of nats-server)",
            l.names.lattice
        )),
        Err(e) => Err(unreachable(&format!("consumer {name}"), e)),
    }
}

/// Hands the messages for the local `peer` to its actor, for as long as this
/// daemon serves it (re-creating the consumer after NATS comes back).
pub(super) async fn consume(l: Arc<Lattice>, peer: String) {
    let mut stop = l.stop.subscribe();
    let mut warned = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match open_consumer(&l, &peer).await {
            Ok(mut msgs) => loop {
                warned = false;
                tokio::select! {
                    _ = stop.changed() => return,
                    m = msgs.next() => match m {
                        Some(Ok(m)) => take(&l, &peer, m).await,
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
            Err(e) if e.errno == libc::EACCES => {
                // Not provisioned, or changed by someone else: said once, and
                // looked at again later (provisioning may follow).
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(peer = %peer, error = %e, "cannot take the peer's messages");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => tracing::debug!(peer = %peer, error = %e, "cannot open the consumer yet"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn open_consumer(l: &Lattice, peer: &str) -> Result<consumer::pull::Stream> {
    let s = check_stream(l, &[peer.to_string()]).await?;
    let c = check_consumer(l, &s, peer).await?;
    let name = l.names.consumer(peer);
    c.stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| unreachable(&format!("consumer {name}"), e))
}

/// One delivered JetStream message (one peerfs message or a batch): checked,
/// queued at its target, acknowledged after the commits.
async fn take(l: &Arc<Lattice>, peer: &str, m: jetstream::Message) {
    let subject = m.subject.to_string();
    let msgs = match check_batch(l, peer, &subject, &m.payload) {
        Ok(x) => x,
        Err(why) => {
            tracing::warn!(peer, "{why}");
            tokio::spawn(async move {
                let _ = m.ack_with(AckKind::Term).await;
            });
            return;
        }
    };
    tracing::trace!(%subject, messages = msgs.len(), "taken");
    // A peer closed while idle is opened (its store, its recovery) on a blocking
    // thread: on the runtime's thread it would hold up every other peer's
    // messages. This peer's next message waits for it, so the order holds.
    if !l.core.registry().is_open(peer) {
        let (core, p) = (l.core.clone(), peer.to_string());
        if let Err(e) = tokio::task::spawn_blocking(move || core.peer(&p).map(|_| ())).await {
            tracing::warn!(peer, error = %e, "opening the peer's store failed");
        }
    }
    let mut answers = Vec::with_capacity(msgs.len());
    for (from, msg) in msgs {
        let (tx, rx) = tokio::sync::oneshot::channel();
        l.core.deliver_local(
            &from,
            msg,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        answers.push(rx);
    }
    let tries = l.core.config().delivery_tries as i64;
    tokio::spawn(acknowledge(m, answers, tries, peer.to_string()));
}

/// The messages of a delivery to `peer` on `subject`, each with its sender; a
/// batch with any message for another peer, or from a peer other than the one
/// its subject names, is refused whole.
fn check_batch(
    l: &Lattice,
    peer: &str,
    subject: &str,
    payload: &[u8],
) -> Result<Vec<(String, Message)>> {
    let Some((to, from)) = l.names.parse_msg_subject(subject) else {
        return Err(err!(
            libc::EINVAL,
            "a message on an unexpected subject {subject}"
        ));
    };
    let msgs = wire::decode_all(payload)
        .map_err(|e| err!(e.errno, "{e} (on {subject})").with_source(e))?;
    for (sender, msg) in &msgs {
        if to != peer || msg.to != peer {
            return Err(err!(
                libc::EACCES,
                "a message on {subject} for {} handed to {peer}",
                msg.to
            ));
        }
        if from != *sender {
            // Identity by subject permission: only `from`'s worker may publish
            // on this subject, whatever the message claims.
            return Err(err!(
                libc::EACCES,
                "message {} on {subject} claims to come from {sender}: refused",
                msg.id
            ));
        }
    }
    Ok(msgs)
}

/// Acknowledges a delivery once each of its messages is answered: a transient
/// failure of any brings the whole batch back (the applied ones are recognised
/// by their ids); a refusal counts tries, and ends it after `tries`.
async fn acknowledge(
    m: jetstream::Message,
    answers: Vec<tokio::sync::oneshot::Receiver<Delivery>>,
    tries: i64,
    peer: String,
) {
    let mut transient = None;
    let mut refused = None;
    for rx in answers {
        match rx
            .await
            .unwrap_or_else(|_| Delivery::WayDown(crate::Error::stopped("the message was applied")))
        {
            Delivery::Taken => {}
            Delivery::WayDown(e) => transient = Some(e),
            Delivery::NoSuchPeer(e) | Delivery::Refused(e) => refused = Some(e),
        }
    }
    let kind = match (transient, refused) {
        (None, None) => AckKind::Ack,
        (Some(_), _) => AckKind::Nak(Some(Duration::from_millis(500))),
        (None, Some(e)) => {
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
    tracing::trace!(peer = %peer, ?kind, "applied; acknowledging");
    if let Err(e) = m.ack_with(kind).await {
        // Redelivered after the ack wait, and recognised by its id then.
        tracing::debug!(error = %e, "acknowledgement not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(subject: &str, id: &str, bytes: usize) -> Publish {
        Publish {
            subject: subject.into(),
            id: id.into(),
            payload: vec![b'x'; bytes],
            ack: Box::new(|_| {}),
        }
    }

    /// What waits for one subject goes out together, in order; another subject,
    /// the message and byte caps each end a batch.
    #[test]
    fn waiting_publishes_for_one_subject_go_out_together_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (s, id) in [
            ("a", "1"),
            ("a", "2"),
            ("a", "3"),
            ("b", "4"),
            ("a", "5"),
            ("a", "6"),
        ] {
            tx.send(p(s, id, 10)).unwrap();
        }
        let mut next = None;
        let mut out = Vec::new();
        while let Some(first) = next.take().or_else(|| rx.try_recv().ok()) {
            let b = group(first, &mut rx, &mut next, BATCH_BYTES);
            out.push(
                b.iter()
                    .map(|p| format!("{}{}", p.subject, p.id))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        assert_eq!(out, ["a1 a2 a3", "b4", "a5 a6"]);

        for i in 0..BATCH_MESSAGES + 3 {
            tx.send(p("a", &i.to_string(), 1)).unwrap();
        }
        let first = rx.try_recv().unwrap();
        assert_eq!(
            group(first, &mut rx, &mut next, BATCH_BYTES).len(),
            BATCH_MESSAGES
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(group(first, &mut rx, &mut next, BATCH_BYTES).len(), 3);

        // Bytes: two of a third of the cap fit, the third starts the next batch;
        // one larger than the cap goes alone.
        for id in ["1", "2", "3"] {
            tx.send(p("a", id, BATCH_BYTES / 3)).unwrap();
        }
        tx.send(p("a", "big", BATCH_BYTES * 2)).unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let first = next.take().or_else(|| rx.try_recv().ok())?;
            Some(group(first, &mut rx, &mut next, BATCH_BYTES).len())
        })
        .collect();
        assert_eq!(sizes, [2, 1, 1]);
        assert!(next.is_none());
    }
}
