//! The registry of peers: every peer's name and owner in memory (small), its store
//! opened on first use, a bounded number kept open, idle ones closed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use super::files;
use super::Peer;
use crate::error::err;
use crate::error::Result;
use crate::names::check_peer_name;
use crate::store::SqliteStore;

/// What the registry keeps for every peer, open or not (a few dozen bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    /// Creation time, ns since the epoch.
    pub ctime_ns: i64,
}

pub struct Registry {
    data: PathBuf,
    names: RwLock<BTreeMap<Box<str>, PeerInfo>>,
    open: Mutex<HashMap<String, Arc<Peer>>>,
    /// Only these peers are served (isolated deployment); `None` = all.
    only: Option<Vec<String>>,
}

impl Registry {
    /// Reads the names of every peer under `data/peers` (no store is opened).
    pub fn new(data: &Path, only: Option<Vec<String>>) -> Result<Registry> {
        let dir = data.join("peers");
        // Private to the daemon when it makes them; an older, more open one is
        // reported (and left as the operator made it).
        files::private_dir(&dir)?;
        files::warn_if_open(data);
        let mut names = BTreeMap::new();
        for ent in std::fs::read_dir(&dir)? {
            let ent = ent?;
            let f = ent.file_name();
            let Some(f) = f.to_str() else { continue };
            let Some(name) = f.strip_suffix(".sqlite") else {
                continue;
            };
            if check_peer_name(name).is_err() {
                tracing::warn!(file = %f, "ignoring a file in the peers folder whose name is not a peer name");
                continue;
            }
            if let Some(only) = &only {
                if !only.iter().any(|o| o == name) {
                    continue;
                }
            }
            let (uid, gid, ctime_ns) = files::owner_of(data, name, &ent.path())?;
            names.insert(name.into(), PeerInfo { uid, gid, ctime_ns });
        }
        Ok(Registry {
            data: data.to_path_buf(),
            names: RwLock::new(names),
            open: Mutex::new(HashMap::new()),
            only,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.data.join("peers").join(format!("{name}.sqlite"))
    }

    pub fn info(&self, name: &str) -> Option<PeerInfo> {
        self.names.read().unwrap().get(name).copied()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.names.read().unwrap().contains_key(name)
    }

    /// Every peer name, sorted.
    pub fn list(&self) -> Vec<(String, PeerInfo)> {
        self.names
            .read()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.names.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates a peer: its store file, owned by `uid:gid`.
    pub fn create(&self, name: &str, uid: u32, gid: u32) -> Result<PeerInfo> {
        check_peer_name(name)?;
        if let Some(only) = &self.only {
            if !only.iter().any(|o| o == name) {
                return Err(err!(
                    libc::EACCES,
                    "peer {name:?} is not served here: this daemon serves only {}",
                    only.join(", ")
                ));
            }
        }
        let mut names = self.names.write().unwrap();
        if names.contains_key(name) {
            return Err(err!(libc::EEXIST, "peer {name:?} already exists"));
        }
        let path = self.path_of(name);
        if path.exists() {
            return Err(err!(
                libc::EEXIST,
                "peer store {} already exists",
                path.display()
            ));
        }
        // Build the store under a temporary name, then rename: a crash never leaves
        // a half-made peer behind under its real name.
        let tmp = self.data.join("peers").join(format!(".{name}.creating"));
        let _ = std::fs::remove_file(&tmp);
        {
            let s = SqliteStore::open(&tmp, true)?;
            s.close_checkpointed()?;
        }
        // The store was closed cleanly: no -wal or -shm remain. It stays the
        // daemon's (SQLite gives its -wal and -shm the same mode); the owner is
        // recorded beside it.
        files::make_private(&tmp)?;
        files::write_owner(&self.data, name, uid, gid)?;
        std::fs::rename(&tmp, &path)?;
        files::sync_dir(&self.data.join("peers"));
        let (_, _, ctime_ns) = files::owner_of(&self.data, name, &path)?;
        let info = PeerInfo { uid, gid, ctime_ns };
        names.insert(name.into(), info);
        Ok(info)
    }

    /// Opens (or returns the open) peer; `true` when this call opened it.
    pub fn open(&self, name: &str) -> Result<(Arc<Peer>, bool)> {
        let mut open = self.open.lock().unwrap();
        if let Some(p) = open.get(name) {
            p.touch();
            return Ok((p.clone(), false));
        }
        if !self.exists(name) {
            check_peer_name(name)?;
            return Err(err!(libc::ENOENT, "no peer named {name:?}"));
        }
        let path = self.path_of(name);
        let store = SqliteStore::open(&path, false)?;
        let peer = Arc::new(Peer::new(name.to_string(), Box::new(store)));
        open.insert(name.to_string(), peer.clone());
        Ok((peer, true))
    }

    /// Whether `name` is open now (its store need not be opened to reach it).
    pub fn is_open(&self, name: &str) -> bool {
        self.open.lock().unwrap().contains_key(name)
    }

    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    pub fn open_peers(&self) -> Vec<Arc<Peer>> {
        self.open.lock().unwrap().values().cloned().collect()
    }

    /// Closes open peers that nobody holds and that have no work, oldest first:
    /// all idle longer than `idle_ns`, and more while more than `max_open` are open.
    pub fn sweep(&self, idle_ns: i64, max_open: usize) -> usize {
        let now = crate::util::now_ns();
        let mut open = self.open.lock().unwrap();
        let mut idle: Vec<(i64, String)> = open
            .iter()
            .filter(|(_, p)| Arc::strong_count(p) == 1 && !p.busy())
            .map(|(n, p)| (p.last_used.load(Ordering::Relaxed), n.clone()))
            .collect();
        idle.sort();
        let mut closed = 0;
        for (used, name) in idle {
            if now - used > idle_ns || open.len() > max_open {
                open.remove(&name);
                closed += 1;
            }
        }
        closed
    }

    /// Moves a peer's files aside to `data/removed/` (never deletes them).
    /// Where `.snapshots/` of `name` keeps its copies: `DATA/snapshots/<name>/`.
    pub fn snapshots_of(&self, name: &str) -> PathBuf {
        self.data.join("snapshots").join(name)
    }

    pub fn remove(&self, name: &str) -> Result<PathBuf> {
        check_peer_name(name)?;
        let mut names = self.names.write().unwrap();
        if !names.contains_key(name) {
            return Err(err!(libc::ENOENT, "no peer named {name:?}"));
        }
        {
            let mut open = self.open.lock().unwrap();
            if let Some(p) = open.get(name) {
                if Arc::strong_count(p) > 1 || p.busy() {
                    return Err(err!(
                        libc::EBUSY,
                        "peer {name:?} has work in flight: try again when it is idle"
                    ));
                }
            }
            open.remove(name);
        }
        let dir = self.data.join("removed");
        files::private_dir(&dir)?;
        let stamp = crate::util::rfc3339(crate::util::now_ns()).replace(':', "-");
        let dest = dir.join(format!("{name}.{stamp}.sqlite"));
        let src = self.path_of(name);
        for suffix in ["-wal", "-shm"] {
            let s = PathBuf::from(format!("{}{suffix}", src.display()));
            if s.exists() {
                std::fs::rename(&s, format!("{}{suffix}", dest.display()))?;
            }
        }
        std::fs::rename(&src, &dest)?;
        files::sync_dir(&self.data.join("peers"));
        let owner = files::owner_file(&self.data, name);
        if owner.exists() {
            std::fs::rename(&owner, format!("{}.owner", dest.display()))?;
        }
        // Its snapshots go with it: a new peer of the same name never sees them.
        let snaps = self.snapshots_of(name);
        if snaps.exists() {
            std::fs::rename(&snaps, format!("{}.snapshots", dest.display()))?;
        }
        names.remove(name);
        Ok(dest)
    }
}
