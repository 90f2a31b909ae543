//! The SQL of declared tables: each table a STRICT SQLite table `t_<name>` with
//! real columns, its indexes, foreign keys for `ref<t>`, and the statements of
//! queries. Identifiers come only from a validated [`Schema`] (lowercase names,
//! quoted anyway); every value is a bound parameter.

use rusqlite::types::Value as Sql;

use super::query::{prefix_end, Filter, Op, Order};
use super::{Field, KeyKind, Schema, Table, Type, ID, OWNER};

/// `"name"`: names are checked to be `[a-z][a-z0-9_]*`, so quoting is enough.
pub fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// The SQLite storage class of a column of type `ty`.
fn sql_type(s: &Schema, ty: &Type) -> &'static str {
    match ty {
        Type::String | Type::List(_) | Type::Map => "TEXT",
        Type::Int | Type::Bool | Type::Datetime => "INTEGER",
        Type::Float => "REAL",
        Type::Ref(t) => match s.table(t).map(|t| t.key) {
            Some(KeyKind::Int) => "INTEGER",
            _ => "TEXT",
        },
    }
}

/// The columns of `t` in table order: `id`, `owner` (if any), then the fields by name.
pub fn columns(t: &Table) -> Vec<(String, Type)> {
    let mut cols = vec![(ID.to_string(), t.column_type(ID).unwrap_or(Type::String))];
    if t.owner {
        cols.push((OWNER.to_string(), Type::String));
    }
    cols.extend(t.fields.values().map(|f| (f.name.clone(), f.ty.clone())));
    cols
}

fn field_decl(s: &Schema, f: &Field) -> String {
    let mut d = format!("{} {}", quote(&f.name), sql_type(s, &f.ty));
    if !f.nullable {
        d.push_str(" NOT NULL");
    }
    if let Some(target) = f.ty.ref_target() {
        let action = match f.on_delete {
            super::OnDelete::Restrict => "RESTRICT",
            super::OnDelete::Cascade => "CASCADE",
            super::OnDelete::SetNull => "SET NULL",
        };
        d.push_str(&format!(
            " REFERENCES {}({}) ON DELETE {action}",
            quote(&super::sql_table(target)),
            quote(ID)
        ));
    }
    d
}

/// `CREATE TABLE` of `t` under the SQLite name `sql_name`.
pub fn create_table(s: &Schema, t: &Table, sql_name: &str) -> String {
    let mut cols = vec![match t.key {
        KeyKind::Int => format!("{} INTEGER PRIMARY KEY", quote(ID)),
        _ => format!("{} TEXT PRIMARY KEY NOT NULL", quote(ID)),
    }];
    if t.owner {
        cols.push(format!("{} TEXT NOT NULL", quote(OWNER)));
    }
    cols.extend(t.fields.values().map(|f| field_decl(s, f)));
    format!(
        "CREATE TABLE {} ({}) STRICT",
        quote(sql_name),
        cols.join(", ")
    )
}

/// The indexes of `t`: (SQLite name, `CREATE INDEX` statement). Field indexes
/// are `t_<table>__f_<field>`, unique ones `__u_`, declared ones `__i_<name>`.
pub fn indexes(t: &Table) -> Vec<(String, String)> {
    let table = t.sql_name();
    let make = |kind: &str, name: &str, unique: bool, cols: &[String]| {
        let iname = format!("{table}__{kind}_{name}");
        let cols: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let sql = format!(
            "CREATE {}INDEX {} ON {}({})",
            if unique { "UNIQUE " } else { "" },
            quote(&iname),
            quote(&table),
            cols.join(", ")
        );
        (iname, sql)
    };
    let mut out = Vec::new();
    for f in t.fields.values() {
        if f.unique {
            out.push(make("u", &f.name, true, std::slice::from_ref(&f.name)));
        } else if f.index || f.ty.ref_target().is_some() {
            // A ref is always indexed: a delete looks up the rows that refer to it.
            out.push(make("f", &f.name, false, std::slice::from_ref(&f.name)));
        }
    }
    for (name, cols) in &t.indexes {
        out.push(make("i", name, false, cols));
    }
    out
}

/// A statement and its bound values.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Sql>,
}

/// The `WHERE` conditions of `filters` (and'ed; `1` when there are none).
pub fn conditions(filters: &[Filter], params: &mut Vec<Sql>) -> String {
    let mut parts = Vec::new();
    for f in filters {
        let c = quote(&f.col);
        let mut bind = |v: &Sql| {
            params.push(v.clone());
            format!("?{}", params.len())
        };
        let part = match f.op {
            Op::Eq if f.values[0] == Sql::Null => format!("{c} IS NULL"),
            Op::Eq => format!("{c} = {}", bind(&f.values[0])),
            Op::Gt => format!("{c} > {}", bind(&f.values[0])),
            Op::Gte => format!("{c} >= {}", bind(&f.values[0])),
            Op::Lt => format!("{c} < {}", bind(&f.values[0])),
            Op::Lte => format!("{c} <= {}", bind(&f.values[0])),
            Op::In if f.values.is_empty() => "0".to_string(),
            Op::In => {
                let binds: Vec<String> = f.values.iter().map(&mut bind).collect();
                format!("{c} IN ({})", binds.join(", "))
            }
            Op::Prefix => {
                let Sql::Text(p) = &f.values[0] else {
                    continue;
                };
                let lo = format!("{c} >= {}", bind(&Sql::Text(p.clone())));
                match prefix_end(p) {
                    Some(end) => format!("{lo} AND {c} < {}", bind(&Sql::Text(end))),
                    None => lo,
                }
            }
        };
        parts.push(part);
    }
    if parts.is_empty() {
        "1".to_string()
    } else {
        parts.join(" AND ")
    }
}

/// The keyset condition "after the row whose order value is `v0` and key `id0`"
/// for `order` (SQLite puts nulls first going up, last going down).
fn after(order: &Order, v0: Sql, id0: Sql, params: &mut Vec<Sql>) -> String {
    let id = quote(ID);
    let (cmp, idcmp) = if order.desc { ("<", "<") } else { (">", ">") };
    params.push(id0);
    let pid = format!("?{}", params.len());
    if order.col == ID {
        return format!("{id} {idcmp} {pid}");
    }
    let c = quote(&order.col);
    match (v0 == Sql::Null, order.desc) {
        (true, false) => format!("(({c} IS NULL AND {id} > {pid}) OR {c} IS NOT NULL)"),
        (true, true) => format!("({c} IS NULL AND {id} < {pid})"),
        (false, desc) => {
            params.push(v0);
            let pv = format!("?{}", params.len());
            let nulls = if desc {
                format!(" OR {c} IS NULL")
            } else {
                String::new()
            };
            format!("({c} {cmp} {pv} OR ({c} = {pv} AND {id} {idcmp} {pid}){nulls})")
        }
    }
}

/// `SELECT <every column> FROM t WHERE filters [AND after] ORDER BY ...`.
/// `cursor`: the order value and key of the row to start after.
pub fn select(
    t: &Table,
    filters: &[Filter],
    order: &Order,
    cursor: Option<(Sql, Sql)>,
) -> Statement {
    let mut params = Vec::new();
    let mut cond = conditions(filters, &mut params);
    if let Some((v0, id0)) = cursor {
        cond = format!("({cond}) AND {}", after(order, v0, id0, &mut params));
    }
    let dir = if order.desc { "DESC" } else { "ASC" };
    let ord = if order.col == ID {
        format!("{} {dir}", quote(ID))
    } else {
        format!("{} {dir}, {} {dir}", quote(&order.col), quote(ID))
    };
    let cols: Vec<String> = columns(t).iter().map(|(c, _)| quote(c)).collect();
    Statement {
        sql: format!(
            "SELECT {} FROM {} WHERE {cond} ORDER BY {ord}",
            cols.join(", "),
            quote(&t.sql_name())
        ),
        params,
    }
}

/// `SELECT count(*) FROM t WHERE filters`.
pub fn count(t: &Table, filters: &[Filter]) -> Statement {
    let mut params = Vec::new();
    let cond = conditions(filters, &mut params);
    Statement {
        sql: format!("SELECT count(*) FROM {} WHERE {cond}", quote(&t.sql_name())),
        params,
    }
}
