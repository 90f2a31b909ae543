//! `tables/` (DESIGN §7): `<table>.jsonl` holds every row, one JSON object a
//! line (read-only); `<table>/<key>.json` one row, which the owner may write
//! (validated at close, `Op::PutRow`: `vfs/commit.rs`) and remove
//! (`Op::DeleteRow`). In a peer's own folder every row shows; in its view of
//! another peer (`peers/<other>/tables/`, read-only) only the rows `<other>`'s
//! policy lets it select (a table none of whose rows it may select does not
//! show). Rows are rendered from the store at open (and at stat, for the size).
//! A peer another daemon of a lattice serves shows no tables here.

use super::node::Node;
use super::Vfs;
use crate::error::{err, Result};
use crate::layout::Kind;
use crate::policy::sight::{key_text, render, Sight};
use crate::tables::rows::Row;

impl Vfs {
    fn sight(&self, viewer: &str, owner: &str) -> Result<Sight> {
        if self.core.serves_elsewhere(owner) {
            return Ok(Sight::none());
        }
        Sight::of(self.core.policy(), &*self.core.peer(owner)?, viewer)
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
                if sight.shows(name) {
                    return Ok(Node::Tables {
                        peer: p,
                        target: o,
                        table: Some(name.to_string()),
                    });
                }
                let t = name.strip_suffix(".jsonl").filter(|t| sight.shows(t));
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
                    self.row_of(&sight, target, t, key)?.ok_or_else(missing)?;
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

    /// The row of `table` whose key's text is `key`, if `sight` sees it.
    fn row_of(&self, sight: &Sight, owner: &str, table: &str, key: &str) -> Result<Option<Row>> {
        sight.row(&*self.core.peer(owner)?, table, key)
    }

    /// Every row of `table` that `sight` sees, in key order.
    fn rows_of(&self, sight: &Sight, owner: &str, table: &str) -> Result<Vec<Row>> {
        sight.rows(&*self.core.peer(owner)?, table)
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
            for name in sight.tables() {
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
            .rows_of(&sight, target, t)?
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
                .row_of(&sight, target, table, k)?
                .ok_or_else(|| err!(libc::ENOENT, "no row {k:?} in table {table}"))?],
            None => self.rows_of(&sight, target, table)?,
        };
        render(&rows)
    }
}
