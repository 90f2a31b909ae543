//! peerfs mounted for real in a temp dir, driven with std::fs and coreutils.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use peerfs::fuse::MountOptions;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_peerfs");

fn log_lines_with<'a>(log: &'a str, words: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.split(' ').any(|t| t == *w)))
        .collect()
}

// 1 ----------------------------------------------------------------------------

#[test]
fn mkdir_creates_a_peer_with_the_full_layout() {
    let m = Mounted::new();
    m.add_peer("alice");
    let md = fs::metadata(m.p("alice")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.uid(), uid(), "the peer is owned by the uid that made it");
    assert_eq!(md.mode() & 0o7777, 0o700);

    let ls = sh_ok(&format!("ls -ld {}", q(&m.p("alice"))));
    assert!(ls.starts_with("drwx------"), "ls -ld: {ls}");
    let me = sh_ok("id -un");
    assert_eq!(
        ls.split_whitespace().nth(2),
        Some(me.trim()),
        "ls -ld shows the creating user as owner: {ls}"
    );

    let listing = sh_ok(&format!("ls -1 {}", q(&m.p("alice"))));
    let mut got: Vec<&str> = listing.lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "groups",
            "inbox",
            "log",
            "modules",
            "outbox",
            "peers",
            "policy.cedar",
            "state"
        ]
    );
    for d in ["inbox", "outbox", "state", "modules", "peers"] {
        assert!(m.p(&format!("alice/{d}")).is_dir(), "{d} is a folder");
    }
    for f in ["policy.cedar", "groups", "log"] {
        assert!(m.p(&format!("alice/{f}")).is_file(), "{f} is a file");
    }
    assert_eq!(m.names(""), [".peerfs", "alice"]);

    for f in ["version", "stats"] {
        let text = sh_ok(&format!("cat {}", q(&m.p(&format!(".peerfs/{f}")))));
        assert!(!text.is_empty(), ".peerfs/{f} is empty");
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 2, ".peerfs/{f}: {line:?} is not \"key value\"");
        }
    }
    let version = fs::read_to_string(m.p(".peerfs/version")).unwrap();
    assert_eq!(version, format!("version {}\n", env!("CARGO_PKG_VERSION")));
    let stats = fs::read_to_string(m.p(".peerfs/stats")).unwrap();
    assert!(stats.lines().any(|l| l == "peers 1"), "{stats}");
    // The meta folder is read-only.
    expect_errno(
        fs::write(m.p(".peerfs/version"), "x"),
        libc::EACCES,
        "write .peerfs/version",
    );
}

// 2 ----------------------------------------------------------------------------

#[test]
fn cp_then_jq_needs_no_polling_and_the_result_is_complete() {
    let m = Mounted::new();
    m.add_peer("alice");
    let job = m.local("job.rhai", "print(\"hi\"); 6 * 7");
    let out = sh_ok(&format!(
        "cp {} {} && jq .value {}",
        q(&job),
        q(&m.p("alice/inbox/")),
        q(&m.p("alice/outbox/job.json"))
    ));
    assert_eq!(out.trim(), "42");

    let r: Value =
        serde_json::from_slice(&fs::read(m.p("alice/outbox/job.json")).unwrap()).unwrap();
    let obj = r.as_object().unwrap();
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
        assert!(obj.contains_key(k), "result lacks {k}: {r}");
    }
    assert_eq!(r["script"], "job.rhai");
    assert_eq!(r["caller"], "alice");
    assert_eq!(r["target"], "alice");
    assert_eq!(r["status"], "ok");
    assert_eq!(r["value"], 42);
    assert_eq!(r["output"], "hi\n");
    assert_eq!(r["error"], Value::Null);
    assert!(r["operations"].as_u64().unwrap() > 0);
    assert!(r["duration_us"].is_u64());
    assert!(r["submitted_at"].as_str().unwrap().ends_with('Z'));
    assert!(r["finished_at"].as_str().unwrap() >= r["submitted_at"].as_str().unwrap());

    // A second run of the same stem replaces the result, again with no polling.
    let job2 = m.local("job.rhai", "\"second\"");
    let out = sh_ok(&format!(
        "cp {} {} && jq -r .value {}",
        q(&job2),
        q(&m.p("alice/inbox/")),
        q(&m.p("alice/outbox/job.json"))
    ));
    assert_eq!(out.trim(), "second");
    // `stat`, `wc -c` and `ls -l` agree with the bytes of the newer result at once.
    let bytes = fs::read(m.p("alice/outbox/job.json")).unwrap();
    let sizes = sh_ok(&format!(
        "stat -c %s {0} && wc -c < {0} && ls -l {0} | awk '{{print $5}}'",
        q(&m.p("alice/outbox/job.json"))
    ));
    let want = bytes.len().to_string();
    assert_eq!(sizes.split_whitespace().collect::<Vec<_>>(), [&*want; 3]);
    let job3 = m.local("job.rhai", "\"third, and longer than the second\"");
    sh_ok(&format!("cp {} {}", q(&job3), q(&m.p("alice/inbox/"))));
    let size = fs::metadata(m.p("alice/outbox/job.json")).unwrap().len();
    let bytes = fs::read(m.p("alice/outbox/job.json")).unwrap();
    assert_eq!(
        size,
        bytes.len() as u64,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(String::from_utf8_lossy(&bytes).contains("longer than the second"));
    // The inbox empties once scripts have run; the outbox keeps one result per stem.
    assert_eq!(m.names("alice/outbox"), ["job.json"]);
    assert!(
        wait_until(Duration::from_secs(5), || m.names("alice/inbox").is_empty()),
        "inbox: {:?}",
        m.names("alice/inbox")
    );
    // rm discards a result.
    sh_ok(&format!("rm {}", q(&m.p("alice/outbox/job.json"))));
    assert!(m.names("alice/outbox").is_empty());
}

// 3 ----------------------------------------------------------------------------

#[test]
fn shell_redirection_submits_once() {
    let m = Mounted::new();
    m.add_peer("alice");
    let a = m.p("alice");
    let out = sh_ok(&format!(
        "cd {} && echo 41 > state/m && echo 'get(\"m\") + 1' > inbox/calc.rhai && jq .value outbox/calc.json",
        q(&a)
    ));
    assert_eq!(out.trim(), "42");
    assert_eq!(fs::read_to_string(m.p("alice/state/m")).unwrap(), "41\n");
    // A later script runs after calc (serial per peer): by then every line of calc is in.
    m.run_ok("alice", "later.rhai", "1");
    let log = m.log_of("alice");
    assert_eq!(
        log_lines_with(&log, &["submit", "calc.rhai"]).len(),
        1,
        "one submit line for calc.rhai:\n{log}"
    );
    assert_eq!(
        log_lines_with(&log, &["run", "calc.rhai"]).len(),
        1,
        "one run line for calc.rhai:\n{log}"
    );
}

// 4 ----------------------------------------------------------------------------

/// Opens `path` read-only with O_NONBLOCK; the errno on failure.
fn open_nonblock(path: &Path) -> Result<(), i32> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    unsafe { libc::close(fd) };
    Ok(())
}

/// A loop that keeps `peer`'s actor busy for about `secs`, calibrated on the run's
/// own `duration_us` (not the round trip, which load and fsync stretch); the
/// mount's max_operations must allow it. Returns the loop count.
fn busy_loops(m: &impl MountPaths, peer: &str, secs: f64) -> u64 {
    let r = m.run(
        peer,
        "calibrate.rhai",
        "let i = 0; while i < 300000 { i += 1 } i",
    );
    assert_eq!(r["status"], "ok", "{r}");
    let per = r["duration_us"].as_f64().unwrap().max(1000.0) / 1e6;
    ((300_000.0 * secs / per) as u64).clamp(300_000, 400_000_000)
}

fn busy_script(m: &impl MountPaths, peer: &str, secs: f64) -> (String, u64) {
    let n = busy_loops(m, peer, secs);
    (format!("let i = 0; while i < {n} {{ i += 1 }} i"), n)
}

#[test]
fn reading_a_pending_result_waits_while_other_requests_flow() {
    let m = Mounted::with(
        |c| {
            c.own_limits.max_operations = 500_000_000;
            c.own_limits.max_wall_ms = 30_000;
        },
        MountOptions::default(),
    );
    m.add_peer("alice");
    m.add_peer("bob");
    fs::write(m.p("alice/state/x"), "hello").unwrap();
    m.run_ok("bob", "warm.rhai", "1");

    // Long enough that the checks below finish while it runs.
    let (slow, n) = busy_script(&m, "alice", 1.5);
    fs::write(m.p("alice/inbox/slow.rhai"), &slow).unwrap();

    let pending = m.p("alice/outbox/slow.json");
    assert_eq!(
        open_nonblock(&pending),
        Err(libc::EAGAIN),
        "O_NONBLOCK open of a pending result"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let pending = pending.clone();
        std::thread::spawn(move || {
            let r = fs::read(&pending);
            let _ = tx.send(());
            r
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Meanwhile: listings, reads, writes and other peers' runs all go through.
    let t = Instant::now();
    let ls = sh_ok(&format!(
        "ls {} {} {} && cat {} {}",
        q(&m.p("alice")),
        q(&m.p("alice/outbox")),
        q(&m.p("alice/state")),
        q(&m.p("alice/state/x")),
        q(&m.p(".peerfs/stats"))
    ));
    assert!(ls.contains("slow.json") && ls.contains("hello"), "{ls}");
    // (A write to alice's own state would wait for her run: her actor is serial.)
    fs::write(m.p("bob/state/y"), "2").unwrap();
    assert_eq!(fs::read_to_string(m.p("bob/state/y")).unwrap(), "2");
    assert_eq!(m.run_ok("bob", "quick.rhai", "get(\"y\") + 40"), 42);
    let others = t.elapsed();
    assert!(
        rx.try_recv().is_err(),
        "the reader returned before the run finished (the others took {others:?})"
    );
    assert_eq!(open_nonblock(&pending), Err(libc::EAGAIN), "still pending");

    let bytes = reader.join().unwrap().expect("read of the pending result");
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], n);
    // Finished: a non-blocking open now works, and cat returns the same bytes.
    assert_eq!(open_nonblock(&pending), Ok(()));
    assert_eq!(fs::read(&pending).unwrap(), bytes);
}

// 5 ----------------------------------------------------------------------------

#[test]
fn staging_names_never_run_until_renamed_into_the_inbox() {
    let m = Mounted::new();
    m.add_peer("alice");
    let src = m.local("x.rhai", "set(\"ran\", true); 7");
    sh_ok(&format!(
        "cp {src} {dot} && cp {src} {tilde} && echo '99' > {dot2}",
        src = q(&src),
        dot = q(&m.p("alice/inbox/.x.rhai")),
        tilde = q(&m.p("alice/inbox/x.rhai~")),
        dot2 = q(&m.p("alice/inbox/.other")),
    ));
    // Runs are serial in submission order: once a later script has run, anything
    // submitted before it has run too.
    m.run_ok("alice", "sentinel.rhai", "1");
    assert_eq!(m.names("alice/outbox"), ["sentinel.json"]);
    let inbox = sh_ok(&format!("ls -A {}", q(&m.p("alice/inbox"))));
    let mut inbox: Vec<&str> = inbox.lines().collect();
    inbox.sort();
    assert_eq!(inbox, [".other", ".x.rhai", "x.rhai~"]);
    assert_eq!(
        fs::read_to_string(m.p("alice/inbox/.x.rhai")).unwrap(),
        "set(\"ran\", true); 7"
    );
    expect_errno(
        fs::metadata(m.p("alice/state/ran")),
        libc::ENOENT,
        "a staging script ran",
    );
    let log = m.log_of("alice");
    assert!(
        !log.contains("x.rhai"),
        "staging names reached the log:\n{log}"
    );

    // mv to a real name is the submission; the result is there at once.
    let out = sh_ok(&format!(
        "cd {} && mv .x.rhai x.rhai && jq .value ../outbox/x.json",
        q(&m.p("alice/inbox"))
    ));
    assert_eq!(out.trim(), "7");
    assert_eq!(
        fs::read_to_string(m.p("alice/state/ran")).unwrap(),
        "true\n"
    );
    // Renaming a staging file to another staging name keeps it staged.
    sh_ok(&format!(
        "cd {} && mv 'x.rhai~' .y.rhai~ && rm .other",
        q(&m.p("alice/inbox"))
    ));
    m.run_ok("alice", "sentinel.rhai", "2");
    assert_eq!(m.names("alice/outbox"), ["sentinel.json", "x.json"]);
    let inbox = sh_ok(&format!("ls -A {}", q(&m.p("alice/inbox"))));
    assert_eq!(inbox.trim(), ".y.rhai~");
    let log = m.log_of("alice");
    assert_eq!(log_lines_with(&log, &["run", "x.rhai"]).len(), 1, "{log}");
}

// 6 ----------------------------------------------------------------------------

#[test]
fn state_files_with_coreutils() {
    let m = Mounted::new();
    m.add_peer("alice");
    let st = m.p("alice/state");
    let s = q(&st);

    // echo / cat / cp / mv / rm
    sh_ok(&format!("echo hi > {s}/greet"));
    assert_eq!(sh_ok(&format!("cat {s}/greet")), "hi\n");
    let local = m.local("note.txt", "a note\nwith two lines\n");
    sh_ok(&format!("cp {} {s}/note", q(&local)));
    assert_eq!(
        fs::read(st.join("note")).unwrap(),
        fs::read(&local).unwrap()
    );
    sh_ok(&format!("cp {s}/note {}", q(&m.work.join("back.txt"))));
    assert_eq!(
        fs::read(m.work.join("back.txt")).unwrap(),
        fs::read(&local).unwrap()
    );
    sh_ok(&format!("mv {s}/greet {s}/hello"));
    expect_errno(
        fs::metadata(st.join("greet")),
        libc::ENOENT,
        "old name after mv",
    );
    assert_eq!(fs::read_to_string(st.join("hello")).unwrap(), "hi\n");
    // mv over an existing key replaces it.
    sh_ok(&format!("mv {s}/hello {s}/note"));
    assert_eq!(fs::read_to_string(st.join("note")).unwrap(), "hi\n");
    sh_ok(&format!("rm {s}/note"));
    expect_errno(fs::metadata(st.join("note")), libc::ENOENT, "after rm");
    assert!(m.names("alice/state").is_empty());
    // The script sees what the files hold, typed.
    sh_ok(&format!("echo 41 > {s}/n && echo hi > {s}/word"));
    assert_eq!(
        m.run_ok("alice", "types.rhai", "[get(\"n\") + 1, get(\"word\")]"),
        json!([42, "hi"])
    );

    // nested keys
    sh_ok(&format!(
        "mkdir -p {s}/a/b && echo 1 > {s}/a/b/c && echo 2 > {s}/a/d"
    ));
    let found = sh_ok(&format!("cd {s} && find . | sort"));
    assert_eq!(
        found.lines().collect::<Vec<_>>(),
        [".", "./a", "./a/b", "./a/b/c", "./a/d", "./n", "./word"]
    );
    assert_eq!(
        m.run_ok("alice", "keys.rhai", "keys(\"a/\")"),
        json!(["a/b/c", "a/d"])
    );
    // A folder made by a script's key is a folder on the mount.
    m.run_ok("alice", "deep.rhai", "set(\"x/y/z\", #{k: [1, 2]}); 0");
    assert!(st.join("x/y").is_dir());
    // Maps are JSON: jq reads them.
    assert_eq!(sh_ok(&format!("jq -c .k {s}/x/y/z")).trim(), "[1,2]");
    sh_ok(&format!("echo '{{\"a\": {{\"b\": 5}}}}' > {s}/cfg"));
    assert_eq!(sh_ok(&format!("jq .a.b {s}/cfg")).trim(), "5");
    assert_eq!(m.run_ok("alice", "cfg.rhai", "get(\"cfg\").a.b"), 5);

    // stat: sizes and mtimes
    let before = SystemTime::now() - Duration::from_secs(60);
    let size = sh_ok(&format!("stat -c %s {s}/a/b/c"));
    assert_eq!(size.trim(), "2");
    let md = fs::metadata(st.join("cfg")).unwrap();
    assert_eq!(md.len(), fs::read(st.join("cfg")).unwrap().len() as u64);
    let mtime = md.modified().unwrap();
    assert!(
        mtime > before && mtime < SystemTime::now() + Duration::from_secs(5),
        "mtime {mtime:?}"
    );
    assert!(md.is_file() && !md.is_dir());
    assert!(fs::metadata(st.join("a")).unwrap().is_dir());

    // rmdir of a non-empty state folder
    expect_errno(
        fs::remove_dir(st.join("a")),
        libc::ENOTEMPTY,
        "rmdir state/a",
    );
    let out = sh(&format!("rmdir {s}/a/b"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{out:?}"
    );
    sh_ok(&format!("rm {s}/a/b/c && rmdir {s}/a/b"));
    assert_eq!(m.names("alice/state/a"), ["d"]);
    // An empty folder made with mkdir can be removed with rmdir.
    sh_ok(&format!("mkdir {s}/empty && rmdir {s}/empty"));
    expect_errno(
        fs::metadata(st.join("empty")),
        libc::ENOENT,
        "removed folder",
    );
    // rm -r of a folder
    sh_ok(&format!("rm -r {s}/x"));
    expect_errno(fs::metadata(st.join("x")), libc::ENOENT, "rm -r x");
    // Removing the last key leaves its folder, empty, until rmdir.
    sh_ok(&format!("rm {s}/a/d"));
    assert!(st.join("a").is_dir());
    assert!(m.names("alice/state/a").is_empty());
    sh_ok(&format!("rmdir {s}/a"));
    assert_eq!(m.names("alice/state"), ["cfg", "n", "word"]);
}

#[test]
fn a_16_mib_value_round_trips_and_offsets_work() {
    let m = Mounted::new();
    m.add_peer("alice");
    let big = m.work.join("big");
    sh_ok(&format!(
        "dd if=/dev/urandom of={} bs=1M count=16 status=none",
        q(&big)
    ));
    let st = m.p("alice/state");
    sh_ok(&format!("cp {} {}", q(&big), q(&st.join("big"))));
    sh_ok(&format!("cmp {} {}", q(&big), q(&st.join("big"))));
    assert_eq!(fs::metadata(st.join("big")).unwrap().len(), 16 << 20);
    // dd straight to the mount, in odd block sizes
    sh_ok(&format!(
        "dd if={} of={} bs=100000 status=none",
        q(&big),
        q(&st.join("big2"))
    ));
    sh_ok(&format!("cmp {} {}", q(&big), q(&st.join("big2"))));

    // A write at an offset (no truncation) changes only those bytes.
    let mut want = fs::read(&big).unwrap();
    {
        let mut f = OpenOptions::new().write(true).open(st.join("big")).unwrap();
        f.seek(SeekFrom::Start(10_000_000)).unwrap();
        f.write_all(b"HELLO PEERFS").unwrap();
        close(f).expect("close after a write at an offset");
    }
    want[10_000_000..10_000_012].copy_from_slice(b"HELLO PEERFS");
    let got = fs::read(st.join("big")).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ after a write at an offset");
    // A read at an offset.
    let mut f = File::open(st.join("big")).unwrap();
    f.seek(SeekFrom::Start(9_999_998)).unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &want[9_999_998..10_000_014]);
    // Extending past the end fills with zeros; truncate shortens.
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(st.join("big2"))
            .unwrap();
        f.seek(SeekFrom::Start((16 << 20) + 10)).unwrap();
        f.write_all(b"end").unwrap();
        close(f).expect("close after a write past the end");
    }
    let got = fs::read(st.join("big2")).unwrap();
    assert_eq!(got.len(), (16 << 20) + 13);
    assert_eq!(&got[16 << 20..], b"\0\0\0\0\0\0\0\0\0\0end");
    sh_ok(&format!("truncate -s 5 {}", q(&st.join("big2"))));
    assert_eq!(fs::read(st.join("big2")).unwrap(), &want[..5]);
}

// 7 ----------------------------------------------------------------------------

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

// 8 ----------------------------------------------------------------------------

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

// 9 ----------------------------------------------------------------------------

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

// 10 ---------------------------------------------------------------------------

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

// 11 ---------------------------------------------------------------------------

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

// 12 ---------------------------------------------------------------------------

/// A script whose value proves it ran whole: a long string literal (cut anywhere,
/// it does not parse) whose length it records under `tag` and returns.
fn whole_script(tag: &str, fill: char, n: usize) -> String {
    let body: String = std::iter::repeat_n(fill, n).collect();
    format!(
        "let s = \"{body}\";\nlet l = get(\"runs\") ?? [];\nl.push(\"{tag}:\" + s.len);\nset(\"runs\", l);\n\"{tag}:\" + s.len\n"
    )
}

#[test]
fn two_handles_writing_one_inbox_name_each_submit_their_own_bytes() {
    let m = Mounted::new();
    m.add_peer("alice");
    let path = m.p("alice/inbox/dual.rhai");
    let a = whole_script("A", 'a', 3000);
    let b = whole_script("B", 'b', 5000);
    for (round, first_close) in [(0, 'A'), (1, 'B')] {
        let mut fa = File::create(&path).unwrap();
        let mut fb = File::create(&path).unwrap();
        // Interleaved, in uneven chunks.
        let (mut ia, mut ib) = (0, 0);
        let (ab, bb) = (a.as_bytes(), b.as_bytes());
        while ia < ab.len() || ib < bb.len() {
            let na = (ab.len() - ia).min(700);
            fa.write_all(&ab[ia..ia + na]).unwrap();
            ia += na;
            let nb = (bb.len() - ib).min(1100);
            fb.write_all(&bb[ib..ib + nb]).unwrap();
            ib += nb;
        }
        let (first, second) = if first_close == 'A' {
            (fa, fb)
        } else {
            (fb, fa)
        };
        close(first).expect("close of the first handle");
        close(second).expect("close of the second handle");
        // Both ran, in close order; the outbox shows the last one.
        let r: Value =
            serde_json::from_slice(&fs::read(m.p("alice/outbox/dual.json")).unwrap()).unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        let want_last = if first_close == 'A' {
            "B:5000"
        } else {
            "A:3000"
        };
        assert_eq!(
            r["value"],
            want_last,
            "round {round}: {r}\n{}",
            m.log_of("alice")
        );
        let runs: Value =
            serde_json::from_slice(&fs::read(m.p("alice/state/runs")).unwrap()).unwrap();
        let want = match round {
            0 => json!(["A:3000", "B:5000"]),
            _ => json!(["A:3000", "B:5000", "B:5000", "A:3000"]),
        };
        assert_eq!(runs, want, "round {round}");
    }
    let log = m.log_of("alice");
    let runs = log_lines_with(&log, &["run", "dual.rhai"]);
    assert_eq!(runs.len(), 4, "{log}");
    assert!(runs.iter().all(|l| l.contains("status=ok")), "{log}");
}

#[test]
fn a_child_that_inherited_the_descriptor_does_not_submit_half_a_script() {
    let m = Mounted::new();
    m.add_peer("alice");
    let data = m.local("data.json", "[1, 2, 41]\n");
    // `cat` and `true` inherit the group's stdout and close it when they exit, with
    // the script still half written; only the shell's own close submits.
    let out = sh_ok(&format!(
        "cd {} && {{ echo 'let d ='; cat {}; true; /bin/true; echo '; d[2] + 1'; }} > inbox/gen.rhai && jq -c '[.status, .value]' outbox/gen.json",
        q(&m.p("alice")),
        q(&data)
    ));
    assert_eq!(out.trim(), r#"["ok",42]"#);
    m.run_ok("alice", "sync.rhai", "1");
    let log = m.log_of("alice");
    assert_eq!(
        log_lines_with(&log, &["submit", "gen.rhai"]).len(),
        1,
        "a half script was submitted:\n{log}"
    );
    assert_eq!(log_lines_with(&log, &["run", "gen.rhai"]).len(), 1, "{log}");
    // The same for a state value: no half value is ever stored.
    sh_ok(&format!(
        "cd {} && {{ printf '['; /bin/true; printf '1]'; }} > state/v",
        q(&m.p("alice"))
    ));
    let log = m.log_of("alice");
    assert_eq!(
        log_lines_with(&log, &["write", "state/v", "3"]).len(),
        1,
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("write state/v 1 bytes")),
        "a half value was stored:\n{log}"
    );
    assert_eq!(m.run_ok("alice", "v.rhai", "get(\"v\")"), json!([1]));
}

#[test]
fn every_close_of_a_handle_returns_once_its_bytes_are_durable() {
    let m = Mounted::with(
        |c| {
            c.own_limits.max_operations = 500_000_000;
            c.own_limits.max_wall_ms = 30_000;
        },
        MountOptions::default(),
    );
    m.add_peer("alice");
    let x = m.p("alice/state/x");
    fs::write(&x, "old").unwrap();
    let (slow, _) = busy_script(&m, "alice", 1.0);
    fs::write(m.p("alice/inbox/slow.rhai"), &slow).unwrap();
    // alice's actor is busy: the first close's commit waits for the run.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&x)
        .unwrap();
    f.write_all(b"new").unwrap();
    let dup = f.try_clone().unwrap();
    let first = std::thread::spawn(move || close(f));
    std::thread::sleep(Duration::from_millis(200));
    // The second close has nothing new to commit, but the bytes are not durable
    // yet: it must wait for the first close's commit too.
    close(dup).expect("second close");
    assert_eq!(fs::read_to_string(&x).unwrap(), "new");
    first.join().unwrap().expect("first close");
}

#[test]
fn the_same_name_dropped_again_while_queued_runs_again() {
    let m = Mounted::with(
        |c| {
            c.own_limits.max_operations = 500_000_000;
            c.own_limits.max_wall_ms = 30_000;
        },
        MountOptions::default(),
    );
    m.add_peer("alice");
    let (slow, _) = busy_script(&m, "alice", 1.0);
    fs::write(m.p("alice/inbox/slow1.rhai"), &slow).unwrap();
    // Changes to a peer wait while its script runs (its actor is serial). slow2 is
    // queued through the core at once, in order, so that it and job.rhai are
    // applied together after slow1, and job.rhai waits in the queue behind slow2.
    let slow2 = m
        .core
        .new_job("alice", "slow2.rhai", slow.into_bytes(), &json!({}))
        .unwrap();
    m.core
        .apply_async("alice", peerfs::peer::Op::Submit(slow2), None);
    let job = m.local(
        "job.rhai",
        "let n = (get(\"n\") ?? 0) + 1; set(\"n\", n); n",
    );
    sh_ok(&format!("cp {} {}", q(&job), q(&m.p("alice/inbox/"))));
    let inbox = m.names("alice/inbox");
    assert!(inbox.contains(&"job.rhai".to_string()), "queued: {inbox:?}");
    let mode = fs::metadata(m.p("alice/inbox/job.rhai")).unwrap().mode();
    assert_eq!(
        mode & 0o200,
        0o200,
        "a queued name is writable by its owner"
    );
    // Dropping it again while it is queued is another submission.
    sh_ok(&format!("cp {} {}", q(&job), q(&m.p("alice/inbox/"))));
    let out = sh_ok(&format!("jq -c . {}", q(&m.p("alice/outbox/job.json"))));
    let log = m.log_of("alice");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["value"], 2, "{out}\n{log}");
    assert_eq!(log_lines_with(&log, &["run", "job.rhai"]).len(), 2, "{log}");
}

// 13 ---------------------------------------------------------------------------

#[test]
fn a_daemon_killed_mid_write_runs_no_half_script_and_loses_no_acked_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt, work) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("work"),
    );
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

// 14 ---------------------------------------------------------------------------

#[test]
fn sigterm_unmounts_exits_0_and_a_restart_shows_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt, work) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("work"),
    );
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
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt, work) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("work"),
    );
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    fs::write(d.p("alice/state/x"), "1").unwrap();
    d.kill9();
    // At once, as a supervisor restarts it (within the kernel's attribute TTL).
    let d2 = Daemon::start(&data, &mnt, &work, &["--force"]);
    assert_eq!(fs::read_to_string(d2.p("alice/state/x")).unwrap(), "1");
}

// 15 ---------------------------------------------------------------------------

mod reftest {
    //! Random file operations on state/ through the mount, against a BTreeMap.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `dir/keep` always exists, so `dir/` is always a folder.
    const KEYS: [&str; 5] = ["a", "b", "c", "dir/x", "dir/y"];

    #[derive(Debug, Clone)]
    pub enum Op {
        Write(usize, Vec<u8>),
        Append(usize, Vec<u8>),
        Remove(usize),
        Rename(usize, usize),
        Read(usize),
        List,
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "[a-z \n]{0,12}".prop_map(String::into_bytes),
            prop_oneof![
                Just("42\n"),
                Just("{\"a\":[1,2]}"),
                Just("\"s\""),
                Just(" 1.5 "),
                Just("true"),
                Just("null\n"),
            ]
            .prop_map(|s| s.as_bytes().to_vec()),
        ]
    }

    pub fn op() -> impl Strategy<Value = Op> {
        let k = 0..KEYS.len();
        prop_oneof![
            3 => (k.clone(), bytes()).prop_map(|(k, b)| Op::Write(k, b)),
            1 => (k.clone(), bytes()).prop_map(|(k, b)| Op::Append(k, b)),
            2 => k.clone().prop_map(Op::Remove),
            2 => (k.clone(), k.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => k.prop_map(Op::Read),
            1 => Just(Op::List),
        ]
    }

    fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
        r.err().map(|e| e.raw_os_error().unwrap_or(-1))
    }

    /// Applies `op` to the mount under `state` and to `model`.
    pub fn step(
        state: &Path,
        model: &mut BTreeMap<String, Vec<u8>>,
        op: &Op,
    ) -> Result<(), TestCaseError> {
        let path = |k: usize| state.join(KEYS[k]);
        match op {
            Op::Write(k, b) => {
                prop_assert_eq!(errno_of(fs::write(path(*k), b)), None);
                model.insert(KEYS[*k].to_string(), b.clone());
            }
            Op::Append(k, b) => {
                let r = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path(*k))
                    .and_then(|mut f| f.write_all(b));
                prop_assert_eq!(errno_of(r), None);
                model
                    .entry(KEYS[*k].to_string())
                    .or_default()
                    .extend_from_slice(b);
            }
            Op::Remove(k) => {
                let want = if model.remove(KEYS[*k]).is_some() {
                    None
                } else {
                    Some(libc::ENOENT)
                };
                prop_assert_eq!(errno_of(fs::remove_file(path(*k))), want);
            }
            Op::Rename(a, b) => {
                let r = errno_of(fs::rename(path(*a), path(*b)));
                match model.get(KEYS[*a]).cloned() {
                    None => prop_assert_eq!(r, Some(libc::ENOENT)),
                    Some(v) => {
                        prop_assert_eq!(r, None);
                        model.remove(KEYS[*a]);
                        model.insert(KEYS[*b].to_string(), v);
                    }
                }
            }
            Op::Read(k) => match model.get(KEYS[*k]) {
                Some(v) => prop_assert_eq!(&fs::read(path(*k)).unwrap(), v),
                None => prop_assert_eq!(errno_of(fs::read(path(*k))), Some(libc::ENOENT)),
            },
            Op::List => {}
        }
        check(state, model)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The mount shows exactly the model: listings, sizes and bytes.
    pub fn check(state: &Path, model: &BTreeMap<String, Vec<u8>>) -> Result<(), TestCaseError> {
        let mut top: Vec<String> = model.keys().filter(|k| !k.contains('/')).cloned().collect();
        top.push("dir".into());
        top.sort();
        prop_assert_eq!(listing(state), top);
        let mut sub: Vec<String> = model
            .keys()
            .filter_map(|k| k.strip_prefix("dir/").map(str::to_string))
            .collect();
        sub.push("keep".into());
        sub.sort();
        prop_assert_eq!(listing(&state.join("dir")), sub);
        for k in KEYS {
            let p = state.join(k);
            match model.get(k) {
                Some(v) => {
                    prop_assert_eq!(&fs::read(&p).unwrap(), v, "key {}", k);
                    prop_assert_eq!(
                        fs::metadata(&p).unwrap().len(),
                        v.len() as u64,
                        "size of {}",
                        k
                    );
                }
                None => {
                    prop_assert_eq!(errno_of(fs::metadata(&p)), Some(libc::ENOENT), "key {}", k)
                }
            }
        }
        Ok(())
    }

    #[test]
    fn state_through_the_mount_matches_a_btreemap() {
        let m = Mounted::new();
        let n = AtomicUsize::new(0);
        let mut runner = TestRunner::new(Config {
            cases: 30,
            failure_persistence: None,
            ..Config::default()
        });
        let r = runner.run(&proptest::collection::vec(op(), 1..25), |ops| {
            // A fresh peer per case: one mount for the whole run.
            let peer = format!("p{}", n.fetch_add(1, Ordering::Relaxed));
            m.add_peer(&peer);
            let state = m.p(&format!("{peer}/state"));
            fs::create_dir(state.join("dir")).unwrap();
            fs::write(state.join("dir/keep"), "k").unwrap();
            let mut model = BTreeMap::new();
            for op in &ops {
                step(&state, &mut model, op)
                    .map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Ok(())
        });
        if let Err(e) = r {
            panic!("{e}");
        }
    }
}

#[test]
fn an_empty_new_file_is_stored_at_close_and_nothing_comes_back_later() {
    let m = Mounted::new();
    m.add_peer("alice");
    let st = m.p("alice/state");
    for i in 0..40 {
        let (a, b) = (st.join(format!("e{i}")), st.join(format!("f{i}")));
        fs::write(&a, b"").unwrap();
        fs::rename(&a, &b).unwrap();
        let (c, d) = (st.join(format!("t{i}")), st.join(format!("u{i}")));
        File::create(&c).unwrap();
        fs::remove_file(&c).unwrap();
        let _ = d;
    }
    sh_ok(&format!("touch {}", q(&st.join("touched"))));
    // Let any late request (RELEASE comes after close returns) land.
    std::thread::sleep(Duration::from_millis(300));
    m.run_ok("alice", "sync.rhai", "1");
    let mut want: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    want.push("touched".into());
    want.sort();
    assert_eq!(m.names("alice/state"), want);
    assert_eq!(
        m.run_ok("alice", "keys.rhai", "keys(\"\").len"),
        41,
        "the store holds what the mount shows"
    );
    assert_eq!(fs::read(st.join("touched")).unwrap(), b"");
}

// 16 ---------------------------------------------------------------------------

#[test]
fn peerfs_run_prints_the_value_and_exits_by_status() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("carol");
    let run = |peer: &str, name: &str, src: &str, extra: &[&str]| {
        let f = m.local(name, src);
        let out = Command::new(BIN)
            .arg("run")
            .arg(peer)
            .arg(&f)
            .arg("--mount")
            .arg(&m.mnt)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("alice", "ok.rhai", "#{a: 6 * 7, b: \"x\"}", &[]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v, json!({"a": 42, "b": "x"}));

    let (code, out, _) = run("alice", "full.rhai", "1", &["--full"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["value"].as_i64()),
        (Some("ok"), Some(1))
    );

    let (code, _, err) = run("alice", "throw.rhai", "throw \"boom\"", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("boom"), "{err}");

    // carol has no policy: alice's script there is denied.
    let (code, _, err) = run("carol", "deny.rhai", "1", &["--as", "alice"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("denied"), "{err}");

    let (code, _, err) = run("alice", "loop.rhai", "loop { }", &[]);
    assert_eq!(code, Some(3), "{err}");

    // Standard input, and a missing peer (usage / I/O problem).
    let out = Command::new(BIN)
        .args(["run", "alice", "-", "--mount"])
        .arg(&m.mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"\"from stdin\"")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"from stdin\""
    );
    let (code, _, _) = run("nobody-here", "x.rhai", "1", &[]);
    assert_eq!(code, Some(64));
}

#[test]
fn stat_shows_what_a_run_just_changed() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    fs::write(
        m.p("bob/policy.cedar"),
        "permit(principal == Peer::\"alice\", action == Action::\"read\", resource);",
    )
    .unwrap();
    let x = m.p("alice/state/x");
    let bx = m.p("alice/peers/bob/state/x");
    fs::write(&x, "1").unwrap();
    fs::write(m.p("bob/state/x"), "1").unwrap();
    assert_eq!(fs::metadata(&x).unwrap().len(), 1);
    assert_eq!(fs::metadata(&bx).unwrap().len(), 1);
    let log_size = fs::metadata(m.p("alice/log")).unwrap().len();
    // Right after the result is read, with no pause: sizes are the new ones.
    m.run_ok("alice", "s.rhai", "set(\"x\", \"hello world\"); 0");
    m.run_ok("bob", "s.rhai", "set(\"x\", \"hello bob\"); 0");
    assert_eq!(fs::metadata(&x).unwrap().len(), 11);
    assert_eq!(sh_ok(&format!("stat -c %s {}", q(&x))).trim(), "11");
    assert_eq!(fs::metadata(&bx).unwrap().len(), 9);
    let log_now = fs::metadata(m.p("alice/log")).unwrap().len();
    assert!(log_now > log_size);
    assert_eq!(log_now, fs::read(m.p("alice/log")).unwrap().len() as u64);
    let out = m.p("alice/outbox/s.json");
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        fs::read(&out).unwrap().len() as u64
    );
    // A key a run removed is gone at once.
    m.run_ok("alice", "r.rhai", "remove(\"x\"); 0");
    expect_errno(fs::metadata(&x), libc::ENOENT, "stat of a removed key");
    expect_errno(fs::read(&x), libc::ENOENT, "read of a removed key");
}

#[test]
fn listed_inode_numbers_match_stat() {
    let m = Mounted::new();
    m.add_peer("alice");
    for i in 0..50 {
        fs::write(m.p(&format!("alice/state/k{i}")), format!("{i}")).unwrap();
    }
    // `ls -i` (numbers from the listing) agrees with `stat` (numbers from lookups),
    // before and after the files were looked up.
    for _ in 0..2 {
        let listed = sh_ok(&format!("cd {} && ls -1i", q(&m.p("alice/state"))));
        let stat = sh_ok(&format!(
            "cd {} && stat -c '%i %n' k*",
            q(&m.p("alice/state"))
        ));
        let norm = |s: &str| {
            let mut v: Vec<(String, String)> = s
                .lines()
                .map(|l| {
                    let mut it = l.split_whitespace();
                    (
                        it.next().unwrap().to_string(),
                        it.next().unwrap().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(norm(&listed), norm(&stat));
        assert_eq!(norm(&listed).len(), 50);
    }
}
