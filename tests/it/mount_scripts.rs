//! Scripts through a real mount: the peer layout, dropping scripts with cp and
//! shell redirection, waiting reads of results, staging names, concurrent
//! handles on one inbox name, and `peerfs run`.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use peerfs::fuse::MountOptions;
use serde_json::{json, Value};

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
            "schema.toml",
            "state",
            "tables"
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
        .apply_async("alice", peerfs::exec::Op::Submit(slow2), None);
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
