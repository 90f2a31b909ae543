//! Cross-peer scripts under Cedar policies, through the core (no mount): the
//! three checks, caller_get without a confused deputy, chains, cycles, send storms,
//! and exactly-once delivery across crashes.

use std::time::{Duration, Instant};

use peerfs::exec::{Config, Core, Op};
use peerfs::store::prelude::*;
use peerfs::store::{Message, SqliteStore};
use serde_json::{json, Value};

fn start(dir: &std::path::Path) -> Core {
    let mut cfg = Config::new(dir);
    cfg.runners = 4;
    Core::start(cfg).unwrap()
}

fn peers(c: &Core, names: &[&str]) {
    let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
    for n in names {
        c.create_peer(n, u, g).unwrap();
    }
}

fn policy(c: &Core, peer: &str, text: &str) {
    peerfs::policy::Policy::parse(text).unwrap();
    c.apply(peer, Op::SetMeta("policy".into(), text.as_bytes().to_vec()))
        .unwrap();
}

/// Runs `src` from `caller` at `target` and returns the result.
fn run_at(c: &Core, caller: &str, target: &str, name: &str, src: &str) -> Value {
    c.submit_to(caller, target, name, src.as_bytes().to_vec(), &json!({}))
        .unwrap();
    let stem = name.trim_end_matches(".rhai");
    serde_json::from_slice(
        &c.wait_result(caller, target, &format!("{stem}.json"))
            .unwrap(),
    )
    .unwrap()
}

fn get(c: &Core, peer: &str, key: &str) -> Value {
    c.run(peer, "peek.rhai", &format!("get({key:?})")).unwrap()["value"].clone()
}

const BOB: &str = r#"
permit(principal == Peer::"alice", action == Action::"run", resource);
permit(principal == Peer::"alice", action == Action::"read", resource);
permit(principal == Peer::"alice", action == Action::"write", resource) when { resource.key like "shared/*" };
permit(principal in Group::"friends", action in [Action::"run", Action::"send"], resource);
forbid(principal == Peer::"mallory", action, resource);
"#;

#[test]
fn run_read_write_decided_by_the_targets_policy() {
    let d = tempfile::tempdir().unwrap();
    let c = start(d.path());
    peers(&c, &["alice", "bob", "mallory", "eve"]);
    policy(&c, "bob", BOB);
    c.apply(
        "bob",
        Op::SetMeta("groups".into(), b"friends: mallory eve\n".to_vec()),
    )
    .unwrap();
    let r = run_at(
        &c,
        "alice",
        "bob",
        "w.rhai",
        r#"set("shared/x", caller.name); [caller.name, target.name, get("shared/x")]"#,
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], json!(["alice", "bob", "alice"]));
    assert_eq!(r["caller"], "alice");
    // A write outside shared/ is denied mid-run: the whole run is rolled back.
    let r = run_at(
        &c,
        "alice",
        "bob",
        "w2.rhai",
        r#"set("shared/y", 1); set("private", 2); 3"#,
    );
    assert_eq!(r["status"], "denied", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("write") && e.contains("private"), "{e}");
    assert_eq!(get(&c, "bob", "shared/y"), Value::Null);
    assert_eq!(get(&c, "bob", "private"), Value::Null);
    // eve, a friend, may run but not read; mallory is forbidden although a friend.
    let r = run_at(&c, "eve", "bob", "e.rhai", "1 + 1");
    assert_eq!(r["status"], "ok", "{r}");
    let r = run_at(&c, "mallory", "bob", "m.rhai", "1 + 1");
    assert_eq!(r["status"], "denied", "{r}");
    assert!(r["error"].as_str().unwrap().contains("forbid"), "{r}");
    // The denial is in bob's log.
    let bob = c.peer("bob").unwrap();
    let log = bob
        .read(|s| {
            let n = s.log_size()?;
            s.read_log(0, n as usize)
        })
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("m.rhai") && l.contains("status=denied")),
        "{log}"
    );
    c.shutdown();
}

#[test]
fn calls_the_policy_never_allows_are_refused_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let c = start(d.path());
    peers(&c, &["alice", "bob"]);
    policy(
        &c,
        "bob",
        r#"permit(principal == Peer::"alice", action == Action::"run", resource);"#,
    );
    let r = run_at(&c, "alice", "bob", "s.rhai", r#"print("ran"); set("k", 1)"#);
    assert_eq!(r["status"], "denied");
    assert!(
        r["error"].as_str().unwrap().contains("before running"),
        "{r}"
    );
    assert_eq!(r["output"], "", "nothing ran");
    c.shutdown();
}

#[test]
fn caller_get_is_decided_by_the_callers_policy_no_confused_deputy() {
    let d = tempfile::tempdir().unwrap();
    let c = start(d.path());
    peers(&c, &["alice", "bob"]);
    policy(
        &c,
        "bob",
        r#"permit(principal == Peer::"alice", action in [Action::"run", Action::"import"], resource);"#,
    );
    policy(
        &c,
        "alice",
        r#"permit(principal == Peer::"bob", action == Action::"read", resource) when { resource.key like "public/*" };"#,
    );
    c.run(
        "alice",
        "seed.rhai",
        r#"set("public/name", "Alice"); set("secret", "pin 1234"); 1"#,
    )
    .unwrap();
    // bob's module tries to read alice's secret on her behalf.
    c.apply(
        "bob",
        Op::SetModule(
            "steal".into(),
            b"fn take() { caller_get(\"secret\") } fn name() { caller_get(\"public/name\") }"
                .to_vec(),
        ),
    )
    .unwrap();
    let r = run_at(
        &c,
        "alice",
        "bob",
        "n.rhai",
        r#"import "steal" as s; s::name()"#,
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], "Alice");
    let r = run_at(
        &c,
        "alice",
        "bob",
        "t.rhai",
        r#"import "steal" as s; s::take()"#,
    );
    assert_eq!(r["status"], "denied", "{r}");
    assert!(r["error"].as_str().unwrap().contains("caller_get"), "{r}");
    assert!(!r.to_string().contains("pin 1234"));
    c.shutdown();
}

#[test]
fn chains_carry_the_right_caller_at_every_hop() {
    let d = tempfile::tempdir().unwrap();
    let c = start(d.path());
    peers(&c, &["alice", "bob", "carol"]);
    policy(
        &c,
        "bob",
        r#"permit(principal == Peer::"alice", action in [Action::"run", Action::"send"], resource);"#,
    );
    policy(
        &c,
        "carol",
        r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"write"], resource);"#,
    );
    let r = c
        .run("alice", "chain.rhai", r#"send("bob", "send(`carol`, `set(\"from\", caller.name); caller.name`); caller.name"); 1"#)
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    let at_bob: Value =
        serde_json::from_slice(&c.wait_result("alice", "bob", "chain-1.json").unwrap()).unwrap();
    assert_eq!(at_bob["status"], "ok", "{at_bob}");
    assert_eq!(at_bob["value"], "alice");
    let at_carol: Value =
        serde_json::from_slice(&c.wait_result("bob", "carol", "chain-1-1.json").unwrap()).unwrap();
    assert_eq!(at_carol["status"], "ok", "{at_carol}");
    assert_eq!(at_carol["value"], "bob");
    assert_eq!(get(&c, "carol", "from"), "bob");
    c.shutdown();
}

#[test]
fn cycles_stop_at_the_hop_limit() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.limits.hop_limit = 6;
    let c = Core::start(cfg).unwrap();
    peers(&c, &["alice", "bob"]);
    let both = |other: &str| {
        format!(
            r#"permit(principal == Peer::"{other}", action in [Action::"run", Action::"send"], resource);"#
        )
    };
    policy(&c, "alice", &both("bob"));
    policy(&c, "bob", &both("alice"));
    let ping = r#"let other = if target.name == "alice" { "bob" } else { "alice" }; send(other, caller.params.src, caller.params); 0"#;
    let job = c
        .new_job(
            "alice",
            "ping.rhai",
            ping.as_bytes().to_vec(),
            &json!({"src": ping}),
        )
        .unwrap();
    c.apply("alice", Op::Submit(job)).unwrap();
    // Somewhere down the chain a run ends with hop_limit; the ping-pong stops.
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let mut hit = false;
        for p in ["alice", "bob"] {
            let runs = c.peer(p).unwrap().read(|s| s.run_history(100)).unwrap();
            hit |= runs
                .iter()
                .any(|(_, st, res)| st == "limit" && res.contains("hop_limit"));
        }
        if hit || Instant::now() > deadline {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(found, "no run ended at the hop limit");
    std::thread::sleep(Duration::from_millis(300));
    let total: usize = ["alice", "bob"]
        .iter()
        .map(|p| {
            c.peer(p)
                .unwrap()
                .read(|s| s.run_history(1000))
                .unwrap()
                .len()
        })
        .sum();
    assert!(total <= 10, "the cycle kept going: {total} runs");
    c.shutdown();
}

#[test]
fn send_storms_are_bounded_and_rolled_back() {
    let d = tempfile::tempdir().unwrap();
    // max_sends below the chain's budget, so that the send limit is what ends it.
    let mut cfg = Config::new(d.path());
    cfg.runners = 4;
    cfg.own_limits.max_sends = 500;
    let c = Core::start(cfg).unwrap();
    peers(&c, &["alice", "bob"]);
    let r = c
        .run(
            "alice",
            "storm.rhai",
            r#"for i in 0..20000 { send("bob", "1"); } 1"#,
        )
        .unwrap();
    assert_eq!(r["status"], "limit", "{r}");
    assert!(r["error"].as_str().unwrap().contains("max_sends"), "{r}");
    std::thread::sleep(Duration::from_millis(200));
    let undelivered = c
        .peer("alice")
        .unwrap()
        .read(|s| s.undelivered(10))
        .unwrap();
    assert!(undelivered.is_empty());
    assert_eq!(c.peer("bob").unwrap().read(|s| s.queue_len()).unwrap(), 0);
    assert!(c
        .peer("bob")
        .unwrap()
        .read(|s| s.run_history(10))
        .unwrap()
        .is_empty());
    c.shutdown();
}

/// A message alice committed but never delivered (crash after her commit) is
/// delivered after restart exactly once, also when the crash came after bob's
/// commit but before alice learnt of it.
#[test]
fn delivery_is_exactly_once_across_crashes() {
    let d = tempfile::tempdir().unwrap();
    {
        let c = start(d.path());
        peers(&c, &["alice", "bob"]);
        policy(
            &c,
            "bob",
            r#"permit(principal == Peer::"alice", action in [Action::"run", Action::"write", Action::"read"], resource);"#,
        );
        c.shutdown();
    }
    let alice = d.path().join("peers/alice.sqlite");
    let msg = Message {
        id: peerfs::util::new_id(),
        to: "bob".into(),
        kind: "script".into(),
        name: "inc.rhai".into(),
        source: br#"let n = (get("n") ?? 0) + 1; set("n", n); n"#.to_vec(),
        params: "{}".into(),
        hops: 1,
        payload: String::new(),
        created_at: peerfs::util::now_ns(),
        ..Default::default()
    };
    {
        // As if alice's daemon committed the send and died before delivering it.
        let mut s = SqliteStore::open(&alice, false).unwrap();
        s.begin().unwrap();
        s.outbox_pending("bob", "inc.json", &msg.id, msg.created_at)
            .unwrap();
        s.record_outgoing(&msg).unwrap();
        s.commit().unwrap();
    }
    for round in 0..3 {
        let c = start(d.path());
        let r: Value =
            serde_json::from_slice(&c.wait_result("alice", "bob", "inc.json").unwrap()).unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["value"], 1, "round {round}: {r}");
        // Wait until alice has recorded the delivery, then stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c
            .peer("alice")
            .unwrap()
            .read(|s| s.undelivered(10))
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "never marked delivered");
            std::thread::sleep(Duration::from_millis(20));
        }
        c.shutdown();
        // As if the crash came after bob's commit but before alice marked it: resend.
        let conn = rusqlite_reset(&alice);
        assert!(conn);
    }
    let c = start(d.path());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&c, "bob", "n"), 1, "the message ran more than once");
    let runs = c.peer("bob").unwrap().read(|s| s.run_history(100)).unwrap();
    assert_eq!(runs.iter().filter(|r| r.2.contains("inc.rhai")).count(), 1);
    c.shutdown();
}

/// Marks every sent message of a store undelivered again.
fn rusqlite_reset(path: &std::path::Path) -> bool {
    let out = std::process::Command::new("sqlite3")
        .arg(path)
        .arg("UPDATE sent SET delivered_at = NULL;")
        .status()
        .expect("sqlite3 is installed by scripts-ci/setup");
    out.success()
}
