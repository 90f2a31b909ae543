//! Declared tables (DESIGN §7): a peer's `schema.toml` as data, and everything
//! about it that needs no store. This file is the model ([`Schema`], [`Table`],
//! [`Field`], [`Type`]); beside it: `parse` (the TOML text, validated, with
//! errors naming table and field), `value` (a row's values checked against their
//! types and turned into SQLite values and back), `diff` (what changes from one
//! schema to the next, and what a change needs: nothing, rows that meet it, or the
//! owner's consent to drop), `sql` (the DDL of each table and the statements of
//! queries, identifiers only from a validated schema, values always bound) and
//! `query` (a script's `find` filter and options, checked).
//!
//! The store (`store/sqlite/tables.rs`) runs what this room builds.

pub mod diff;
pub mod parse;
pub mod query;
pub mod rows;
pub mod sql;
#[cfg(test)]
pub(crate) mod tests;
pub mod value;

use std::collections::BTreeMap;

pub use diff::{diff, Change, Plan};
pub use query::{Filter, Find, Op as FilterOp, Order};

/// The meta key the schema text is stored under (beside `policy`, `groups`).
pub const META_KEY: &str = "schema";

/// The columns every table has besides its fields.
pub const ID: &str = "id";
pub const OWNER: &str = "owner";
/// Names a field may not take: the key, the owner and the table's own name in a
/// policy's resource (`resource.table`).
pub const RESERVED: [&str; 3] = [ID, OWNER, "table"];

/// A peer's declared tables.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
    /// `[confirm] drop = ["notes.rating", "old_table"]`: the owner's consent to
    /// drop data in this change.
    pub confirm_drop: Vec<String>,
}

impl Schema {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Whether the owner consented to dropping `what` (`table` or `table.field`).
    pub fn confirms(&self, what: &str) -> bool {
        self.confirm_drop.iter().any(|c| c == what)
    }

    /// Every (table, field) that refers to `target` with `ref<target>`.
    pub fn refs_to<'a>(&'a self, target: &'a str) -> impl Iterator<Item = (&'a Table, &'a Field)> {
        self.tables.values().flat_map(move |t| {
            t.fields
                .values()
                .filter(move |f| f.ty.ref_target() == Some(target))
                .map(move |f| (t, f))
        })
    }
}

/// How a table's rows are keyed (`key = "ulid" | "string" | "int"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A ULID made at insert (the default).
    Ulid,
    /// A string the inserter gives (`id` in the row).
    String,
    /// An integer: given, or the next one.
    Int,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ulid => "ulid",
            KeyKind::String => "string",
            KeyKind::Int => "int",
        }
    }
}

/// One declared table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub key: KeyKind,
    /// Has an `owner` column: the inserting peer, read-only.
    pub owner: bool,
    pub fields: BTreeMap<String, Field>,
    /// Declared composite indexes: name and columns.
    pub indexes: BTreeMap<String, Vec<String>>,
    /// `renamed_from = "old"`: this table was called `old`.
    pub renamed_from: Option<String>,
}

impl Table {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// The SQLite table's name: `t_<name>`, apart from the store's own tables.
    pub fn sql_name(&self) -> String {
        sql_table(&self.name)
    }

    /// Whether `col` is a column one can filter and order by: `id`, `owner`
    /// (when the table has one), or a field of a scalar type.
    pub fn column_type(&self, col: &str) -> Option<Type> {
        match col {
            ID => Some(match self.key {
                KeyKind::Int => Type::Int,
                _ => Type::String,
            }),
            OWNER if self.owner => Some(Type::String),
            _ => self.fields.get(col).map(|f| f.ty.clone()),
        }
    }
}

/// The SQLite name of the declared table `name`.
pub fn sql_table(name: &str) -> String {
    format!("t_{name}")
}

/// What `ref<t>` does when the row it points at is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// The delete is refused while a row refers to it (the default).
    Restrict,
    /// The rows that refer to it are deleted too.
    Cascade,
    /// The reference becomes null (the field must be nullable).
    SetNull,
}

impl OnDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Restrict => "restrict",
            OnDelete::Cascade => "cascade",
            OnDelete::SetNull => "set_null",
        }
    }
}

/// A field's type (nullability is [`Field::nullable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    String,
    Int,
    Float,
    Bool,
    /// An instant, kept as nanoseconds since the epoch, shown as RFC 3339.
    Datetime,
    List(Box<Type>),
    /// Any JSON object.
    Map,
    /// The key of a row of the named table.
    Ref(String),
}

impl Type {
    pub fn ref_target(&self) -> Option<&str> {
        match self {
            Type::Ref(t) => Some(t),
            _ => None,
        }
    }

    /// Whether values of this type can be compared in a filter or an order.
    pub fn is_scalar(&self) -> bool {
        !matches!(self, Type::List(_) | Type::Map)
    }
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Type::String => f.write_str("string"),
            Type::Int => f.write_str("int"),
            Type::Float => f.write_str("float"),
            Type::Bool => f.write_str("bool"),
            Type::Datetime => f.write_str("datetime"),
            Type::List(t) => write!(f, "list<{t}>"),
            Type::Map => f.write_str("map"),
            Type::Ref(t) => write!(f, "ref<{t}>"),
        }
    }
}

/// A bound (`min`, `max`): of the value for numbers, of the length for strings
/// (characters) and lists (elements).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Int(i64),
    Float(f64),
}

impl Bound {
    pub fn as_f64(self) -> f64 {
        match self {
            Bound::Int(i) => i as f64,
            Bound::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Int(i) => write!(f, "{i}"),
            Bound::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A field's default when an insert leaves it out.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldDefault {
    /// A value of the field's type (checked when the schema is read).
    Value(serde_json::Value),
    /// `"now"` for a datetime: the time of the insert.
    Now,
}

/// One declared field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    pub nullable: bool,
    pub min: Option<Bound>,
    pub max: Option<Bound>,
    pub default: Option<FieldDefault>,
    /// A single-column index.
    pub index: bool,
    /// No two rows have the same (non-null) value.
    pub unique: bool,
    /// For `ref<t>`.
    pub on_delete: OnDelete,
    pub renamed_from: Option<String>,
}

impl Field {
    /// The type as written: `string?`, `list<int>`.
    pub fn type_text(&self) -> String {
        format!("{}{}", self.ty, if self.nullable { "?" } else { "" })
    }

    /// Whether an insert may leave the field out.
    pub fn optional(&self) -> bool {
        self.nullable || self.default.is_some()
    }
}
