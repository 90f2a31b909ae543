//! Another peer's view, `peer/peers/<other>/`: which other peers a peer sees
//! ([`Vfs::other_peers`]), and the part of `<other>`'s state the policy lets `peer`
//! read: its names ([`Vfs::view_child`]), listings ([`Vfs::view_listing`]),
//! attributes ([`Vfs::view_attr`]) and bytes ([`Vfs::view_bytes`]). Every read of
//! another peer's state through the mount is here. What is readable is decided by
//! `crate::peer::Peer::view_list` and friends, here for a peer of this daemon and
//! at the owner's worker for a peer another daemon of the lattice serves.

use super::*;
use crate::error::err;
use crate::error::Result;
use crate::names::{check_key, check_peer_name};
use crate::store::DirEntry;

impl Vfs {
    /// The peers `peer` sees under `peers/`: every other peer, sorted.
    pub(super) fn other_peers(&self, peer: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .core
            .registry()
            .list()
            .into_iter()
            .map(|(n, _)| n)
            // In a lattice, the peers other daemons serve too.
            .chain(self.core.remote_peers())
            .filter(|n| n != peer)
            .collect();
        out.sort();
        out
    }

    /// Whether `name` is a peer `peer` sees under `peers/`.
    pub(super) fn is_other_peer(&self, peer: &str, name: &str) -> bool {
        name != peer && check_peer_name(name).is_ok() && self.core.knows(name)
    }

    /// `key` of `other` as `peer` may see it: a readable value, a folder holding
    /// one, or `None`. A peer served by another daemon of the lattice is asked
    /// there, and its policy decides there, as it would here.
    fn view_stat(&self, peer: &str, other: &str, key: &str) -> Result<Option<DirEntry>> {
        if self.core.serves_elsewhere(other) {
            return self.core.remote_view_stat(other, peer, key);
        }
        self.core
            .peer(other)?
            .view_stat(key, |k| self.may_read(peer, other, k))
    }

    /// The node `name` is in the folder `dir` of `other`'s state as `peer` sees it:
    /// a readable key, or a folder holding one.
    pub(super) fn view_child(
        &self,
        peer: &str,
        other: &str,
        dir: &str,
        name: &str,
    ) -> Result<Node> {
        let key = join_key(dir, name);
        check_key(&key)?;
        match self.view_stat(peer, other, &key)? {
            Some(e) if e.is_dir => Ok(Node::ViewState {
                peer: peer.to_string(),
                other: other.to_string(),
                dir: key,
            }),
            Some(_) => Ok(Node::ViewStateFile {
                peer: peer.to_string(),
                other: other.to_string(),
                key,
            }),
            None => Err(err!(libc::ENOENT, "{name:?} does not exist here")),
        }
    }

    /// The entries of the folder `dir` of `other`'s state that `peer` may see.
    pub(super) fn view_listing(
        &self,
        peer: &str,
        other: &str,
        dir: &str,
    ) -> Result<Vec<(String, Node, Kind)>> {
        let entries = if self.core.serves_elsewhere(other) {
            self.core.remote_view_list(other, peer, dir)?
        } else if self.read_check.read().unwrap().is_none() {
            Vec::new()
        } else {
            self.core
                .peer(other)?
                .view_list(dir, |k| self.may_read(peer, other, k))?
        };
        Ok(entries
            .into_iter()
            .map(|e| {
                let key = join_key(dir, &e.name);
                let (peer, other) = (peer.to_string(), other.to_string());
                if e.is_dir {
                    let n = Node::ViewState {
                        peer,
                        other,
                        dir: key,
                    };
                    (e.name, n, Kind::Dir)
                } else {
                    (e.name, Node::ViewStateFile { peer, other, key }, Kind::File)
                }
            })
            .collect())
    }

    /// The attributes of `other`'s key as `peer` sees it (read-only).
    pub(super) fn view_attr(&self, peer: &str, other: &str, key: &str) -> Result<Attr> {
        match self.view_stat(peer, other, key)? {
            Some(e) if !e.is_dir => self.file_attr(Some(peer), e.size, 0o444, e.mtime_ns),
            _ => Err(err!(libc::ENOENT, "no readable key {key:?} of {other}")),
        }
    }

    /// The bytes of `other`'s key, if `peer` may read it. Checked here too, not only
    /// at lookup: the kernel may hold the inode from before the policy changed.
    pub(super) fn view_bytes(&self, peer: &str, other: &str, key: &str) -> Result<Vec<u8>> {
        if self.core.serves_elsewhere(other) {
            return self.core.remote_view_bytes(other, peer, key);
        }
        self.core
            .peer(other)?
            .view_bytes(key, |k| self.may_read(peer, other, k))
    }
}
