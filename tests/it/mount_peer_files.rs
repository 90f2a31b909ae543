//! A peer's own files through a real mount: `log` (tail -f), `modules/` and
//! `policy.cedar`, each validated at close and applied to the next run.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn log_grows_and_tail_f_follows_it() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.run_ok("alice", "first.rhai", "1");
    let log1 = m.log_of("alice");
    assert!(
        !log_lines_with(&log1, &["run", "first.rhai"]).is_empty(),
        "{log1}"
    );
    let size1 = fs::metadata(m.p("alice/log")).unwrap().len();
    assert_eq!(size1, log1.len() as u64, "stat size of log = its bytes");

    let mut tail = Command::new("tail")
        .arg("-n0")
        .arg("-f")
        .arg(m.p("alice/log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _guard = Kill(tail.id() as i32);
    let mut out = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut acc = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            acc.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(i) = acc.find('\n') {
                let line: String = acc.drain(..=i).collect();
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    });
    // tail must have opened the file (and found its end) before the log grows.
    let fd_dir = format!("/proc/{}/fd", tail.id());
    let log_path = m.p("alice/log");
    let opened = wait_until(Duration::from_secs(10), || {
        fs::read_dir(&fd_dir)
            .map(|d| {
                d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                    .any(|l| l == log_path)
            })
            .unwrap_or(false)
    });
    assert!(opened, "tail did not open the log within 10 s");
    std::thread::sleep(Duration::from_millis(200));
    m.run_ok("alice", "second.rhai", "log(\"hello from second\"); 2");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = Vec::new();
    let mut got_run = false;
    let mut got_log = false;
    while !(got_run && got_log) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            got_run |= line.contains(" run ") && line.contains("second.rhai");
            got_log |= line.contains("hello from second");
            seen.push(line);
        }
    }
    assert!(
        got_run && got_log,
        "tail -f did not show the new lines within 8 s: {seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("first.rhai")),
        "tail -n0 showed old lines: {seen:?}"
    );
    let _ = tail.kill();
    let _ = tail.wait();
    // The log only grows: the old text is a prefix of the new.
    let log2 = m.log_of("alice");
    assert!(log2.starts_with(&log1) && log2.len() > log1.len());
}

#[test]
fn modules_are_imported_and_edits_apply_to_the_next_run() {
    let m = Mounted::new();
    m.add_peer("alice");
    let g = m.local("greeting.rhai", "fn hello(x) { \"hello \" + x }\n");
    sh_ok(&format!("cp {} {}", q(&g), q(&m.p("alice/modules/"))));
    assert_eq!(m.names("alice/modules"), ["greeting.rhai"]);
    assert_eq!(
        fs::read(m.p("alice/modules/greeting.rhai")).unwrap(),
        fs::read(&g).unwrap()
    );
    let script = "import \"greeting\" as g; g::hello(\"x\")";
    assert_eq!(m.run_ok("alice", "use.rhai", script), "hello x");
    // Edit in place (redirection): the next run sees the new module.
    sh_ok(&format!(
        "echo 'fn hello(x) {{ \"hi \" + x }}' > {}",
        q(&m.p("alice/modules/greeting.rhai"))
    ));
    assert_eq!(m.run_ok("alice", "use.rhai", script), "hi x");
    // An editor's save: write a staging name, rename over the module.
    sh_ok(&format!(
        "cd {} && printf 'fn hello(x) {{ \"hey \" + x }}' > .greeting.rhai.swp && mv .greeting.rhai.swp greeting.rhai",
        q(&m.p("alice/modules"))
    ));
    assert_eq!(m.names("alice/modules"), ["greeting.rhai"]);
    assert_eq!(m.run_ok("alice", "use.rhai", script), "hey x");
    // The shared library is there too, and a peer's module overrides it.
    assert_eq!(
        m.run_ok(
            "alice",
            "lib.rhai",
            "import \"lib/counter\" as c; c::incr(\"v\"); c::incr(\"v\")"
        ),
        2
    );
    // rm removes it: the import now fails with a script error.
    sh_ok(&format!("rm {}", q(&m.p("alice/modules/greeting.rhai"))));
    let r = m.run("alice", "use.rhai", script);
    assert_eq!(r["status"], "error", "{r}");
    assert!(m.names("alice/modules").is_empty());
}

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn policy_cedar_is_validated_at_close_and_applied() {
    let m = Mounted::new();
    for p in ["alice", "bob", "carol"] {
        m.add_peer(p);
    }
    let bob_policy = m.p("bob/policy.cedar");
    let demo = Path::new(REPO).join("policies/demo-bob.cedar");
    sh_ok(&format!("cp {} {}", q(&demo), q(&bob_policy)));
    assert_eq!(fs::read(&bob_policy).unwrap(), fs::read(&demo).unwrap());

    // An invalid policy: cp fails (EINVAL at close), the old text stays, the
    // reason is in the log.
    let bad = m.local("bad.cedar", "permit(principal == Peer::\"alice\", action, ");
    let out = sh(&format!("cp {} {}", q(&bad), q(&bob_policy)));
    assert!(!out.status.success(), "cp of an invalid policy succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{out:?}"
    );
    {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&bob_policy)
            .unwrap();
        f.write_all(b"this is not cedar").unwrap();
        let r = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) };
        assert_eq!(r, -1, "close of an invalid policy succeeded");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
    assert_eq!(
        sh_ok(&format!("cat {}", q(&bob_policy))).as_bytes(),
        &fs::read(&demo).unwrap()[..]
    );
    let log = m.log_of("bob");
    assert!(
        log.lines().any(|l| l.contains("policy refused")),
        "the reason is not in bob's log:\n{log}"
    );

    // Bob's policy lets alice run, read all, write shared/*.
    fs::write(m.p("bob/state/private"), "bob's secret").unwrap();
    fs::create_dir(m.p("bob/state/shared")).unwrap();
    fs::write(m.p("bob/state/shared/n"), "1").unwrap();
    let x = m.local(
        "x.rhai",
        "set(\"shared/n\", get(\"shared/n\") + 1); get(\"shared/n\")",
    );
    let out = sh_ok(&format!(
        "cp {} {} && jq -c '[.status, .caller, .target, .value]' {}",
        q(&x),
        q(&m.p("alice/peers/bob/inbox/")),
        q(&m.p("alice/peers/bob/outbox/x.json"))
    ));
    assert_eq!(out.trim(), r#"["ok","alice","bob",2]"#);
    assert_eq!(
        fs::read_to_string(m.p("bob/state/shared/n")).unwrap(),
        "2\n"
    );
    // The result is alice's, not bob's.
    assert!(m.names("bob/outbox").is_empty());
    assert_eq!(m.names("alice/peers/bob/outbox"), ["x.json"]);
    assert!(m.names("bob/peers/alice/outbox").is_empty());
    // The result of a script alice's own script sent to bob shows beside it.
    let r = m.run(
        "alice",
        "fan.rhai",
        "send(\"bob\", \"get(`shared/n`) * 10\"); 1",
    );
    assert_eq!(r["status"], "ok", "{r}");
    let sent = sh_ok(&format!(
        "jq -c '[.status, .caller, .value]' {}",
        q(&m.p("alice/peers/bob/outbox/fan-1.json"))
    ));
    assert_eq!(sent.trim(), r#"["ok","alice",20]"#);
    assert_eq!(m.names("alice/peers/bob/outbox"), ["fan-1.json", "x.json"]);
    let size = fs::metadata(m.p("alice/peers/bob/outbox/x.json"))
        .unwrap()
        .len();
    assert_eq!(
        size,
        fs::read(m.p("alice/peers/bob/outbox/x.json"))
            .unwrap()
            .len() as u64
    );
    // rm discards either kind; bob's view of alice is untouched.
    sh_ok(&format!(
        "rm {} {}",
        q(&m.p("alice/peers/bob/outbox/x.json")),
        q(&m.p("alice/peers/bob/outbox/fan-1.json"))
    ));
    assert!(m.names("alice/peers/bob/outbox").is_empty());
    expect_errno(
        fs::read(m.p("alice/peers/bob/outbox/x.json")),
        libc::ENOENT,
        "reading a discarded result",
    );

    // Writing outside shared/* is denied and leaves no trace in bob's state.
    let before = m.names("bob/state");
    let r = m.run_in(
        "alice/peers/bob",
        "w.rhai",
        "set(\"shared/n\", 100); set(\"private\", \"pwned\"); 1",
    );
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["caller"], "alice");
    assert!(r["error"].as_str().unwrap().contains("write"), "{r}");
    assert_eq!(m.names("bob/state"), before);
    assert_eq!(
        fs::read_to_string(m.p("bob/state/private")).unwrap(),
        "bob's secret"
    );
    assert_eq!(
        fs::read_to_string(m.p("bob/state/shared/n")).unwrap(),
        "2\n"
    );
    let blog = m.log_of("bob");
    assert!(
        blog.lines()
            .any(|l| l.contains("w.rhai") && l.contains("denied")),
        "the denial is not in bob's log:\n{blog}"
    );

    // peers/bob/state shows what bob's policy lets alice read: everything here.
    let view = sh_ok(&format!(
        "cd {} && find . -type f | sort",
        q(&m.p("alice/peers/bob/state"))
    ));
    assert_eq!(
        view.lines().collect::<Vec<_>>(),
        ["./private", "./shared/n"]
    );
    assert_eq!(
        fs::read_to_string(m.p("alice/peers/bob/state/private")).unwrap(),
        "bob's secret"
    );
    // A narrower policy: only shared/* is readable, so only it is listed.
    let narrow = Path::new(REPO).join("policies/shared-folder.cedar");
    sh_ok(&format!("cp {} {}", q(&narrow), q(&bob_policy)));
    let view = sh_ok(&format!(
        "cd {} && find . | sort",
        q(&m.p("alice/peers/bob/state"))
    ));
    assert_eq!(
        view.lines().collect::<Vec<_>>(),
        [".", "./shared", "./shared/n"]
    );
    expect_errno(
        fs::read(m.p("alice/peers/bob/state/private")),
        libc::ENOENT,
        "reading a key alice may not read",
    );
    // carol sees none of bob's state, and bob's policy does not let her run.
    assert!(m.names("carol/peers/bob/state").is_empty());
    let r = m.run_in("carol/peers/bob", "c.rhai", "1");
    assert_eq!(r["status"], "denied", "{r}");

    // A peer with no policy denies everything to others.
    assert_eq!(fs::read(m.p("carol/policy.cedar")).unwrap(), b"");
    let r = m.run_in("alice/peers/carol", "hello.rhai", "1");
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["target"], "carol");
    assert!(m.names("alice/peers/carol/state").is_empty());
}

/// Without a lattice, a drop for a peer this daemon does not serve is `ENOENT` at
/// once, with the reason in the daemon's log: never a silent loss.
#[test]
fn a_drop_for_a_peer_served_nowhere_is_enoent_with_the_reason_logged() {
    let (_d, data, mnt, work) = dirs();
    let dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    let src = dm.local("x.rhai", "1");
    let to = dm.p("alice/peers/nobody/inbox/x.rhai");
    let e = fs::copy(&src, &to).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    assert!(!dm.p("alice/peers/nobody").exists());
    let logged = wait_until(Duration::from_secs(5), || {
        dm.log_text()
            .contains("no peer named \"nobody\" is served here, and this daemon is in no lattice")
    });
    assert!(logged, "no reason in the log: {}", dm.log_text());
    // Logged once per name, not once per lookup.
    let _ = fs::copy(&src, &to);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(dm.log_text().matches("peers/nobody:").count(), 1);
    // The mount serves on.
    assert_eq!(dm.run_ok("alice", "ok.rhai", "40 + 2"), 42);
}
