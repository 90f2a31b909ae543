//! A spool worker (`peerfs serve --spool`) in a lattice works like a mounted one:
//! a drop into its `peers/<remote>/inbox/` runs at the remote peer exactly once
//! (also across a crash between the intake's commit and the file's removal), the
//! result comes back into `peers/<remote>/outbox/`, and its `peers/` follows the
//! lattice's directory. One nats-server per test (free loopback port, temporary
//! store, configuration from `peerfs lattice init`), stopped by pid.

use crate::common;
use crate::lattice_support as support;
use crate::spool_support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{q, sh_ok, wait_until, Daemon};
use spool_support::names;
use support::{create_peer, join_args, Setup, QUICK};

const LATTICE: &str = "t";

/// w1 (a mount) serves alice and may serve carol; w2 (the spool) serves bob and
/// may serve dave.
struct Lab(Setup);

impl std::ops::Deref for Lab {
    type Target = Setup;
    fn deref(&self) -> &Setup {
        &self.0
    }
}

impl Lab {
    fn new() -> Lab {
        Lab(Setup::new(
            LATTICE,
            &["w1=alice,carol", "w2=bob,dave"],
            &[("d1", "alice"), ("d2", "bob")],
        ))
    }

    /// alice's mount (w1), with a policy that lets bob run, read and write there.
    fn mount(&self) -> Daemon {
        let mut args = join_args(&self.nats.url(), &self.p("nats/w1.creds"), LATTICE);
        args.extend(QUICK.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = Daemon::start(&self.p("d1"), &self.p("md1"), &self.p("wd1"), &args);
        fs::write(a.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
        a
    }

    fn spool_dir(&self) -> PathBuf {
        self.p("spool")
    }

    /// bob's spool (w2), with `env` set; waits until it watches.
    fn spool(&self, env: &[(&str, &str)]) -> Daemon {
        let spool = self.spool_dir();
        let (creds, data, url) = (self.p("nats/w2.creds"), self.p("d2"), self.nats.url());
        let join = join_args(&url, &creds, LATTICE);
        let mut args: Vec<&OsStr> = vec![
            "serve".as_ref(),
            "--spool".as_ref(),
            spool.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        args.extend(join.iter().map(std::ffi::OsStr::new));
        args.extend(["-o", "lattice.ack_wait_ms=1000"].map(OsStr::new));
        let mut d = Daemon::spawn_env(&args, &spool, &self.p("ws"), env);
        let up = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("peerfs serve exited early ({st}): {}", d.log_text());
            }
            d.log_text().contains("spool watching")
        });
        assert!(up, "peerfs serve did not come up: {}", d.log_text());
        d
    }
}

const ALICE_POLICY: &str = r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"read", Action::"write"], resource);"#;

/// A script that counts its runs at its target (state key `n` there).
const COUNT: &str = r#"set("n", (get("n") ?? 0) + 1); caller.name + " at " + target.name"#;

/// The JSON result at `path` once it is there (a spool result appears whole).
#[track_caller]
fn wait_result(path: &Path, timeout: Duration, d: &Daemon) -> serde_json::Value {
    let mut v = None;
    let ok = wait_until(timeout, || {
        v = fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("a result file is whole JSON"));
        v.is_some()
    });
    assert!(
        ok,
        "no result at {} within {timeout:?}: {}",
        path.display(),
        d.log_text()
    );
    v.unwrap()
}

/// alice's `n` as her mount shows it.
fn count(a: &Daemon) -> Option<i64> {
    fs::read_to_string(a.mnt.join("alice/state/n"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_drop_into_a_remote_peers_inbox_runs_there_once() {
    let lab = Lab::new();
    let a = lab.mount();
    let s = lab.spool(&[]);
    let sp = lab.spool_dir();
    let inbox = sp.join("bob/peers/alice/inbox");
    let outbox = sp.join("bob/peers/alice/outbox");
    assert!(
        wait_until(Duration::from_secs(20), || inbox.is_dir()),
        "the spool's peers/ does not show alice: {}",
        s.log_text()
    );

    // cp: written in place and closed.
    let src = lab.p("count.rhai");
    fs::write(&src, COUNT).unwrap();
    sh_ok(&format!("cp {} {}", q(&src), q(&inbox.join("cp.rhai"))));
    let v = wait_result(&outbox.join("cp.json"), Duration::from_secs(20), &s);
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["value"], "bob at alice", "{v}");
    assert!(
        wait_until(Duration::from_secs(5), || names(&inbox).is_empty()),
        "the script stays in the inbox: {:?}",
        names(&inbox)
    );

    // mv of a dot-named (staging) file: renamed in.
    fs::write(inbox.join(".mv.rhai"), COUNT).unwrap();
    sh_ok(&format!(
        "mv {} {}",
        q(&inbox.join(".mv.rhai")),
        q(&inbox.join("mv.rhai"))
    ));
    let v = wait_result(&outbox.join("mv.json"), Duration::from_secs(20), &s);
    assert_eq!(v["value"], "bob at alice", "{v}");
    assert!(wait_until(Duration::from_secs(5), || names(&inbox).is_empty()));

    // Each ran once at alice.
    assert!(
        wait_until(Duration::from_secs(5), || count(&a) == Some(2)),
        "alice's n: {:?}",
        count(&a)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&a), Some(2), "a drop ran twice");
    // bob's log says what was sent.
    let log = fs::read_to_string(sp.join("bob/log")).unwrap();
    assert!(log.contains(" cp.rhai to alice"), "{log}");
    assert!(log.contains(" mv.rhai to alice"), "{log}");
    // alice's log shows bob as the caller of both.
    let alog = fs::read_to_string(a.mnt.join("alice/log")).unwrap();
    let received = alog
        .lines()
        .filter(|l| l.contains(" receive ") && l.contains("caller=bob"))
        .count();
    assert_eq!(received, 2, "{alog}");
}

#[test]
fn the_spools_peers_follow_the_lattice_directory() {
    let lab = Lab::new();
    let a = lab.mount();
    let s = lab.spool(&[]);
    let sp = lab.spool_dir();
    assert!(wait_until(Duration::from_secs(20), || sp
        .join("bob/peers/alice/inbox")
        .is_dir()));
    assert!(!sp.join("bob/peers/carol").exists());

    // A peer made at the other worker appears under the spool's peers/.
    fs::create_dir(a.mnt.join("carol")).unwrap();
    for sub in ["inbox", "outbox", "state"] {
        let d = sp.join("bob/peers/carol").join(sub);
        assert!(
            wait_until(Duration::from_secs(10), || d.is_dir()),
            "{} did not appear: {}",
            d.display(),
            s.log_text()
        );
    }
    fs::write(
        a.mnt.join("carol/policy.cedar"),
        r#"permit(principal == Peer::"bob", action == Action::"run", resource);"#,
    )
    .unwrap();
    // And takes drops like any other.
    fs::write(
        sp.join("bob/peers/carol/inbox/hi.rhai"),
        "caller.name + \" at \" + target.name",
    )
    .unwrap();
    let v = wait_result(
        &sp.join("bob/peers/carol/outbox/hi.json"),
        Duration::from_secs(20),
        &s,
    );
    assert_eq!(v["value"], "bob at carol", "{v}");

    // A peer made at the spool (mkdir) is claimed, laid out beside the others,
    // and seen by the other worker.
    fs::create_dir(sp.join("dave")).unwrap();
    for d in [
        sp.join("dave/peers/alice/inbox"),
        sp.join("dave/peers/carol/inbox"),
        sp.join("dave/peers/bob/inbox"),
        sp.join("bob/peers/dave/inbox"),
    ] {
        assert!(
            wait_until(Duration::from_secs(10), || d.is_dir()),
            "{} did not appear: {}",
            d.display(),
            s.log_text()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || names(
            &a.mnt.join("alice/peers")
        )
        .contains(&"dave".to_string())),
        "alice's mount does not list dave: {:?}",
        names(&a.mnt.join("alice/peers"))
    );
}

#[test]
fn a_crash_after_the_intake_committed_sends_once() {
    let lab = Lab::new();
    let a = lab.mount();
    let marker = "CRASH-AFTER-TAKE";
    let mut s = lab.spool(&[("PEERFS_TEST_ABORT_AFTER_TAKE", marker)]);
    let sp = lab.spool_dir();
    let inbox = sp.join("bob/peers/alice/inbox");
    assert!(wait_until(Duration::from_secs(20), || inbox.is_dir()));

    let stage = inbox.join(".crash.rhai");
    fs::write(&stage, format!("// {marker}\n{COUNT}")).unwrap();
    fs::rename(&stage, inbox.join("crash.rhai")).unwrap();
    // The daemon aborts once the send is committed, before the file leaves.
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(s.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    });
    assert!(exited, "the test hook did not fire: {}", s.log_text());
    assert!(
        s.log_text().contains("PEERFS_TEST_ABORT_AFTER_TAKE"),
        "{}",
        s.log_text()
    );
    s.child.take();
    assert_eq!(names(&inbox), ["crash.rhai"]);

    // The restart recognises the file as sent: removed, not sent again.
    let s = lab.spool(&[]);
    let v = wait_result(
        &sp.join("bob/peers/alice/outbox/crash.json"),
        Duration::from_secs(20),
        &s,
    );
    assert_eq!(v["value"], "bob at alice", "{v}");
    assert!(wait_until(Duration::from_secs(5), || names(&inbox).is_empty()));
    assert!(
        s.log_text()
            .contains("already submitted before the restart"),
        "{}",
        s.log_text()
    );
    assert!(wait_until(Duration::from_secs(10), || count(&a) == Some(1)));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&a), Some(1), "the crashed drop ran twice");
    let log = fs::read_to_string(sp.join("bob/log")).unwrap();
    assert_eq!(log.matches(" crash.rhai to alice").count(), 1, "{log}");

    // SIGKILL right after a burst of drops (wherever it lands: before the take,
    // between the commit and the removal, after): each runs once all the same.
    let mut s = s;
    let burst: Vec<String> = (0..6).map(|i| format!("k{i}.rhai")).collect();
    for n in &burst {
        let stage = inbox.join(format!(".{n}"));
        fs::write(&stage, COUNT).unwrap();
        fs::rename(&stage, inbox.join(n)).unwrap();
    }
    s.kill9();
    let s = lab.spool(&[]);
    for n in &burst {
        let res = sp
            .join("bob/peers/alice/outbox")
            .join(n.replace(".rhai", ".json"));
        let v = wait_result(&res, Duration::from_secs(30), &s);
        assert_eq!(v["value"], "bob at alice", "{v}");
    }
    assert!(wait_until(Duration::from_secs(5), || names(&inbox).is_empty()));
    let want = Some(1 + burst.len() as i64);
    assert!(wait_until(Duration::from_secs(10), || count(&a) == want));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&a), want, "a drop ran twice after SIGKILL");
}

#[test]
fn without_a_lattice_a_drop_to_an_unknown_peer_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (data, sp) = (t.path().join("data"), t.path().join("spool"));
    create_peer(&data, "bob");
    let args: Vec<&OsStr> = vec![
        "serve".as_ref(),
        "--spool".as_ref(),
        sp.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    let mut s = Daemon::spawn(&args, &sp, &t.path().join("w"));
    assert!(wait_until(Duration::from_secs(20), || s
        .log_text()
        .contains("spool watching")));
    let inbox = sp.join("bob/peers/zed/inbox");
    fs::create_dir_all(&inbox).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(inbox.join("x.rhai"), "1").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || names(&inbox)
            == ["x.rhai.refused~"]),
        "{:?}: {}",
        names(&inbox),
        s.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(
            sp.join("bob/log")
        )
        .unwrap_or_default()
        .contains("x.rhai refused: no peer zed here")),
        "{}",
        fs::read_to_string(sp.join("bob/log")).unwrap_or_default()
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(20)).success());
}

/// A lattice as the spool sees it, in process: a directory the test changes, and
/// a transport that keeps what it is handed (acknowledged, as JetStream would).
struct FakeLattice {
    peers: std::sync::Mutex<Vec<String>>,
    sent: std::sync::Mutex<Vec<peerfs::store::Message>>,
}

impl peerfs::exec::Transport for FakeLattice {
    fn deliver(&self, _from: &str, msg: peerfs::store::Message, ack: peerfs::exec::DeliveryAck) {
        self.sent.lock().unwrap().push(msg);
        ack(peerfs::exec::Delivery::Taken)
    }
    fn spans_daemons(&self) -> bool {
        true
    }
    fn serves_elsewhere(&self, peer: &str) -> bool {
        self.peers.lock().unwrap().iter().any(|p| p == peer)
    }
    fn remote_peers(&self) -> Vec<String> {
        self.peers.lock().unwrap().clone()
    }
    // A remote peer that lets bob read nothing.
    fn remote_view_list(
        &self,
        _owner: &str,
        _reader: &str,
        _dir: &str,
    ) -> peerfs::Result<Vec<peerfs::store::DirEntry>> {
        Ok(Vec::new())
    }
}

#[test]
fn peers_follow_the_directory_both_ways_and_a_remote_drop_leaves_once() {
    let t = tempfile::tempdir().unwrap();
    let (data, sp) = (t.path().join("data"), t.path().join("spool"));
    let mut cfg = peerfs::exec::Config::new(&data);
    cfg.runners = 2;
    let core = peerfs::exec::Core::start(cfg).unwrap();
    core.create_peer("bob", common::uid(), common::gid())
        .unwrap();
    let lattice = std::sync::Arc::new(FakeLattice {
        peers: std::sync::Mutex::new(vec!["alice".into()]),
        sent: Default::default(),
    });
    core.set_transport(lattice.clone());
    let mut spool = peerfs::spool::Spool::start(core.clone(), &sp).unwrap();
    let view = |p: &str| sp.join("bob/peers").join(p);
    assert!(view("alice").join("inbox").is_dir());

    // A drop for alice becomes one message from bob, recorded with the take.
    fs::write(view("alice").join("inbox/job.rhai"), "40 + 2").unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        names(&view("alice").join("inbox")).is_empty()
    }));
    assert!(wait_until(Duration::from_secs(5), || lattice
        .sent
        .lock()
        .unwrap()
        .len()
        == 1));
    {
        let sent = lattice.sent.lock().unwrap();
        assert_eq!(
            (sent[0].to.as_str(), sent[0].name.as_str()),
            ("alice", "job.rhai")
        );
        assert_eq!(sent[0].source, b"40 + 2");
    }

    // A remote peer's state mirror holds what its worker lets bob read (here
    // nothing): what is put there is undone.
    let stray = view("alice").join("state/x");
    fs::write(&stray, "1").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !stray.exists()),
        "a file in peers/alice/state/ stays"
    );
    assert!(wait_until(Duration::from_secs(5), || fs::read_to_string(
        sp.join("bob/log")
    )
    .unwrap_or_default()
    .contains("new file state/x removed of peers/alice")));

    // The directory changes: carol comes, alice goes.
    *lattice.peers.lock().unwrap() = vec!["carol".into()];
    assert!(
        wait_until(Duration::from_secs(5), || view("carol")
            .join("outbox")
            .is_dir()
            && !view("alice").exists()),
        "bob/peers: {:?}",
        names(&sp.join("bob/peers"))
    );

    // A peer made here (mkdir) sees the remote ones too.
    fs::create_dir(sp.join("dave")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || sp
        .join("dave/peers/carol/inbox")
        .is_dir()
        && sp.join("dave/peers/bob/inbox").is_dir()));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(lattice.sent.lock().unwrap().len(), 1, "sent twice");
    spool.stop();
    core.shutdown();
    spool.finish();
}

/// The spool's `peers/<remote>/state/` mirrors what the remote peer's policy lets
/// the viewer read, as the mount's view does: polled from the owner's worker,
/// following changes of the values and of the policy, read-only (what is put
/// there from outside is undone).
#[test]
fn the_spools_view_of_a_remote_peers_state_follows_its_policy() {
    let lab = Lab::new();
    let a = lab.mount();
    let policy = |glob: &str| {
        format!(
            r#"permit(principal == Peer::"bob", action == Action::"read", resource) when {{ resource.key like "{glob}" }};"#
        )
    };
    fs::write(a.mnt.join("alice/policy.cedar"), policy("pub/*")).unwrap();
    fs::create_dir_all(a.mnt.join("alice/state/pub/deep")).unwrap();
    fs::write(a.mnt.join("alice/state/pub/x"), "one").unwrap();
    fs::write(a.mnt.join("alice/state/pub/deep/y"), "two").unwrap();
    fs::write(a.mnt.join("alice/state/secret"), "no").unwrap();
    let s = lab.spool(&[]);
    let view = lab.spool_dir().join("bob/peers/alice/state");
    let read = |rel: &str| fs::read_to_string(view.join(rel)).ok();
    assert!(
        wait_until(Duration::from_secs(20), || read("pub/x").as_deref()
            == Some("one")),
        "pub/x not mirrored: {}",
        s.log_text()
    );
    assert_eq!(read("pub/deep/y").as_deref(), Some("two"));
    assert!(
        !view.join("secret").exists(),
        "an unreadable key is mirrored"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(view.join("pub/x"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);

    // A value changed at alice shows.
    fs::write(a.mnt.join("alice/state/pub/x"), "uno").unwrap();
    assert!(wait_until(Duration::from_secs(10), || read("pub/x")
        .as_deref()
        == Some("uno")));
    // What is put there from outside is undone, with a line in bob's log.
    fs::write(view.join("pub/mine"), "x").unwrap();
    assert!(wait_until(Duration::from_secs(10), || !view
        .join("pub/mine")
        .exists()));
    assert!(wait_until(Duration::from_secs(5), || fs::read_to_string(
        lab.spool_dir().join("bob/log")
    )
    .unwrap_or_default()
    .contains("new file state/pub/mine removed")));
    // The policy narrows: what it no longer lets bob read leaves the mirror.
    fs::write(a.mnt.join("alice/policy.cedar"), policy("pub/deep/*")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || read("pub/x").is_none()));
    assert_eq!(read("pub/deep/y").as_deref(), Some("two"));
    drop(s);
    drop(a);
}

/// The spool's `peers/<remote>/tables/` mirrors the rows the remote peer's policy
/// lets the viewer select, polled from the owner's worker like `state/`.
#[test]
fn the_spools_view_of_a_remote_peers_tables_follows_its_policy() {
    let lab = Lab::new();
    let a = lab.mount();
    let alice = a.mnt.join("alice");
    fs::write(
        alice.join("schema.toml"),
        "[tables.notes]\nkey = \"string\"\nfields.title = { type = \"string\" }\nfields.pinned = { type = \"bool\", default = false }\n",
    )
    .unwrap();
    fs::write(
        alice.join("tables/notes/a.json"),
        r#"{"title": "public", "pinned": true}"#,
    )
    .unwrap();
    fs::write(alice.join("tables/notes/b.json"), r#"{"title": "private"}"#).unwrap();
    fs::write(
        alice.join("policy.cedar"),
        r#"permit(principal == Peer::"bob", action == Action::"select", resource is Table::notes) when { resource.pinned };"#,
    )
    .unwrap();
    let s = lab.spool(&[]);
    let view = lab.spool_dir().join("bob/peers/alice/tables");
    assert!(
        wait_until(Duration::from_secs(20), || names(&view.join("notes"))
            == ["a.json"]),
        "notes not mirrored: {:?} {}",
        names(&view),
        s.log_text()
    );
    assert_eq!(names(&view), ["notes", "notes.jsonl"]);
    assert_eq!(
        fs::read(view.join("notes/a.json")).unwrap(),
        fs::read(alice.join("tables/notes/a.json")).unwrap()
    );
    let all = fs::read_to_string(view.join("notes.jsonl")).unwrap();
    assert!(
        all.lines().count() == 1 && !all.contains("private"),
        "{all}"
    );
    // A row alice pins shows; what is put there from outside is undone.
    fs::write(
        alice.join("tables/notes/b.json"),
        r#"{"title": "private", "pinned": true}"#,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || names(
        &view.join("notes")
    ) == [
        "a.json", "b.json"
    ]));
    fs::write(view.join("notes/zz.json"), "{}").unwrap();
    assert!(wait_until(Duration::from_secs(10), || !view
        .join("notes/zz.json")
        .exists()));
    assert!(wait_until(Duration::from_secs(5), || fs::read_to_string(
        lab.spool_dir().join("bob/log")
    )
    .unwrap_or_default()
    .contains("new file tables/notes/zz.json removed of peers/alice")));
    drop(s);
    drop(a);
}
