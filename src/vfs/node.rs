//! What a path on the mount means: one [`Node`] per file or folder.

/// The identity of a file or folder on the mount. The FUSE adapter gives each node
/// an inode number; every rule about what a node allows lives in the vfs.
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
    Log(String),
}

impl Node {
    /// The peer whose view this node belongs to (acting here is acting as it).
    pub fn peer(&self) -> Option<&str> {
        use Node::*;
        match self {
            Root | MetaDir | MetaFile(_) => None,
            Peer(p) | Modules(p) | Peers(p) | Policy(p) | Groups(p) | Log(p) => Some(p),
            Inbox { peer, .. }
            | InboxFile { peer, .. }
            | Outbox { peer, .. }
            | OutboxFile { peer, .. }
            | State { peer, .. }
            | StateFile { peer, .. }
            | ModuleFile { peer, .. }
            | View { peer, .. }
            | ViewState { peer, .. }
            | ViewStateFile { peer, .. } => Some(peer),
        }
    }

    pub fn is_dir(&self) -> bool {
        use Node::*;
        matches!(
            self,
            Root | MetaDir
                | Peer(_)
                | Inbox { .. }
                | Outbox { .. }
                | State { .. }
                | Modules(_)
                | Peers(_)
                | View { .. }
                | ViewState { .. }
        )
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

/// `dir` + `/` + `name` as a state key ("" + name is name).
pub fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
