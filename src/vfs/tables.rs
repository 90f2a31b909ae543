//! `tables/` (DESIGN §7): `<table>.jsonl` holds every row, one JSON object a
//! line (read-only); `<table>/<key>.json` one row, which the owner may write
//! (validated at close, `Op::PutRow`: `vfs/commit.rs`) and remove
//! (`Op::DeleteRow`). In a peer's own folder every row shows; in its view of
//! another peer (`peers/<other>/tables/`, read-only) only the rows `<other>`'s
//! policy lets it select (a table none of whose rows it may select does not
//! show). A row file is rendered from the store at open (and at stat, for the
//! size); a `.jsonl` is served in pages as it is read (`stream`), each page
//! decided with the policy in force then, and shows size 0. For a peer another
//! daemon of the lattice serves, rows are asked of the owner's worker, which
//! decides with the owner's policy (a `.jsonl` whole, at open).

use super::node::Node;
use super::Vfs;
use crate::error::{err, Result};
use crate::layout::Kind;
use crate::policy::sight::{key_text, render, Page, Sight};
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
        // A `.jsonl` served in pages has no size known before it is read:
        // it shows 0, and is read with direct I/O to its end (docs/guide.md).
        let size = if key.is_none() && self.table_streams(node)? {
            0
        } else {
            self.table_bytes(peer, target, table, key)?.len() as u64
        };
        let perm = if peer == target && key.is_some() {
            0o644
        } else {
            0o444
        };
        self.file_attr(Some(peer), size, perm, crate::util::now_ns())
    }

    /// Whether `node` is a table's `.jsonl` served in pages: one of a peer of
    /// this daemon (one another daemon serves is asked whole of its worker).
    /// `ENOENT` if the table does not show.
    pub(super) fn table_streams(&self, node: &Node) -> Result<bool> {
        let Node::TableFile {
            peer,
            target,
            table,
            key: None,
        } = node
        else {
            return Ok(false);
        };
        match self.sight(peer, target)? {
            Seen::There => Ok(false),
            Seen::Here(s) if s.shows(table) => Ok(true),
            Seen::Here(_) => Err(err!(libc::ENOENT, "no table {table:?}")),
        }
    }

    /// The page of a streamed `.jsonl` after the row whose key is `after`,
    /// decided with the policy in force now.
    pub(super) fn table_page(
        &self,
        node: &Node,
        after: Option<&serde_json::Value>,
    ) -> Result<Page> {
        let Node::TableFile {
            peer,
            target,
            table,
            ..
        } = node
        else {
            return Err(err!(libc::EIO, "not a table file"));
        };
        let p = self.core.peer(target)?;
        Sight::of(self.core.policy(), &p, peer)?.page(&p, table, after)
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
