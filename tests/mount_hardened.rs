//! What one user of the mount must never do to the others, and the POSIX semantics
//! tools rely on: sizes checked before anything is allocated, truncation of
//! validated files staged in the handle, metadata that ignores the size of values.
//! Each test mounts for real and drives the mount with coreutils and std::fs.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use common::*;

const POLICY: &str = "permit(principal == Peer::\"alice\", action == Action::\"run\", resource);\n";

/// The mount still answers for every peer: a listing, a read and a run.
#[track_caller]
fn still_serves(m: &Mounted) {
    assert!(m.names("alice/state").contains(&"x".to_string()));
    assert_eq!(fs::read(m.p("bob/state/k")).unwrap(), b"kept");
    assert_eq!(m.run_ok("bob", "ping.rhai", "1 + 1"), 2);
}

fn two_peers() -> Mounted {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    fs::write(m.p("alice/state/x"), b"small").unwrap();
    fs::write(m.p("bob/state/k"), b"kept").unwrap();
    m
}

#[test]
fn truncate_far_past_the_cap_is_efbig_and_the_mount_serves_on() {
    let m = two_peers();
    let huge = "999999999999999";
    let out = sh(&format!("truncate -s {huge} {}", q(&m.p("alice/state/x"))));
    assert!(
        !out.status.success(),
        "truncate of a state file past the cap succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("File too large"), "truncate: {err}");
    assert_eq!(
        fs::read(m.p("alice/state/x")).unwrap(),
        b"small",
        "value untouched"
    );
    still_serves(&m);

    // A staging file of the inbox (in memory until renamed) and of modules/.
    for staging in ["alice/inbox/.s", "alice/modules/.draft"] {
        fs::write(m.p(staging), b"let a = 1;").unwrap();
        let out = sh(&format!("truncate -s {huge} {}", q(&m.p(staging))));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("File too large"),
            "truncate {staging}: {} {err}",
            out.status
        );
        assert_eq!(fs::read(m.p(staging)).unwrap(), b"let a = 1;");
    }
    still_serves(&m);
}

#[test]
fn ftruncate_of_an_open_handle_past_the_cap_fails_at_the_call() {
    let m = two_peers();
    let f = OpenOptions::new()
        .write(true)
        .open(m.p("alice/state/x"))
        .unwrap();
    expect_errno(f.set_len(256 << 20), libc::EFBIG, "ftruncate 256 MiB");
    expect_errno(
        f.set_len(peerfs::vfs::MAX_STATE_FILE + 1),
        libc::EFBIG,
        "ftruncate one byte past the cap",
    );
    f.set_len(3).expect("ftruncate within the cap");
    close(f).expect("close commits the truncated value");
    assert_eq!(fs::read(m.p("alice/state/x")).unwrap(), b"sma");

    // A write whose end is past the cap fails at the write, and nothing is stored.
    let f = OpenOptions::new()
        .write(true)
        .open(m.p("alice/state/x"))
        .unwrap();
    let r = unsafe {
        libc::pwrite(
            f.as_raw_fd(),
            b"z".as_ptr().cast(),
            1,
            peerfs::vfs::MAX_STATE_FILE as libc::off_t,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(errno(&std::io::Error::last_os_error()), libc::EFBIG);
    close(f).unwrap();
    assert_eq!(fs::read(m.p("alice/state/x")).unwrap(), b"sma");
    still_serves(&m);
}

#[test]
fn a_refused_policy_written_with_a_shell_redirection_leaves_the_old_one_in_force() {
    let m = two_peers();
    let policy = m.p("bob/policy.cedar");
    fs::write(&policy, POLICY).unwrap();
    // `>` opens with O_TRUNC, the shell's dup2 flushes the empty handle, then echo
    // writes the bad text and the close refuses it (the shell's restoring dup2
    // drops that error, so the exit status says nothing: the contents do).
    sh(&format!("echo 'permit(oops' > {}", q(&policy)));
    assert_eq!(
        fs::read_to_string(&policy).unwrap(),
        POLICY,
        "old policy kept"
    );
    let log = m.log_of("bob");
    assert!(
        !log.contains("(0 bytes)"),
        "an empty policy was applied on the way: {log}"
    );
    // The policy in force is still the old one: alice may run at bob.
    let r = m.run_in("alice/peers/bob", "hi.rhai", "40 + 2");
    assert_eq!(r["status"], "ok", "{r}");

    // The same for groups and for a module, and for ftruncate-then-write editors.
    fs::write(m.p("bob/groups"), "friends: alice\n").unwrap();
    sh(&format!("echo 'no colon here' > {}", q(&m.p("bob/groups"))));
    assert_eq!(
        fs::read_to_string(m.p("bob/groups")).unwrap(),
        "friends: alice\n"
    );

    let mut f = OpenOptions::new().write(true).open(&policy).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"forbid(").unwrap();
    expect_errno(
        close(f),
        libc::EINVAL,
        "close of a truncated, badly rewritten policy",
    );
    assert_eq!(fs::read_to_string(&policy).unwrap(), POLICY);

    // cp over it applies the new text; `: >` empties it (a valid, empty policy).
    let newer = m.local("p2.cedar", "forbid(principal, action, resource);\n");
    sh_ok(&format!("cp {} {}", q(&newer), q(&policy)));
    assert_eq!(
        fs::read_to_string(&policy).unwrap(),
        "forbid(principal, action, resource);\n"
    );
    sh_ok(&format!(": > {}", q(&policy)));
    assert!(
        wait_until(std::time::Duration::from_secs(5), || fs::metadata(&policy)
            .map(|md| md.size() == 0)
            .unwrap_or(false)),
        "`: > policy.cedar` did not empty the policy"
    );
}
