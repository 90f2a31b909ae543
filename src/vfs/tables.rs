//! `tables/` (DESIGN §7): `<table>.jsonl` holds every row, one JSON object a
//! line (read-only); `<table>/<key>.json` one row, which the owner may write
//! (validated at close, `Op::PutRow`: `vfs/commit.rs`) and remove
//! (`Op::DeleteRow`). In a peer's own folder every row shows; in its view of
//! another peer (`peers/<other>/tables/`, read-only) only the rows `<other>`'s
//! policy lets it select (a table none of whose rows it may select does not
//! show). Rows are rendered from the store at open (and at stat, for the size).
//! A peer another daemon of a lattice serves shows no tables here.

use std::sync::Arc;

use super::node::Node;
use super::Vfs;
use crate::error::{err, Result};
use crate::layout::Kind;
use crate::policy::{PolicyState, RowAsk, RowRule};
use crate::script::{Access, RowAction};
use crate::tables::rows::Row;
use crate::tables::Schema;

/// Rows a listing or a `.jsonl` file shows at most (beyond: a script pages).
const MAX_ROWS: usize = 100_000;

/// What `viewer` may see of `owner`'s tables.
enum Sight {
    /// The owner: everything.
    All(Arc<Schema>),
    /// Another peer: per table, as the owner's policy decides.
    Policy(Arc<PolicyState>, String),
}

impl Sight {
    fn schema(&self) -> &Schema {
        match self {
            Sight::All(s) => s,
            Sight::Policy(st, _) => &st.tables,
        }
    }

    /// The rule for selecting rows of `table` (`None`: every row shows).
    fn rule(&self, table: &str) -> Option<RowRule> {
        let Sight::Policy(st, viewer) = self else {
            return None;
        };
        let groups = st.groups.groups_of(viewer);
        let params = serde_json::json!({});
        let ask = RowAsk {
            caller: viewer,
            groups: &groups,
            script: "",
            params: &params,
            chain: &[],
        };
        Some(st.policy.row_rule(&ask, RowAction::Select, table))
    }

    /// Whether `table` shows at all.
    fn shows(&self, table: &str) -> bool {
        self.schema().table(table).is_some()
            && self.rule(table).is_none_or(|r| r.access != Access::None)
    }
}

fn sees(rule: &Option<RowRule>, schema: &Schema, row: &Row) -> bool {
    rule.as_ref().is_none_or(|r| r.decide(schema, row).is_ok())
}

impl Vfs {
    fn sight(&self, viewer: &str, owner: &str) -> Result<Sight> {
        if self.core.serves_elsewhere(owner) {
            return Ok(Sight::All(Arc::default()));
        }
        let p = self.core.peer(owner)?;
        if viewer == owner {
            return Ok(Sight::All(p.read(|s| s.schema())?));
        }
        Ok(Sight::Policy(
            self.core.policy().state(&p)?,
            viewer.to_string(),
        ))
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
        let Some(t) = sight.schema().table(table) else {
            return Ok(None);
        };
        let id = match t.key {
            crate::tables::KeyKind::Int => match key.parse::<i64>() {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => return Ok(None),
            },
            _ => serde_json::Value::String(key.to_string()),
        };
        let row = self.core.peer(owner)?.read(|s| s.row_get(table, &id))?;
        let rule = sight.rule(table);
        Ok(row.filter(|r| sees(&rule, sight.schema(), r)))
    }

    /// Every row of `table` that `sight` sees, in key order.
    fn rows_of(&self, sight: &Sight, owner: &str, table: &str) -> Result<Vec<Row>> {
        if !sight.shows(table) {
            return Err(err!(libc::ENOENT, "no table {table:?}"));
        }
        let rule = sight.rule(table);
        let schema = sight.schema();
        self.core.peer(owner)?.read(|s| {
            let t = crate::tables::rows::table(schema, table)?;
            let mut find = crate::tables::query::find(t, &Default::default(), &Default::default())?;
            find.limit = MAX_ROWS;
            let mut rows = Vec::new();
            s.row_scan(table, &find, None, &mut |r| {
                if sees(&rule, schema, &r) {
                    rows.push(r);
                }
                rows.len() < MAX_ROWS
            })?;
            Ok(rows)
        })
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
            for name in sight.schema().tables.keys().filter(|n| sight.shows(n)) {
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
