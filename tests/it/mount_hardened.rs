//! What one user of the mount must never do to the others, and the POSIX semantics
//! tools rely on: sizes checked before anything is allocated, truncation of
//! validated files staged in the handle, metadata that ignores the size of values.
//! Each test mounts for real and drives the mount with coreutils and std::fs.

use crate::common;

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

#[test]
fn rsync_a_copies_a_tree_once_and_a_second_run_copies_nothing() {
    let m = two_peers();
    let src = m.work.join("src");
    fs::create_dir_all(src.join("sub/deep")).unwrap();
    for (f, text) in [("a", "one\n"), ("sub/b", "{\"n\":2}\n"), ("sub/deep/c", "")] {
        fs::write(src.join(f), text).unwrap();
    }
    sh_ok(&format!(
        "chmod 755 {s} {s}/sub {s}/sub/deep && chmod 644 {s}/a {s}/sub/b {s}/sub/deep/c && \
         touch -d '2020-01-02 03:04:05' {s}/a {s}/sub/b {s}/sub/deep/c {s}/sub/deep {s}/sub {s}",
        s = q(&src)
    ));
    let dst = m.p("alice/state/dst");
    sh_ok(&format!("rsync -a {}/ {}/", q(&src), q(&dst)));
    sh_ok(&format!("diff -r {} {}", q(&src), q(&dst)));
    let md = fs::metadata(dst.join("sub/b")).unwrap();
    assert_eq!(
        md.mtime(),
        fs::metadata(src.join("sub/b")).unwrap().mtime(),
        "the time rsync set is kept"
    );
    let again = sh_ok(&format!(
        "rsync -a --itemize-changes {}/ {}/",
        q(&src),
        q(&dst)
    ));
    assert_eq!(again, "", "a second rsync found changes");

    // touch -d and install -m.
    sh_ok(&format!(
        "touch -d '2001-02-03 04:05:06' {}",
        q(&m.p("alice/state/x"))
    ));
    let t = fs::metadata(m.p("alice/state/x")).unwrap().mtime();
    assert_eq!(t, 981173106, "touch -d kept");
    sh_ok(&format!(
        "install -m 0755 {} {}",
        q(&src.join("a")),
        q(&m.p("alice/state/inst"))
    ));
    assert_eq!(fs::read(m.p("alice/state/inst")).unwrap(), b"one\n");
}

#[test]
fn folder_times_move_when_entries_come_and_go() {
    let m = two_peers();
    let dir = m.p("alice/state");
    fs::create_dir(dir.join("f")).unwrap();
    let t0 = fs::metadata(dir.join("f")).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(dir.join("f/k"), b"1").unwrap();
    let t1 = fs::metadata(dir.join("f")).unwrap().modified().unwrap();
    assert!(t1 > t0, "a new entry moves the folder's mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::remove_file(dir.join("f/k")).unwrap();
    let md = fs::metadata(dir.join("f")).unwrap();
    assert!(md.modified().unwrap() > t1, "a removed entry moves it too");
    assert_eq!(md.ctime(), md.mtime());
    // A new file's ctime is its own, not the mount's start.
    fs::write(dir.join("new"), b"1").unwrap();
    let md = fs::metadata(dir.join("new")).unwrap();
    assert_eq!(md.ctime(), md.mtime());
}

/// ctime is the time of the last change of any kind: chmod, chown, `touch -d` and
/// `mv` move it and leave mtime; a write moves both. For files and folders alike.
#[test]
fn ctime_moves_on_chmod_chown_utimens_and_rename() {
    let m = two_peers();
    let dir = m.p("alice/state");
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
    let times = |p: &std::path::Path| {
        let md = fs::metadata(p).unwrap();
        (
            md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        )
    };
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/f"), b"1").unwrap();
    let f = dir.join("d/f");
    let (m0, c0) = times(&f);
    assert_eq!(m0, c0, "a write moves both");
    pause();
    sh_ok(&format!("chmod 600 {}", q(&f)));
    let (m1, c1) = times(&f);
    assert_eq!(m1, m0, "chmod leaves mtime");
    assert!(c1 > c0, "chmod moves ctime");
    pause();
    sh_ok(&format!("chown 0:0 {}", q(&f)));
    let (m2, c2) = times(&f);
    assert_eq!(m2, m0, "chown leaves mtime");
    assert!(c2 > c1, "chown moves ctime");
    pause();
    sh_ok(&format!("touch -d '2001-02-03 04:05:06' {}", q(&f)));
    let (m3, c3) = times(&f);
    assert_eq!(m3 / 1_000_000_000, 981_173_106, "touch -d kept");
    assert!(c3 > c2, "touch -d moves ctime to now, not to the time set");
    pause();
    fs::rename(&f, dir.join("d/g")).unwrap();
    let (m4, c4) = times(&dir.join("d/g"));
    assert_eq!(m4, m3, "mv leaves mtime");
    assert!(c4 > c3, "mv moves ctime");
    assert_eq!(fs::metadata(dir.join("d/g")).unwrap().mode() & 0o777, 0o600);
    // A folder: chmod and touch -d move its ctime, not its mtime.
    let d = dir.join("d");
    let (dm0, dc0) = times(&d);
    pause();
    sh_ok(&format!("chmod 750 {}", q(&d)));
    let (dm1, dc1) = times(&d);
    assert_eq!(dm1, dm0, "chmod of a folder leaves mtime");
    assert!(dc1 > dc0, "chmod of a folder moves ctime");
    pause();
    sh_ok(&format!("touch -d '2001-02-03 04:05:06' {}", q(&d)));
    let (dm2, dc2) = times(&d);
    assert_eq!(
        dm2 / 1_000_000_000,
        981_173_106,
        "touch -d of a folder kept"
    );
    assert!(dc2 > dc1, "touch -d of a folder moves ctime");
}

#[test]
fn paths_as_long_as_pathconf_says_are_keys() {
    let m = two_peers();
    let state = m.p("alice/state");
    let c = std::ffi::CString::new(state.as_os_str().as_encoded_bytes()).unwrap();
    let max = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_PATH_MAX) };
    assert_eq!(max, 4096);
    // Segments of 200 bytes up to a path just under PATH_MAX.
    let room = 4095 - state.as_os_str().len() - 1;
    let seg = "s".repeat(200);
    let mut key = String::new();
    while key.len() + 201 < room - 10 {
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(&seg);
    }
    fs::create_dir_all(state.join(&key)).unwrap();
    let leaf = format!("{key}/{}", "e".repeat(room - key.len() - 1));
    let path = state.join(&leaf);
    assert_eq!(path.as_os_str().len(), 4095);
    fs::write(&path, b"deep").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"deep");
    assert!(leaf.len() > 1024);
    // One byte more is the kernel's ENAMETOOLONG, before peerfs.
    expect_errno(
        fs::write(format!("{}e", path.display()), b"x"),
        libc::ENAMETOOLONG,
        "a path past PATH_MAX",
    );
    still_serves(&m);
}

#[test]
fn special_files_and_links_are_eperm_and_the_mount_serves_on() {
    let m = two_peers();
    let s = |rel: &str| q(&m.p(rel));
    for cmd in [
        format!("mkfifo {}", s("alice/state/fifo")),
        format!("ln -s x {}", s("alice/state/sym")),
        format!("ln {} {}", s("alice/state/x"), s("alice/state/hard")),
    ] {
        let out = sh(&cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Operation not permitted"),
            "{cmd}: {} {err}",
            out.status
        );
    }
    assert_eq!(m.names("alice/state"), ["x"]);
    still_serves(&m);
}

#[test]
fn a_state_folder_renames_within_state_and_over_an_empty_folder() {
    let m = two_peers();
    let st = |rel: &str| m.p(&format!("alice/state/{rel}"));
    fs::create_dir_all(st("f/s")).unwrap();
    fs::write(st("f/a"), b"1").unwrap();
    fs::write(st("f/s/b"), b"2").unwrap();
    fs::create_dir(st("f/empty")).unwrap();
    fs::rename(st("f"), st("g")).expect("rename(2) of a folder in one parent");
    assert_eq!(fs::read(st("g/a")).unwrap(), b"1");
    assert_eq!(fs::read(st("g/s/b")).unwrap(), b"2");
    assert!(st("g/empty").is_dir(), "an empty folder inside moves too");
    expect_errno(fs::metadata(st("f")), libc::ENOENT, "the old folder");

    fs::create_dir(st("h")).unwrap();
    fs::rename(st("g"), st("h")).expect("over an empty folder");
    assert_eq!(fs::read(st("h/s/b")).unwrap(), b"2");

    fs::create_dir(st("i")).unwrap();
    fs::write(st("i/k"), b"3").unwrap();
    expect_errno(
        fs::rename(st("h"), st("i")),
        libc::ENOTEMPTY,
        "over a non-empty folder",
    );
    expect_errno(fs::rename(st("h"), st("x")), libc::ENOTDIR, "over a file");
    assert_eq!(fs::read(st("i/k")).unwrap(), b"3");
    // Into another folder, and what a script sees.
    fs::rename(st("h"), st("i/h")).unwrap();
    assert_eq!(m.run_ok("alice", "k.rhai", r#"get("i/h/s/b")"#), 2);
    still_serves(&m);
}

#[test]
fn a_file_unlinked_while_open_stays_gone_and_fstat_works() {
    let m = two_peers();
    let st = |rel: &str| m.p(&format!("alice/state/{rel}"));
    // open(O_CREAT), write, unlink, close: the name stays gone.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(st("f"))
        .unwrap();
    f.write_all(b"hi").unwrap();
    fs::remove_file(st("f")).unwrap();
    let md = f.metadata().expect("fstat of an open, unlinked file");
    assert_eq!((md.len(), md.nlink()), (2, 0));
    close(f).unwrap();
    expect_errno(fs::metadata(st("f")), libc::ENOENT, "f after close");
    // The same for a file that existed, opened for writing and for reading.
    fs::write(st("g"), b"abc").unwrap();
    let mut w = OpenOptions::new().write(true).open(st("g")).unwrap();
    let r = fs::File::open(st("g")).unwrap();
    fs::remove_file(st("g")).unwrap();
    w.write_all(b"z").unwrap();
    assert_eq!(r.metadata().unwrap().len(), 3);
    let mut back = String::new();
    std::io::Read::read_to_string(&mut &r, &mut back).unwrap();
    assert_eq!(back, "abc", "an open reader keeps its bytes");
    close(w).unwrap();
    drop(r);
    expect_errno(fs::metadata(st("g")), libc::ENOENT, "g after close");
    assert_eq!(m.names("alice/state"), ["x"]);
}

#[test]
fn state_folders_say_their_link_count_is_not_counted() {
    let m = two_peers();
    fs::create_dir_all(m.p("alice/state/a/b")).unwrap();
    // 2 would tell find's leaf optimisation "no subfolders"; 1 means "not counted".
    assert_eq!(fs::metadata(m.p("alice/state/a")).unwrap().nlink(), 1);
    let found = sh_ok(&format!("find {} -type d | wc -l", q(&m.p("alice/state"))));
    assert_eq!(found.trim(), "3");
}

/// `rsync -a` of a tree whose files and folders have varied modes: the copy is the
/// same (`diff -r`), `ls -l` shows the modes it was given, a second run copies
/// nothing, and after a remount (a new daemon over the same data) empty folders,
/// modes and folder times are all still there.
#[test]
fn rsync_a_keeps_modes_and_a_remount_keeps_empty_folders_modes_and_times() {
    let (_d, data, mnt, work) = dirs();
    let src = work.join("src");
    for dir in ["priv", "shared/inner", "empty", "shared/empty-too"] {
        fs::create_dir_all(src.join(dir)).unwrap();
    }
    let files = [
        ("secret", "0600"),
        ("group-readable", "0640"),
        ("run.sh", "0700"),
        ("priv/k", "0600"),
        ("shared/n", "0644"),
        ("shared/inner/x", "0640"),
    ];
    for (f, mode) in files {
        fs::write(src.join(f), format!("{f}\n")).unwrap();
        sh_ok(&format!("chmod {mode} {}", q(&src.join(f))));
    }
    sh_ok(&format!(
        "cd {s} && chmod 0750 priv shared shared/inner && chmod 0700 empty && \
         chmod 0755 . shared/empty-too && \
         find . -depth -exec touch -h -d '2020-01-02 03:04:05' {{}} +",
        s = q(&src)
    ));
    let dst = |dm: &Daemon| dm.p("alice/state/dst");
    // What `ls -l` would show, for every path of the tree, as (path, mode, mtime).
    let listing = |root: &std::path::Path| -> Vec<(String, u32, i64)> {
        let out = sh_ok(&format!("cd {} && find . | sort", q(root)));
        out.lines()
            .map(|p| {
                let md = fs::symlink_metadata(root.join(p)).unwrap();
                (p.to_string(), md.mode() & 0o7777, md.mtime())
            })
            .collect()
    };

    let mut dm = Daemon::start(&data, &mnt, &work, &[]);
    dm.add_peer("alice");
    sh_ok(&format!("rsync -a {}/ {}/", q(&src), q(&dst(&dm))));
    sh_ok(&format!("diff -r {} {}", q(&src), q(&dst(&dm))));
    assert_eq!(
        listing(&dst(&dm)),
        listing(&src),
        "modes and times as given"
    );
    let again = sh_ok(&format!(
        "rsync -a --itemize-changes {}/ {}/",
        q(&src),
        q(&dst(&dm))
    ));
    assert_eq!(again, "", "a second rsync found changes");
    sh_ok(&format!(
        "fusermount3 -u {m} 2>/dev/null || umount {m}",
        m = q(&mnt)
    ));
    let st = dm.wait(std::time::Duration::from_secs(10));
    assert!(st.success(), "{st}: {}", dm.log_text());
    drop(dm);

    let mut dm = Daemon::start(&data, &mnt, &work, &[]);
    assert_eq!(
        listing(&dst(&dm)),
        listing(&src),
        "after a remount: the empty folders, the modes and the times"
    );
    sh_ok(&format!("diff -r {} {}", q(&src), q(&dst(&dm))));
    let again = sh_ok(&format!(
        "rsync -a --itemize-changes {}/ {}/",
        q(&src),
        q(&dst(&dm))
    ));
    assert_eq!(again, "", "rsync after the remount found changes");
    // chmod(1) on the mount: shown at once (`ls -l` truthful).
    let ro = dst(&dm).join("secret");
    sh_ok(&format!("chmod 0400 {}", q(&ro)));
    assert_eq!(fs::metadata(&ro).unwrap().mode() & 0o777, 0o400);
    sh_ok(&format!("chmod 0600 {}", q(&ro)));
    assert_eq!(fs::metadata(&ro).unwrap().mode() & 0o777, 0o600);
    sh_ok(&format!(
        "fusermount3 -u {m} 2>/dev/null || umount {m}",
        m = q(&mnt)
    ));
    let st = dm.wait(std::time::Duration::from_secs(10));
    assert!(st.success(), "{st}: {}", dm.log_text());
}
