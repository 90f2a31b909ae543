//! Tests of the SQLite backend: values and folders, savepoints, the queue and
//! outbox, reclaimed space, and migrations from older schemas.

use super::schema::MIGRATIONS;
use super::*;
use serde_json::json;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&d.path().join("p.sqlite"), true).unwrap();
    (d, s)
}

/// The store's file size once every commit is folded into it.
fn file_size(s: &mut SqliteStore) -> u64 {
    s.checkpoint().unwrap();
    std::fs::metadata(s.path()).unwrap().len()
}

#[test]
fn a_value_is_stored_once_and_its_space_comes_back_after_remove() {
    let (_d, mut s) = store();
    let base = file_size(&mut s);
    let big = vec![0u8; 8 << 20];
    s.begin().unwrap();
    s.set_bytes("z", &big).unwrap();
    s.commit().unwrap();
    let full = file_size(&mut s);
    assert!(
        full - base < (big.len() as u64) * 11 / 10,
        "8 MiB of NULs took {} bytes on disk",
        full - base
    );
    assert_eq!(s.get_bytes("z").unwrap().unwrap(), big);
    assert_eq!(s.get("z").unwrap(), Some(json!("\0".repeat(8 << 20))));
    assert_eq!(s.stat_key("z").unwrap().unwrap().unwrap().size, 8 << 20);

    // Replaced by a small value, then by a big one again and removed: the file
    // gives the space back each time.
    s.begin().unwrap();
    s.set("z", &json!(1)).unwrap();
    s.commit().unwrap();
    assert!(
        file_size(&mut s) < base + (2 << 20),
        "space kept after a shrink"
    );
    s.begin().unwrap();
    s.set_bytes("z", &big).unwrap();
    s.commit().unwrap();
    s.begin().unwrap();
    assert!(s.remove("z").unwrap());
    s.commit().unwrap();
    let after = file_size(&mut s);
    assert!(
        after < base + (2 << 20),
        "after rm the store is {after} bytes (it was {base} before the value)"
    );
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn rename_moves_the_key_and_keeps_bytes_type_and_time() {
    let (_d, mut s) = store();
    s.begin().unwrap();
    s.set_bytes("a", b"raw\n").unwrap();
    s.set("n", &json!({"x": 1})).unwrap();
    s.set("dir/k", &json!(2)).unwrap();
    s.commit().unwrap();
    let t = s.stat_key("a").unwrap().unwrap().unwrap().mtime_ns;
    s.begin().unwrap();
    s.rename("a", "b").unwrap();
    s.rename("n", "b2").unwrap();
    assert_eq!(s.rename("b", "dir").unwrap_err().errno, libc::EISDIR);
    assert_eq!(s.rename("b", "b2/x").unwrap_err().errno, libc::ENOTDIR);
    s.rename("b2", "b").unwrap();
    s.commit().unwrap();
    assert_eq!(s.get("a").unwrap(), None);
    assert_eq!(s.get("b").unwrap(), Some(json!({"x": 1})));
    s.begin().unwrap();
    s.set_bytes("a", b"raw\n").unwrap();
    s.rename("a", "c").unwrap();
    s.commit().unwrap();
    assert_eq!(s.get_bytes("c").unwrap().unwrap(), b"raw\n");
    assert_eq!(s.get("c").unwrap(), Some(json!("raw")));
    assert!(s.stat_key("c").unwrap().unwrap().unwrap().mtime_ns >= t);
    let rows: i64 = s
        .conn
        .query_row("SELECT count(*) FROM state_data", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3, "one blob per key, none left behind");
}

#[test]
fn a_folder_moves_with_every_key_in_it() {
    let (_d, mut s) = store();
    s.begin().unwrap();
    for k in ["d/a", "d/s/b", "dé/x", "d-", "e/k"] {
        s.set(k, &json!(k)).unwrap();
    }
    assert_eq!(s.rename_dir("d", "n/m").unwrap(), 2);
    assert_eq!(s.rename_dir("n", "e").unwrap_err().errno, libc::ENOTEMPTY);
    assert_eq!(s.rename_dir("n", "d-").unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(s.rename_dir("n", "n/m/o").unwrap_err().errno, libc::EINVAL);
    assert_eq!(s.rename_dir("dé", "ü").unwrap(), 1);
    s.commit().unwrap();
    assert_eq!(
        s.keys("", 100).unwrap(),
        ["d-", "e/k", "n/m/a", "n/m/s/b", "ü/x"]
    );
    assert_eq!(s.get("n/m/s/b").unwrap(), Some(json!("d/s/b")));
}

#[test]
fn values_keep_their_type() {
    let (_d, mut s) = store();
    for (k, v) in [
        ("n", json!(42)),
        ("f", json!(1.5)),
        ("m", json!({"a":[1,"x"]})),
        ("s", json!("hi")),
    ] {
        s.set(k, &v).unwrap();
        assert_eq!(s.get(k).unwrap(), Some(v));
    }
    assert_eq!(s.get_bytes("n").unwrap().unwrap(), b"42\n");
    assert_eq!(s.get_bytes("s").unwrap().unwrap(), b"hi");
    s.set_bytes("w", b"41\n").unwrap();
    assert_eq!(s.get("w").unwrap(), Some(json!(41)));
    assert_eq!(s.get_bytes("w").unwrap().unwrap(), b"41\n");
}

#[test]
fn folders_and_values_never_share_a_name() {
    let (_d, mut s) = store();
    s.set("a/b", &json!(1)).unwrap();
    assert_eq!(s.set("a", &json!(1)).unwrap_err().errno, libc::EISDIR);
    assert_eq!(s.set("a/b/c", &json!(1)).unwrap_err().errno, libc::ENOTDIR);
    s.set("a/b", &json!(2)).unwrap();
    assert_eq!(s.stat_key("a").unwrap(), Some(None));
    assert!(matches!(s.stat_key("a/b").unwrap(), Some(Some(_))));
    assert_eq!(s.stat_key("zz").unwrap(), None);
}

#[test]
fn list_dir_shows_files_and_folders_once() {
    let (_d, mut s) = store();
    for k in ["a/x", "a/y/1", "a/y/2", "a-b", "a/z", "b", "a/y-1"] {
        s.set(k, &json!(k)).unwrap();
    }
    let top: Vec<_> = s
        .list_dir("")
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(
        top,
        vec![
            ("a".into(), true),
            ("a-b".into(), false),
            ("b".into(), false)
        ]
    );
    let a: Vec<_> = s
        .list_dir("a")
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(
        a,
        vec![
            ("x".into(), false),
            ("y".into(), true),
            ("y-1".into(), false),
            ("z".into(), false)
        ]
    );
    assert_eq!(s.keys("a/y/", 10).unwrap(), vec!["a/y/1", "a/y/2"]);
}

#[test]
fn savepoint_rollback_undoes_only_that_run() {
    let (_d, mut s) = store();
    s.begin().unwrap();
    s.savepoint().unwrap();
    s.set("kept", &json!(1)).unwrap();
    s.append_log("one").unwrap();
    s.release().unwrap();
    s.savepoint().unwrap();
    s.set("undone", &json!(1)).unwrap();
    s.append_log("two-undone").unwrap();
    s.rollback_to().unwrap();
    s.append_log("three").unwrap();
    s.commit().unwrap();
    assert_eq!(s.get("kept").unwrap(), Some(json!(1)));
    assert_eq!(s.get("undone").unwrap(), None);
    let size = s.log_size().unwrap();
    assert_eq!(s.read_log(0, 1000).unwrap(), b"one\nthree\n");
    assert_eq!(size, 10);
    assert_eq!(s.read_log(2, 4).unwrap(), b"e\nth");
    assert_eq!(s.read_log(10, 4).unwrap(), b"");
}

#[test]
fn uncommitted_work_is_gone_after_reopen() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.sqlite");
    {
        let mut s = SqliteStore::open(&p, true).unwrap();
        s.set("committed", &json!(1)).unwrap();
        s.begin().unwrap();
        s.set("lost", &json!(1)).unwrap();
        // Dropped without commit: like a crash mid-run.
    }
    let mut s = SqliteStore::open(&p, false).unwrap();
    assert_eq!(s.get("committed").unwrap(), Some(json!(1)));
    assert_eq!(s.get("lost").unwrap(), None);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn queue_outbox_and_messages() {
    let (_d, mut s) = store();
    let job = Job {
        seq: 0,
        id: "R1".into(),
        name: "job.rhai".into(),
        source: b"1".to_vec(),
        caller: "alice".into(),
        params: "{}".into(),
        msg_id: None,
        hops: 0,
        submitted_at: 5,
        ..Default::default()
    };
    let seq = s.enqueue(&job).unwrap();
    assert_eq!(s.queued(10).unwrap()[0].seq, seq);
    s.outbox_pending("alice", "job.json", "R1", 5).unwrap();
    s.outbox_pending("alice", "job.json", "R2", 6).unwrap();
    assert!(
        !s.outbox_finish("alice", "job.json", "R1", "{}", 7).unwrap(),
        "stale run must not win"
    );
    assert!(s
        .outbox_finish("alice", "job.json", "R2", "{\"v\":1}", 8)
        .unwrap());
    assert_eq!(
        s.outbox_get("alice", "job.json")
            .unwrap()
            .unwrap()
            .result
            .unwrap(),
        "{\"v\":1}"
    );
    s.dequeue(seq).unwrap();
    assert_eq!(s.queue_len().unwrap(), 0);
    assert!(!s.seen_message("m1").unwrap());
    s.mark_message("m1").unwrap();
    assert!(s.seen_message("m1").unwrap());
}

#[test]
fn an_older_schema_is_migrated_on_open_and_keeps_its_data() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.sqlite");
    {
        let c = Connection::open(&p).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "PRAGMA user_version=1; INSERT INTO state VALUES('k', '5', NULL, 2, 0);
             INSERT INTO state VALUES('f', '\"hi\"', X'68690a', 3, 7);
             INSERT INTO runs(id, name, caller, status, result, finished_at)
                VALUES('r1', 'a.rhai', 'p', 'ok', '{}', 1), ('r2', 'b.rhai', 'p', 'ok', '{}', 2);
             DELETE FROM runs WHERE id='r2';",
        )
        .unwrap();
    }
    let mut s = SqliteStore::open(&p, false).unwrap();
    let v: i64 = s
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v as usize, MIGRATIONS.len());
    let idx: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name='queue_name'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(idx, 1);
    assert_eq!(s.get("k").unwrap(), Some(json!(5)));
    assert_eq!(s.get_bytes("k").unwrap().unwrap(), b"5\n");
    assert_eq!(s.get_bytes("f").unwrap().unwrap(), b"hi\n");
    assert_eq!(s.get("f").unwrap(), Some(json!("hi")));
    assert_eq!(
        s.stat_key("f").unwrap(),
        Some(Some(FileStat {
            size: 3,
            mtime_ns: 7,
            mode: None,
            ctime_ns: 7,
        }))
    );
    let vacuum: i64 = s
        .conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(vacuum, 2, "an old store is switched to incremental vacuum");
    // The run history came across (3: without AUTOINCREMENT), and a new run
    // gets a seq above every kept one.
    let runs: Vec<(i64, String)> = s
        .conn
        .prepare("SELECT seq, id FROM runs ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(runs, [(1, "r1".to_string())]);
    let sql: String = s
        .conn
        .query_row("SELECT sql FROM sqlite_master WHERE name='runs'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
    let job = Job {
        seq: 0,
        id: "r3".into(),
        name: "c.rhai".into(),
        source: vec![],
        caller: "p".into(),
        params: "{}".into(),
        msg_id: None,
        hops: 0,
        submitted_at: 3,
        ..Default::default()
    };
    s.begin().unwrap();
    s.record_run(&job, "ok", "{}", 4).unwrap();
    s.commit().unwrap();
    let max: i64 = s
        .conn
        .query_row("SELECT max(seq) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(max, 2);
}

#[test]
fn migrations_refuse_a_newer_schema() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.sqlite");
    drop(SqliteStore::open(&p, true).unwrap());
    let c = Connection::open(&p).unwrap();
    c.execute_batch("PRAGMA user_version=99").unwrap();
    drop(c);
    let e = SqliteStore::open(&p, false).err().unwrap();
    assert!(e.message.contains("newer"), "{}", e.message);
}
