//! A reference model of declared tables: random inserts, updates, deletes, finds
//! and counts applied to the SQLite store and to a `BTreeMap` of rows, compared
//! after every step (finds in their order and pages, with nulls and ties).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use peerfs::store::prelude::*;
use peerfs::store::SqliteStore;
use peerfs::tables::rows::{apply_patch, prepare_insert, Row};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const SCHEMA: &str = r#"
[tables.n]
key = "int"
fields.tag = { type = "string?", index = true }
fields.r   = { type = "int?", min = 0, max = 9 }
fields.on  = { type = "bool", default = false }
indexes.by_tag_r = ["tag", "r"]
"#;

#[derive(Debug, Clone)]
enum Op {
    Insert(Option<String>, Option<i64>, bool),
    Update(usize, Option<String>, Option<i64>),
    Delete(usize),
    /// column, comparison, value, order column, descending, limit
    Find(Filter, &'static str, bool, usize),
    Count(Filter),
}

#[derive(Debug, Clone)]
enum Filter {
    None,
    TagEq(Option<String>),
    RGte(i64),
    TagIn(Vec<String>),
    TagPrefix(String),
    On(bool),
}

fn tag() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), "[ab]{1,2}".prop_map(Some)]
}

fn rating() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (0i64..10).prop_map(Some)]
}

fn filter() -> impl Strategy<Value = Filter> {
    prop_oneof![
        Just(Filter::None),
        tag().prop_map(Filter::TagEq),
        (0i64..10).prop_map(Filter::RGte),
        proptest::collection::vec("[ab]{1,2}", 0..3).prop_map(Filter::TagIn),
        "[ab]{0,1}".prop_map(Filter::TagPrefix),
        any::<bool>().prop_map(Filter::On),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (tag(), rating(), any::<bool>()).prop_map(|(t, r, o)| Op::Insert(t, r, o)),
        2 => (0usize..50, tag(), rating()).prop_map(|(i, t, r)| Op::Update(i, t, r)),
        1 => (0usize..50).prop_map(Op::Delete),
        2 => (filter(), prop_oneof![Just("id"), Just("tag"), Just("r"), Just("on")], any::<bool>(), 1usize..5)
            .prop_map(|(f, o, d, l)| Op::Find(f, o, d, l)),
        1 => filter().prop_map(Op::Count),
    ]
}

fn filter_json(f: &Filter) -> Map<String, Value> {
    let v = match f {
        Filter::None => json!({}),
        Filter::TagEq(t) => json!({ "tag": t }),
        Filter::RGte(r) => json!({ "r": { "gte": r } }),
        Filter::TagIn(l) => json!({ "tag": { "in": l } }),
        Filter::TagPrefix(p) => json!({ "tag": { "prefix": p } }),
        Filter::On(b) => json!({ "on": b }),
    };
    v.as_object().unwrap().clone()
}

fn holds(f: &Filter, row: &Row) -> bool {
    match f {
        Filter::None => true,
        Filter::TagEq(t) => row["tag"] == json!(t),
        Filter::RGte(r) => row["r"].as_i64().is_some_and(|x| x >= *r),
        Filter::TagIn(l) => row["tag"]
            .as_str()
            .is_some_and(|t| l.iter().any(|x| x == t)),
        Filter::TagPrefix(p) => row["tag"]
            .as_str()
            .is_some_and(|t| t.starts_with(p.as_str())),
        Filter::On(b) => row["on"] == json!(b),
    }
}

/// SQLite's order: nulls first, then by value (bools as 0/1), ties by id.
fn cmp_col(a: &Value, b: &Value) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => (0, 0i64, String::new()),
        Value::Bool(b) => (1, *b as i64, String::new()),
        Value::Number(n) => (1, n.as_i64().unwrap(), String::new()),
        Value::String(s) => (2, 0, s.clone()),
        _ => (3, 0, String::new()),
    };
    rank(a).cmp(&rank(b))
}

fn model_find(model: &BTreeMap<i64, Row>, f: &Filter, col: &str, desc: bool) -> Vec<i64> {
    let mut rows: Vec<&Row> = model.values().filter(|r| holds(f, r)).collect();
    rows.sort_by(|a, b| {
        let o = cmp_col(&a[col], &b[col]).then(a["id"].as_i64().cmp(&b["id"].as_i64()));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

fn row_of(tag: &Option<String>, r: &Option<i64>) -> Map<String, Value> {
    json!({ "tag": tag, "r": r }).as_object().unwrap().clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tables_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("m.sqlite"), true).unwrap();
        s.begin().unwrap();
        s.apply_schema(SCHEMA.as_bytes()).unwrap();
        s.commit().unwrap();
        let schema = s.schema().unwrap();
        let t = schema.table("n").unwrap();
        let mut model: BTreeMap<i64, Row> = BTreeMap::new();
        for op in ops {
            s.begin().unwrap();
            match &op {
                Op::Insert(tag, r, on) => {
                    let mut v = row_of(tag, r);
                    v.insert("on".into(), json!(on));
                    let row = prepare_insert(&schema, t, "me", &v, 0).unwrap();
                    let id = s.row_insert("n", &row).unwrap().as_i64().unwrap();
                    let mut row = row;
                    row.insert("id".into(), json!(id));
                    prop_assert!(model.insert(id, row).is_none());
                }
                Op::Update(i, tag, r) => {
                    let Some(id) = model.keys().nth(*i).copied() else { s.commit().unwrap(); continue };
                    let before = s.row_get("n", &json!(id)).unwrap().unwrap();
                    prop_assert_eq!(&before, &model[&id]);
                    let after = apply_patch(&schema, t, &before, &row_of(tag, r)).unwrap();
                    prop_assert!(s.row_replace("n", &after).unwrap());
                    model.insert(id, after);
                }
                Op::Delete(i) => {
                    let id = model.keys().nth(*i).copied().unwrap_or(10_000);
                    prop_assert_eq!(s.row_delete("n", &json!(id)).unwrap(), model.remove(&id).is_some());
                }
                Op::Find(f, col, desc, limit) => {
                    let order = if *desc { format!("-{col}") } else { col.to_string() };
                    let want = model_find(&model, f, col, *desc);
                    // Every page of `limit` rows, each after the last row of the one before.
                    let mut got: Vec<i64> = Vec::new();
                    let mut cursor: Option<Row> = None;
                    loop {
                        let q = peerfs::tables::query::find(
                            t,
                            &filter_json(f),
                            json!({ "order": order, "limit": limit }).as_object().unwrap(),
                        ).unwrap();
                        let mut page: Vec<Row> = Vec::new();
                        s.row_scan("n", &q, cursor.as_ref(), &mut |r| { page.push(r); page.len() < *limit }).unwrap();
                        if page.is_empty() { break; }
                        got.extend(page.iter().map(|r| r["id"].as_i64().unwrap()));
                        cursor = page.pop();
                        prop_assert!(got.len() <= want.len(), "{:?} vs {:?}", got, want);
                    }
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Count(f) => {
                    let filters = peerfs::tables::query::filters(t, &filter_json(f)).unwrap();
                    let n = s.row_count("n", &filters).unwrap();
                    prop_assert_eq!(n as usize, model.values().filter(|r| holds(f, r)).count());
                }
            }
            s.commit().unwrap();
        }
        for (id, row) in &model {
            let got = s.row_get("n", &json!(id)).unwrap();
            prop_assert_eq!(got.as_ref(), Some(row));
        }
    }
}
