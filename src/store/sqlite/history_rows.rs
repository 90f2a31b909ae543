//! The history of declared tables in the SQLite backend: each row a change
//! inserts, updates or deletes (cascades and `set_null` included, as
//! `tables.rs` performs them) is an item `<table>/<key>` of the open entry,
//! kept as a copy of the row's JSON; rows set back by undo and restore (puts
//! parents first, deletes children first); a schema change undone by applying
//! the old text again, refused when the change dropped data; and a table as
//! right after an entry.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::params;
use rusqlite::types::Value as Sql;
use serde_json::Value;

use super::history::{Ver, A_COLS, B_COLS, OF_ENTRY};
use super::SqliteStore;
use crate::error::{err, Result};
use crate::store::history::ItemKind;
use crate::store::prelude::*;
use crate::tables::diff::{diff, Change};
use crate::tables::rows::Row;
use crate::tables::sql::quote;
use crate::tables::{KeyKind, Schema, Table, ID, META_KEY, OWNER};

/// The meta key of `policy.cedar` (validated against the schema in force).
const POLICY: &str = "policy";

/// The item of a row: `<table>/<key>` (keys never hold `/`).
pub(super) fn row_item(table: &str, id: &Value) -> String {
    match id {
        Value::String(s) => format!("{table}/{s}"),
        v => format!("{table}/{v}"),
    }
}

/// The JSON of a key held as SQLite holds it.
pub(super) fn key_value(key: &Sql) -> Value {
    match key {
        Sql::Integer(i) => Value::from(*i),
        Sql::Text(s) => Value::String(s.clone()),
        Sql::Real(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        _ => Value::Null,
    }
}

/// The key of a row item for `t`.
fn item_key(t: &Table, text: &str) -> Result<Value> {
    Ok(match t.key {
        KeyKind::Int => Value::from(
            text.parse::<i64>()
                .map_err(|_| err!(libc::EIO, "row item {text:?} of {} has no int key", t.name))?,
        ),
        _ => Value::String(text.to_string()),
    })
}

/// How deep `t` sits under the tables it refers to (0: it refers to none).
fn depth(s: &Schema, t: &str, seen: usize) -> usize {
    let Some(table) = s.table(t) else { return 0 };
    if seen > 64 {
        return seen;
    }
    (table.fields.values())
        .filter_map(|f| f.ty.ref_target())
        .filter(|p| *p != t)
        .map(|p| 1 + depth(s, p, seen + 1))
        .max()
        .unwrap_or(0)
}

/// The tables a schema change from `before` to `after` touched (created,
/// dropped, renamed, changed in fields or key).
fn touched(before: &Schema, after: &Schema) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in diff(before, after).changes {
        match c {
            Change::CreateTable { table }
            | Change::DropTable { table, .. }
            | Change::AddField { table, .. }
            | Change::DropField { table, .. }
            | Change::RenameField { table, .. }
            | Change::ChangeField { table, .. }
            | Change::Rekey { table } => {
                out.insert(table);
            }
            Change::RenameTable { from, to } => {
                out.insert(from);
                out.insert(to);
            }
            Change::Indexes { .. } => {}
        }
    }
    out
}

/// What a schema change dropped with the owner's consent, as `table` or
/// `table.field` (an undo would need that data).
fn dropped(before: &Schema, after: &Schema) -> Vec<String> {
    (diff(before, after).changes.into_iter())
        .filter_map(|c| match c {
            Change::DropTable {
                table,
                confirmed: true,
            } => Some(table),
            Change::DropField {
                table,
                field,
                confirmed: true,
            } => Some(format!("{table}.{field}")),
            Change::ChangeField {
                table,
                field,
                lossy: true,
                confirmed: true,
                ..
            } => Some(format!("{table}.{field}")),
            _ => None,
        })
        .collect()
}

fn parse_schema(text: &[u8]) -> Result<Schema> {
    let utf8 = std::str::from_utf8(text)
        .map_err(|_| err!(libc::EIO, "a kept schema.toml is not UTF-8"))?;
    crate::tables::parse::parse(utf8)
}

impl SqliteStore {
    /// The row `id` of `table` when the open entry must note a change of it.
    pub(super) fn hist_row_before(&mut self, table: &str, id: &Value) -> Result<Option<Row>> {
        if !self.recording() {
            return Ok(None);
        }
        self.tables_get(table, id)
    }

    /// The rows of `t` whose `field` holds `key` (before a `set_null`), when
    /// the open entry must note their changes.
    pub(super) fn hist_rows_holding(
        &mut self,
        t: &Table,
        field: &str,
        key: &Sql,
    ) -> Result<Vec<(Value, Row)>> {
        if !self.recording() {
            return Ok(Vec::new());
        }
        let q = format!(
            "SELECT {} FROM {} WHERE {} = ?1",
            quote(ID),
            quote(&t.sql_name()),
            quote(field)
        );
        let ids: Vec<Sql> = {
            let mut stmt = self.conn.prepare_cached(&q)?;
            let it = stmt.query_map([key], |r| r.get::<_, Sql>(0))?;
            it.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for k in ids {
            let id = key_value(&k);
            if let Some(row) = self.tables_get(&t.name, &id)? {
                out.push((id, row));
            }
        }
        Ok(out)
    }

    /// Notes in the open entry that the row `id` of `table` went from `before`
    /// to what it is now (read back: keys and defaults as stored).
    pub(super) fn hist_row_now(
        &mut self,
        table: &str,
        id: &Value,
        before: Option<&Row>,
    ) -> Result<()> {
        if !self.recording() {
            return Ok(());
        }
        let after = self.tables_get(table, id)?;
        self.hist_row_change(table, id, before, after.as_ref())
    }

    /// Notes a row change in the open entry (copies of the rows' JSON).
    pub(super) fn hist_row_change(
        &mut self,
        table: &str,
        id: &Value,
        before: Option<&Row>,
        after: Option<&Row>,
    ) -> Result<()> {
        if !self.recording() || before == after {
            return Ok(());
        }
        let b = before.map(serde_json::to_vec).transpose()?;
        let a = after.map(serde_json::to_vec).transpose()?;
        let item = row_item(table, id);
        self.hist_note_copy(ItemKind::Row, &item, b.as_deref(), a.as_deref())
    }

    /// Sets items back to kept versions: the others first, then rows (puts
    /// parents first, a put whose ref is not there yet tried again after the
    /// others; then deletes, children first).
    pub(super) fn set_items(&mut self, items: Vec<(ItemKind, String, Option<Ver>)>) -> Result<()> {
        let mut rows = Vec::new();
        for (kind, item, v) in items {
            match kind {
                ItemKind::Row => rows.push((item, v)),
                ItemKind::Meta if item == META_KEY => self.set_schema_to(v)?,
                _ => self.set_item(kind, &item, v)?,
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let s = self.tables_schema()?;
        let level = |item: &str| depth(&s, item.split_once('/').map_or(item, |p| p.0), 0);
        let (mut puts, mut dels): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.1.is_some());
        puts.sort_by_key(|(item, _)| level(item));
        dels.sort_by_key(|(item, _)| std::cmp::Reverse(level(item)));
        while !puts.is_empty() {
            let mut later = Vec::new();
            let mut first_err = None;
            let n = puts.len();
            for (item, v) in puts {
                if let Err(e) = self.set_row(&item, v.clone()) {
                    first_err.get_or_insert(e);
                    later.push((item, v));
                }
            }
            if later.len() == n {
                if dels.is_empty() {
                    return Err(first_err.expect("a put failed"));
                }
                // A row to go may hold a unique value a put needs: deletes first.
                self.delete_rows(std::mem::take(&mut dels))?;
            }
            puts = later;
        }
        self.delete_rows(dels)
    }

    fn delete_rows(&mut self, dels: Vec<(String, Option<Ver>)>) -> Result<()> {
        for (item, v) in dels {
            self.set_row(&item, v)?;
        }
        Ok(())
    }

    /// Sets one row to a kept version (`None`: deleted, with its cascades).
    fn set_row(&mut self, item: &str, to: Option<Ver>) -> Result<()> {
        let (name, key) = item
            .split_once('/')
            .ok_or_else(|| err!(libc::EIO, "a kept row item {item:?} has no table"))?;
        let s = self.tables_schema()?;
        let Some(t) = s.table(name) else {
            return Err(err!(
                libc::ENOENT,
                "table {name} is no longer declared: its row {key} cannot be set back"
            ));
        };
        let id = item_key(t, key)?;
        let Some(v) = to else {
            self.tables_delete(name, &id)?;
            return Ok(());
        };
        let row: Row = serde_json::from_slice(&self.ver_bytes(&v)?)?;
        if self.tables_get(name, &id)?.is_some() {
            self.tables_replace(name, &row)?;
        } else {
            self.tables_insert(name, &row)?;
        }
        Ok(())
    }

    /// Applies a kept schema text again (`None`: no tables). Dropping what the
    /// later schema added needs no `[confirm]`: the undo is the owner's consent.
    fn set_schema_to(&mut self, to: Option<Ver>) -> Result<()> {
        let text = match &to {
            Some(v) => self.ver_bytes(v)?,
            None => Vec::new(),
        };
        let live = self.meta(META_KEY)?.map(|m| m.0).unwrap_or_default();
        if live == text {
            return Ok(());
        }
        self.tables_apply_consented(&text)
            .map_err(|e| err!(e.errno, "schema.toml cannot be set back: {}", e.message))?;
        if to.is_none() {
            self.remove_meta(META_KEY)?;
        }
        Ok(())
    }

    /// The schema texts before and after the entry `seq`, if it changed it.
    fn schema_change(&mut self, seq: i64) -> Result<Option<(Schema, Schema)>> {
        let vers: Option<(Option<Ver>, Option<Ver>)> = rusqlite::OptionalExtension::optional(
            self.conn
                .prepare_cached(&format!(
                    "SELECT {B_COLS}, {A_COLS} FROM hist WHERE {OF_ENTRY} AND kind='meta' AND item=?2"
                ))?
                .query_row(params![seq, META_KEY], |r| {
                    Ok((super::history_read::ver_at(r, 0)?, super::history_read::ver_at(r, 6)?))
                }),
        )?;
        let Some((b, a)) = vers else { return Ok(None) };
        let mut text = |v: Option<Ver>| -> Result<Schema> {
            match v {
                Some(v) => parse_schema(&self.ver_bytes(&v)?),
                None => Ok(Schema::default()),
            }
        };
        Ok(Some((text(b)?, text(a)?)))
    }

    /// Refuses to undo a schema change that dropped data with consent.
    pub(super) fn check_schema_undo(&mut self, seq: i64, run: &str) -> Result<()> {
        if let Some((b, a)) = self.schema_change(seq)? {
            let gone = dropped(&b, &a);
            if !gone.is_empty() {
                return Err(err!(
                    libc::EINVAL,
                    "cannot undo run {run}: its schema change dropped {} (kept under DATA/removed/), \
                     which the undo would need; restore that data by hand",
                    gone.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Later entries (not `cur`) in the way of undoing `seq` beyond the same
    /// items: for a schema change, those that changed rows of the tables it
    /// touched or `policy.cedar` (validated against the schema of its time);
    /// for row changes, later schema changes of their tables; for a policy
    /// change, later schema changes.
    pub(super) fn schema_conflicts(&mut self, seq: i64, cur: i64) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        let policy = POLICY;
        if self.changed_meta(seq, policy)? {
            out.extend(self.later_meta(META_KEY, seq, cur)?);
        }
        if let Some((b, a)) = self.schema_change(seq)? {
            out.extend(self.later_meta(policy, seq, cur)?);
            for t in touched(&b, &a) {
                let lo = format!("{t}/");
                let hi = format!("{t}0");
                let mut stmt = self.conn.prepare_cached(
                    "SELECT DISTINCT seq FROM hist WHERE kind='row' AND item>=?1 AND item<?2
                       AND seq>?3 AND seq<>?4",
                )?;
                let rows = stmt.query_map(params![lo, hi, seq, cur], |r| r.get(0))?;
                for s in rows {
                    out.push(s?);
                }
            }
        }
        let tables: BTreeSet<String> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT item FROM hist WHERE {OF_ENTRY} AND kind='row'"
            ))?;
            let rows = stmt.query_map([seq], |r| r.get::<_, String>(0))?;
            let items: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
            (items.iter())
                .filter_map(|i| i.split_once('/').map(|p| p.0.to_string()))
                .collect()
        };
        if tables.is_empty() {
            return Ok(out);
        }
        for l in self.later_meta(META_KEY, seq, cur)? {
            if let Some((b, a)) = self.schema_change(l)? {
                if touched(&b, &a).iter().any(|t| tables.contains(t)) {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Whether the entry `seq` changed the meta text `key`.
    fn changed_meta(&mut self, seq: i64, key: &str) -> Result<bool> {
        let n: i64 = self
            .conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM hist WHERE {OF_ENTRY} AND kind='meta' AND item=?2"
            ))?
            .query_row(params![seq, key], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// The entries after `seq` (not `cur`) that changed the meta text `key`.
    fn later_meta(&mut self, key: &str, seq: i64, cur: i64) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq FROM hist WHERE kind='meta' AND item=?1 AND seq>?2 AND seq<>?3",
        )?;
        let rows = stmt.query_map(params![key, seq, cur], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether an entry after `seq` (not the open one) changed `schema.toml`.
    pub(super) fn schema_changed_after(&mut self, seq: i64, cur: i64) -> Result<bool> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM hist WHERE kind='meta' AND item=?1 AND seq>?2 AND seq<>?3",
            )?
            .query_row(params![META_KEY, seq, cur], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// The schema as right after the entry `seq`.
    pub(super) fn schema_at(&mut self, seq: i64) -> Result<Schema> {
        let text = match self.later_before(ItemKind::Meta, META_KEY, seq)? {
            Some(Some(v)) => self.ver_bytes(&v)?,
            Some(None) => return Ok(Schema::default()),
            None => self.meta(META_KEY)?.map(|m| m.0).unwrap_or_default(),
        };
        parse_schema(&text)
    }

    /// The rows of `table` as right after the entry `seq`, in key order (`None`:
    /// no such table then).
    pub(super) fn rows_at(&mut self, seq: i64, table: &str) -> Result<Option<Vec<Row>>> {
        let then = self.schema_at(seq)?;
        if then.table(table).is_none() {
            return Ok(None);
        }
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        let live = self.tables_schema()?;
        if let Some(t) = live.table(table) {
            for r in self.all_rows(t)? {
                let id = r.get(ID).cloned().unwrap_or(Value::Null);
                rows.insert(row_item(table, &id), r);
            }
        }
        let changed: Vec<String> = {
            let (lo, hi) = (format!("{table}/"), format!("{table}0"));
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT item FROM hist WHERE kind='row' AND item>=?1 AND item<?2 AND seq>?3",
            )?;
            let it = stmt.query_map(params![lo, hi, seq], |r| r.get(0))?;
            it.collect::<rusqlite::Result<_>>()?
        };
        for item in changed {
            match self.later_before(ItemKind::Row, &item, seq)? {
                Some(Some(v)) => {
                    let row: Row = serde_json::from_slice(&self.ver_bytes(&v)?)?;
                    rows.insert(item, row);
                }
                Some(None) => {
                    rows.remove(&item);
                }
                None => {}
            }
        }
        // Rows read under a later schema show the fields of then only.
        let t = then.table(table).expect("checked above");
        let keep = |c: &str| c == ID || (c == OWNER && t.owner) || t.fields.contains_key(c);
        let mut out: Vec<Row> = rows.into_values().collect();
        for r in &mut out {
            r.retain(|c, _| keep(c));
        }
        out.sort_by(|a, b| key_order(a.get(ID), b.get(ID)));
        Ok(Some(out))
    }
}

/// Keys in the order SQLite sorts them: integers by value, then text.
fn key_order(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    let k = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => (0, n.as_i64().unwrap_or(0), String::new()),
        Some(Value::String(s)) => (1, 0, s.clone()),
        _ => (2, 0, String::new()),
    };
    k(a).cmp(&k(b))
}
