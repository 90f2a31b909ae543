//! The history of declared tables at the store layer: rows inserted, updated
//! and deleted (with cascades and `set_null`) are items of their entry, undone
//! and restored; a schema change is an item, undone by its old text, refused
//! when it dropped data; a table as right after an entry.

use serde_json::{json, Value};

use super::*;
use crate::store::history::{EntryHead, History, ItemKind, Point};
use crate::tables::rows::{apply_patch, prepare_insert, Row};
use crate::tables::ID;

const SCHEMA: &str = r#"
[tables.notes]
owner = true
fields.title = { type = "string", max = 200 }
fields.pinned = { type = "bool", default = false }

[tables.comments]
owner = true
fields.note = { type = "ref<notes>", on_delete = "cascade", index = true }
fields.text = { type = "string" }

[tables.links]
key = "int"
fields.note = { type = "ref<notes>?", on_delete = "set_null" }
"#;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&d.path().join("p.sqlite"), true).unwrap();
    (d, s)
}

fn entry<T>(s: &mut SqliteStore, id: &str, f: impl FnOnce(&mut SqliteStore) -> T) -> T {
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id: id.into(),
        name: format!("{id}.rhai"),
        caller: "bob".into(),
        chain: vec!["bob".into()],
    })
    .unwrap();
    let r = f(s);
    s.end_entry().unwrap();
    s.commit().unwrap();
    r
}

fn insert(s: &mut SqliteStore, table: &str, v: Value) -> Value {
    let schema = s.schema().unwrap();
    let t = schema.table(table).unwrap();
    let row = prepare_insert(&schema, t, "bob", v.as_object().unwrap(), 0).unwrap();
    s.row_insert(table, &row).unwrap()
}

fn update(s: &mut SqliteStore, table: &str, id: &Value, patch: Value) {
    let schema = s.schema().unwrap();
    let t = schema.table(table).unwrap();
    let before = s.row_get(table, id).unwrap().unwrap();
    let row = apply_patch(&schema, t, &before, patch.as_object().unwrap()).unwrap();
    assert!(s.row_replace(table, &row).unwrap());
}

fn get(s: &mut SqliteStore, table: &str, id: &Value) -> Option<Row> {
    s.row_get(table, id).unwrap()
}

fn with_schema() -> (tempfile::TempDir, SqliteStore) {
    let (d, mut s) = store();
    entry(&mut s, "S", |s| s.apply_schema(SCHEMA.as_bytes()).unwrap());
    (d, s)
}

/// Rows one JSON object a line, as `tables/<table>.jsonl` shows them.
fn lines(rows: Vec<Row>) -> String {
    rows.iter()
        .map(|r| format!("{}\n", Value::Object(r.clone())))
        .collect()
}

fn kinds(s: &mut SqliteStore, id: &str) -> Vec<(ItemKind, String)> {
    let seq = s.entry(id).unwrap().unwrap().seq;
    (s.changes(seq, 4096).unwrap().into_iter())
        .map(|c| (c.kind, c.item))
        .collect()
}

#[test]
fn an_insert_is_an_item_and_undo_removes_the_row_and_redo_brings_it_back() {
    let (_d, mut s) = with_schema();
    assert_eq!(kinds(&mut s, "S"), vec![(ItemKind::Meta, "schema".into())]);
    let id = entry(&mut s, "A", |s| {
        insert(s, "notes", json!({ "title": "milk" }))
    });
    let item = format!("notes/{}", id.as_str().unwrap());
    let seq = s.entry("A").unwrap().unwrap().seq;
    let ch = s.changes(seq, 4096).unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!((ch[0].kind, ch[0].item.clone()), (ItemKind::Row, item));
    assert!(ch[0].before.is_none());
    let after: Value =
        serde_json::from_slice(ch[0].after.as_ref().unwrap().value.as_ref().unwrap()).unwrap();
    assert_eq!(after["title"], "milk");
    assert_eq!(after["owner"], "bob");

    entry(&mut s, "U", |s| s.undo("A", false).unwrap());
    assert!(get(&mut s, "notes", &id).is_none());
    entry(&mut s, "R", |s| s.undo("U", false).unwrap());
    assert_eq!(get(&mut s, "notes", &id).unwrap()["title"], "milk");
}

#[test]
fn an_update_is_undone_and_a_later_update_of_the_row_refuses_naming_it() {
    let (_d, mut s) = with_schema();
    let id = entry(&mut s, "A", |s| {
        insert(s, "notes", json!({ "title": "one" }))
    });
    entry(&mut s, "B", |s| {
        update(s, "notes", &id, json!({ "title": "two" }))
    });
    entry(&mut s, "C", |s| {
        update(s, "notes", &id, json!({ "pinned": true }))
    });
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id: "U".into(),
        ..Default::default()
    })
    .unwrap();
    let e = s.undo("B", false).unwrap_err();
    assert_eq!(e.errno, libc::EBUSY);
    assert!(e.message.contains("C"), "{}", e.message);
    s.end_entry().unwrap();
    s.rollback().unwrap();
    let undone = entry(&mut s, "U", |s| s.undo("B", true).unwrap());
    assert_eq!(undone, vec!["C".to_string(), "B".to_string()]);
    let row = get(&mut s, "notes", &id).unwrap();
    assert_eq!(
        (row["title"].clone(), row["pinned"].clone()),
        (json!("one"), json!(false))
    );
}

#[test]
fn a_cascade_delete_and_a_set_null_are_items_and_undo_brings_every_row_back() {
    let (_d, mut s) = with_schema();
    let (n, c, l) = entry(&mut s, "A", |s| {
        let n = insert(s, "notes", json!({ "title": "n" }));
        let c = insert(s, "comments", json!({ "note": n, "text": "c" }));
        let l = insert(s, "links", json!({ "note": n }));
        (n, c, l)
    });
    entry(&mut s, "D", |s| assert!(s.row_delete("notes", &n).unwrap()));
    assert!(get(&mut s, "comments", &c).is_none());
    assert_eq!(get(&mut s, "links", &l).unwrap()["note"], Value::Null);
    let mut items: Vec<_> = kinds(&mut s, "D").into_iter().map(|k| k.1).collect();
    items.sort();
    let mut want = vec![
        format!("comments/{}", c.as_str().unwrap()),
        format!("links/{l}"),
        format!("notes/{}", n.as_str().unwrap()),
    ];
    want.sort();
    assert_eq!(items, want);
    entry(&mut s, "U", |s| s.undo("D", false).unwrap());
    assert_eq!(get(&mut s, "notes", &n).unwrap()["title"], "n");
    assert_eq!(get(&mut s, "comments", &c).unwrap()["note"], n);
    assert_eq!(get(&mut s, "links", &l).unwrap()["note"], n);
    // Undoing the insert of all three deletes them again (children first).
    entry(&mut s, "U2", |s| s.undo("A", true).unwrap());
    assert_eq!(s.row_count("notes", &[]).unwrap(), 0);
    assert_eq!(s.row_count("comments", &[]).unwrap(), 0);
}

#[test]
fn a_schema_change_is_undone_and_rows_written_under_it_are_in_the_way() {
    let (_d, mut s) = with_schema();
    let more = format!("{SCHEMA}\n[tables.tags]\nfields.name = {{ type = \"string\" }}\n");
    entry(&mut s, "M", |s| s.apply_schema(more.as_bytes()).unwrap());
    entry(&mut s, "T", |s| insert(s, "tags", json!({ "name": "x" })));
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id: "U".into(),
        ..Default::default()
    })
    .unwrap();
    let e = s.undo("M", false).unwrap_err();
    assert!(e.message.contains("T"), "{}", e.message);
    s.end_entry().unwrap();
    s.rollback().unwrap();
    entry(&mut s, "U", |s| s.undo("M", true).unwrap());
    assert!(s.schema().unwrap().table("tags").is_none());
    assert_eq!(s.meta("schema").unwrap().unwrap().0, SCHEMA.as_bytes());
    // And back: the table and its row.
    entry(&mut s, "R", |s| s.undo("U", false).unwrap());
    assert_eq!(s.row_count("tags", &[]).unwrap(), 1);
}

#[test]
fn undoing_a_schema_change_that_dropped_data_is_refused_and_changes_nothing() {
    let (_d, mut s) = with_schema();
    let id = entry(&mut s, "A", |s| insert(s, "notes", json!({ "title": "t" })));
    let less = SCHEMA.replace("fields.pinned = { type = \"bool\", default = false }\n", "")
        + "\n[confirm]\ndrop = [\"notes.pinned\"]\n";
    entry(&mut s, "M", |s| s.apply_schema(less.as_bytes()).unwrap());
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id: "U".into(),
        ..Default::default()
    })
    .unwrap();
    let e = s.undo("M", false).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(e.message.contains("notes.pinned"), "{}", e.message);
    s.end_entry().unwrap();
    s.rollback().unwrap();
    assert_eq!(s.meta("schema").unwrap().unwrap().0, less.as_bytes());
    assert!(get(&mut s, "notes", &id).unwrap().get("pinned").is_none());
}

#[test]
fn restore_to_a_point_with_rows_and_a_table_as_right_after_an_entry() {
    let (_d, mut s) = with_schema();
    let a = entry(&mut s, "A", |s| insert(s, "notes", json!({ "title": "a" })));
    let b = entry(&mut s, "B", |s| insert(s, "notes", json!({ "title": "b" })));
    entry(&mut s, "C", |s| {
        update(s, "notes", &a, json!({ "title": "a2" }))
    });
    let more = format!("{SCHEMA}\n[tables.tags]\nfields.name = {{ type = \"string\" }}\n");
    entry(&mut s, "M", |s| s.apply_schema(more.as_bytes()).unwrap());
    entry(&mut s, "T", |s| insert(s, "tags", json!({ "name": "x" })));

    let seq_a = s.entry("A").unwrap().unwrap().seq;
    let seq_c = s.entry("C").unwrap().unwrap().seq;
    let text = lines(s.table_at(seq_a, "notes").unwrap().unwrap());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"title\":\"a\""), "{text}");
    let text = lines(s.table_at(seq_c, "notes").unwrap().unwrap());
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("\"a2\"") && text.contains("\"b\""), "{text}");
    assert!(s.table_at(seq_c, "tags").unwrap().is_none());
    // A field added later is not shown as of before it.
    let rated = more.replace(
        "fields.pinned",
        "fields.rating = { type = \"int?\" }\nfields.pinned",
    );
    entry(&mut s, "F", |s| s.apply_schema(rated.as_bytes()).unwrap());
    let text = lines(s.table_at(seq_c, "notes").unwrap().unwrap());
    assert!(!text.contains("rating"), "{text}");
    let seq_f = s.entry("F").unwrap().unwrap().seq;
    let text = lines(s.table_at(seq_f, "notes").unwrap().unwrap());
    assert!(text.contains("\"rating\":null"), "{text}");
    assert_eq!(
        s.tables_at(seq_c).unwrap(),
        vec!["comments", "links", "notes"]
    );

    let undone = entry(&mut s, "R", |s| s.restore(&Point::Run("A".into())).unwrap());
    assert_eq!(undone, vec!["F", "T", "M", "C", "B"]);
    assert_eq!(get(&mut s, "notes", &a).unwrap()["title"], "a");
    assert!(get(&mut s, "notes", &b).is_none());
    assert!(s.schema().unwrap().table("tags").is_none());
    // The restore is one entry and can be undone.
    entry(&mut s, "R2", |s| s.undo("R", false).unwrap());
    assert_eq!(get(&mut s, "notes", &a).unwrap()["title"], "a2");
    assert_eq!(s.row_count("tags", &[]).unwrap(), 1);
}

#[test]
fn without_an_entry_rows_record_nothing() {
    let (_d, mut s) = with_schema();
    s.begin().unwrap();
    insert(&mut s, "notes", json!({ "title": "x" }));
    s.commit().unwrap();
    assert_eq!(s.entries(0, 10).unwrap().len(), 1);
}

#[test]
fn a_schema_change_and_a_later_policy_change_are_in_each_others_way() {
    let (_d, mut s) = with_schema();
    let more = format!("{SCHEMA}\n[tables.tags]\nfields.name = {{ type = \"string\" }}\n");
    entry(&mut s, "M", |s| s.apply_schema(more.as_bytes()).unwrap());
    entry(&mut s, "P", |s| {
        s.set_meta("policy", b"// uses tags").unwrap()
    });
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id: "U".into(),
        ..Default::default()
    })
    .unwrap();
    let e = s.undo("M", false).unwrap_err();
    assert!(
        e.message.contains("later runs changed the same items: P"),
        "{}",
        e.message
    );
    s.end_entry().unwrap();
    s.rollback().unwrap();
    let undone = entry(&mut s, "U", |s| s.undo("M", true).unwrap());
    assert_eq!(undone, vec!["P", "M"]);
    assert!(s.meta("policy").unwrap().is_none());
    assert!(s.schema().unwrap().table("tags").is_none());
}

/// A step of the model test of rows.
#[derive(Debug, Clone)]
enum Step {
    Note(u8),
    Comment(u8, u8),
    Update(u8, u8),
    DeleteNote(u8),
    DeleteComment(u8),
    UndoLast,
    Restore(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Note),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(n, v)| Step::Comment(n, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(n, v)| Step::Update(n, v)),
        1 => any::<u8>().prop_map(Step::DeleteNote),
        1 => any::<u8>().prop_map(Step::DeleteComment),
        1 => Just(Step::UndoLast),
        1 => any::<u8>().prop_map(Step::Restore),
    ]
}

const INTS: &str = r#"
[tables.notes]
key = "int"
fields.v = { type = "int" }

[tables.comments]
key = "int"
fields.note = { type = "ref<notes>", on_delete = "cascade" }
fields.v = { type = "int" }
"#;

/// Both tables as JSON lines, as `table_at` shows them.
fn live(s: &mut SqliteStore) -> [String; 2] {
    let seq = s.entries(0, usize::MAX >> 1).unwrap().last().unwrap().seq;
    ["notes", "comments"].map(|t| lines(s.table_at(seq, t).unwrap().unwrap()))
}

fn nth(s: &mut SqliteStore, table: &str, i: u8) -> Option<Value> {
    let mut all = Vec::new();
    let find = crate::tables::Find {
        filters: Vec::new(),
        order: crate::tables::Order {
            col: ID.into(),
            desc: false,
        },
        limit: usize::MAX,
        after: None,
    };
    s.row_scan(table, &find, None, &mut |r| {
        all.push(r[ID].clone());
        true
    })
    .unwrap();
    (!all.is_empty()).then(|| all[i as usize % all.len()].clone())
}

/// Applies one step in an entry; whether it was kept.
fn run_step(s: &mut SqliteStore, step: &Step, ids: &[String], n: usize) -> bool {
    let id = format!("E{n}");
    s.begin().unwrap();
    s.begin_entry(&EntryHead {
        id,
        ..Default::default()
    })
    .unwrap();
    match *step {
        Step::Note(v) => {
            insert(s, "notes", json!({ "v": v }));
        }
        Step::Comment(i, v) => {
            if let Some(n) = nth(s, "notes", i) {
                insert(s, "comments", json!({ "note": n, "v": v }));
            }
        }
        Step::Update(i, v) => {
            if let Some(n) = nth(s, "notes", i) {
                update(s, "notes", &n, json!({ "v": v }));
            }
        }
        Step::DeleteNote(i) => {
            if let Some(n) = nth(s, "notes", i) {
                s.row_delete("notes", &n).unwrap();
            }
        }
        Step::DeleteComment(i) => {
            if let Some(c) = nth(s, "comments", i) {
                s.row_delete("comments", &c).unwrap();
            }
        }
        Step::UndoLast => {
            s.undo(ids.last().unwrap(), false).unwrap();
        }
        Step::Restore(i) => {
            s.restore(&Point::Run(ids[i as usize % ids.len()].clone()))
                .unwrap();
        }
    }
    let kept = s.end_entry().unwrap().kept;
    s.commit().unwrap();
    kept
}

fn check_rows_model(steps: Vec<Step>) {
    let (_d, mut s) = store();
    entry(&mut s, "S", |s| s.apply_schema(INTS.as_bytes()).unwrap());
    // After each kept entry, its id and both tables then.
    let mut snaps: Vec<(String, [String; 2])> = vec![("S".into(), live(&mut s))];
    for (n, step) in steps.iter().enumerate() {
        let ids: Vec<String> = snaps.iter().map(|e| e.0.clone()).collect();
        if matches!(step, Step::UndoLast) && ids.len() < 2 {
            continue;
        }
        let want = match step {
            Step::UndoLast => Some(snaps[snaps.len() - 2].1.clone()),
            Step::Restore(i) => Some(snaps[*i as usize % snaps.len()].1.clone()),
            _ => None,
        };
        if run_step(&mut s, step, &ids, n) {
            snaps.push((format!("E{n}"), live(&mut s)));
        }
        if let Some(want) = want {
            assert_eq!(live(&mut s), want, "after {step:?}");
        }
    }
    // Every entry's tables as right after it, read back from the history.
    for (id, want) in &snaps {
        let seq = s.entry(id).unwrap().unwrap().seq;
        let got = ["notes", "comments"].map(|t| lines(s.table_at(seq, t).unwrap().unwrap()));
        assert_eq!(&got, want, "tables after {id}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn rows_match_a_model_that_keeps_the_tables_after_every_entry(steps in proptest::collection::vec(step(), 1..40)) {
        check_rows_model(steps);
    }
}

#[test]
fn undo_frees_a_unique_value_before_putting_it_back() {
    let (_d, mut s) = store();
    let text =
        "[tables.users]\nkey = \"int\"\nfields.name = { type = \"string\", unique = true }\n";
    entry(&mut s, "S", |s| s.apply_schema(text.as_bytes()).unwrap());
    let a = entry(&mut s, "A", |s| insert(s, "users", json!({ "name": "x" })));
    let b = entry(&mut s, "B", |s| {
        update(s, "users", &a, json!({ "name": "y" }));
        insert(s, "users", json!({ "name": "x" }))
    });
    entry(&mut s, "U", |s| s.undo("B", false).unwrap());
    assert_eq!(get(&mut s, "users", &a).unwrap()["name"], "x");
    assert!(get(&mut s, "users", &b).is_none());
}

#[test]
fn a_delete_refused_halfway_through_its_cascade_leaves_nothing_in_the_entry() {
    let (_d, mut s) = store();
    let text = format!(
        "{SCHEMA}\n[tables.likes]\nkey = \"int\"\nfields.comment = {{ type = \"ref<comments>\", on_delete = \"restrict\" }}\n"
    );
    entry(&mut s, "S", |s| s.apply_schema(text.as_bytes()).unwrap());
    let n = entry(&mut s, "A", |s| {
        let n = insert(s, "notes", json!({ "title": "n" }));
        insert(s, "comments", json!({ "note": n, "text": "free" }));
        let c2 = insert(s, "comments", json!({ "note": n, "text": "liked" }));
        insert(s, "likes", json!({ "comment": c2 }));
        n
    });
    let other = entry(&mut s, "B", |s| {
        let e = s.row_delete("notes", &n).unwrap_err();
        assert_eq!(e.errno, libc::EBUSY);
        insert(s, "notes", json!({ "title": "other" }))
    });
    // Only the insert: the comment the cascade deleted before the refusal is back
    // and not in the entry.
    assert_eq!(
        kinds(&mut s, "B"),
        vec![(ItemKind::Row, format!("notes/{}", other.as_str().unwrap()))]
    );
    assert_eq!(s.row_count("comments", &[]).unwrap(), 2);
    let seq = s.entry("B").unwrap().unwrap().seq;
    assert!(s.changes(seq, 4096).unwrap()[0].after.is_some());
    assert_eq!(s.integrity_check().unwrap(), "ok");
}
