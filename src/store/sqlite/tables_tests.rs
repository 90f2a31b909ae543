//! Declared tables in the SQLite backend: each migration rule, rows with their
//! referential actions, finds in order and by page.

use serde_json::{json, Value};

use super::*;
use crate::tables::rows::{apply_patch, prepare_insert, Row};

const NOTES: &str = r#"
[tables.notes]
owner = true
fields.title   = { type = "string", max = 200 }
fields.tag     = { type = "string?", index = true }
fields.pinned  = { type = "bool", default = false }
fields.rating  = { type = "int?", min = 1, max = 5 }
fields.labels  = { type = "list<string>", max = 20, default = [] }
fields.created = { type = "datetime", default = "now" }
indexes.by_tag_created = ["tag", "created"]

[tables.comments]
owner = true
fields.note = { type = "ref<notes>", on_delete = "cascade", index = true }
fields.text = { type = "string", max = 2000 }
"#;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&d.path().join("p.sqlite"), true).unwrap();
    (d, s)
}

fn apply(s: &mut SqliteStore, text: &str) -> crate::error::Result<crate::store::Migrated> {
    s.begin().unwrap();
    match s.apply_schema(text.as_bytes()) {
        Ok(m) => {
            s.commit().unwrap();
            Ok(m)
        }
        Err(e) => {
            s.rollback().unwrap();
            Err(e)
        }
    }
}

fn obj(v: Value) -> Row {
    v.as_object().unwrap().clone()
}

fn insert(s: &mut SqliteStore, table: &str, v: Value) -> crate::error::Result<Value> {
    let schema = s.schema().unwrap();
    let t = schema.table(table).unwrap();
    let row = prepare_insert(&schema, t, "alice", &obj(v), crate::util::now_ns())?;
    s.row_insert(table, &row)
}

fn sql_tables(s: &SqliteStore) -> Vec<String> {
    let mut stmt = s
        .conn
        .prepare("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 't\\_%' ESCAPE '\\' ORDER BY name")
        .unwrap();
    let it = stmt.query_map([], |r| r.get(0)).unwrap();
    it.collect::<rusqlite::Result<_>>().unwrap()
}

#[test]
fn the_example_becomes_strict_tables_with_indexes() {
    let (_d, mut s) = store();
    apply(&mut s, NOTES).unwrap();
    assert_eq!(sql_tables(&s), ["t_comments", "t_notes"]);
    let ddl = s.table_sql("t_notes").unwrap().unwrap();
    assert!(ddl.ends_with("STRICT"), "{ddl}");
    let n: i64 = s
        .conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type='index' AND tbl_name='t_notes' AND sql IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // The text is kept and survives a reopen.
    let path = s.path().to_path_buf();
    drop(s);
    let mut s = SqliteStore::open(&path, false).unwrap();
    assert_eq!(s.schema().unwrap().tables.len(), 2);
}

#[test]
fn rows_are_inserted_read_updated_and_deleted_with_cascades() {
    let (_d, mut s) = store();
    apply(&mut s, NOTES).unwrap();
    s.begin().unwrap();
    let id = insert(
        &mut s,
        "notes",
        json!({"title": "Groceries", "tag": "home"}),
    )
    .unwrap();
    let row = s.row_get("notes", &id).unwrap().unwrap();
    assert_eq!(row["title"], "Groceries");
    assert_eq!(row["owner"], "alice");
    assert_eq!(row["pinned"], false);
    assert_eq!(row["labels"], json!([]));
    assert!(row["created"].as_str().unwrap().ends_with('Z'));
    let schema = s.schema().unwrap();
    let after = apply_patch(
        &schema,
        schema.table("notes").unwrap(),
        &row,
        &obj(json!({"pinned": true})),
    )
    .unwrap();
    assert!(s.row_replace("notes", &after).unwrap());
    assert_eq!(s.row_get("notes", &id).unwrap().unwrap()["pinned"], true);
    let c = insert(&mut s, "comments", json!({"note": id, "text": "milk"})).unwrap();
    let e = insert(
        &mut s,
        "comments",
        json!({"note": crate::util::new_id(), "text": "x"}),
    )
    .unwrap_err();
    assert!(
        e.message.contains("table comments, field note") && e.message.contains("no such row"),
        "{}",
        e.message
    );
    assert!(s.row_delete("notes", &id).unwrap());
    assert_eq!(s.row_get("comments", &c).unwrap(), None);
    assert!(!s.row_delete("notes", &id).unwrap());
    s.commit().unwrap();
}

#[test]
fn restrict_holds_a_row_and_set_null_clears_the_ref() {
    let (_d, mut s) = store();
    apply(
        &mut s,
        "[tables.a]\n[tables.b]\nfields.r = { type = \"ref<a>\" }\n[tables.c]\nfields.r = { type = \"ref<a>?\", on_delete = \"set_null\" }\n",
    )
    .unwrap();
    s.begin().unwrap();
    let a = insert(&mut s, "a", json!({})).unwrap();
    let b = insert(&mut s, "b", json!({"r": a})).unwrap();
    let c = insert(&mut s, "c", json!({"r": a})).unwrap();
    let e = s.row_delete("a", &a).unwrap_err();
    assert_eq!(e.errno, libc::EBUSY, "{}", e.message);
    assert!(s.row_delete("b", &b).unwrap());
    assert!(s.row_delete("a", &a).unwrap());
    assert_eq!(s.row_get("c", &c).unwrap().unwrap()["r"], Value::Null);
    s.commit().unwrap();
}

#[test]
fn a_unique_clash_is_eexist() {
    let (_d, mut s) = store();
    apply(
        &mut s,
        "[tables.u]\nkey = \"string\"\nfields.mail = { type = \"string\", unique = true }\n",
    )
    .unwrap();
    s.begin().unwrap();
    insert(&mut s, "u", json!({"id": "a", "mail": "x@y"})).unwrap();
    let e = insert(&mut s, "u", json!({"id": "b", "mail": "x@y"})).unwrap_err();
    assert_eq!(e.errno, libc::EEXIST, "{}", e.message);
    let e = insert(&mut s, "u", json!({"id": "a", "mail": "z@y"})).unwrap_err();
    assert_eq!(e.errno, libc::EEXIST, "{}", e.message);
    s.commit().unwrap();
}

fn seeded(text: &str, rows: &[Value]) -> (tempfile::TempDir, SqliteStore) {
    let (d, mut s) = store();
    apply(&mut s, text).unwrap();
    s.begin().unwrap();
    for r in rows {
        insert(&mut s, "n", r.clone()).unwrap();
    }
    s.commit().unwrap();
    (d, s)
}

#[test]
fn an_added_field_takes_its_default_and_a_required_one_needs_one() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\n";
    let (_d, mut s) = seeded(base, &[json!({"id": "x", "a": 1})]);
    let e = apply(&mut s, &format!("{base}fields.b = {{ type = \"int\" }}\n")).unwrap_err();
    assert!(
        e.message.contains("table n, field b: 1 row have no value")
            || e.message.contains("table n, field b: 1 row have"),
        "{}",
        e.message
    );
    apply(&mut s, &format!("{base}fields.b = {{ type = \"int\", default = 7 }}\nfields.c = {{ type = \"string?\" }}\n")).unwrap();
    let row = s.row_get("n", &json!("x")).unwrap().unwrap();
    assert_eq!(
        (row["a"].clone(), row["b"].clone(), row["c"].clone()),
        (json!(1), json!(7), Value::Null)
    );
}

#[test]
fn a_tightening_applies_only_when_every_row_meets_it() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int?\" }\n";
    let rows = [
        json!({"id": "x", "a": 1}),
        json!({"id": "y", "a": 9}),
        json!({"id": "z"}),
    ];
    let (_d, mut s) = seeded(base, &rows);
    let e = apply(
        &mut s,
        "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int?\", max = 5 }\n",
    )
    .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(
        e.message.contains("table n, field a: 1 row do not meet")
            && e.message.contains("first ids: y"),
        "{}",
        e.message
    );
    let e = apply(
        &mut s,
        "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\n",
    )
    .unwrap_err();
    assert!(e.message.contains("first ids: z"), "{}", e.message);
    // Nothing changed: the old schema is in force.
    assert_eq!(
        s.schema()
            .unwrap()
            .table("n")
            .unwrap()
            .field("a")
            .unwrap()
            .max,
        None
    );
    assert!(s.tables_scan_all("n").len() == 3);
    apply(
        &mut s,
        "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int?\", max = 9 }\n",
    )
    .unwrap();
}

#[test]
fn dropping_data_needs_consent_and_keeps_it() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\nfields.b = { type = \"string?\" }\n";
    let (_d, mut s) = seeded(
        base,
        &[
            json!({"id": "x", "a": 1, "b": "keep me"}),
            json!({"id": "y", "a": 2}),
        ],
    );
    let only_a = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\n";
    let e = apply(&mut s, only_a).unwrap_err();
    assert!(
        e.message.contains("[confirm] drop")
            && e.message.contains("n.b")
            && e.message.contains("first ids: x"),
        "{}",
        e.message
    );
    let m = apply(&mut s, &format!("{only_a}[confirm]\ndrop = [\"n.b\"]\n")).unwrap();
    assert_eq!(
        m.removed,
        [(
            "n.b".to_string(),
            "{\"id\":\"x\",\"b\":\"keep me\"}\n".to_string()
        )]
    );
    assert_eq!(s.row_get("n", &json!("x")).unwrap().unwrap().get("b"), None);
    // A table with rows: consent too.
    let e = apply(&mut s, "").unwrap_err();
    assert!(e.message.contains("table n holds 2 rows"), "{}", e.message);
    let m = apply(&mut s, "[confirm]\ndrop = [\"n\"]\n").unwrap();
    assert_eq!(m.removed[0].0, "n");
    assert_eq!(m.removed[0].1.lines().count(), 2);
    assert!(sql_tables(&s).is_empty());
}

#[test]
fn a_lossy_type_change_needs_consent() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int?\" }\n";
    let (_d, mut s) = seeded(base, &[json!({"id": "x", "a": 1}), json!({"id": "y"})]);
    let to_string = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"string?\" }\n";
    let e = apply(&mut s, to_string).unwrap_err();
    assert!(
        e.message.contains("new type cannot") && e.message.contains("first ids: x"),
        "{}",
        e.message
    );
    let m = apply(&mut s, &format!("{to_string}[confirm]\ndrop = [\"n.a\"]\n")).unwrap();
    assert_eq!(m.removed.len(), 1);
    assert_eq!(
        s.row_get("n", &json!("x")).unwrap().unwrap()["a"],
        Value::Null
    );
    // int to float carries values over.
    let (_d2, mut s2) = seeded(base, &[json!({"id": "x", "a": 3})]);
    apply(
        &mut s2,
        "[tables.n]\nkey = \"string\"\nfields.a = { type = \"float?\" }\n",
    )
    .unwrap();
    assert_eq!(
        s2.row_get("n", &json!("x")).unwrap().unwrap()["a"],
        json!(3.0)
    );
}

#[test]
fn renames_keep_rows_and_values() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\n[tables.r]\nfields.to = { type = \"ref<n>?\" }\n";
    let (_d, mut s) = seeded(base, &[json!({"id": "x", "a": 1})]);
    apply(
        &mut s,
        "[tables.m]\nkey = \"string\"\nrenamed_from = \"n\"\nfields.b = { type = \"int\", renamed_from = \"a\" }\n[tables.r]\nfields.to = { type = \"ref<m>?\" }\n",
    )
    .unwrap();
    assert_eq!(sql_tables(&s), ["t_m", "t_r"]);
    assert_eq!(s.row_get("m", &json!("x")).unwrap().unwrap()["b"], 1);
}

#[test]
fn a_unique_field_over_duplicates_is_refused() {
    let base = "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\" }\n";
    let (_d, mut s) = seeded(
        base,
        &[
            json!({"id": "x", "a": 1}),
            json!({"id": "y", "a": 1}),
            json!({"id": "z", "a": 2}),
        ],
    );
    let e = apply(
        &mut s,
        "[tables.n]\nkey = \"string\"\nfields.a = { type = \"int\", unique = true }\n",
    )
    .unwrap_err();
    assert!(
        e.message.contains("2 rows share a value") && e.message.contains("first ids: x, y"),
        "{}",
        e.message
    );
}

#[test]
fn a_changed_key_kind_is_refused() {
    let (_d, mut s) = seeded("[tables.n]\nkey = \"string\"\n", &[json!({"id": "x"})]);
    let e = apply(&mut s, "[tables.n]\nkey = \"int\"\n").unwrap_err();
    assert!(
        e.message.contains("cannot change in place"),
        "{}",
        e.message
    );
}

#[test]
fn finds_filter_order_and_page() {
    let text = "[tables.n]\nkey = \"int\"\nfields.tag = { type = \"string?\", index = true }\nfields.r = { type = \"int?\" }\n";
    let rows: Vec<Value> = (1..=9)
        .map(|i| json!({"tag": if i % 3 == 0 { Value::Null } else { json!(format!("t{}", i % 2)) }, "r": i % 4}))
        .collect();
    let (_d, mut s) = seeded(text, &rows);
    let schema = s.schema().unwrap();
    let t = schema.table("n").unwrap();
    let find = |f: Value, o: Value| crate::tables::query::find(t, &obj(f), &obj(o)).unwrap();
    let ids = |s: &mut SqliteStore, f: &crate::tables::Find, cursor: Option<&Row>| {
        let mut out: Vec<i64> = Vec::new();
        s.row_scan("n", f, cursor, &mut |r| {
            out.push(r["id"].as_i64().unwrap());
            out.len() < f.limit
        })
        .unwrap();
        out
    };
    assert_eq!(
        ids(&mut s, &find(json!({"tag": "t1"}), json!({})), None),
        [1, 5, 7]
    );
    assert_eq!(
        ids(&mut s, &find(json!({"tag": null}), json!({})), None),
        [3, 6, 9]
    );
    assert_eq!(
        ids(
            &mut s,
            &find(json!({"r": {"gte": 2}}), json!({"order": "-r"})),
            None
        ),
        [7, 3, 6, 2]
    );
    assert_eq!(
        ids(
            &mut s,
            &find(json!({"tag": {"in": ["t0", "t1"]}}), json!({"limit": 2})),
            None
        ),
        [1, 2]
    );
    assert_eq!(
        ids(
            &mut s,
            &find(
                json!({"tag": {"prefix": "t"}}),
                json!({"order": "-id", "limit": 3})
            ),
            None
        ),
        [8, 7, 5]
    );
    // Keyset pages over a nullable column, both ways, cover every row once.
    for order in ["tag", "-tag"] {
        let f = find(json!({}), json!({"order": order, "limit": 2}));
        let mut seen: Vec<i64> = Vec::new();
        let mut cursor: Option<Row> = None;
        loop {
            let page = ids(&mut s, &f, cursor.as_ref());
            if page.is_empty() {
                break;
            }
            seen.extend(&page);
            cursor = s.row_get("n", &json!(page[page.len() - 1])).unwrap();
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=9).collect::<Vec<_>>(), "{order}: {seen:?}");
    }
    assert_eq!(
        s.row_count("n", &find(json!({"r": 1}), json!({})).filters)
            .unwrap(),
        3
    );
}

#[test]
fn query_work_is_counted_and_bounded() {
    let text = "[tables.n]\nkey = \"int\"\nfields.r = { type = \"int\" }\n";
    let rows: Vec<Value> = (0..2000).map(|i| json!({"r": i})).collect();
    let (_d, mut s) = seeded(text, &rows);
    s.limit_work(Some(1_000_000));
    assert_eq!(s.row_count("n", &[]).unwrap(), 2000);
    let schema = s.schema().unwrap();
    let f =
        crate::tables::query::filters(schema.table("n").unwrap(), &obj(json!({"r": {"gt": 1990}})))
            .unwrap();
    assert_eq!(s.row_count("n", &f).unwrap(), 9);
    assert!(s.work() > 0);
    s.limit_work(Some(2));
    assert!(s.row_count("n", &f).is_err());
    s.limit_work(None);
    assert_eq!(s.row_count("n", &f).unwrap(), 9);
}

impl SqliteStore {
    fn tables_scan_all(&mut self, table: &str) -> Vec<Row> {
        let schema = self.schema().unwrap();
        let t = schema.table(table).unwrap().clone();
        self.all_rows(&t).unwrap()
    }
}

#[test]
fn a_delete_refused_halfway_through_its_cascade_leaves_nothing() {
    let (_d, mut s) = store();
    apply(
        &mut s,
        "[tables.a]\n[tables.b]\nfields.r = { type = \"ref<a>\", on_delete = \"cascade\" }\n[tables.c]\nfields.r = { type = \"ref<b>\" }\n",
    )
    .unwrap();
    s.begin().unwrap();
    let a = insert(&mut s, "a", json!({})).unwrap();
    let b = insert(&mut s, "b", json!({"r": a})).unwrap();
    insert(&mut s, "c", json!({"r": b})).unwrap();
    // a cascades to b, which c holds: refused, and b is still there.
    assert_eq!(s.row_delete("a", &a).unwrap_err().errno, libc::EBUSY);
    assert!(s.row_get("b", &b).unwrap().is_some());
    assert!(s.row_get("a", &a).unwrap().is_some());
    s.commit().unwrap();
}
