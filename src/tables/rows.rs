//! A row as a script or a row file gives it, made whole and checked: an insert
//! gets its key, owner and defaults; an update is a patch over the row before.
//! Every message names the table and the field, what was expected and what came.

use rusqlite::types::Value as Sql;
use serde_json::{Map, Value};

use super::value::{check, default_of, describe, key_sql, to_sql, unknown_field};
use super::{KeyKind, Schema, Table, Type, ID, OWNER};
use crate::error::{err, Result};

/// A whole row: every column by name (`id`, `owner`, the fields).
pub type Row = Map<String, Value>;

/// The table `name` of `s`, or an error that says which exist.
pub fn table<'a>(s: &'a Schema, name: &str) -> Result<&'a Table> {
    s.table(name).ok_or_else(|| {
        let names: Vec<&str> = s.tables.keys().map(String::as_str).collect();
        err!(
            libc::EINVAL,
            "no table {name:?} in schema.toml (declared: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

fn field_err(t: &Table, field: &str, e: crate::error::Error) -> crate::error::Error {
    err!(
        libc::EINVAL,
        "table {}, field {field}: {}",
        t.name,
        e.message
    )
}

/// The row an insert of `values` by `owner` makes: its key (given, or made),
/// its owner, each field given or defaulted, all checked.
pub fn prepare_insert(
    s: &Schema,
    t: &Table,
    owner: &str,
    values: &Row,
    now_ns: i64,
) -> Result<Row> {
    if let Some(k) = unknown_field(t, values) {
        return Err(err!(
            libc::EINVAL,
            "table {}: no field {k:?} (fields: {})",
            t.name,
            field_names(t)
        ));
    }
    if t.owner && values.contains_key(OWNER) {
        return Err(err!(
            libc::EINVAL,
            "table {}, field owner: set by the insert, not given",
            t.name
        ));
    }
    let mut row = Row::new();
    let id = match (values.get(ID), t.key) {
        (Some(v), _) if !v.is_null() => {
            key_sql(t, v)?;
            v.clone()
        }
        (_, KeyKind::Ulid) => Value::String(crate::util::new_id()),
        // The next integer is the store's to choose.
        (_, KeyKind::Int) => Value::Null,
        (_, KeyKind::String) => {
            return Err(err!(
                libc::EINVAL,
                "table {}, field id: expected a string key (the table's key is \"string\"), got nothing",
                t.name
            ))
        }
    };
    row.insert(ID.to_string(), id);
    if t.owner {
        row.insert(OWNER.to_string(), Value::String(owner.to_string()));
    }
    for f in t.fields.values() {
        let v = match values.get(&f.name) {
            Some(v) => v.clone(),
            None => default_of(f, now_ns).ok_or_else(|| {
                err!(
                    libc::EINVAL,
                    "table {}, field {}: expected {}, got nothing (the field is required)",
                    t.name,
                    f.name,
                    super::value::expected(f)
                )
            })?,
        };
        check_field(s, t, &f.name, &v)?;
        row.insert(f.name.clone(), v);
    }
    Ok(row)
}

/// The row `before` with `patch` applied, checked; `id` and `owner` stay.
pub fn apply_patch(s: &Schema, t: &Table, before: &Row, patch: &Row) -> Result<Row> {
    if let Some(k) = unknown_field(t, patch) {
        return Err(err!(
            libc::EINVAL,
            "table {}: no field {k:?} (fields: {})",
            t.name,
            field_names(t)
        ));
    }
    let mut row = before.clone();
    for (k, v) in patch {
        if k == ID || k == OWNER {
            if before.get(k) != Some(v) {
                return Err(err!(
                    libc::EINVAL,
                    "table {}, field {k}: cannot be changed by an update",
                    t.name
                ));
            }
            continue;
        }
        check_field(s, t, k, v)?;
        row.insert(k.clone(), v.clone());
    }
    Ok(row)
}

/// A field's value checked, a ref's against its target's key kind too.
pub fn check_field(s: &Schema, t: &Table, name: &str, v: &Value) -> Result<()> {
    let f = t
        .field(name)
        .ok_or_else(|| err!(libc::EINVAL, "table {}: no field {name:?}", t.name))?;
    check(f, v).map_err(|e| field_err(t, name, e))?;
    if let (Type::Ref(target), false) = (&f.ty, v.is_null()) {
        let tt = table(s, target)?;
        key_sql(tt, v).map_err(|_| {
            err!(
                libc::EINVAL,
                "table {}, field {name}: expected a key of {target} ({}), got {}",
                t.name,
                tt.key.as_str(),
                describe(v)
            )
        })?;
    }
    Ok(())
}

/// The column values of a whole row, in [`super::sql::columns`] order.
pub fn to_columns(t: &Table, row: &Row) -> Result<Vec<Sql>> {
    let mut out = Vec::with_capacity(t.fields.len() + 2);
    out.push(match row.get(ID) {
        Some(Value::Null) | None => Sql::Null,
        Some(v) => key_sql(t, v)?,
    });
    if t.owner {
        out.push(match row.get(OWNER) {
            Some(Value::String(o)) => Sql::Text(o.clone()),
            _ => return Err(err!(libc::EINVAL, "table {}, field owner: missing", t.name)),
        });
    }
    for f in t.fields.values() {
        let v = row.get(&f.name).unwrap_or(&Value::Null);
        out.push(to_sql(f, v).map_err(|e| field_err(t, &f.name, e))?);
    }
    Ok(out)
}

fn field_names(t: &Table) -> String {
    let names: Vec<&str> = t.fields.keys().map(String::as_str).collect();
    names.join(", ")
}
