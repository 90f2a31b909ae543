//! History through a real mount: a foreign write undone and brought back, undo
//! refused naming the later run and done with `cascade`, `restore_to` a time,
//! the policy put back in force by a restore and its undo, retention pruning,
//! and SIGKILL in the middle of an undo and of a restore (all or nothing).

use crate::common;

use std::time::Duration;

use common::*;

const BOB_WRITES_SHARED: &str = r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"write", Action::"read"], resource);"#;

fn read(m: &impl MountPaths, rel: &str) -> Option<String> {
    std::fs::read_to_string(m.p(rel)).ok()
}

/// Runs `src` as alice's script; the whole result.
fn alice(m: &impl MountPaths, name: &str, src: &str) -> serde_json::Value {
    m.run("alice", name, src)
}

fn id(r: &serde_json::Value) -> String {
    r["id"].as_str().unwrap().to_string()
}

#[test]
fn a_foreign_write_is_undone_brought_back_refused_and_cascaded() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/policy.cedar"), BOB_WRITES_SHARED).unwrap();
    let a = alice(&m, "a.rhai", r#"set("n", 1); 0"#);
    assert_eq!(a["status"], "ok", "{a}");
    let b = m.run_in("bob/peers/alice", "w.rhai", r#"set("shared/n", 2); 0"#);
    assert_eq!(b["status"], "ok", "{b}");
    let b = id(&b);
    assert_eq!(read(&m, "alice/state/shared/n").as_deref(), Some("2\n"));

    let u = alice(&m, "u.rhai", &format!(r#"undo("{b}")"#));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(u["value"], serde_json::json!([b]));
    assert_eq!(read(&m, "alice/state/shared/n"), None);
    assert_eq!(read(&m, "alice/state/n").as_deref(), Some("1\n"));
    // The undo is a run of its own: undoing it brings the write back.
    let v = alice(&m, "v.rhai", &format!(r#"undo("{}")"#, id(&u)));
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(read(&m, "alice/state/shared/n").as_deref(), Some("2\n"));

    // A later write to the same key: undo(B) is refused, naming it.
    let c = alice(&m, "c.rhai", r#"set("shared/n", 3); set("n", 4); 0"#);
    let c = id(&c);
    let r = alice(&m, "u2.rhai", &format!(r#"undo("{b}")"#));
    assert_eq!(r["status"], "error", "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(err.contains(&c) && err.contains("cascade"), "{err}");
    assert_eq!(read(&m, "alice/state/shared/n").as_deref(), Some("3\n"));
    // cascade undoes the later runs too, newest first, in one run.
    let r = alice(
        &m,
        "u3.rhai",
        &format!(r#"undo("{b}", #{{ cascade: true }})"#),
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"][0], serde_json::json!(c), "{r}");
    assert_eq!(read(&m, "alice/state/shared/n"), None);
    // C's other key went back too (C was undone as a whole).
    assert_eq!(read(&m, "alice/state/n").as_deref(), Some("1\n"));

    // Only the owner's scripts: bob is denied whatever the policy says.
    let r = m.run_in("bob/peers/alice", "x.rhai", &format!(r#"undo("{b}")"#));
    assert_eq!(r["status"], "denied", "{r}");
    let r = m.run_in(
        "bob/peers/alice",
        "y.rhai",
        r#"restore_to("2020-01-01T00:00:00Z")"#,
    );
    assert_eq!(r["status"], "denied", "{r}");
    let log = m.log_of("alice");
    assert!(log.contains(&format!("undo {b} by")), "{log}");
}

#[test]
fn restore_to_a_time_puts_the_old_policy_back_in_force_and_undoing_it_removes_it() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/policy.cedar"), BOB_WRITES_SHARED).unwrap();
    alice(&m, "a.rhai", r#"set("k", "before"); 0"#);
    let r = m.run_in("bob/peers/alice", "r1.rhai", r#"get("k")"#);
    assert_eq!(r["status"], "ok", "{r}");
    std::thread::sleep(Duration::from_millis(20));
    let t = alice(&m, "t.rhai", "0")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    // A new policy (bob may do nothing) and a new value.
    std::fs::write(m.p("alice/policy.cedar"), "// nobody\n").unwrap();
    alice(&m, "b.rhai", r#"set("k", "after"); 0"#);
    let r = m.run_in("bob/peers/alice", "r2.rhai", r#"get("k")"#);
    assert_eq!(r["status"], "denied", "{r}");

    let back = alice(&m, "back.rhai", &format!(r#"restore_to("{t}")"#));
    assert_eq!(back["status"], "ok", "{back}");
    assert_eq!(back["value"].as_array().unwrap().len(), 2, "{back}");
    assert_eq!(read(&m, "alice/state/k").as_deref(), Some("before"));
    assert_eq!(
        read(&m, "alice/policy.cedar").as_deref(),
        Some(BOB_WRITES_SHARED)
    );
    let r = m.run_in("bob/peers/alice", "r3.rhai", r#"get("k")"#);
    assert_eq!(r["status"], "ok", "the old policy is in force again: {r}");

    // The restore is one undoable run: undoing it brings the new policy back.
    let u = alice(&m, "u.rhai", &format!(r#"undo("{}")"#, id(&back)));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(read(&m, "alice/state/k").as_deref(), Some("after"));
    let r = m.run_in("bob/peers/alice", "r4.rhai", r#"get("k")"#);
    assert_eq!(r["status"], "denied", "{r}");
    assert!(
        m.log_of("alice").contains("restore_to "),
        "restores are logged"
    );
}

#[test]
fn entries_out_of_retention_are_pruned_and_the_error_says_so() {
    let m = Mounted::with(
        |c| {
            c.history.max_age_ns = 300_000_000;
        },
        Default::default(),
    );
    m.add_peer("alice");
    let a = id(&alice(&m, "a.rhai", r#"set("k", 1); 0"#));
    std::thread::sleep(Duration::from_millis(400));
    alice(&m, "b.rhai", r#"set("k", 2); 0"#);
    let r = alice(&m, "u.rhai", &format!(r#"undo("{a}")"#));
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("retention"), "{r}");
    let r = alice(&m, "r.rhai", r#"restore_to("2001-01-01T00:00:00Z")"#);
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("retention"), "{r}");
}

/// SIGKILL while an undo (and a restore) has made its changes but not
/// committed: after the restart nothing of it shows; a finished one is whole.
#[test]
fn sigkill_in_the_middle_of_an_undo_and_a_restore_is_all_or_nothing() {
    let (_d, data, mnt, work) = dirs();
    let args = ["-o", "limits.own.max_wall_ms=1500"];
    let mut dm = Daemon::start(&data, &mnt, &work, &args);
    dm.add_peer("alice");
    let a = id(&dm.run("alice", "a.rhai", r#"set("x", 1); set("y", 1); 0"#));
    let b = id(&dm.run("alice", "b.rhai", r#"set("x", 2); set("y", 2); 0"#));
    for (name, call) in [
        ("slow_undo.rhai", format!(r#"undo("{b}")"#)),
        ("slow_restore.rhai", format!(r#"restore_to("{a}")"#)),
    ] {
        // The call changes x and y, then the run spins until it is killed.
        let src = format!("{call}; let i = 0; loop {{ i += 1; }}");
        std::fs::write(dm.p(&format!("alice/inbox/{name}")), src).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        dm.kill9();
        drop(dm);
        dm = Daemon::start(&data, &mnt, &work, &args);
        // Nothing of the killed run: x and y as B left them (the run again
        // after the restart ends at its wall limit, rolled back).
        let stem = name.strip_suffix(".rhai").unwrap();
        let r = std::fs::read(dm.p(&format!("alice/outbox/{stem}.json"))).unwrap();
        let r: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(r["status"], "limit", "{r}");
        assert_eq!(read(&dm, "alice/state/x").as_deref(), Some("2\n"));
        assert_eq!(read(&dm, "alice/state/y").as_deref(), Some("2\n"));
    }
    // A finished undo, then SIGKILL: all of it is there after the restart.
    let u = dm.run("alice", "u.rhai", &format!(r#"undo("{b}")"#));
    assert_eq!(u["status"], "ok", "{u}");
    dm.kill9();
    drop(dm);
    let dm = Daemon::start(&data, &mnt, &work, &args);
    assert_eq!(read(&dm, "alice/state/x").as_deref(), Some("1\n"));
    assert_eq!(read(&dm, "alice/state/y").as_deref(), Some("1\n"));
}

/// alice's policy lets bob write; alice sets n (A), a time t passes, bob writes
/// shared/n (B), alice writes state/m through the mount (W).
struct Seeded {
    m: Mounted,
    a: String,
    b: String,
    t: String,
}

fn seeded() -> Seeded {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/policy.cedar"), BOB_WRITES_SHARED).unwrap();
    let a = id(&alice(&m, "a.rhai", r#"set("n", 1); 0"#));
    std::thread::sleep(Duration::from_millis(20));
    let t = alice(&m, "t.rhai", "0")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    let b = m.run_in("bob/peers/alice", "w.rhai", r#"set("shared/n", 2); 0"#);
    let b = id(&b);
    // A write through the mount is an entry too.
    std::fs::write(m.p("alice/state/m"), "through the mount\n").unwrap();
    Seeded { m, a, b, t }
}

#[test]
fn history_folder_shows_each_run_the_state_after_it_and_what_it_changed() {
    let Seeded { m, a, b, .. } = seeded();
    // Hidden from ls without -a; one folder per changing run, in time order.
    assert!(!sh_ok(&format!("ls {}", q(&m.p("alice")))).contains(".history"));
    assert!(sh_ok(&format!("ls -a {}", q(&m.p("alice")))).contains(".history"));
    let runs = m.names("alice/.history");
    assert_eq!(
        runs.len(),
        4,
        "policy write, A, B, the mount write: {runs:?}"
    );
    assert_eq!(&runs[1..3], &[a.clone(), b.clone()]);
    let w = runs[3].clone();

    assert_eq!(
        read(&m, &format!("alice/.history/{a}/state/n")).as_deref(),
        Some("1\n")
    );
    assert_eq!(
        read(&m, &format!("alice/.history/{a}/state/shared/n")),
        None
    );
    assert_eq!(m.names(&format!("alice/.history/{a}/state")), ["n"]);
    assert_eq!(
        m.names(&format!("alice/.history/{b}/state")),
        ["n", "shared"]
    );
    assert_eq!(
        read(&m, &format!("alice/.history/{b}/state/shared/n")).as_deref(),
        Some("2\n")
    );
    let c: serde_json::Value =
        serde_json::from_str(&read(&m, &format!("alice/.history/{b}/changes.json")).unwrap())
            .unwrap();
    assert_eq!(c["caller"], "bob", "{c}");
    assert_eq!(c["script"], "w.rhai", "{c}");
    assert_eq!(c["changes"][0]["item"], "shared/n", "{c}");
    assert_eq!(c["changes"][0]["before"], serde_json::Value::Null, "{c}");
    assert_eq!(c["changes"][0]["after"]["value"], "2\n", "{c}");
    let c = read(&m, &format!("alice/.history/{w}/changes.json")).unwrap();
    assert!(c.contains("write state/m"), "{c}");

    // The mount write is undone like a run.
    let u = alice(&m, "u.rhai", &format!(r#"undo("{w}")"#));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(read(&m, "alice/state/m"), None);
}

#[test]
fn at_a_time_views_and_the_history_is_read_only() {
    let Seeded { m, a, t, .. } = seeded();
    // @time: the peer as it was then, never listed.
    assert_eq!(
        read(&m, &format!("alice/.history/@{t}/state/n")).as_deref(),
        Some("1\n")
    );
    assert_eq!(m.names(&format!("alice/.history/@{t}/state")), ["n"]);
    assert!(!m.names("alice/.history").iter().any(|n| n.starts_with('@')));
    let e = std::fs::read_dir(m.p("alice/.history/@2001-01-01T00:00:00Z/state"));
    assert!(e.is_ok(), "before every entry: the peer as it began");
    expect_errno(
        std::fs::read_dir(m.p("alice/.history/@yesterday")),
        libc::EINVAL,
        "a name after @ that is not a time",
    );
    expect_errno(
        std::fs::read_dir(m.p("alice/.history/01NOTARUN")),
        libc::ENOENT,
        "no such run",
    );
    let f = m.p(&format!("alice/.history/{a}/state/n"));
    assert!(std::fs::write(&f, "9").is_err());
    assert!(std::fs::remove_file(&f).is_err());
    assert!(std::fs::create_dir(m.p(&format!("alice/.history/{a}/state/d"))).is_err());
    assert_eq!(
        read(&m, &format!("alice/.history/{a}/state/n")).as_deref(),
        Some("1\n")
    );
}

#[test]
fn peer_restore_returns_a_stopped_peer_to_a_run() {
    let (_d, data, mnt, work) = dirs();
    let mut dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    let a = id(&dm.run("alice", "a.rhai", r#"set("x", 1); 0"#));
    dm.run("alice", "b.rhai", r#"set("x", 2); set("y", 2); 0"#);
    let restore = |to: &str| {
        std::process::Command::new(BIN)
            .args(["peer", "restore", "alice", "--to", to, "--data"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let busy = restore(&a);
    assert!(!busy.status.success(), "refused while the daemon runs");
    dm.signal(libc::SIGTERM);
    assert!(dm.wait(Duration::from_secs(10)).success());
    drop(dm);
    let out = restore("01NOSUCHRUN");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no run"),
        "{out:?}"
    );
    let out = restore(&a);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("undid "), "{said}");
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(read(&dm, "alice/state/x").as_deref(), Some("1\n"));
    assert_eq!(read(&dm, "alice/state/y"), None);
    assert!(dm.log_of("alice").contains(&format!("restore_to {a} by")));
    // The restore is an entry: undone by a script, x and y come back.
    let runs = dm.names("alice/.history");
    let r = dm.run(
        "alice",
        "u.rhai",
        &format!(r#"undo("{}")"#, runs.last().unwrap()),
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(read(&dm, "alice/state/y").as_deref(), Some("2\n"));
}

#[test]
fn a_snapshot_is_a_read_only_copy_that_outlives_retention_until_rmdir() {
    let m = Mounted::with(
        |c| {
            c.history.max_age_ns = 200_000_000;
        },
        Default::default(),
    );
    m.add_peer("alice");
    alice(&m, "a.rhai", r#"set("k", 1); set("d/x", "x"); 0"#);
    assert!(m.names("alice/.snapshots").is_empty());
    std::fs::create_dir(m.p("alice/.snapshots/before")).unwrap();
    expect_errno(
        std::fs::create_dir(m.p("alice/.snapshots/before")),
        libc::EEXIST,
        "a second snapshot of one name",
    );
    let a = id(&alice(&m, "b.rhai", r#"set("k", 2); remove("d/x"); 0"#));
    std::thread::sleep(Duration::from_millis(300));
    alice(&m, "c.rhai", r#"set("k", 3); 0"#);
    // The history's entries of then are pruned; the snapshot is not.
    assert!(!m.names("alice/.history").contains(&a));
    assert_eq!(m.names("alice/.snapshots"), ["before"]);
    assert_eq!(m.names("alice/.snapshots/before/state"), ["d", "k"]);
    assert_eq!(
        read(&m, "alice/.snapshots/before/state/k").as_deref(),
        Some("1\n")
    );
    assert_eq!(
        read(&m, "alice/.snapshots/before/state/d/x").as_deref(),
        Some("x")
    );
    assert_eq!(read(&m, "alice/state/k").as_deref(), Some("3\n"));
    let f = m.p("alice/.snapshots/before/state/k");
    assert!(std::fs::write(&f, "9").is_err());
    assert!(std::fs::remove_file(&f).is_err());
    assert!(!sh_ok(&format!("ls {}", q(&m.p("alice")))).contains("snapshots"));
    std::fs::remove_dir(m.p("alice/.snapshots/before")).unwrap();
    assert!(m.names("alice/.snapshots").is_empty());
    expect_errno(
        std::fs::read_dir(m.p("alice/.snapshots/before/state")),
        libc::ENOENT,
        "a removed snapshot",
    );
    // A removed peer's snapshots go with it: a new peer of its name has none.
    std::fs::create_dir(m.p("alice/.snapshots/last")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || std::fs::remove_dir(
        m.p("alice")
    )
    .is_ok()));
    m.add_peer("alice");
    assert!(m.names("alice/.snapshots").is_empty());
    let removed: Vec<String> = std::fs::read_dir(m.data.join("removed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        removed.iter().any(|n| n.ends_with(".snapshots")),
        "{removed:?}"
    );
}

#[test]
fn a_module_written_through_the_mount_is_in_the_history_and_undone() {
    let m = Mounted::new();
    m.add_peer("alice");
    std::fs::write(m.p("alice/modules/m.rhai"), "fn f() { 1 }").unwrap();
    std::fs::write(m.p("alice/modules/m.rhai"), "fn f() { 2 }").unwrap();
    assert_eq!(
        alice(&m, "a.rhai", r#"import "m" as m; m::f()"#)["value"],
        2
    );
    let runs = m.names("alice/.history");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let c: serde_json::Value = serde_json::from_str(
        &read(&m, &format!("alice/.history/{}/changes.json", runs[1])).unwrap(),
    )
    .unwrap();
    assert_eq!(c["changes"][0]["kind"], "module", "{c}");
    assert_eq!(c["changes"][0]["item"], "m", "{c}");
    assert_eq!(c["changes"][0]["before"]["value"], "fn f() { 1 }", "{c}");
    let u = alice(&m, "u.rhai", &format!(r#"undo("{}")"#, runs[1]));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(
        read(&m, "alice/modules/m.rhai").as_deref(),
        Some("fn f() { 1 }")
    );
    assert_eq!(
        alice(&m, "b.rhai", r#"import "m" as m; m::f()"#)["value"],
        1
    );
    let u = alice(
        &m,
        "v.rhai",
        &format!(r#"undo("{}", #{{ cascade: true }})"#, runs[0]),
    );
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(read(&m, "alice/modules/m.rhai"), None);
}

#[test]
fn undo_of_a_policy_write_puts_the_old_policy_back_in_force() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/policy.cedar"), BOB_WRITES_SHARED).unwrap();
    std::fs::write(m.p("alice/policy.cedar"), "// nobody\n").unwrap();
    let r = m.run_in("bob/peers/alice", "r1.rhai", "1");
    assert_eq!(r["status"], "denied", "{r}");
    let runs = m.names("alice/.history");
    let c = read(&m, &format!("alice/.history/{}/changes.json", runs[1])).unwrap();
    assert!(
        c.contains("\"meta\"") && c.contains("write policy.cedar"),
        "{c}"
    );
    let u = alice(&m, "u.rhai", &format!(r#"undo("{}")"#, runs[1]));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(
        read(&m, "alice/policy.cedar").as_deref(),
        Some(BOB_WRITES_SHARED)
    );
    let r = m.run_in("bob/peers/alice", "r2.rhai", "1");
    assert_eq!(r["status"], "ok", "the old policy is in force: {r}");
}

const NOTES: &str = r#"
[tables.notes]
owner = true
fields.title = { type = "string", max = 200 }
fields.pinned = { type = "bool", default = false }

[tables.comments]
owner = true
fields.note = { type = "ref<notes>", on_delete = "cascade", index = true }
fields.text = { type = "string" }
"#;

const BOB_INSERTS_NOTES: &str = r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"insert", Action::"select"], resource);"#;

/// Alice with the notes and comments tables, bob allowed to insert rows.
fn with_tables() -> Mounted {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(m.p("alice/schema.toml"), NOTES).unwrap();
    std::fs::write(m.p("alice/policy.cedar"), BOB_INSERTS_NOTES).unwrap();
    m
}

fn changes(m: &Mounted, run: &str) -> serde_json::Value {
    serde_json::from_str(&read(m, &format!("alice/.history/{run}/changes.json")).unwrap()).unwrap()
}

fn count(m: &Mounted, name: &str, table: &str) -> serde_json::Value {
    m.run_ok("alice", name, &format!("db.{table}.count(#{{}})"))
}

#[test]
fn rows_in_the_history_a_foreign_insert_an_update_and_a_cascade_undone() {
    let m = with_tables();
    // Bob's insert under alice's policy: an entry whose item is the row.
    let b = m.run_in(
        "bob/peers/alice",
        "b.rhai",
        r#"db.notes.insert(#{ title: "from bob" })"#,
    );
    assert_eq!(b["status"], "ok", "{b}");
    let note = b["value"].as_str().unwrap().to_string();
    let c = changes(&m, &id(&b));
    assert_eq!(c["caller"], "bob", "{c}");
    assert_eq!(c["changes"][0]["kind"], "row", "{c}");
    assert_eq!(c["changes"][0]["item"], format!("notes/{note}"), "{c}");
    assert_eq!(c["changes"][0]["before"], serde_json::Value::Null, "{c}");
    assert_eq!(c["changes"][0]["after"]["row"]["title"], "from bob", "{c}");
    assert_eq!(c["changes"][0]["after"]["row"]["owner"], "bob", "{c}");
    // The table as right after that run, beside its state.
    let runs = m.names("alice/.history");
    let last = runs.last().unwrap();
    assert!(m
        .names(&format!("alice/.history/{last}"))
        .contains(&"tables".to_string()));
    assert_eq!(
        m.names(&format!("alice/.history/{last}/tables")),
        ["comments.jsonl", "notes.jsonl"]
    );
    let lines = read(&m, &format!("alice/.history/{last}/tables/notes.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(lines.trim_end()).unwrap();
    assert_eq!(
        (row["id"].as_str(), row["title"].as_str()),
        (Some(note.as_str()), Some("from bob"))
    );
    assert_eq!(
        read(
            &m,
            &format!("alice/.history/{}/tables/notes.jsonl", runs[0])
        )
        .as_deref(),
        Some("")
    );

    let u = alice(&m, "u.rhai", &format!(r#"undo("{}")"#, id(&b)));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(count(&m, "n1.rhai", "notes"), 0);
    let back = alice(&m, "back.rhai", &format!(r#"undo("{}")"#, id(&u)));
    assert_eq!(back["status"], "ok", "{back}");

    // An update undone.
    let up = alice(
        &m,
        "up.rhai",
        &format!(r#"db.notes.update("{note}", #{{ title: "edited", pinned: true }}); 0"#),
    );
    assert_eq!(up["status"], "ok", "{up}");
    let u = alice(&m, "u2.rhai", &format!(r#"undo("{}")"#, id(&up)));
    assert_eq!(u["status"], "ok", "{u}");
    let n = m.run_ok(
        "alice",
        "g.rhai",
        &format!(r#"let n = db.notes.get("{note}"); [n.title, n.pinned]"#),
    );
    assert_eq!(n, serde_json::json!(["from bob", false]));

    // A delete that cascades to a comment: both rows are items, both come back.
    m.run_ok(
        "alice",
        "c.rhai",
        &format!(r#"db.comments.insert(#{{ note: "{note}", text: "milk" }})"#),
    );
    let d = alice(&m, "d.rhai", &format!(r#"db.notes.delete("{note}"); 0"#));
    assert_eq!(d["status"], "ok", "{d}");
    assert_eq!(changes(&m, &id(&d))["changes"].as_array().unwrap().len(), 2);
    assert_eq!(count(&m, "n2.rhai", "comments"), 0);
    let u = alice(&m, "u3.rhai", &format!(r#"undo("{}")"#, id(&d)));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(count(&m, "n3.rhai", "notes"), 1);
    let c = m.run_ok(
        "alice",
        "n4.rhai",
        &format!(r#"db.comments.find(#{{ note: "{note}" }})[0].text"#),
    );
    assert_eq!(c, "milk");
}

#[test]
fn a_schema_change_is_undone_and_restore_to_a_time_puts_rows_back() {
    let m = with_tables();
    let a = m.run_ok("alice", "a.rhai", r#"db.notes.insert(#{ title: "a" })"#);
    std::thread::sleep(Duration::from_millis(20));
    let t = alice(&m, "t.rhai", "0")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    m.run_ok("alice", "b.rhai", r#"db.notes.insert(#{ title: "b" })"#);
    m.run_ok(
        "alice",
        "e.rhai",
        &format!(r#"db.notes.update({a}, #{{ title: "a2" }}); 0"#),
    );

    // A schema change through the mount: an entry of its own.
    let more = format!("{NOTES}\n[tables.tags]\nfields.name = {{ type = \"string\" }}\n");
    std::fs::write(m.p("alice/schema.toml"), &more).unwrap();
    let runs = m.names("alice/.history");
    let s = runs.last().unwrap().clone();
    let c = changes(&m, &s);
    assert_eq!(c["script"], "write schema.toml", "{c}");
    assert_eq!(
        (
            c["changes"][0]["kind"].as_str(),
            c["changes"][0]["item"].as_str()
        ),
        (Some("meta"), Some("schema"))
    );
    assert!(m
        .names(&format!("alice/.history/{s}/tables"))
        .contains(&"tags.jsonl".to_string()));
    let u = alice(&m, "u.rhai", &format!(r#"undo("{s}")"#));
    assert_eq!(u["status"], "ok", "{u}");
    assert_eq!(read(&m, "alice/schema.toml").as_deref(), Some(NOTES));
    let r = alice(&m, "x.rhai", r#"db.tags.count(#{})"#);
    assert_eq!(r["status"], "error", "the table is gone: {r}");

    // Back to the time: only "a", with its first title.
    let back = alice(&m, "back.rhai", &format!(r#"restore_to("{t}")"#));
    assert_eq!(back["status"], "ok", "{back}");
    let titles = m.run_ok("alice", "l.rhai", r#"db.notes.find(#{}).map(|n| n.title)"#);
    assert_eq!(titles, serde_json::json!(["a"]));
    assert_eq!(
        read(&m, &format!("alice/.history/@{t}/tables/notes.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// SIGKILL while an undo of a schema change (a table rebuilt) and of a row
/// delete is made but not committed: after the restart, neither; a finished
/// one is whole.
#[test]
fn sigkill_in_the_middle_of_an_undo_of_a_schema_change_and_rows_is_all_or_nothing() {
    let (_d, data, mnt, work) = dirs();
    let args = ["-o", "limits.own.max_wall_ms=1500"];
    let mut dm = Daemon::start(&data, &mnt, &work, &args);
    dm.add_peer("alice");
    std::fs::write(dm.p("alice/schema.toml"), NOTES).unwrap();
    let n = dm.run("alice", "n.rhai", r#"db.notes.insert(#{ title: "kept" })"#);
    let note = n["value"].as_str().unwrap().to_string();
    let d = id(&dm.run(
        "alice",
        "d.rhai",
        &format!(r#"db.notes.delete("{note}"); 0"#),
    ));
    let more = NOTES.replace(
        "fields.pinned = { type = \"bool\", default = false }",
        "fields.pinned = { type = \"bool\", default = false }\nfields.rating = { type = \"int?\" }",
    );
    std::fs::write(dm.p("alice/schema.toml"), &more).unwrap();
    let s = dm.names("alice/.history").last().unwrap().clone();
    // Undoing the delete needs the later schema change of its table undone first.
    let undo = format!(r#"undo("{d}", #{{ cascade: true }}); let i = 0; loop {{ i += 1; }}"#);
    std::fs::write(dm.p("alice/inbox/slow.rhai"), undo).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    dm.kill9();
    drop(dm);
    dm = Daemon::start(&data, &mnt, &work, &args);
    let r = std::fs::read(dm.p("alice/outbox/slow.json")).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["status"], "limit", "{r}");
    assert_eq!(
        read(&dm, "alice/schema.toml").as_deref(),
        Some(more.as_str())
    );
    assert_eq!(dm.run_ok("alice", "c.rhai", "db.notes.count(#{})"), 0);
    // Finished, then SIGKILL: all of it after the restart.
    let u = dm.run("alice", "u.rhai", &format!(r#"undo("{d}")"#));
    assert_eq!(u["status"], "error", "{u}");
    assert!(u["error"].as_str().unwrap().contains(&s), "{u}");
    let u = dm.run(
        "alice",
        "u2.rhai",
        &format!(r#"undo("{d}", #{{ cascade: true }})"#),
    );
    assert_eq!(u["value"], serde_json::json!([s, d]), "{u}");
    dm.kill9();
    drop(dm);
    let dm = Daemon::start(&data, &mnt, &work, &args);
    assert_eq!(read(&dm, "alice/schema.toml").as_deref(), Some(NOTES));
    let t = dm.run_ok(
        "alice",
        "t.rhai",
        &format!(r#"db.notes.get("{note}").title"#),
    );
    assert_eq!(t, "kept");
}

#[test]
fn row_files_written_and_removed_through_the_mount_are_entries_undone() {
    let m = with_tables();
    let note = m.run_ok("alice", "n.rhai", r#"db.notes.insert(#{ title: "one" })"#);
    let note = note.as_str().unwrap().to_string();
    let file = m.p(&format!("alice/tables/notes/{note}.json"));
    let mut row: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    row["title"] = "two".into();
    std::fs::write(&file, row.to_string()).unwrap();
    let w = m.names("alice/.history").last().unwrap().clone();
    let c = changes(&m, &w);
    assert_eq!(
        c["script"],
        format!("write tables/notes/{note}.json"),
        "{c}"
    );
    assert_eq!(c["changes"][0]["before"]["row"]["title"], "one", "{c}");
    assert_eq!(c["changes"][0]["after"]["row"]["title"], "two", "{c}");
    std::fs::remove_file(&file).unwrap();
    let r = m.names("alice/.history").last().unwrap().clone();
    assert_eq!(
        changes(&m, &r)["changes"][0]["after"],
        serde_json::Value::Null
    );

    let u = alice(&m, "u.rhai", &format!(r#"undo("{r}")"#));
    assert_eq!(u["status"], "ok", "{u}");
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(back["title"], "two");
    // The write, with the later runs on the same row (newest first).
    let u = alice(
        &m,
        "u2.rhai",
        &format!(r#"undo("{w}", #{{ cascade: true }})"#),
    );
    assert_eq!(u["value"].as_array().map(Vec::len), Some(3), "{u}");
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(back["title"], "one");
    let all = read(&m, "alice/tables/notes.jsonl").unwrap();
    assert_eq!(all.lines().count(), 1, "{all}");
}

/// The contract's example schema.
const TABLES_SCHEMA: &str = include_str!("../../fuzz/corpus/schema_parse/issue_example");

/// A refusal a read-only file answers with (the mode or the mount).
fn refused<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)),
        "{what}: {e}"
    );
}

#[test]
fn a_snapshot_shows_its_tables_read_only_as_the_live_ones_render() {
    let m = Mounted::new();
    m.add_peer("alice");
    // A snapshot of a peer without tables has no tables/.
    std::fs::create_dir(m.p("alice/.snapshots/plain")).unwrap();
    assert_eq!(m.names("alice/.snapshots/plain"), ["state"]);
    expect_errno(
        std::fs::read_dir(m.p("alice/.snapshots/plain/tables")),
        libc::ENOENT,
        "tables/ of a snapshot without tables",
    );
    std::fs::write(m.p("alice/schema.toml"), TABLES_SCHEMA).unwrap();
    let kept = m.run_ok(
        "alice",
        "seed.rhai",
        r#"let id = db.notes.insert(#{ title: "Groceries", tag: "home" }); db.notes.insert(#{ title: "Taxes" }); id"#,
    );
    let kept = kept.as_str().unwrap().to_string();
    let live = || sh_ok(&format!("cat {}", q(&m.p("alice/tables/notes.jsonl"))));
    let then = live();
    assert_eq!(then.lines().count(), 2, "{then}");
    std::fs::create_dir(m.p("alice/.snapshots/s")).unwrap();
    let r = alice(
        &m,
        "change.rhai",
        &format!(
            r#"db.notes.update("{kept}", #{{ title: "Changed" }});
               for n in db.notes.find(#{{ title: "Taxes" }}) {{ db.notes.delete(n.id); }}
               db.notes.insert(#{{ title: "New" }}); 0"#
        ),
    );
    assert_eq!(r["status"], "ok", "{r}");

    assert_eq!(m.names("alice/.snapshots/s"), ["state", "tables"]);
    assert_eq!(
        m.names("alice/.snapshots/s/tables"),
        ["comments.jsonl", "notes.jsonl"]
    );
    let snap = "alice/.snapshots/s/tables/notes.jsonl";
    // The rows of then, rendered byte for byte as the live file rendered them.
    assert_eq!(read(&m, snap).as_deref(), Some(then.as_str()));
    assert_eq!(
        sh_ok(&format!("cat {}", q(&m.p(snap)))),
        then,
        "cat of the snapshot's table"
    );
    let now = live();
    assert_ne!(now, then);
    let titles: Vec<String> = now
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["title"].to_string())
        .collect();
    assert_eq!(titles, [r#""Changed""#, r#""New""#], "{now}");
    assert_eq!(
        read(&m, "alice/.snapshots/s/tables/comments.jsonl").as_deref(),
        Some("")
    );
    expect_errno(
        std::fs::read(m.p("alice/.snapshots/s/tables/nothing.jsonl")),
        libc::ENOENT,
        "an undeclared table of the snapshot",
    );
    // Read only, like its state/.
    refused(
        std::fs::write(m.p(snap), "{}"),
        "a write into the snapshot's table",
    );
    refused(
        std::fs::remove_file(m.p(snap)),
        "rm of the snapshot's table",
    );
    refused(
        std::fs::write(m.p("alice/.snapshots/s/tables/x.jsonl"), "{}"),
        "a new file in the snapshot's tables/",
    );
    assert_eq!(read(&m, snap).as_deref(), Some(then.as_str()));

    std::fs::remove_dir(m.p("alice/.snapshots/s")).unwrap();
    expect_errno(
        std::fs::read(m.p(snap)),
        libc::ENOENT,
        "a removed snapshot's table",
    );
    assert_eq!(m.names("alice/.snapshots"), ["plain"]);
}
