//! Another peer's view, `peer/peers/<other>/`: which other peers a peer sees
//! ([`Vfs::other_peers`]), and the part of `<other>`'s state the policy lets `peer`
//! read: its names ([`Vfs::view_child`]), listings ([`Vfs::view_listing`]),
//! attributes ([`Vfs::view_attr`]) and bytes ([`Vfs::view_bytes`]). Every read of
//! another peer's state through the mount is here.

use std::collections::HashSet;

use super::*;
use crate::error::err;
use crate::error::Result;
use crate::peer::name::{check_key, check_peer_name};

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

    /// The node `name` is in the folder `dir` of `other`'s state as `peer` sees it:
    /// a readable key, or a folder holding one.
    pub(super) fn view_child(
        &self,
        peer: &str,
        other: &str,
        dir: &str,
        name: &str,
    ) -> Result<Node> {
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        let key = join_key(dir, name);
        check_key(&key)?;
        let o = self.core.peer(other)?;
        match o.read(|s| s.stat_key(&key))? {
            Some(Some(_)) if self.may_read(peer, other, &key) => Ok(Node::ViewStateFile {
                peer: peer.to_string(),
                other: other.to_string(),
                key,
            }),
            Some(None) => {
                let keys = o.read(|s| s.keys(&format!("{key}/"), 100_000))?;
                if !keys.iter().any(|k| self.may_read(peer, other, k)) {
                    return Err(missing());
                }
                Ok(Node::ViewState {
                    peer: peer.to_string(),
                    other: other.to_string(),
                    dir: key,
                })
            }
            _ => Err(missing()),
        }
    }

    /// The entries of the folder `dir` of `other`'s state that `peer` may see.
    pub(super) fn view_listing(
        &self,
        peer: &str,
        other: &str,
        dir: &str,
    ) -> Result<Vec<(String, Node, Kind)>> {
        let mut out = Vec::new();
        if self.read_check.read().unwrap().is_none() {
            return Ok(out);
        }
        let o = self.core.peer(other)?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let keys = o.read(|s| s.keys(&prefix, 1_000_000))?;
        let mut seen = HashSet::new();
        for k in keys {
            if !self.may_read(peer, other, &k) {
                continue;
            }
            let rest = &k[prefix.len()..];
            match rest.find('/') {
                Some(i) => {
                    let n = &rest[..i];
                    if seen.insert(n.to_string()) {
                        out.push((
                            n.to_string(),
                            Node::ViewState {
                                peer: peer.to_string(),
                                other: other.to_string(),
                                dir: join_key(dir, n),
                            },
                            Kind::Dir,
                        ));
                    }
                }
                None => out.push((
                    rest.to_string(),
                    Node::ViewStateFile {
                        peer: peer.to_string(),
                        other: other.to_string(),
                        key: k.clone(),
                    },
                    Kind::File,
                )),
            }
        }
        Ok(out)
    }

    /// The attributes of `other`'s key as `peer` sees it (read-only).
    pub(super) fn view_attr(&self, peer: &str, other: &str, key: &str) -> Result<Attr> {
        if !self.may_read(peer, other, key) {
            return Err(err!(libc::ENOENT, "no readable key {key:?} of {other}"));
        }
        let o = self.core.peer(other)?;
        match o.read(|s| s.stat_key(key))? {
            Some(Some(st)) => self.file_attr(Some(peer), st.size, 0o444, st.mtime_ns),
            _ => Err(err!(libc::ENOENT, "no readable key {key:?} of {other}")),
        }
    }

    /// The bytes of `other`'s key, if `peer` may read it. Checked here too, not only
    /// at lookup: the kernel may hold the inode from before the policy changed.
    pub(super) fn view_bytes(&self, peer: &str, other: &str, key: &str) -> Result<Vec<u8>> {
        if !self.may_read(peer, other, key) {
            return Err(err!(libc::ENOENT, "no readable key {key:?} of {other}"));
        }
        let o = self.core.peer(other)?;
        o.read(|s| s.get_bytes(key))?
            .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?}"))
    }
}
