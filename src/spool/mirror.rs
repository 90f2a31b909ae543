//! The spool's mirror thread: writes what the executor committed into the tree.
//!
//! - Results: `outbox/<stem>.json` (own runs), `peers/<t>/outbox/<stem>.json`
//!   (scripts dropped at `t`, results of sends to `t`), each written under a
//!   temporary name in the same folder, fsynced, renamed; `DIR/.peerfs/mirrored`
//!   records up to when results were written, and a restart rewrites those that
//!   finished since (a minute before it) and are missing or older on disk.
//! - State: `state/` of each peer and `peers/<o>/state/` (the keys of `o` whose
//!   policy lets the viewer read them), each file replaced atomically, mode 0444.
//!   A change made to a mirror from outside (a write, a new file, an `rm`) is
//!   undone and logged in the viewer's `log`.
//! - Log: the store's audit log, appended to `log`.
//!
//! The folders and files it writes are named by the layout's entries
//! (`crate::layout`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::exec::Op;
use crate::exec::{slot_caller, Change, Core, Listener};
use crate::layout::{LOG, OUTBOX, PEERS, STATE};
use crate::util::now_ns;

use super::files::{self, as_user, content_hash, TMP_PREFIX};
use super::{user_of, SpoolStats};

/// Results finished this long before the last `mirrored` mark are on disk already:
/// a restart rewrites only later ones (so it does not bring back results that were
/// removed with `rm` long ago). Commits follow a run's end well within it.
const MIRROR_SLACK_NS: i64 = 60_000_000_000;

/// A result to write: who sees it, and its bytes.
type Pending = (String, Arc<Vec<u8>>);

/// Threads that write and fsync one batch of results.
const SYNC_THREADS: usize = 4;

/// The answer to a row file's write (`taken`: the hash of what was taken) or
/// removal (`taken` None), sent back to the mirror (`spool/tables.rs`).
pub(super) struct RowDone {
    pub(super) owner: String,
    pub(super) path: std::path::PathBuf,
    pub(super) rel: String,
    pub(super) taken: Option<u128>,
    pub(super) result: crate::error::Result<()>,
}

pub(super) enum Note {
    Change(String, Change),
    /// A peer's folder was laid out: fill in its results, state and log.
    Layout(String),
    /// Something happened in `viewer`'s state mirror of `owner` (every one of
    /// `viewer`'s mirrors when `None`): undo what was not ours.
    Check {
        viewer: String,
        owner: Option<String>,
    },
    /// Something happened in `viewer`'s `tables/` mirror of `owner` (every one
    /// of `viewer`'s when `None`): take the owner's row files, undo the rest.
    Tables {
        viewer: String,
        owner: Option<String>,
    },
    /// A row file's write or removal was applied or refused.
    RowDone(RowDone),
    Stop,
}

/// The executor's listener: hands changes to the mirror thread.
pub(super) struct Relay(pub(super) Mutex<Sender<Note>>);

impl Listener for Relay {
    fn changed(&self, peer: &str, change: Change) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send(Note::Change(peer.to_string(), change));
    }
}

pub(super) struct Mirror {
    pub(super) core: Core,
    pub(super) root: PathBuf,
    stats: Arc<SpoolStats>,
    /// Back to this thread (answers of row files' writes).
    pub(super) tx: Sender<Note>,
    /// Hash of what this process last wrote to each state or tables mirror file.
    pub(super) written: HashMap<PathBuf, u128>,
    /// The owners' row files being applied: path -> hash of what was taken
    /// (`None`: a removal).
    pub(super) rows_pending: HashMap<PathBuf, Option<u128>>,
    /// The `tables/` mirrors made whole once by this process: after that, a row
    /// file that differs from what was written is the owner's.
    pub(super) tables_seen: std::collections::HashSet<PathBuf>,
    /// Results finished after this are rewritten by a layout (see MIRROR_SLACK_NS).
    since: i64,
    /// What the mirror of a remote peer's key was written from: (size, mtime), so
    /// that a poll fetches only the keys that changed (see [`REMOTE_POLL`]).
    remote_seen: HashMap<PathBuf, (u64, i64)>,
    /// This one keeps the mirrors of remote peers' state (a thread of its own, see
    /// [`Mirror::poll`]), not the others.
    pub(super) remote: bool,
    /// Owners with a row file found held open by a writer: looked at again when
    /// the channel is quiet (a writer's close in another process that still held
    /// the file, after its rename into place, brings no event for its name).
    pub(super) rows_busy: BTreeSet<String>,
}

/// How often the mirrors of remote peers' state (`peers/<remote>/state/`) are
/// brought up to date: another daemon's commits tell this one nothing, so they
/// are polled, one listing request per folder of readable keys.
const REMOTE_POLL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Batch {
    /// Result files to write: path -> (viewer, bytes).
    results: BTreeMap<PathBuf, Pending>,
    state: BTreeSet<String>,
    logs: BTreeSet<String>,
    layouts: BTreeSet<String>,
    checks: BTreeSet<(String, Option<String>)>,
    /// Owners whose rows (or policy, or schema) changed.
    tables: BTreeSet<String>,
    tables_checks: BTreeSet<(String, Option<String>)>,
    rows_done: Vec<RowDone>,
    stop: bool,
}

impl Mirror {
    pub(super) fn new(
        core: Core,
        root: PathBuf,
        stats: Arc<SpoolStats>,
        tx: Sender<Note>,
    ) -> Mirror {
        let since = std::fs::read_to_string(root.join(".peerfs/mirrored"))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .map(|t| t - MIRROR_SLACK_NS)
            .unwrap_or(i64::MIN);
        Mirror {
            core,
            root,
            stats,
            tx,
            written: HashMap::new(),
            rows_pending: HashMap::new(),
            tables_seen: Default::default(),
            since,
            remote_seen: HashMap::new(),
            remote: false,
            rows_busy: BTreeSet::new(),
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Note>) {
        loop {
            let wait = if self.rows_busy.is_empty() { 500 } else { 50 };
            let first = match rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(n) => n,
                Err(RecvTimeoutError::Timeout) => {
                    for owner in std::mem::take(&mut self.rows_busy) {
                        self.sync_tables_view(&owner, &owner, true);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Everything noticed before this moment is in the channel now.
            let mark = now_ns();
            let mut b = Batch::default();
            self.add(&mut b, first);
            while let Ok(n) = rx.try_recv() {
                self.add(&mut b, n);
            }
            let stop = b.stop;
            self.apply(b, mark);
            if stop {
                return;
            }
        }
    }

    fn add(&self, b: &mut Batch, n: Note) {
        match n {
            Note::Stop => b.stop = true,
            Note::Layout(p) => {
                b.layouts.insert(p);
            }
            Note::Check { viewer, owner } => {
                b.checks.insert((viewer, owner));
            }
            Note::Tables { viewer, owner } => {
                b.tables_checks.insert((viewer, owner));
            }
            Note::RowDone(d) => b.rows_done.push(d),
            Note::Change(peer, c) => {
                match c {
                    Change::Outbox {
                        target,
                        name: Some(name),
                    } => self.result(b, &peer, &target, &name),
                    Change::State => {
                        b.state.insert(peer.clone());
                    }
                    Change::Meta(_) => {
                        b.state.insert(peer.clone());
                        b.tables.insert(peer.clone());
                    }
                    Change::Rows => {
                        b.tables.insert(peer.clone());
                    }
                    _ => {}
                }
                b.logs.insert(peer);
            }
        }
    }

    /// Where `peer`'s outbox row `(target, name)` shows, and who sees it.
    fn result_place(&self, peer: &str, target: &str) -> (String, String, PathBuf) {
        let (viewer, view) = match slot_caller(target) {
            Some(c) => (c.to_string(), peer.to_string()),
            None => (peer.to_string(), target.to_string()),
        };
        let dir = self.view_dir(&viewer, &view, OUTBOX.name);
        (viewer, view, dir)
    }

    /// `viewer`'s `sub` folder (outbox, state) of `view`: its own, or under `peers/`.
    pub(super) fn view_dir(&self, viewer: &str, view: &str, sub: &str) -> PathBuf {
        if viewer == view {
            self.root.join(viewer).join(sub)
        } else {
            self.root.join(viewer).join(PEERS.name).join(view).join(sub)
        }
    }

    fn result(&self, b: &mut Batch, peer: &str, target: &str, name: &str) {
        let (viewer, view, dir) = self.result_place(peer, target);
        match self.core.outbox_get(&viewer, &view, name) {
            Ok(Some(e)) => {
                if let Some(r) = e.result {
                    b.results
                        .insert(dir.join(name), (viewer, Arc::new(r.into_bytes())));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(peer, name, error = %e, "cannot read a result to mirror"),
        }
    }

    fn apply(&mut self, mut b: Batch, mark: i64) {
        for p in std::mem::take(&mut b.layouts) {
            self.layout_results(&mut b, &p);
            b.state.insert(p.clone());
            b.tables.insert(p.clone());
            b.logs.insert(p);
        }
        if !b.results.is_empty() {
            self.write_results(&b.results);
            let _ = files::replace(
                &self.root.join(".peerfs/mirrored"),
                mark.to_string().as_bytes(),
                0o644,
                unsafe { (libc::getuid(), libc::getgid()) },
                // A lost mark is an older one: a restart rewrites a little more.
                false,
            );
        }
        for p in &b.state {
            self.sync_state(p, false);
        }
        for (viewer, owner) in &b.checks {
            match owner {
                Some(o) => self.sync_view(viewer, o, true),
                None => {
                    for o in self.owners_seen_by(viewer) {
                        self.sync_view(viewer, &o, true);
                    }
                }
            }
        }
        for d in std::mem::take(&mut b.rows_done) {
            if let Some(owner) = self.row_done(d) {
                b.tables.insert(owner);
            }
        }
        for p in &b.tables {
            self.sync_tables(p);
        }
        for (viewer, owner) in &b.tables_checks {
            match owner {
                Some(o) => self.sync_tables_view(viewer, o, true),
                None => {
                    for o in self.owners_seen_by(viewer) {
                        self.sync_tables_view(viewer, &o, true);
                    }
                }
            }
        }
        for p in &b.logs {
            if let Err(e) = self.sync_log(p) {
                tracing::warn!(peer = %p, error = %e, "cannot mirror the log");
            }
        }
    }

    /// Results of `peer` (own and views) finished since the last mark whose file
    /// is missing or shows another run: a crash came between commit and write.
    fn layout_results(&self, b: &mut Batch, peer: &str) {
        let mut views = vec![peer.to_string()];
        views.extend(self.others(peer));
        // Results of drops and sends to peers of other daemons of the lattice.
        views.extend(self.core.remote_peers());
        for view in views {
            let Ok(list) = self.core.outbox_list(peer, &view) else {
                continue;
            };
            let dir = self.view_dir(peer, &view, OUTBOX.name);
            for e in list {
                let (Some(r), Some(f)) = (e.result, e.finished_at) else {
                    continue;
                };
                if f < self.since {
                    continue;
                }
                let path = dir.join(&e.name);
                let shown = as_user(user_of(&self.core, peer), || std::fs::read(&path))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["id"].as_str().map(str::to_string));
                if shown.as_deref() != Some(e.run_id.as_str()) {
                    b.results
                        .insert(path, (peer.to_string(), Arc::new(r.into_bytes())));
                }
            }
        }
    }

    pub(super) fn others(&self, peer: &str) -> Vec<String> {
        self.core
            .registry()
            .list()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n != peer)
            .collect()
    }

    /// Results under temporary names beside them, fsynced.
    fn write_tmps<'a>(
        &self,
        chunk: &[(&'a PathBuf, &Pending)],
    ) -> Vec<(PathBuf, &'a PathBuf, (u32, u32))> {
        let mut tmps = Vec::with_capacity(chunk.len());
        for &(path, (viewer, bytes)) in chunk {
            let user = user_of(&self.core, viewer);
            let written = as_user(user, || {
                if let Some(dir) = path.parent() {
                    if !dir.is_dir() {
                        let _ = files::make_dir(dir, 0o755, user);
                    }
                }
                files::write_tmp(path, bytes, 0o644, user, true)
            });
            match written {
                Ok(t) => tmps.push((t, path, user)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write a result")
                }
            }
        }
        tmps
    }

    /// Writes every result fsynced under a temporary name, then renames them all.
    fn write_results(&self, results: &BTreeMap<PathBuf, Pending>) {
        let items: Vec<_> = results.iter().collect();
        // fsyncs wait on the disk, not the CPU: a few at once (each thread its share).
        let threads = items.len().div_ceil(16).clamp(1, SYNC_THREADS);
        let per = items.len().div_ceil(threads);
        let tmps: Vec<(PathBuf, &PathBuf, (u32, u32))> = std::thread::scope(|sc| {
            let hs: Vec<_> = items
                .chunks(per)
                .map(|chunk| sc.spawn(move || self.write_tmps(chunk)))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        // The folders are not fsynced: a rename lost in a crash is redone at the
        // restart (see `layout_results`: results since the last mark).
        for (tmp, path, user) in tmps {
            match as_user(user, || std::fs::rename(&tmp, path)) {
                Ok(()) => {
                    self.stats.results_written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = as_user(user, || std::fs::remove_file(&tmp));
                    tracing::warn!(file = %path.display(), error = %e, "cannot publish a result");
                }
            }
        }
    }

    /// The peers whose state `viewer` has a mirror of: itself and every other.
    pub(super) fn owners_seen_by(&self, viewer: &str) -> Vec<String> {
        let mut v = vec![viewer.to_string()];
        v.extend(self.others(viewer));
        v
    }

    /// Every mirror of `owner`'s state: its own and every other peer's view.
    fn sync_state(&mut self, owner: &str, check: bool) {
        self.sync_view(owner, owner, check);
        for viewer in self.others(owner) {
            self.sync_view(&viewer, owner, check);
        }
    }

    /// Makes `viewer`'s mirror of `owner`'s state match the store. `check`: the
    /// mirror was touched from outside; what differs from what this process wrote
    /// is undone and logged.
    fn sync_view(&mut self, viewer: &str, owner: &str, check: bool) {
        if (viewer != owner && self.core.serves_elsewhere(owner)) != self.remote {
            return;
        }
        let dir = self.view_dir(viewer, owner, STATE.name);
        if !dir.is_dir() {
            return;
        }
        let want = match self.wanted(viewer, owner) {
            Ok(w) => w,
            // Another daemon's peer out of reach: the mirror stays as it was
            // until the next poll reaches it.
            Err(e) if self.core.serves_elsewhere(owner) => {
                tracing::debug!(peer = owner, viewer, error = %e, "cannot reach the state to mirror");
                return;
            }
            Err(e) => {
                tracing::warn!(peer = owner, error = %e, "cannot read the state to mirror");
                return;
            }
        };
        let user = user_of(&self.core, viewer);
        let undone = as_user(user, || {
            self.sync_files(&dir, &want, user, check, &Mirrored::state())
        });
        for u in undone {
            let where_ = if viewer == owner {
                String::new()
            } else {
                format!(" of peers/{owner}")
            };
            let line = format!(
                "spool: {u}{where_}: state/ is a read-only mirror of the keys (change them with a script)"
            );
            tracing::warn!(peer = viewer, "{line}");
            self.core.apply_async(viewer, Op::Log(line), None);
        }
    }

    /// Makes the files under `dir` the `want`ed ones, but those `m` leaves
    /// alone; returns what was undone.
    pub(super) fn sync_files(
        &mut self,
        dir: &Path,
        want: &BTreeMap<String, Vec<u8>>,
        user: (u32, u32),
        check: bool,
        m: &Mirrored,
    ) -> Vec<String> {
        let mut undone = Vec::new();
        let mut have = Vec::new();
        list_files(dir, dir, &mut have);
        have.retain(|rel| !(m.keep)(rel));
        let what = m.what;
        for rel in &have {
            let path = dir.join(rel);
            if !want.contains_key(rel) {
                if check && !self.written.contains_key(&path) {
                    undone.push(format!("new file {what}/{rel} removed"));
                }
                let _ = std::fs::remove_file(&path);
                self.written.remove(&path);
            }
        }
        for (rel, bytes) in want.iter().filter(|(rel, _)| !(m.keep)(rel)) {
            let path = dir.join(rel);
            let h = content_hash(bytes);
            // Outside a check, a file this process wrote is trusted unread.
            if !check && self.written.get(&path) == Some(&h) {
                continue;
            }
            let disk = std::fs::read(&path).ok().map(|d| content_hash(&d));
            if disk == Some(h) {
                self.written.insert(path, h);
                continue;
            }
            if check && disk != self.written.get(&path).copied() {
                undone.push(format!("change to {what}/{rel} undone"));
            }
            if let Some(parent) = path.parent() {
                if parent.exists() && !parent.is_dir() {
                    let _ = std::fs::remove_file(parent);
                }
                let _ = files::make_dir(parent, 0o755, user);
            }
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            }
            match files::replace(&path, bytes, (m.mode)(rel), user, false) {
                Ok(()) => {
                    self.written.insert(path, h);
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot mirror a key"),
            }
        }
        for d in m.dirs {
            let path = dir.join(d);
            if path.exists() && !path.is_dir() {
                let _ = std::fs::remove_file(&path);
            }
            let _ = files::make_dir(&path, 0o755, user);
        }
        remove_empty_dirs(dir, dir, m.dirs);
        undone
    }

    /// Keeps every local peer's mirror of every remote peer's state up to date
    /// until `stop` (see [`REMOTE_POLL`]). Its own thread: a remote worker slow
    /// to answer holds up no result and no local mirror. Each poll is a check:
    /// what was changed from outside since is undone and logged.
    pub(super) fn poll(mut self, stop: impl Fn() -> bool) {
        self.remote = true;
        let mut last = std::time::Instant::now() - REMOTE_POLL;
        while !stop() {
            if last.elapsed() < REMOTE_POLL {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            last = std::time::Instant::now();
            let remote = self.core.remote_peers();
            for (viewer, _) in self.core.registry().list() {
                for owner in &remote {
                    self.sync_view(&viewer, owner, true);
                    self.sync_tables_view(&viewer, owner, true);
                }
            }
        }
    }

    /// What `viewer` may read of `owner`, a peer of another daemon, as the owner's
    /// worker answers: key path -> bytes. A key whose size and time are those it
    /// was last mirrored from is taken from the mirror's file, not fetched again.
    fn wanted_remote(
        &mut self,
        viewer: &str,
        owner: &str,
    ) -> crate::Result<BTreeMap<String, Vec<u8>>> {
        let base = self.view_dir(viewer, owner, STATE.name);
        let mut out = BTreeMap::new();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            for e in self.core.remote_view_list(owner, viewer, &dir)? {
                let key = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                if e.is_dir {
                    dirs.push(key);
                    continue;
                }
                let path = base.join(&key);
                let seen = (e.size, e.mtime_ns);
                if self.remote_seen.get(&path) == Some(&seen) {
                    if let Ok(b) = std::fs::read(&path) {
                        if self.written.get(&path) == Some(&content_hash(&b)) {
                            out.insert(key, b);
                            continue;
                        }
                    }
                }
                let b = self.core.remote_view_bytes(owner, viewer, &key)?;
                self.remote_seen.insert(path, seen);
                out.insert(key, b);
            }
        }
        Ok(out)
    }

    /// The files `viewer`'s mirror of `owner` should hold: key path -> bytes.
    fn wanted(&mut self, viewer: &str, owner: &str) -> crate::Result<BTreeMap<String, Vec<u8>>> {
        if viewer != owner && !self.core.registry().exists(owner) {
            if self.core.serves_elsewhere(owner) {
                return self.wanted_remote(viewer, owner);
            }
            // Served nowhere (any more): the mirror is emptied.
            return Ok(BTreeMap::new());
        }
        let p = self.core.peer(owner)?;
        let keys = p.read(|s| s.keys("", usize::MAX >> 1))?;
        let mut out = BTreeMap::new();
        for k in keys {
            if viewer != owner && !self.core.policy().may_read(&self.core, viewer, owner, &k) {
                continue;
            }
            if let Some(b) = p.read(|s| s.get_bytes(&k))? {
                out.insert(k, b);
            }
        }
        Ok(out)
    }

    /// Appends the store's log lines that `log` lacks (rewrites it if it was
    /// changed from outside).
    fn sync_log(&self, peer: &str) -> crate::Result<()> {
        use std::io::Write;
        let path = self.root.join(peer).join(LOG.name);
        let user = user_of(&self.core, peer);
        // The store as the daemon, the folder as the peer's user (see `as_user`).
        let p = self.core.peer(peer)?;
        let total = p.read(|s| s.log_size())?;
        let have = as_user(user, || std::fs::symlink_metadata(&path))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        if have == Some(total) {
            return Ok(());
        }
        let Some(have) = have.filter(|h| *h < total) else {
            let all = p.read(|s| s.read_log(0, total as usize))?;
            as_user(user, || files::replace(&path, &all, 0o644, user, false))?;
            return Ok(());
        };
        let mut f = as_user(user, || {
            std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        })?;
        let mut off = have;
        while off < total {
            let chunk = p.read(|s| s.read_log(off, ((total - off) as usize).min(1 << 20)))?;
            if chunk.is_empty() {
                break;
            }
            f.write_all(&chunk)?;
            off += chunk.len() as u64;
        }
        Ok(())
    }
}

/// A mirror's folder as [`Mirror::sync_files`] keeps it.
pub(super) struct Mirrored<'a> {
    /// Its name in messages: `state`, `tables`.
    pub(super) what: &'a str,
    /// A file's mode.
    pub(super) mode: &'a dyn Fn(&str) -> u32,
    /// Files left alone (being applied, the owner's staging files).
    pub(super) keep: &'a dyn Fn(&str) -> bool,
    /// Folders that stay, empty or not.
    pub(super) dirs: &'a [String],
}

impl Mirrored<'static> {
    fn state() -> Mirrored<'static> {
        Mirrored {
            what: "state",
            mode: &|_| 0o444,
            keep: &|_| false,
            dirs: &[],
        }
    }
}

/// Files under `dir` as key paths relative to `base` (the spool's own temporary
/// files left by a crash are removed).
pub(super) fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(&p);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            list_files(base, &p, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Removes the empty folders under `base` but those named in `kept` (relative).
fn remove_empty_dirs(base: &Path, dir: &Path, kept: &[String]) -> bool {
    let mut empty = true;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if !remove_empty_dirs(base, &p, kept) {
                empty = false;
            }
        } else {
            empty = false;
        }
    }
    let stays = (dir.strip_prefix(base)).is_ok_and(|r| kept.iter().any(|k| Path::new(k) == r));
    if stays {
        return false;
    }
    if empty && dir != base {
        return std::fs::remove_dir(dir).is_ok();
    }
    empty
}
