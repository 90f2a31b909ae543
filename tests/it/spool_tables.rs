//! Declared tables in spool mode: `schema.toml` copied in (applied, or refused
//! with the reason in `log`), rows mirrored under `tables/` and in other peers'
//! views as their policy lets them select, and the owner's row files written,
//! refused and removed, as on the mount.

use crate::common;
use crate::spool_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{q, sh_ok as sh};
use serde_json::{json, Value};
use spool_support::{names, peerfs, wait_json, wait_until, SpoolDaemon};

const T: Duration = Duration::from_secs(30);

const SCHEMA: &str = r#"
[tables.notes]
key   = "ulid"
owner = true
fields.title   = { type = "string", max = 200 }
fields.pinned  = { type = "bool", default = false }

[tables.users]
key = "string"
fields.mail = { type = "string", unique = true }
fields.age  = { type = "int?", min = 0 }

[tables.posts]
fields.author = { type = "ref<users>" }
"#;

fn serving(peers: &[&str]) -> (tempfile::TempDir, PathBuf, SpoolDaemon) {
    let t = tempfile::tempdir().unwrap();
    let (data, dir) = (t.path().join("data"), t.path().join("spool"));
    for p in peers {
        let o = peerfs(&["peer", "create", p, "--data", data.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let d = SpoolDaemon::start(&data, &dir, t.path());
    (t, dir, d)
}

fn log_has(dir: &Path, peer: &str, what: &str) -> bool {
    wait_until(T, || {
        std::fs::read_to_string(dir.join(peer).join("log")).is_ok_and(|l| l.contains(what))
    })
}

/// Runs `src` as `peer`'s own script: its value.
fn run(dir: &Path, peer: &str, name: &str, src: &str) -> Value {
    let out = dir.join(peer).join(format!("outbox/{name}.json"));
    let _ = std::fs::remove_file(&out);
    let tmp = dir.join(peer).join(format!("inbox/.{name}.rhai"));
    std::fs::write(&tmp, src).unwrap();
    std::fs::rename(&tmp, dir.join(peer).join(format!("inbox/{name}.rhai"))).unwrap();
    let r = wait_json(&out, T);
    assert_eq!(r["status"], "ok", "{r}");
    r["value"].clone()
}

/// Writes `text` to `path` the maildir way (a dot name, then a rename).
fn put(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(".{}", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn json_of(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn install(dir: &Path, peer: &str) {
    sh(&format!(
        "cat > {} <<'EOF'\n{SCHEMA}\nEOF",
        q(&dir.join(peer).join("schema.toml"))
    ));
    assert!(log_has(dir, peer, "schema.toml applied"));
}

#[test]
fn a_schema_copied_into_the_spool_is_applied_or_refused() {
    let (_t, dir, mut d) = serving(&["alice"]);
    install(&dir, "alice");
    // Every table shows, empty ones too.
    assert!(wait_until(T, || names(&dir.join("alice/tables"))
        == [
            "notes",
            "notes.jsonl",
            "posts",
            "posts.jsonl",
            "users",
            "users.jsonl"
        ]));
    run(
        &dir,
        "alice",
        "a",
        r#"db.users.insert(#{ id: "ann", mail: "a@x" })"#,
    );
    // Dropping a table that holds data without consent: refused, old in force.
    sh(&format!(
        "echo '[tables.notes]\nfields.title = {{ type = \"string\" }}' > {}",
        q(&dir.join("alice/schema.toml"))
    ));
    assert!(log_has(
        &dir,
        "alice",
        "schema refused, the old one stays in force"
    ));
    assert_eq!(run(&dir, "alice", "c", "db.users.count()"), json!(1));
    assert!(dir.join("alice/tables/users/ann.json").exists());
    // Text that does not parse: refused too.
    sh(&format!(
        "echo 'tables = 5 [' > {}",
        q(&dir.join("alice/schema.toml"))
    ));
    assert!(wait_until(T, || std::fs::read_to_string(
        dir.join("alice/log")
    )
    .is_ok_and(|l| l.matches("schema refused").count() >= 2)));
    assert_eq!(run(&dir, "alice", "c2", "db.users.count()"), json!(1));
    d.stop();
}

#[test]
fn rows_are_mirrored_and_a_peers_view_shows_what_its_policy_lets_it_select() {
    let (_t, dir, mut d) = serving(&["alice", "bob"]);
    install(&dir, "alice");
    let ids = run(
        &dir,
        "alice",
        "seed",
        r#"[db.notes.insert(#{ title: "public", pinned: true }), db.notes.insert(#{ title: "private" })]"#,
    );
    let (public, private) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    let own = dir.join("alice/tables");
    assert!(wait_until(T, || names(&own.join("notes")).len() == 2));
    let row = json_of(&own.join(format!("notes/{public}.json"))).unwrap();
    assert_eq!(
        (&row["id"], &row["title"], &row["owner"]),
        (&json!(public), &json!("public"), &json!("alice"))
    );
    let all = std::fs::read_to_string(own.join("notes.jsonl")).unwrap();
    assert_eq!(all.lines().count(), 2, "{all}");
    // No policy: bob sees no table of alice's.
    let view = dir.join("bob/peers/alice/tables");
    assert!(view.is_dir());
    assert!(names(&view).is_empty());
    sh(&format!(
        "echo 'permit(principal, action == Action::\"select\", resource is Table::notes) when {{ resource.pinned }};' > {}",
        q(&dir.join("alice/policy.cedar"))
    ));
    assert!(wait_until(T, || names(&view) == ["notes", "notes.jsonl"]));
    assert!(wait_until(T, || names(&view.join("notes"))
        == [format!("{public}.json")]));
    let seen = std::fs::read_to_string(view.join("notes.jsonl")).unwrap();
    assert!(
        seen.contains("public") && !seen.contains("private"),
        "{seen}"
    );
    // A row changed by a script shows in both; one unpinned leaves bob's view.
    run(
        &dir,
        "alice",
        "u",
        &format!(
            r#"db.notes.update("{private}", #{{ pinned: true }}); db.notes.update("{public}", #{{ pinned: false }})"#
        ),
    );
    assert!(wait_until(T, || names(&view.join("notes"))
        == [format!("{private}.json")]));
    // The view is read-only: a change is undone, with a line in bob's log.
    let f = view.join(format!("notes/{private}.json"));
    let before = std::fs::read(&f).unwrap();
    put(&f, "{}");
    assert!(log_has(
        &dir,
        "bob",
        "is a read-only mirror of the rows alice's policy"
    ));
    assert!(wait_until(T, || std::fs::read(&f).is_ok_and(|b| b == before)));
    // So is the owner's `.jsonl`.
    let jl = own.join("notes.jsonl");
    let before = std::fs::read(&jl).unwrap();
    put(&jl, "junk\n");
    assert!(log_has(
        &dir,
        "alice",
        "change to tables/notes.jsonl undone"
    ));
    assert!(wait_until(T, || std::fs::read(&jl).is_ok_and(|b| b == before)));
    d.stop();
}

#[test]
fn the_owner_writes_and_removes_row_files_in_the_spool() {
    let (_t, dir, mut d) = serving(&["alice"]);
    install(&dir, "alice");
    let users = dir.join("alice/tables/users");
    assert!(wait_until(T, || users.is_dir()));
    // cp: the row is inserted, the file shows it as the mirror does.
    put(&users.join("ann.json"), r#"{"mail": "ann@x", "age": 30}"#);
    assert!(wait_until(T, || json_of(&users.join("ann.json"))
        == Some(json!({"id": "ann", "mail": "ann@x", "age": 30}))));
    assert_eq!(
        run(&dir, "alice", "g", r#"db.users.get("ann").age"#),
        json!(30)
    );
    // Written in place (`>`): taken at close, replaced whole.
    sh(&format!(
        "echo '{{\"mail\": \"ann@y\"}}' > {}",
        q(&users.join("ann.json"))
    ));
    assert!(wait_until(T, || json_of(&users.join("ann.json"))
        == Some(json!({"id": "ann", "mail": "ann@y", "age": null}))));
    // Bad data: refused, set aside, the reason in the log, nothing changed.
    put(&users.join("bob.json"), r#"{"mail": "bob@x", "age": -1}"#);
    assert!(
        log_has(&dir, "alice", "spool: tables/users/bob.json refused"),
        "alice's log: {}\nusers/: {:?}\ndaemon: {}",
        std::fs::read_to_string(dir.join("alice/log")).unwrap_or_default(),
        names(&users),
        d.d.log_text()
    );
    assert!(wait_until(T, || names(&users) == ["ann.json", "bob.json.refused~"]));
    // A unique clash: refused the same way, the row as it was.
    put(&users.join("cat.json"), r#"{"mail": "ann@y"}"#);
    assert!(log_has(
        &dir,
        "alice",
        "spool: tables/users/cat.json refused"
    ));
    assert!(wait_until(T, || !users.join("cat.json").exists()));
    assert_eq!(run(&dir, "alice", "n", "db.users.count()"), json!(1));
    // rm deletes; a row a restrict ref holds is put back, the reason logged.
    run(&dir, "alice", "p", r#"db.posts.insert(#{ author: "ann" })"#);
    std::fs::remove_file(users.join("ann.json")).unwrap();
    assert!(log_has(
        &dir,
        "alice",
        "spool: rm of tables/users/ann.json refused"
    ));
    assert!(wait_until(T, || users.join("ann.json").exists()));
    // A removal right after a write (taken or not yet) leaves no row behind.
    put(&users.join("dan.json"), r#"{"mail": "dan@x"}"#);
    std::fs::remove_file(users.join("dan.json")).unwrap();
    // The mirror may show the row for a moment (its write taken, its removal
    // not yet applied); in the end neither the file nor the row is left.
    assert!(wait_until(T, || !users.join("dan.json").exists()
        && run(&dir, "alice", "n1", "db.users.count()") == json!(1)));
    put(&users.join("eve.json"), r#"{"mail": "eve@x"}"#);
    assert!(wait_until(T, || json_of(&users.join("eve.json"))
        == Some(json!({"id": "eve", "mail": "eve@x", "age": null}))));
    std::fs::remove_file(users.join("eve.json")).unwrap();
    assert!(log_has(&dir, "alice", "remove tables/users/eve.json"));
    assert_eq!(run(&dir, "alice", "n2", "db.users.count()"), json!(1));
    assert!(!users.join("dan.json").exists());
    d.stop();
}

#[test]
fn a_restart_keeps_the_mirror_and_takes_row_files_again() {
    let (t, dir, mut d) = serving(&["alice"]);
    install(&dir, "alice");
    let users = dir.join("alice/tables/users");
    assert!(wait_until(T, || users.is_dir()));
    put(&users.join("ann.json"), r#"{"mail": "ann@x"}"#);
    assert!(log_has(&dir, "alice", "write tables/users/ann.json"));
    assert!(wait_until(T, || json_of(&users.join("ann.json"))
        .is_some_and(|v| v["id"] == "ann")));
    d.stop();
    // A file the mirror wrote is not taken for the owner's at the next start; a
    // change made while the daemon was stopped gives way to the row.
    std::fs::write(users.join("ann.json"), r#"{"mail": "changed@x"}"#).unwrap();
    let mut d = SpoolDaemon::start(&t.path().join("data"), &dir, t.path());
    assert!(wait_until(T, || json_of(&users.join("ann.json"))
        == Some(json!({"id": "ann", "mail": "ann@x", "age": null}))));
    // Row files are taken again after the restart.
    put(&users.join("bea.json"), r#"{"mail": "bea@x", "age": 3}"#);
    assert!(wait_until(T, || json_of(&users.join("bea.json"))
        == Some(json!({"id": "bea", "mail": "bea@x", "age": 3}))));
    assert_eq!(run(&dir, "alice", "n", "db.users.count()"), json!(2));
    let log = std::fs::read_to_string(dir.join("alice/log")).unwrap();
    assert_eq!(
        log.matches("write tables/users/ann.json").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("refused"), "{log}");
    d.stop();
}

#[test]
fn row_files_copied_in_quick_succession_are_all_taken() {
    let (_t, dir, mut d) = serving(&["alice"]);
    install(&dir, "alice");
    let users = dir.join("alice/tables/users");
    assert!(wait_until(T, || users.is_dir()));
    // Each rename lands while the mirror may be busy with the one before: one
    // landing between the mirror's look at the owner's files and its sync
    // is the owner's file all the same, never removed as a stray.
    const N: usize = 60;
    for i in 0..N {
        put(
            &users.join(format!("u{i}.json")),
            &format!(r#"{{"mail": "u{i}@x", "age": {i}}}"#),
        );
    }
    assert!(wait_until(T, || names(&users).len() == N));
    let n = || run(&dir, "alice", "n", "db.users.count()");
    assert!(wait_until(T, || n() == json!(N)), "{}", n());
    let log = std::fs::read_to_string(dir.join("alice/log")).unwrap();
    assert!(!log.contains("removed"), "{log}");
    d.stop();
}
