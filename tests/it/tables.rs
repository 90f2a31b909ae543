//! Declared tables through a real mount: `schema.toml` copied in (applied,
//! refused with the reason in `log` and nothing changed, data dropped only with
//! consent and kept under DATA/removed/), the issue's example script, bad rows
//! refused, another peer's view of rows under a policy, a remount.

use crate::common;

use common::*;
use serde_json::json;

/// The contract's example schema (docs/guide.md; also a seed of the schema
/// parser's fuzz corpus).
const SCHEMA: &str = include_str!("../../fuzz/corpus/schema_parse/issue_example");

const EXAMPLE: &str = r#"
let id = db.notes.insert(#{ title: "Groceries", tag: "home" });
let n  = db.notes.get(id);
db.notes.update(id, #{ pinned: true });
let home = db.notes.find(#{ tag: "home" });
let t = "2020-01-01T00:00:00Z";
let cursor = ();
let page = db.notes.find(#{ created: #{ gte: t } }, #{ order: "-created", limit: 20, after: cursor });
let k = db.notes.count(#{ pinned: true });
db.comments.insert(#{ note: id, text: "milk" });
let before = db.comments.count();
db.notes.delete(id);
#{ title: n.title, home: home.len(), page: page.len(), k: k, before: before, after: db.comments.count() }
"#;

fn install(m: &impl MountPaths, peer: &str, text: &str) -> std::io::Result<()> {
    let src = m.local("schema.toml", text);
    let out = sh(&format!(
        "cp {} {}",
        q(&src),
        q(&m.p(&format!("{peer}/schema.toml")))
    ));
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EINVAL))
    }
}

#[test]
fn the_example_runs_through_the_mount() {
    let m = Mounted::new();
    m.add_peer("alice");
    assert!(m.names("alice").contains(&"schema.toml".to_string()));
    assert_eq!(
        std::fs::read_to_string(m.p("alice/schema.toml")).unwrap(),
        ""
    );
    std::fs::write(m.p("alice/schema.toml"), SCHEMA).unwrap();
    assert_eq!(
        std::fs::read_to_string(m.p("alice/schema.toml")).unwrap(),
        SCHEMA
    );
    assert!(m
        .log_of("alice")
        .contains("schema.toml applied: +table comments, +table notes"));
    let v = m.run_ok("alice", "example.rhai", EXAMPLE);
    assert_eq!(
        v,
        json!({"title": "Groceries", "home": 1, "page": 1, "k": 1, "before": 1, "after": 0})
    );
    // Bad data: the run ends with an error naming table, field, expected and got.
    let r = m.run(
        "alice",
        "bad.rhai",
        r#"db.notes.insert(#{ title: "kept" }); db.notes.insert(#{ title: 5 })"#,
    );
    assert_eq!(r["status"], "error", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains(
            "table notes, field title: expected string of at most 200 characters, got int 5"
        ),
        "{e}"
    );
    // ... and its rows went with it.
    assert_eq!(
        m.run_ok("alice", "count.rhai", "db.notes.count()"),
        json!(0)
    );
}

#[test]
fn a_refused_schema_leaves_the_old_one_in_force() {
    let m = Mounted::new();
    m.add_peer("alice");
    std::fs::write(m.p("alice/schema.toml"), SCHEMA).unwrap();
    m.run_ok(
        "alice",
        "seed.rhai",
        r#"db.notes.insert(#{ title: "a", rating: 5 }); db.notes.insert(#{ title: "b" }); 0"#,
    );
    // Does not parse: EINVAL at close, the reason in the log.
    let r = install(
        &m,
        "alice",
        "[tables.notes]\nfields.x = { type = \"strin\" }\n",
    );
    expect_errno(r, libc::EINVAL, "a schema that does not parse");
    let log = m.log_of("alice");
    assert!(
        log.contains("schema refused, the old one stays in force") && log.contains("notes.x"),
        "{log}"
    );
    // Parses, but a row fails the tightening.
    let tight = SCHEMA.replace("min = 1, max = 5", "min = 1, max = 4");
    expect_errno(
        install(&m, "alice", &tight),
        libc::EINVAL,
        "a tightening rows fail",
    );
    assert!(m
        .log_of("alice")
        .contains("table notes, field rating: 1 row do not meet"));
    // Drops data without consent.
    let dropped = SCHEMA.replace(
        "fields.rating  = { type = \"int?\", min = 1, max = 5 }\n",
        "",
    );
    expect_errno(
        install(&m, "alice", &dropped),
        libc::EINVAL,
        "a drop without consent",
    );
    assert_eq!(
        std::fs::read_to_string(m.p("alice/schema.toml")).unwrap(),
        SCHEMA
    );
    assert_eq!(
        m.run_ok("alice", "c.rhai", "db.notes.count(#{ rating: 5 })"),
        json!(1)
    );
    // With consent: applied, the dropped values kept under DATA/removed/alice/.
    install(
        &m,
        "alice",
        &format!("{dropped}\n[confirm]\ndrop = [\"notes.rating\"]\n"),
    )
    .unwrap();
    let kept: Vec<_> = std::fs::read_dir(m.data.join("removed/alice"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let text = std::fs::read_to_string(&kept[0]).unwrap();
    assert!(
        text.contains("\"rating\":5") && text.lines().count() == 1,
        "{text}"
    );
    let r = m.run("alice", "r.rhai", "db.notes.count(#{ rating: 5 })");
    assert_eq!(r["status"], "error", "{r}");
}

#[test]
fn another_peers_view_follows_the_policy_row_by_row() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/schema.toml"), SCHEMA).unwrap();
    m.run_ok(
        "alice",
        "seed.rhai",
        r#"db.notes.insert(#{ title: "public", pinned: true }); db.notes.insert(#{ title: "private" }); 0"#,
    );
    // No policy: bob's scripts do not run at all.
    let r = m.run_in("bob/peers/alice", "q.rhai", "db.notes.count()");
    assert_eq!(r["status"], "denied", "{r}");
    std::fs::write(
        m.p("alice/policy.cedar"),
        r#"permit(principal, action == Action::"run", resource);
permit(principal, action == Action::"select", resource is Table::notes) when { resource.pinned };
permit(principal, action == Action::"insert", resource is Table::comments);
"#,
    )
    .unwrap();
    let v = m.run_in(
        "bob/peers/alice",
        "q2.rhai",
        r#"let f = db.notes.find(#{}); #{ n: db.notes.count(), f: f.len(), t: f[0].title }"#,
    );
    assert_eq!(v["value"], json!({"n": 1, "f": 1, "t": "public"}), "{v}");
    // bob may comment on a note he can see, as himself; not insert notes.
    let v = m.run_in(
        "bob/peers/alice",
        "c.rhai",
        r#"let id = db.notes.find(#{})[0].id; db.comments.insert(#{ note: id, text: "hi" }); 1"#,
    );
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        m.run_ok("alice", "o.rhai", "db.comments.find(#{})[0].owner"),
        json!("bob")
    );
    let v = m.run_in(
        "bob/peers/alice",
        "i.rhai",
        r#"db.notes.insert(#{ title: "mine" })"#,
    );
    assert_eq!(v["status"], "denied", "{v}");
    // A note he cannot see is no row at all for his comment.
    let hidden = m.run_ok(
        "alice",
        "h.rhai",
        r#"db.notes.find(#{ pinned: false })[0].id"#,
    );
    let v = m.run_in(
        "bob/peers/alice",
        "h2.rhai",
        &format!(
            r#"db.comments.insert(#{{ note: "{}", text: "x" }})"#,
            hidden.as_str().unwrap()
        ),
    );
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("no such row"), "{v}");
    // Refused before running: the policy can never let bob delete notes.
    let v = m.run_in(
        "bob/peers/alice",
        "d.rhai",
        r#"if caller.name == "nobody" { db.notes.delete("x") } 1"#,
    );
    assert_eq!(v["status"], "denied", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("denied before running"),
        "{v}"
    );
}

#[test]
fn an_update_is_decided_on_the_row_before_and_after() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    install(&m, "alice", SCHEMA).unwrap();
    let id = m.run_ok(
        "alice",
        "seed.rhai",
        r#"db.notes.insert(#{ title: "shared", pinned: true })"#,
    );
    let policy = m.local(
        "p.cedar",
        r#"permit(principal, action == Action::"run", resource);
permit(principal, action in [Action::"select", Action::"update"], resource is Table::notes) when { resource.pinned };
"#,
    );
    sh_ok(&format!(
        "cp {} {}",
        q(&policy),
        q(&m.p("alice/policy.cedar"))
    ));
    let id = id.as_str().unwrap();
    let v = m.run_in(
        "bob/peers/alice",
        "u1.rhai",
        &format!(r#"db.notes.update("{id}", #{{ title: "edited" }})"#),
    );
    assert_eq!(v["value"], true, "{v}");
    // Unpinning would leave a row he may not update: denied, nothing changed.
    let v = m.run_in(
        "bob/peers/alice",
        "u2.rhai",
        &format!(r#"db.notes.update("{id}", #{{ pinned: false }})"#),
    );
    assert_eq!(v["status"], "denied", "{v}");
    assert_eq!(
        m.run_ok(
            "alice",
            "r.rhai",
            &format!(r#"db.notes.get("{id}").pinned"#)
        ),
        json!(true)
    );
    // A schema change that would leave the policy invalid is refused, naming its line.
    let no_pinned = SCHEMA.replace(
        "fields.pinned  = { type = \"bool\", default = false }\n",
        "",
    );
    let r = install(
        &m,
        "alice",
        &format!("{no_pinned}[confirm]\ndrop = [\"notes.pinned\"]\n"),
    );
    expect_errno(r, libc::EINVAL, "a schema that leaves the policy invalid");
    let log = m.log_of("alice");
    assert!(
        log.contains("policy.cedar would no longer validate against it: 2:"),
        "{log}"
    );
    // A policy naming a column that does not exist is refused.
    let typo = m.local("t.cedar", "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource.pinnned };\n");
    let out = sh(&format!(
        "cp {} {}",
        q(&typo),
        q(&m.p("alice/policy.cedar"))
    ));
    assert!(!out.status.success());
    assert!(m.log_of("alice").contains("pinnned"));
}

#[test]
fn tables_survive_a_remount() {
    let (_dir, data, mnt, work) = dirs();
    {
        let mut d = Daemon::start(&data, &mnt, &work, &[]);
        d.add_peer("alice");
        std::fs::write(d.p("alice/schema.toml"), SCHEMA).unwrap();
        d.run_ok("alice", "s.rhai", r#"db.notes.insert(#{ title: "kept" })"#);
        d.signal(libc::SIGTERM);
        assert!(d.wait(std::time::Duration::from_secs(20)).success());
    }
    let d = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(
        std::fs::read_to_string(d.p("alice/schema.toml")).unwrap(),
        SCHEMA
    );
    assert_eq!(
        d.run_ok("alice", "r.rhai", "db.notes.find(#{})[0].title"),
        json!("kept")
    );
}

#[test]
fn the_example_app_runs() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/examples/notes");
    let file = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    install(&m, "alice", &file("schema.toml")).unwrap();
    std::fs::write(m.p("alice/groups"), "friends: bob\n").unwrap();
    let policy = m.local("p.cedar", &file("policy.cedar"));
    sh_ok(&format!(
        "cp {} {}",
        q(&policy),
        q(&m.p("alice/policy.cedar"))
    ));
    assert_eq!(
        m.run_ok("alice", "add-notes.rhai", &file("add-notes.rhai")),
        json!({"added": 3, "home": 2})
    );
    let r = m.run_in("bob/peers/alice", "comment.rhai", &file("comment.rhai"));
    assert_eq!(r["value"], "commented", "{r}");
    let r = m.run_in("bob/peers/alice", "board.rhai", &file("board.rhai"));
    assert_eq!(
        r["value"],
        json!([{"title": "Groceries", "tag": "home", "comments": ["bob: seen by bob"]}]),
        "{r}"
    );
    assert_eq!(
        m.run_ok("alice", "board.rhai", &file("board.rhai"))
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_crash_during_a_migration_leaves_the_old_schema() {
    let (_dir, data, mnt, work) = dirs();
    let env = [("PEERFS_TEST_ABORT_IN_MIGRATION", "CRASH-HERE")];
    let args = [
        std::ffi::OsStr::new("mount"),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    std::fs::create_dir_all(&mnt).unwrap();
    let mut d = Daemon::spawn_env(&args, &mnt, &work, &env);
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read(mnt.join(".peerfs/version")).is_ok()
    }));
    d.add_peer("alice");
    let src = d.local("s.toml", SCHEMA);
    sh_ok(&format!("cp {} {}", q(&src), q(&d.p("alice/schema.toml"))));
    d.run_ok(
        "alice",
        "seed.rhai",
        r#"db.notes.insert(#{ title: "a", rating: 3 }); 0"#,
    );
    // A rename of a field and a new table, then the crash before the commit.
    let next = SCHEMA.replace(
        "fields.rating  = { type = \"int?\", min = 1, max = 5 }",
        "fields.stars = { type = \"int?\", renamed_from = \"rating\" }",
    ) + "[tables.extra]\n# CRASH-HERE\n";
    let src = d.local("n.toml", &next);
    let out = sh(&format!("cp {} {}", q(&src), q(&d.p("alice/schema.toml"))));
    assert!(
        !out.status.success(),
        "the copy should fail with the daemon gone"
    );
    assert!(!d.wait(std::time::Duration::from_secs(20)).success());
    drop(d);
    let d = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(
        std::fs::read_to_string(d.p("alice/schema.toml")).unwrap(),
        SCHEMA
    );
    assert_eq!(
        d.run_ok("alice", "r.rhai", "db.notes.find(#{})[0].rating"),
        json!(3)
    );
    let r = d.run("alice", "x.rhai", "db.extra.count()");
    assert_eq!(r["status"], "error", "{r}");
    // The same change, without the crash, applies.
    let src = d.local("n2.toml", &next.replace("# CRASH-HERE\n", ""));
    sh_ok(&format!("cp {} {}", q(&src), q(&d.p("alice/schema.toml"))));
    assert_eq!(
        d.run_ok("alice", "r2.rhai", "db.notes.find(#{})[0].stars"),
        json!(3)
    );
}

#[test]
fn a_schema_change_while_scripts_are_queued_applies_between_runs() {
    let m = Mounted::new();
    m.add_peer("alice");
    install(&m, "alice", SCHEMA).unwrap();
    // A long script holds the actor; inserts queue behind it, then the schema.
    let (busy, _) = busy_script(&m, "alice", 0.3);
    std::fs::write(m.p("alice/inbox/busy.rhai"), &busy).unwrap();
    for i in 0..5 {
        std::fs::write(
            m.p(&format!("alice/inbox/ins{i}.rhai")),
            format!(r#"db.notes.insert(#{{ title: "n{i}", rating: 2 }})"#),
        )
        .unwrap();
    }
    let next = SCHEMA.replace("fields.rating  = { type = \"int?\", min = 1, max = 5 }", "fields.rating  = { type = \"int?\", min = 1, max = 5 }\nfields.seen = { type = \"bool\", default = true }");
    install(&m, "alice", &next).unwrap();
    for i in 0..5 {
        let r: serde_json::Value = serde_json::from_slice(
            &std::fs::read(m.p(&format!("alice/outbox/ins{i}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "ok", "{r}");
    }
    assert_eq!(
        m.run_ok("alice", "c.rhai", "db.notes.count(#{ seen: true })"),
        json!(5)
    );
}

#[test]
fn policy_check_validates_a_policy_against_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    let good = dir.path().join("good.cedar");
    std::fs::write(
        &good,
        "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource.pinned };\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit(principal, action == Action::\"run\", resource);\npermit(principal, action == Action::\"select\", resource is Table::notes) when { resource.pined };\n",
    )
    .unwrap();
    let check = |policy: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .args(["policy", "check"])
            .arg(policy)
            .arg("--schema")
            .arg(&schema)
            .output()
            .unwrap()
    };
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2:") && err.contains("pined"), "{err}");
}

#[test]
fn tables_show_on_the_mount() {
    let m = Mounted::new();
    m.add_peer("alice");
    assert!(m.names("alice/tables").is_empty());
    install(&m, "alice", SCHEMA).unwrap();
    assert_eq!(
        m.names("alice/tables"),
        ["comments", "comments.jsonl", "notes", "notes.jsonl"]
    );
    let id = m.run_ok(
        "alice",
        "seed.rhai",
        r#"let id = db.notes.insert(#{ title: "Groceries", tag: "home", labels: ["a"] }); db.notes.insert(#{ title: "Taxes" }); id"#,
    );
    let id = id.as_str().unwrap();
    let row: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.p(&format!("alice/tables/notes/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            row["id"].as_str(),
            row["owner"].as_str(),
            row["title"].as_str()
        ),
        (Some(id), Some("alice"), Some("Groceries"))
    );
    assert_eq!(row["labels"], json!(["a"]));
    assert_eq!(m.names("alice/tables/notes").len(), 2);
    let all = sh_ok(&format!("cat {}", q(&m.p("alice/tables/notes.jsonl"))));
    assert_eq!(all.lines().count(), 2, "{all}");
    for line in all.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(r["title"].is_string(), "{line}");
    }
    // The .jsonl is read-only; a row file takes only a valid row.
    assert!(std::fs::write(m.p("alice/tables/notes.jsonl"), "{}").is_err());
    assert!(std::fs::remove_file(m.p("alice/tables/notes.jsonl")).is_err());
    let bad = m.local("bad.json", "{}");
    let out = sh(&format!(
        "cp {} {}",
        q(&bad),
        q(&m.p(&format!("alice/tables/notes/{id}.json")))
    ));
    assert!(!out.status.success());
    expect_errno(
        std::fs::read(m.p("alice/tables/notes/nope.json")),
        libc::ENOENT,
        "no such row",
    );
    assert_eq!(m.run_ok("alice", "c.rhai", "db.notes.count()"), json!(2));
}

#[test]
fn another_peers_view_of_tables_shows_only_rows_it_may_select() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    install(&m, "alice", SCHEMA).unwrap();
    let ids = m.run_ok(
        "alice",
        "seed.rhai",
        r#"[db.notes.insert(#{ title: "public", pinned: true }), db.notes.insert(#{ title: "private" })]"#,
    );
    let (public, private) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    // No policy: bob sees no table of alice's.
    assert!(m.names("bob/peers/alice/tables").is_empty());
    let policy = m.local(
        "p.cedar",
        "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource.pinned };\n",
    );
    sh_ok(&format!(
        "cp {} {}",
        q(&policy),
        q(&m.p("alice/policy.cedar"))
    ));
    assert_eq!(m.names("bob/peers/alice/tables"), ["notes", "notes.jsonl"]);
    assert_eq!(
        m.names("bob/peers/alice/tables/notes"),
        [format!("{public}.json")]
    );
    let all = sh_ok(&format!(
        "cat {}",
        q(&m.p("bob/peers/alice/tables/notes.jsonl"))
    ));
    assert_eq!(all.lines().count(), 1, "{all}");
    assert!(all.contains("public") && !all.contains("private"), "{all}");
    expect_errno(
        std::fs::read(m.p(&format!("bob/peers/alice/tables/notes/{private}.json"))),
        libc::ENOENT,
        "a row bob may not select",
    );
    assert!(std::fs::write(
        m.p(&format!("bob/peers/alice/tables/notes/{public}.json")),
        "{}"
    )
    .is_err());
    // alice herself sees both.
    assert_eq!(m.names("alice/tables/notes").len(), 2);
}

#[test]
fn the_owner_writes_and_removes_row_files() {
    let m = Mounted::new();
    m.add_peer("alice");
    let schema = r#"
[tables.users]
key = "string"
fields.mail = { type = "string", unique = true }
fields.age  = { type = "int?", min = 0 }

[tables.posts]
fields.author = { type = "ref<users>" }
"#;
    install(&m, "alice", schema).unwrap();
    let put = |name: &str, text: &str| {
        let src = m.local("row.json", text);
        sh(&format!(
            "cp {} {}",
            q(&src),
            q(&m.p(&format!("alice/tables/users/{name}")))
        ))
    };
    assert!(put("ann.json", r#"{"mail": "ann@x", "age": 30}"#)
        .status
        .success());
    let row: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.p("alice/tables/users/ann.json")).unwrap())
            .unwrap();
    assert_eq!(row, json!({"id": "ann", "mail": "ann@x", "age": 30}));
    assert_eq!(m.names("alice/tables/users"), ["ann.json"]);
    // Replaced whole: a field left out takes its default (null).
    assert!(put("ann.json", r#"{"mail": "ann@y"}"#).status.success());
    assert_eq!(
        m.run_ok("alice", "g.rhai", r#"db.users.get("ann")"#),
        json!({"id": "ann", "mail": "ann@y", "age": null})
    );
    // Bad data: EINVAL, nothing changed; the reason in the errno only.
    let out = put("bob.json", r#"{"mail": "bob@x", "age": -1}"#);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{out:?}"
    );
    let out = put("bob.json", "not json");
    assert!(!out.status.success());
    // A unique clash: EEXIST.
    let out = put("bob.json", r#"{"mail": "ann@y"}"#);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File exists"),
        "{out:?}"
    );
    assert_eq!(m.names("alice/tables/users"), ["ann.json"]);
    // rm deletes; a row a restrict ref holds is EBUSY.
    m.run_ok("alice", "p.rhai", r#"db.posts.insert(#{ author: "ann" })"#);
    let e = std::fs::remove_file(m.p("alice/tables/users/ann.json")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
    assert!(put("cat.json", r#"{"mail": "cat@x"}"#).status.success());
    std::fs::remove_file(m.p("alice/tables/users/cat.json")).unwrap();
    assert_eq!(m.run_ok("alice", "c.rhai", "db.users.count()"), json!(1));
    assert!(m.log_of("alice").contains("remove tables/users/cat.json"));
}

/// A table of `n` rows `{id: i, v: "row i ...", even}` (int keys), inserted
/// by `peer`'s own scripts, 5,000 a run.
const BIG: &str = r#"
[tables.big]
key = "int"
fields.v    = { type = "string" }
fields.even = { type = "bool" }
"#;

fn seed_big(m: &impl MountPaths, peer: &str, n: u64, pad: usize) {
    for (k, start) in (0..n).step_by(5_000).enumerate() {
        let end = (start + 5_000).min(n);
        let src = format!(
            r#"let pad = "{}"; for i in {start}..{end} {{ db.big.insert(#{{ id: i, v: `row ${{i}} ${{pad}}`, even: i % 2 == 0 }}) }} 0"#,
            "x".repeat(pad)
        );
        m.run_ok(peer, &format!("seed{k}.rhai"), &src);
    }
}

/// A mount whose owner's scripts may insert thousands of rows in a run.
fn roomy() -> Mounted {
    Mounted::with(
        |c| {
            c.own_limits.max_wall_ms = 60_000;
        },
        Default::default(),
    )
}

/// The ids of a `.jsonl`'s lines, read with `jq -c .`.
fn ids_of(path: &std::path::Path) -> Vec<i64> {
    let out = sh_ok(&format!("jq -c .id {}", q(path)));
    out.lines().map(|l| l.parse().unwrap()).collect()
}

#[test]
fn a_big_jsonl_streams_every_row_once_in_key_order() {
    let m = roomy();
    m.add_peer("alice");
    m.add_peer("bob");
    install(&m, "alice", BIG).unwrap();
    seed_big(&m, "alice", 100_500, 0);
    let own = m.p("alice/tables/big.jsonl");
    // No size is known before it is read: 0, and read to its end all the same.
    assert_eq!(std::fs::metadata(&own).unwrap().len(), 0);
    let lines = sh_ok(&format!("jq -c . {} | wc -l", q(&own)));
    assert_eq!(lines.trim(), "100500");
    assert_eq!(ids_of(&own), (0..100_500).collect::<Vec<_>>());
    // cat, cp and a pipe's tail see the same bytes.
    let whole = std::fs::read(&own).unwrap();
    let copy = m.work.join("big.jsonl");
    sh_ok(&format!("cp {} {}", q(&own), q(&copy)));
    assert_eq!(std::fs::read(&copy).unwrap(), whole);
    let last = sh_ok(&format!("cat {} | tail -n 1 | jq -c .id", q(&own)));
    assert_eq!(last.trim(), "100499");
    // bob sees, page by page, the rows the policy lets him select.
    let policy = m.local(
        "p.cedar",
        "permit(principal == Peer::\"bob\", action == Action::\"select\", resource is Table::big) when { resource.even };\n",
    );
    sh_ok(&format!(
        "cp {} {}",
        q(&policy),
        q(&m.p("alice/policy.cedar"))
    ));
    let seen = ids_of(&m.p("bob/peers/alice/tables/big.jsonl"));
    assert_eq!(seen, (0..100_500).step_by(2).collect::<Vec<_>>());
}

#[test]
fn a_seek_back_in_a_jsonl_reads_the_same_bytes() {
    let m = roomy();
    m.add_peer("alice");
    install(&m, "alice", BIG).unwrap();
    seed_big(&m, "alice", 5_000, 100);
    let f = m.p("alice/tables/big.jsonl");
    let whole = std::fs::read(&f).unwrap();
    assert!(whole.len() > 500_000, "{}", whole.len());
    // One descriptor: far forward, then back to the start, then to the middle.
    use std::io::{Read, Seek, SeekFrom};
    let mut h = std::fs::File::open(&f).unwrap();
    let mut buf = vec![0; 4096];
    for at in [400_000u64, 0, 123_457, 10] {
        h.seek(SeekFrom::Start(at)).unwrap();
        h.read_exact(&mut buf).unwrap();
        assert_eq!(buf, whole[at as usize..at as usize + 4096], "at {at}");
    }
    // `head -c`, then `dd skip=` (a read that starts at an offset): the whole file.
    let out = m.work.join("joined");
    sh_ok(&format!(
        "head -c 300000 {f} > {o}; dd if={f} bs=1000 skip=300 status=none >> {o}",
        o = q(&out),
        f = q(&f)
    ));
    assert_eq!(std::fs::read(&out).unwrap(), whole);
    // Past the end: nothing.
    let tail = sh_ok(&format!(
        "dd if={} bs=1000 skip={} status=none | wc -c",
        q(&f),
        whole.len() / 1000 + 1
    ));
    assert_eq!(tail.trim(), "0");
}

#[test]
fn rows_changed_while_a_jsonl_is_read_show_at_most_once() {
    let m = roomy();
    m.add_peer("alice");
    install(&m, "alice", BIG).unwrap();
    seed_big(&m, "alice", 20_000, 0);
    use std::io::Read;
    let mut h = std::fs::File::open(m.p("alice/tables/big.jsonl")).unwrap();
    let mut bytes = vec![0; 200_000];
    h.read_exact(&mut bytes).unwrap();
    // Half-way: a row before the reader, one after it, one after it removed.
    m.run_ok(
        "alice",
        "change.rhai",
        r#"db.big.insert(#{ id: -5, v: "before", even: false });
           db.big.insert(#{ id: 50000, v: "after", even: true });
           db.big.delete(15000); 0"#,
    );
    h.read_to_end(&mut bytes).unwrap();
    let ids: Vec<i64> = (String::from_utf8(bytes).unwrap().lines())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not in key order, or twice"
    );
    assert_eq!(ids.len(), 20_000);
    assert!(ids.contains(&50_000) && !ids.contains(&15_000) && !ids.contains(&-5));
    // A new read sees the table as it is now.
    let now = ids_of(&m.p("alice/tables/big.jsonl"));
    assert_eq!((now.len(), now[0]), (20_001, -5));
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = (s.lines().find_map(|l| l.strip_prefix("VmRSS:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn readers_of_a_big_jsonl_hold_a_page_each() {
    let (_d, data, mnt, work) = dirs();
    let dm = Daemon::start(&data, &mnt, &work, &["--max-wall-ms", "60000"]);
    dm.add_peer("alice");
    install(&dm, "alice", BIG).unwrap();
    // 20,000 rows of about 1 KiB: some 20 MiB rendered.
    seed_big(&dm, "alice", 20_000, 1_000);
    let f = dm.p("alice/tables/big.jsonl");
    let size: u64 = sh_ok(&format!("cat {} | wc -c", q(&f)))
        .trim()
        .parse()
        .unwrap();
    assert!(size > 20_000_000, "{size}");
    let before = rss(dm.pid());
    // Four readers at once, each held half-way (its pipe full) for a while.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("cat {} | {{ sleep 2; wc -c; }}", q(&f)))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut most = before;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_millis(1_500) {
        most = most.max(rss(dm.pid()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for r in readers {
        let out = r.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            size.to_string()
        );
    }
    most = most.max(rss(dm.pid()));
    // Rendered whole, each reader would hold the 20 MiB: 80 MiB at least.
    let grew = most.saturating_sub(before);
    assert!(grew < size / 2, "the daemon grew by {grew} bytes");
}
