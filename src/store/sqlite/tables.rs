//! Declared tables in the SQLite backend: the schema in force (its text in
//! `meta`, parsed once per text), a schema change applied in the open
//! transaction (tables created, renamed, rebuilt with their rows checked,
//! dropped with consent), rows read and written, referential actions of
//! `ref<t>`, and query work counted with SQLite's progress handler.
//!
//! The connection keeps `foreign_keys` off (a table is rebuilt by copy, drop and
//! rename, which SQLite's own cascades would break); the tables declare their
//! foreign keys and this file enforces them: a ref must name a row, a delete
//! cascades, sets null or is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::types::Value as Sql;
use rusqlite::OptionalExtension;
use serde_json::Value;

use super::SqliteStore;
use crate::error::{err, Result};
use crate::store::prelude::*;
use crate::store::Migrated;
use crate::tables::diff::{diff, lossy, predecessor, Change};
use crate::tables::rows::{table, to_columns, Row};
use crate::tables::sql::{self, quote};
use crate::tables::value::{check, default_of, from_sql, key_json, key_sql};
use crate::tables::{Field, Filter, Find, OnDelete, Schema, Table, ID, META_KEY};

/// SQLite VM instructions per operation counted against a run's limit.
pub const WORK_STEP: i32 = 100;
/// Ids a refusal names at most.
const FIRST_IDS: usize = 3;

#[derive(Default)]
pub(super) struct TablesState {
    /// The schema text in force and its parse.
    cache: Option<(Vec<u8>, Arc<Schema>)>,
    /// Progress-handler calls since the limit was set (each [`WORK_STEP`]).
    work: Arc<AtomicU64>,
}

/// Rows that fail one rule of a change: how many, the first ids.
#[derive(Default)]
struct Failing {
    count: u64,
    ids: Vec<String>,
}

impl Failing {
    fn add(&mut self, id: &Value) {
        self.count += 1;
        if self.ids.len() < FIRST_IDS {
            self.ids.push(match id {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            });
        }
    }
}

fn refused(what: &str, f: &Failing, why: &str) -> crate::error::Error {
    err!(
        libc::EINVAL,
        "{what}: {} row{} {why} (first ids: {})",
        f.count,
        if f.count == 1 { "" } else { "s" },
        f.ids.join(", ")
    )
}

impl SqliteStore {
    /// The schema in force (none declared: no tables).
    pub(super) fn tables_schema(&mut self) -> Result<Arc<Schema>> {
        let text = self.meta(META_KEY)?.map(|m| m.0).unwrap_or_default();
        if let Some((t, s)) = &self.tables.cache {
            if *t == text {
                return Ok(s.clone());
            }
        }
        let utf8 = std::str::from_utf8(&text)
            .map_err(|_| err!(libc::EIO, "the stored schema.toml is not UTF-8"))?;
        let s = Arc::new(crate::tables::parse::parse(utf8)?);
        self.tables.cache = Some((text, s.clone()));
        Ok(s)
    }

    /// Counts query work from now on, interrupting a statement past `limit`
    /// operations (`None`: stop counting).
    pub(super) fn tables_limit_work(&mut self, limit: Option<u64>) {
        self.tables.work.store(0, Ordering::Relaxed);
        match limit {
            Some(limit) => {
                let work = self.tables.work.clone();
                self.conn.progress_handler(
                    WORK_STEP,
                    Some(move || work.fetch_add(1, Ordering::Relaxed) + 1 > limit),
                );
            }
            None => self.conn.progress_handler(0, None::<fn() -> bool>),
        }
    }

    pub(super) fn tables_work(&self) -> u64 {
        self.tables.work.load(Ordering::Relaxed)
    }

    /// Runs `f` under a savepoint of its own: a failure leaves nothing of it,
    /// whatever the caller does with the transaction next (a script that catches
    /// the error of a delete refused halfway through its cascade).
    fn atomic<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        // What the open history entry noted inside goes with a rollback.
        let mark = self.hist_mark();
        match f(self) {
            Ok(v) => {
                self.hist_release(mark);
                self.conn.execute_batch(&format!("RELEASE {name}"))?;
                Ok(v)
            }
            Err(e) => {
                self.hist_undo_to(mark);
                let _ = self
                    .conn
                    .execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
                Err(e)
            }
        }
    }

    /// Applies `text` as the new schema inside the open transaction.
    pub(super) fn tables_apply(&mut self, text: &[u8]) -> Result<Migrated> {
        self.atomic("schema_change", |s| s.migrate(text, false))
    }

    /// [`SqliteStore::tables_apply`] with consent to drop whatever the text
    /// leaves out (an undo puts an older schema back: the owner's consent).
    pub(super) fn tables_apply_consented(&mut self, text: &[u8]) -> Result<Migrated> {
        self.atomic("schema_change", |s| s.migrate(text, true))
    }

    fn migrate(&mut self, text: &[u8], consent: bool) -> Result<Migrated> {
        let utf8 = std::str::from_utf8(text)
            .map_err(|_| err!(libc::EINVAL, "schema.toml is not UTF-8 text"))?;
        let mut new = crate::tables::parse::parse(utf8)?;
        let old = self.tables_schema()?;
        if consent {
            for t in old.tables.values() {
                new.confirm_drop.push(t.name.clone());
                (new.confirm_drop).extend(t.fields.keys().map(|f| format!("{}.{f}", t.name)));
            }
        }
        let plan = diff(&old, &new);
        let mut out = Migrated::default();
        for c in &plan.changes {
            match c {
                Change::Rekey { table } => {
                    return Err(err!(
                        libc::EINVAL,
                        "table {table}: its key kind or owner column cannot change in place: \
                         declare a new table (and drop this one with [confirm] drop)"
                    ))
                }
                Change::DropTable { table, confirmed } => {
                    self.drop_table(&old, table, *confirmed, &mut out)?
                }
                _ => {}
            }
        }
        for c in &plan.changes {
            if let Change::RenameTable { from, to } = c {
                self.conn.execute_batch(&format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote(&crate::tables::sql_table(from)),
                    quote(&crate::tables::sql_table(to))
                ))?;
            }
        }
        for t in new.tables.values() {
            let name = t.sql_name();
            let want = sql::create_table(&new, t, &name);
            match self.table_sql(&name)? {
                None => self.conn.execute_batch(&want)?,
                Some(have) if have != want || plan.rebuilds(&t.name) => {
                    let prev = predecessor(&old, t).unwrap_or(t);
                    self.rebuild(&new, prev, t, &want, &mut out)?;
                }
                Some(_) => {}
            }
            self.sync_indexes(t)?;
        }
        for t in new.tables.values() {
            self.check_refs(&new, t)?;
        }
        self.set_meta(META_KEY, text)?;
        out.summary = summary(&plan.changes);
        Ok(out)
    }

    pub(super) fn table_sql(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT sql FROM sqlite_master WHERE type='table' AND name=?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    fn row_count_all(&self, t: &Table) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM {}", quote(&t.sql_name())),
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn drop_table(
        &mut self,
        old: &Schema,
        name: &str,
        confirmed: bool,
        out: &mut Migrated,
    ) -> Result<()> {
        let t = table(old, name)?;
        let n = self.row_count_all(t)?;
        if n > 0 && !confirmed {
            return Err(err!(
                libc::EINVAL,
                "table {name} holds {n} rows: to drop it, add \"{name}\" to [confirm] drop \
                 (its rows are then kept as JSON lines under DATA/removed/)"
            ));
        }
        if n > 0 {
            let mut lines = String::new();
            for row in self.all_rows(t)? {
                lines.push_str(&serde_json::to_string(&row)?);
                lines.push('\n');
            }
            out.removed.push((name.to_string(), lines));
        }
        self.conn
            .execute_batch(&format!("DROP TABLE {}", quote(&t.sql_name())))?;
        Ok(())
    }

    /// Every row of `t` (read with `t`'s columns, from `t`'s SQLite table or `from`).
    fn all_rows_from(&self, t: &Table, from: &str) -> Result<Vec<Row>> {
        let cols = sql::columns(t);
        let list: Vec<String> = cols.iter().map(|(c, _)| quote(c)).collect();
        let q = format!(
            "SELECT {} FROM {} ORDER BY {}",
            list.join(", "),
            quote(from),
            quote(ID)
        );
        let mut stmt = self.conn.prepare(&q)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_row(&cols, r)?);
        }
        Ok(out)
    }

    pub(super) fn all_rows(&self, t: &Table) -> Result<Vec<Row>> {
        self.all_rows_from(t, &t.sql_name())
    }

    /// Rebuilds `t` (its rows read as `prev` declared them): a new table made,
    /// every row carried over and checked, the old one dropped, the new renamed.
    fn rebuild(
        &mut self,
        new: &Schema,
        prev: &Table,
        t: &Table,
        ddl: &str,
        out: &mut Migrated,
    ) -> Result<()> {
        let name = t.sql_name();
        let temp = format!("{name}__new");
        let rows = self.all_rows_from(prev, &name)?;
        let carried = carry(new, prev, t, rows, out)?;
        self.conn.execute_batch(&sql::create_table(new, t, &temp))?;
        let cols = sql::columns(t);
        let binds: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let names: Vec<String> = cols.iter().map(|(c, _)| quote(c)).collect();
        let ins = format!(
            "INSERT INTO {}({}) VALUES({})",
            quote(&temp),
            names.join(", "),
            binds.join(", ")
        );
        {
            let mut stmt = self.conn.prepare(&ins)?;
            for row in &carried {
                stmt.execute(rusqlite::params_from_iter(to_columns(t, row)?))?;
            }
        }
        self.conn.execute_batch(&format!(
            "DROP TABLE {}; ALTER TABLE {} RENAME TO {}",
            quote(&name),
            quote(&temp),
            quote(&name)
        ))?;
        debug_assert_eq!(self.table_sql(&name)?.as_deref(), Some(ddl));
        Ok(())
    }

    /// Drops the indexes of `t` that are no longer declared, makes the new ones.
    fn sync_indexes(&mut self, t: &Table) -> Result<()> {
        let want = sql::indexes(t);
        let have: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name=?1 AND sql IS NOT NULL",
            )?;
            let it = stmt.query_map([t.sql_name()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            it.collect::<rusqlite::Result<_>>()?
        };
        for h in &have {
            if !want.contains(h) {
                self.conn
                    .execute_batch(&format!("DROP INDEX {}", quote(&h.0)))?;
            }
        }
        for (iname, ddl) in &want {
            if have.iter().any(|(n, s)| n == iname && s == ddl) {
                continue;
            }
            if let Err(e) = self.conn.execute_batch(ddl) {
                return Err(self.unique_refusal(t, iname).unwrap_or_else(|| e.into()));
            }
        }
        Ok(())
    }

    /// Why a unique index could not be made: the rows that share a value.
    fn unique_refusal(&self, t: &Table, iname: &str) -> Option<crate::error::Error> {
        let field = iname.rsplit_once("__u_")?.1;
        let (tn, c, id) = (quote(&t.sql_name()), quote(field), quote(ID));
        let q = format!(
            "SELECT {id} FROM {tn} WHERE {c} IN (SELECT {c} FROM {tn} WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) > 1) ORDER BY {id}"
        );
        let mut stmt = self.conn.prepare(&q).ok()?;
        let mut rows = stmt.query([]).ok()?;
        let mut f = Failing::default();
        while let Ok(Some(r)) = rows.next() {
            f.add(&key_json(r.get_ref(0).ok()?));
        }
        Some(refused(
            &format!("table {}, field {field}", t.name),
            &f,
            "share a value with another, and the field is now unique",
        ))
    }

    /// Every `ref<target>` value of `t` names a row of `target`.
    fn check_refs(&self, s: &Schema, t: &Table) -> Result<()> {
        for f in t.fields.values() {
            let Some(target) = f.ty.ref_target() else {
                continue;
            };
            let tt = table(s, target)?;
            let (tn, c, id) = (quote(&t.sql_name()), quote(&f.name), quote(ID));
            let q = format!(
                "SELECT {id} FROM {tn} WHERE {c} IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM {} p WHERE p.{id} = {tn}.{c}) ORDER BY {id}",
                quote(&tt.sql_name())
            );
            let mut stmt = self.conn.prepare(&q)?;
            let mut rows = stmt.query([])?;
            let mut bad = Failing::default();
            while let Some(r) = rows.next()? {
                bad.add(&key_json(r.get_ref(0)?));
            }
            if bad.count > 0 {
                return Err(refused(
                    &format!("table {}, field {}", t.name, f.name),
                    &bad,
                    &format!("refer to no row of {target}"),
                ));
            }
        }
        Ok(())
    }
}

/// Reads one row of `cols` (JSON by column type).
fn read_row(cols: &[(String, crate::tables::Type)], r: &rusqlite::Row) -> Result<Row> {
    let mut row = Row::new();
    for (i, (c, ty)) in cols.iter().enumerate() {
        row.insert(c.clone(), from_sql(ty, r.get_ref(i)?));
    }
    Ok(row)
}

/// Why rows fail a change, as the refusal words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fail {
    /// A value the new type cannot hold, without consent to drop it.
    Lossy,
    /// No value for a field that needs one.
    Required,
    /// A value in a field dropped without consent.
    Dropped,
    /// A value that does not meet the new definition.
    Tighter,
}

/// Rows of one table carried from its old definition to its new one.
struct Carry<'a> {
    new: &'a Schema,
    t: &'a Table,
    /// Each new field and the old field it continues.
    pairs: Vec<(&'a Field, Option<&'a Field>)>,
    /// Old fields no longer declared.
    dropped: Vec<&'a Field>,
    now: i64,
    failing: BTreeMap<(String, Fail), Failing>,
    /// Values dropped with consent, by field: JSON lines.
    kept: BTreeMap<String, String>,
}

impl<'a> Carry<'a> {
    fn new(new: &'a Schema, prev: &'a Table, t: &'a Table) -> Carry<'a> {
        let pairs: Vec<_> = (t.fields.values())
            .map(|f| {
                let p = (f.renamed_from.as_deref().and_then(|r| prev.fields.get(r)))
                    .or_else(|| prev.fields.get(&f.name));
                (f, p)
            })
            .collect();
        let dropped = (prev.fields.values())
            .filter(|p| {
                !pairs
                    .iter()
                    .any(|(_, q)| q.is_some_and(|q| q.name == p.name))
            })
            .collect();
        Carry {
            new,
            t,
            pairs,
            dropped,
            now: crate::util::now_ns(),
            failing: BTreeMap::new(),
            kept: BTreeMap::new(),
        }
    }

    fn confirms(&self, field: &str) -> bool {
        self.new.confirms(&format!("{}.{field}", self.t.name))
    }

    fn fail(&mut self, field: &str, why: Fail, id: &Value) {
        self.failing
            .entry((field.to_string(), why))
            .or_default()
            .add(id);
    }

    /// The value of new field `f` (continuing `p`) in the row `id` that held
    /// `before`; `None` when the row fails the change.
    fn value(&mut self, f: &Field, p: Option<&Field>, before: Value, id: &Value) -> Option<Value> {
        let Some(p) = p else {
            let d = default_of(f, self.now);
            if d.is_none() {
                self.fail(&f.name, Fail::Required, id);
            }
            return d;
        };
        if check(f, &before).is_ok() {
            return Some(before);
        }
        if before.is_null() {
            // Made non-null: the default where there was none, if it has one.
            let d = default_of(f, self.now);
            if d.is_none() {
                self.fail(&f.name, Fail::Tighter, id);
            }
            return d;
        }
        if !lossy(&p.ty, &f.ty) {
            self.fail(&f.name, Fail::Tighter, id);
            return None;
        }
        if !self.confirms(&f.name) {
            self.fail(&f.name, Fail::Lossy, id);
            return None;
        }
        keep_value(&mut self.kept, &f.name, id, &before);
        let d = default_of(f, self.now);
        if d.is_none() {
            self.fail(&f.name, Fail::Required, id);
        }
        d
    }

    /// One old row as a row of the new table (`None`: it fails the change).
    fn row(&mut self, old: Row) -> Option<Row> {
        let id = old.get(ID).cloned().unwrap_or(Value::Null);
        let mut row = Row::new();
        row.insert(ID.into(), id.clone());
        if let Some(o) = old.get(crate::tables::OWNER) {
            row.insert(crate::tables::OWNER.into(), o.clone());
        }
        let mut whole = true;
        for (f, p) in self.pairs.clone() {
            let before = p
                .and_then(|p| old.get(&p.name))
                .cloned()
                .unwrap_or(Value::Null);
            match self.value(f, p, before, &id) {
                Some(v) => {
                    row.insert(f.name.clone(), v);
                }
                None => whole = false,
            }
        }
        for p in self.dropped.clone() {
            let v = old.get(&p.name).cloned().unwrap_or(Value::Null);
            if v.is_null() {
                continue;
            }
            if self.confirms(&p.name) {
                keep_value(&mut self.kept, &p.name, &id, &v);
            } else {
                self.fail(&p.name, Fail::Dropped, &id);
            }
        }
        whole.then_some(row)
    }

    /// The refusal of the first rule rows fail, if any.
    fn refusal(&self) -> Option<crate::error::Error> {
        let ((field, why), f) = self.failing.iter().next()?;
        let t = &self.t.name;
        let what = format!("table {t}, field {field}");
        let why = match why {
            Fail::Lossy => format!(
                "hold values that the new type cannot: to drop them, add \"{t}.{field}\" to [confirm] drop"
            ),
            Fail::Required => {
                "have no value for it: give it a default or make it nullable (type \"T?\")".to_string()
            }
            Fail::Dropped => format!(
                "hold a value: to drop the field, add \"{t}.{field}\" to [confirm] drop (the values are then kept under DATA/removed/)"
            ),
            Fail::Tighter => format!(
                "do not meet the new definition ({})",
                self.t.field(field).map(crate::tables::value::expected).unwrap_or_default()
            ),
        };
        Some(refused(&what, f, &why))
    }
}

/// The rows of `prev` as rows of `t`: each field carried over if its value is
/// valid under the new definition, defaulted if new (or null and made
/// non-null), dropped (and kept for DATA/removed/) with consent. The first rule
/// that rows fail refuses the change.
fn carry(
    new: &Schema,
    prev: &Table,
    t: &Table,
    rows: Vec<Row>,
    out: &mut Migrated,
) -> Result<Vec<Row>> {
    let mut c = Carry::new(new, prev, t);
    let result: Vec<Row> = rows.into_iter().filter_map(|r| c.row(r)).collect();
    if let Some(e) = c.refusal() {
        return Err(e);
    }
    for (field, lines) in c.kept {
        out.removed.push((format!("{}.{field}", t.name), lines));
    }
    Ok(result)
}

/// One dropped value as a JSON line `{"id": .., "<field>": ..}`.
fn keep_value(kept: &mut BTreeMap<String, String>, field: &str, id: &Value, v: &Value) {
    let mut m = serde_json::Map::new();
    m.insert(ID.into(), id.clone());
    m.insert(field.to_string(), v.clone());
    let line = kept.entry(field.to_string()).or_default();
    line.push_str(&Value::Object(m).to_string());
    line.push('\n');
}

/// The log's words for a plan.
fn summary(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no change".to_string();
    }
    let words: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::CreateTable { table } => format!("+table {table}"),
            Change::DropTable { table, .. } => format!("-table {table}"),
            Change::RenameTable { from, to } => format!("table {from}->{to}"),
            Change::AddField { table, field } => format!("+{table}.{field}"),
            Change::DropField { table, field, .. } => format!("-{table}.{field}"),
            Change::RenameField { table, from, to } => format!("{table}.{from}->{to}"),
            Change::ChangeField { table, field, .. } => format!("~{table}.{field}"),
            Change::Rekey { table } => format!("rekey {table}"),
            Change::Indexes { table } => format!("indexes of {table}"),
        })
        .collect();
    words.join(", ")
}

// Rows.
impl SqliteStore {
    fn key_of(t: &Table, id: &Value) -> Result<Sql> {
        key_sql(t, id)
    }

    pub(super) fn tables_get(&mut self, name: &str, id: &Value) -> Result<Option<Row>> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        let Ok(key) = Self::key_of(t, id) else {
            return Ok(None);
        };
        let cols = sql::columns(t);
        let list: Vec<String> = cols.iter().map(|(c, _)| quote(c)).collect();
        let q = format!(
            "SELECT {} FROM {} WHERE {} = ?1",
            list.join(", "),
            quote(&t.sql_name()),
            quote(ID)
        );
        let mut stmt = self.conn.prepare_cached(&q)?;
        let mut rows = stmt.query([key])?;
        match rows.next()? {
            Some(r) => Ok(Some(read_row(&cols, r)?)),
            None => Ok(None),
        }
    }

    /// Inserts a prepared row; its key (made by SQLite for an int key left out).
    pub(super) fn tables_insert(&mut self, name: &str, row: &Row) -> Result<Value> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        self.refs_exist(&s, t, row)?;
        let cols = sql::columns(t);
        let names: Vec<String> = cols.iter().map(|(c, _)| quote(c)).collect();
        let binds: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let q = format!(
            "INSERT INTO {}({}) VALUES({})",
            quote(&t.sql_name()),
            names.join(", "),
            binds.join(", ")
        );
        let values = to_columns(t, row)?;
        self.conn
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(values))
            .map_err(|e| clash(t, e))?;
        let id = match row.get(ID) {
            Some(Value::Null) | None => Value::from(self.conn.last_insert_rowid()),
            Some(v) => v.clone(),
        };
        self.hist_row_now(name, &id, None)?;
        Ok(id)
    }

    /// Replaces the row with `row`'s key by `row`; false if there is none.
    pub(super) fn tables_replace(&mut self, name: &str, row: &Row) -> Result<bool> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        self.refs_exist(&s, t, row)?;
        let cols = sql::columns(t);
        let sets: Vec<String> = (cols.iter().enumerate().skip(1))
            .map(|(i, (c, _))| format!("{} = ?{}", quote(c), i + 1))
            .collect();
        let q = format!(
            "UPDATE {} SET {} WHERE {} = ?1",
            quote(&t.sql_name()),
            if sets.is_empty() {
                format!("{0} = {0}", quote(ID))
            } else {
                sets.join(", ")
            },
            quote(ID)
        );
        let values = to_columns(t, row)?;
        let id = row.get(ID).cloned().unwrap_or(Value::Null);
        let before = self.hist_row_before(name, &id)?;
        let n = self
            .conn
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(values))
            .map_err(|e| clash(t, e))?;
        if n > 0 {
            self.hist_row_now(name, &id, before.as_ref())?;
        }
        Ok(n > 0)
    }

    /// A ref must name a row of its table.
    fn refs_exist(&self, s: &Schema, t: &Table, row: &Row) -> Result<()> {
        for f in t.fields.values() {
            let (Some(target), Some(v)) = (f.ty.ref_target(), row.get(&f.name)) else {
                continue;
            };
            if v.is_null() {
                continue;
            }
            let tt = table(s, target)?;
            let q = format!(
                "SELECT 1 FROM {} WHERE {} = ?1",
                quote(&tt.sql_name()),
                quote(ID)
            );
            let found = self
                .conn
                .prepare_cached(&q)?
                .query_row([key_sql(tt, v)?], |_| Ok(()))
                .optional()?;
            if found.is_none() {
                return Err(err!(
                    libc::EINVAL,
                    "table {}, field {}: expected the key of a row of {target}, got {} (no such row)",
                    t.name,
                    f.name,
                    crate::tables::value::describe(v)
                ));
            }
        }
        Ok(())
    }

    /// Deletes a row, with the referential actions of the refs to it; false if
    /// there is no such row. `EBUSY` when a `restrict` ref holds it.
    pub(super) fn tables_delete(&mut self, name: &str, id: &Value) -> Result<bool> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        let Ok(key) = Self::key_of(t, id) else {
            return Ok(false);
        };
        self.atomic("row_delete", |st| st.delete_key(&s, t, key, 0))
    }

    fn delete_key(&mut self, s: &Schema, t: &Table, key: Sql, depth: usize) -> Result<bool> {
        if depth > 64 {
            return Err(err!(
                libc::ELOOP,
                "table {}: cascading deletes go more than 64 tables deep",
                t.name
            ));
        }
        for (child, f) in s.refs_to(&t.name) {
            let (ct, c, id) = (quote(&child.sql_name()), quote(&f.name), quote(ID));
            match f.on_delete {
                OnDelete::Restrict => {
                    let q = format!("SELECT 1 FROM {ct} WHERE {c} = ?1 LIMIT 1");
                    let held = self
                        .conn
                        .prepare_cached(&q)?
                        .query_row([&key], |_| Ok(()))
                        .optional()?;
                    if held.is_some() {
                        // Which row holds it is not said: the caller may not see it.
                        return Err(err!(
                            libc::EBUSY,
                            "table {}: the row is referred to by {}.{} (on_delete = \"restrict\")",
                            t.name,
                            child.name,
                            f.name
                        ));
                    }
                }
                OnDelete::SetNull => {
                    let held = self.hist_rows_holding(child, &f.name, &key)?;
                    let q = format!("UPDATE {ct} SET {c} = NULL WHERE {c} = ?1");
                    self.conn.prepare_cached(&q)?.execute([&key])?;
                    for (id, before) in held {
                        self.hist_row_now(&child.name, &id, Some(&before))?;
                    }
                }
                OnDelete::Cascade => {
                    let q = format!("SELECT {id} FROM {ct} WHERE {c} = ?1");
                    let keys: Vec<Sql> = {
                        let mut stmt = self.conn.prepare_cached(&q)?;
                        let it = stmt.query_map([&key], |r| r.get::<_, Sql>(0))?;
                        it.collect::<rusqlite::Result<_>>()?
                    };
                    for k in keys {
                        self.delete_key(s, child, k, depth + 1)?;
                    }
                }
            }
        }
        let id = super::history_rows::key_value(&key);
        let before = self.hist_row_before(&t.name, &id)?;
        let q = format!(
            "DELETE FROM {} WHERE {} = ?1",
            quote(&t.sql_name()),
            quote(ID)
        );
        let gone = self.conn.prepare_cached(&q)?.execute([&key])? > 0;
        if gone {
            self.hist_row_change(&t.name, &id, before.as_ref(), None)?;
        }
        Ok(gone)
    }

    /// Visits the rows of a find in order from after `cursor` (a row of the
    /// table) until `visit` says stop.
    pub(super) fn tables_scan(
        &mut self,
        name: &str,
        find: &Find,
        cursor: Option<&Row>,
        visit: &mut dyn FnMut(Row) -> bool,
    ) -> Result<()> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        let cursor = match cursor {
            None => None,
            Some(row) => {
                let ty = t
                    .column_type(&find.order.col)
                    .unwrap_or(crate::tables::Type::String);
                let v = row.get(&find.order.col).unwrap_or(&Value::Null);
                let v0 = crate::tables::value::compare_sql(&ty, v).unwrap_or(Sql::Null);
                Some((v0, key_sql(t, row.get(ID).unwrap_or(&Value::Null))?))
            }
        };
        let st = sql::select(t, &find.filters, &find.order, cursor);
        let cols = sql::columns(t);
        let mut stmt = self.conn.prepare_cached(&st.sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(st.params))?;
        while let Some(r) = rows.next()? {
            if !visit(read_row(&cols, r)?) {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn tables_count(&mut self, name: &str, filters: &[Filter]) -> Result<u64> {
        let s = self.tables_schema()?;
        let t = table(&s, name)?;
        let st = sql::count(t, filters);
        let n: i64 = self
            .conn
            .prepare_cached(&st.sql)?
            .query_row(rusqlite::params_from_iter(st.params), |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// A unique or key clash as `EEXIST` naming the field (never the other row).
fn clash(t: &Table, e: rusqlite::Error) -> crate::error::Error {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            let col = msg.rsplit('.').next().unwrap_or("id");
            return err!(
                libc::EEXIST,
                "table {}, field {col}: another row has this value (the field is unique)",
                t.name
            );
        }
    }
    e.into()
}
