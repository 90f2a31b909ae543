//! Replicas in object storage, with real mounts: a peer restored after its data
//! folder is gone, restored as of an earlier time, an object store that stops
//! and comes back mid-stream, `sync` and `async` mode across SIGKILLs; each against a
//! folder (`file://`) and an S3 server of the test's own (moto, on a free
//! loopback port, stopped by pid).

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);

/// An S3-compatible server (moto's server mode) on a free loopback port, its
/// objects in memory; stopped (SIGKILL, by pid) on drop.
pub(crate) struct Moto {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Moto {
            port,
            log: dir.join("moto.log"),
            child: None,
        };
        m.restart();
        m
    }

    /// Starts it (again: empty) and makes the bucket `peerfs`.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m moto.server (scripts-ci/setup installs moto[server])");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .request("PUT /peerfs HTTP/1.1")
                .starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "moto did not serve: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One HTTP request without a body; the response's text ("" when refused).
    fn request(&self, line: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let req = format!(
            "{line}\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("replica.endpoint=http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where a test's replica goes.
pub(crate) enum Rep {
    File(PathBuf),
    S3(Moto, PathBuf),
}

impl Rep {
    fn file(dir: &Path) -> Rep {
        Rep::File(dir.join("replica"))
    }

    /// With its credentials in a file named by the config (never in argv).
    pub(crate) fn s3(dir: &Path) -> Rep {
        let creds = dir.join("aws-credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
        )
        .unwrap();
        Rep::S3(Moto::start(dir), creds)
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Rep::File(p) => format!("file://{}", p.display()),
            Rep::S3(..) => "s3://peerfs/replicas".into(),
        }
    }

    /// The `-o` settings besides the url (endpoint, credentials file).
    pub(crate) fn settings(&self) -> Vec<String> {
        match self {
            Rep::File(_) => Vec::new(),
            Rep::S3(m, creds) => vec![
                "-o".into(),
                m.endpoint(),
                "-o".into(),
                format!("replica.credentials={}", creds.display()),
                "-o".into(),
                "replica.region=us-east-1".into(),
            ],
        }
    }

    pub(crate) fn daemon_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "-o".to_string(),
            format!("replica.url={}", self.url()),
            "-o".into(),
            "replica.sync_ms=100".into(),
        ];
        a.extend(self.settings());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn moto(&mut self) -> &mut Moto {
        match self {
            Rep::S3(m, _) => m,
            Rep::File(_) => panic!("not S3"),
        }
    }
}

fn start(data: &Path, mnt: &Path, work: &Path, args: &[String]) -> Daemon {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(data, mnt, work, &a)
}

/// `peerfs peer restore NAME --from URL --data DATA EXTRA...`.
fn restore(rep: &Rep, name: &str, data: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["peer", "restore", name, "--from", &rep.url(), "--data"])
        .arg(data)
        .args(rep.settings())
        .args(extra);
    cmd.output().expect("peerfs peer restore")
}

pub(crate) fn restore_ok(rep: &Rep, name: &str, data: &Path, extra: &[&str]) -> String {
    let out = restore(rep, name, data, extra);
    assert!(
        out.status.success(),
        "restore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts and waits for the daemon to exit (it ships what is left first).
fn stop(mut d: Daemon) {
    sh_ok(&format!("fusermount3 -u {}", q(&d.mnt)));
    let st = d.wait(T);
    assert!(st.success(), "daemon exit {st}: {}", d.log_text());
}

/// Submits `src` as `name` and returns its result's value.
fn run(d: &Daemon, peer: &str, name: &str, src: &str) -> serde_json::Value {
    std::fs::write(d.p(&format!("{peer}/inbox/{name}")), src).unwrap();
    let out = std::fs::read(d.p(&format!("{peer}/outbox/{}", name.replace(".rhai", ".json"))));
    let v: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    v["value"].clone()
}

/// The `.peerfs/replica` line of `peer`.
pub(crate) fn status(d: &Daemon, peer: &str) -> String {
    let text = std::fs::read_to_string(d.p(".peerfs/replica")).unwrap();
    text.lines()
        .find(|l| l.split(' ').next() == Some(peer))
        .unwrap_or_default()
        .to_string()
}

/// Waits until `peer`'s replica has everything committed so far.
pub(crate) fn caught_up(d: &Daemon, peer: &str) {
    let ok = wait_until(T, || {
        let s = status(d, peer);
        s.contains(" lag_ms=0 ") && s.ends_with(" error=-") && !s.contains("last_upload=- ")
    });
    assert!(ok, "replica of {peer} never caught up: {}", status(d, peer));
}

/// Reads a value of the restored store through a mount of it (no replica).
pub(crate) fn values(data: &Path, dir: &Path, peer: &str, keys: &[&str]) -> Vec<Option<String>> {
    let mnt = dir.join("mnt-check");
    let d = Daemon::start(data, &mnt, &dir.join("work-check"), &[]);
    let out = keys
        .iter()
        .map(|k| std::fs::read_to_string(d.p(&format!("{peer}/state/{k}"))).ok())
        .collect();
    stop(d);
    out
}

fn after_the_data_folder_is_deleted(rep: Rep, dir: &Path) {
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("alice")).unwrap();
    std::fs::write(d.p("alice/state/greeting"), "\"hello\"").unwrap();
    // Enough to grow the log past a checkpoint (4 MiB), and runs after it.
    let big = "x".repeat(200_000);
    for i in 0..30 {
        std::fs::write(d.p(&format!("alice/state/big{i}")), &big).unwrap();
    }
    for i in 0..20 {
        let v = run(
            &d,
            "alice",
            &format!("j{i}.rhai"),
            &format!("set(\"n{i}\", {i}); {i}"),
        );
        assert_eq!(v, i);
    }
    caught_up(&d, "alice");
    // After the checkpoint that shipping 6 MB of log brought, a change
    // begins the log anew.
    std::fs::remove_file(d.p("alice/state/big3")).unwrap();
    run(&d, "alice", "last.rhai", "set(\"last\", true); 0");
    caught_up(&d, "alice");
    stop(d);
    // The log was checkpointed (past 4 MiB) and began again: the replica
    // followed it into its next log.
    let known: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("replica/alice.json")).unwrap()).unwrap();
    assert!(known["log"].as_u64().unwrap() >= 1, "{known}");
    std::fs::remove_dir_all(&data).unwrap();
    let said = restore_ok(&rep, "alice", &data, &[]);
    assert!(said.contains("integrity ok"), "{said}");
    let got = values(
        &data,
        dir,
        "alice",
        &["greeting", "n0", "n19", "big3", "big29", "last"],
    );
    assert_eq!(got[0].as_deref(), Some("\"hello\""));
    assert_eq!(got[1].as_deref().map(str::trim), Some("0"));
    assert_eq!(got[2].as_deref().map(str::trim), Some("19"));
    assert_eq!(got[3], None, "big3 was removed before the last upload");
    assert_eq!(got[4].as_deref().map(str::len), Some(big.len()));
    assert_eq!(got[5].as_deref().map(str::trim), Some("true"));
    // The owner came back with the store.
    let md = std::fs::metadata(data.join("owners/alice")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.uid(), uid());
}

#[test]
fn a_peer_comes_back_from_a_folder_replica_after_its_data_folder_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    after_the_data_folder_is_deleted(Rep::file(dir.path()), dir.path());
}

#[test]
fn a_peer_comes_back_from_an_s3_replica_after_its_data_folder_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    after_the_data_folder_is_deleted(Rep::s3(dir.path()), dir.path());
}

fn as_of_an_earlier_time(rep: Rep, dir: &Path) {
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("bob")).unwrap();
    run(&d, "bob", "a.rhai", "set(\"a\", 1); 1");
    caught_up(&d, "bob");
    // S3 keeps times to the second: a time well between the two changes.
    std::thread::sleep(Duration::from_millis(1500));
    let between = now_rfc3339();
    std::thread::sleep(Duration::from_millis(1500));
    run(&d, "bob", "b.rhai", "set(\"b\", 2); 2");
    caught_up(&d, "bob");
    stop(d);
    let data2 = dir.join("data2");
    restore_ok(&rep, "bob", &data2, &["--at", &between]);
    assert_eq!(
        values(&data2, dir, "bob", &["a", "b"])
            .into_iter()
            .map(|v| v.map(|s| s.trim().to_string()))
            .collect::<Vec<_>>(),
        [Some("1".to_string()), None]
    );
    // A peer that exists is refused without --force, and nothing changes.
    let out = restore(&rep, "bob", &data2, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force"), "{err}");
    restore_ok(&rep, "bob", &data2, &["--force"]);
    let got = values(&data2, dir, "bob", &["a", "b"]);
    assert_eq!(got[1].as_deref().map(str::trim), Some("2"));
    let kept: Vec<_> = std::fs::read_dir(data2.join("removed"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sqlite"))
        .collect();
    assert_eq!(kept.len(), 1, "the earlier bob is kept in removed/");
    // Before the replica began: nothing to restore, said clearly.
    let out = restore(
        &rep,
        "bob",
        &dir.join("data3"),
        &["--at", "2001-01-01T00:00:00Z"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot stored by"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_restore_at_an_earlier_time_gives_the_peer_as_it_was_then_folder() {
    let dir = tempfile::tempdir().unwrap();
    as_of_an_earlier_time(Rep::file(dir.path()), dir.path());
}

#[test]
fn a_restore_at_an_earlier_time_gives_the_peer_as_it_was_then_s3() {
    let dir = tempfile::tempdir().unwrap();
    as_of_an_earlier_time(Rep::s3(dir.path()), dir.path());
}

/// The S3 server killed mid-stream (its objects are in memory: it comes back
/// empty): local work goes on, the status says so, the failure is logged once,
/// and when it is back the replica begins anew and holds everything.
#[test]
fn an_object_store_stopped_and_restarted_mid_stream_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut rep = Rep::s3(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("carol")).unwrap();
    for i in 0..10 {
        run(
            &d,
            "carol",
            &format!("a{i}.rhai"),
            &format!("set(\"a{i}\", {i}); {i}"),
        );
    }
    caught_up(&d, "carol");
    rep.moto().kill9();
    for i in 0..10 {
        run(
            &d,
            "carol",
            &format!("b{i}.rhai"),
            &format!("set(\"b{i}\", {i}); {i}"),
        );
    }
    let failing = wait_until(T, || !status(&d, "carol").ends_with(" error=-"));
    assert!(failing, "{}", status(&d, "carol"));
    let metrics = std::fs::read_to_string(d.p(".peerfs/metrics")).unwrap();
    assert!(
        metrics.contains("peerfs_replica_failing_peers 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("peerfs_replica_uploads_total "),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_millis(500));
    rep.moto().restart();
    caught_up(&d, "carol");
    run(&d, "carol", "c.rhai", "set(\"c\", 3); 3");
    caught_up(&d, "carol");
    let metrics = std::fs::read_to_string(d.p(".peerfs/metrics")).unwrap();
    assert!(
        metrics.contains("peerfs_replica_failing_peers 0\n"),
        "{metrics}"
    );
    let log = d.log_text();
    stop(d);
    assert_eq!(log.matches("replica: upload failing").count(), 1, "{log}");
    assert_eq!(
        log.matches("replica: uploads work again").count(),
        1,
        "{log}"
    );
    let data2 = dir.join("data2");
    restore_ok(&rep, "carol", &data2, &[]);
    let got = values(&data2, dir, "carol", &["a0", "a9", "b0", "b9", "c"]);
    assert!(got.iter().all(Option::is_some), "{got:?}");
}

#[test]
fn replica_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (opt, says) in [
        ("replica.url=http://x/y", "unknown scheme"),
        ("replica.url=s3://key:secret@bucket/p", "credentials"),
        ("replica.url=file://relative", "absolute"),
        ("replica.retention=7 weeks", "not a span of time"),
        ("replica.mode=sometimes", "mode"),
    ] {
        let out = Command::new(BIN)
            .args(["config", "show", "--data"])
            .arg(&data)
            .args(["-o", opt])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opt} was taken");
        assert!(err.contains(says), "{opt}: {err}");
    }
}

/// Writes a script into `peer`'s inbox; the close's outcome (where `sync`
/// mode's answer comes).
fn submit(d: &Daemon, peer: &str, name: &str, src: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(d.p(&format!("{peer}/inbox/{name}")))?;
    f.write_all(src.as_bytes())?;
    close(f)
}

/// `sync` mode: a close returns once the replica holds the submission (a
/// SIGKILL right after it loses nothing); with the object store away it
/// fails with ETIMEDOUT after the bound, and the submission is kept, runs,
/// and reaches the replica when the store is back.
#[test]
fn in_sync_mode_a_close_waits_for_the_replica_then_times_out_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut rep = Rep::s3(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let args = rep.daemon_args(&[
        "-o",
        "replica.mode=sync",
        "-o",
        "replica.sync_timeout_ms=1500",
    ]);
    let mut d = start(&data, &mnt, &work, &args);
    std::fs::create_dir(d.p("dave")).unwrap();
    submit(&d, "dave", "a.rhai", "set(\"a\", 1); 1").unwrap();
    d.kill9();
    drop(d);
    let data2 = dir.join("data2");
    restore_ok(&rep, "dave", &data2, &[]);
    let db = rusqlite::Connection::open(data2.join("peers/dave.sqlite")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT (SELECT count(*) FROM queue WHERE name='a.rhai') + (SELECT count(*) FROM runs WHERE name='a.rhai')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the acknowledged submission is in the replica");
    drop(db);
    // The object store away: the close fails after the bound, clearly.
    let d = start(&data, &mnt, &work, &args);
    rep.moto().kill9();
    let t0 = Instant::now();
    let e = submit(&d, "dave", "b.rhai", "set(\"b\", 2); 2").unwrap_err();
    assert_eq!(errno(&e), libc::ETIMEDOUT, "{e}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    // Nothing lost: it ran here, and reaches the replica once the store is back.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.p("dave/outbox/b.json")).unwrap()).unwrap();
    assert_eq!(v["value"], 2);
    rep.moto().restart();
    submit(&d, "dave", "c.rhai", "set(\"c\", 3); 3").unwrap();
    stop(d);
    let data3 = dir.join("data3");
    restore_ok(&rep, "dave", &data3, &[]);
    let got = values(&data3, dir, "dave", &["a", "b", "c"]);
    assert!(got.iter().all(Option::is_some), "{got:?}");
}

/// The crash harness with a replica: submissions in `sync` mode while the
/// daemon is SIGKILLed at random points, three times; a restore then holds
/// every acknowledged submission, and passes its integrity check.
#[test]
fn sigkill_at_random_then_restore_loses_nothing_acknowledged_in_sync_mode() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let args = rep.daemon_args(&["-o", "replica.mode=sync"]);
    let mut acked: Vec<u32> = Vec::new();
    let mut n = 0u32;
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for round in 0..3 {
        let d = start(&data, &mnt, &work, &args);
        if round == 0 {
            std::fs::create_dir(d.p("erin")).unwrap();
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(150 + (seed >> 33) % 600);
        let pid = d.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        loop {
            n += 1;
            match submit(
                &d,
                "erin",
                &format!("s{n}.rhai"),
                &format!("set(\"k{n}\", {n}); {n}"),
            ) {
                Ok(()) => acked.push(n),
                Err(_) => break,
            }
        }
        killer.join().unwrap();
        let mut d = d;
        let _ = d.wait(T);
        drop(d);
    }
    assert!(
        acked.len() > 5,
        "too few submissions acknowledged: {acked:?}"
    );
    eprintln!("{} submissions acknowledged over 3 kills", acked.len());
    let data2 = dir.join("data2");
    let said = restore_ok(&rep, "erin", &data2, &[]);
    assert!(said.contains("integrity ok"), "{said}");
    let db = rusqlite::Connection::open(data2.join("peers/erin.sqlite")).unwrap();
    let mut have = std::collections::HashSet::new();
    for sql in ["SELECT name FROM queue", "SELECT name FROM runs"] {
        let mut st = db.prepare(sql).unwrap();
        let names = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        have.extend(names.map(Result::unwrap));
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|n| !have.contains(&format!("s{n}.rhai")))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the replica: {missing:?}"
    );
}

/// `replica.sync_ms` of the async crash harness below.
const ASYNC_SYNC_MS: u64 = 500;

/// How much later than `sync_ms` before a kill an acknowledged submission may
/// still be missing from the replica. The thread `peerfs-replica` begins a
/// turn half a `sync_ms` after the last one began, or when its uploads end if
/// they took longer (`ship::take_dirty`), and a turn stores what the log held
/// when it read it. A commit just after turn k took its batch is read by turn
/// k+1 and stored when that turn's upload ends: at most
/// `max(sync_ms/2, upload of k) + upload of k+1` after it. With uploads within
/// half a `sync_ms` that is within `sync_ms`; the allowance is for the turn
/// that was uploading at the kill running over that half: a turn to a local
/// folder writes one object of the log's new pages (a few KiB per submission)
/// and the `.json` beside the data, and at worst (log past 4 MiB) checkpoints
/// the store under its write lock and uploads the tail, a few fsyncs on the
/// local disk. Measured over 21 kills (a loaded 2-core machine): the oldest
/// acknowledged submission a restore lacked was at most 270 ms before the kill
/// (half a `sync_ms` and 20 ms of upload), so 100 ms beyond `sync_ms` leaves
/// the upload several times what it took.
const ASYNC_UPLOAD_ALLOWANCE: Duration = Duration::from_millis(100);

/// The crash harness in `async` mode: a writer submits scripts without pause,
/// noting when each close returned, while the daemon is SIGKILLed at a random
/// moment, three times. After each kill a restore into a fresh data folder
/// passes its integrity check, holds every submission acknowledged more than
/// `sync_ms` (and the allowance above) before the kill, the earlier rounds'
/// all, and none twice.
#[test]
fn sigkill_at_random_then_restore_has_all_but_the_last_sync_ms_in_async_mode() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    // The run history keeps the last 500 runs (pruned every 1,024 runs of a
    // daemon, so within the test unless the machine is slow): a submission
    // whose run was pruned is found by its effect (its key).
    let mut args = rep.daemon_args(&["-o", "replica.mode=async", "-o", "run_retention=500"]);
    for a in args
        .iter_mut()
        .filter(|a| a.starts_with("replica.sync_ms="))
    {
        *a = format!("replica.sync_ms={ASYNC_SYNC_MS}");
    }
    let bound = Duration::from_millis(ASYNC_SYNC_MS) + ASYNC_UPLOAD_ALLOWANCE;
    // Every acknowledged submission and when its close returned.
    let mut acked: Vec<(u32, Instant)> = Vec::new();
    let mut n = 0u32;
    let mut seed = std::process::id() as u64 ^ 0x2545_f491_4f6c_dd1d;
    for round in 0..3 {
        let d = start(&data, &mnt, &work, &args);
        if round == 0 {
            std::fs::create_dir(d.p("jon")).unwrap();
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(1200 + (seed >> 33) % 1500);
        let pid = d.pid();
        let first = n + 1;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // Taken before the signal: a submission acknowledged before this
            // was acknowledged before the kill.
            let at = Instant::now();
            unsafe { libc::kill(pid, libc::SIGKILL) };
            at
        });
        loop {
            n += 1;
            let src = format!("set(\"k{n}\", {n}); {n}");
            match submit(&d, "jon", &format!("s{n}.rhai"), &src) {
                Ok(()) => acked.push((n, Instant::now())),
                Err(_) => break,
            }
        }
        let killed_at = killer.join().unwrap();
        let mut d = d;
        let _ = d.wait(T);
        drop(d);

        let restored = dir.join(format!("restored{round}"));
        let said = restore_ok(&rep, "jon", &restored, &[]);
        assert!(said.contains("integrity ok"), "{said}");
        let db = restored.join("peers/jon.sqlite");
        let runs = submissions(&db);
        let twice: Vec<_> = runs.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "present more than once: {twice:?}");
        let mut have = runs;
        for n in effects(&db) {
            have.entry(format!("s{n}.rhai")).or_insert(1);
        }
        let due: Vec<u32> = acked
            .iter()
            .filter(|(_, at)| *at + bound <= killed_at)
            .map(|(n, _)| *n)
            .collect();
        let missing: Vec<_> = due
            .iter()
            .filter(|n| !have.contains_key(&format!("s{n}.rhai")))
            .collect();
        // The oldest acknowledged submission the restore lacks, as measured.
        let oldest_missing = acked
            .iter()
            .find(|(n, _)| !have.contains_key(&format!("s{n}.rhai")))
            .map(|(_, at)| killed_at.saturating_duration_since(*at));
        eprintln!(
            "round {round}: killed after {kill_after:?}; {} acknowledged, {} due, restored {}; oldest acknowledged not restored: {oldest_missing:?} before the kill",
            acked.len(),
            due.len(),
            have.len()
        );
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged more than {bound:?} before the kill but not restored: {missing:?} (oldest missing {oldest_missing:?} before the kill)"
        );
        let this_round = due.iter().filter(|n| **n >= first).count();
        assert!(
            this_round > 10,
            "round {round}: too few submissions due: {due:?}"
        );
    }
}

/// Each submission's name in a store (queued or run) and how often it is there.
fn submissions(db: &Path) -> std::collections::HashMap<String, usize> {
    let db = rusqlite::Connection::open(db).unwrap();
    let mut have = std::collections::HashMap::new();
    for sql in ["SELECT name FROM queue", "SELECT name FROM runs"] {
        let mut st = db.prepare(sql).unwrap();
        let names = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        for name in names {
            *have.entry(name.unwrap()).or_insert(0) += 1;
        }
    }
    have
}

/// The submissions `s{n}.rhai` of the async harness whose run is in the state
/// (its key `k{n}` holds `n`): the run history (`runs`) keeps only the last
/// `run_retention` runs, the state every run's effect.
fn effects(db: &Path) -> Vec<u32> {
    let db = rusqlite::Connection::open(db).unwrap();
    let mut st = db
        .prepare("SELECT s.key, CAST(d.data AS TEXT) FROM state s JOIN state_data d ON d.id = s.id")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    rows.map(Result::unwrap)
        .filter_map(|(k, v)| {
            let n: u32 = k.strip_prefix('k')?.parse().ok()?;
            (v.trim() == n.to_string()).then_some(n)
        })
        .collect()
}

/// A store changed while no replica watched it (another program wrote and
/// checkpointed it): the next start ships it as a new generation, never as a
/// log with a gap, and a restore has the change.
#[test]
fn a_store_changed_behind_the_replicas_back_begins_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("frank")).unwrap();
    run(&d, "frank", "a.rhai", "set(\"a\", 1); 1");
    caught_up(&d, "frank");
    stop(d);
    let db = rusqlite::Connection::open(data.join("peers/frank.sqlite")).unwrap();
    db.execute(
        "INSERT INTO modules(name, source, mtime) VALUES('offline', CAST('42' AS BLOB), 0)",
        [],
    )
    .unwrap();
    drop(db);
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    caught_up(&d, "frank");
    stop(d);
    let Rep::File(root) = &rep else {
        unreachable!()
    };
    let snapshots = std::fs::read_dir(root.join("frank"))
        .unwrap()
        .filter(|g| g.as_ref().unwrap().path().join("snapshot").exists())
        .count();
    assert_eq!(snapshots, 2);
    let data2 = dir.join("data2");
    restore_ok(&rep, "frank", &data2, &[]);
    let db = rusqlite::Connection::open(data2.join("peers/frank.sqlite")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM modules WHERE name='offline'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn objects(root: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), n);
            } else {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    n
}

/// Peers with nothing new cost the object store nothing: no object is
/// stored for them, turn after turn, while a busy neighbour's are.
#[test]
fn idle_peers_cost_no_requests() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    for p in ["gina", "hal", "ivy"] {
        std::fs::create_dir(d.p(p)).unwrap();
        run(&d, p, "a.rhai", "set(\"a\", 1); 1");
        caught_up(&d, p);
    }
    let Rep::File(root) = &rep else {
        unreachable!()
    };
    let (hal, ivy) = (objects(&root.join("hal")), objects(&root.join("ivy")));
    let uploads = |peer: &str| {
        status(&d, peer)
            .split(" uploads=")
            .nth(1)
            .map(|s| s.split(' ').next().unwrap().to_string())
    };
    let before = (uploads("hal"), uploads("ivy"));
    for i in 0..10 {
        run(&d, "gina", &format!("b{i}.rhai"), "1");
        std::thread::sleep(Duration::from_millis(100));
    }
    caught_up(&d, "gina");
    assert_eq!((uploads("hal"), uploads("ivy")), before);
    assert_eq!(
        (objects(&root.join("hal")), objects(&root.join("ivy"))),
        (hal, ivy)
    );
    assert!(
        objects(&root.join("gina")) > hal,
        "the busy peer's turns stored objects"
    );
    stop(d);
}

/// A write to a store that no commit of the daemon announced (here another
/// connection's) is found by the periodic look at the logs and shipped.
#[test]
fn a_write_no_commit_announced_is_shipped_by_the_periodic_look() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("kim")).unwrap();
    run(&d, "kim", "a.rhai", "set(\"a\", 1); 1");
    caught_up(&d, "kim");
    let uploads = || {
        status(&d, "kim")
            .split(" uploads=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = uploads();
    let db = rusqlite::Connection::open(data.join("peers/kim.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO modules(name, source, mtime) VALUES('aside', CAST('7' AS BLOB), 0)",
        [],
    )
    .unwrap();
    let shipped = wait_until(Duration::from_secs(30), || uploads() > before);
    assert!(shipped, "{}", status(&d, "kim"));
    drop(db);
    stop(d);
    let data2 = dir.join("data2");
    restore_ok(&rep, "kim", &data2, &[]);
    let db = rusqlite::Connection::open(data2.join("peers/kim.sqlite")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM modules WHERE name='aside'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1);
}

/// A restore from a folder that is not there, or of a peer the replica does
/// not hold, says so and makes nothing.
#[test]
fn a_restore_from_nothing_is_refused_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let missing = Rep::File(dir.join("no-such-replica"));
    let data = dir.join("data");
    let out = restore(&missing, "zed", &data, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.join("no-such-replica").exists());
    std::fs::create_dir(dir.join("empty")).unwrap();
    let out = restore(&Rep::File(dir.join("empty")), "zed", &data, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no peer"), "{err}");
    assert!(!data.join("peers/zed.sqlite").exists());
}

/// A restore where only the peer's old log is left (its store file was
/// deleted) keeps that log aside: SQLite would lay it over the restored file.
#[test]
fn a_log_left_without_its_store_is_kept_aside_at_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let d = start(&data, &mnt, &work, &rep.daemon_args(&[]));
    std::fs::create_dir(d.p("lou")).unwrap();
    run(&d, "lou", "a.rhai", "set(\"a\", 1); 1");
    caught_up(&d, "lou");
    // Killed: the log (not checkpointed) stays beside the store.
    let mut d = d;
    d.kill9();
    drop(d);
    assert!(data.join("peers/lou.sqlite-wal").exists());
    std::fs::remove_file(data.join("peers/lou.sqlite")).unwrap();
    restore_ok(&rep, "lou", &data, &[]);
    assert!(!data.join("peers/lou.sqlite-wal").exists());
    let kept = std::fs::read_dir(data.join("removed"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".sqlite-wal"));
    assert!(kept);
    let got = values(&data, dir, "lou", &["a"]);
    assert_eq!(got[0].as_deref().map(str::trim), Some("1"));
}

pub(crate) fn fenced_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("replica: fenced: peer alice moved"))
        .collect()
}

const COUNT: &str = r#"let c = (get("c") ?? 0) + 1; set("c", c); c"#;

/// A peer taken over by another worker (restored from the replica there)
/// while its old worker still runs: the new worker takes the replica's lease
/// at a later epoch; the old one's next upload finds it superseded, uploads
/// nothing more and stops serving the peer, also after a restart; the
/// replica holds the new worker's state, nothing of the old one's after the
/// takeover.
fn a_stale_worker_is_fenced(rep: Rep, dir: &Path) {
    let p = |s: &str| dir.join(s);
    let args = rep.daemon_args(&[]);
    let a = start(&p("data-a"), &p("mnt-a"), &p("work-a"), &args);
    std::fs::create_dir(a.p("alice")).unwrap();
    for i in 1..=3 {
        assert_eq!(run(&a, "alice", &format!("a{i}.rhai"), COUNT), i);
    }
    caught_up(&a, "alice");
    assert_eq!(
        std::fs::read_to_string(p("data-a/replica/alice.lease"))
            .unwrap()
            .trim(),
        "1",
        "the first worker holds epoch 1"
    );

    // Taken over: restored at b, which takes the lease when alice opens.
    restore_ok(&rep, "alice", &p("data-b"), &[]);
    let b = start(&p("data-b"), &p("mnt-b"), &p("work-b"), &args);
    assert_eq!(run(&b, "alice", "b1.rhai", COUNT), 4, "state intact at b");
    caught_up(&b, "alice");
    assert_eq!(
        std::fs::read_to_string(p("data-b/replica/alice.lease"))
            .unwrap()
            .trim(),
        "2"
    );

    // The old worker still runs alice (its store is its own), but its upload
    // is refused: one clear line, then alice is not served there. Its next
    // upload may come before a4 (a commit of its own after the last run, such
    // as history's pruning), and then a4 is refused already.
    match std::fs::write(a.p("alice/inbox/a4.rhai"), COUNT)
        .and_then(|()| std::fs::read(a.p("alice/outbox/a4.json")))
    {
        Ok(out) => {
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["value"], 4, "{v}");
        }
        Err(e) => {
            assert_eq!(errno(&e), libc::ESTALE, "a4 at the old worker: {e}");
            assert!(a.log_text().contains("replica: fenced"), "{}", a.log_text());
        }
    }
    let fenced = wait_until(T, || a.log_text().contains("replica: fenced"));
    assert!(fenced, "a was not fenced: {}", a.log_text());
    let log = a.log_text();
    let lines = fenced_lines(&log);
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert!(lines[0].contains("epoch 2"), "{}", lines[0]);
    assert!(status(&a, "alice").contains("error=peer alice moved"));
    let r = std::fs::write(a.p("alice/inbox/a5.rhai"), COUNT);
    expect_errno(r, libc::ESTALE, "a drop at the fenced worker");
    stop(a);

    // Restarted with its old copy and its old epoch: still fenced at the
    // first open of alice, before anything runs.
    let a = start(&p("data-a"), &p("mnt-a"), &p("work-a"), &args);
    let r = std::fs::write(a.p("alice/inbox/a6.rhai"), COUNT);
    expect_errno(r, libc::ESTALE, "a drop at the restarted old worker");
    let r = std::fs::read_to_string(a.p("alice/state/c"));
    expect_errno(r, libc::ESTALE, "a read at the restarted old worker");
    assert_eq!(fenced_lines(&a.log_text()).len(), 1, "{}", a.log_text());
    stop(a);

    // b goes on; the replica holds b's count, none of a's after the takeover.
    assert_eq!(run(&b, "alice", "b2.rhai", COUNT), 5);
    caught_up(&b, "alice");
    stop(b);
    restore_ok(&rep, "alice", &p("data-c"), &[]);
    let got = values(&p("data-c"), dir, "alice", &["c"]);
    assert_eq!(got[0].as_deref().map(str::trim), Some("5"));
}

#[test]
fn a_stale_worker_is_fenced_by_a_folder_replica() {
    let dir = tempfile::tempdir().unwrap();
    a_stale_worker_is_fenced(Rep::file(dir.path()), dir.path());
}

#[test]
fn a_stale_worker_is_fenced_by_an_s3_replica() {
    let dir = tempfile::tempdir().unwrap();
    a_stale_worker_is_fenced(Rep::s3(dir.path()), dir.path());
}

/// In `async` mode a submission to a peer whose actor is running a script
/// commits in the peer's store (replicated), not in the intake journal (which
/// is not): its close waits for that run, and a restore after a SIGKILL
/// `sync_ms` (and the allowance) after the close has it.
#[test]
fn in_async_mode_a_submission_during_a_run_is_in_the_replica_sync_ms_after_its_close() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rep = Rep::file(dir);
    let (data, mnt, work) = (dir.join("data"), dir.join("mnt"), dir.join("work"));
    let mut args = rep.daemon_args(&[
        "-o",
        "limits.own.max_wall_ms=1500",
        "-o",
        "limits.own.max_operations=1000000000000",
    ]);
    for a in args
        .iter_mut()
        .filter(|a| a.starts_with("replica.sync_ms="))
    {
        *a = format!("replica.sync_ms={ASYNC_SYNC_MS}");
    }
    let mut d = start(&data, &mnt, &work, &args);
    std::fs::create_dir(d.p("pat")).unwrap();
    run(&d, "pat", "a.rhai", "set(\"a\", 1); 1");
    // Runs until its wall limit; its own close waits for it.
    let slow = d.p("pat/inbox/slow.rhai");
    let looping = std::thread::spawn(move || std::fs::write(slow, "let n = 0; loop { n += 1; }"));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    for i in 0..5 {
        submit(&d, "pat", &format!("f{i}.rhai"), "set(\"f\", 1); 1").unwrap();
    }
    let waited = t0.elapsed();
    std::thread::sleep(Duration::from_millis(ASYNC_SYNC_MS) + ASYNC_UPLOAD_ALLOWANCE);
    d.kill9();
    drop(d);
    looping.join().unwrap().unwrap();
    let data2 = dir.join("data2");
    let said = restore_ok(&rep, "pat", &data2, &[]);
    assert!(said.contains("integrity ok"), "{said}");
    let have = submissions(&data2.join("peers/pat.sqlite"));
    for name in [
        "a.rhai",
        "slow.rhai",
        "f0.rhai",
        "f1.rhai",
        "f2.rhai",
        "f3.rhai",
        "f4.rhai",
    ] {
        assert_eq!(
            have.get(name),
            Some(&1),
            "{name} in the restored peer: {have:?}"
        );
    }
    assert!(
        waited >= Duration::from_millis(800),
        "the closes did not wait for the run: {waited:?}"
    );
}
