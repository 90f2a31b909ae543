//! `tables/` in a peer's own folder (DESIGN §7), read-only: `<table>.jsonl`
//! holds every row, one JSON object a line; `<table>/<key>.json` one row. Rows
//! are rendered from the store at open (and at stat, for the size).

use super::node::Node;
use super::Vfs;
use crate::error::{err, Result};
use crate::layout::Kind;
use crate::tables::rows::Row;

/// Rows a listing or a `.jsonl` file shows at most (beyond: a script pages).
const MAX_ROWS: usize = 100_000;

impl Vfs {
    /// `name` in `tables/` (`table` None) or in `tables/<table>/`.
    pub(super) fn tables_child(
        &self,
        peer: &str,
        table: &Option<String>,
        name: &str,
    ) -> Result<Node> {
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        let schema = self.core.peer(peer)?.read(|s| s.schema())?;
        let (p, n) = (peer.to_string(), name.to_string());
        match table {
            None => {
                if schema.table(name).is_some() {
                    return Ok(Node::Tables {
                        peer: p,
                        table: Some(n),
                    });
                }
                let t = name
                    .strip_suffix(".jsonl")
                    .filter(|t| schema.table(t).is_some());
                t.map(|t| Node::TableFile {
                    peer: p.clone(),
                    table: t.to_string(),
                    key: None,
                })
                .ok_or_else(missing)
            }
            Some(t) => {
                let key = name.strip_suffix(".json").ok_or_else(missing)?;
                self.row_of(peer, t, key)?.ok_or_else(missing)?;
                Ok(Node::TableFile {
                    peer: p,
                    table: t.clone(),
                    key: Some(key.to_string()),
                })
            }
        }
    }

    /// The row of `table` whose key's text is `key`.
    fn row_of(&self, peer: &str, table: &str, key: &str) -> Result<Option<Row>> {
        let p = self.core.peer(peer)?;
        p.read(|s| {
            let schema = s.schema()?;
            let Some(t) = schema.table(table) else {
                return Ok(None);
            };
            let id = match t.key {
                crate::tables::KeyKind::Int => match key.parse::<i64>() {
                    Ok(i) => serde_json::Value::from(i),
                    Err(_) => return Ok(None),
                },
                _ => serde_json::Value::String(key.to_string()),
            };
            s.row_get(table, &id)
        })
    }

    /// Every row of `table`, in key order.
    fn rows_of(&self, peer: &str, table: &str) -> Result<Vec<Row>> {
        let p = self.core.peer(peer)?;
        p.read(|s| {
            let schema = s.schema()?;
            let t = crate::tables::rows::table(&schema, table)?;
            let mut find = crate::tables::query::find(t, &Default::default(), &Default::default())?;
            find.limit = MAX_ROWS;
            let mut rows = Vec::new();
            s.row_scan(table, &find, None, &mut |r| {
                rows.push(r);
                rows.len() < MAX_ROWS
            })?;
            Ok(rows)
        })
    }

    /// The listing of `tables/` or `tables/<table>/`.
    pub(super) fn list_tables(
        &self,
        peer: &str,
        table: &Option<String>,
    ) -> Result<Vec<(String, Node, Kind)>> {
        let p = peer.to_string();
        let Some(t) = table else {
            let schema = self.core.peer(peer)?.read(|s| s.schema())?;
            let mut out = Vec::new();
            for name in schema.tables.keys() {
                let dir = Node::Tables {
                    peer: p.clone(),
                    table: Some(name.clone()),
                };
                out.push((name.clone(), dir, Kind::Dir));
                let file = Node::TableFile {
                    peer: p.clone(),
                    table: name.clone(),
                    key: None,
                };
                out.push((format!("{name}.jsonl"), file, Kind::File));
            }
            return Ok(out);
        };
        Ok(self
            .rows_of(peer, t)?
            .into_iter()
            .map(|r| {
                let key = key_text(&r);
                let node = Node::TableFile {
                    peer: p.clone(),
                    table: t.clone(),
                    key: Some(key.clone()),
                };
                (format!("{key}.json"), node, Kind::File)
            })
            .collect())
    }

    /// A row file's bytes (one JSON object and a newline), or a table's
    /// `.jsonl` (every row, one a line).
    pub(super) fn table_bytes(
        &self,
        peer: &str,
        table: &str,
        key: &Option<String>,
    ) -> Result<Vec<u8>> {
        let rows = match key {
            Some(k) => vec![self
                .row_of(peer, table, k)?
                .ok_or_else(|| err!(libc::ENOENT, "no row {k:?} in table {table}"))?],
            None => self.rows_of(peer, table)?,
        };
        let mut out = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut out, &r)?;
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// A row's key as its file name (without `.json`).
fn key_text(r: &Row) -> String {
    match r.get(crate::tables::ID) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}
