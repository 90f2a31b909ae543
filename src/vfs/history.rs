//! `.history/` of a peer's own folder, read only: one folder per entry of its
//! history, named by run id (ULIDs: `ls` shows them in time order), each with
//! `state/` as right after that run (rendered as `state/` is) and
//! `changes.json`, and `tables/<table>.jsonl` where the peer had tables then
//! (every row as JSON lines, as `tables/<table>.jsonl` shows a live table);
//! `@<RFC 3339>/` (never listed) opens the peer as it was then.
//! Everything is read from the store's reader when asked (`store::history`).

use serde_json::{json, Value};

use super::node::{join_key, CHANGES, TABLES};
use super::*;
use crate::error::{err, Result};
use crate::store::history::{Entry, History, ItemChange, ItemKind, Point, Shown};
use crate::store::Store;
use crate::util::{parse_rfc3339, rfc3339};

/// Values up to this size are shown in `changes.json`; bigger ones by size only.
const SHOWN_VALUES: u64 = 4096;
/// The mode of every folder and file under `.history/` (read only, the owner's).
const DIR_MODE: u16 = 0o500;
const FILE_MODE: u16 = 0o400;

fn history(s: &mut dyn Store) -> Result<&mut dyn History> {
    s.history()
        .ok_or_else(|| err!(libc::ENOENT, "this peer's store keeps no history"))
}

/// The place in the history a name of `.history/` stands for.
fn seq_of(h: &mut dyn History, at: &str) -> Result<i64> {
    match at.strip_prefix('@') {
        Some(t) => h.seq_of(&Point::Time(parse_rfc3339(t)?)),
        None => match h.entry(at)? {
            Some(e) => Ok(e.seq),
            None => Err(err!(libc::ENOENT, "no run {at:?} in the history")),
        },
    }
}

/// A version in `changes.json`: its size and, when small, its value (a row:
/// the row as a JSON object).
fn shown(kind: ItemKind, v: &Option<Shown>) -> Value {
    match v {
        None => Value::Null,
        Some(s) => {
            let mut o = json!({ "size": s.size });
            let bytes = s.value.as_deref();
            let row = (kind == ItemKind::Row)
                .then(|| bytes.and_then(|b| serde_json::from_slice::<Value>(b).ok()))
                .flatten();
            if let Some(row) = row {
                o["row"] = row;
            } else if let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) {
                o["value"] = Value::String(text.to_string());
            }
            o
        }
    }
}

/// The name of a table's file under `tables/`.
fn table_of(name: &str) -> Option<&str> {
    name.strip_suffix(".jsonl").filter(|t| !t.is_empty())
}

/// `changes.json` of an entry.
fn changes_json(e: &Entry, changes: &[ItemChange]) -> Vec<u8> {
    let items: Vec<Value> = changes
        .iter()
        .map(|c| {
            json!({
                "kind": c.kind.as_str(),
                "item": c.item,
                "before": shown(c.kind, &c.before),
                "after": shown(c.kind, &c.after),
            })
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&json!({
        "id": e.head.id,
        "script": e.head.name,
        "caller": e.head.caller,
        "chain": e.head.chain,
        "finished_at": rfc3339(e.at),
        "changes": items,
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out
}

impl Vfs {
    fn with_history<T>(
        &self,
        peer: &str,
        f: impl FnOnce(&mut dyn History) -> Result<T>,
    ) -> Result<T> {
        self.core.peer(peer)?.read(|s| f(history(s)?))
    }

    /// The child `name` of a folder under `.history/`.
    pub(super) fn hist_child(&self, parent: &Node, name: &str) -> Result<Node> {
        let (p, s) = (|x: &str| x.to_string(), |x: &str| x.to_string());
        let missing = || err!(libc::ENOENT, "{name:?} does not exist here");
        match parent {
            Node::History(peer) => {
                self.with_history(peer, |h| seq_of(h, name))?;
                Ok(Node::HistAt {
                    peer: p(peer),
                    at: s(name),
                })
            }
            Node::HistAt { peer, at } if name == crate::layout::STATE.name => Ok(Node::HistState {
                peer: p(peer),
                at: s(at),
                dir: String::new(),
            }),
            Node::HistAt { peer, at } if name == TABLES => {
                if self.hist_tables(peer, at)?.is_empty() {
                    return Err(missing());
                }
                Ok(Node::HistTables {
                    peer: p(peer),
                    at: s(at),
                })
            }
            Node::HistTables { peer, at } => {
                let table = table_of(name).ok_or_else(missing)?;
                if !self.hist_tables(peer, at)?.iter().any(|t| t == table) {
                    return Err(missing());
                }
                Ok(Node::HistTable {
                    peer: p(peer),
                    at: s(at),
                    table: s(table),
                })
            }
            Node::HistAt { peer, at } if name == CHANGES && !at.starts_with('@') => {
                Ok(Node::HistChanges {
                    peer: p(peer),
                    at: s(at),
                })
            }
            Node::HistState { peer, at, dir } => {
                let key = join_key(dir, name);
                crate::names::check_key(&key)?;
                let found = self.with_history(peer, |h| {
                    let seq = seq_of(h, at)?;
                    h.stat_at(seq, &key)
                })?;
                match found {
                    Some(Some(_)) => Ok(Node::HistStateFile {
                        peer: p(peer),
                        at: s(at),
                        key,
                    }),
                    Some(None) => Ok(Node::HistState {
                        peer: p(peer),
                        at: s(at),
                        dir: key,
                    }),
                    None => Err(missing()),
                }
            }
            _ => Err(missing()),
        }
    }

    /// What a folder under `.history/` lists.
    pub(super) fn hist_list(&self, node: &Node) -> Result<Vec<(String, Node, Kind)>> {
        Ok(match node {
            Node::History(peer) => self
                .with_history(peer, |h| h.entries(0, usize::MAX >> 1))?
                .into_iter()
                .map(|e| {
                    let at = e.head.id;
                    let n = Node::HistAt {
                        peer: peer.clone(),
                        at: at.clone(),
                    };
                    (at, n, Kind::Dir)
                })
                .collect(),
            Node::HistAt { peer, at } => {
                let state = Node::HistState {
                    peer: peer.clone(),
                    at: at.clone(),
                    dir: String::new(),
                };
                let mut v = vec![(crate::layout::STATE.name.to_string(), state, Kind::Dir)];
                if !self.hist_tables(peer, at)?.is_empty() {
                    let t = Node::HistTables {
                        peer: peer.clone(),
                        at: at.clone(),
                    };
                    v.push((TABLES.to_string(), t, Kind::Dir));
                }
                if !at.starts_with('@') {
                    let c = Node::HistChanges {
                        peer: peer.clone(),
                        at: at.clone(),
                    };
                    v.push((CHANGES.to_string(), c, Kind::File));
                }
                v
            }
            Node::HistState { peer, at, dir } => self
                .with_history(peer, |h| {
                    let seq = seq_of(h, at)?;
                    h.list_at(seq, dir)
                })?
                .into_iter()
                .map(|e| {
                    let key = join_key(dir, &e.name);
                    let (peer, at) = (peer.clone(), at.clone());
                    if e.is_dir {
                        (e.name, Node::HistState { peer, at, dir: key }, Kind::Dir)
                    } else {
                        (e.name, Node::HistStateFile { peer, at, key }, Kind::File)
                    }
                })
                .collect(),
            Node::HistTables { peer, at } => (self.hist_tables(peer, at)?.into_iter())
                .map(|table| {
                    let n = Node::HistTable {
                        peer: peer.clone(),
                        at: at.clone(),
                        table: table.clone(),
                    };
                    (format!("{table}.jsonl"), n, Kind::File)
                })
                .collect(),
            _ => return Err(err!(libc::ENOTDIR, "not a folder")),
        })
    }

    /// The declared tables of a peer at a name of `.history/`.
    fn hist_tables(&self, peer: &str, at: &str) -> Result<Vec<String>> {
        self.with_history(peer, |h| {
            let seq = seq_of(h, at)?;
            h.tables_at(seq)
        })
    }

    /// The attributes of a node under `.history/` (times: the entry's).
    pub(super) fn hist_attr(&self, node: &Node) -> Result<Attr> {
        match node {
            Node::History(peer) => self.dir_attr(Some(peer), DIR_MODE),
            Node::HistAt { peer, at } => {
                self.with_history(peer, |h| seq_of(h, at))?;
                self.dir_attr(Some(peer), DIR_MODE)
            }
            Node::HistState { peer, at, dir } => {
                if !dir.is_empty() {
                    let found = self.with_history(peer, |h| {
                        let seq = seq_of(h, at)?;
                        h.stat_at(seq, dir)
                    })?;
                    if !matches!(found, Some(None)) {
                        return Err(err!(libc::ENOENT, "no folder {dir:?} then"));
                    }
                }
                self.dir_attr(Some(peer), DIR_MODE)
            }
            Node::HistStateFile { peer, at, key } => {
                let found = self.with_history(peer, |h| {
                    let seq = seq_of(h, at)?;
                    h.stat_at(seq, key)
                })?;
                match found {
                    Some(Some(v)) => self.file_attr(Some(peer), v.size, FILE_MODE, 0),
                    _ => Err(err!(libc::ENOENT, "no state key {key:?} then")),
                }
            }
            Node::HistTables { peer, at } => {
                if self.hist_tables(peer, at)?.is_empty() {
                    return Err(err!(libc::ENOENT, "no tables then"));
                }
                self.dir_attr(Some(peer), DIR_MODE)
            }
            Node::HistChanges { .. } | Node::HistTable { .. } => {
                let n = self.hist_contents(node)?.len() as u64;
                self.file_attr(node.peer(), n, FILE_MODE, 0)
            }
            _ => Err(err!(libc::ENOENT, "not in .history")),
        }
    }

    /// The bytes of a file under `.history/`.
    pub(super) fn hist_contents(&self, node: &Node) -> Result<Vec<u8>> {
        match node {
            Node::HistStateFile { peer, at, key } => self
                .with_history(peer, |h| {
                    let seq = seq_of(h, at)?;
                    h.bytes_at(seq, key)
                })?
                .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?} then")),
            Node::HistChanges { peer, at } => self.with_history(peer, |h| {
                let e = h
                    .entry(at)?
                    .ok_or_else(|| err!(libc::ENOENT, "no run {at:?} in the history"))?;
                let changes = h.changes(e.seq, SHOWN_VALUES)?;
                Ok(changes_json(&e, &changes))
            }),
            Node::HistTable { peer, at, table } => self
                .with_history(peer, |h| {
                    let seq = seq_of(h, at)?;
                    h.table_at(seq, table)
                })?
                .ok_or_else(|| err!(libc::ENOENT, "no table {table:?} then"))
                .and_then(|rows| crate::policy::sight::render(&rows)),
            _ => Err(err!(libc::EISDIR, "not a file")),
        }
    }
}
