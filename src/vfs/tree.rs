//! The tree: what a name under a folder is ([`Vfs::lookup`], the path grammar of
//! every [`Node`] kind), what a folder lists ([`Vfs::readdir`] and the directory
//! handles), and making and removing folders (a peer at the top, folders in
//! `state/`). A peer's folder and its view of another peer list the layout's
//! entries (`crate::layout`; `entry_node` is where an entry meets the code that
//! serves it). The state another peer may read (`peers/<other>/state/`) is in
//! `view.rs`.

use std::sync::Arc;

use super::*;
use crate::error::err;
use crate::error::{Error, Result};
use crate::exec::Op;
use crate::layout::{Entry, Room};
use crate::names::{check_key, check_peer_name, check_segment};
use crate::util::now_ns;

/// mknod (fifos, sockets, devices): a peer's store holds values, not special files.
/// Symbolic and hard links are refused the same way (`EPERM`, fuser's answer).
pub fn special_file(name: &str) -> Error {
    err!(
        libc::EPERM,
        "{name:?}: peerfs holds files and folders only (no fifos, sockets or devices)"
    )
}

/// The files of `.peerfs/`, sorted.
const META_FILES: [&str; 5] = ["metrics", "refused", "replica", "stats", "version"];

/// The node of the layout's entry `e` in `peer`'s own folder (`target` ==
/// `peer`) or in its view of `target`: the one place where an entry's room
/// becomes the code that serves it. `None`: the room has no place in a view.
fn entry_node(e: &Entry, peer: &str, target: &str) -> Option<Node> {
    let (p, t) = (peer.to_string(), target.to_string());
    let own = peer == target;
    Some(match e.room {
        Room::Inbox => Node::Inbox { peer: p, target: t },
        Room::Outbox => Node::Outbox { peer: p, target: t },
        Room::State if own => Node::State {
            peer: p,
            dir: String::new(),
        },
        Room::State => Node::ViewState {
            peer: p,
            other: t,
            dir: String::new(),
        },
        Room::Tables => Node::Tables {
            peer: p,
            target: t,
            table: None,
        },
        Room::Reserved => Node::Reserved {
            peer: p,
            target: t,
            name: e.name,
            kind: e.kind,
        },
        _ if !own => return None,
        Room::Modules => Node::Modules(p),
        Room::Peers => Node::Peers(p),
        Room::Text(text) => Node::text(peer, text),
        Room::Log => Node::Log(p),
        Room::History => Node::History(p),
        Room::Snapshots => Node::Snapshots(p),
    })
}

/// The listing of `entries` in `peer`'s folder (or its view of `target`).
fn listed<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    peer: &str,
    target: &str,
) -> Vec<(String, Node, Kind)> {
    entries
        .filter_map(|e| Some((e.name.to_string(), entry_node(e, peer, target)?, e.kind)))
        .collect()
}

/// The node of the file (or view) `name` in `parent`: inbox and outbox files,
/// modules, state files, other peers; in a peer's own folder (and as a
/// fallback), an editor's file beside the policy texts.
fn node_in(parent: &Node, name: String) -> Node {
    match parent {
        Node::Inbox { peer, target } => Node::InboxFile {
            peer: peer.clone(),
            target: target.clone(),
            name,
        },
        Node::Outbox { peer, target } => Node::OutboxFile {
            peer: peer.clone(),
            target: target.clone(),
            name,
        },
        Node::State { peer, dir } => Node::StateFile {
            peer: peer.clone(),
            key: join_key(dir, &name),
        },
        Node::Modules(peer) => Node::ModuleFile {
            peer: peer.clone(),
            name,
        },
        Node::Peers(peer) => Node::View {
            peer: peer.clone(),
            other: name,
        },
        Node::Peer(peer) => Node::EditFile {
            peer: peer.clone(),
            name,
        },
        Node::Tables {
            peer,
            target,
            table: Some(t),
        } => Node::TableFile {
            peer: peer.clone(),
            target: target.clone(),
            table: t.clone(),
            key: Some(name.strip_suffix(".json").unwrap_or(&name).to_string()),
        },
        _ => Node::EditFile {
            peer: parent.peer().unwrap_or_default().to_string(),
            name,
        },
    }
}

/// `name` in an inbox, an outbox or `modules/` (checked as a name, not looked
/// up: whether it exists is the attributes' question).
fn file_child(parent: &Node, name: &str) -> Result<Node> {
    let what = match parent {
        Node::Inbox { .. } => "script name",
        Node::Outbox { .. } => "result name",
        Node::Modules(_) => "module file name",
        _ => return Err(err!(libc::ENOTDIR, "not a folder")),
    };
    check_segment(what, name)?;
    Ok(node_in(parent, name.to_string()))
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
        let found = match parent {
            Root if name == ".peerfs" => Some(MetaDir),
            Root => (check_peer_name(name).is_ok() && self.core.registry().exists(name))
                .then(|| Peer(name.to_string())),
            MetaDir => META_FILES.into_iter().find(|f| *f == name).map(MetaFile),
            // The layout's entries win over an editor's file of the same name.
            Peer(p) => match self.layout.entry(name) {
                Some(e) => entry_node(e, p, p),
                None => self.staged_get(parent, name).map(|_| EditFile {
                    peer: p.clone(),
                    name: name.to_string(),
                }),
            },
            View { peer, other } => self
                .layout
                .view_entry(name)
                .and_then(|e| entry_node(e, peer, other)),
            Peers(p) if self.is_other_peer(p, name) => Some(node_in(parent, name.to_string())),
            Peers(p) => return Err(self.no_such_peer(p, name).unwrap_or_else(missing)),
            State { peer, dir } => return self.state_child(parent, peer, dir, name),
            History(_) | HistAt { .. } | HistState { .. } | HistTables { .. } => {
                return self.hist_child(parent, name)
            }
            Snapshots(_) | Snapshot { .. } | SnapState { .. } | SnapTables { .. } => {
                return self.snap_child(parent, name)
            }
            Tables {
                peer,
                target,
                table,
            } => return self.tables_child(peer, target, table, name),
            ViewState { peer, other, dir } => return self.view_child(peer, other, dir, name),
            Reserved {
                kind: Kind::Dir, ..
            } => None,
            _ => return file_child(parent, name),
        };
        found.ok_or_else(missing)
    }

    /// `name` in a folder of `peer`'s state (`dir`): a key, a folder the store
    /// keeps, or a file being written there.
    fn state_child(&self, parent: &Node, peer: &str, dir: &str, name: &str) -> Result<Node> {
        let key = join_key(dir, name);
        check_key(&key)?;
        let file = |key| Node::StateFile {
            peer: peer.to_string(),
            key,
        };
        if self.staged_get(parent, name).is_some() {
            return Ok(file(key));
        }
        // A key wins over a kept folder of the same name (a script may set a key
        // where the mount left an empty folder).
        let p = self.core.peer(peer)?;
        match p.read(|s| s.stat_key(&key))? {
            Some(Some(_)) => Ok(file(key)),
            Some(None) => Ok(Node::State {
                peer: peer.to_string(),
                dir: key,
            }),
            None => Err(err!(libc::ENOENT, "{name:?} does not exist here")),
        }
    }

    /// The children of a folder, sorted by name (the adapter adds `.` and `..`).
    pub fn readdir(&self, node: &Node) -> Result<Vec<(String, Node, Kind)>> {
        use Node::*;
        let mut out = match node {
            Root => {
                let peers = self.core.registry().list().into_iter();
                let peers = peers.map(|(n, _)| (n.clone(), Peer(n), Kind::Dir));
                std::iter::once((".peerfs".into(), MetaDir, Kind::Dir))
                    .chain(peers)
                    .collect()
            }
            MetaDir => META_FILES
                .into_iter()
                .map(|f| (f.to_string(), MetaFile(f), Kind::File))
                .collect(),
            Peer(p) => listed(self.layout.entries().iter(), p, p),
            View { peer, other } => listed(self.layout.view(), peer, other),
            Inbox { peer, target } => self.list_inbox(peer, target)?,
            Outbox { peer, target } => self
                .core
                .outbox_list(peer, target)?
                .into_iter()
                .map(|e| (e.name.clone(), node_in(node, e.name), Kind::File))
                .collect(),
            State { peer, dir } => self.list_state(node, peer, dir)?,
            Modules(p) => self.list_modules(p)?,
            Tables {
                peer,
                target,
                table,
            } => self.list_tables(peer, target, table)?,
            Peers(p) => self
                .other_peers(p)
                .into_iter()
                .map(|n| (n.clone(), node_in(node, n), Kind::Dir))
                .collect(),
            ViewState { peer, other, dir } => self.view_listing(peer, other, dir)?,
            History(_) | HistAt { .. } | HistState { .. } | HistTables { .. } => {
                self.hist_list(node)?
            }
            Snapshots(_) | Snapshot { .. } | SnapState { .. } | SnapTables { .. } => {
                self.snap_list(node)?
            }
            Reserved {
                kind: Kind::Dir, ..
            } => Vec::new(),
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        };
        if !matches!(node, State { .. }) {
            self.staged_in(&mut out, node);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    /// Files being written in `parent` (kept in memory until their close or rename).
    fn staged_in(&self, out: &mut Vec<(String, Node, Kind)>, parent: &Node) {
        for n in self.staged.names_in(parent) {
            out.push((n.clone(), node_in(parent, n), Kind::File));
        }
    }

    /// An inbox: files being written, and (in a peer's own inbox) its queued scripts.
    fn list_inbox(&self, peer: &str, target: &str) -> Result<Vec<(String, Node, Kind)>> {
        let mut out = Vec::new();
        if peer == target {
            let inbox = Node::Inbox {
                peer: peer.to_string(),
                target: target.to_string(),
            };
            for (n, _, _) in self.core.queue_names(peer)? {
                out.push((n.clone(), node_in(&inbox, n), Kind::File));
            }
        }
        Ok(out)
    }

    /// A folder of `peer`'s state: its keys and folders, files being written in
    /// it, and the folders the store keeps that hold no key yet.
    fn list_state(&self, node: &Node, peer: &str, dir: &str) -> Result<Vec<(String, Node, Kind)>> {
        let mut out = Vec::new();
        let p = self.core.peer(peer)?;
        for e in p.read(|s| s.list_dir(dir))? {
            let key = join_key(dir, &e.name);
            let (peer, kind) = (
                peer.to_string(),
                if e.is_dir { Kind::Dir } else { Kind::File },
            );
            let child = match kind {
                Kind::Dir => Node::State { peer, dir: key },
                Kind::File => Node::StateFile { peer, key },
            };
            out.push((e.name, child, kind));
        }
        self.staged_in(&mut out, node);
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        // Kept folders that hold no key yet (the store lists folders of keys).
        for (kept, _) in p.read(|s| s.folders(&prefix))? {
            let rest = &kept[prefix.len()..];
            if !rest.is_empty() && !rest.contains('/') {
                let child = Node::State {
                    peer: peer.to_string(),
                    dir: kept.clone(),
                };
                out.push((rest.to_string(), child, Kind::Dir));
            }
        }
        Ok(out)
    }

    /// `modules/`: `x.rhai` for each module of the store.
    fn list_modules(&self, peer: &str) -> Result<Vec<(String, Node, Kind)>> {
        let p = self.core.peer(peer)?;
        let modules = Node::Modules(peer.to_string());
        let list = p.read(|s| s.list_modules())?.into_iter().map(|e| {
            let n = format!("{}.rhai", e.name);
            (n.clone(), node_in(&modules, n), Kind::File)
        });
        Ok(list.collect())
    }

    pub fn opendir(&self, node: &Node) -> Result<u64> {
        let list = Arc::new(self.readdir(node)?);
        let fh = self.handles.number();
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
            Node::Snapshots(peer) => self.snap_take(peer, name),
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
            Node::Snapshots(peer) => self.snap_drop(peer, name),
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
        if name == peer || crate::names::check_peer_name(name).is_err() {
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
