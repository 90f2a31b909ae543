//! `tables/` (DESIGN §7): `<table>.jsonl` holds every row, one JSON object a
//! line (read-only); `<table>/<key>.json` one row, which the owner may write
//! (validated at close, `Op::PutRow`: `vfs/commit.rs`) and remove
//! (`Op::DeleteRow`). In a peer's own folder every row shows; in its view of
//! another peer (`peers/<other>/tables/`, read-only) only the rows `<other>`'s
//! policy lets it select (a table none of whose rows it may select does not
//! show). Rows are rendered from the store at open (and at stat, for the size);
//! for a peer another daemon of the lattice serves, they are asked of the
//! owner's worker, which decides with the owner's policy.

use super::node::Node;
use super::Vfs;
use crate::error::{err, Result};
use crate::layout::Kind;
use crate::policy::sight::{key_text, render, Sight};
use crate::tables::rows::Row;

/// Where what a viewer sees of a peer's tables is decided.
enum Seen {
    /// Here, the owner being a peer of this daemon.
    Here(Sight),
    /// At the worker of the owner, a peer another daemon of the lattice serves.
    There,
}

impl Vfs {
    fn sight(&self, viewer: &str, owner: &str) -> Result<Seen> {
        if viewer != owner && self.core.serves_elsewhere(owner) {
            return Ok(Seen::There);
        }
        let p = self.core.peer(owner)?;
        Ok(Seen::Here(Sight::of(self.core.policy(), &p, viewer)?))
    }

    /// The tables that show, in name order.
    fn tables_of(&self, seen: &Seen, viewer: &str, owner: &str) -> Result<Vec<String>> {
        match seen {
            Seen::Here(s) => Ok(s.tables()),
            Seen::There => self.core.remote_tables(owner, viewer),
        }
    }

    fn shows(&self, seen: &Seen, viewer: &str, owner: &str, table: &str) -> Result<bool> {
        match seen {
            Seen::Here(s) => Ok(s.shows(table)),
            Seen::There => Ok(self
                .tables_of(seen, viewer, owner)?
                .iter()
                .any(|t| t == table)),
        }
    }

    /// `name` in `tables/` (`table` None) or in `tables/<table>/`.
    pub(super) fn tables_child(
        &self,
        peer: &str,
        target: &str,
        table: &Option<String>,
        name: &str,
    ) -> Result<Node> {
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        let sight = self.sight(peer, target)?;
        let (p, o) = (peer.to_string(), target.to_string());
        match table {
            None => {
                if self.shows(&sight, peer, target, name)? {
                    return Ok(Node::Tables {
                        peer: p,
                        target: o,
                        table: Some(name.to_string()),
                    });
                }
                let t = name.strip_suffix(".jsonl");
                let t = t.filter(|t| self.shows(&sight, peer, target, t).unwrap_or(false));
                t.map(|t| Node::TableFile {
                    peer: p.clone(),
                    target: o.clone(),
                    table: t.to_string(),
                    key: None,
                })
                .ok_or_else(missing)
            }
            Some(t) => {
                let key = name.strip_suffix(".json").ok_or_else(missing)?;
                let parent = Node::Tables {
                    peer: p.clone(),
                    target: o.clone(),
                    table: table.clone(),
                };
                // A row file the owner is writing shows before its close.
                if self.staged_get(&parent, name).is_none() {
                    (self.row_of(&sight, peer, target, t, key)?).ok_or_else(missing)?;
                }
                Ok(Node::TableFile {
                    peer: p,
                    target: o,
                    table: t.clone(),
                    key: Some(key.to_string()),
                })
            }
        }
    }

    /// The row of `table` whose key's text is `key`, if `viewer` sees it.
    fn row_of(
        &self,
        seen: &Seen,
        viewer: &str,
        owner: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<Row>> {
        match seen {
            Seen::Here(s) => s.row(&*self.core.peer(owner)?, table, key),
            Seen::There => Ok((self.core.remote_rows(owner, viewer, table, Some(key))?)
                .into_iter()
                .next()),
        }
    }

    /// Every row of `table` that `viewer` sees, in key order.
    fn rows_of(&self, seen: &Seen, viewer: &str, owner: &str, table: &str) -> Result<Vec<Row>> {
        match seen {
            Seen::Here(s) => s.rows(&*self.core.peer(owner)?, table),
            Seen::There => self.core.remote_rows(owner, viewer, table, None),
        }
    }

    /// The listing of `tables/` or `tables/<table>/`.
    pub(super) fn list_tables(
        &self,
        peer: &str,
        target: &str,
        table: &Option<String>,
    ) -> Result<Vec<(String, Node, Kind)>> {
        let (p, o) = (peer.to_string(), target.to_string());
        let sight = self.sight(peer, target)?;
        let Some(t) = table else {
            let mut out = Vec::new();
            for name in self.tables_of(&sight, peer, target)? {
                let dir = Node::Tables {
                    peer: p.clone(),
                    target: o.clone(),
                    table: Some(name.clone()),
                };
                out.push((name.clone(), dir, Kind::Dir));
                let file = Node::TableFile {
                    peer: p.clone(),
                    target: o.clone(),
                    table: name.clone(),
                    key: None,
                };
                out.push((format!("{name}.jsonl"), file, Kind::File));
            }
            return Ok(out);
        };
        Ok(self
            .rows_of(&sight, peer, target, t)?
            .into_iter()
            .map(|r| {
                let key = key_text(&r);
                let node = Node::TableFile {
                    peer: p.clone(),
                    target: o.clone(),
                    table: t.clone(),
                    key: Some(key.clone()),
                };
                (format!("{key}.json"), node, Kind::File)
            })
            .collect())
    }

    /// A row file being written, or a row's.
    pub(super) fn table_file_attr(&self, node: &Node) -> Result<super::Attr> {
        if let Some((parent, name)) = Node::parent_of(node) {
            if let Some(s) = self.staged_get(&parent, &name) {
                return Ok(self.staged_attr(&s));
            }
        }
        let Node::TableFile {
            peer,
            target,
            table,
            key,
        } = node
        else {
            return Err(err!(libc::ENOENT, "not a row file"));
        };
        let size = self.table_bytes(peer, target, table, key)?.len() as u64;
        let perm = if peer == target && key.is_some() {
            0o644
        } else {
            0o444
        };
        self.file_attr(Some(peer), size, perm, crate::util::now_ns())
    }

    /// A row file's bytes (one JSON object and a newline), or a table's
    /// `.jsonl` (every row it shows, one a line).
    pub(super) fn table_bytes(
        &self,
        peer: &str,
        target: &str,
        table: &str,
        key: &Option<String>,
    ) -> Result<Vec<u8>> {
        let sight = self.sight(peer, target)?;
        let rows = match key {
            Some(k) => vec![self
                .row_of(&sight, peer, target, table, k)?
                .ok_or_else(|| err!(libc::ENOENT, "no row {k:?} in table {table}"))?],
            None => self.rows_of(&sight, peer, target, table)?,
        };
        render(&rows)
    }
}
