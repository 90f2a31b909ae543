//! One process per peer. The directory names a peer's worker, not its process, so
//! a second process started with the same worker's credentials would take the
//! directory's entry for its own restart. Each process therefore answers
//! `peerfs.<lattice>.alive.<peer>` for the peers it serves, and a process about to
//! serve a peer asks first: an answer means another process serves it now
//! (refused, naming it); no responders (or no answer in time: a connection that
//! died with its host) means it is free. Only the worker's own credentials may
//! subscribe or publish there (`server::publish_allow`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Lattice;
use crate::error::err;
use crate::error::Result;

/// Who serves a peer: enough for an operator to find the process.
#[derive(Serialize, Deserialize)]
struct Here {
    worker: String,
    instance: String,
    pid: u32,
    host: String,
}

impl super::Names {
    pub fn alive_subject(&self, peer: &str) -> String {
        format!("peerfs.{}.alive.{peer}", self.lattice)
    }
}

/// This process: a random id among the worker's processes.
pub(super) fn instance() -> String {
    super::server::secret().unwrap_or_else(|_| format!("pid{}", std::process::id()))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// What asking for a peer on its alive subject found.
pub(super) enum Asked {
    /// A process answered: who it is ("worker w1 (pid 4242 on host-a)").
    Served(String),
    /// No responders: no process serves the peer.
    Free,
    /// No answer within the time (`ETIMEDOUT`), or the request failed.
    Unknown(crate::error::Error),
}

/// Asks who serves `peer` now (`me`: this process's instance, which its own
/// answer ignores), waiting up to `wait`.
pub(super) async fn ask(
    client: &async_nats::Client,
    names: &super::Names,
    peer: &str,
    me: &str,
    wait: Duration,
) -> Asked {
    let asked = tokio::time::timeout(
        wait,
        client.request(names.alive_subject(peer), me.to_string().into()),
    );
    match asked.await {
        Ok(Ok(m)) => Asked::Served(
            serde_json::from_slice::<Here>(&m.payload)
                .map(|h| format!("worker {} (pid {} on {})", h.worker, h.pid, h.host))
                .unwrap_or_else(|_| "a running process".into()),
        ),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Asked::Free,
        Ok(Err(e)) => Asked::Unknown(err!(libc::EHOSTUNREACH, "{e}")),
        Err(_) => Asked::Unknown(err!(libc::ETIMEDOUT, "no answer within {wait:?}")),
    }
}

/// `EEXIST` when another process answers for `peer`.
pub(super) async fn refuse_if_served(l: &Lattice, peer: &str) -> Result<()> {
    let wait = l.opts.timeout.min(Duration::from_secs(2));
    match ask(&l.client, &l.names, peer, &l.instance, wait).await {
        Asked::Served(who) => Err(err!(
            libc::EEXIST,
            "peer {peer} is already served by {who}: one process serves a peer"
        )),
        Asked::Free => Ok(()),
        // A subscription whose process is gone (its host died, the server has not
        // noticed yet) answers nothing; a server that does not let this worker
        // ask (a configuration from before) neither.
        Asked::Unknown(e) => {
            tracing::debug!(peer, error = %e, "nobody answers for the peer");
            Ok(())
        }
    }
}

/// Answers for `peer` as long as the lattice runs (requests of this very process,
/// which cannot happen after the first answer starts, are not answered).
pub(super) async fn answer(l: Arc<Lattice>, peer: String) {
    let mut stop = l.stop.subscribe();
    let mut sub = match l.client.subscribe(l.names.alive_subject(&peer)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "cannot answer for the peer: a second process could serve it");
            return;
        }
    };
    let here = serde_json::to_vec(&Here {
        worker: l.worker.clone(),
        instance: l.instance.clone(),
        pid: std::process::id(),
        host: host(),
    })
    .unwrap_or_default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = sub.next() => {
                let Some(m) = m else { return };
                if m.payload.as_ref() == l.instance.as_bytes() {
                    continue;
                }
                // Only this worker's processes may ask (the server's permissions);
                // the answer goes only into this worker's inbox.
                if !m.reply.as_deref().is_some_and(|r| l.reply_goes_to(r, &l.worker)) {
                    tracing::warn!(peer = %peer, reply = ?m.reply, "an alive request whose reply is not this worker's inbox: not answered");
                    continue;
                }
                if let Some(reply) = m.reply {
                    let _ = l.client.publish(reply, here.clone().into()).await;
                }
            }
        }
    }
}
