//! `db.<table>.<op>`: the declared tables as scripts reach them (DESIGN §7).
//! `db` is a constant of every run; `db.notes` is a handle on one table
//! (Rhai falls back to `db`'s indexer for the property); its methods insert,
//! get, update, delete, find and count rows. Values are checked against the
//! schema (an error names table, field, expected and got, and a script can
//! catch it); each row is checked against the policy (a row the caller may not
//! select is invisible: absent from `get`, `find` and `count`, and never named
//! by an error); query work counts against `max_operations`.

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use serde_json::Value;

use super::host::{deny, to_json, with_ctx, Access, Ctx, RowAction};
use super::Status;
use crate::tables::rows::{apply_patch, prepare_insert, table, Row};
use crate::tables::{query, Schema, Type};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Operations a row visited by a query costs on top of SQLite's work (its
/// conversion and its policy check).
const ROW_OPS: u64 = 1;

/// `db`: the tables of the peer the script runs at.
#[derive(Debug, Clone, Copy)]
pub struct Db;

/// `db.<name>`: one table.
#[derive(Debug, Clone)]
pub struct TableRef(String);

pub(super) fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Db>("Db");
    engine.register_type_with_name::<TableRef>("Table");
    engine.register_indexer_get(|_: &mut Db, name: &str| -> RhaiResult<TableRef> {
        with_ctx(|c| {
            let s = schema(c)?;
            table(&s, name).map_err(|e| e.message)?;
            Ok(TableRef(name.to_string()))
        })
    });
    engine.register_fn("insert", |t: &mut TableRef, m: Map| insert(&t.0, m));
    engine.register_fn("get", |t: &mut TableRef, id: Dynamic| get(&t.0, id));
    engine.register_fn("update", |t: &mut TableRef, id: Dynamic, m: Map| {
        update(&t.0, id, m)
    });
    engine.register_fn("delete", |t: &mut TableRef, id: Dynamic| delete(&t.0, id));
    engine.register_fn("find", |t: &mut TableRef, f: Map| find(&t.0, f, Map::new()));
    engine.register_fn("find", |t: &mut TableRef, f: Map, o: Map| find(&t.0, f, o));
    engine.register_fn("count", |t: &mut TableRef, f: Map| count(&t.0, f));
    engine.register_fn("count", |t: &mut TableRef| count(&t.0, Map::new()));
}

fn schema(c: &mut Ctx) -> RhaiResult<std::sync::Arc<Schema>> {
    c.store().schema().map_err(|e| storage(c, e))
}

/// A store error: the query's work limit (status `limit`), else a plain
/// error the script can catch.
fn storage(c: &mut Ctx, e: crate::error::Error) -> Box<EvalAltResult> {
    if c.work_over() {
        let msg = format!(
            "max_operations ({}) reached: a query of declared tables took too long",
            c.max_ops
        );
        return c.fatal(Status::Limit, msg);
    }
    e.message.into()
}

fn json_map(m: Map) -> RhaiResult<Row> {
    match to_json(&Dynamic::from_map(m))? {
        Value::Object(o) => Ok(o),
        _ => Err("expected a map".into()),
    }
}

fn to_dyn(row: Row) -> RhaiResult<Dynamic> {
    rhai::serde::to_dynamic(Value::Object(row))
}

/// Runs `f` against the store with query work counted and bounded.
fn counted<T>(c: &mut Ctx, f: impl FnOnce(&mut Ctx) -> crate::error::Result<T>) -> RhaiResult<T> {
    c.start_work();
    let r = f(c);
    c.end_work();
    r.map_err(|e| storage(c, e))
}

/// Whether the caller may see `row` (select).
fn visible(c: &Ctx, access: Access, name: &str, row: &Row) -> bool {
    match access {
        Access::All => true,
        Access::None => false,
        Access::PerRow => c.host().check_row(RowAction::Select, name, row).is_ok(),
    }
}

/// A ref the caller gives must name a row it may see: a row it may not see is
/// "no such row", as if it did not exist.
fn refs_visible(c: &mut Ctx, s: &Schema, name: &str, row: &Row) -> RhaiResult<()> {
    let t = table(s, name).map_err(|e| e.message)?;
    for f in t.fields.values() {
        let Type::Ref(target) = &f.ty else { continue };
        let Some(v) = row.get(&f.name).filter(|v| !v.is_null()) else {
            continue;
        };
        let access = c.host().row_access(RowAction::Select, target);
        if access == Access::All {
            continue;
        }
        let target_row = counted(c, |c| c.store().row_get(target, v))?;
        if !target_row.is_some_and(|r| visible(c, access, target, &r)) {
            return Err(format!(
                "table {name}, field {}: expected the key of a row of {target}, got {} (no such row)",
                f.name,
                crate::tables::value::describe(v)
            )
            .into());
        }
    }
    Ok(())
}

fn insert(name: &str, m: Map) -> RhaiResult<Dynamic> {
    let values = json_map(m)?;
    with_ctx(|c| {
        let s = schema(c)?;
        let t = table(&s, name).map_err(|e| e.message)?;
        if c.host().row_access(RowAction::Insert, name) == Access::None {
            return Err(deny(c, RowAction::Insert, name));
        }
        let owner = c.caller.clone();
        let row =
            prepare_insert(&s, t, &owner, &values, crate::util::now_ns()).map_err(|e| e.message)?;
        c.check_sizes(
            &format!("the row for table {name}"),
            &Value::Object(row.clone()),
        )?;
        if let Err(e) = c.host().check_row(RowAction::Insert, name, &row) {
            return Err(c.fatal(Status::Denied, e.message));
        }
        refs_visible(c, &s, name, &row)?;
        c.store_w()?;
        let id = counted(c, |c| c.store().row_insert(name, &row))?;
        rhai::serde::to_dynamic(id)
    })
}

fn key(id: Dynamic) -> RhaiResult<Value> {
    to_json(&id)
}

/// The row `id` of `name` if the caller may see it.
fn visible_row(c: &mut Ctx, name: &str, id: &Value) -> RhaiResult<Option<Row>> {
    let access = c.host().row_access(RowAction::Select, name);
    if access == Access::None {
        return Ok(None);
    }
    let row = counted(c, |c| c.store().row_get(name, id))?;
    Ok(row.filter(|r| visible(c, access, name, r)))
}

fn get(name: &str, id: Dynamic) -> RhaiResult<Dynamic> {
    let id = key(id)?;
    with_ctx(|c| {
        let s = schema(c)?;
        table(&s, name).map_err(|e| e.message)?;
        match visible_row(c, name, &id)? {
            Some(row) => to_dyn(row),
            None => Ok(Dynamic::UNIT),
        }
    })
}

fn update(name: &str, id: Dynamic, m: Map) -> RhaiResult<bool> {
    let id = key(id)?;
    let patch = json_map(m)?;
    with_ctx(|c| {
        let s = schema(c)?;
        let t = table(&s, name).map_err(|e| e.message)?;
        if c.host().row_access(RowAction::Update, name) == Access::None {
            return Err(deny(c, RowAction::Update, name));
        }
        let Some(before) = visible_row(c, name, &id)? else {
            return Ok(false);
        };
        let after = apply_patch(&s, t, &before, &patch).map_err(|e| e.message)?;
        c.check_sizes(
            &format!("the row for table {name}"),
            &Value::Object(after.clone()),
        )?;
        // Decided on the row as it is and as it would be.
        for row in [&before, &after] {
            if let Err(e) = c.host().check_row(RowAction::Update, name, row) {
                return Err(c.fatal(Status::Denied, e.message));
            }
        }
        refs_visible(c, &s, name, &after)?;
        c.store_w()?;
        counted(c, |c| c.store().row_replace(name, &after))
    })
}

fn delete(name: &str, id: Dynamic) -> RhaiResult<bool> {
    let id = key(id)?;
    with_ctx(|c| {
        let s = schema(c)?;
        table(&s, name).map_err(|e| e.message)?;
        if c.host().row_access(RowAction::Delete, name) == Access::None {
            return Err(deny(c, RowAction::Delete, name));
        }
        let Some(row) = visible_row(c, name, &id)? else {
            return Ok(false);
        };
        if let Err(e) = c.host().check_row(RowAction::Delete, name, &row) {
            return Err(c.fatal(Status::Denied, e.message));
        }
        c.store_w()?;
        counted(c, |c| c.store().row_delete(name, &id))
    })
}

fn find(name: &str, filter: Map, opts: Map) -> RhaiResult<Array> {
    let filter = json_map(filter)?;
    let opts = json_map(opts)?;
    with_ctx(|c| {
        let s = schema(c)?;
        let t = table(&s, name).map_err(|e| e.message)?;
        let f = query::find(t, &filter, &opts).map_err(|e| e.message)?;
        let access = c.host().row_access(RowAction::Select, name);
        if access == Access::None {
            return Ok(Array::new());
        }
        let cursor = match &f.after {
            None => None,
            Some(id) => Some(visible_row(c, name, id)?.ok_or_else(|| {
                format!(
                    "table {name}: after names no row ({}): pass the id of the last row of the page before",
                    crate::tables::value::describe(id)
                )
            })?),
        };
        let mut rows = Vec::new();
        let mut visited = 0u64;
        counted(c, |c| {
            let host = c.host_ref();
            c.store().row_scan(name, &f, cursor.as_ref(), &mut |row| {
                visited += 1;
                let see = match access {
                    Access::All => true,
                    _ => host.check_row(RowAction::Select, name, &row).is_ok(),
                };
                if see {
                    rows.push(row);
                }
                rows.len() < f.limit
            })
        })?;
        c.add_ops(visited * ROW_OPS)?;
        rows.into_iter().map(to_dyn).collect()
    })
}

fn count(name: &str, filter: Map) -> RhaiResult<i64> {
    let filter = json_map(filter)?;
    with_ctx(|c| {
        let s = schema(c)?;
        let t = table(&s, name).map_err(|e| e.message)?;
        let filters = query::filters(t, &filter).map_err(|e| e.message)?;
        match c.host().row_access(RowAction::Select, name) {
            Access::None => Ok(0),
            Access::All => Ok(counted(c, |c| c.store().row_count(name, &filters))? as i64),
            Access::PerRow => {
                let f = query::Find {
                    filters,
                    order: query::Order {
                        col: crate::tables::ID.to_string(),
                        desc: false,
                    },
                    limit: usize::MAX,
                    after: None,
                };
                let (mut n, mut visited) = (0i64, 0u64);
                counted(c, |c| {
                    let host = c.host_ref();
                    c.store().row_scan(name, &f, None, &mut |row| {
                        visited += 1;
                        n += host.check_row(RowAction::Select, name, &row).is_ok() as i64;
                        true
                    })
                })?;
                c.add_ops(visited * ROW_OPS)?;
                Ok(n)
            }
        }
    })
}
