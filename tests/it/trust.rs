//! Trust between the daemon, peers and local users (the threat model in
//! docs/threat-model.md): a private data directory, store files that stay the
//! daemon's, stored rows treated as untrusted input, scripts that crash the
//! daemon, poison values, waiting readers that can be killed, send worms.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o777
}

/// `peerfs mount` with extra environment variables (a `Daemon` like
/// `Daemon::start`'s, so its drop guard unmounts and reaps it).
fn daemon_env(data: &Path, mnt: &Path, work: &Path, env: &[(&str, &str)]) -> Daemon {
    require_fuse();
    let n = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
    let stderr = work.join(format!("daemon-{n}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peerfs"));
    cmd.arg("mount")
        .arg(mnt)
        .arg("--data")
        .arg(data)
        .arg("--force")
        .env("RUST_LOG", "peerfs=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn peerfs mount");
    let d = Daemon {
        child: Some(child),
        mnt: mnt.to_path_buf(),
        work: work.to_path_buf(),
        stderr,
    };
    let mut d = d;
    // A daemon may also abort while it starts (the crash test): then it is
    // returned as it is, for its caller to reap.
    let up = wait_until(Duration::from_secs(20), || {
        if let Some(Ok(Some(_))) = d.child.as_mut().map(|c| c.try_wait()) {
            return true;
        }
        is_mounted(mnt) && std::fs::read(mnt.join(".peerfs/version")).is_ok()
    });
    assert!(up, "peerfs did not come up: {}", d.log_text());
    d
}

fn stop(mut d: Daemon) -> String {
    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(10));
    assert!(st.success(), "peerfs exited with {st}: {}", d.log_text());
    d.log_text()
}

#[test]
fn the_data_directory_is_private_and_a_more_open_one_is_reported() {
    let (_d, data, mnt, work) = dirs();
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    dm.run_ok("alice", "w.rhai", r#"set("secret", "s3cret"); 1"#);
    // peerfs made DATA itself: private to the daemon, and so is all it holds.
    assert_eq!(mode(&data), 0o700, "DATA");
    assert_eq!(mode(&data.join("peers")), 0o700, "DATA/peers");
    assert_eq!(mode(&data.join("owners")), 0o700, "DATA/owners");
    let store = data.join("peers/alice.sqlite");
    assert_eq!(mode(&store), 0o600, "alice.sqlite");
    let wal = data.join("peers/alice.sqlite-wal");
    assert!(wal.exists(), "the store is open in WAL mode");
    assert_eq!(mode(&wal), 0o600, "alice.sqlite-wal");
    // Another local user, with the way to DATA open, cannot read alice's store.
    sh_ok(&format!("chmod 0755 {}", q(data.parent().unwrap())));
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(&store)
        .output()
        .expect("runuser (these tests run as root)");
    assert!(!out.status.success(), "nobody read alice's store");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let log = stop(dm);
    assert!(!log.contains("readable by other local users"), "{log}");

    // An existing DATA that other users can read is reported at start.
    sh_ok(&format!(
        "chmod 0755 {} {}",
        q(&data),
        q(&data.join("peers"))
    ));
    sh_ok(&format!("chmod 0644 {}", q(&store)));
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    let log = stop(dm);
    assert!(
        log.contains("readable by other local users") && log.contains("chmod -R go-rwx"),
        "no warning about the open data directory: {log}"
    );
}

#[test]
fn store_files_stay_the_daemons_and_the_owner_acts_through_the_mount() {
    let (_d, data, mnt, work) = dirs();
    let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(["peer", "create", "carol", "--uid", "65534", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let store = data.join("peers/carol.sqlite");
    let md = std::fs::metadata(&store).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o777),
        (uid(), 0o600),
        "carol's store belongs to the daemon, not to carol's owner"
    );
    // The owner is still carol's owner on the mount.
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    let md = std::fs::metadata(dm.p("carol")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (65534, 0o700));
    drop(dm);

    // A data directory from before: the store owned by the peer's owner. It is
    // handed to the daemon at start and the owner kept.
    std::fs::remove_file(data.join("owners/carol")).unwrap();
    std::os::unix::fs::chown(&store, Some(65534), Some(65534)).unwrap();
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(std::fs::metadata(dm.p("carol")).unwrap().uid(), 65534);
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), uid());
    let log = stop(dm);
    assert!(log.contains("now belongs to the daemon"), "{log}");
}

/// Rows written into stores behind the daemon's back (a store copied in from
/// elsewhere, or written by whoever could reach it) are refused, never run.
#[test]
fn bad_rows_in_a_store_are_refused_with_a_log_line_and_never_run() {
    let (_d, data, mnt, work) = dirs();
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    dm.add_peer("mal");
    std::fs::write(
        dm.p("alice/policy.cedar"),
        r#"permit(principal == Peer::"mal", action in [Action::"run", Action::"write"], resource);"#,
    )
    .unwrap();
    stop(dm);

    let now = peerfs::util::now_ns();
    let sent = |c: &rusqlite::Connection, id: &str, name: &[u8], hops: i64, key: &str| {
        c.execute(
            "INSERT INTO sent(id,to_peer,kind,name,source,params,hops,payload,created_at) \
             VALUES(?1,'alice','script',CAST(?2 AS TEXT),?3,'{}',?4,'',?5)",
            rusqlite::params![
                id,
                name,
                format!("set({key:?}, 1); 1").into_bytes(),
                hops,
                now
            ],
        )
        .unwrap();
    };
    {
        let c = rusqlite::Connection::open(data.join("peers/mal.sqlite")).unwrap();
        sent(&c, "M1", b"neg.rhai", -1000, "pwned_hops");
        sent(&c, "M2", b"../../sub/dir.rhai", 1, "pwned_name");
        sent(&c, "M3", b"bad\xff.rhai", 1, "pwned_utf8");
        sent(&c, "M4 x", b"id.rhai", 1, "pwned_id");
        // The control: a well-formed row runs (the path is not simply broken).
        sent(&c, "M5", b"good.rhai", 1, "delivered");
        let c = rusqlite::Connection::open(data.join("peers/alice.sqlite")).unwrap();
        for (id, name, caller, hops) in [
            ("Q1", "../q.rhai", "mal", 1),
            ("Q2", "q.rhai", "../mal", 1),
            ("Q3", "q.rhai", "mal", -5),
        ] {
            c.execute(
                "INSERT INTO queue(id,name,source,caller,params,msg_id,hops,submitted_at) \
                 VALUES(?1,?2,?3,?4,'{}',NULL,?5,?6)",
                rusqlite::params![
                    id,
                    name,
                    b"set(\"pwned_queue\", 1); 1".to_vec(),
                    caller,
                    hops,
                    now
                ],
            )
            .unwrap();
        }
    }

    let dm = Daemon::start(&data, &mnt, &work, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || dm
            .p("alice/state/delivered")
            .exists()),
        "the well-formed row was not delivered: {}",
        dm.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let keys = dm.names("alice/state");
    assert_eq!(keys, vec!["delivered"], "only the good row ran at alice");
    let mal_log = dm.log_of("mal");
    for (id, why) in [
        ("1", "hops is -1000"),
        ("2", "script name"),
        ("3", "not UTF-8"),
        ("4", "id \"M4 x\""),
    ] {
        assert!(
            mal_log.contains(&format!("refuse sent row {id}: ")) && mal_log.contains(why),
            "mal's log does not refuse row {id} ({why}): {mal_log}"
        );
    }
    let alice_log = dm.log_of("alice");
    assert_eq!(
        alice_log.matches("refuse queued row").count(),
        3,
        "alice's log: {alice_log}"
    );
    let log = stop(dm);
    assert!(log.contains("stored row is invalid"), "{log}");
}

/// A queued script that kills the daemon every time it runs is stopped after
/// three tries with a clear error, and the peer serves on.
#[test]
fn a_script_that_crashes_the_daemon_ends_after_three_tries() {
    let (_d, data, mnt, work) = dirs();
    let env = [("PEERFS_TEST_ABORT_ON", "CRASH-THE-DAEMON")];
    let mut dm = daemon_env(&data, &mnt, &work, &env);
    dm.add_peer("alice");
    // The close returns once the script is durable in the queue; then its run
    // aborts the daemon.
    std::fs::write(
        dm.p("alice/inbox/boom.rhai"),
        "// CRASH-THE-DAEMON\nset(\"ran\", true); 1",
    )
    .unwrap();
    for crash in 1..=3 {
        let st = dm.wait(Duration::from_secs(20));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(libc::SIGABRT),
            "crash {crash}: the daemon should have aborted ({st}): {}",
            dm.log_text()
        );
        // The crashed daemon's stale mount goes before the next one starts.
        drop(dm);
        // Recovery runs the queued script again at start: it aborts again, until
        // its third crash is counted.
        dm = daemon_env(&data, &mnt, &work, &env);
    }
    let r = std::fs::read(dm.p("alice/outbox/boom.json"))
        .unwrap_or_else(|e| panic!("read the result: {e}: {}", dm.log_text()));
    let r: serde_json::Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("crashed the daemon 3 times"),
        "{r}"
    );
    assert!(!dm.p("alice/state/ran").exists());
    assert_eq!(dm.run_ok("alice", "after.rhai", "40 + 2"), 42);
    let log = stop(dm);
    assert!(log.contains("crashed the daemon every time"), "{log}");
}

/// Starts `cat FILE` and gives it time to block in its read. Ctrl-C's signal
/// has its default action in it, whatever this process inherited (a shell
/// without job control starts background commands with SIGINT ignored).
fn waiting_cat(file: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("cat");
    c.arg(file).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let c = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    c
}

/// Waits up to `t` for `c` to exit.
fn exits_within(c: &mut std::process::Child, t: Duration) -> Option<std::process::ExitStatus> {
    let mut st = None;
    wait_until(t, || {
        st = c.try_wait().unwrap();
        st.is_some()
    });
    st
}

/// A reader waiting for a result dies when killed, stops on Ctrl-C (SIGINT),
/// and gives up with ETIMEDOUT after the longest wait: the daemon watches the
/// reader of each waiting request (fuser answers FUSE_INTERRUPT with ENOSYS).
#[test]
fn a_reader_waiting_for_a_result_can_be_killed_interrupted_and_times_out() {
    use std::os::unix::process::ExitStatusExt;
    let m = Mounted::with(
        |c| {
            // alice's own script: her own limits let it run past result_wait.
            c.own_limits.max_wall_ms = 30_000;
            c.own_limits.max_operations = u64::MAX / 2;
            c.result_wait = Duration::from_secs(4);
        },
        Default::default(),
    );
    m.add_peer("alice");
    std::fs::write(m.p("alice/inbox/slow.rhai"), "let n = 0; loop { n += 1; }").unwrap();
    let out = m.p("alice/outbox/slow.json");

    let mut cat = waiting_cat(&out);
    assert!(cat.try_wait().unwrap().is_none(), "cat should be waiting");
    unsafe { libc::kill(cat.id() as i32, libc::SIGKILL) };
    let st = exits_within(&mut cat, Duration::from_secs(3))
        .expect("a killed reader of a pending result must die at once");
    assert_eq!(st.signal(), Some(libc::SIGKILL));

    let mut cat = waiting_cat(&out);
    unsafe { libc::kill(cat.id() as i32, libc::SIGINT) };
    let st = exits_within(&mut cat, Duration::from_secs(3))
        .expect("Ctrl-C must stop a reader of a pending result");
    assert_eq!(st.signal(), Some(libc::SIGINT));

    // Nobody stops it: it ends after result_wait with a clear errno.
    let t0 = std::time::Instant::now();
    let r = std::fs::read(&out);
    expect_errno(
        r,
        libc::ETIMEDOUT,
        "read of a result still pending after result_wait",
    );
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
}

/// A value too deep to write as JSON and read back fails the run that made it
/// (it would otherwise poison its result's delivery, retried forever), and the
/// result reaches its reader.
#[test]
fn a_value_too_deep_for_json_fails_its_run_and_the_result_is_delivered() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    std::fs::write(
        m.p("bob/policy.cedar"),
        r#"permit(principal == Peer::"alice", action == Action::"run", resource);"#,
    )
    .unwrap();
    let deep = "let v = 1; for i in 0..200 { v = [v]; } v";
    // Dropped at bob: the result is kept at bob.
    let r = m.run_in("alice/peers/bob", "deep.rhai", deep);
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("levels deep"), "{r}");
    // Sent by alice's script: the result travels back as a message.
    m.run_ok("alice", "s.rhai", &format!("send(\"bob\", {deep:?}); 0"));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.p("alice/peers/bob/outbox/s-1.json")).unwrap())
            .unwrap();
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("levels deep"), "{r}");
    // Deep values are refused where they would be kept too.
    let r = m.run(
        "alice",
        "set.rhai",
        &format!("let v = {{ {deep} }}; set(\"k\", v); 0"),
    );
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("levels deep"), "{r}");
}

const WORM: &str = r#"let w = "for i in 0..3 { send(\"mal\", get(\"w\")) } 0"; set("w", w); for i in 0..3 { send("mal", w) } 0"#;

/// Waits until `count` stops changing for a second (at most `t`); its last value.
fn settles(t: Duration, mut count: impl FnMut() -> u64) -> Option<u64> {
    let mut last = (count(), std::time::Instant::now());
    let ok = wait_until(t, || {
        let n = count();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(1)
    });
    ok.then_some(last.0)
}

/// A send worm (each run sends itself three times) ends: the chain shares one
/// budget of runs, and the run that would exceed it ends with status `limit`.
#[test]
fn a_send_worm_ends_within_its_chains_budget() {
    let m = Mounted::new();
    m.add_peer("mal");
    assert_eq!(m.run_ok("mal", "worm.rhai", WORM), 0);
    let budget = m.core.config().chain_budget;
    let runs = settles(Duration::from_secs(60), || {
        m.core
            .stats()
            .runs
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .expect("the worm never stopped");
    assert!(
        runs <= budget + 2,
        "{runs} runs: more than the chain's budget ({budget})"
    );
    assert!(
        runs > 20,
        "the worm hardly ran ({runs} runs): the test shows nothing"
    );
    let log = m.log_of("mal");
    assert!(
        log.contains("chain_budget reached"),
        "no run names the limit"
    );
}

/// Unmount with a full queue and deliveries in flight finishes promptly, and
/// after a remount the worm's leftovers still end.
#[test]
fn unmount_with_a_worm_queued_finishes_promptly() {
    let (_d, data, mnt, work) = dirs();
    let mut dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("mal");
    assert_eq!(dm.run_ok("mal", "worm.rhai", WORM), 0);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    // fusermount3 where it is installed; umount(8) as root does the same.
    sh_ok(&format!(
        "fusermount3 -u {m} 2>/dev/null || umount {m}",
        m = q(&mnt)
    ));
    let st = dm.wait(Duration::from_secs(5));
    assert!(st.success(), "{st}: {}", dm.log_text());
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(dm);
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    let lines = settles(Duration::from_secs(60), || {
        std::fs::read(dm.p("mal/log")).map_or(0, |l| l.len() as u64)
    });
    assert!(lines.is_some(), "the worm went on after the remount");
    stop(dm);
}

/// An owner sees its queue in `inbox/` and purges it with `rm`: a withdrawn
/// script never runs and its result says why.
#[test]
fn an_owner_sees_and_withdraws_queued_scripts() {
    // The first script runs until max_wall_ms (2 s), the others wait meanwhile.
    let m = Mounted::with(
        |c| {
            c.limits.max_operations = u64::MAX / 2;
            c.own_limits.max_operations = u64::MAX / 2;
        },
        Default::default(),
    );
    m.add_peer("alice");
    // Three scripts queued at once (sent by alice's own script): the first runs
    // for a while, the others wait in the queue.
    m.run_ok(
        "alice",
        "q.rhai",
        r#"send("alice", "let n = 0; loop { n += 1; }"); send("alice", "set(\"b\", 1); 1"); send("alice", "set(\"c\", 1); 1"); 0"#,
    );
    let queued = wait_until(Duration::from_secs(5), || {
        m.names("alice/inbox").contains(&"q-2.rhai".to_string())
    });
    assert!(queued, "queued scripts are listed in the owner's inbox");
    sh_ok(&format!("rm {}", q(&m.p("alice/inbox/q-2.rhai"))));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.p("alice/outbox/q-2.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("withdrawn"), "{r}");
    // The others run in order; the withdrawn one never did.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.p("alice/outbox/q-3.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert!(!m.p("alice/state/b").exists());
    assert!(m.p("alice/state/c").exists());
    assert!(m.log_of("alice").contains("withdraw q-2.rhai (1 queued)"));
    expect_errno(
        std::fs::remove_file(m.p("alice/inbox/zzz.rhai")),
        libc::ENOENT,
        "rm of a script that is not queued",
    );
}

fn result_at(m: &Mounted, rel: &str) -> serde_json::Value {
    let p = m.p(rel);
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap()
}

/// Identity laundering: carol permits bob and forbids mal; bob lets his group
/// (alice and mal) do anything, send included. mal's code sent on by bob must
/// still meet carol's forbid, and carol sees who is behind it.
#[test]
fn a_forbid_holds_for_every_peer_on_the_chain() {
    let m = Mounted::new();
    for p in ["alice", "bob", "carol", "mal"] {
        m.add_peer(p);
    }
    m.run_ok("carol", "seed.rhai", r#"set("secret", "s3cret"); 0"#);
    std::fs::write(
        m.p("carol/policy.cedar"),
        r#"permit(principal == Peer::"bob", action, resource);
forbid(principal == Peer::"mal", action, resource);"#,
    )
    .unwrap();
    std::fs::write(m.p("bob/groups"), "members: alice mal\n").unwrap();
    std::fs::write(
        m.p("bob/policy.cedar"),
        r#"permit(principal in Group::"members", action, resource);"#,
    )
    .unwrap();
    std::fs::write(
        m.p("mal/policy.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();

    // mal -> bob -> carol -> mal: carol's secret back to mal.
    let steal = r#"let s = get("secret"); send("mal", "set(\"loot\", \"" + s + "\"); 0"); 0"#;
    let r = m.run_in(
        "mal/peers/bob",
        "l.rhai",
        &format!("send(\"carol\", {steal:?}); 0"),
    );
    assert_eq!(r["status"], "ok", "{r}");
    let at_carol = result_at(&m, "bob/peers/carol/outbox/l-1.json");
    assert_eq!(at_carol["status"], "denied", "{at_carol}");
    let why = at_carol["error"].as_str().unwrap();
    assert!(
        why.contains("for mal, who is on this script's chain (mal>bob)"),
        "{why}"
    );
    // A variant that writes carol's state.
    m.run_in(
        "mal/peers/bob",
        "w.rhai",
        r#"send("carol", "set(\"owned\", 1); 0"); 0"#,
    );
    assert_eq!(
        result_at(&m, "bob/peers/carol/outbox/w-1.json")["status"],
        "denied"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!m.p("mal/state/loot").exists(), "mal got carol's secret");
    assert!(
        !m.p("carol/state/owned").exists(),
        "mal wrote carol's state"
    );
    // carol's log says who is behind bob.
    let log = m.log_of("carol");
    assert!(
        log.contains("caller=bob status=denied") && log.contains("origin=mal chain=mal>bob"),
        "{log}"
    );

    // The same path from alice (not forbidden) works, and the script sees its
    // provenance.
    let r = m.run_in(
        "alice/peers/bob",
        "ok.rhai",
        r#"send("carol", "[caller.name, caller.origin, caller.chain, get(\"secret\")]"); 0"#,
    );
    assert_eq!(r["status"], "ok", "{r}");
    let v = result_at(&m, "bob/peers/carol/outbox/ok-1.json");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["value"],
        serde_json::json!(["bob", "alice", ["alice", "bob"], "s3cret"])
    );
    // A direct caller's own script: origin and chain are just the caller.
    let v = m.run_in("bob/peers/carol", "d.rhai", "[caller.origin, caller.chain]");
    assert_eq!(v["value"], serde_json::json!(["bob", ["bob"]]), "{v}");

    // context.origin in Cedar: carol accepts only bob's own scripts.
    std::fs::write(
        m.p("carol/policy.cedar"),
        r#"permit(principal == Peer::"bob", action, resource) when { context.origin == "bob" && context.chain.contains("bob") };"#,
    )
    .unwrap();
    let v = m.run_in("bob/peers/carol", "d2.rhai", "1");
    assert_eq!(v["status"], "ok", "{v}");
    m.run_in("alice/peers/bob", "o2.rhai", r#"send("carol", "1"); 0"#);
    let v = result_at(&m, "bob/peers/carol/outbox/o2-1.json");
    assert_eq!(v["status"], "denied", "{v}");
}

/// After a lazy unmount, with a reader still waiting for a result, SIGTERM
/// stops the daemon promptly (the waiting read is answered, and the daemon does
/// not wait for the lazily unmounted mount for ever).
#[test]
fn sigterm_after_a_lazy_unmount_with_a_waiting_reader_stops_promptly() {
    let (_d, data, mnt, work) = dirs();
    let mut dm = Daemon::start(
        &data,
        &mnt,
        &work,
        &["--max-wall-ms", "60000", "--max-operations", "100000000000"],
    );
    dm.add_peer("alice");
    std::fs::write(dm.p("alice/inbox/slow.rhai"), "let n = 0; loop { n += 1; }").unwrap();
    let mut cat = waiting_cat(&dm.p("alice/outbox/slow.json"));
    assert!(cat.try_wait().unwrap().is_none(), "cat should be waiting");
    sh_ok(&format!(
        "fusermount3 -uz {m} 2>/dev/null || umount -l {m}",
        m = q(&mnt)
    ));
    let t0 = std::time::Instant::now();
    dm.signal(libc::SIGTERM);
    let st = dm.wait(Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(st.success(), "{st}: {}", dm.log_text());
    let st = exits_within(&mut cat, Duration::from_secs(5)).expect("the reader was answered");
    assert!(!st.success(), "cat read a result that was never ready");
    let log = dm.log_text();
    assert!(!log.contains("did not end within 5 s"), "{log}");
}

/// A FUSE connection aborted from outside (`abort` in fusectl, what an operator
/// does to a hung mount) stops the daemon as an unmount does: exit 0, the
/// stores closed, nothing lost.
#[test]
fn an_aborted_fuse_connection_stops_the_daemon_like_an_unmount() {
    let (_d, data, mnt, work) = dirs();
    let ctl = Path::new("/sys/fs/fuse/connections");
    // fusectl, mounted for this test when the machine has not (and left so
    // afterwards only if it was).
    let mounted_here = std::fs::read_dir(ctl)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
        && !std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(" /sys/fs/fuse/connections ");
    if mounted_here {
        sh_ok("mount -t fusectl fusectl /sys/fs/fuse/connections");
    }
    let mut dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    std::fs::write(dm.p("alice/state/k"), "7").unwrap();
    let dev = std::fs::metadata(&mnt).unwrap().dev();
    let conn = ctl.join(libc::minor(dev).to_string());
    assert!(
        conn.join("abort").exists(),
        "no fusectl entry {} for the mount",
        conn.display()
    );
    std::fs::write(conn.join("abort"), "1").unwrap();
    let st = dm.wait(Duration::from_secs(10));
    let log = dm.log_text();
    if mounted_here {
        sh_ok("umount /sys/fs/fuse/connections");
    }
    assert!(st.success(), "{st}: {log}");
    assert!(log.contains("closing the stores"), "{log}");
    assert!(!is_mounted(&mnt), "the aborted mount was left behind");
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(std::fs::read_to_string(dm.p("alice/state/k")).unwrap(), "7");
}

/// A message its target refuses every time (here: one that claims more sends
/// than the hop limit) is not retried for ever: after a few tries its sender
/// gets an `error` result with the reason.
#[test]
fn a_message_that_keeps_failing_delivery_becomes_an_error_result() {
    let (_d, data, mnt, work) = dirs();
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    dm.add_peer("mal");
    stop(dm);
    {
        let now = peerfs::util::now_ns();
        let c = rusqlite::Connection::open(data.join("peers/mal.sqlite")).unwrap();
        c.execute(
            "INSERT INTO sent(id,to_peer,kind,name,source,params,hops,payload,created_at) \
             VALUES('M6','alice','script','far.rhai','1','{}',20,'',?1)",
            [now],
        )
        .unwrap();
        c.execute(
            "INSERT INTO outbox(target,name,run_id,result,submitted_at) VALUES('alice','far.json','M6',NULL,?1)",
            [now],
        )
        .unwrap();
    }
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    let r = std::fs::read(dm.p("mal/peers/alice/outbox/far.json"))
        .unwrap_or_else(|e| panic!("read far.json: {e}: {}", dm.log_text()));
    let r: serde_json::Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["status"], "error", "{r}");
    let why = r["error"].as_str().unwrap();
    assert!(
        why.contains("cannot deliver far.rhai to alice") && why.contains("hop_limit"),
        "{r}"
    );
    let log = stop(dm);
    assert_eq!(
        log.matches("delivery failed; will retry").count(),
        4,
        "{log}"
    );
}
