//! Intake independent of runs, through a real mount: a drop into a peer that is
//! running a script returns once the submission is durable in the intake journal,
//! without waiting for that run; what the journal holds is listed, withdrawn by
//! `rm`, and survives a SIGKILL at the points between the journal's commit and
//! the peer taking it, exactly once.
//!
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// alice's own scripts may loop for `wall_ms` before they end with `limit`.
fn mounted(wall_ms: u64) -> Mounted {
    Mounted::with(
        |c| {
            c.own_limits.max_operations = u64::MAX / 2;
            c.own_limits.max_wall_ms = wall_ms;
        },
        Default::default(),
    )
}

/// Drops an endless loop into alice's inbox and waits until her actor runs it in
/// a batch (it gave way in its submission's transaction and runs from the queue
/// now): from here until it ends, alice's store is busy.
fn start_endless(m: &Mounted) {
    let gave_way = m.core.stats().runs_gave_way.load(Ordering::Relaxed);
    fs::write(
        m.p("alice/inbox/endless.rhai"),
        "let n = 0; loop { n += 1; }",
    )
    .unwrap();
    let running = wait_until(T, || {
        m.core.stats().runs_gave_way.load(Ordering::Relaxed) > gave_way && m.core.running("alice")
    });
    assert!(running, "the endless script never started");
}

fn result(m: &Mounted, rel: &str) -> Value {
    let p = m.p(rel);
    let b = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap()
}

/// The `run` lines of `log` for these script names, in log order.
fn runs_in_order<'a>(log: &'a str, names: &[&'a str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.split(' ').nth(1) == Some("run"))
        .filter_map(|l| {
            names
                .iter()
                .copied()
                .find(|n| l.split(' ').any(|t| t == *n))
        })
        .collect()
}

#[test]
fn a_drop_into_a_peer_running_an_endless_loop_returns_before_that_run_ends() {
    let m = mounted(4000);
    m.add_peer("alice");
    start_endless(&m);
    let pending = m.p("alice/outbox/endless.json");
    for i in 1..=3 {
        fs::write(
            m.p(&format!("alice/inbox/quick{i}.rhai")),
            format!("set(\"q{i}\", (get(\"q{}\") ?? 0) + 1); {i}", i - 1),
        )
        .unwrap();
        // The close returned, and the endless loop's result does not exist yet.
        assert_eq!(
            open_nonblock(&pending),
            Err(libc::EAGAIN),
            "quick{i}.rhai's close waited for the endless run to end"
        );
        // Held scripts are listed as queued, their results as pending.
        assert!(m.names("alice/inbox").contains(&format!("quick{i}.rhai")));
        assert!(m.names("alice/outbox").contains(&format!("quick{i}.json")));
        assert_eq!(
            open_nonblock(&m.p(&format!("alice/outbox/quick{i}.json"))),
            Err(libc::EAGAIN)
        );
    }
    assert!(
        m.core.peer("alice").unwrap().queued() >= 3,
        "held scripts count as queued"
    );
    // Then all run, in submission order.
    let r = result(&m, "alice/outbox/endless.json");
    assert_eq!(r["status"], "limit", "{r}");
    for i in 1..=3 {
        let r = result(&m, &format!("alice/outbox/quick{i}.json"));
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["value"], i, "{r}");
    }
    // Each saw the one before it.
    assert_eq!(
        fs::read_to_string(m.p("alice/state/q3")).unwrap().trim(),
        "3"
    );
    let log = m.log_of("alice");
    assert_eq!(
        runs_in_order(
            &log,
            &["endless.rhai", "quick1.rhai", "quick2.rhai", "quick3.rhai"]
        ),
        ["endless.rhai", "quick1.rhai", "quick2.rhai", "quick3.rhai"],
        "{log}"
    );
    // The last result can show a moment before its script leaves the listing.
    assert!(
        wait_until(Duration::from_secs(5), || m.names("alice/inbox").is_empty()),
        "{:?}",
        m.names("alice/inbox")
    );
}

#[test]
fn rm_of_a_script_held_in_the_journal_withdraws_it_without_waiting() {
    let m = mounted(4000);
    m.add_peer("alice");
    start_endless(&m);
    fs::write(m.p("alice/inbox/w1.rhai"), "set(\"w1\", 1); 1").unwrap();
    fs::write(m.p("alice/inbox/w2.rhai"), "set(\"w2\", 1); 2").unwrap();
    assert!(m.names("alice/inbox").contains(&"w2.rhai".to_string()));
    assert_eq!(
        fs::read_to_string(m.p("alice/inbox/w2.rhai")).unwrap(),
        "set(\"w2\", 1); 2"
    );
    fs::remove_file(m.p("alice/inbox/w2.rhai")).expect("rm inbox/w2.rhai");
    // rm returned while the endless loop still runs, and w2 is no longer listed.
    assert_eq!(
        open_nonblock(&m.p("alice/outbox/endless.json")),
        Err(libc::EAGAIN)
    );
    let inbox = m.names("alice/inbox");
    assert!(!inbox.contains(&"w2.rhai".to_string()), "{inbox:?}");
    assert!(inbox.contains(&"w1.rhai".to_string()), "{inbox:?}");
    expect_errno(
        fs::remove_file(m.p("alice/inbox/w2.rhai")),
        libc::ENOENT,
        "a second rm of a withdrawn script",
    );
    // Its result says so; w1 runs, w2 never does.
    let w2 = result(&m, "alice/outbox/w2.json");
    assert_eq!(w2["status"], "error", "{w2}");
    assert!(w2["error"].as_str().unwrap().contains("withdrawn"), "{w2}");
    assert_eq!(result(&m, "alice/outbox/w1.json")["status"], "ok");
    let r = m.run("alice", "after.rhai", "[get(\"w1\"), get(\"w2\")]");
    assert_eq!(r["value"], serde_json::json!([1, null]), "{r}");
    let log = m.log_of("alice");
    assert!(log.contains("withdraw w2.rhai"), "{log}");
    assert_eq!(log_lines_with(&log, &["run", "w2.rhai"]).len(), 1, "{log}");
}

/// `peerfs mount` with test hooks in its environment; returns once it serves, or
/// once it exited (a hook may abort it while it starts).
fn daemon(data: &Path, mnt: &Path, work: &Path, env: &[(&str, &str)]) -> Daemon {
    let _ = fs::create_dir_all(mnt);
    let args = [
        OsStr::new("mount"),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--force".as_ref(),
        "--max-operations".as_ref(),
        "100000000000".as_ref(),
        "--max-wall-ms".as_ref(),
        "2000".as_ref(),
    ];
    let mut d = Daemon::spawn_env(&args, mnt, work, env);
    let up = wait_until(T, || {
        if let Some(Ok(Some(_))) = d.child.as_mut().map(|c| c.try_wait()) {
            return true;
        }
        is_mounted(mnt) && fs::read(mnt.join(".peerfs/version")).is_ok()
    });
    assert!(up, "peerfs did not come up: {}", d.log_text());
    d
}

fn aborted(d: &mut Daemon) {
    use std::os::unix::process::ExitStatusExt;
    let st = d.wait(T);
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{st}: {}", d.log_text());
}

/// Keeps alice's actor in a batch of runs for the wall limit (2 s): submissions
/// meanwhile go through the intake journal. The wait lets the actor take the
/// loop into its batch (it first gives way in its submission's transaction).
fn keep_busy(d: &Daemon) {
    fs::write(
        d.p("alice/inbox/endless.rhai"),
        "let n = 0; loop { n += 1; }",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

fn read_json(d: &Daemon, rel: &str) -> Value {
    let p = d.p(rel);
    // After a start the peer's held scripts are read from the journal as it opens.
    let there = wait_until(T, || p.exists());
    assert!(there, "{} never appeared: {}", p.display(), d.log_text());
    serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()
}

/// Killed after the journal committed a submission and before its peer took
/// it: the next start runs it, once, in order with what was queued before.
#[test]
fn a_crash_between_the_journal_commit_and_the_take_loses_nothing() {
    let (_dir, data, mnt, work) = dirs();
    let env = [("PEERFS_TEST_ABORT_AFTER_JOURNAL", "JOURNAL-CRASH")];
    let mut d = daemon(&data, &mnt, &work, &env);
    d.add_peer("alice");
    d.run_ok("alice", "first.rhai", "set(\"seen\", \"first\"); 1");
    keep_busy(&d);
    // Its close may fail: the daemon aborts before answering it.
    let _ = fs::write(
        d.p("alice/inbox/j.rhai"),
        "// JOURNAL-CRASH\nlet s = get(\"seen\"); set(\"seen\", s + \",j\"); set(\"n\", (get(\"n\") ?? 0) + 1); s",
    );
    aborted(&mut d);
    drop(d);
    let d = daemon(&data, &mnt, &work, &[]);
    let r = read_json(&d, "alice/outbox/j.json");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], "first", "{r}");
    // And again after a clean restart: nothing runs twice.
    let log = {
        let d2 = d;
        d2.signal(libc::SIGTERM);
        let mut d2 = d2;
        let st = d2.wait(T);
        assert!(st.success(), "{st}");
        drop(d2);
        let d3 = daemon(&data, &mnt, &work, &[]);
        let v = d3.run_ok("alice", "after.rhai", "[get(\"seen\"), get(\"n\")]");
        assert_eq!(v, serde_json::json!(["first,j", 1]));
        d3.log_of("alice")
    };
    assert_eq!(log_lines_with(&log, &["run", "j.rhai"]).len(), 1, "{log}");
}

/// Killed after alice took a held submission into her store (committed) and
/// before the journal dropped it: the next start does not take it again.
#[test]
fn a_crash_between_the_take_and_the_journal_forgetting_runs_nothing_twice() {
    let (_dir, data, mnt, work) = dirs();
    let mut d = daemon(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    d.run_ok("alice", "first.rhai", "1");
    d.signal(libc::SIGTERM);
    assert!(d.wait(T).success());
    drop(d);
    let env = [("PEERFS_TEST_ABORT_AFTER_DRAIN", "alice")];
    let mut d = daemon(&data, &mnt, &work, &env);
    keep_busy(&d);
    // The close returns once the journal has it; alice's next turn then aborts.
    let _ = fs::write(
        d.p("alice/inbox/d.rhai"),
        "set(\"n\", (get(\"n\") ?? 0) + 1); get(\"n\")",
    );
    aborted(&mut d);
    drop(d);
    let d = daemon(&data, &mnt, &work, &[]);
    let r = read_json(&d, "alice/outbox/d.json");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 1, "{r}");
    assert_eq!(d.run_ok("alice", "after.rhai", "get(\"n\")"), 1);
    let log = d.log_of("alice");
    assert_eq!(log_lines_with(&log, &["run", "d.rhai"]).len(), 1, "{log}");
    assert_eq!(
        log_lines_with(&log, &["submit", "d.rhai"]).len(),
        1,
        "{log}"
    );
}
