//! A peer moved here by name: at a worker's start, before its stores open,
//! each peer that its credentials name, that the directory hands to this
//! worker (`lattice release PEER --to WORKER`) and that its data folder does
//! not hold is restored from the replica (`replica::restore`). Its first open
//! then takes the replica's lease over (`replica/lease.rs`), which fences the
//! worker it came from.

use std::path::Path;

use super::{connect_options, creds, identity, Names, Options};
use crate::error::{err, Result};

/// Restores the peers handed to this worker that are not here yet; returns
/// their names. NATS away within the start's wait: nothing is restored (the
/// peers stay unserved until a restart finds the directory), said in the log.
pub fn restore_arrived(
    opts: &Options,
    replica: &crate::replica::Options,
    data: &Path,
    only: Option<&[String]>,
) -> Result<Vec<String>> {
    let names = Names::new(&opts.name)?;
    let (creds, worker) = identity(opts)?;
    let missing: Vec<String> = creds
        .as_ref()
        .and_then(|c| c.peers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| only.is_none_or(|o| o.contains(p)))
        .filter(|p| !data.join("peers").join(format!("{p}.sqlite")).exists())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let handed = match handed_here(opts, &names, &worker, creds.as_ref(), &missing) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, peers = ?missing, "cannot read the lattice directory: peers moved here are not restored from the replica now (restart once NATS answers)");
            return Ok(Vec::new());
        }
    };
    let mut done = Vec::new();
    for peer in handed {
        match crate::replica::lease::held_here_last(replica, data, &peer) {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(peer = %peer, "peer removed here (this folder held its replica's lease last): not restored; `peerfs peer restore` brings it back");
                continue;
            }
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "peer handed here not restored: its replica's lease cannot be read");
                continue;
            }
        }
        let r = crate::replica::restore(&crate::replica::RestoreArgs {
            name: peer.clone(),
            opts: replica.clone(),
            at: None,
            data: data.to_path_buf(),
            force: false,
        });
        match r {
            Ok(r) => {
                tracing::info!(peer = %peer, generation = %r.generation, segments = r.segments, "peer moved here: restored from the replica");
                done.push(peer);
            }
            // Not served here until it is (the other peers are).
            Err(e) => {
                tracing::warn!(peer = %peer, worker = %worker, error = %e, "peer handed to this worker is not in its data folder and its restore from the replica failed: not served here")
            }
        }
    }
    Ok(done)
}

/// Which of `peers` the directory names `worker` for.
fn handed_here(
    opts: &Options,
    names: &Names,
    worker: &str,
    creds: Option<&creds::Creds>,
    peers: &[String],
) -> Result<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let co = connect_options(opts, names, worker, creds);
    let bucket = names.bucket();
    let ask = async {
        let client = co
            .connect(opts.url.clone())
            .await
            .map_err(|e| err!(libc::EHOSTUNREACH, "nats {}: {e}", opts.url))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(opts.timeout);
        let kv = js.get_key_value(&bucket).await.map_err(|e| {
            super::directory::unreachable(&format!("the lattice directory {bucket}"), e)
        })?;
        let mut here = Vec::new();
        for p in peers {
            let v = kv.get(p).await.map_err(|e| {
                super::directory::unreachable(&format!("the directory entry of {p}"), e)
            })?;
            if v.as_deref() == Some(worker.as_bytes()) {
                here.push(p.clone());
            }
        }
        Ok::<_, crate::error::Error>(here)
    };
    rt.block_on(async { tokio::time::timeout(opts.start_wait, ask).await })
        .map_err(|_| {
            err!(
                libc::ETIMEDOUT,
                "NATS {} did not answer within {:?}",
                opts.url,
                opts.start_wait
            )
        })?
}
