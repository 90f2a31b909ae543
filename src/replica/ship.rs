//! Shipping stores: the replica thread's loop, and for each peer with commits
//! its new transactions uploaded, a new generation (snapshot) when there is no
//! continuous one, checkpoints up to what was uploaded, and old generations
//! removed past the retention.
//!
//! What is known of each peer's replica is kept beside the data folder, in
//! `DATA/replica/NAME.json` (the generation, the log and the position in it,
//! the database file as the last checkpoint left it): a restart goes on where
//! it stopped, and anything it cannot explain (the log restarted without a
//! checkpoint of ours, the file changed by another program) begins a new
//! generation, never a gap.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::lease::{self, Held};
use super::remote::{self, os_err, Names, Object};
use super::wal::{self, Pos};
use super::Shared;
use crate::error::{err, Result};

/// A log grown past this is checkpointed (after its transactions are uploaded).
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// A generation whose transactions outgrow its snapshot (and this) gets a new one.
const COMPACT_BYTES: u64 = 16 << 20;
/// How often the logs of peers shipped before are looked at for changes
/// that no commit announced.
const SWEEP: Duration = Duration::from_secs(10);
/// Peers shipped at once.
const PARALLEL: usize = 32;

/// What is known of a peer's replica (also its file `DATA/replica/NAME.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Known {
    gen: String,
    /// The log's index in this generation (its restarts seen).
    log: u32,
    /// Where the next upload starts; `None`: no log yet.
    pos: Option<Pos>,
    /// The last checkpoint moved every frame into the file: the next write may
    /// restart the log (a new header, `ckpt_seq` one more).
    may_restart: bool,
    snapshot_bytes: u64,
    /// Bytes of transactions uploaded in this generation.
    since_snapshot: u64,
    /// The database file as the last checkpoint (or snapshot) left it.
    db_len: u64,
    db_mtime_ns: i64,
}

struct PeerShip {
    name: String,
    db: PathBuf,
    wal: PathBuf,
    known: Option<Known>,
    failing: bool,
    lagging: bool,
    /// Not looked at since the start: the log's end is checked once.
    fresh: bool,
    /// The log's size and time after the last turn.
    seen: Option<(u64, i64)>,
    /// The replica's lease, held at this epoch and version (`lease.rs`).
    lease: Option<(u64, lease::Version)>,
    /// Another worker took the lease: nothing is uploaded any more.
    fenced: bool,
}

/// What the thread keeps between turns.
struct Turns {
    peers: HashMap<String, PeerShip>,
    last: Instant,
    swept: Instant,
    /// Peers whose last turn failed, tried again at `retry_at` (half a
    /// `sync_ms` later; also in `sync` mode, whose turns follow commits).
    retry: HashSet<String>,
    retry_at: Instant,
}

impl Turns {
    /// The peers of the next turn, and whether it is the last.
    fn next(&mut self, shared: &Shared) -> (Vec<PeerShip>, bool) {
        let (batch, stopping) = take_dirty(shared, self.last);
        self.last = Instant::now();
        let mut batch: HashSet<String> = batch.into_iter().collect();
        if stopping || self.last >= self.retry_at {
            batch.extend(self.retry.drain());
        } else {
            // Not before their pause, commits or not: no request per commit
            // while the object store is away.
            batch.retain(|n| !self.retry.contains(n));
        }
        if stopping {
            // Every log not checkpointed yet is, once shipped.
            batch.extend(self.peers.keys().cloned());
        } else if self.swept.elapsed() >= SWEEP {
            // A write that did not pass through a store's commit (none is
            // known) is shipped all the same, a little later.
            self.swept = self.last;
            let moved = self.peers.values().filter(|p| p.log_moved());
            batch.extend(moved.map(|p| p.name.clone()));
        }
        let work = batch
            .iter()
            .map(|name| {
                self.peers
                    .remove(name)
                    .unwrap_or_else(|| PeerShip::new(&shared.data, name))
            })
            .collect();
        (work, stopping)
    }

    /// A peer's turn done: its status, and kept for the next one.
    fn done(
        &mut self,
        shared: &Shared,
        mut p: PeerShip,
        r: Result<u64>,
        taken_at: i64,
        stopping: bool,
    ) {
        if r.is_err() && !stopping && !p.fenced {
            self.retry.insert(p.name.clone());
            self.retry_at = Instant::now() + (shared.opts.sync / 2).max(Duration::from_millis(100));
        }
        report(shared, &mut p, r, taken_at);
        p.seen = file_stat(&p.wal);
        if p.db.exists() {
            self.peers.insert(p.name.clone(), p);
        }
    }
}

pub(super) fn run(shared: Arc<Shared>, store: Arc<dyn ObjectStore>, prefix: Key) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "replica: no runtime: nothing is replicated");
            return;
        }
    };
    let dir = shared.data.join("replica");
    if let Err(e) = crate::peer::private_dir(&dir) {
        tracing::error!(error = %e, "replica: cannot make {}", dir.display());
    }
    let now = Instant::now();
    let mut t = Turns {
        peers: HashMap::new(),
        last: now,
        swept: now,
        retry: HashSet::new(),
        retry_at: now,
    };
    loop {
        let (work, stopping) = t.next(&shared);
        let taken_at = crate::util::now_ns();
        let done: Vec<(PeerShip, Result<u64>)> = rt.block_on(async {
            futures_util::stream::iter(work.into_iter().map(|mut p| {
                let (store, prefix, sh) = (store.clone(), prefix.clone(), shared.clone());
                async move {
                    let r = p.ship(&sh, &*store, &prefix, stopping).await;
                    (p, r)
                }
            }))
            .buffer_unordered(PARALLEL)
            .collect()
            .await
        });
        for (p, r) in done {
            t.done(&shared, p, r, taken_at, stopping);
        }
        shared.answer_waiting(stopping);
        if stopping {
            return;
        }
    }
}

/// The peers with commits, half of `sync_ms` after the last turn began (so a
/// commit waits at most that and one turn's uploads: within `sync_ms`), at once
/// in `sync` mode or when stopping; and whether the thread stops after them.
fn take_dirty(shared: &Shared, last: Instant) -> (Vec<String>, bool) {
    // Waiting closes are answered within a tenth of a second of their time.
    let wait = if shared.has_waiting() {
        shared.opts.sync.min(Duration::from_millis(100))
    } else {
        shared.opts.sync / 2
    };
    let deadline = last + wait;
    let mut d = shared.dirty.lock().unwrap();
    loop {
        let now = Instant::now();
        let sync = (shared.opts.mode == super::Mode::Sync && !d.0.is_empty())
            || !shared.wanted.lock().unwrap().is_empty();
        if d.1 || sync || now >= deadline {
            let batch: Vec<String> = d.0.drain().collect();
            return (batch, d.1);
        }
        d = shared.wake.wait_timeout(d, deadline - now).unwrap().0;
    }
}

/// The outcome of one peer's turn into its status, logged once per change of
/// state (failing, then working again).
fn report(shared: &Shared, p: &mut PeerShip, r: Result<u64>, taken_at: i64) {
    // The dirty set, then the status: the order a commit takes them in.
    let d = shared.dirty.lock().unwrap();
    let mut st = shared.status.lock().unwrap();
    let s = st.entry(p.name.clone()).or_default();
    match r {
        Ok(bytes) => {
            if p.failing {
                tracing::info!(peer = %p.name, "replica: uploads work again");
                p.failing = false;
            }
            s.last_error = None;
            if bytes > 0 {
                s.last_upload_ns = crate::util::now_ns();
                s.bytes += bytes;
                s.uploads += 1;
            }
            let again = d.0.contains(&p.name);
            s.pending_since_ns = if again { taken_at } else { 0 };
        }
        Err(e) if p.fenced => s.last_error = Some(e.message.clone()),
        Err(e) => {
            if !p.failing {
                tracing::warn!(peer = %p.name, error = %e, "replica: upload failing; local work goes on and the replica catches up when it works again");
                p.failing = true;
            }
            // Tried again after a pause (`run`'s retry set).
            s.last_error = Some(e.message.clone());
        }
    }
    drop(d);
    let lag_ns = if s.pending_since_ns == 0 {
        0
    } else {
        crate::util::now_ns() - s.pending_since_ns
    };
    let limit = (shared.opts.sync * 10).max(Duration::from_secs(10));
    if lag_ns > limit.as_nanos() as i64 && !p.lagging {
        tracing::warn!(peer = %p.name, lag_ms = lag_ns / 1_000_000, "replica: lagging behind the store");
        p.lagging = true;
    } else if lag_ns == 0 && p.lagging {
        tracing::info!(peer = %p.name, "replica: caught up");
        p.lagging = false;
    }
}

fn known_file(data: &Path, name: &str) -> PathBuf {
    data.join("replica").join(format!("{name}.json"))
}

fn file_stat(f: &Path) -> Option<(u64, i64)> {
    db_stat(f).ok()
}

fn db_stat(db: &Path) -> Result<(u64, i64)> {
    let md = std::fs::metadata(db)?;
    Ok((md.len(), md.mtime() * 1_000_000_000 + md.mtime_nsec()))
}

impl PeerShip {
    /// Whether the log changed since the last turn.
    fn log_moved(&self) -> bool {
        file_stat(&self.wal) != self.seen
    }

    fn new(data: &Path, name: &str) -> PeerShip {
        let db = data.join("peers").join(format!("{name}.sqlite"));
        let known = std::fs::read(known_file(data, name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Known>(&b).ok());
        PeerShip {
            name: name.to_string(),
            wal: PathBuf::from(format!("{}-wal", db.display())),
            db,
            known,
            failing: false,
            lagging: false,
            fresh: true,
            seen: None,
            lease: None,
            fenced: false,
        }
    }

    fn save(&self, data: &Path) -> Result<()> {
        let f = known_file(data, &self.name);
        match &self.known {
            None => {
                let _ = std::fs::remove_file(&f);
            }
            Some(k) => {
                let tmp = f.with_extension("json.tmp");
                std::fs::write(&tmp, serde_json::to_vec(k)?)?;
                std::fs::rename(&tmp, &f)?;
            }
        }
        Ok(())
    }

    /// One turn: uploads what is new (a snapshot first when needed), then
    /// checkpoints or compacts when due. Returns the bytes uploaded.
    async fn ship(
        &mut self,
        sh: &Shared,
        store: &dyn ObjectStore,
        prefix: &Key,
        stopping: bool,
    ) -> Result<u64> {
        if self.fenced {
            return Ok(0);
        }
        if !self.db.exists() {
            // Removed (or moved away): what the replica holds stays there.
            self.known = None;
            self.save(&sh.data)?;
            return Ok(0);
        }
        let names = Names::new(prefix, &self.name);
        if sh.take_wanted(&self.name) {
            self.fence(sh, &names).await?;
        }
        // The count before the log is read: every commit counted by now is in it.
        let ticket = sh.counts.lock().unwrap().committed.get(&self.name).copied();
        let mut bytes = 0;
        if self.failing {
            self.verify(store, &names).await?;
        }
        if !self.continues()? {
            bytes += self.snapshot(sh, store, &names).await?;
        } else {
            bytes += self.upload_new(sh, store, &names).await?;
        }
        if let Some(t) = ticket {
            let mut c = sh.counts.lock().unwrap();
            c.uploaded.insert(self.name.clone(), t);
        }
        let k = self.known.as_ref().expect("known after a turn");
        let log_bytes = k.pos.map_or(0, |p| p.offset);
        // (A log a checkpoint emptied waits for its restart at the next write.)
        let due = log_bytes > CHECKPOINT_BYTES || (stopping && log_bytes > wal::HEADER);
        if due && !k.may_restart {
            self.checkpoint(sh, store, &names).await?;
        }
        let k = self.known.as_ref().expect("known after a turn");
        if k.since_snapshot > COMPACT_BYTES.max(k.snapshot_bytes) && !stopping {
            bytes += self.snapshot(sh, store, &names).await?;
            self.checkpoint(sh, store, &names).await?;
        }
        Ok(bytes)
    }

    /// Whether the log on disk continues what the replica holds (else a new
    /// generation begins). A log that restarted after a checkpoint of ours that
    /// emptied it continues, as the next log of the generation.
    fn continues(&mut self) -> Result<bool> {
        let Some(k) = &mut self.known else {
            return Ok(false);
        };
        if db_stat(&self.db)? != (k.db_len, k.db_mtime_ns) {
            return Ok(false);
        }
        let header = wal::read_header(&self.wal)?;
        match (header, k.pos) {
            (None, None) => Ok(true),
            // A log went away: only one without transactions is explained.
            (None, Some(p)) if p.offset == wal::HEADER => {
                k.pos = None;
                Ok(true)
            }
            (None, Some(_)) => Ok(false),
            (Some(h), None) => {
                k.log += 1;
                k.pos = Some(Pos::start(h));
                Ok(true)
            }
            // (At the first look since the start, the log must still end where
            // the replica does: a power loss may have taken its tail.)
            (Some(h), Some(p)) if h.salt == p.header.salt => {
                let fresh = std::mem::replace(&mut self.fresh, false);
                Ok(!fresh || wal::holds(&self.wal, &p)?)
            }
            (Some(h), Some(p)) => {
                if k.may_restart && h.ckpt_seq == p.header.ckpt_seq.wrapping_add(1) {
                    k.log += 1;
                    k.pos = Some(Pos::start(h));
                    k.may_restart = false;
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// After failures: whether the object store still holds the generation's
    /// snapshot (a store that came back empty gets a new generation).
    async fn verify(&mut self, store: &dyn ObjectStore, n: &Names) -> Result<()> {
        let Some(k) = &self.known else {
            return Ok(());
        };
        match store.head(&n.snapshot(&k.gen)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                tracing::warn!(peer = %self.name, generation = %k.gen, "replica: the object store lost this generation: a new one begins");
                self.known = None;
                Ok(())
            }
            Err(e) => Err(os_err("looking for the snapshot", e)),
        }
    }

    /// Uploads the transactions after the known position, as one object.
    async fn upload_new(&mut self, sh: &Shared, store: &dyn ObjectStore, n: &Names) -> Result<u64> {
        let Some(pos) = self.known.as_ref().expect("continues").pos else {
            return Ok(0);
        };
        let (frames, to) = wal::read_after(&self.wal, &pos)?;
        if frames.is_empty() {
            return Ok(0);
        }
        self.fence(sh, n).await?;
        let k = self.known.as_mut().expect("continues");
        let key = n.segment(&k.gen, k.log, pos.offset, to.offset);
        let frames = wal::compact(&frames, pos.header.page_size);
        let len = frames.len() as u64;
        store
            .put(&key, PutPayload::from(frames))
            .await
            .map_err(|e| os_err(&format!("storing {key}"), e))?;
        k.pos = Some(to);
        k.may_restart = false;
        k.since_snapshot += len;
        self.save(&sh.data)?;
        Ok(len)
    }

    /// A new generation: the file as of the end of the log's last transaction
    /// (the file with the log's transactions laid over it), then its owner.
    async fn snapshot(&mut self, sh: &Shared, store: &dyn ObjectStore, n: &Names) -> Result<u64> {
        self.fence(sh, n).await?;
        let header = wal::read_header(&self.wal)?;
        let tmp_dir = sh.data.join("replica");
        let tmp = tmp_dir.join(format!(".{}.snapshot", self.name));
        std::fs::copy(&self.db, &tmp)?;
        let mut pos = None;
        if let Some(h) = header {
            let (frames, to) = wal::read_after(&self.wal, &Pos::start(h))?;
            let f = std::fs::OpenOptions::new().write(true).open(&tmp)?;
            let mut a = wal::Applier::new(f, h.page_size);
            a.apply(&frames)?;
            a.finish()?;
            pos = Some(to);
        }
        let bytes = std::fs::read(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        let (db_len, db_mtime_ns) = db_stat(&self.db)?;
        let gen = crate::util::new_id();
        let len = bytes.len() as u64;
        let key = n.snapshot(&gen);
        store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|e| os_err(&format!("storing {key}"), e))?;
        let (uid, gid) = owner(&sh.data, &self.name);
        store
            .put(&n.owner(&gen), PutPayload::from(format!("{uid}:{gid}")))
            .await
            .map_err(|e| os_err("storing the owner", e))?;
        tracing::info!(peer = %self.name, generation = %gen, bytes = len, "replica: snapshot stored");
        self.known = Some(Known {
            gen,
            log: 0,
            pos,
            may_restart: false,
            snapshot_bytes: len,
            since_snapshot: 0,
            db_len,
            db_mtime_ns,
        });
        self.save(&sh.data)?;
        if let Err(e) = prune(store, n, sh.opts.retention).await {
            tracing::warn!(peer = %self.name, error = %e, "replica: old generations not removed");
        }
        Ok(len)
    }

    /// Moves the log into the database file so that the next write begins it
    /// anew. What the log holds is uploaded first, without a lock; then, for
    /// the checkpoint only, SQLite's write lock is taken (no commit can come
    /// between the log's end read and the checkpoint, which can then empty the
    /// log even under a steady stream of commits; a checkpoint beside a writer
    /// never catches up with it). The few transactions committed between the
    /// upload and the lock are read under it and uploaded right after; if that
    /// upload fails, the next turn begins a new generation (the file has them,
    /// the replica not), never a gap.
    async fn checkpoint(&mut self, sh: &Shared, store: &dyn ObjectStore, n: &Names) -> Result<()> {
        self.upload_new(sh, store, n).await?;
        let Some(pos) = self.known.as_ref().and_then(|k| k.pos) else {
            return Ok(());
        };
        let lock = raw(&self.db)?;
        // Never waited for (a batch of runs holds it up to its wall limit, and
        // this thread ships every peer): busy now, a later turn checkpoints.
        lock.busy_timeout(Duration::ZERO)?;
        if lock.execute_batch("BEGIN IMMEDIATE").is_err() {
            return Ok(());
        }
        let tail = wal::read_after(&self.wal, &pos);
        let done = tail.is_ok().then(|| {
            raw(&self.db).and_then(|c| {
                Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?)
            })
        });
        lock.execute_batch("ROLLBACK")?;
        drop(lock);
        let (frames, to) = tail?;
        let (busy, log, moved) = done.expect("read under the lock")?;
        if !frames.is_empty() {
            let k = self.known.as_ref().expect("continues");
            let key = n.segment(&k.gen, k.log, pos.offset, to.offset);
            let frames = wal::compact(&frames, pos.header.page_size);
            let len = frames.len() as u64;
            let stored = match self.fence(sh, n).await {
                Ok(()) => store
                    .put(&key, PutPayload::from(frames))
                    .await
                    .map(|_| ())
                    .map_err(|e| os_err(&format!("storing {key}"), e)),
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                self.known = None;
                self.save(&sh.data)?;
                return Err(e);
            }
            let k = self.known.as_mut().expect("continues");
            k.pos = Some(to);
            k.since_snapshot += len;
        }
        let (db_len, db_mtime_ns) = db_stat(&self.db)?;
        let k = self.known.as_mut().expect("continues");
        k.may_restart = busy == 0 && log >= 0 && log == moved;
        k.db_len = db_len;
        k.db_mtime_ns = db_mtime_ns;
        self.save(&sh.data)
    }
}

impl PeerShip {
    /// Before an upload: takes the replica's lease, or checks that it is still
    /// ours. Superseded (another worker took the peer over), the peer is
    /// fenced: `ESTALE` from here on, logged once.
    async fn fence(&mut self, sh: &Shared, n: &Names) -> Result<()> {
        let key = n.lease();
        let local = lease::local_epoch(&sh.data, &self.name);
        let held = match &self.lease {
            Some((epoch, v)) => sh.fence.check(&key, *epoch, v).await?,
            None => sh.fence.take(&key, local).await?,
        };
        match held {
            Held::Ours(epoch, v) => {
                if local != Some(epoch) {
                    lease::save_epoch(&sh.data, &self.name, epoch)?;
                    tracing::info!(peer = %self.name, epoch, "replica: lease taken");
                }
                self.lease = Some((epoch, v));
                sh.lease_found(&self.name, Ok(epoch));
                Ok(())
            }
            Held::Superseded(l) => {
                let mine = self.lease.as_ref().map(|x| x.0).or(local).unwrap_or(0);
                let why = format!(
                    "peer {} moved: its replica's lease is held at epoch {} by {} since {} (this worker's epoch {mine}): its uploads are refused and it is not served here any more",
                    self.name, l.epoch, l.holder, l.at
                );
                tracing::error!(peer = %self.name, epoch = mine, "replica: fenced: {why}");
                self.fenced = true;
                sh.lease_found(&self.name, Err(why.clone()));
                Err(err!(libc::ESTALE, "{why}"))
            }
        }
    }
}

/// A connection of the replica's own that never checkpoints on close.
fn raw(db: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err!(libc::EIO, "replica: opening {}: {e}", db.display()))?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// The owner recorded for `name` (uid, gid); the daemon's when there is none.
fn owner(data: &Path, name: &str) -> (u32, u32) {
    match std::fs::metadata(crate::peer::files::owner_file(data, name)) {
        Ok(md) => (md.uid(), md.gid()),
        Err(_) => unsafe { (libc::getuid(), libc::getgid()) },
    }
}

/// Removes generations no restore within `retention` needs: all before the
/// newest one that began before the retention's start.
async fn prune(store: &dyn ObjectStore, n: &Names, retention: Duration) -> Result<()> {
    let objects = remote::list(store, n).await?;
    let cutoff = crate::util::now_ns() - retention.as_nanos() as i64;
    let mut gens: Vec<String> = objects
        .iter()
        .filter_map(|(o, _)| match o {
            Object::Snapshot { gen } => Some(gen.clone()),
            _ => None,
        })
        .collect();
    gens.sort();
    let began = |g: &str| {
        ulid::Ulid::from_string(g)
            .map(|u| u.timestamp_ms() as i64 * 1_000_000)
            .unwrap_or(i64::MAX)
    };
    let Some(keep_from) = gens.iter().rev().find(|g| began(g) <= cutoff) else {
        return Ok(());
    };
    for (o, m) in &objects {
        let gen = match o {
            Object::Snapshot { gen } | Object::Owner { gen } | Object::Segment { gen, .. } => gen,
        };
        if gen < keep_from {
            store
                .delete(&m.location)
                .await
                .map_err(|e| os_err(&format!("removing {}", m.location), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    fn gen_at(ms_ago: u64) -> String {
        let now = crate::util::now_ns() as u64 / 1_000_000;
        ulid::Ulid::from_parts(now - ms_ago, 7).to_string()
    }

    /// Generations no restore within the retention needs go; the newest one
    /// that began before the retention's start stays (a restore at that start
    /// begins from it), and every later one.
    #[test]
    fn retention_keeps_what_a_restore_within_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let n = Names::new(&Key::default(), "alice");
        let day = 86_400_000;
        let gens = [
            gen_at(10 * day),
            gen_at(8 * day),
            gen_at(6 * day),
            gen_at(day),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for g in &gens {
                store
                    .put(&n.snapshot(g), PutPayload::from("s"))
                    .await
                    .unwrap();
                store
                    .put(&n.owner(g), PutPayload::from("0:0"))
                    .await
                    .unwrap();
                store
                    .put(&n.segment(g, 0, 32, 64), PutPayload::from("w"))
                    .await
                    .unwrap();
            }
            prune(&store, &n, Duration::from_secs(7 * 86_400))
                .await
                .unwrap();
            let left: Vec<String> = remote::list(&store, &n)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|(o, _)| match o {
                    Object::Snapshot { gen } => Some(gen),
                    _ => None,
                })
                .collect();
            let mut left = left;
            left.sort();
            assert_eq!(left, gens[1..].to_vec());
            let segs = remote::list(&store, &n).await.unwrap().len();
            assert_eq!(segs, 9, "each kept generation keeps its owner and log");
        });
    }
}
