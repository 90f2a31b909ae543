//! Bad input through a real mount gets a clear errno, and another uid cannot
//! touch a peer it does not own.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::*;
use peerfs::fuse::MountOptions;
use serde_json::Value;

#[test]
fn bad_input_gets_a_clear_errno() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");

    // Invalid peer names: EINVAL, and no peer appears.
    for bad in ["a b", ".hidden", "semi;colon", &"x".repeat(65)] {
        expect_errno(
            fs::create_dir(m.p(bad)),
            libc::EINVAL,
            &format!("mkdir {bad:?}"),
        );
    }
    let out = sh(&format!("mkdir {}", q(&m.p("a b"))));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{out:?}"
    );
    assert_eq!(m.names(""), [".peerfs", "alice", "bob"]);
    expect_errno(
        fs::create_dir(m.p("alice")),
        libc::EEXIST,
        "mkdir an existing peer",
    );
    expect_errno(
        fs::create_dir(m.p(".peerfs")),
        libc::EEXIST,
        "mkdir .peerfs",
    );

    // Invalid key and script names (control characters; not UTF-8).
    let bad_names: [&[u8]; 3] = [b"tab\there", b"nl\nhere", b"\xff\xfe"];
    for bad in bad_names {
        let name = std::ffi::OsStr::from_bytes(bad);
        for dir in ["alice/state", "alice/inbox", "alice/modules"] {
            expect_errno(
                fs::write(m.p(dir).join(name), "1"),
                libc::EINVAL,
                &format!("write {dir}/{bad:?}"),
            );
        }
        expect_errno(
            fs::create_dir(m.p("alice/state").join(name)),
            libc::EINVAL,
            &format!("mkdir state/{bad:?}"),
        );
    }
    assert!(m.names("alice/state").is_empty());

    // Read-only files: log, results, .peerfs, peers/*/state.
    fs::write(m.p("bob/state/k"), "v").unwrap();
    fs::write(
        m.p("bob/policy.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    m.run_ok("alice", "r.rhai", "1");
    for ro in [
        "alice/log",
        "alice/outbox/r.json",
        "alice/peers/bob/state/k",
    ] {
        expect_errno(
            OpenOptions::new().write(true).open(m.p(ro)),
            libc::EACCES,
            &format!("open {ro} for writing"),
        );
        expect_errno(
            OpenOptions::new().append(true).open(m.p(ro)),
            libc::EACCES,
            &format!("open {ro} to append"),
        );
        let out = sh(&format!("echo x >> {}", q(&m.p(ro))));
        assert!(!out.status.success(), "echo >> {ro} succeeded");
    }
    expect_errno(
        fs::write(m.p("alice/outbox/new.json"), "{}"),
        libc::EACCES,
        "create a file in outbox",
    );
    expect_errno(
        fs::write(m.p("alice/peers/bob/state/new"), "1"),
        libc::EACCES,
        "create a file in another peer's state view",
    );
    expect_errno(
        fs::write(m.p("alice/extra"), "1"),
        libc::EACCES,
        "create a file in a peer folder",
    );
    expect_errno(fs::remove_file(m.p("alice/log")), libc::EACCES, "rm log");
    assert!(fs::read_to_string(m.p("alice/outbox/r.json"))
        .unwrap()
        .contains("\"status\":\"ok\""));

    // Rename across peers: EXDEV (mv then copies, so coreutils still works).
    fs::write(m.p("alice/state/x"), "1").unwrap();
    expect_errno(
        fs::rename(m.p("alice/state/x"), m.p("bob/state/x")),
        libc::EXDEV,
        "rename across peers",
    );
    expect_errno(
        fs::rename(m.p("alice/state/x"), m.p("alice/peers/bob/state/x")),
        libc::EACCES,
        "rename into the read-only view of another peer",
    );
    assert_eq!(fs::read_to_string(m.p("alice/state/x")).unwrap(), "1");
    expect_errno(
        fs::metadata(m.p("bob/state/x")),
        libc::ENOENT,
        "bob/state/x",
    );
    // mv falls back to copy-and-remove on EXDEV: alice's owner moves her key to bob.
    sh_ok(&format!(
        "mv {} {}",
        q(&m.p("alice/state/x")),
        q(&m.p("bob/state/moved"))
    ));
    assert_eq!(fs::read_to_string(m.p("bob/state/moved")).unwrap(), "1");
    expect_errno(
        fs::metadata(m.p("alice/state/x")),
        libc::ENOENT,
        "moved away",
    );
    fs::write(m.p("alice/state/x"), "1").unwrap();
    // Moving a key out of state (to the inbox) is refused.
    expect_errno(
        fs::rename(m.p("alice/state/x"), m.p("alice/inbox/x.rhai")),
        libc::EACCES,
        "rename state -> inbox",
    );

    // rmdir of a non-empty folder, and of the fixed folders.
    fs::create_dir(m.p("alice/state/d")).unwrap();
    fs::write(m.p("alice/state/d/k"), "1").unwrap();
    expect_errno(
        fs::remove_dir(m.p("alice/state/d")),
        libc::ENOTEMPTY,
        "rmdir state/d",
    );
    expect_errno(
        fs::remove_dir(m.p("alice/inbox")),
        libc::EACCES,
        "rmdir inbox",
    );
    // A queued-or-finished script cannot be withdrawn from the inbox by rm of a
    // name that is not there.
    expect_errno(
        fs::remove_file(m.p("alice/inbox/none.rhai")),
        libc::ENOENT,
        "rm a missing inbox file",
    );
    // chmod in state/ is kept and shown; of the daemon's own files it is accepted
    // and not kept (vfat's `quiet`): they keep the daemon's mode, and `ls -l`
    // shows it.
    fs::set_permissions(m.p("alice/state/x"), fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(
        fs::metadata(m.p("alice/state/x")).unwrap().mode() & 0o7777,
        0o750
    );
    fs::set_permissions(m.p("alice/policy.cedar"), fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(
        fs::metadata(m.p("alice/policy.cedar")).unwrap().mode() & 0o7777,
        0o644
    );
}

/// `runuser -u nobody -- ARGS`: (success, stderr).
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser (these tests run as root)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn another_uid_cannot_touch_a_peer_it_does_not_own() {
    assert_eq!(
        uid(),
        0,
        "this test switches users with runuser: run it as root"
    );
    let m = Mounted::with(
        |_| {},
        MountOptions {
            allow_other: true,
            ..MountOptions::default()
        },
    );
    // The temp dir is 0700: let nobody reach the mount point.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    m.add_peer("alice");
    fs::write(m.p("alice/state/x"), "alice's").unwrap();
    let a = m.p("alice").display().to_string();
    let ax = m.p("alice/state/x").display().to_string();
    let root = m.mnt.display().to_string();

    // The mount itself is open to nobody (allow_other): the refusals below come
    // from alice's folder being 0700, not from FUSE turning other users away.
    let (ok, err) = as_nobody(&["ls", &root]);
    assert!(ok, "nobody cannot list the mount root: {err}");
    let (ok, err) = as_nobody(&["cat", &format!("{root}/.peerfs/version")]);
    assert!(ok, "nobody cannot read .peerfs/version: {err}");

    for args in [
        vec!["ls", a.as_str()],
        vec!["cat", ax.as_str()],
        vec!["sh", "-c", &format!("echo 1 > {a}/state/y")],
        vec!["sh", "-c", &format!("echo 1 > {a}/inbox/evil.rhai")],
        vec!["rm", ax.as_str()],
        vec!["stat", ax.as_str()],
    ] {
        let (ok, err) = as_nobody(&args);
        assert!(!ok, "nobody could run {args:?}");
        assert!(
            err.contains("Permission denied"),
            "{args:?}: expected permission denied, got {err:?}"
        );
    }
    assert_eq!(fs::read_to_string(m.p("alice/state/x")).unwrap(), "alice's");
    expect_errno(
        fs::metadata(m.p("alice/state/y")),
        libc::ENOENT,
        "nobody's write",
    );
    assert!(m.names("alice/outbox").is_empty());

    // A peer that nobody owns is nobody's to use, and acting through it is acting
    // as it: at alice, under alice's policy (none: denied).
    let (nuid, ngid) = (65534, 65534);
    m.core.create_peer("nob", nuid, ngid).unwrap();
    let md = fs::metadata(m.p("nob")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (nuid, 0o700));
    let nob = m.p("nob").display().to_string();
    let (ok, err) = as_nobody(&[
        "sh",
        "-c",
        &format!(
            "echo 'set(\"k\", 5); get(\"k\")' > {nob}/inbox/mine.rhai && jq .value {nob}/outbox/mine.json"
        ),
    ]);
    assert!(ok, "nobody cannot use its own peer: {err}");
    assert_eq!(fs::read_to_string(m.p("nob/state/k")).unwrap(), "5\n");
    let (ok, err) = as_nobody(&[
        "sh",
        "-c",
        &format!(
            "echo 'get(\"x\")' > {nob}/peers/alice/inbox/peek.rhai && jq -r .status {nob}/peers/alice/outbox/peek.json"
        ),
    ]);
    assert!(ok, "{err}");
    let r: Value =
        serde_json::from_slice(&fs::read(m.p("nob/peers/alice/outbox/peek.json")).unwrap())
            .unwrap();
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["caller"], "nob");
}
