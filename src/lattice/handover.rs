//! `peerfs lattice release PEER --to WORKER`: the directory's part of moving a peer.
//!
//! Run with the old worker's credentials after it stopped serving the peer, it
//! rewrites the peer's entry from the old worker to the new one, and only if the
//! entry still names the old worker (a compare-and-set on the entry's revision, so a
//! claim racing with it is never overwritten). The new worker's claim then finds
//! its own name and succeeds; the old worker, started again with the peer, is
//! refused naming the new one.
//!
//! The entry is handed over rather than deleted: while no entry exists, a sender's
//! daemon finds no such peer anywhere in the lattice and its `send()` ends as an
//! error result. With the entry naming the new worker, messages keep going to the
//! stream, where they wait under the peer's consumer (which is the peer's, not a
//! worker's: nothing in JetStream changes) until the new worker takes them.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::kv;

use super::{check_token, creds::Creds, Names};
use crate::error::err;
use crate::error::{Error, Result};
use crate::names::check_peer_name;

/// What `lattice release` is asked to do.
#[derive(Debug, Clone)]
pub struct Release {
    /// `nats://host:port` (empty: the credentials file's).
    pub url: String,
    /// The old worker's credentials file (its user names the worker).
    pub creds: Option<PathBuf>,
    /// Empty: the credentials file's.
    pub lattice: String,
    pub peer: String,
    /// The worker that serves the peer from now on.
    pub to: String,
    /// How long each request to NATS may take.
    pub timeout: Duration,
}

impl Release {
    /// Hands the peer over; returns what was done, for the operator.
    pub fn run(&self) -> Result<String> {
        check_peer_name(&self.peer)?;
        check_token("worker", &self.to)?;
        super::refuse_secret_in_url(&self.url)?;
        let Some(creds) = self.creds.as_deref().map(Creds::read).transpose()? else {
            return Err(err!(
                libc::EINVAL,
                "no worker: pass the old worker's --nats-creds"
            ));
        };
        let lattice = match (self.lattice.as_str(), creds.lattice.as_deref()) {
            ("", Some(l)) => l.to_string(),
            ("", None) => super::Options::new("").name,
            (l, _) => l.to_string(),
        };
        let names = Names::new(&lattice)?;
        let worker = creds.user.clone();
        if worker == self.to {
            return Err(err!(
                libc::EINVAL,
                "--to {} names the worker whose credentials these are: pass the new worker",
                self.to
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.hand_over(&names, &worker, creds))
    }

    async fn hand_over(&self, names: &Names, worker: &str, creds: Creds) -> Result<String> {
        let (peer, to, timeout) = (self.peer.as_str(), self.to.as_str(), self.timeout);
        let url = match (self.url.as_str(), creds.url.as_deref()) {
            ("", Some(u)) => u.to_string(),
            (u, _) => u.to_string(),
        };
        let client = super::provision::connect(
            &url,
            Some(&creds),
            names,
            format!("peerfs lattice release ({worker})"),
            timeout,
        )
        .await?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        let bucket = names.bucket();
        let dir = js.get_key_value(&bucket).await.map_err(|e| {
            err!(
                libc::ENOENT,
                "the directory of the lattice {} (KV bucket {bucket}): {e} (has a worker of this lattice ever joined it?)",
                names.lattice
            )
        })?;
        let entry = dir
            .entry(peer)
            .await
            .map_err(|e| super::directory::unreachable("the lattice directory", e))?
            .filter(|e| e.operation == kv::Operation::Put);
        let Some(entry) = entry else {
            return Err(err!(
                libc::ENOENT,
                "peer {peer} has no entry in the directory of the lattice {}: nothing to hand over (its new worker claims it when it starts)",
                names.lattice
            ));
        };
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        if holder == to {
            return Ok(format!(
                "peer {peer} is already handed over to worker {to} (nothing changed)"
            ));
        }
        if holder != worker {
            return Err(err!(
                libc::EEXIST,
                "peer {peer} is served by worker {holder}, not by {worker} (whose credentials these are): release it with {holder}'s credentials"
            ));
        }
        still_served(&client, names, peer, worker, timeout).await?;
        match dir
            .update(peer, to.to_string().into(), entry.revision)
            .await
        {
            Ok(_) => {
                tracing::info!(peer, from = worker, to, "peer handed over in the lattice directory");
                Ok(format!(
                    "peer {peer} handed over from worker {worker} to worker {to} in the directory of the lattice {}",
                    names.lattice
                ))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(err!(
                libc::EAGAIN,
                "the directory entry of {peer} changed while it was handed over: run the release again"
            )),
            Err(e) => Err(refused_update(peer, worker, &names.bucket(), e)),
        }
    }
}

/// `EBUSY` when a process still serves `peer`: it answers on the peer's alive
/// subject (see `alive.rs`), which the peer's worker may ask on.
async fn still_served(
    client: &async_nats::Client,
    names: &Names,
    peer: &str,
    worker: &str,
    timeout: Duration,
) -> Result<()> {
    match super::alive::ask(client, names, peer, "release", timeout).await {
        super::alive::Asked::Free => Ok(()),
        super::alive::Asked::Served(who) => Err(err!(
            libc::EBUSY,
            "peer {peer} is still served by {who}: stop serving it there first (stop the daemon, or restart it with a --peer list without {peer}), then release it"
        )),
        super::alive::Asked::Unknown(e) if e.errno == libc::ETIMEDOUT => Err(err!(
            libc::ETIMEDOUT,
            "cannot tell whether peer {peer} is still served: no answer within {timeout:?} (may worker {worker} still ask as {peer}? release before `lattice init` takes the peer from it)"
        )),
        super::alive::Asked::Unknown(e) => Err(err!(
            libc::EHOSTUNREACH,
            "cannot tell whether peer {peer} is still served: {}",
            e.message
        )),
    }
}

fn refused_update(peer: &str, worker: &str, bucket: &str, e: kv::UpdateError) -> Error {
    if e.kind() == kv::UpdateErrorKind::TimedOut {
        return err!(
            libc::EACCES,
            "the server did not acknowledge the new directory entry of {peer}: may worker {worker} still publish on $KV.{bucket}.{peer}? (release before `lattice init` takes the peer from it)"
        );
    }
    err!(
        libc::EHOSTUNREACH,
        "cannot hand over peer {peer} in the directory: {e}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(peer: &str, to: &str, url: &str, creds: Option<PathBuf>) -> Release {
        Release {
            url: url.into(),
            creds,
            lattice: "lab".into(),
            peer: peer.into(),
            to: to.into(),
            timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn refused_before_asking_nats() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w1.creds");
        std::fs::write(&f, "user = \"w1\"\npassword = \"s\"\n").unwrap();
        let creds = || Some(f.clone());
        // Nothing listens on port 9: each refusal must come before a connection.
        let e = release("alice", "w1", "nats://127.0.0.1:9", creds())
            .run()
            .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{e}");
        assert!(e.message.contains("pass the new worker"), "{e}");
        let e = release("alice", "w 3", "nats://127.0.0.1:9", creds())
            .run()
            .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{e}");
        let e = release("a b", "w3", "nats://127.0.0.1:9", creds())
            .run()
            .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{e}");
        let e = release("alice", "w3", "nats://127.0.0.1:9", None)
            .run()
            .unwrap_err();
        assert!(e.message.contains("old worker's --nats-creds"), "{e}");
        let e = release("alice", "w3", "nats://w1:s@127.0.0.1:9", creds())
            .run()
            .unwrap_err();
        assert!(e.message.contains("process list"), "{e}");
        let e = release("alice", "w3", "nats://127.0.0.1:9", creds())
            .run()
            .unwrap_err();
        assert_eq!(e.errno, libc::EHOSTUNREACH, "{e}");
    }
}
