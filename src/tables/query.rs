//! A script's `find(filter, options)` and `count(filter)` as checked data: each
//! filter names a column of the table and compares it with a value of the
//! column's type; the order is one column, up or down, then the key; the limit
//! has a default and a maximum; `after` is the key of the last row of the page
//! before (keyset paging).

use rusqlite::types::Value as Sql;
use serde_json::{Map, Value};

use super::value::{compare_sql, describe};
use super::{Table, Type, ID};
use crate::error::{err, Result};

/// Rows a `find` returns when it names no limit, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Most values an `"in"` filter may list.
pub const MAX_IN: usize = 1000;

/// A comparison of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Prefix,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "prefix" => Op::Prefix,
            _ => return None,
        })
    }
}

/// One condition: `col op value` (for `In`, `values` holds the list).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub col: String,
    pub op: Op,
    pub values: Vec<Sql>,
}

/// The order of a `find`: one column, then the key the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub col: String,
    pub desc: bool,
}

/// A checked `find`.
#[derive(Debug, Clone, PartialEq)]
pub struct Find {
    pub filters: Vec<Filter>,
    pub order: Order,
    pub limit: usize,
    /// The key of the last row of the page before.
    pub after: Option<Value>,
}

fn bad(t: &Table, col: &str, msg: String) -> crate::error::Error {
    err!(libc::EINVAL, "table {}, field {col}: {msg}", t.name)
}

/// The filters of `filter`: `#{ tag: "home", rating: #{ gte: 3 } }`.
pub fn filters(t: &Table, filter: &Map<String, Value>) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    for (col, v) in filter {
        let ty = t.column_type(col).ok_or_else(|| {
            err!(
                libc::EINVAL,
                "table {}: no field {col:?} to filter on",
                t.name
            )
        })?;
        if !ty.is_scalar() {
            return Err(bad(t, col, format!("a {ty} cannot be filtered on")));
        }
        match v {
            Value::Object(ops) => {
                for (op, v) in ops {
                    let op = Op::parse(op).ok_or_else(|| {
                        bad(t, col, format!("{op:?} is not a filter: use eq, gt, gte, lt, lte, \"in\" or prefix"))
                    })?;
                    out.push(filter_one(t, col, &ty, op, v)?);
                }
            }
            v => out.push(filter_one(t, col, &ty, Op::Eq, v)?),
        }
    }
    Ok(out)
}

fn filter_one(t: &Table, col: &str, ty: &Type, op: Op, v: &Value) -> Result<Filter> {
    let one = |v: &Value| {
        compare_sql(ty, v).ok_or_else(|| bad(t, col, format!("expected {ty}, got {}", describe(v))))
    };
    let values = match op {
        Op::In => {
            let Value::Array(items) = v else {
                return Err(bad(
                    t,
                    col,
                    format!("\"in\" takes a list, got {}", describe(v)),
                ));
            };
            if items.len() > MAX_IN {
                return Err(bad(
                    t,
                    col,
                    format!("\"in\" lists {} values: at most {MAX_IN}", items.len()),
                ));
            }
            items.iter().map(one).collect::<Result<_>>()?
        }
        Op::Prefix => {
            let text_col =
                matches!(ty, Type::String) || (matches!(ty, Type::Ref(_)) && v.is_string());
            match v {
                Value::String(s) if text_col => vec![Sql::Text(s.clone())],
                _ => {
                    return Err(bad(
                        t,
                        col,
                        format!(
                            "prefix takes a string on a string field, got {}",
                            describe(v)
                        ),
                    ))
                }
            }
        }
        Op::Eq => vec![one(v)?],
        _ if v.is_null() => {
            return Err(bad(
                t,
                col,
                "gt, gte, lt and lte take a value, not null".to_string(),
            ))
        }
        _ => vec![one(v)?],
    };
    Ok(Filter {
        col: col.to_string(),
        op,
        values,
    })
}

/// A `find`'s filter and options (`order`, `limit`, `after`).
pub fn find(t: &Table, filter: &Map<String, Value>, opts: &Map<String, Value>) -> Result<Find> {
    let filters = filters(t, filter)?;
    let mut order = Order {
        col: ID.to_string(),
        desc: false,
    };
    let mut limit = DEFAULT_LIMIT;
    let mut after = None;
    for (k, v) in opts {
        match (k.as_str(), v) {
            ("order", Value::String(s)) => {
                let (col, desc) = match s.strip_prefix('-') {
                    Some(c) => (c, true),
                    None => (s.strip_prefix('+').unwrap_or(s), false),
                };
                match t.column_type(col) {
                    Some(ty) if ty.is_scalar() => {}
                    _ => {
                        return Err(err!(
                            libc::EINVAL,
                            "table {}: order {s:?} names no scalar field (write \"field\" or \"-field\")",
                            t.name
                        ))
                    }
                }
                order = Order {
                    col: col.to_string(),
                    desc,
                };
            }
            ("limit", Value::Number(n)) => {
                limit = n.as_u64().filter(|&n| (1..=MAX_LIMIT as u64).contains(&n)).ok_or_else(|| {
                    err!(libc::EINVAL, "table {}: limit {n} is not from 1 to {MAX_LIMIT}", t.name)
                })? as usize;
            }
            ("after", Value::Null) => {}
            ("after", v) => after = Some(v.clone()),
            (k, v) => {
                return Err(err!(
                    libc::EINVAL,
                    "table {}: find option {k:?} = {} is not one of order (a string), limit (an integer), after (a key)",
                    t.name,
                    describe(v)
                ))
            }
        }
    }
    Ok(Find {
        filters,
        order,
        limit,
        after,
    })
}

/// The smallest string above every string that begins with `prefix` (`None`:
/// there is none, every string from `prefix` on qualifies).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = (c as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
