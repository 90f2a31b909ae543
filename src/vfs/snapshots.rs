//! `.snapshots/` of a peer's own folder: `mkdir .snapshots/NAME` takes a
//! consistent copy of the peer's store (`DATA/snapshots/<peer>/NAME.sqlite`,
//! made aside and renamed into place; the mount answers the mkdir from a
//! thread of its own, see `fuse`), `.snapshots/NAME/state/` shows its state
//! read only, and `.snapshots/NAME/tables/<table>.jsonl` its declared tables'
//! rows (rendered as the live `tables/<table>.jsonl` is; the folder is there
//! only when the snapshot declares tables), `rmdir .snapshots/NAME` deletes it. Snapshots are files apart from
//! the store: the history's retention never touches them.

use std::path::PathBuf;

use super::node::{join_key, TABLES};
use super::*;
use crate::error::{err, Result};
use crate::store::prelude::*;
use crate::store::SqliteStore;

const DIR_MODE: u16 = 0o500;
const FILE_MODE: u16 = 0o400;

impl Vfs {
    fn snap_dir(&self, peer: &str) -> PathBuf {
        self.core.registry().snapshots_of(peer)
    }

    fn snap_path(&self, peer: &str, name: &str) -> Result<PathBuf> {
        crate::names::check_segment("snapshot name", name)?;
        if name.starts_with('.') {
            return Err(err!(
                libc::EINVAL,
                "snapshot name {name:?} may not begin with a dot"
            ));
        }
        Ok(self.snap_dir(peer).join(format!("{name}.sqlite")))
    }

    /// The snapshot's store, read only.
    fn snap_store(&self, peer: &str, name: &str) -> Result<SqliteStore> {
        let path = self.snap_path(peer, name)?;
        if !path.is_file() {
            return Err(err!(libc::ENOENT, "no snapshot {name:?}"));
        }
        SqliteStore::open_reader(&path)
    }

    /// The tables the snapshot's schema declares.
    fn snap_tables(&self, peer: &str, name: &str) -> Result<Vec<String>> {
        let schema = self.snap_store(peer, name)?.schema()?;
        Ok(schema.tables.keys().cloned().collect())
    }

    /// `mkdir .snapshots/NAME`: a consistent copy of the peer, durable when it returns.
    pub(super) fn snap_take(&self, peer: &str, name: &str) -> Result<(Node, Attr)> {
        let path = self.snap_path(peer, name)?;
        if path.exists() {
            return Err(err!(libc::EEXIST, "snapshot {name:?} exists"));
        }
        let dir = self.snap_dir(peer);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let src = self.core.registry().path_of(peer);
        let made = crate::store::sqlite::copy_store(&src, &tmp)
            .and_then(|_| Ok(std::fs::rename(&tmp, &path)?));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        crate::util::sync_dir(&dir);
        tracing::info!(peer, snapshot = name, "snapshot taken");
        let node = Node::Snapshot {
            peer: peer.to_string(),
            name: name.to_string(),
        };
        let attr = self.snap_attr(&node)?;
        Ok((node, attr))
    }

    /// `rmdir .snapshots/NAME`.
    pub(super) fn snap_drop(&self, peer: &str, name: &str) -> Result<()> {
        let path = self.snap_path(peer, name)?;
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err!(libc::ENOENT, "no snapshot {name:?}"),
            _ => e.into(),
        })?;
        crate::util::sync_dir(&self.snap_dir(peer));
        Ok(())
    }

    pub(super) fn snap_child(&self, parent: &Node, name: &str) -> Result<Node> {
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        let (p, s) = (|x: &str| x.to_string(), |x: &str| x.to_string());
        match parent {
            Node::Snapshots(peer) => {
                if !self.snap_path(peer, name)?.is_file() {
                    return Err(missing());
                }
                Ok(Node::Snapshot {
                    peer: p(peer),
                    name: s(name),
                })
            }
            Node::Snapshot { peer, name: snap } if name == crate::layout::STATE.name => {
                Ok(Node::SnapState {
                    peer: p(peer),
                    name: s(snap),
                    dir: String::new(),
                })
            }
            Node::Snapshot { peer, name: snap } if name == TABLES => {
                if self.snap_tables(peer, snap)?.is_empty() {
                    return Err(missing());
                }
                Ok(Node::SnapTables {
                    peer: p(peer),
                    name: s(snap),
                })
            }
            Node::SnapTables { peer, name: snap } => {
                let table = name.strip_suffix(".jsonl").ok_or_else(missing)?;
                if !self.snap_tables(peer, snap)?.iter().any(|t| t == table) {
                    return Err(missing());
                }
                Ok(Node::SnapTable {
                    peer: p(peer),
                    name: s(snap),
                    table: s(table),
                })
            }
            Node::SnapState {
                peer,
                name: snap,
                dir,
            } => {
                let key = join_key(dir, name);
                crate::names::check_key(&key)?;
                match self.snap_store(peer, snap)?.stat_key(&key)? {
                    Some(Some(_)) => Ok(Node::SnapStateFile {
                        peer: p(peer),
                        name: s(snap),
                        key,
                    }),
                    Some(None) => Ok(Node::SnapState {
                        peer: p(peer),
                        name: s(snap),
                        dir: key,
                    }),
                    None => Err(missing()),
                }
            }
            _ => Err(missing()),
        }
    }

    pub(super) fn snap_list(&self, node: &Node) -> Result<Vec<(String, Node, Kind)>> {
        Ok(match node {
            Node::Snapshots(peer) => {
                let mut out = Vec::new();
                let rd = match std::fs::read_dir(self.snap_dir(peer)) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e.into()),
                };
                for e in rd {
                    let f = e?.file_name().to_string_lossy().into_owned();
                    if let Some(n) = f.strip_suffix(".sqlite").filter(|n| !n.starts_with('.')) {
                        let node = Node::Snapshot {
                            peer: peer.clone(),
                            name: n.to_string(),
                        };
                        out.push((n.to_string(), node, Kind::Dir));
                    }
                }
                out
            }
            Node::Snapshot { peer, name } => {
                let state = Node::SnapState {
                    peer: peer.clone(),
                    name: name.clone(),
                    dir: String::new(),
                };
                let mut v = vec![(crate::layout::STATE.name.to_string(), state, Kind::Dir)];
                if !self.snap_tables(peer, name)?.is_empty() {
                    let t = Node::SnapTables {
                        peer: peer.clone(),
                        name: name.clone(),
                    };
                    v.push((TABLES.to_string(), t, Kind::Dir));
                }
                v
            }
            Node::SnapTables { peer, name } => (self.snap_tables(peer, name)?.into_iter())
                .map(|table| {
                    let n = Node::SnapTable {
                        peer: peer.clone(),
                        name: name.clone(),
                        table: table.clone(),
                    };
                    (format!("{table}.jsonl"), n, Kind::File)
                })
                .collect(),
            Node::SnapState { peer, name, dir } => self
                .snap_store(peer, name)?
                .list_dir(dir)?
                .into_iter()
                .map(|e| {
                    let key = join_key(dir, &e.name);
                    let (peer, name) = (peer.clone(), name.clone());
                    if e.is_dir {
                        (
                            e.name,
                            Node::SnapState {
                                peer,
                                name,
                                dir: key,
                            },
                            Kind::Dir,
                        )
                    } else {
                        (e.name, Node::SnapStateFile { peer, name, key }, Kind::File)
                    }
                })
                .collect(),
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        })
    }

    pub(super) fn snap_attr(&self, node: &Node) -> Result<Attr> {
        match node {
            Node::Snapshots(peer) => self.dir_attr(Some(peer), crate::layout::SNAPSHOTS.mode),
            Node::Snapshot { peer, name } => {
                let md = std::fs::metadata(self.snap_path(peer, name)?)
                    .map_err(|_| err!(libc::ENOENT, "no snapshot {name:?}"))?;
                let mut a = self.dir_attr(Some(peer), DIR_MODE)?;
                if let Ok(t) = md.modified() {
                    let ns = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64);
                    (a.mtime_ns, a.ctime_ns) = (ns, ns);
                }
                Ok(a)
            }
            Node::SnapState { peer, name, dir } => {
                let mut st = self.snap_store(peer, name)?;
                if !dir.is_empty() && !matches!(st.stat_key(dir)?, Some(None)) {
                    return Err(err!(libc::ENOENT, "no folder {dir:?} in the snapshot"));
                }
                self.dir_attr(Some(peer), DIR_MODE)
            }
            Node::SnapStateFile { peer, name, key } => {
                match self.snap_store(peer, name)?.stat_key(key)? {
                    Some(Some(f)) => self.file_attr(Some(peer), f.size, FILE_MODE, f.mtime_ns),
                    _ => Err(err!(libc::ENOENT, "no state key {key:?} in the snapshot")),
                }
            }
            Node::SnapTables { peer, name } => {
                if self.snap_tables(peer, name)?.is_empty() {
                    return Err(err!(libc::ENOENT, "no tables in the snapshot"));
                }
                self.dir_attr(Some(peer), DIR_MODE)
            }
            Node::SnapTable { peer, .. } => {
                let n = self.snap_contents(node)?.len() as u64;
                self.file_attr(Some(peer), n, FILE_MODE, 0)
            }
            _ => Err(err!(libc::ENOENT, "not in .snapshots")),
        }
    }

    pub(super) fn snap_contents(&self, node: &Node) -> Result<Vec<u8>> {
        match node {
            Node::SnapStateFile { peer, name, key } => self
                .snap_store(peer, name)?
                .get_bytes(key)?
                .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?} in the snapshot")),
            Node::SnapTable { peer, name, table } => {
                crate::policy::sight::render_table(&mut self.snap_store(peer, name)?, table)
            }
            _ => Err(err!(libc::EISDIR, "not a file")),
        }
    }
}
