//! `db.<table>.<op>` in scripts: the issue's example, bad data, hidden rows,
//! counted work.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::store::prelude::*;
use crate::store::SqliteStore;
use crate::tables::rows::Row;
use crate::tables::tests::NOTES;

struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    cache: Arc<AstCache>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("t.sqlite"), true).unwrap();
    store.begin().unwrap();
    store.apply_schema(NOTES.as_bytes()).unwrap();
    store.commit().unwrap();
    Fixture {
        _dir: dir,
        store,
        cache: Arc::new(AstCache::new()),
    }
}

fn run_as(f: &mut Fixture, src: &str, caller: &str, host: &dyn Host, limits: &Limits) -> Outcome {
    let stop = AtomicBool::new(false);
    let params = json!({});
    let input = RunInput {
        script_name: "t.rhai",
        source: src.as_bytes(),
        caller,
        target: "alice",
        params: &params,
        limits,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    let mut e = ScriptEngine::new(f.cache.clone(), Library::Embedded);
    f.store.begin().unwrap();
    let o = e.run(&input, &mut f.store, host);
    f.store.commit().unwrap();
    o
}

fn run(f: &mut Fixture, src: &str) -> Outcome {
    run_as(f, src, "alice", &OwnerHost, &Limits::default())
}

#[test]
fn the_example_runs_as_written() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"
        let id = db.notes.insert(#{ title: "Groceries", tag: "home" });
        let n  = db.notes.get(id);
        db.notes.update(id, #{ pinned: true });
        let home = db.notes.find(#{ tag: "home" });
        let t = "2000-01-01T00:00:00Z";
        let cursor = ();
        let page = db.notes.find(#{ created: #{ gte: t } }, #{ order: "-created", limit: 20, after: cursor });
        let k = db.notes.count(#{ pinned: true });
        db.comments.insert(#{ note: id, text: "milk" });
        let c1 = db.comments.count();
        db.notes.delete(id);
        #{ title: n.title, owner: n.owner, home: home.len(), page: page.len(), k: k,
           c1: c1, c2: db.comments.count(), gone: db.notes.get(id) == (),
           tags: db.notes.find(#{ tag: #{ "in": ["a", "b"] } }).len() }
        "#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(
        o.value,
        json!({"title": "Groceries", "owner": "alice", "home": 1, "page": 1, "k": 1,
               "c1": 1, "c2": 0, "gone": true, "tags": 0})
    );
    assert!(o.operations > 0);
}

#[test]
fn bad_data_ends_the_run_naming_table_field_expected_and_got() {
    let mut f = fixture();
    let o = run(&mut f, r#"db.notes.insert(#{ title: 5 })"#);
    assert_eq!(o.status, Status::Error);
    let e = o.error.unwrap();
    assert!(
        e.contains(
            "table notes, field title: expected string of at most 200 characters, got int 5"
        ),
        "{e}"
    );
    let o = run(&mut f, r#"db.notes.insert(#{ title: "x", colour: "red" })"#);
    assert!(o
        .error
        .unwrap()
        .contains("table notes: no field \"colour\""));
    let o = run(
        &mut f,
        r#"db.comments.insert(#{ note: "01JAAAAAAAAAAAAAAAAAAAAAAA", text: "x" })"#,
    );
    let e = o.error.unwrap();
    assert!(
        e.contains("table comments, field note") && e.contains("no such row"),
        "{e}"
    );
    let o = run(&mut f, r#"db.nope.count()"#);
    assert!(o.error.unwrap().contains("no table \"nope\""));
    // A script can catch it, and rows of a failed run are gone.
    let o = run(
        &mut f,
        r#"let r = "none"; try { db.notes.insert(#{ title: 5 }); } catch (e) { r = "caught"; } db.notes.insert(#{ title: "ok" }); r"#,
    );
    assert_eq!(o.value, json!("caught"), "{:?}", o.error);
    let o = run(&mut f, r#"db.notes.insert(#{ title: "lost" }); throw "no""#);
    assert_eq!(o.status, Status::Error);
    let o = run(&mut f, r#"db.notes.count()"#);
    assert_eq!(o.value, json!(1));
}

/// Another peer who may see only pinned notes and insert nothing.
struct PinnedOnly;

impl Host for PinnedOnly {
    fn check(&self, _: Capability, _: &str) -> crate::error::Result<()> {
        Ok(())
    }
    fn caller_get(&self, _: &str) -> crate::error::Result<Option<Value>> {
        Ok(None)
    }
    fn row_access(&self, a: RowAction, _: &str) -> Access {
        match a {
            RowAction::Select => Access::PerRow,
            _ => Access::None,
        }
    }
    fn check_row(&self, a: RowAction, t: &str, row: &Row) -> crate::error::Result<()> {
        if a == RowAction::Select && row.get("pinned") == Some(&json!(true)) {
            return Ok(());
        }
        Err(crate::error::err!(
            libc::EACCES,
            "{} on {t} denied by policy0",
            a.as_str()
        ))
    }
}

#[test]
fn rows_another_peer_may_not_select_are_invisible() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"let a = db.notes.insert(#{ title: "a", pinned: true }); let b = db.notes.insert(#{ title: "b" }); [a, b]"#,
    );
    let ids = o.value.as_array().unwrap().clone();
    let src = format!(
        r#"#{{ n: db.notes.count(), f: db.notes.find(#{{}}).len(), a: db.notes.get("{}") != (), b: db.notes.get("{}") == () }}"#,
        ids[0].as_str().unwrap(),
        ids[1].as_str().unwrap()
    );
    let o = run_as(&mut f, &src, "bob", &PinnedOnly, &Limits::default());
    assert_eq!(
        o.value,
        json!({"n": 1, "f": 1, "a": true, "b": true}),
        "{:?}",
        o.error
    );
    let o = run_as(
        &mut f,
        r#"db.notes.insert(#{ title: "x" })"#,
        "bob",
        &PinnedOnly,
        &Limits::default(),
    );
    assert_eq!(o.status, Status::Denied, "{:?}", o.error);
    // Deleting a row it cannot see: nothing to delete, nothing said.
    let src = format!(r#"db.notes.delete("{}")"#, ids[1].as_str().unwrap());
    let o = run_as(&mut f, &src, "bob", &PinnedOnly, &Limits::default());
    assert_eq!(o.status, Status::Denied);
    assert_eq!(run(&mut f, "db.notes.count()").value, json!(2));
}

#[test]
fn query_work_counts_against_max_operations() {
    let mut f = fixture();
    // The owner's wall limit: 3000 inserts in a debug build on a busy machine.
    let o = run_as(
        &mut f,
        r#"for i in 0..3000 { db.notes.insert(#{ title: `n${i}`, rating: i % 5 + 1 }); } 0"#,
        "alice",
        &OwnerHost,
        &Limits::own(),
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    let limits = Limits {
        max_operations: 100,
        ..Limits::default()
    };
    // An unindexed filter scans every row: more than 100 operations.
    let o = run_as(
        &mut f,
        r#"db.notes.count(#{ rating: 9 })"#,
        "alice",
        &OwnerHost,
        &limits,
    );
    assert_eq!(o.status, Status::Limit, "{:?} {:?}", o.error, o.value);
    assert!(o.error.unwrap().contains("max_operations"));
    let o = run_as(
        &mut f,
        r#"db.notes.count(#{ rating: 9 })"#,
        "alice",
        &OwnerHost,
        &Limits::default(),
    );
    assert_eq!(o.value, json!(0));
    assert!(o.operations > 100, "{}", o.operations);
}

#[test]
fn pages_with_after_cover_every_row_once() {
    let mut f = fixture();
    run(
        &mut f,
        r#"for i in 0..25 { db.notes.insert(#{ title: `n${i}`, tag: if i % 2 == 0 { "even" } else { () } }); } 0"#,
    );
    let o = run(
        &mut f,
        r#"
        let seen = [];
        let cursor = ();
        loop {
            let page = db.notes.find(#{}, #{ order: "-tag", limit: 4, after: cursor });
            if page.len() == 0 { break; }
            for r in page { seen.push(r.title); }
            cursor = page[page.len() - 1].id;
        }
        seen.len()
        "#,
    );
    assert_eq!(o.value, json!(25), "{:?}", o.error);
}
