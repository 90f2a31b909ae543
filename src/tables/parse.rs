//! `schema.toml` read into a [`Schema`]: the TOML through serde (unknown keys
//! refused), then every rule a schema must meet, each error naming the table and
//! field and saying what to write instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Bound, Field, FieldDefault, KeyKind, OnDelete, Schema, Table, Type, RESERVED};
use crate::error::{err, Result};

/// Most tables a schema may declare, and fields a table may have.
pub const MAX_TABLES: usize = 100;
pub const MAX_FIELDS: usize = 200;
/// Longest table, field or index name.
pub const MAX_NAME: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
    #[serde(default)]
    confirm: RawConfirm,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfirm {
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    key: Option<String>,
    #[serde(default)]
    owner: bool,
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
    #[serde(default)]
    indexes: BTreeMap<String, Vec<String>>,
    renamed_from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: String,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    default: Option<toml::Value>,
    #[serde(default)]
    index: bool,
    #[serde(default)]
    unique: bool,
    on_delete: Option<String>,
    renamed_from: Option<String>,
}

/// Parses and validates a schema text. Empty (or only comments): no tables.
pub fn parse(text: &str) -> Result<Schema> {
    let raw: RawSchema = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().to_string();
        match line {
            Some(l) => err!(libc::EINVAL, "schema.toml line {l}: {msg}"),
            None => err!(libc::EINVAL, "schema.toml: {msg}"),
        }
    })?;
    if raw.tables.len() > MAX_TABLES {
        return Err(err!(
            libc::EINVAL,
            "schema.toml declares {} tables: at most {MAX_TABLES} are allowed",
            raw.tables.len()
        ));
    }
    let mut tables = BTreeMap::new();
    for (name, t) in raw.tables {
        check_name("table", &name, &name)?;
        let table = table(&name, t)?;
        tables.insert(name, table);
    }
    for what in &raw.confirm.drop {
        let mut parts = what.splitn(2, '.');
        let ok = parts.all(|p| check_name("name", p, what).is_ok());
        if !ok {
            return Err(err!(
                libc::EINVAL,
                "schema.toml [confirm] drop: {what:?} is neither \"table\" nor \"table.field\""
            ));
        }
    }
    let schema = Schema {
        tables,
        confirm_drop: raw.confirm.drop,
    };
    check_links(&schema)?;
    Ok(schema)
}

/// A table, field or index name: a lowercase letter, then lowercase letters,
/// digits and `_`, at most [`MAX_NAME`] bytes.
pub fn check_name(what: &str, name: &str, place: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    // `__` separates a table from its index names in SQLite (`t_notes__f_tag`).
    if !first_ok || !rest_ok || name.len() > MAX_NAME || name.contains("__") {
        return Err(err!(
            libc::EINVAL,
            "schema.toml {place}: {what} name {name:?} is not allowed: use a lowercase letter, \
             then lowercase letters, digits or single '_' (at most {MAX_NAME})"
        ));
    }
    Ok(())
}

fn table(name: &str, t: RawTable) -> Result<Table> {
    let key = match t.key.as_deref() {
        None | Some("ulid") => KeyKind::Ulid,
        Some("string") => KeyKind::String,
        Some("int") => KeyKind::Int,
        Some(k) => {
            return Err(err!(
                libc::EINVAL,
                "schema.toml table {name}: key {k:?} is not a key kind: use \"ulid\", \"string\" or \"int\""
            ))
        }
    };
    if t.fields.len() > MAX_FIELDS {
        return Err(err!(
            libc::EINVAL,
            "schema.toml table {name} has {} fields: at most {MAX_FIELDS} are allowed",
            t.fields.len()
        ));
    }
    if let Some(old) = &t.renamed_from {
        check_name("table", old, &format!("table {name} renamed_from"))?;
    }
    let mut fields = BTreeMap::new();
    for (fname, f) in t.fields {
        let place = format!("{name}.{fname}");
        check_name("field", &fname, &place)?;
        if RESERVED.contains(&fname.as_str()) {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: {fname:?} is a column every table has (id, owner, table): \
                 pick another field name"
            ));
        }
        fields.insert(fname.clone(), field(&place, fname, f)?);
    }
    let table = Table {
        name: name.to_string(),
        key,
        owner: t.owner,
        fields,
        indexes: BTreeMap::new(),
        renamed_from: t.renamed_from,
    };
    let indexes = indexes(&table, t.indexes)?;
    Ok(Table { indexes, ..table })
}

fn indexes(t: &Table, raw: BTreeMap<String, Vec<String>>) -> Result<BTreeMap<String, Vec<String>>> {
    for (iname, cols) in &raw {
        let place = format!("table {} index {iname}", t.name);
        check_name("index", iname, &place)?;
        if cols.is_empty() {
            return Err(err!(libc::EINVAL, "schema.toml {place}: names no column"));
        }
        for (i, c) in cols.iter().enumerate() {
            match t.column_type(c) {
                Some(ty) if ty.is_scalar() => {}
                Some(ty) => {
                    return Err(err!(
                        libc::EINVAL,
                        "schema.toml {place}: column {c:?} is a {ty}: only scalar columns can be indexed"
                    ))
                }
                None => {
                    return Err(err!(
                        libc::EINVAL,
                        "schema.toml {place}: no column {c:?} in table {}",
                        t.name
                    ))
                }
            }
            if cols[..i].contains(c) {
                return Err(err!(
                    libc::EINVAL,
                    "schema.toml {place}: column {c:?} twice"
                ));
            }
        }
    }
    Ok(raw)
}

/// `string`, `int?`, `list<string>`, `ref<notes>?`: the type and whether null is allowed.
pub fn parse_type(text: &str) -> Option<(Type, bool)> {
    let text = text.trim();
    let (base, nullable) = match text.strip_suffix('?') {
        Some(b) => (b, true),
        None => (text, false),
    };
    Some((base_type(base, 0)?, nullable))
}

fn base_type(t: &str, depth: usize) -> Option<Type> {
    Some(match t {
        "string" => Type::String,
        "int" => Type::Int,
        "float" => Type::Float,
        "bool" => Type::Bool,
        "datetime" => Type::Datetime,
        "map" => Type::Map,
        _ => {
            if let Some(inner) = t.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
                // Lists of lists are maps' business: one level keeps checks simple.
                let inner = base_type(inner, depth + 1)?;
                if depth > 0 || matches!(inner, Type::List(_) | Type::Ref(_)) {
                    return None;
                }
                Type::List(Box::new(inner))
            } else if let Some(target) = t.strip_prefix("ref<").and_then(|r| r.strip_suffix('>')) {
                check_name("table", target, "ref").ok()?;
                Type::Ref(target.to_string())
            } else {
                return None;
            }
        }
    })
}

fn field(place: &str, name: String, f: RawField) -> Result<Field> {
    let (ty, nullable) = parse_type(&f.ty).ok_or_else(|| {
        err!(
            libc::EINVAL,
            "schema.toml {place}: type {:?} is not a type: use string, int, float, bool, datetime, \
             map, list<T> (T one of those but list and ref) or ref<table>, with a trailing ? to allow null",
            f.ty
        )
    })?;
    let min = bound(place, "min", &ty, f.min)?;
    let max = bound(place, "max", &ty, f.max)?;
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo.as_f64() > hi.as_f64() {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: min {lo} is above max {hi}"
            ));
        }
    }
    let on_delete = match (f.on_delete.as_deref(), &ty) {
        (None, _) => OnDelete::Restrict,
        (Some(_), t) if t.ref_target().is_none() => {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: on_delete applies to ref<table> fields only"
            ))
        }
        (Some("restrict"), _) => OnDelete::Restrict,
        (Some("cascade"), _) => OnDelete::Cascade,
        (Some("set_null"), _) if nullable => OnDelete::SetNull,
        (Some("set_null"), _) => {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: on_delete = \"set_null\" needs a nullable type: write \"{ty}?\""
            ))
        }
        (Some(o), _) => {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: on_delete {o:?} is not one of \"restrict\", \"cascade\", \"set_null\""
            ))
        }
    };
    if (f.index || f.unique) && !ty.is_scalar() {
        return Err(err!(
            libc::EINVAL,
            "schema.toml {place}: a {ty} cannot be indexed or unique: only scalar fields can"
        ));
    }
    let mut field = Field {
        name,
        ty,
        nullable,
        min,
        max,
        default: None,
        index: f.index,
        unique: f.unique,
        on_delete,
        renamed_from: None,
    };
    if let Some(old) = f.renamed_from {
        check_name("field", &old, &format!("{place} renamed_from"))?;
        field.renamed_from = Some(old);
    }
    if let Some(d) = f.default {
        field.default = Some(default(place, &field, d)?);
    }
    Ok(field)
}

fn bound(place: &str, which: &str, ty: &Type, v: Option<toml::Value>) -> Result<Option<Bound>> {
    let Some(v) = v else { return Ok(None) };
    let b = match (ty, &v) {
        (Type::String | Type::List(_), toml::Value::Integer(i)) if *i >= 0 => Bound::Int(*i),
        (Type::Int, toml::Value::Integer(i)) => Bound::Int(*i),
        (Type::Float, toml::Value::Integer(i)) => Bound::Float(*i as f64),
        (Type::Float, toml::Value::Float(f)) if f.is_finite() => Bound::Float(*f),
        (Type::String | Type::List(_) | Type::Int | Type::Float, _) => {
            let what = match ty {
                Type::String => "a length in characters (an integer, 0 or more)",
                Type::List(_) => "a number of elements (an integer, 0 or more)",
                Type::Int => "an integer",
                _ => "a number",
            };
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: {which} must be {what}, not {v}"
            ));
        }
        _ => {
            return Err(err!(
                libc::EINVAL,
                "schema.toml {place}: {which} does not apply to a {ty} (only to string, int, float and list)"
            ))
        }
    };
    Ok(Some(b))
}

fn default(place: &str, f: &Field, d: toml::Value) -> Result<FieldDefault> {
    if f.ty == Type::Datetime && d.as_str() == Some("now") {
        return Ok(FieldDefault::Now);
    }
    if f.ty.ref_target().is_some() {
        return Err(err!(
            libc::EINVAL,
            "schema.toml {place}: a ref<table> field takes no default"
        ));
    }
    let json = match d {
        // A TOML date-time is written back as its RFC 3339 text.
        toml::Value::Datetime(dt) => serde_json::Value::String(dt.to_string()),
        other => serde_json::to_value(other)?,
    };
    super::value::check(f, &json)
        .map_err(|e| err!(libc::EINVAL, "schema.toml {place}: default: {}", e.message))?;
    Ok(FieldDefault::Value(json))
}

/// Rules between tables: refs name declared tables, renames do not collide.
fn check_links(s: &Schema) -> Result<()> {
    for t in s.tables.values() {
        for f in t.fields.values() {
            if let Some(target) = f.ty.ref_target() {
                if !s.tables.contains_key(target) {
                    return Err(err!(
                        libc::EINVAL,
                        "schema.toml {}.{}: ref<{target}> names no declared table",
                        t.name,
                        f.name
                    ));
                }
            }
            if let Some(old) = &f.renamed_from {
                if t.fields.contains_key(old) {
                    return Err(err!(
                        libc::EINVAL,
                        "schema.toml {}.{}: renamed_from {old:?}, but {}.{old} is declared too",
                        t.name,
                        f.name,
                        t.name
                    ));
                }
            }
        }
        if let Some(old) = &t.renamed_from {
            if s.tables.contains_key(old) {
                return Err(err!(
                    libc::EINVAL,
                    "schema.toml table {}: renamed_from {old:?}, but table {old} is declared too",
                    t.name
                ));
            }
        }
    }
    Ok(())
}
