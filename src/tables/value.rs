//! A row's values against their declared types: checked (with messages naming
//! what was expected and what came), turned into the SQLite value a column holds
//! and back into JSON. Keys too: what a row's `id` may be for each key kind.

use rusqlite::types::{Value as Sql, ValueRef};
use serde_json::{Map, Value};

use super::{Bound, Field, FieldDefault, KeyKind, Table, Type};
use crate::error::{err, Result};

/// Longest string key (a row file's name on the mount: a path segment).
pub const MAX_STRING_KEY: usize = 255;

/// A short description of a value for messages: `int 5`, `string "ab…"`.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("int {n}"),
        Value::Number(n) => format!("float {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("string {head:?}… ({} characters)", s.chars().count())
        }
        Value::String(s) => format!("string {s:?}"),
        Value::Array(a) => format!("a list of {} elements", a.len()),
        Value::Object(_) => "a map".to_string(),
    }
}

/// What a field expects, for messages: `string of at most 200 characters`.
pub fn expected(f: &Field) -> String {
    let mut s = f.ty.to_string();
    if let Type::Datetime = f.ty {
        s.push_str(" (RFC 3339 text such as 2026-11-26T11:00:00Z)");
    }
    let unit = match f.ty {
        Type::String => " characters",
        Type::List(_) => " elements",
        _ => "",
    };
    let of = matches!(f.ty, Type::String | Type::List(_));
    match (f.min, f.max) {
        (Some(lo), Some(hi)) if of => s.push_str(&format!(" of {lo} to {hi}{unit}")),
        (Some(lo), Some(hi)) => s.push_str(&format!(" from {lo} to {hi}")),
        (Some(lo), None) if of => s.push_str(&format!(" of at least {lo}{unit}")),
        (Some(lo), None) => s.push_str(&format!(" of at least {lo}")),
        (None, Some(hi)) if of => s.push_str(&format!(" of at most {hi}{unit}")),
        (None, Some(hi)) => s.push_str(&format!(" of at most {hi}")),
        (None, None) => {}
    }
    if f.nullable {
        s.push_str(" or null");
    }
    s
}

/// `Ok` when `v` is a value of field `f` (type, nullability, bounds).
pub fn check(f: &Field, v: &Value) -> Result<()> {
    if is_valid(f, v) {
        Ok(())
    } else {
        Err(err!(
            libc::EINVAL,
            "expected {}, got {}",
            expected(f),
            describe(v)
        ))
    }
}

fn is_valid(f: &Field, v: &Value) -> bool {
    if v.is_null() {
        return f.nullable;
    }
    type_ok(&f.ty, v) && bounds_ok(f, v)
}

fn type_ok(ty: &Type, v: &Value) -> bool {
    match (ty, v) {
        (Type::String, Value::String(_)) => true,
        (Type::Int, Value::Number(n)) => n.is_i64(),
        // An integer is a float too; JSON has no NaN or infinity.
        (Type::Float, Value::Number(n)) => n.as_f64().is_some_and(f64::is_finite),
        (Type::Bool, Value::Bool(_)) => true,
        (Type::Datetime, Value::String(s)) => crate::util::parse_rfc3339(s).is_ok(),
        (Type::List(t), Value::Array(a)) => a.iter().all(|x| type_ok(t, x)),
        (Type::Map, Value::Object(_)) => true,
        (Type::Ref(_), Value::String(_)) => true,
        (Type::Ref(_), Value::Number(n)) => n.is_i64(),
        _ => false,
    }
}

fn bounds_ok(f: &Field, v: &Value) -> bool {
    let x = match (&f.ty, v) {
        (Type::String, Value::String(s)) => s.chars().count() as f64,
        (Type::List(_), Value::Array(a)) => a.len() as f64,
        (Type::Int, Value::Number(n)) => match n.as_i64() {
            // Integers compare exactly with integer bounds.
            Some(i) => return int_bounds_ok(f, i),
            None => return false,
        },
        (Type::Float, Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        _ => return true,
    };
    f.min.is_none_or(|b| x >= b.as_f64()) && f.max.is_none_or(|b| x <= b.as_f64())
}

fn int_bounds_ok(f: &Field, i: i64) -> bool {
    let ge = |b: Bound| match b {
        Bound::Int(b) => i >= b,
        Bound::Float(b) => i as f64 >= b,
    };
    let le = |b: Bound| match b {
        Bound::Int(b) => i <= b,
        Bound::Float(b) => i as f64 <= b,
    };
    f.min.is_none_or(ge) && f.max.is_none_or(le)
}

/// The column value of a checked value of `f`.
pub fn to_sql(f: &Field, v: &Value) -> Result<Sql> {
    Ok(match (&f.ty, v) {
        (_, Value::Null) => Sql::Null,
        (Type::String, Value::String(s)) => Sql::Text(s.clone()),
        (Type::Int, Value::Number(n)) => Sql::Integer(n.as_i64().unwrap_or_default()),
        (Type::Float, Value::Number(n)) => Sql::Real(n.as_f64().unwrap_or_default()),
        (Type::Bool, Value::Bool(b)) => Sql::Integer(*b as i64),
        (Type::Datetime, Value::String(s)) => Sql::Integer(crate::util::parse_rfc3339(s)?),
        (Type::List(_) | Type::Map, v) => Sql::Text(serde_json::to_string(v)?),
        (Type::Ref(_), Value::String(s)) => Sql::Text(s.clone()),
        (Type::Ref(_), Value::Number(n)) => Sql::Integer(n.as_i64().unwrap_or_default()),
        _ => {
            return Err(err!(
                libc::EINVAL,
                "expected {}, got {}",
                expected(f),
                describe(v)
            ))
        }
    })
}

/// A filter's or cursor's value compared with a column of type `ty` (the
/// column's type, nullability aside): as [`to_sql`], without bounds.
pub fn compare_sql(ty: &Type, v: &Value) -> Option<Sql> {
    if !v.is_null() && !type_ok(ty, v) {
        return None;
    }
    let f = Field {
        name: String::new(),
        ty: ty.clone(),
        nullable: true,
        min: None,
        max: None,
        default: None,
        index: false,
        unique: false,
        on_delete: super::OnDelete::Restrict,
        renamed_from: None,
    };
    to_sql(&f, v).ok()
}

/// The JSON value of a column of type `ty`.
pub fn from_sql(ty: &Type, v: ValueRef<'_>) -> Value {
    match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (Type::Bool, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (Type::Datetime, ValueRef::Integer(ns)) => Value::String(datetime_text(ns)),
        (Type::List(_) | Type::Map, ValueRef::Text(t)) => {
            serde_json::from_slice(t).unwrap_or(Value::Null)
        }
        (_, ValueRef::Integer(i)) => Value::from(i),
        (_, ValueRef::Real(f)) => {
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        (_, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into_owned()),
        (_, ValueRef::Blob(_)) => Value::Null,
    }
}

/// RFC 3339 in UTC with as many fraction digits as the instant needs.
pub fn datetime_text(ns: i64) -> String {
    match jiff::Timestamp::from_nanosecond(ns as i128) {
        Ok(ts) => ts.to_string(),
        Err(_) => crate::util::rfc3339(ns),
    }
}

/// The value an insert gives `f` when the row leaves it out (`None`: none, the
/// field is required).
pub fn default_of(f: &Field, now_ns: i64) -> Option<Value> {
    match &f.default {
        Some(FieldDefault::Value(v)) => Some(v.clone()),
        Some(FieldDefault::Now) => Some(Value::String(datetime_text(now_ns))),
        None if f.nullable => Some(Value::Null),
        None => None,
    }
}

/// A row's key as given (`id`) for table `t`, checked for its kind.
pub fn key_sql(t: &Table, id: &Value) -> Result<Sql> {
    let bad = || {
        let want = match t.key {
            KeyKind::Ulid => "a ULID (26 characters)",
            KeyKind::String => "a string of 1 to 255 bytes without '/' or NUL, not . or ..",
            KeyKind::Int => "an integer",
        };
        err!(
            libc::EINVAL,
            "table {}, field id: expected {want}, got {}",
            t.name,
            describe(id)
        )
    };
    match (t.key, id) {
        (KeyKind::Int, Value::Number(n)) => n.as_i64().map(Sql::Integer).ok_or_else(bad),
        (KeyKind::Ulid, Value::String(s)) => match ulid::Ulid::from_string(s) {
            Ok(u) => Ok(Sql::Text(u.to_string())),
            Err(_) => Err(bad()),
        },
        (KeyKind::String, Value::String(s)) if string_key_ok(s) => Ok(Sql::Text(s.clone())),
        _ => Err(bad()),
    }
}

/// A string key is a file name on the mount.
pub fn string_key_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STRING_KEY && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// The JSON of a key column.
pub fn key_json(v: ValueRef<'_>) -> Value {
    from_sql(&Type::String, v)
}

/// Every field of `row` that `t` does not declare (and is not `id`/`owner`).
pub fn unknown_field<'a>(t: &Table, row: &'a Map<String, Value>) -> Option<&'a str> {
    row.keys()
        .map(String::as_str)
        .find(|k| *k != super::ID && *k != super::OWNER && !t.fields.contains_key(*k))
}
