//! What an operator runs around a daemon: a second daemon or a `peer` command on
//! a served folder, exit statuses, signals, start-up checks, completions, the man
//! page. Real mounts and real processes; each daemon is stopped by its pid.

mod common;
mod spool_support;

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use spool_support::SpoolDaemon;

const T: Duration = Duration::from_secs(30);

fn peerfs(args: &[&OsStr]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PEERFS_MOUNT")
        .env_remove("PEERFS_SPOOL")
        .env_remove("PEERFS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Expects `o` to be the refusal of a busy folder: exit 75, naming `pid`.
#[track_caller]
fn refused_busy(o: &Output, pid: i32, what: &str) {
    let err = text(o);
    assert_eq!(o.status.code(), Some(75), "{what}: {err}");
    assert!(err.contains(&format!("pid {pid}")), "{what}: {err}");
}

#[test]
fn a_served_data_folder_refuses_a_second_daemon_and_the_peer_commands() {
    let (dir, data, mnt, work) = dirs();
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    d.run_ok("alice", "a.rhai", "set(\"x\", 1); 1");

    let m2 = dir.path().join("m2");
    std::fs::create_dir(&m2).unwrap();
    let o = peerfs(&[
        "mount".as_ref(),
        m2.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "a second mount");
    assert!(!is_mounted(&m2), "the second mount was made");

    let sp = dir.path().join("sp2");
    let o = peerfs(&[
        "serve".as_ref(),
        "--spool".as_ref(),
        sp.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "serve on the same data");

    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "dave".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "peer create");
    assert!(!data.join("peers/dave.sqlite").exists());
    let o = peerfs(&[
        "peer".as_ref(),
        "remove".as_ref(),
        "alice".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "peer remove");
    // alice is still whole: served, and her store where it was.
    assert_eq!(d.run_ok("alice", "b.rhai", "get(\"x\") + 1"), 2);
    assert!(data.join("peers/alice.sqlite").exists());

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(T).code(), Some(0));
    // Once the daemon is gone, the lock went with it.
    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "dave".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = peerfs(&[
        "peer".as_ref(),
        "list".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(list.contains("alice") && list.contains("dave"), "{list}");
}

#[test]
fn a_served_spool_folder_refuses_a_second_daemon_on_other_data() {
    let t = tempfile::tempdir().unwrap();
    let spool = t.path().join("spool");
    let d = SpoolDaemon::start(&t.path().join("d1"), &spool, t.path());
    let other = t.path().join("d2");
    let o = peerfs(&[
        "serve".as_ref(),
        "--spool".as_ref(),
        spool.as_os_str(),
        "--data".as_ref(),
        other.as_os_str(),
    ]);
    refused_busy(&o, d.d.pid(), "a second serve on the spool");
    // Refused before its data folder was touched.
    assert!(
        !other.exists(),
        "the refused daemon made {}",
        other.display()
    );
}

#[test]
fn a_second_demo_on_the_same_folder_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let mnt = dir.join("mnt");
    let mut d = Daemon::spawn(&["demo".as_ref(), dir.as_os_str()], &mnt, t.path());
    assert!(
        wait_until(T, || std::fs::read(mnt.join(".peerfs/version")).is_ok()),
        "the demo did not come up: {}",
        d.log_text()
    );
    let o = peerfs(&["demo".as_ref(), dir.as_os_str()]);
    refused_busy(&o, d.pid(), "a second demo");
    // The first demo still serves.
    assert_eq!(d.run_ok("alice", "a.rhai", "40 + 2"), 42);
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(T).code(), Some(0));
    assert!(!is_mounted(&mnt));
}

#[test]
fn usage_errors_exit_64_everywhere_and_help_and_version_exit_0() {
    let t = tempfile::tempdir().unwrap();
    let s = |a: &str| a.to_string();
    // Each is refused by the argument parser (clap's own status would be 2,
    // which is "denied" here).
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec![s("--no-such-flag")],
        vec![s("serve")],
        vec![s("top")],
        vec![s("mount")],
        vec![
            s("run"),
            s("alice"),
            s("-"),
            s("--mount"),
            s("m"),
            s("--spool"),
            s("s"),
        ],
        vec![s("peer"), s("create"), s("carol")],
        vec![
            s("mount"),
            t.path().display().to_string(),
            s("--workers"),
            s("many"),
        ],
    ];
    for args in &cases {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = peerfs(&a);
        assert_eq!(o.status.code(), Some(64), "peerfs {args:?}: {}", text(&o));
        assert!(!text(&o).is_empty(), "peerfs {args:?} said nothing");
    }
    let o = peerfs(&["--help".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for line in [
        "64  usage",
        "75  the data or spool folder",
        "2   run, policy explain: denied",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    let o = peerfs(&["--version".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("peerfs "));
    let o = peerfs(&["run".as_ref(), "--help".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn policy_explain_and_check_errors_are_not_a_scripts_error() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let d = data.as_os_str();
    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "alice".as_ref(),
        "--data".as_ref(),
        d,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let explain = |args: &[&str], data: &OsStr| {
        let mut a: Vec<&OsStr> = vec![
            "policy".as_ref(),
            "explain".as_ref(),
            "--data".as_ref(),
            data,
        ];
        a.extend(args.iter().map(OsStr::new));
        peerfs(&a)
    };
    // Denied by the default policy: 2, with the reason on stdout.
    let o = explain(&["alice", "bob", "run", "x.rhai"], d);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!o.stdout.is_empty());
    // Errors of the explaining itself: usage, never 1 (a script's error).
    let o = explain(&["alice", "bob", "fly"], d);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("fly"), "{}", text(&o));
    let o = explain(&["carol", "bob", "run"], d);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("carol"), "{}", text(&o));
    let missing = t.path().join("nothing-here");
    let o = explain(&["alice", "bob", "run"], missing.as_os_str());
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(!missing.exists(), "explain made {}", missing.display());

    // policy check: a refused file is 1, an unreadable one 74.
    let bad = t.path().join("bad.cedar");
    std::fs::write(&bad, "permit(principal, action, resource").unwrap();
    let o = peerfs(&["policy".as_ref(), "check".as_ref(), bad.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = peerfs(&["policy".as_ref(), "check".as_ref(), missing.as_os_str()]);
    assert_eq!(o.status.code(), Some(74), "{}", text(&o));
}
