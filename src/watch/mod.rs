//! Spool mode: the mount's tree as plain folders, served by a file watcher.
//!
//! `peerfs serve --spool DIR` lays out one folder per peer under `DIR` (inbox/,
//! outbox/, state/, modules/, peers/<other>/{inbox,outbox,state}, policy.cedar,
//! groups, log) and watches it with `notify` (inotify on Linux). Two threads:
//!
//! - the intake thread takes what people put into the tree: scripts in inboxes
//!   (when their writer closes them or they are renamed in; staging names never
//!   run), policy, groups and modules, and new peer folders (`mkdir`);
//! - the mirror thread (see [`mirror`]) writes what the executor commits: results
//!   into outboxes (atomically, fsynced), the state mirrors and the log.
//!
//! Exactly once: a script is submitted with an [`Op::Intake`], which records in the
//! submission's own transaction what was taken (name, size, inode, mtime, content
//! hash, under the meta key `spool.taken/<caller>/<name>` of the target's store).
//! The file leaves the inbox only after that commit. A restart that finds a file
//! whose record matches knows it was taken and only removes it; every other file
//! left in an inbox is submitted. An inotify queue overflow rescans every folder.

mod client;
mod files;
mod mirror;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::err;
use crate::error::Result;
use crate::exec::Core;
use crate::peer::name::{check_module_name, check_peer_name, is_staging_name};
use crate::peer::Op;
use crate::store::Store;

pub use client::drop_and_wait;
use files::as_owner;
pub use files::{content_hash, Ident, TMP_PREFIX};

/// The meta key under which a target records a script taken from `caller`'s folder.
pub fn taken_key(caller: &str, name: &str) -> String {
    format!("spool.taken/{caller}/{name}")
}

/// Largest policy or groups file (as on the mount).
const MAX_META_FILE: u64 = crate::vfs::MAX_META_FILE;

/// Counters of the spool (logged at shutdown; tests read them).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub taken: AtomicU64,
    /// Takes put off because a writer still held the file.
    pub held: AtomicU64,
    pub rescans: AtomicU64,
    pub overflows: AtomicU64,
    pub results_written: AtomicU64,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    /// A taken file changed before it could be removed: take it again.
    Retake(PathBuf),
}

struct Shared {
    core: Core,
    root: PathBuf,
    /// Inbox files taken and not yet committed and removed.
    inflight: Mutex<HashSet<PathBuf>>,
    /// Per target: records of files already removed, dropped with its next op.
    forget: Mutex<HashMap<String, Vec<String>>>,
    /// Policy or groups texts refused already (not logged again on a rescan).
    refused: Mutex<HashSet<(String, &'static str, u128)>>,
    /// Peers whose folders are scanned again at a given time.
    later: Mutex<Vec<(Instant, String)>>,
    /// Inbox files found held by a writer, looked at again (when, which, how often).
    retry: Mutex<Vec<(Instant, PathBuf, u32)>>,
    tx: Mutex<Sender<Msg>>,
    mirror: Sender<mirror::Note>,
    stats: Arc<SpoolStats>,
    stop: AtomicBool,
}

/// A running spool. [`Spool::stop`] before [`Core::shutdown`].
pub struct Spool {
    shared: Arc<Shared>,
    watcher: Option<notify::RecommendedWatcher>,
    intake: Option<JoinHandle<()>>,
    mirror: Option<JoinHandle<()>>,
}

/// Where a path of the tree is.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    PeerDir(String),
    Inbox {
        caller: String,
        target: String,
        name: String,
    },
    Meta(String, &'static str),
    Module(String, String),
    /// A state mirror: `owner`'s own (`viewer` = `owner`) or a view of it.
    State {
        viewer: String,
        owner: String,
    },
    /// A folder inside a peer's folder (its contents may predate the watch).
    Other,
}

impl Spool {
    /// Lays out `root` for every peer of `core`, submits what was left in the
    /// inboxes, and starts watching.
    pub fn start(core: Core, root: &Path) -> Result<Spool> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        std::fs::create_dir_all(root.join(".peerfs"))?;
        let (tx, rx) = mpsc::channel();
        let (mtx, mrx) = mpsc::channel();
        let stats = Arc::new(SpoolStats::default());
        let shared = Arc::new(Shared {
            core: core.clone(),
            root: root.clone(),
            inflight: Mutex::new(HashSet::new()),
            forget: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            later: Mutex::new(Vec::new()),
            retry: Mutex::new(Vec::new()),
            tx: Mutex::new(tx.clone()),
            mirror: mtx.clone(),
            stats: stats.clone(),
            stop: AtomicBool::new(false),
        });
        core.set_listener(Arc::new(mirror::Relay(Mutex::new(mtx))));
        let m = mirror::Mirror::new(core.clone(), root.clone(), stats);
        let mirror = std::thread::Builder::new()
            .name("peerfs-spool-mirror".into())
            .spawn(move || m.run(mrx))?;
        // Watch first: what arrives while the tree is laid out and scanned is seen.
        let ftx = tx.clone();
        // Symlinks in peers' folders are not followed: nothing outside is watched.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = notify::RecommendedWatcher::new(
            move |ev| {
                let _ = ftx.send(Msg::Fs(ev));
            },
            config,
        )
        .map_err(|e| err!(libc::EIO, "cannot watch {}: {e}", root.display()))?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|e| {
                err!(
                    libc::EIO,
                    "cannot watch {}: {e} (raise fs.inotify.max_user_watches if the limit was hit)",
                    root.display()
                )
            })?;
        for (name, _) in core.registry().list() {
            if let Err(e) = shared.layout(&name) {
                tracing::error!(peer = %name, error = %e, "cannot lay out the peer's spool folder");
            }
        }
        shared.scan_all(true);
        let s = shared.clone();
        let intake = std::thread::Builder::new()
            .name("peerfs-spool-intake".into())
            .spawn(move || s.intake_loop(rx))?;
        tracing::info!(spool = %root.display(), "spool watching");
        Ok(Spool {
            shared,
            watcher: Some(watcher),
            intake: Some(intake),
            mirror: Some(mirror),
        })
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.shared.stats
    }

    /// Stops taking new files (the ones in flight are acknowledged by the core's
    /// shutdown, which must follow) and flushes the records of removed files.
    pub fn stop(&mut self) {
        self.watcher.take();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.intake.take() {
            let _ = t.join();
        }
        self.shared.flush_forget(true);
    }

    /// After [`Core::shutdown`]: writes the last results and ends the mirror.
    pub fn finish(&mut self) {
        let _ = self.shared.mirror.send(mirror::Note::Stop);
        if let Some(t) = self.mirror.take() {
            let _ = t.join();
        }
        let s = &self.shared.stats;
        tracing::info!(
            taken = s.taken.load(Ordering::Relaxed),
            held = s.held.load(Ordering::Relaxed),
            results = s.results_written.load(Ordering::Relaxed),
            rescans = s.rescans.load(Ordering::Relaxed),
            overflows = s.overflows.load(Ordering::Relaxed),
            "spool stopped"
        );
    }
}

/// Changed in the last second.
fn young(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ctime = m.ctime() * 1_000_000_000 + m.ctime_nsec();
    crate::util::now_ns() - ctime < 1_000_000_000
}

fn owner_of(core: &Core, peer: &str) -> (u32, u32) {
    core.registry()
        .info(peer)
        .map(|i| (i.uid, i.gid))
        .unwrap_or_else(|| unsafe { (libc::getuid(), libc::getgid()) })
}

impl Shared {
    fn place(&self, path: &Path) -> Option<Place> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let s = |x: &str| x.to_string();
        Some(match parts.as_slice() {
            [p] => Place::PeerDir(s(p)),
            [p, "inbox", n] => Place::Inbox {
                caller: s(p),
                target: s(p),
                name: s(n),
            },
            [p, "peers", t, "inbox", n] => Place::Inbox {
                caller: s(p),
                target: s(t),
                name: s(n),
            },
            [p, "policy.cedar"] => Place::Meta(s(p), "policy"),
            [p, "groups"] => Place::Meta(s(p), "groups"),
            [p, "modules", rest @ ..] if !rest.is_empty() => Place::Module(s(p), rest.join("/")),
            [p, "state", ..] => Place::State {
                viewer: s(p),
                owner: s(p),
            },
            [p, "peers", o, "state", ..] => Place::State {
                viewer: s(p),
                owner: s(o),
            },
            _ => Place::Other,
        })
    }

    fn peer_dir(&self, peer: &str) -> PathBuf {
        self.root.join(peer)
    }

    /// Makes `peer`'s folders (and every other peer's `peers/<peer>/`), writes its
    /// policy, groups and modules where they are missing, and has the mirror fill
    /// in its results, state and log.
    fn layout(&self, peer: &str) -> Result<()> {
        let own = owner_of(&self.core, peer);
        let dir = self.peer_dir(peer);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            return Err(err!(
                libc::ENOTDIR,
                "{} is not a folder (a symlink?): remove it so that the peer's folder can be made",
                dir.display()
            ));
        }
        // The peer's folder itself as the daemon (DIR may be its own); inside it,
        // everything as the peer's owner (see `as_owner`).
        files::make_dir(&dir, 0o700, own)?;
        // What the store has, read as the daemon before acting as the owner.
        let p = self.core.peer(peer)?;
        let mut texts = Vec::new();
        for (kind, file) in [("policy", "policy.cedar"), ("groups", "groups")] {
            let text = p.read(|s| s.meta(kind))?.map(|m| m.0).unwrap_or_default();
            texts.push((dir.join(file), text));
        }
        for m in p.read(|s| s.list_modules())? {
            if let Some(src) = p.read(|s| s.module(&m.name))? {
                texts.push((dir.join("modules").join(format!("{}.rhai", m.name)), src));
            }
        }
        as_owner(own, || self.layout_inside(peer, &dir, own, &texts))?;
        let _ = self.mirror.send(mirror::Note::Layout(peer.to_string()));
        Ok(())
    }

    /// The folders, and `texts` (policy, groups, modules) where they are missing.
    fn layout_inside(
        &self,
        peer: &str,
        dir: &Path,
        own: (u32, u32),
        texts: &[(PathBuf, Vec<u8>)],
    ) -> Result<()> {
        for sub in ["inbox", "outbox", "state", "modules", "peers"] {
            files::make_dir(&dir.join(sub), 0o755, own)?;
        }
        for (other, info) in self.core.registry().list() {
            if other == peer {
                continue;
            }
            for (viewer, of, o) in [
                (peer, other.as_str(), own),
                (other.as_str(), peer, (info.uid, info.gid)),
            ] {
                let v = self.peer_dir(viewer).join("peers").join(of);
                if viewer != peer && !self.peer_dir(viewer).is_dir() {
                    continue;
                }
                as_owner(o, || -> Result<()> {
                    for sub in ["inbox", "outbox", "state"] {
                        files::make_dir(&v.join(sub), 0o755, o)?;
                    }
                    Ok(())
                })?;
            }
        }
        // Peers of the other daemons of the lattice, as the directory said at start.
        for other in crate::lattice::remote_peers(&self.core) {
            for sub in ["inbox", "outbox", "state"] {
                files::make_dir(&dir.join("peers").join(&other).join(sub), 0o755, own)?;
            }
        }
        for (path, text) in texts {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    files::make_dir(parent, 0o755, own)?;
                }
                files::replace(path, text, 0o644, own, false)?;
            }
        }
        Ok(())
    }

    fn intake_loop(self: Arc<Self>, rx: Receiver<Msg>) {
        let mut last_flush = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let wait = self
                .retry
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _, _)| t.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(Msg::Fs(Ok(ev))) => self.event(ev),
                Ok(Msg::Fs(Err(e))) => {
                    tracing::warn!(error = %e, "file watcher error: rescanning");
                    self.scan_all(false);
                }
                Ok(Msg::Retake(p)) => self.path_changed(&p),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let due: Vec<String> = {
                let mut later = self.later.lock().unwrap();
                let (due, keep) = later.drain(..).partition(|(t, _)| *t <= now);
                *later = keep;
                let mut due: Vec<String> = due.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
                due.sort();
                due.dedup();
                due
            };
            for peer in due {
                self.scan_peer(&peer, false);
            }
            let again: Vec<(PathBuf, u32)> = {
                let mut retry = self.retry.lock().unwrap();
                let (due, keep) = retry.drain(..).partition(|(t, _, _)| *t <= now);
                *retry = keep;
                due.into_iter().map(|(_, p, n)| (p, n)).collect()
            };
            for (p, n) in again {
                self.path_changed_try(&p, n);
            }
            if now.duration_since(last_flush) > Duration::from_millis(500) {
                self.flush_forget(false);
                last_flush = now;
            }
        }
    }

    fn event(self: &Arc<Self>, ev: notify::Event) {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        if ev.need_rescan() {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("inotify queue overflowed: rescanning every folder");
            self.scan_all(false);
            return;
        }
        match ev.kind {
            // Complete: closed after writing, or renamed in. Not at creation: a
            // file's creation is seen before its writer holds it open.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &ev.paths {
                    self.path_changed(p);
                }
            }
            EventKind::Create(CreateKind::Folder) => {
                for p in &ev.paths {
                    match self.place(p) {
                        Some(Place::PeerDir(name)) => self.new_peer_dir(p, &name),
                        Some(place) => {
                            if let Some(peer) = self.peer_of(&place, p) {
                                // Files made in it before its watch existed.
                                self.scan_later(&peer, Duration::from_millis(100));
                                self.scan_later(&peer, Duration::from_secs(1));
                            }
                        }
                        None => {}
                    }
                }
            }
            EventKind::Remove(RemoveKind::File)
            | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for p in &ev.paths {
                    match self.place(p) {
                        Some(Place::Module(peer, rel)) => self.module_file(&peer, &rel, p),
                        Some(Place::State { viewer, owner }) => {
                            self.state_touched(&viewer, &owner, p)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// The peer whose folder `p` is in.
    fn peer_of(&self, place: &Place, p: &Path) -> Option<String> {
        match place {
            Place::Other | Place::State { .. } => {
                let rel = p.strip_prefix(&self.root).ok()?;
                let first = rel.components().next()?.as_os_str().to_str()?.to_string();
                self.core.registry().exists(&first).then_some(first)
            }
            _ => None,
        }
    }

    fn path_changed(self: &Arc<Self>, p: &Path) {
        self.path_changed_try(p, 0)
    }

    /// `tries`: how often this inbox file was found held by a writer already.
    fn path_changed_try(self: &Arc<Self>, p: &Path, tries: u32) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if is_staging_name(name) {
            return;
        }
        match self.place(p) {
            Some(Place::Inbox {
                caller,
                target,
                name,
            }) => self.intake(&caller, &target, &name, p, false, tries),
            Some(Place::Meta(peer, kind)) => self.meta_file(&peer, kind, p),
            Some(Place::Module(peer, rel)) => self.module_file(&peer, &rel, p),
            Some(Place::State { viewer, owner }) => self.state_touched(&viewer, &owner, p),
            _ => {}
        }
    }

    fn new_peer_dir(self: &Arc<Self>, path: &Path, name: &str) {
        if name.starts_with('.') || self.core.registry().exists(name) {
            return;
        }
        if let Err(e) = check_peer_name(name) {
            tracing::warn!(folder = %path.display(), error = %e, "not a peer: the folder's name is not a valid peer name");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::symlink_metadata(path).and_then(|m| {
            if m.is_dir() {
                Ok(m)
            } else {
                Err(std::io::ErrorKind::NotADirectory.into())
            }
        }) else {
            return;
        };
        match self.core.create_peer(name, m.uid(), m.gid()) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(peer = name, error = %e, "cannot create the peer of a new folder");
                return;
            }
        }
        if let Err(e) = self.layout(name) {
            tracing::error!(peer = name, error = %e, "cannot lay out the new peer's folder");
        }
        self.scan_peer(name, false);
        self.scan_later(name, Duration::from_millis(200));
    }

    fn scan_later(&self, peer: &str, after: Duration) {
        let at = Instant::now() + after;
        self.later.lock().unwrap().push((at, peer.to_string()));
    }

    /// Every folder of every peer, as after an overflow (`startup`: skip what the
    /// stores recorded as taken).
    fn scan_all(self: &Arc<Self>, startup: bool) {
        self.stats.rescans.fetch_add(1, Ordering::Relaxed);
        let peers = self.core.registry().list();
        // Folders made while nobody watched are peers too.
        if !startup {
            if let Ok(rd) = std::fs::read_dir(&self.root) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let dir = e.file_type().is_ok_and(|t| t.is_dir());
                    if dir && !self.core.registry().exists(&name) {
                        self.new_peer_dir(&e.path(), &name);
                    }
                }
            }
        }
        for (name, _) in peers {
            self.scan_peer(&name, startup);
        }
    }

    fn scan_peer(self: &Arc<Self>, peer: &str, startup: bool) {
        self.scan_peer_inside(peer, startup);
        let _ = self.mirror.send(mirror::Note::Check {
            viewer: peer.to_string(),
            owner: None,
        });
    }

    /// Listings as the owner (see `as_owner`); each take does its own switch, and
    /// submissions (which may open stores) happen as the daemon.
    fn scan_peer_inside(self: &Arc<Self>, peer: &str, startup: bool) {
        let own = owner_of(&self.core, peer);
        let read_dir = |d: &Path| as_owner(own, || std::fs::read_dir(d));
        let dir = self.peer_dir(peer);
        let mut inboxes = vec![(peer.to_string(), dir.join("inbox"))];
        if let Ok(rd) = read_dir(&dir.join("peers")) {
            for e in rd.flatten() {
                let t = e.file_name().to_string_lossy().into_owned();
                inboxes.push((t, e.path().join("inbox")));
            }
        }
        for (target, inbox) in inboxes {
            let Ok(rd) = read_dir(&inbox) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !is_staging_name(n))
                .collect();
            // Oldest first is unknowable; names at least give a stable order.
            names.sort();
            for n in names {
                let path = inbox.join(&n);
                // An empty file this young may be one whose writer's open(2) has
                // not returned yet (creation is visible first): look again later.
                let meta = as_owner(own, || std::fs::symlink_metadata(&path));
                if meta.is_ok_and(|m| m.len() == 0 && young(&m)) {
                    self.scan_later(peer, Duration::from_secs(1));
                    continue;
                }
                self.intake(peer, &target, &n, &path, startup, 0);
            }
        }
        for (kind, file) in [("policy", "policy.cedar"), ("groups", "groups")] {
            self.meta_file(peer, kind, &dir.join(file));
        }
        let mods = dir.join("modules");
        let mut stack = vec![mods.clone()];
        while let Some(d) = stack.pop() {
            for e in read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&mods) {
                    let rel = rel.to_string_lossy().into_owned();
                    self.module_file(peer, &rel, &p);
                }
            }
        }
    }

    /// Takes the script `name` that `caller` dropped for `target` at `path`.
    fn intake(
        self: &Arc<Self>,
        caller: &str,
        target: &str,
        name: &str,
        path: &Path,
        startup: bool,
        tries: u32,
    ) {
        if is_staging_name(name) || !self.core.registry().exists(caller) {
            return;
        }
        if !self.inflight.lock().unwrap().insert(path.to_path_buf()) {
            return;
        }
        let done = |_: ()| {
            self.inflight.lock().unwrap().remove(path);
        };
        let max = self.core.config().limits.max_script_bytes;
        let own = owner_of(&self.core, caller);
        let t = match as_owner(own, || files::take(path, own.0, max)) {
            Ok(Ok(t)) => t,
            Ok(Err(files::Skip::NotAFile)) => return done(()),
            Ok(Err(files::Skip::BeingWritten)) => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                // The close's event can come before the kernel counts the writer
                // gone: look again soon (2 ms, doubling, for about a second). A
                // writer that really still holds it brings its own event.
                if tries < 10 {
                    let at = Instant::now() + Duration::from_millis(2 << tries);
                    let mut retry = self.retry.lock().unwrap();
                    retry.push((at, path.to_path_buf(), tries + 1));
                }
                return done(());
            }
            Ok(Err(files::Skip::Foreign(uid))) => {
                done(());
                let why = format!("owned by uid {uid}, not by the peer's owner");
                return self.refuse(caller, path, &why);
            }
            Ok(Err(files::Skip::TooBig(n))) => {
                done(());
                let why =
                    format!("{n} bytes: the most a script may have is {max} (max_script_bytes)");
                return self.refuse(caller, path, &why);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a script; it is taken at the next rescan");
                return done(());
            }
        };
        let key = taken_key(caller, name);
        let record = t.ident.record();
        if startup {
            let recorded = self
                .core
                .peer(target)
                .and_then(|p| p.read(|s| s.meta(&key)));
            if let Ok(Some((r, _))) = recorded {
                if r == record {
                    // Taken before a restart: its submission committed.
                    tracing::info!(file = %path.display(), "already submitted before the restart: removing it");
                    let _ = as_owner(own, || std::fs::remove_file(path));
                    self.forget
                        .lock()
                        .unwrap()
                        .entry(target.to_string())
                        .or_default()
                        .push(key);
                    return done(());
                }
            }
        }
        let job = match self
            .core
            .new_job_from(caller, target, name, t.data, &serde_json::json!({}))
        {
            Ok(j) => j,
            Err(e) => {
                done(());
                return self.refuse(caller, path, &e.message);
            }
        };
        self.stats.taken.fetch_add(1, Ordering::Relaxed);
        let ident = t.ident;
        let p = path.to_path_buf();
        let me = Arc::downgrade(self);
        let (caller_s, target_s) = (caller.to_string(), target.to_string());
        let k2 = key.clone();
        let ack = Box::new(move |r: Result<()>| {
            let Some(me) = me.upgrade() else { return };
            match r {
                Ok(()) => {
                    // Committed: now it may leave the inbox, unless it was rewritten
                    // since it was taken (then the new content is taken too).
                    let same = std::fs::symlink_metadata(&p).is_ok_and(|m| ident.same_file(&m));
                    if same {
                        if let Err(e) = as_owner(own, || std::fs::remove_file(&p)) {
                            tracing::warn!(file = %p.display(), error = %e, "cannot remove a submitted script");
                        }
                    }
                    me.forget
                        .lock()
                        .unwrap()
                        .entry(target_s)
                        .or_default()
                        .push(k2);
                    me.inflight.lock().unwrap().remove(&p);
                    if !same && p.exists() {
                        let _ = me.tx.lock().unwrap().send(Msg::Retake(p));
                    }
                }
                Err(e) => {
                    me.inflight.lock().unwrap().remove(&p);
                    if matches!(e.errno, libc::EFBIG | libc::EINVAL | libc::ENOENT) {
                        me.refuse(&caller_s, &p, &e.message);
                    } else {
                        tracing::warn!(file = %p.display(), error = %e, "submission failed; the script stays in the inbox and is taken at the next rescan or restart");
                    }
                }
            }
        });
        let mut forget = self.forget.lock().unwrap();
        let mut f = forget.remove(target).unwrap_or_default();
        // This op records `key` anew: an older record's removal must not follow it.
        f.retain(|k| *k != key);
        // Pushed under the lock: no Forget of the same key overtakes this op.
        self.core.apply_async(
            target,
            Op::Intake {
                job,
                key,
                record,
                forget: f,
            },
            Some(ack),
        );
    }

    /// Sends the records of removed files to their stores (`wait`: durably, at stop).
    fn flush_forget(&self, wait: bool) {
        let mut forget = self.forget.lock().unwrap();
        for (target, keys) in forget.drain() {
            if keys.is_empty() {
                continue;
            }
            if wait {
                if let Err(e) = self.core.apply(&target, Op::Forget(keys)) {
                    tracing::warn!(peer = %target, error = %e, "cannot drop intake records");
                }
            } else {
                self.core.apply_async(&target, Op::Forget(keys), None);
            }
        }
    }

    /// A script that can never be submitted: renamed to a staging name (so it never
    /// runs and no rescan takes it again) with the reason in the caller's log.
    fn refuse(&self, caller: &str, path: &Path, why: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.refused~"));
        let _ = as_owner(owner_of(&self.core, caller), || {
            std::fs::rename(path, &aside)
        });
        let line = format!("spool: {name} refused: {why} (renamed to {name}.refused~)");
        tracing::warn!(peer = caller, "{line}");
        self.core.apply_async(caller, Op::Log(line), None);
    }

    /// `policy.cedar` or `groups` of `peer`, applied when it differs from the
    /// store's, after the same validation as on the mount.
    fn meta_file(&self, peer: &str, kind: &'static str, path: &Path) {
        let own = owner_of(&self.core, peer);
        let Ok(Ok(t)) = as_owner(own, || files::take(path, own.0, MAX_META_FILE)) else {
            return;
        };
        let Ok(p) = self.core.peer(peer) else { return };
        let cur = p
            .read(|s| s.meta(kind))
            .ok()
            .flatten()
            .map(|m| m.0)
            .unwrap_or_default();
        if cur == t.data {
            return;
        }
        let fp = (peer.to_string(), kind, t.ident.hash);
        if self.refused.lock().unwrap().contains(&fp) {
            return;
        }
        let valid = std::str::from_utf8(&t.data)
            .map_err(|_| format!("{kind} is not UTF-8 text"))
            .and_then(|text| {
                if kind == "policy" {
                    crate::policy::Policy::parse(text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    crate::policy::Groups::parse(text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            });
        match valid {
            Ok(()) => {
                if let Err(e) = self.core.apply(peer, Op::SetMeta(kind.to_string(), t.data)) {
                    tracing::warn!(peer, error = %e, "{kind} not applied");
                }
            }
            Err(e) => {
                let msg = format!("{kind} refused, the old one stays in force: {e}");
                tracing::warn!(peer, "{msg}");
                self.refused.lock().unwrap().insert(fp);
                let _ = self.core.apply(peer, Op::Log(msg));
            }
        }
    }

    /// `modules/<rel>`: stored when it is a `.rhai` file that differs from the
    /// store's copy, removed from the store when the file is gone.
    fn module_file(&self, peer: &str, rel: &str, path: &Path) {
        let Some(m) = rel.strip_suffix(".rhai").filter(|m| !m.is_empty()) else {
            return;
        };
        if rel.split('/').any(is_staging_name) {
            return;
        }
        if let Err(e) = check_module_name(m) {
            tracing::warn!(peer, file = %path.display(), error = %e, "not a module");
            return;
        }
        let Ok(p) = self.core.peer(peer) else { return };
        let cur = p.read(|s| s.module(m)).ok().flatten();
        let own = owner_of(&self.core, peer);
        let max = self.core.config().limits.max_script_bytes;
        let op = match as_owner(own, || files::take(path, own.0, max)) {
            Ok(Ok(t)) if cur.as_deref() != Some(&t.data[..]) => {
                Op::SetModule(m.to_string(), t.data)
            }
            Ok(Err(files::Skip::NotAFile)) if cur.is_some() && !path.exists() => {
                Op::RemoveModule(m.to_string())
            }
            _ => return,
        };
        if let Err(e) = self.core.apply(peer, op) {
            tracing::warn!(peer, module = m, error = %e, "module change not applied");
        }
    }

    fn state_touched(&self, viewer: &str, owner: &str, p: &Path) {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            return;
        }
        let _ = self.mirror.send(mirror::Note::Check {
            viewer: viewer.to_string(),
            owner: Some(owner.to_string()),
        });
    }
}
