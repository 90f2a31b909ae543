//! The tree: what a name under a folder is ([`Vfs::lookup`], the path grammar of
//! every [`Node`] kind), what a folder lists ([`Vfs::readdir`] and the directory
//! handles), and making and removing folders (a peer at the top, folders in
//! `state/`). Another peer's view (`peers/<other>/`) is in `view.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::error::err;
use crate::error::{Error, Result};
use crate::exec::Op;
use crate::peer::name::{check_key, check_peer_name, check_segment};
use crate::util::now_ns;

/// mknod (fifos, sockets, devices): a peer's store holds values, not special files.
/// Symbolic and hard links are refused the same way (`EPERM`, fuser's answer).
pub fn special_file(name: &str) -> Error {
    err!(
        libc::EPERM,
        "{name:?}: peerfs holds files and folders only (no fifos, sockets or devices)"
    )
}

impl Vfs {
    /// Whether `dir` is a folder of `peer`'s state: it holds keys, or the store
    /// keeps it (made with mkdir, or left empty through the mount).
    pub(super) fn state_dir_exists(&self, peer: &str, dir: &str) -> Result<bool> {
        let p = self.core.peer(peer)?;
        Ok(matches!(p.read(|s| s.stat_key(dir))?, Some(None)))
    }

    /// An entry came or went in `dir`: its times move (POSIX: mtime and ctime).
    pub(super) fn entries_changed(&self, dir: &Node) {
        if matches!(dir, Node::State { .. }) {
            let now = now_ns();
            self.dir_times
                .lock()
                .unwrap()
                .insert(dir.clone(), (now, now));
        }
    }

    /// The child `name` of `parent`, if it exists.
    pub fn lookup(&self, parent: &Node, name: &str) -> Result<(Node, Attr)> {
        let node = self.child(parent, name)?;
        let attr = self.attr(&node)?;
        Ok((node, attr))
    }

    /// The node `name` under `parent` would be (it may not exist).
    pub(super) fn child(&self, parent: &Node, name: &str) -> Result<Node> {
        use Node::*;
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        Ok(match parent {
            Root => {
                if name == ".peerfs" {
                    MetaDir
                } else {
                    if check_peer_name(name).is_err() || !self.core.registry().exists(name) {
                        return Err(missing());
                    }
                    Peer(name.to_string())
                }
            }
            MetaDir => match name {
                "version" => MetaFile("version"),
                "stats" => MetaFile("stats"),
                "metrics" => MetaFile("metrics"),
                "refused" => MetaFile("refused"),
                _ => return Err(missing()),
            },
            Peer(p) => {
                let p = p.clone();
                match name {
                    "inbox" => Inbox {
                        peer: p.clone(),
                        target: p,
                    },
                    "outbox" => Outbox {
                        peer: p.clone(),
                        target: p,
                    },
                    "state" => State {
                        peer: p,
                        dir: String::new(),
                    },
                    "modules" => Modules(p),
                    "peers" => Peers(p),
                    "policy.cedar" => Policy(p),
                    "groups" => Groups(p),
                    "log" => Log(p),
                    _ if self.staged_get(parent, name).is_some() => EditFile {
                        peer: p,
                        name: name.to_string(),
                    },
                    _ => return Err(missing()),
                }
            }
            Inbox { peer, target } => {
                check_segment("script name", name)?;
                InboxFile {
                    peer: peer.clone(),
                    target: target.clone(),
                    name: name.to_string(),
                }
            }
            Outbox { peer, target } => {
                check_segment("result name", name)?;
                OutboxFile {
                    peer: peer.clone(),
                    target: target.clone(),
                    name: name.to_string(),
                }
            }
            State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                if self.staged_get(parent, name).is_some() {
                    return Ok(StateFile {
                        peer: peer.clone(),
                        key,
                    });
                }
                // A key wins over a kept folder of the same name (a script may set
                // a key where the mount left an empty folder).
                let p = self.core.peer(peer)?;
                match p.read(|s| s.stat_key(&key))? {
                    Some(Some(_)) => StateFile {
                        peer: peer.clone(),
                        key,
                    },
                    Some(None) => State {
                        peer: peer.clone(),
                        dir: key,
                    },
                    None => return Err(missing()),
                }
            }
            Modules(p) => {
                check_segment("module file name", name)?;
                ModuleFile {
                    peer: p.clone(),
                    name: name.to_string(),
                }
            }
            Peers(p) => {
                if !self.is_other_peer(p, name) {
                    return Err(self.no_such_peer(p, name).unwrap_or_else(missing));
                }
                View {
                    peer: p.clone(),
                    other: name.to_string(),
                }
            }
            View { peer, other } => match name {
                "inbox" => Inbox {
                    peer: peer.clone(),
                    target: other.clone(),
                },
                "outbox" => Outbox {
                    peer: peer.clone(),
                    target: other.clone(),
                },
                "state" => ViewState {
                    peer: peer.clone(),
                    other: other.clone(),
                    dir: String::new(),
                },
                _ => return Err(missing()),
            },
            ViewState { peer, other, dir } => self.view_child(peer, other, dir, name)?,
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        })
    }

    /// The children of a folder, sorted by name (the adapter adds `.` and `..`).
    pub fn readdir(&self, node: &Node) -> Result<Vec<(String, Node, Kind)>> {
        use Node::*;
        let mut out: Vec<(String, Node, Kind)> = Vec::new();
        let staged_in =
            |out: &mut Vec<(String, Node, Kind)>, parent: &Node, mk: &dyn Fn(String) -> Node| {
                for ((p, n), _) in self.staged.lock().unwrap().iter() {
                    if p == parent {
                        out.push((n.clone(), mk(n.clone()), Kind::File));
                    }
                }
            };
        match node {
            Root => {
                out.push((".peerfs".into(), MetaDir, Kind::Dir));
                for (n, _) in self.core.registry().list() {
                    out.push((n.clone(), Peer(n), Kind::Dir));
                }
            }
            MetaDir => {
                out.push(("metrics".into(), MetaFile("metrics"), Kind::File));
                out.push(("refused".into(), MetaFile("refused"), Kind::File));
                out.push(("stats".into(), MetaFile("stats"), Kind::File));
                out.push(("version".into(), MetaFile("version"), Kind::File));
            }
            Peer(p) => {
                for n in [
                    "inbox",
                    "outbox",
                    "state",
                    "modules",
                    "peers",
                    "policy.cedar",
                    "groups",
                    "log",
                ] {
                    let c = self.child(node, n)?;
                    let k = if c.is_dir() { Kind::Dir } else { Kind::File };
                    out.push((n.to_string(), c, k));
                }
                staged_in(&mut out, node, &|n| EditFile {
                    peer: p.clone(),
                    name: n,
                });
            }
            Inbox { peer, target } => {
                let (pe, t) = (peer.clone(), target.clone());
                staged_in(&mut out, node, &|n| InboxFile {
                    peer: pe.clone(),
                    target: t.clone(),
                    name: n,
                });
                if peer == target {
                    for (n, _, _) in self.core.queue_names(peer)? {
                        out.push((
                            n.clone(),
                            InboxFile {
                                peer: peer.clone(),
                                target: target.clone(),
                                name: n,
                            },
                            Kind::File,
                        ));
                    }
                }
            }
            Outbox { peer, target } => {
                for e in self.core.outbox_list(peer, target)? {
                    out.push((
                        e.name.clone(),
                        OutboxFile {
                            peer: peer.clone(),
                            target: target.clone(),
                            name: e.name,
                        },
                        Kind::File,
                    ));
                }
            }
            State { peer, dir } => {
                let p = self.core.peer(peer)?;
                for e in p.read(|s| s.list_dir(dir))? {
                    let key = join_key(dir, &e.name);
                    if e.is_dir {
                        out.push((
                            e.name,
                            State {
                                peer: peer.clone(),
                                dir: key,
                            },
                            Kind::Dir,
                        ));
                    } else {
                        out.push((
                            e.name,
                            StateFile {
                                peer: peer.clone(),
                                key,
                            },
                            Kind::File,
                        ));
                    }
                }
                let pe = peer.clone();
                let d = dir.clone();
                staged_in(&mut out, node, &|n| StateFile {
                    peer: pe.clone(),
                    key: join_key(&d, &n),
                });
                let prefix = if dir.is_empty() {
                    String::new()
                } else {
                    format!("{dir}/")
                };
                // Kept folders that hold no key yet (the store lists folders of keys).
                for (kept, _) in p.read(|s| s.folders(&prefix))? {
                    let rest = &kept[prefix.len()..];
                    if !rest.is_empty() && !rest.contains('/') {
                        out.push((
                            rest.to_string(),
                            State {
                                peer: peer.clone(),
                                dir: kept.clone(),
                            },
                            Kind::Dir,
                        ));
                    }
                }
            }
            Modules(p) => {
                let peer = self.core.peer(p)?;
                for e in peer.read(|s| s.list_modules())? {
                    let n = format!("{}.rhai", e.name);
                    out.push((
                        n.clone(),
                        ModuleFile {
                            peer: p.clone(),
                            name: n,
                        },
                        Kind::File,
                    ));
                }
                let pe = p.clone();
                staged_in(&mut out, node, &|n| ModuleFile {
                    peer: pe.clone(),
                    name: n,
                });
            }
            Peers(p) => {
                for n in self.other_peers(p) {
                    out.push((
                        n.clone(),
                        View {
                            peer: p.clone(),
                            other: n,
                        },
                        Kind::Dir,
                    ));
                }
            }
            View { peer, other } => {
                out.push((
                    "inbox".into(),
                    Inbox {
                        peer: peer.clone(),
                        target: other.clone(),
                    },
                    Kind::Dir,
                ));
                out.push((
                    "outbox".into(),
                    Outbox {
                        peer: peer.clone(),
                        target: other.clone(),
                    },
                    Kind::Dir,
                ));
                out.push((
                    "state".into(),
                    ViewState {
                        peer: peer.clone(),
                        other: other.clone(),
                        dir: String::new(),
                    },
                    Kind::Dir,
                ));
            }
            ViewState { peer, other, dir } => out.extend(self.view_listing(peer, other, dir)?),
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    pub fn opendir(&self, node: &Node) -> Result<u64> {
        let list = Arc::new(self.readdir(node)?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, list);
        Ok(fh)
    }

    pub fn readdir_handle(&self, fh: u64) -> Option<Listing> {
        self.dirs.lock().unwrap().get(&fh).cloned()
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    pub fn mkdir(&self, parent: &Node, name: &str, who: &Caller) -> Result<(Node, Attr)> {
        match parent {
            Node::Root => {
                if name == ".peerfs" {
                    return Err(err!(libc::EEXIST, ".peerfs is the daemon's own folder"));
                }
                self.core.create_peer(name, who.uid, who.gid)?;
                self.lookup(parent, name)
            }
            Node::State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                if self.child(parent, name).is_ok() {
                    return Err(err!(libc::EEXIST, "state/{key} already exists"));
                }
                // Kept by the store: an empty folder survives a remount.
                self.core.apply(peer, Op::MakeDir(key.clone()))?;
                let node = Node::State {
                    peer: peer.clone(),
                    dir: key,
                };
                self.entries_changed(parent);
                let attr = self.attr(&node)?;
                Ok((node, attr))
            }
            _ => Err(err!(
                libc::EACCES,
                "folders can only be made at the top (a new peer) or under state/"
            )),
        }
    }

    pub fn rmdir(&self, parent: &Node, name: &str) -> Result<()> {
        match parent {
            Node::Root => {
                check_peer_name(name)?;
                self.core.remove_peer(name).map(|_| ())
            }
            Node::State { peer, dir } => {
                let key = join_key(dir, name);
                check_key(&key)?;
                let p = self.core.peer(peer)?;
                if !p.read(|s| s.keys(&format!("{key}/"), 1))?.is_empty() {
                    return Err(err!(
                        libc::ENOTEMPTY,
                        "state/{key} holds keys: remove them first"
                    ));
                }
                if !p.read(|s| s.folders(&format!("{key}/")))?.is_empty() {
                    return Err(err!(libc::ENOTEMPTY, "state/{key} holds folders"));
                }
                if let Some(Some(_)) = p.read(|s| s.stat_key(&key))? {
                    return Err(err!(libc::ENOTDIR, "state/{key} is a file"));
                }
                self.core.apply(peer, Op::RemoveDir(key.clone()))?;
                self.entries_changed(parent);
                Ok(())
            }
            _ => Err(err!(libc::EACCES, "this folder cannot be removed")),
        }
    }

    /// `peers/<name>/` of a peer that is served nowhere `peer` can reach: `ENOENT`
    /// with the reason, logged once per name (a drop there is never a silent loss).
    fn no_such_peer(&self, peer: &str, name: &str) -> Option<crate::error::Error> {
        if name == peer || crate::peer::name::check_peer_name(name).is_err() {
            return None;
        }
        let why = if self.core.may_send_to(name) {
            "is served here or, by the lattice's directory, by another worker"
        } else {
            "is served here, and this daemon is in no lattice (--nats joins one)"
        };
        let e = err!(libc::ENOENT, "no peer named {name:?} {why}");
        let mut logged = self.unknown_peers.lock().unwrap();
        if logged.len() < 1024 && logged.insert(name.to_string()) {
            tracing::info!(peer, target = name, "peers/{name}: {}", e.message);
        }
        Some(e)
    }
}
