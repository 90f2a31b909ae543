//! The daemon's life through a real mount: killed mid-write, SIGTERM, restart.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn a_daemon_killed_mid_write_runs_no_half_script_and_loses_no_acked_one() {
    let (_dir, data, mnt, work) = dirs();
    let limits = ["--max-operations", "500000000", "--max-wall-ms", "30000"];
    let mut d = Daemon::start(&data, &mnt, &work, &limits);
    d.add_peer("alice");
    // Keep alice busy so that the acknowledged scripts are still queued at the kill.
    let n = busy_loops(&d, "alice", 1.5);
    let busy =
        format!("let i = 0; while i < {n} {{ i += 1 }} set(\"busy\", (get(\"busy\") ?? 0) + 1); i");
    fs::write(d.p("alice/inbox/busy1.rhai"), &busy).unwrap();
    // While busy1 runs, changes to alice wait (her actor is serial); these two are
    // applied together when it ends, so acked.rhai is queued behind busy2 when the
    // daemon is killed. Both are acknowledged: close() returned success.
    let t2 = {
        let (p, busy) = (d.p("alice/inbox/busy2.rhai"), busy.clone());
        std::thread::spawn(move || fs::write(p, busy))
    };
    std::thread::sleep(Duration::from_millis(150));
    let acked = "set(\"acked\", (get(\"acked\") ?? 0) + 1); get(\"acked\")";
    fs::write(d.p("alice/inbox/acked.rhai"), acked).unwrap();
    t2.join().unwrap().unwrap();
    let inbox = d.names("alice/inbox");
    assert!(
        inbox.contains(&"acked.rhai".to_string()),
        "acked.rhai should still be queued behind busy2: {inbox:?}"
    );

    // Half a script, left open.
    let mut half = File::create(d.p("alice/inbox/half.rhai")).unwrap();
    half.write_all(b"set(\"half\", 1); let s = \"never fin")
        .unwrap();
    d.kill9();
    // The kernel lost its daemon: the open file now fails.
    let closed = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(half)) };
    let _ = closed; // ENOTCONN or 0: the half script is lost either way
    assert!(is_mounted(&mnt), "a killed daemon leaves a stale mount");
    // statfs always reaches the (dead) daemon; stat may be answered from the
    // kernel's attribute cache until its TTL (1 s) runs out.
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTCONN),
        "statfs of a stale mount"
    );
    // `peerfs mount` detects the stale mount with stat(2): wait out the attribute
    // TTL here (force_restart_right_after_a_kill covers the immediate restart).
    std::thread::sleep(Duration::from_millis(1200));
    expect_errno(fs::metadata(&mnt), libc::ENOTCONN, "stat of a stale mount");

    // Without --force the restart refuses the stale mount, with a clear message.
    let out = Command::new(BIN)
        .args(["mount"])
        .arg(&mnt)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("stale") && msg.contains("--force"), "{msg}");

    let mut args = limits.to_vec();
    args.push("--force");
    let d2 = Daemon::start(&data, &mnt, &work, &args);
    // The queue survived the kill: busy2 runs again (its run never committed), then
    // acked, once.
    let r: Value =
        serde_json::from_slice(&fs::read(d2.p("alice/outbox/acked.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 1);
    let r: Value =
        serde_json::from_slice(&fs::read(d2.p("alice/outbox/busy2.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        fs::read_to_string(d2.p("alice/state/acked")).unwrap(),
        "1\n"
    );
    assert_eq!(fs::read_to_string(d2.p("alice/state/busy")).unwrap(), "2\n");
    // A later run sees the same: nothing ran twice, the half script never ran.
    d2.run_ok("alice", "after.rhai", "1");
    assert_eq!(
        fs::read_to_string(d2.p("alice/state/acked")).unwrap(),
        "1\n"
    );
    expect_errno(
        fs::metadata(d2.p("alice/state/half")),
        libc::ENOENT,
        "state/half",
    );
    expect_errno(
        fs::metadata(d2.p("alice/outbox/half.json")),
        libc::ENOENT,
        "outbox/half.json",
    );
    let log = d2.log_of("alice");
    assert!(!log.contains("half.rhai"), "{log}");
    assert_eq!(
        log_lines_with(&log, &["run", "acked.rhai"]).len(),
        1,
        "{log}"
    );
    assert_eq!(
        log_lines_with(&log, &["submit", "acked.rhai"]).len(),
        1,
        "{log}"
    );
    assert_eq!(
        log_lines_with(&log, &["run", "busy2.rhai"]).len(),
        1,
        "{log}"
    );
    let ran: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split(' ').collect();
            (t.get(1) == Some(&"run")).then(|| t[3])
        })
        .collect();
    assert_eq!(
        ran,
        [
            "calibrate.rhai",
            "busy1.rhai",
            "busy2.rhai",
            "acked.rhai",
            "after.rhai"
        ]
    );
    assert!(d2.names("alice/inbox").is_empty());
}

#[test]
fn sigterm_unmounts_exits_0_and_a_restart_shows_the_same_state() {
    let (_dir, data, mnt, work) = dirs();
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    fs::write(d.p("alice/state/x"), "5\n").unwrap();
    fs::create_dir(d.p("alice/state/a")).unwrap();
    fs::write(d.p("alice/state/a/b"), "{\"k\":1}").unwrap();
    fs::write(d.p("alice/modules/m.rhai"), "fn f() { 9 }").unwrap();
    fs::write(
        d.p("alice/policy.cedar"),
        "permit(principal, action == Action::\"run\", resource);",
    )
    .unwrap();
    d.run_ok("alice", "r.rhai", "set(\"y\", [1, 2]); 1");
    // Bad names: EINVAL, and the reason in the daemon's log.
    expect_errno(fs::create_dir(d.p("a b")), libc::EINVAL, "mkdir 'a b'");
    expect_errno(
        fs::write(d.p("alice/state/tab\tkey"), "1"),
        libc::EINVAL,
        "a key with a tab",
    );
    let before: Vec<(String, Vec<u8>)> = ["x", "a/b", "y"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                fs::read(d.p(&format!("alice/state/{k}"))).unwrap(),
            )
        })
        .collect();
    let log_before = d.log_of("alice");

    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st}");
    assert!(!is_mounted(&mnt), "the mount is still there after SIGTERM");
    let daemon_log = d.log_text();
    assert!(
        daemon_log.contains("a b") && daemon_log.contains("peer name"),
        "the daemon log does not name the bad peer name:\n{daemon_log}"
    );
    assert!(daemon_log.contains("tab"), "{daemon_log}");

    let d2 = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(d2.names(""), [".peerfs", "alice"]);
    for (k, v) in &before {
        assert_eq!(
            &fs::read(d2.p(&format!("alice/state/{k}"))).unwrap(),
            v,
            "{k}"
        );
    }
    assert_eq!(d2.names("alice/state"), ["a", "x", "y"]);
    assert_eq!(
        fs::read_to_string(d2.p("alice/modules/m.rhai")).unwrap(),
        "fn f() { 9 }"
    );
    assert_eq!(
        fs::read_to_string(d2.p("alice/policy.cedar")).unwrap(),
        "permit(principal, action == Action::\"run\", resource);"
    );
    assert_eq!(d2.names("alice/outbox"), ["r.json"]);
    assert!(d2.log_of("alice").starts_with(&log_before));
    let md = fs::metadata(d2.p("alice")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (uid(), 0o700));
    assert_eq!(
        d2.run_ok("alice", "m.rhai", "import \"m\" as m; m::f() + get(\"x\")"),
        14
    );
}

#[test]
fn force_restart_right_after_a_kill() {
    let (_dir, data, mnt, work) = dirs();
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    fs::write(d.p("alice/state/x"), "1").unwrap();
    d.kill9();
    // At once, as a supervisor restarts it (within the kernel's attribute TTL).
    let d2 = Daemon::start(&data, &mnt, &work, &["--force"]);
    assert_eq!(fs::read_to_string(d2.p("alice/state/x")).unwrap(), "1");
}
