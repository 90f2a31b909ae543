//! The core without a mount: peers, runs, ordering, group commit, recovery.

use std::time::Duration;

use peerfs::exec::{Config, Core, Op};
use peerfs::store::prelude::*;
use serde_json::{json, Value};

fn core(dir: &std::path::Path) -> Core {
    let mut cfg = Config::new(dir);
    cfg.runners = 4;
    Core::start(cfg).unwrap()
}

fn uid() -> u32 {
    unsafe { libc::getuid() }
}

#[test]
fn a_run_returns_a_full_result() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    let r = c
        .run(
            "alice",
            "job.rhai",
            r#"print("hello"); set("n", 41); get("n") + 1"#,
        )
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 42);
    assert_eq!(r["output"], "hello\n");
    assert_eq!(r["caller"], "alice");
    assert_eq!(r["target"], "alice");
    assert_eq!(r["script"], "job.rhai");
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["id"].as_str().unwrap().len(), 26);
    assert!(r["operations"].as_u64().unwrap() > 0);
    assert!(r["submitted_at"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in [
        "id",
        "script",
        "caller",
        "target",
        "status",
        "value",
        "output",
        "error",
        "submitted_at",
        "finished_at",
        "duration_us",
        "operations",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    c.shutdown();
}

#[test]
fn runs_of_one_peer_are_serial_in_submission_order() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("p", uid(), 0).unwrap();
    for i in 0..300 {
        let job = c
            .new_job(
                "p",
                &format!("j{i}.rhai"),
                format!(r#"let a = get("seq") ?? []; a.push({i}); set("seq", a); a.len()"#)
                    .into_bytes(),
                &json!({}),
            )
            .unwrap();
        if i < 299 {
            c.apply_async("p", Op::Submit(job), None);
        } else {
            c.apply("p", Op::Submit(job)).unwrap(); // durable, and so are all before it
        }
    }
    let last = c.wait_result("p", "p", "j299.json").unwrap();
    let last: Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(last["value"], 300, "{last}");
    let seq = c.run("p", "read.rhai", r#"get("seq")"#).unwrap();
    let want: Vec<i64> = (0..300).collect();
    assert_eq!(seq["value"], json!(want));
    c.shutdown();
}

#[test]
fn a_failing_run_never_undoes_another_in_the_same_batch() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("p", uid(), 0).unwrap();
    let scripts = [
        ("a.rhai", r#"set("a", 1); 1"#),
        ("b.rhai", r#"set("b", 1); throw "boom""#),
        ("c.rhai", r#"set("c", 1); loop {}"#),
        ("d.rhai", r#"set("d", 1); 4"#),
    ];
    for (n, s) in scripts {
        let job = c
            .new_job("p", n, s.as_bytes().to_vec(), &json!({}))
            .unwrap();
        c.apply_async("p", Op::Submit(job), None);
    }
    c.apply("p", Op::Log("all submitted".into())).unwrap();
    let status = |n: &str| -> Value {
        serde_json::from_slice(&c.wait_result("p", "p", n).unwrap()).unwrap()
    };
    assert_eq!(status("a.json")["status"], "ok");
    let b = status("b.json");
    assert_eq!(b["status"], "error");
    assert!(b["error"].as_str().unwrap().contains("boom"));
    assert_eq!(status("c.json")["status"], "limit");
    assert_eq!(status("d.json")["status"], "ok");
    let r = c
        .run(
            "p",
            "check.rhai",
            r#"[get("a"), get("b"), get("c"), get("d")]"#,
        )
        .unwrap();
    assert_eq!(r["value"], json!([1, null, null, 1]));
    c.shutdown();
}

#[test]
fn hostile_peers_do_not_stop_others() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.runners = 4;
    cfg.own_limits.max_wall_ms = 300;
    let c = Core::start(cfg).unwrap();
    for p in ["bad1", "bad2", "good"] {
        c.create_peer(p, uid(), 0).unwrap();
    }
    for p in ["bad1", "bad2"] {
        for i in 0..3 {
            let job = c
                .new_job(
                    p,
                    &format!("x{i}.rhai"),
                    b"fn r(n) { r(n+1) } let s = \"x\"; loop { s += s; }".to_vec(),
                    &json!({}),
                )
                .unwrap();
            c.apply_async(p, Op::Submit(job), None);
        }
    }
    let r = c.run("good", "ok.rhai", "21 * 2").unwrap();
    for p in ["bad1", "bad2"] {
        // Ordered after the submissions: once applied, they are durable.
        c.apply(p, Op::Log("submitted".into())).unwrap();
    }
    assert_eq!(r["value"], 42);
    let bad: Value =
        serde_json::from_slice(&c.wait_result("bad1", "bad1", "x2.json").unwrap()).unwrap();
    assert_eq!(bad["status"], "limit");
    c.shutdown();
}

#[test]
fn many_peers_run_in_parallel_and_idle_ones_close() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.max_open_peers = 8;
    cfg.idle_close = Duration::from_millis(100);
    let c = Core::start(cfg).unwrap();
    for i in 0..40 {
        c.create_peer(&format!("p{i}"), uid(), 0).unwrap();
    }
    for i in 0..40 {
        let r = c
            .run(
                &format!("p{i}"),
                "j.rhai",
                &format!(r#"set("me", {i}); target.name"#),
            )
            .unwrap();
        assert_eq!(r["value"], format!("p{i}"));
    }
    // The sweeper closes idle peers down to the bound, then all of them.
    let mut open = usize::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        open = c.registry().open_count();
        if open == 0 {
            break;
        }
    }
    assert_eq!(open, 0, "idle peers stay open");
    // Reopened lazily with their state intact.
    let r = c.run("p7", "j.rhai", r#"get("me")"#).unwrap();
    assert_eq!(r["value"], 7);
    c.shutdown();
}

#[test]
fn bad_peer_names_and_unknown_peers_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    let e = c.create_peer("a b", uid(), 0).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(e.message.contains("' '"));
    let e = c.submit("nobody", "x.rhai", b"1".to_vec()).unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    c.create_peer("alice", uid(), 0).unwrap();
    assert_eq!(
        c.create_peer("alice", uid(), 0).unwrap_err().errno,
        libc::EEXIST
    );
    let big = vec![b'1'; 17 << 20];
    assert_eq!(
        c.submit("alice", "big.rhai", big).unwrap_err().errno,
        libc::EFBIG
    );
    c.shutdown();
}

#[test]
fn removing_a_peer_moves_its_file_aside() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("gone", uid(), 0).unwrap();
    c.run("gone", "j.rhai", r#"set("keep", "me"); 1"#).unwrap();
    let mut moved = None;
    for _ in 0..100 {
        match c.remove_peer("gone") {
            Ok(p) => {
                moved = Some(p);
                break;
            }
            Err(e) if e.errno == libc::EBUSY => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
    let moved = moved.expect("peer stayed busy");
    assert!(moved.starts_with(d.path().join("removed")));
    assert!(!c.registry().exists("gone"));
    let mut s = peerfs::store::SqliteStore::open(&moved, false).unwrap();
    assert_eq!(s.get("keep").unwrap(), Some(json!("me")));
    c.shutdown();
}

#[test]
fn a_send_to_no_peer_at_all_is_an_error_of_the_run() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    let r = c
        .run("alice", "s.rhai", r#"set("k", 1); send("nobody", "1"); 1"#)
        .unwrap();
    assert_eq!(r["status"], "error", "{r}");
    let why = r["error"].as_str().unwrap();
    assert!(why.contains("no peer \"nobody\""), "{r}");
    // The failed run left nothing behind: no state, no message, no pending result.
    assert_eq!(
        c.run("alice", "g.rhai", r#"get("k")"#).unwrap()["value"],
        Value::Null
    );
    assert!(c.outbox_list("alice", "nobody").unwrap().is_empty());
    // A peer that exists is still sent to.
    c.create_peer("bob", uid(), 0).unwrap();
    let r = c.run("alice", "t.rhai", r#"send("bob", "1"); 1"#).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    c.shutdown();
}

#[test]
fn scripts_from_other_peers_are_denied_without_a_policy() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.create_peer("bob", uid(), 0).unwrap();
    c.submit_to(
        "alice",
        "bob",
        "x.rhai",
        br#"set("pwned", 1)"#.to_vec(),
        &json!({}),
    )
    .unwrap();
    let r: Value =
        serde_json::from_slice(&c.wait_result("alice", "bob", "x.json").unwrap()).unwrap();
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["caller"], "alice");
    assert_eq!(r["target"], "bob");
    let v = c.run("bob", "c.rhai", r#"get("pwned")"#).unwrap();
    assert_eq!(v["value"], Value::Null);
    c.shutdown();
}

#[test]
fn state_written_as_bytes_reads_as_typed_values() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.apply("alice", Op::SetBytes("m".into(), b"41\n".to_vec()))
        .unwrap();
    c.apply("alice", Op::SetBytes("s".into(), b"hello\n".to_vec()))
        .unwrap();
    let r = c
        .run("alice", "j.rhai", r#"[get("m") + 1, get("s")]"#)
        .unwrap();
    assert_eq!(r["value"], json!([42, "hello"]));
    c.shutdown();
}

/// A child process that starts a long run and is killed mid-run.
#[test]
fn crash_mid_run_leaves_no_partial_effects_and_the_script_runs_after_restart() {
    if let Ok(dir) = std::env::var("PEERFS_CRASH_CHILD") {
        let mut cfg = Config::new(&dir);
        cfg.own_limits.max_operations = u64::MAX / 2;
        cfg.own_limits.max_wall_ms = 600_000;
        let c = Core::start(cfg).unwrap();
        c.submit(
            "p",
            "slow.rhai",
            br#"set("half", 1); let i = 0; while i < 3000000 { i += 1; } set("done", true); 1"#
                .to_vec(),
        )
        .unwrap();
        eprintln!("CHILD-SUBMITTED");
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let d = tempfile::tempdir().unwrap();
    {
        let c = core(d.path());
        c.create_peer("p", uid(), 0).unwrap();
        c.shutdown();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "core::crash_mid_run_leaves_no_partial_effects_and_the_script_runs_after_restart",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PEERFS_CRASH_CHILD", d.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "child ended before submitting");
        if line.contains("CHILD-SUBMITTED") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL, mid-run
    child.wait().unwrap();
    {
        // Nothing of the run is visible, and the script is still queued.
        let mut s =
            peerfs::store::SqliteStore::open(&d.path().join("peers/p.sqlite"), false).unwrap();
        assert_eq!(s.get("half").unwrap(), None);
        assert_eq!(s.queue_len().unwrap(), 1);
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }
    let mut cfg = Config::new(d.path());
    cfg.own_limits.max_operations = u64::MAX / 2;
    cfg.own_limits.max_wall_ms = 600_000;
    let c = Core::start(cfg).unwrap();
    let r: Value = serde_json::from_slice(&c.wait_result("p", "p", "slow.json").unwrap()).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    let v = c
        .run("p", "check.rhai", r#"[get("half"), get("done")]"#)
        .unwrap();
    assert_eq!(v["value"], json!([1, true]));
    c.shutdown();
    let mut s = peerfs::store::SqliteStore::open(&d.path().join("peers/p.sqlite"), false).unwrap();
    let runs = s.run_history(100).unwrap();
    assert_eq!(
        runs.iter().filter(|r| r.2.contains("slow.rhai")).count(),
        1,
        "ran exactly once"
    );
}

#[test]
fn a_dropped_script_is_queued_at_the_target_and_its_result_kept_there() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.create_peer("bob", uid(), 0).unwrap();
    c.apply(
        "bob",
        Op::SetMeta(
            "policy".into(),
            b"permit (principal == Peer::\"alice\", action == Action::\"run\", resource);".to_vec(),
        ),
    )
    .unwrap();
    c.submit_to("alice", "bob", "x.rhai", b"6 * 7".to_vec(), &json!({}))
        .unwrap();
    let r: Value =
        serde_json::from_slice(&c.wait_result("alice", "bob", "x.json").unwrap()).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 42);
    assert_eq!(r["caller"], "alice");
    // Listed in alice's view of bob, not in bob's own outbox or bob's view of alice.
    let names = |p: &str, t: &str| -> Vec<String> {
        c.outbox_list(p, t)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    assert_eq!(names("alice", "bob"), ["x.json"]);
    assert!(names("bob", "bob").is_empty());
    assert!(names("bob", "alice").is_empty());
    c.shutdown();
    // On disk: bob ran it (caller alice) and keeps the result; alice sent no message.
    let mut alice =
        peerfs::store::SqliteStore::open(&d.path().join("peers/alice.sqlite"), false).unwrap();
    let mut bob =
        peerfs::store::SqliteStore::open(&d.path().join("peers/bob.sqlite"), false).unwrap();
    assert!(alice.undelivered(10).unwrap().is_empty());
    assert!(alice.outbox_list("bob").unwrap().is_empty());
    let held = bob
        .outbox_list(&peerfs::exec::caller_slot("alice"))
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(held[0].result.as_deref().unwrap().contains("\"value\":42"));
    // After a restart the result is still there for alice.
    drop((alice, bob));
    let c = core(d.path());
    let r: Value =
        serde_json::from_slice(&c.wait_result("alice", "bob", "x.json").unwrap()).unwrap();
    assert_eq!(r["value"], 42);
    c.outbox_remove("alice", "bob", "x.json").unwrap();
    assert!(c.outbox_list("alice", "bob").unwrap().is_empty());
    c.shutdown();
}

#[test]
fn a_script_submitted_to_an_idle_peer_runs_in_its_submission_commit() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.run("alice", "warm.rhai", "1").unwrap();
    let commits = || c.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    let before = commits();
    let id = c
        .submit("alice", "one.rhai", b"set(\"k\", 5); 6".to_vec())
        .unwrap();
    // The result is there when the submission is acknowledged: no wait.
    assert!(!c.result_pending("alice", "alice", "one.json").unwrap());
    let r: Value =
        serde_json::from_slice(&c.wait_result("alice", "alice", "one.json").unwrap()).unwrap();
    assert_eq!(
        (r["status"].as_str(), r["value"].as_i64()),
        (Some("ok"), Some(6))
    );
    assert_eq!(r["id"], id.as_str());
    assert_eq!(commits() - before, 1, "submission and run share one commit");
    c.shutdown();
}

#[test]
fn a_long_script_gives_way_and_still_runs_once_in_order() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    // Runs far longer than the inline budget (1 ms): its first attempt inside the
    // submission's transaction is rolled back, and it runs from the queue.
    let long = r#"set("n", (get("n") ?? 0) + 1); let i = 0; while i < 100000 { i += 1; } set("x", 1); get("n")"#;
    let gave_way = || {
        c.stats()
            .runs_gave_way
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(gave_way(), 0);
    let (tx, rx) = std::sync::mpsc::channel();
    for (name, src) in [("long.rhai", long), ("after.rhai", r#"get("x")"#)] {
        let job = c
            .new_job("alice", name, src.as_bytes().to_vec(), &json!({}))
            .unwrap();
        let tx = tx.clone();
        c.apply_async(
            "alice",
            Op::Submit(job),
            Some(Box::new(move |r| tx.send(r).unwrap())),
        );
    }
    for _ in 0..2 {
        rx.recv().unwrap().unwrap();
    }
    let long: Value =
        serde_json::from_slice(&c.wait_result("alice", "alice", "long.json").unwrap()).unwrap();
    assert_eq!(long["status"], "ok", "{long}");
    assert_eq!(long["value"], 1, "the rolled-back attempt left no trace");
    let after: Value =
        serde_json::from_slice(&c.wait_result("alice", "alice", "after.json").unwrap()).unwrap();
    assert_eq!(after["value"], 1, "the later script ran after the long one");
    assert!(gave_way() >= 1, "the long script's first attempt gave way");
    c.shutdown();
}

#[test]
fn a_result_being_replaced_is_never_shown_from_the_older_run() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    assert_eq!(c.run("alice", "x.rhai", "1").unwrap()["value"], 1);
    let e = c.outbox_get("alice", "alice", "x.json").unwrap().unwrap();
    assert!(e.result.as_deref().unwrap().contains("\"value\":1"));
    // A new run of the same name that takes a while: pending until it ends.
    c.submit(
        "alice",
        "x.rhai",
        b"let i = 0; while i < 100000 { i += 1; } 2".to_vec(),
    )
    .unwrap();
    let e = c.outbox_get("alice", "alice", "x.json").unwrap().unwrap();
    if let Some(r) = e.result.as_deref() {
        // Only the new result may show (if it finished already).
        assert!(r.contains("\"value\":2"), "{r}");
    }
    let r: Value =
        serde_json::from_slice(&c.wait_result("alice", "alice", "x.json").unwrap()).unwrap();
    assert_eq!(r["value"], 2);
    let e = c.outbox_get("alice", "alice", "x.json").unwrap().unwrap();
    assert!(e.result.as_deref().unwrap().contains("\"value\":2"));
    // Removed: gone from memory as well as from the store.
    c.outbox_remove("alice", "alice", "x.json").unwrap();
    assert!(c.outbox_get("alice", "alice", "x.json").unwrap().is_none());
    c.shutdown();
}

#[test]
fn a_script_submitted_after_a_policy_change_meets_the_new_policy() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.create_peer("bob", uid(), 0).unwrap();
    let open = "permit (principal == Peer::\"alice\", action, resource);";
    let closed = "forbid (principal, action == Action::\"write\", resource);\npermit (principal == Peer::\"alice\", action == Action::\"run\", resource);";
    c.apply("bob", Op::SetMeta("policy".into(), open.into()))
        .unwrap();
    for round in 0..5 {
        // bob is busy with a long script of his own: the change and alice's script
        // wait for it and are applied in one batch, in this order.
        c.submit(
            "bob",
            &format!("busy{round}.rhai"),
            b"let i = 0; while i < 100000 { i += 1; } 1".to_vec(),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let job = c
            .new_job_from(
                "alice",
                "bob",
                &format!("w{round}.rhai"),
                br#"set("k", 1); 1"#.to_vec(),
                &json!({}),
            )
            .unwrap();
        let policy = if round % 2 == 0 { closed } else { open };
        for op in [Op::SetMeta("policy".into(), policy.into()), Op::Submit(job)] {
            let tx = tx.clone();
            c.apply_async("bob", op, Some(Box::new(move |r| tx.send(r).unwrap())));
        }
        for _ in 0..2 {
            rx.recv().unwrap().unwrap();
        }
        let r: Value = serde_json::from_slice(
            &c.wait_result("alice", "bob", &format!("w{round}.json"))
                .unwrap(),
        )
        .unwrap();
        let want = if round % 2 == 0 { "denied" } else { "ok" };
        assert_eq!(r["status"], want, "round {round}: {r}");
    }
    c.shutdown();
}

#[test]
fn a_dropped_script_goes_where_the_one_route_says() {
    use peerfs::exec::{Dropped, Route};
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("alice", uid(), 0).unwrap();
    c.create_peer("bob", uid(), 0).unwrap();
    // A peer of this daemon, and the caller itself: into the target's queue.
    assert_eq!(c.route("alice", "bob").unwrap(), Route::Here);
    assert_eq!(c.route("alice", "alice").unwrap(), Route::Here);
    let to_bob = c
        .drop_script("alice", "bob", "x.rhai", b"1".to_vec(), &json!({}))
        .unwrap();
    assert!(matches!(to_bob, Dropped::Submit(ref j) if j.caller == "alice"));
    assert_eq!(to_bob.store("alice", "bob"), "bob");
    // No lattice: a peer that is not here is ENOENT, for a drop and a run's
    // `send` alike (the same rule).
    let e = c
        .drop_script("alice", "carol", "x.rhai", b"1".to_vec(), &json!({}))
        .unwrap_err();
    assert_eq!(e.errno, libc::ENOENT, "{e}");
    assert_eq!(c.route("alice", "carol").unwrap_err().errno, libc::ENOENT);
    assert_eq!(c.route("alice", "../bob").unwrap_err().errno, libc::EINVAL);
    let e = c
        .submit_to("alice", "carol", "x.rhai", b"1".to_vec(), &json!({}))
        .unwrap_err();
    assert_eq!(e.errno, libc::ENOENT, "{e}");
}
