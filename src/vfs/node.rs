//! What a path on the mount means: one [`Node`] per file or folder, and the
//! naming rules that go with it (module file names, a file's parent folder).
//! Which names a peer's folder holds is `crate::layout`'s; each of its rooms has
//! its kinds of node here.

use crate::layout::Kind;
use crate::names::is_staging_name;
use crate::policy::PolicyText;

/// The identity of a file or folder on the mount. The FUSE adapter gives each node
/// an inode number; every rule about what a node allows lives in the vfs.
///
/// What each kind allows, in one place (the operations are in the vfs's rooms:
/// `tree` for lookup/readdir/mkdir/rmdir, `attr` for stat/setattr, `handles` for
/// open/read/write, `commit` for create/close/rename/unlink):
///
/// | kind | read | write, create | rename | unlink, rmdir | setattr |
/// |---|---|---|---|---|---|
/// | `Root` | lists peers and `.peerfs` | mkdir: a new peer | – | rmdir: removes a peer | – |
/// | `MetaDir`, `MetaFile` | figures made at open | – | – | – | – |
/// | `Peer` | its fixed entries | – | – | – | – |
/// | `Inbox`, `InboxFile` | queued scripts, staging files | a close submits; `.x`/`x~` stage in memory | staging → real name submits | withdraws own queued script | size of a staging file |
/// | `Outbox`, `OutboxFile` | results (a read waits for the run) | – | – | removes a result | – |
/// | `State`, `StateFile` | values; folders | a close stores the value; mkdir (kept until rmdir) | files and folders within `state/` | rm (folders stay), rmdir | size, mtime, mode (kept) |
/// | `Modules`, `ModuleFile` | `x.rhai` modules, staging files | a close stores a module | staging → `x.rhai` stores it | removes a module | – |
/// | `Peers`, `View` | other peers, their inbox/outbox/state | through their inbox | – | – | – |
/// | `ViewState`, `ViewStateFile` | the keys the policy lets this peer read | – | – | – | – |
/// | `Policy`, `Groups` | the text in force | a close validates and applies the whole text | – | – | – |
/// | `Log` | read as it grows | – | – | – | – |
/// | `Tables`, `TableFile` | `<table>.jsonl` (every row), `<table>/<key>.json` (one row) | the owner's close inserts or replaces a row | – | the owner's rm deletes a row | – |
/// | `Reserved` | empty | – | – | – | – |
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Root,
    /// `.peerfs/`
    MetaDir,
    /// `.peerfs/version`, `.peerfs/stats`
    MetaFile(&'static str),
    Peer(String),
    /// `peer/inbox` (target == peer) or `peer/peers/target/inbox`.
    Inbox {
        peer: String,
        target: String,
    },
    InboxFile {
        peer: String,
        target: String,
        name: String,
    },
    /// `peer/outbox` (target == peer) or `peer/peers/target/outbox`.
    Outbox {
        peer: String,
        target: String,
    },
    OutboxFile {
        peer: String,
        target: String,
        name: String,
    },
    /// A folder of the peer's own state ("" is `state/` itself).
    State {
        peer: String,
        dir: String,
    },
    StateFile {
        peer: String,
        key: String,
    },
    Modules(String),
    ModuleFile {
        peer: String,
        name: String,
    },
    /// `peer/peers/`
    Peers(String),
    /// `peer/peers/other/`
    View {
        peer: String,
        other: String,
    },
    /// `peer/peers/other/state/...`: the keys of `other` that `peer` may read.
    ViewState {
        peer: String,
        other: String,
        dir: String,
    },
    ViewStateFile {
        peer: String,
        other: String,
        key: String,
    },
    Policy(String),
    Groups(String),
    /// `schema.toml`: the peer's declared tables.
    Schema(String),
    /// `peer/tables/` (`table` None) or `peer/tables/<table>/` (target ==
    /// peer), or the same under `peer/peers/target/`.
    Tables {
        peer: String,
        target: String,
        table: Option<String>,
    },
    /// `.../tables/<table>.jsonl` (`key` None: every row) or
    /// `.../tables/<table>/<key>.json` (one row).
    TableFile {
        peer: String,
        target: String,
        table: String,
        key: Option<String>,
    },
    Log(String),
    /// `peer/.history/`: one folder per entry of the peer's history.
    History(String),
    /// `.history/<run id>/` or `.history/@<RFC 3339>/` (`at` is the name).
    HistAt {
        peer: String,
        at: String,
    },
    /// `.history/<at>/state/...`: the state as it was then.
    HistState {
        peer: String,
        at: String,
        dir: String,
    },
    HistStateFile {
        peer: String,
        at: String,
        key: String,
    },
    /// `.history/<run id>/changes.json`
    HistChanges {
        peer: String,
        at: String,
    },
    /// `.history/<at>/tables/`: the declared tables as they were then.
    HistTables {
        peer: String,
        at: String,
    },
    /// `.history/<at>/tables/<table>.jsonl`: a table's rows then.
    HistTable {
        peer: String,
        at: String,
        table: String,
    },
    /// `peer/.snapshots/`: one folder per snapshot taken with mkdir.
    Snapshots(String),
    /// `.snapshots/<name>/`
    Snapshot {
        peer: String,
        name: String,
    },
    /// `.snapshots/<name>/state/...`: the state as the snapshot holds it.
    SnapState {
        peer: String,
        name: String,
        dir: String,
    },
    SnapStateFile {
        peer: String,
        name: String,
        key: String,
    },
    /// `.snapshots/<name>/tables/`: the declared tables the snapshot holds.
    SnapTables {
        peer: String,
        name: String,
    },
    /// `.snapshots/<name>/tables/<table>.jsonl`: a table's rows in the snapshot.
    SnapTable {
        peer: String,
        name: String,
        table: String,
    },
    /// An entry of the layout served by no code yet (`layout::Room::Reserved`),
    /// in `peer`'s own folder (target == peer) or its view of `target`.
    Reserved {
        peer: String,
        target: String,
        name: &'static str,
        kind: Kind,
    },
    /// A file an editor writes beside `policy.cedar` and `groups` (see
    /// [`is_edit_name`]): kept in memory; renamed onto one of them, it is
    /// validated and applied as at a close.
    EditFile {
        peer: String,
        name: String,
    },
}

/// The names editors give their files in the folder of the file they edit:
/// `sed -i`'s temporary (`sedXXXXXX`), vim's swap and backup files
/// (`.policy.cedar.swp`, `policy.cedar~`), any dot name.
pub fn is_edit_name(name: &str) -> bool {
    let sed = name.len() == 9
        && name.starts_with("sed")
        && name.bytes().all(|b| b.is_ascii_alphanumeric());
    sed || crate::names::is_staging_name(name)
}

impl Node {
    /// The peer whose view this node belongs to (acting here is acting as it).
    pub fn peer(&self) -> Option<&str> {
        use Node::*;
        match self {
            Root | MetaDir | MetaFile(_) => None,
            Peer(p) | Modules(p) | Peers(p) | Policy(p) | Groups(p) | Schema(p) | Log(p)
            | History(p) | Snapshots(p) => Some(p),
            Snapshot { peer, .. }
            | SnapState { peer, .. }
            | SnapStateFile { peer, .. }
            | SnapTables { peer, .. }
            | SnapTable { peer, .. } => Some(peer),
            HistAt { peer, .. }
            | HistState { peer, .. }
            | HistStateFile { peer, .. }
            | HistChanges { peer, .. }
            | HistTables { peer, .. }
            | HistTable { peer, .. } => Some(peer),
            Inbox { peer, .. }
            | InboxFile { peer, .. }
            | Outbox { peer, .. }
            | OutboxFile { peer, .. }
            | State { peer, .. }
            | StateFile { peer, .. }
            | ModuleFile { peer, .. }
            | View { peer, .. }
            | ViewState { peer, .. }
            | ViewStateFile { peer, .. }
            | EditFile { peer, .. }
            | Tables { peer, .. }
            | TableFile { peer, .. }
            | Reserved { peer, .. } => Some(peer),
        }
    }

    /// The file of `peer`'s folder that shows its `text`.
    pub fn text(peer: &str, text: PolicyText) -> Node {
        match text {
            PolicyText::Policy => Node::Policy(peer.to_string()),
            PolicyText::Groups => Node::Groups(peer.to_string()),
            PolicyText::Schema => Node::Schema(peer.to_string()),
        }
    }

    /// The peer and the policy text a `policy.cedar` or `groups` node shows.
    pub fn as_text(&self) -> Option<(&str, PolicyText)> {
        match self {
            Node::Policy(p) => Some((p, PolicyText::Policy)),
            Node::Groups(p) => Some((p, PolicyText::Groups)),
            Node::Schema(p) => Some((p, PolicyText::Schema)),
            _ => None,
        }
    }

    /// Whether a mkdir in this folder takes long: `.snapshots/NAME` copies the
    /// whole store, so the adapter answers it off its dispatch threads.
    pub fn mkdir_takes_long(&self) -> bool {
        matches!(self, Node::Snapshots(_))
    }

    pub fn is_dir(&self) -> bool {
        use Node::*;
        matches!(
            self,
            Reserved {
                kind: Kind::Dir,
                ..
            } | Root
                | MetaDir
                | Peer(_)
                | Inbox { .. }
                | Outbox { .. }
                | State { .. }
                | Modules(_)
                | Peers(_)
                | View { .. }
                | ViewState { .. }
                | History(_)
                | HistAt { .. }
                | HistState { .. }
                | Snapshots(_)
                | Snapshot { .. }
                | SnapState { .. }
                | SnapTables { .. }
                | Tables { .. }
        )
    }

    /// A row file in the peer's own `tables/<table>/`: the owner writes and
    /// removes it (validated at close).
    pub fn is_own_row_file(&self) -> bool {
        matches!(self, Node::TableFile { peer, target, key: Some(_), .. } if peer == target)
    }

    /// The peer whose state this node shows: its own `state/` or another peer's
    /// readable part of it (`peers/<other>/state/`).
    pub fn state_of(&self) -> Option<&str> {
        use Node::*;
        match self {
            State { peer, .. } | StateFile { peer, .. } => Some(peer),
            ViewState { other, .. } | ViewStateFile { other, .. } => Some(other),
            _ => None,
        }
    }
}

/// The node's path in the mount (`alice/peers/bob/state/shared/welcome`), as
/// people see it: for messages and the log.
impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use Node::*;
        // The names of the layout's entries.
        use crate::layout as l;
        let (inbox, outbox, state) = (l::INBOX.name, l::OUTBOX.name, l::STATE.name);
        let (modules, peers, log) = (l::MODULES.name, l::PEERS.name, l::LOG.name);
        let sub = |f: &mut std::fmt::Formatter<'_>, rest: &str| {
            if rest.is_empty() {
                Ok(())
            } else {
                write!(f, "/{rest}")
            }
        };
        // `peer/` for a peer's own folder, `peer/peers/target/` for a view.
        let at = |f: &mut std::fmt::Formatter<'_>, peer: &str, target: &str| {
            if peer == target {
                write!(f, "{peer}")
            } else {
                write!(f, "{peer}/{peers}/{target}")
            }
        };
        match self {
            Root => write!(f, "the mount's root"),
            MetaDir => write!(f, ".peerfs"),
            MetaFile(n) => write!(f, ".peerfs/{n}"),
            Peer(p) => write!(f, "{p}"),
            Inbox { peer, target } => at(f, peer, target).and_then(|()| write!(f, "/{inbox}")),
            InboxFile { peer, target, name } => {
                at(f, peer, target).and_then(|()| write!(f, "/{inbox}/{name}"))
            }
            Outbox { peer, target } => at(f, peer, target).and_then(|()| write!(f, "/{outbox}")),
            OutboxFile { peer, target, name } => {
                at(f, peer, target).and_then(|()| write!(f, "/{outbox}/{name}"))
            }
            State { peer, dir } => write!(f, "{peer}/{state}").and_then(|()| sub(f, dir)),
            StateFile { peer, key } => write!(f, "{peer}/{state}/{key}"),
            Modules(p) => write!(f, "{p}/{modules}"),
            ModuleFile { peer, name } => write!(f, "{peer}/{modules}/{name}"),
            Peers(p) => write!(f, "{p}/{peers}"),
            View { peer, other } => write!(f, "{peer}/{peers}/{other}"),
            ViewState { peer, other, dir } => {
                write!(f, "{peer}/{peers}/{other}/{state}").and_then(|()| sub(f, dir))
            }
            ViewStateFile { peer, other, key } => {
                write!(f, "{peer}/{peers}/{other}/{state}/{key}")
            }
            Policy(p) => write!(f, "{p}/{}", PolicyText::Policy.file()),
            Groups(p) => write!(f, "{p}/{}", PolicyText::Groups.file()),
            Schema(p) => write!(f, "{p}/{}", PolicyText::Schema.file()),
            Tables {
                peer,
                target,
                table,
            } => {
                let base = if peer == target {
                    format!("{peer}/tables")
                } else {
                    format!("{peer}/peers/{target}/tables")
                };
                match table {
                    None => f.write_str(&base),
                    Some(t) => write!(f, "{base}/{t}"),
                }
            }
            TableFile {
                peer,
                target,
                table,
                key,
            } => {
                let base = if peer == target {
                    format!("{peer}/tables")
                } else {
                    format!("{peer}/peers/{target}/tables")
                };
                match key {
                    None => write!(f, "{base}/{table}.jsonl"),
                    Some(k) => write!(f, "{base}/{table}/{k}.json"),
                }
            }
            Log(p) => write!(f, "{p}/{log}"),
            History(p) => write!(f, "{p}/{}", l::HISTORY.name),
            HistAt { peer, at } => write!(f, "{peer}/{}/{at}", l::HISTORY.name),
            HistState { peer, at, dir } => {
                write!(f, "{peer}/{}/{at}/{state}", l::HISTORY.name).and_then(|()| sub(f, dir))
            }
            HistStateFile { peer, at, key } => {
                write!(f, "{peer}/{}/{at}/{state}/{key}", l::HISTORY.name)
            }
            Snapshots(p) => write!(f, "{p}/{}", l::SNAPSHOTS.name),
            Snapshot { peer, name } => write!(f, "{peer}/{}/{name}", l::SNAPSHOTS.name),
            SnapState { peer, name, dir } => {
                write!(f, "{peer}/{}/{name}/{state}", l::SNAPSHOTS.name).and_then(|()| sub(f, dir))
            }
            SnapStateFile { peer, name, key } => {
                write!(f, "{peer}/{}/{name}/{state}/{key}", l::SNAPSHOTS.name)
            }
            SnapTables { peer, name } => {
                write!(f, "{peer}/{}/{name}/{TABLES}", l::SNAPSHOTS.name)
            }
            SnapTable { peer, name, table } => {
                let snap = l::SNAPSHOTS.name;
                write!(f, "{peer}/{snap}/{name}/{TABLES}/{table}.jsonl")
            }
            HistChanges { peer, at } => {
                write!(f, "{peer}/{}/{at}/{CHANGES}", l::HISTORY.name)
            }
            HistTables { peer, at } => {
                write!(f, "{peer}/{}/{at}/{TABLES}", l::HISTORY.name)
            }
            HistTable { peer, at, table } => {
                write!(f, "{peer}/{}/{at}/{TABLES}/{table}.jsonl", l::HISTORY.name)
            }
            Reserved {
                peer, target, name, ..
            } => at(f, peer, target).and_then(|()| write!(f, "/{name}")),
            EditFile { peer, name } => write!(f, "{peer}/{name}"),
        }
    }
}

impl Node {
    /// Where a node of `peer`'s state is after its folder `from` moved to `to`
    /// (`None`: not under `from`).
    pub fn moved(&self, peer: &str, from: &str, to: &str) -> Option<Node> {
        let re = |k: &str| {
            let rest = k.strip_prefix(from)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
        };
        match self {
            Node::State { peer: p, dir } if p == peer => Some(Node::State {
                peer: p.clone(),
                dir: re(dir)?,
            }),
            Node::StateFile { peer: p, key } if p == peer => Some(Node::StateFile {
                peer: p.clone(),
                key: re(key)?,
            }),
            _ => None,
        }
    }
}

/// The file of a history entry that says what it changed.
pub const CHANGES: &str = "changes.json";
/// The folder of declared tables under `.history/<at>/`.
pub const TABLES: &str = "tables";

/// `dir` + `/` + `name` as a state key ("" + name is name).
pub fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `x.rhai` -> module `x` (module files end in `.rhai`; others are staging files).
pub fn module_name(file: &str) -> Option<&str> {
    let m = file.strip_suffix(".rhai")?;
    if m.is_empty() || is_staging_name(file) {
        return None;
    }
    Some(m)
}

impl Node {
    /// The parent folder of a file node, and the file's name in it (the key of
    /// its staged entry, see `handles`).
    pub fn parent_of(node: &Node) -> Option<(Node, String)> {
        Some(match node {
            Node::InboxFile { peer, target, name } => (
                Node::Inbox {
                    peer: peer.clone(),
                    target: target.clone(),
                },
                name.clone(),
            ),
            Node::StateFile { peer, key } => {
                let (dir, name) = match key.rfind('/') {
                    Some(i) => (key[..i].to_string(), key[i + 1..].to_string()),
                    None => (String::new(), key.clone()),
                };
                (
                    Node::State {
                        peer: peer.clone(),
                        dir,
                    },
                    name,
                )
            }
            Node::ModuleFile { peer, name } => (Node::Modules(peer.clone()), name.clone()),
            Node::EditFile { peer, name } => (Node::Peer(peer.clone()), name.clone()),
            Node::TableFile {
                peer,
                target,
                table,
                key: Some(k),
            } => (
                Node::Tables {
                    peer: peer.clone(),
                    target: target.clone(),
                    table: Some(table.clone()),
                },
                format!("{k}.json"),
            ),
            _ => return None,
        })
    }
}
