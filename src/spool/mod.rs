//! Spool mode: the mount's tree as plain folders, served by a file watcher.
//!
//! `peerfs serve --spool DIR` lays out one folder per peer under `DIR` (the
//! entries of its [`Layout`]: inbox/, outbox/, state/, modules/,
//! peers/<other>/{inbox,outbox,state}, policy.cedar, groups, log) and watches it
//! with `notify` (inotify on Linux). What a path means ([`Place`]) and the
//! folders made are derived from the same layout as the mount's tree. Two threads:
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
//!
//! In a lattice, a script dropped into `peers/<t>/inbox/` for a peer `t` served by
//! another daemon is sent instead ([`Op::IntakeSend`]): the record goes to the
//! caller's store (`spool.sent/<t>/<name>`) with the outgoing message, in one
//! transaction, and the rest is the same. `peers/` follows the directory
//! (`follow_directory`).

mod client;
mod files;
mod intake;
mod mirror;
mod tables;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::error::err;
use crate::error::Result;
use crate::exec::Core;
use crate::exec::Op;
use crate::layout::{Close, Entry, Kind, Layout, Room};
use crate::names::{check_module_name, check_peer_name, is_staging_name};
use crate::policy::PolicyText;

pub use client::drop_and_wait;
use files::as_user;
pub use files::{content_hash, Ident, TMP_PREFIX};

/// The meta key under which a target records a script taken from `caller`'s folder.
pub fn taken_key(caller: &str, name: &str) -> String {
    format!("spool.taken/{caller}/{name}")
}

/// The meta key under which `caller` records a script taken from its
/// `peers/<target>/inbox/` and sent to `target`, a peer of another daemon.
pub fn sent_key(target: &str, name: &str) -> String {
    format!("spool.sent/{target}/{name}")
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
    /// The entries of every peer's folder (see `crate::layout`).
    layout: Arc<Layout>,
    /// Inbox files taken and not yet committed and removed.
    inflight: Mutex<HashSet<PathBuf>>,
    /// Per target: records of files already removed, dropped with its next op.
    forget: Mutex<HashMap<String, Vec<String>>>,
    /// Policy or groups texts refused already (not logged again on a rescan).
    refused: Mutex<HashSet<(String, PolicyText, u128)>>,
    /// Peers whose folders are scanned again at a given time.
    later: Mutex<Vec<(Instant, String)>>,
    /// Inbox files found held by a writer, looked at again (when, which, how often).
    retry: Mutex<Vec<(Instant, PathBuf, u32)>>,
    /// The peers of other daemons of the lattice whose `peers/<p>/` folders are
    /// laid out (the directory's copy when last looked at, see `follow_directory`).
    remote: Mutex<BTreeSet<String>>,
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
    /// Mirrors remote peers' state (in a lattice).
    poller: Option<JoinHandle<()>>,
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
    /// `policy.cedar` or `groups` of a peer.
    Text(String, PolicyText),
    Module(String, String),
    /// A state mirror: `owner`'s own (`viewer` = `owner`) or a view of it.
    State {
        viewer: String,
        owner: String,
    },
    /// Under a `tables/` mirror: `owner`'s own (`viewer` = `owner`, whose row
    /// files the owner writes) or a view of it.
    Tables {
        viewer: String,
        owner: String,
    },
    /// A folder inside a peer's folder (its contents may predate the watch).
    Other,
}

impl Spool {
    /// Lays out `root` for every peer of `core` (the standard layout), submits
    /// what was left in the inboxes, and starts watching.
    pub fn start(core: Core, root: &Path) -> Result<Spool> {
        Spool::start_with_layout(core, root, Arc::new(Layout::standard()))
    }

    /// [`Spool::start`] with peers' folders holding `layout`'s entries.
    pub fn start_with_layout(core: Core, root: &Path, layout: Arc<Layout>) -> Result<Spool> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        std::fs::create_dir_all(root.join(".peerfs"))?;
        let (tx, rx) = mpsc::channel();
        let (mtx, mrx) = mpsc::channel();
        let stats = Arc::new(SpoolStats::default());
        let shared = Arc::new(Shared {
            core: core.clone(),
            root: root.clone(),
            layout,
            inflight: Mutex::new(HashSet::new()),
            forget: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            later: Mutex::new(Vec::new()),
            retry: Mutex::new(Vec::new()),
            remote: Mutex::new(BTreeSet::new()),
            tx: Mutex::new(tx.clone()),
            mirror: mtx.clone(),
            stats: stats.clone(),
            stop: AtomicBool::new(false),
        });
        core.set_listener(Arc::new(mirror::Relay(Mutex::new(mtx.clone()))));
        let poller = {
            let m = mirror::Mirror::new(core.clone(), root.clone(), stats.clone(), mtx.clone());
            let s = shared.clone();
            std::thread::Builder::new()
                .name("peerfs-spool-remote".into())
                .spawn(move || m.poll(|| s.stop.load(Ordering::SeqCst)))?
        };
        let m = mirror::Mirror::new(core.clone(), root.clone(), stats, mtx.clone());
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
        // The remote peers as the layout below sees them (a peer listed after
        // this is laid out by `follow_directory`).
        *shared.remote.lock().unwrap() = core.remote_peers().into_iter().collect();
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
            poller: Some(poller),
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
        if let Some(t) = self.poller.take() {
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

/// The mode of an entry's folder in the spool: `tables/` is the mirror's to
/// fill (as the peer's owner: a folder per table), so it is writable as `state/` is.
fn folder_mode(e: &Entry) -> u32 {
    match e.room {
        Room::Tables => 0o755,
        _ => e.mode.into(),
    }
}

/// The user (uid, gid) a peer's folder belongs to: its owner's, as registered;
/// the daemon's for a peer it does not know.
fn user_of(core: &Core, peer: &str) -> (u32, u32) {
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
        Some(match parts.as_slice() {
            [p] => Place::PeerDir(p.to_string()),
            [p, e, rest @ ..] => match self.layout.entry(e) {
                Some(e) => self.place_in(p, p, e, rest),
                None => Place::Other,
            },
            _ => Place::Other,
        })
    }

    /// Where `rest` is under the entry `e` of `viewer`'s own folder (`owner` ==
    /// `viewer`) or of its view of `owner` (`peers/<owner>/`): a file is taken by
    /// what a close there means.
    fn place_in(&self, viewer: &str, owner: &str, e: &Entry, rest: &[&str]) -> Place {
        let own = viewer == owner;
        let s = |x: &str| x.to_string();
        match (e.close, e.room, rest) {
            (Close::Submit, _, [n]) => Place::Inbox {
                caller: s(viewer),
                target: s(owner),
                name: s(n),
            },
            (Close::Apply(text), _, []) if own => Place::Text(s(viewer), text),
            (Close::StoreModule, _, rest) if own && !rest.is_empty() => {
                Place::Module(s(viewer), rest.join("/"))
            }
            (_, Room::State, _) => Place::State {
                viewer: s(viewer),
                owner: s(owner),
            },
            (_, Room::Tables, _) => Place::Tables {
                viewer: s(viewer),
                owner: s(owner),
            },
            (_, Room::Peers, [o, v, rest @ ..]) if own => match self.layout.view_entry(v) {
                Some(v) => self.place_in(viewer, o, v, rest),
                None => Place::Other,
            },
            _ => Place::Other,
        }
    }

    fn peer_dir(&self, peer: &str) -> PathBuf {
        self.root.join(peer)
    }

    /// Makes `peer`'s folders (and every other peer's `peers/<peer>/`), writes its
    /// policy, groups and modules where they are missing, and has the mirror fill
    /// in its results, state and log.
    fn layout(&self, peer: &str) -> Result<()> {
        let user = user_of(&self.core, peer);
        let dir = self.peer_dir(peer);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            return Err(err!(
                libc::ENOTDIR,
                "{} is not a folder (a symlink?): remove it so that the peer's folder can be made",
                dir.display()
            ));
        }
        // The peer's folder itself as the daemon (DIR may be its own); inside it,
        // everything as the peer's user (see `as_user`).
        files::make_dir(&dir, 0o700, user)?;
        // A folder made by its owner's mkdir has the umask's mode (0755 mostly):
        // the peer's folder is private all the same.
        let md = std::fs::metadata(&dir)?;
        if md.permissions().mode() & 0o777 != 0o700 {
            if let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)) {
                tracing::warn!(folder = %dir.display(), error = %e, "cannot make the peer's folder private (0700)");
            }
        }
        // What the store has, read as the daemon before acting as the owner.
        let texts = self.stored_files(peer, &dir)?;
        as_user(user, || self.layout_inside(peer, &dir, user, &texts))?;
        let _ = self.mirror.send(mirror::Note::Layout(peer.to_string()));
        self.scan_new_folders(peer);
        Ok(())
    }

    /// The files of `peer`'s folder (at `dir`) with what the store holds: the
    /// policy texts, the modules, and the layout's reserved files (empty).
    fn stored_files(&self, peer: &str, dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>, u16)>> {
        let p = self.core.peer(peer)?;
        let mut texts = Vec::new();
        for e in self.layout.entries() {
            match e.room {
                Room::Text(t) => {
                    let text = p
                        .read(|s| s.meta(t.key()))?
                        .map(|m| m.0)
                        .unwrap_or_default();
                    texts.push((dir.join(e.name), text, e.mode));
                }
                Room::Reserved if e.kind == Kind::File => {
                    texts.push((dir.join(e.name), Vec::new(), e.mode))
                }
                Room::Modules => {
                    for m in p.read(|s| s.list_modules())? {
                        if let Some(src) = p.read(|s| s.module(&m.name))? {
                            let file = dir.join(e.name).join(format!("{}.rhai", m.name));
                            texts.push((file, src, 0o644));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(texts)
    }

    /// The folders, and `texts` (policy, groups, modules) where they are missing.
    fn layout_inside(
        &self,
        peer: &str,
        dir: &Path,
        user: (u32, u32),
        texts: &[(PathBuf, Vec<u8>, u16)],
    ) -> Result<()> {
        // `.history/` and `.snapshots/` are the mount's only (read from the store when asked).
        let dirs = self.layout.entries().iter().filter(|e| e.is_dir());
        for e in dirs.filter(|e| !matches!(e.room, Room::History | Room::Snapshots)) {
            files::make_dir(&dir.join(e.name), folder_mode(e), user)?;
        }
        for (other, info) in self.core.registry().list() {
            if other == peer {
                continue;
            }
            for (viewer, of, o) in [
                (peer, other.as_str(), user),
                (other.as_str(), peer, (info.uid, info.gid)),
            ] {
                let v = self.view_dir(viewer, of);
                if viewer != peer && !self.peer_dir(viewer).is_dir() {
                    continue;
                }
                as_user(o, || self.lay_view(&v, o))?;
            }
        }
        // Peers of the other daemons of the lattice (later ones: `follow_directory`).
        for other in self.core.remote_peers() {
            self.lay_view(&self.view_dir(peer, &other), user)?;
        }
        // A text the owner writes meanwhile (the peer's folder shows before
        // this ends) is the owner's: never replaced by the stored one.
        for (path, text, mode) in texts {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    files::make_dir(parent, 0o755, user)?;
                }
                files::create_new(path, text, (*mode).into(), user)?;
            }
        }
        Ok(())
    }

    /// `viewer`'s `peers/`.
    fn peers_dir(&self, viewer: &str) -> PathBuf {
        let peers = self.layout.of_room(Room::Peers);
        self.peer_dir(viewer)
            .join(peers.unwrap_or(&crate::layout::PEERS).name)
    }

    /// `viewer`'s view of `of`: `peers/<of>/`.
    fn view_dir(&self, viewer: &str, of: &str) -> PathBuf {
        self.peers_dir(viewer).join(of)
    }

    /// The folders of a view (`peers/<other>/`), as `own` (the viewer's owner).
    fn lay_view(&self, view: &Path, user: (u32, u32)) -> Result<()> {
        for e in self.layout.view().filter(|e| e.is_dir()) {
            files::make_dir(&view.join(e.name), folder_mode(e), user)?;
        }
        Ok(())
    }
}

impl Shared {
    /// Folders just made in `peer`'s tree are watched once the watcher has seen
    /// them made (it adds their watch from its own thread): a script written into
    /// one before that brings no event. Look at the peer again a little later.
    fn scan_new_folders(&self, peer: &str) {
        self.scan_later(peer, Duration::from_millis(300));
        self.scan_later(peer, Duration::from_secs(2));
    }

    /// Makes every peer's `peers/` follow the lattice's directory: a peer another
    /// daemon started serving gets its `peers/<p>/` folders, one that left the
    /// directory (and is not served here) loses them. The directory's copy is
    /// kept current by its watch, which tells nobody: this looks at it, cheaply,
    /// about once a second.
    pub(super) fn follow_directory(&self) {
        let now: BTreeSet<String> = self.core.remote_peers().into_iter().collect();
        let (added, gone): (Vec<String>, Vec<String>) = {
            let mut known = self.remote.lock().unwrap();
            if *known == now {
                return;
            }
            let added = now.difference(&known).cloned().collect();
            let gone = known.difference(&now).cloned().collect();
            *known = now;
            (added, gone)
        };
        // A peer that left the directory because it is served here now keeps
        // the folders its layout made.
        let gone: Vec<String> = gone
            .into_iter()
            .filter(|p| !self.core.registry().exists(p))
            .collect();
        for (peer, _) in self.core.registry().list() {
            let dir = self.peer_dir(&peer);
            if !dir.is_dir() {
                continue;
            }
            let user = user_of(&self.core, &peer);
            let r = as_user(user, || -> Result<()> {
                for other in &added {
                    self.lay_view(&self.view_dir(&peer, other), user)?;
                }
                for other in &gone {
                    self.unlay_view(&self.view_dir(&peer, other));
                }
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!(peer = %peer, error = %e, "cannot lay out the peers of the lattice");
            }
        }
        if !added.is_empty() || !gone.is_empty() {
            tracing::info!(added = ?added, gone = ?gone, "spool peers/ follows the lattice directory");
        }
        if !added.is_empty() {
            for (peer, _) in self.core.registry().list() {
                self.scan_new_folders(&peer);
            }
        }
    }
}

impl Shared {
    /// Removes `peers/<gone>/`, a peer no longer in the lattice: its state mirror
    /// and its results' files (the results stay in the store's run history and
    /// log). A script still waiting in its inbox keeps the folder (it is refused
    /// or sent, and the delivery's error comes back as a result).
    fn unlay_view(&self, view: &Path) {
        let mut kept = false;
        for e in self.layout.view() {
            let path = view.join(e.name);
            if e.close == Close::Submit {
                kept |= std::fs::remove_dir(&path).is_err() && path.exists();
            } else if e.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        if !kept {
            let _ = std::fs::remove_dir(view);
        } else {
            tracing::info!(folder = %view.display(), "a peer left the lattice: its inbox keeps what is in it");
        }
    }
}
