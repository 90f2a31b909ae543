//! `peerfs peer restore NAME --from URL [--at TIME]`: a peer's store rebuilt
//! from its replica (the newest snapshot stored by TIME, and the transactions
//! stored after it by TIME), checked with `PRAGMA integrity_check`, and
//! installed in the data folder (an existing peer's file kept aside in
//! `DATA/removed/` when `force` allows it).

use std::path::{Path, PathBuf};

use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::remote::{self, os_err, Names, Object};
use super::wal;
use super::Options;
use crate::error::{err, Result};

/// What to restore, from where, into which data folder.
pub struct RestoreArgs {
    pub name: String,
    /// The replica (`--from`; settings such as the endpoint from the config).
    pub opts: Options,
    /// As of this time (ns since the epoch); `None`: the latest.
    pub at: Option<i64>,
    pub data: PathBuf,
    /// Replace a peer that exists here (its file goes to `DATA/removed/`).
    pub force: bool,
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub path: PathBuf,
    /// The generation and the transactions' objects used.
    pub generation: String,
    pub segments: usize,
    /// Where the peer's earlier file went (with `force`).
    pub replaced: Option<PathBuf>,
}

/// Rebuilds, checks and installs the peer (the caller holds the data folder's lock).
pub fn restore(a: &RestoreArgs) -> Result<Restored> {
    crate::names::check_peer_name(&a.name)?;
    let peers = a.data.join("peers");
    crate::peer::private_dir(&a.data)?;
    crate::peer::private_dir(&peers)?;
    let dest = peers.join(format!("{}.sqlite", a.name));
    if dest.exists() && !a.force {
        return Err(err!(
            libc::EEXIST,
            "peer {} exists in {}: pass --force to keep its file under {}/removed/ and install the restored one",
            a.name,
            a.data.display(),
            a.data.display()
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (store, prefix) = remote::open(&a.opts, false)?;
    let names = Names::new(&prefix, &a.name);
    let tmp = peers.join(format!(".{}.restoring", a.name));
    let _ = std::fs::remove_file(&tmp);
    let r = rt.block_on(rebuild(&*store, &names, a.at, &tmp));
    let (generation, segments, (uid, gid)) = match r {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = check(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let replaced = install(a, &tmp, &dest, uid, gid)?;
    Ok(Restored {
        path: dest,
        generation,
        segments,
        replaced,
    })
}

/// Opens the rebuilt file and runs `PRAGMA integrity_check`.
fn check(path: &Path) -> Result<()> {
    let c = rusqlite::Connection::open(path)?;
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    // The file leaves no log behind: it is installed alone.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(c);
    if ok != "ok" {
        return Err(err!(
            libc::EIO,
            "the restored store fails its integrity check ({ok}): nothing was installed"
        ));
    }
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", path.display()));
    }
    Ok(())
}

/// Moves an existing peer aside (to `DATA/removed/`), then the rebuilt file in.
fn install(
    a: &RestoreArgs,
    tmp: &Path,
    dest: &Path,
    uid: u32,
    gid: u32,
) -> Result<Option<PathBuf>> {
    let mut replaced = None;
    if dest.exists() {
        let r = crate::peer::Registry::new(&a.data, None)?;
        replaced = Some(r.remove(&a.name)?);
    }
    // A log or index left without its store would be laid over the restored
    // file by SQLite: kept aside, never used.
    for s in ["-wal", "-shm"] {
        let left = PathBuf::from(format!("{}{s}", dest.display()));
        if left.exists() {
            let dir = a.data.join("removed");
            crate::peer::private_dir(&dir)?;
            let stamp = crate::util::rfc3339(crate::util::now_ns()).replace(':', "-");
            std::fs::rename(&left, dir.join(format!("{}.{stamp}.sqlite{s}", a.name)))?;
        }
    }
    crate::util::make_private(tmp)?;
    crate::peer::files::write_owner(&a.data, &a.name, uid, gid)?;
    std::fs::rename(tmp, dest)?;
    crate::util::sync_dir(&a.data.join("peers"));
    // A daemon starting on this folder ships the restored file as a new generation.
    let _ = std::fs::remove_file(a.data.join("replica").join(format!("{}.json", a.name)));
    // It came from the replica: a daemon here takes the lease over (`lease.rs`).
    let _ = std::fs::remove_file(super::lease::record(&a.data, &a.name));
    Ok(replaced)
}

fn stored_ns(m: &ObjectMeta) -> i64 {
    m.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Writes the peer as of `at` into `tmp`: its generation, the transactions'
/// objects used, and its owner.
async fn rebuild(
    store: &dyn ObjectStore,
    n: &Names,
    at: Option<i64>,
    tmp: &Path,
) -> Result<(String, usize, (u32, u32))> {
    let objects = remote::list(store, n).await?;
    if objects.is_empty() {
        return Err(err!(
            libc::ENOENT,
            "the replica holds no peer at {}",
            n.peer
        ));
    }
    let at = at.unwrap_or(i64::MAX);
    let gen = objects
        .iter()
        .filter_map(|(o, m)| match o {
            Object::Snapshot { gen } if stored_ns(m) <= at => Some(gen.clone()),
            _ => None,
        })
        .max()
        .ok_or_else(|| {
            err!(
                libc::ENOENT,
                "the replica of {} holds no snapshot stored by {}: its oldest is later (or was removed past the retention)",
                n.peer,
                crate::util::rfc3339(at)
            )
        })?;
    let snap = store
        .get(&n.snapshot(&gen))
        .await
        .map_err(|e| os_err("reading the snapshot", e))?
        .bytes()
        .await
        .map_err(|e| os_err("reading the snapshot", e))?;
    std::fs::write(tmp, &snap)?;
    let mut segs: Vec<(u32, u64, u64, &ObjectMeta)> = objects
        .iter()
        .filter_map(|(o, m)| match o {
            Object::Segment {
                gen: g,
                log,
                start,
                end,
            } if *g == gen && stored_ns(m) <= at => Some((*log, *start, *end, m)),
            _ => None,
        })
        .collect();
    segs.sort_by_key(|s| (s.0, s.1, s.2));
    let used = apply_segments(store, n, &segs, tmp).await?;
    let owner = read_owner(store, n, &gen).await;
    Ok((gen, used, owner))
}

/// Lays the segments (sorted) over the snapshot in `tmp`: how many were used.
async fn apply_segments(
    store: &dyn ObjectStore,
    n: &Names,
    segs: &[(u32, u64, u64, &ObjectMeta)],
    tmp: &Path,
) -> Result<usize> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp)?;
    let page = wal::page_size_of(&mut file)?;
    let mut a = wal::Applier::new(file, page);
    // Where the transactions applied end: (log, offset). A segment stored
    // twice (a restart before its position was saved) may cover more than one
    // already applied: laid over a state within its range, it still gives the
    // state at its end.
    let mut upto: Option<(u32, u64)> = None;
    let mut used = 0;
    for (log, start, end, m) in segs {
        match upto {
            Some((l, e)) if l == *log && *end <= e => continue,
            Some((l, e)) if l == *log && *start > e => {
                return Err(err!(
                    libc::EIO,
                    "the replica of {} misses transactions before {}: restore --at an earlier time",
                    n.peer,
                    m.location
                ))
            }
            _ => {}
        }
        let bytes = store
            .get(&m.location)
            .await
            .map_err(|e| os_err(&format!("reading {}", m.location), e))?
            .bytes()
            .await
            .map_err(|e| os_err(&format!("reading {}", m.location), e))?;
        a.apply(&bytes)?;
        upto = Some((*log, *end));
        used += 1;
    }
    a.finish()?;
    Ok(used)
}

/// The owner the generation recorded (`uid:gid`); the caller's without one.
async fn read_owner(store: &dyn ObjectStore, n: &Names, gen: &str) -> (u32, u32) {
    let owner = match store.get(&n.owner(gen)).await {
        Ok(g) => g.bytes().await.ok(),
        Err(_) => None,
    };
    owner
        .and_then(|b| {
            let t = String::from_utf8_lossy(&b).to_string();
            let (u, g) = t.trim().split_once(':')?;
            Some((u.parse().ok()?, g.parse().ok()?))
        })
        .unwrap_or_else(|| unsafe { (libc::getuid(), libc::getgid()) })
}

/// Downloads every object of `peer`'s generation `gen` (its snapshot and log
/// segments) with the client a restore uses, keeping nothing: the bytes read.
/// What a restore is measured against (`scripts-ci/bench replica`).
pub fn download_generation(opts: &Options, peer: &str, gen: &str) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (store, prefix) = remote::open(opts, false)?;
    let names = Names::new(&prefix, peer);
    rt.block_on(async {
        let mut bytes = 0;
        for (o, m) in remote::list(&*store, &names).await? {
            let mine = match &o {
                Object::Snapshot { gen: g } | Object::Segment { gen: g, .. } => g == gen,
                Object::Owner { .. } => false,
            };
            if mine {
                let b = store
                    .get(&m.location)
                    .await
                    .map_err(|e| os_err("reading", e))?
                    .bytes()
                    .await
                    .map_err(|e| os_err("reading", e))?;
                bytes += b.len() as u64;
            }
        }
        Ok(bytes)
    })
}
