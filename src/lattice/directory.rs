//! The directory: which worker serves which peer, in a JetStream KV bucket (key =
//! peer, value = worker). A worker claims a peer with create-if-absent, so that two
//! workers never serve one peer; every worker keeps a copy current by a watch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::Lattice;
use crate::error::err;
use crate::error::{Error, Result};

/// A NATS failure as an errno: the way is down (`EHOSTUNREACH`) or slow (`ETIMEDOUT`).
pub(super) fn unreachable(what: &str, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    let errno = if text.contains("timed out") || text.contains("timeout") {
        libc::ETIMEDOUT
    } else {
        libc::EHOSTUNREACH
    };
    err!(errno, "{what}: {text}")
}

/// The directory's bucket, made by `peerfs lattice provision` (a worker may not
/// make or change it), checked to be as provisioning makes it.
pub(super) async fn check_bucket(l: &Lattice) -> Result<kv::Store> {
    let bucket = l.names.bucket();
    let name = l.names.kv_stream();
    let mut s = match l.js.get_stream(&name).await {
        Ok(s) => s,
        Err(e) if super::provision::not_found(&e) => {
            return Err(err!(
                libc::EACCES,
                "the lattice directory {bucket} does not exist: make it with `peerfs lattice provision` (the operator's credentials; docs/lattice.md)"
            ))
        }
        Err(e) => return Err(unreachable(&format!("the lattice directory {bucket}"), e)),
    };
    let info = s
        .info()
        .await
        .map_err(|e| unreachable(&format!("the lattice directory {bucket}"), e))?;
    super::provision::check_bucket(&l.names, &info.config)?;
    l.js.get_key_value(&bucket)
        .await
        .map_err(|e| unreachable(&format!("the lattice directory {bucket}"), e))
}

/// The refusal when the directory names `worker` (another) for `peer`, or holds
/// something that is no worker's name.
pub(super) fn served_by(peer: &str, worker: &str) -> Error {
    if super::check_token("worker", worker).is_err() {
        let shown: String = worker.chars().take(60).collect();
        return err!(
            libc::EACCES,
            "the directory entry of peer {peer} is damaged (it holds {shown:?}, no worker's name): repair it with `peerfs lattice provision` (the operator's credentials)"
        );
    }
    err!(
        libc::EEXIST,
        "peer {peer} is already served by worker {worker} in the lattice: stop it there (or move it, see docs/lattice.md) first"
    )
}

/// `EEXIST` (naming it) when the directory names another worker for `peer`.
pub(super) async fn refuse_if_elsewhere(kv: &kv::Store, peer: &str, worker: &str) -> Result<()> {
    match kv.get(peer).await {
        Ok(Some(v)) if v.as_ref() != worker.as_bytes() => {
            Err(served_by(peer, &String::from_utf8_lossy(&v)))
        }
        _ => Ok(()),
    }
}

/// Claims `peer` for `worker`: created if absent, accepted if it is already
/// `worker`'s (a restart), `EEXIST` naming the worker that serves it otherwise.
pub(super) async fn register(
    kv: &kv::Store,
    peer: &str,
    worker: &str,
    timeout: Duration,
    connected: impl Fn() -> bool,
) -> Result<()> {
    // Served already? (A worker may not even try to publish another's entry.)
    if let Ok(Some(v)) = kv.get(peer).await {
        let serving = String::from_utf8_lossy(&v);
        if serving == worker {
            return Ok(());
        }
        return Err(served_by(peer, &serving));
    }
    let created =
        tokio::time::timeout(timeout * 3, kv.create(peer, worker.to_string().into())).await;
    match created {
        Ok(Ok(_)) => {
            tracing::info!(peer, worker, "peer registered in the lattice directory");
            Ok(())
        }
        Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let now = kv
                .get(peer)
                .await
                .map_err(|e| unreachable("the lattice directory", e))?;
            let serving = now
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if serving == worker {
                Ok(())
            } else {
                Err(served_by(peer, &serving))
            }
        }
        // A publish the server refuses (permissions) is never acknowledged: on a
        // live connection, no answer means no right.
        Ok(Err(_)) | Err(_) if connected() => Err(err!(
            libc::EACCES,
            "cannot register peer {peer} in the lattice directory: the server does not acknowledge it (is {peer} among this worker's peers in the server's configuration?)"
        )),
        Ok(Err(e)) => Err(unreachable(&format!("cannot register peer {peer}"), e)),
        Err(_) => Err(err!(
            libc::ETIMEDOUT,
            "cannot register peer {peer}: no answer from NATS within {timeout:?}"
        )),
    }
}

/// Reads the whole directory once.
pub(super) async fn load(l: &Lattice) -> Result<()> {
    let kv = l.kv.get().expect("bucket before load");
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| unreachable("the lattice directory", e))?;
    let mut all = std::collections::HashMap::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| unreachable("the lattice directory", e))?;
        if let Some(v) = kv
            .get(&k)
            .await
            .map_err(|e| unreachable("the lattice directory", e))?
        {
            all.insert(k, String::from_utf8_lossy(&v).into_owned());
        }
    }
    let n = all.len();
    *l.dir.write().unwrap() = all;
    l.dir_loaded.store(true, Ordering::Release);
    tracing::info!(peers = n, "lattice directory read");
    Ok(())
}

/// Keeps the copy of the directory current (restarting the watch when it ends,
/// e.g. after NATS restarted).
pub(super) async fn watch(l: Arc<Lattice>) {
    let mut stop = l.stop.subscribe();
    loop {
        let kv = l.kv.get().expect("bucket before watch");
        match kv.watch_all().await {
            Ok(mut w) => loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    e = w.next() => match e {
                        Some(Ok(e)) => {
                            let mut d = l.dir.write().unwrap();
                            match e.operation {
                                kv::Operation::Put => {
                                    d.insert(e.key, String::from_utf8_lossy(&e.value).into_owned());
                                }
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    d.remove(&e.key);
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "directory watch");
                            break;
                        }
                        None => break,
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "directory watch"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Whatever changed while the watch was down.
        let _ = load(&l).await;
    }
}
