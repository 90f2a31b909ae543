//! Moving a peer to another worker (docs/lattice.md, "Moving a peer"): real mounts,
//! one nats-server of the test's own (free loopback port, temporary store,
//! configuration from `peerfs lattice init`), everything stopped by pid.

use crate::common;
use crate::lattice_support as support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_until, Daemon};
use support::{init, join_args, ls, state_int, value, Nats, QUICK};

const LATTICE: &str = "mv";

struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    nats: Nats,
}

impl Lab {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn creds(&self, worker: &str) -> PathBuf {
        self.p(&format!("nats/{worker}.creds"))
    }

    fn args(&self, worker: &str) -> Vec<String> {
        let mut args = join_args(&self.nats.url(), &self.creds(worker), LATTICE);
        args.extend(QUICK.map(String::from));
        args
    }

    /// `peerfs mount` of data folder `n` with `worker`'s credentials.
    fn mount(&self, n: &str, worker: &str) -> Daemon {
        let args = self.args(worker);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(
            &self.p(n),
            &self.p(&format!("m{n}")),
            &self.p(&format!("w{n}")),
            &args,
        )
    }

    /// The same, expected to refuse to start; returns its log.
    fn mount_refused(&self, n: &str, worker: &str) -> String {
        let mnt = self.p(&format!("m{n}-refused"));
        fs::create_dir_all(&mnt).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .arg("mount")
            .arg(&mnt)
            .arg("--data")
            .arg(self.p(n))
            .args(self.args(worker))
            .env("RUST_LOG", "peerfs=info")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the old worker started with its peer"
        );
        assert!(!common::is_mounted(&mnt), "it mounted anyway");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `peerfs lattice release PEER --to TO` with `worker`'s credentials.
    fn release(&self, peer: &str, to: &str, worker: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .args(["lattice", "release", peer, "--to", to, "--nats"])
            .arg(self.nats.url())
            .arg("--nats-creds")
            .arg(self.creds(worker))
            .args(["--lattice", LATTICE])
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// bob sends `n` scripts to alice, each counting its run and recording its name.
fn send_many(bob: &Daemon, name: &str, n: usize) {
    let script = format!(
        r#"for i in 0..{n} {{ send("alice", "set(\"c\", (get(\"c\") ?? 0) + 1); set(\"m/{name}-\" + caller.params.i, 1);", #{{ i: i }}); }} "queued""#
    );
    fs::write(bob.mnt.join(format!("bob/inbox/{name}.rhai")), script).unwrap();
    assert_eq!(
        value(&bob.mnt.join(format!("bob/outbox/{name}.json"))),
        "queued"
    );
}

/// Results of `name`'s messages back at bob.
fn results(bob: &Daemon, name: &str) -> Vec<String> {
    ls(&bob.mnt.join("bob/peers/alice/outbox"))
        .into_iter()
        .filter(|f| f.starts_with(&format!("{name}-")))
        .collect()
}

const ALICE_POLICY: &str = r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"read", Action::"write"], resource);"#;

#[test]
fn a_moved_peer_keeps_receiving_each_message_once() {
    let s = support::Setup::new(
        LATTICE,
        &["w1=alice", "w2=bob", "w3="],
        &[("d1", "alice"), ("d2", "bob")],
    );
    let nats_dir = s.dir.path().join("nats");
    let lab = Lab {
        dir: s.dir,
        port: s.nats.port,
        nats: s.nats,
    };

    let mut a = lab.mount("d1", "w1");
    let b = lab.mount("d2", "w2");
    fs::write(a.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || ls(&b.mnt.join("bob/peers"))
            == ["alice"]),
        "bob/peers: {:?}",
        ls(&b.mnt.join("bob/peers"))
    );

    // Before the move, at w1.
    send_many(&b, "before", 30);
    let c1 = a.mnt.join("alice/state/c");
    assert!(
        wait_until(Duration::from_secs(30), || state_int(&c1) == Some(30)),
        "alice at w1 counted {:?}; bob's results: {:?} {}; alice's log: {}",
        state_int(&c1),
        results(&b, "before"),
        fs::read_to_string(b.mnt.join("bob/peers/alice/outbox/before-1.json")).unwrap_or_default(),
        fs::read_to_string(a.mnt.join("alice/log")).unwrap_or_default()
    );

    // Not handed over while w1 serves alice, nor by a worker that does not serve it.
    let o = lab.release("alice", "w3", "w1");
    assert!(!o.status.success(), "released while served: {}", text(&o));
    assert!(
        text(&o).contains("alice is still served by worker w1 (pid"),
        "{}",
        text(&o)
    );
    let o = lab.release("alice", "w3", "w2");
    assert!(!o.status.success(), "released by w2: {}", text(&o));
    assert!(
        text(&o).contains("alice is served by worker w1, not by w2"),
        "{}",
        text(&o)
    );

    // A burst in flight when w1 stops (cleanly: SIGTERM, the store closed).
    send_many(&b, "burst", 100);
    wait_until(Duration::from_secs(20), || {
        state_int(&c1).unwrap_or(0) >= 40
    });
    let at_stop = state_int(&c1).unwrap_or(0);
    eprintln!("alice had applied {at_stop} of 130 at w1 when it was stopped");
    a.signal(libc::SIGTERM);
    assert!(
        a.wait(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    drop(a);

    // Alice served nowhere: bob's sends wait, they do not fail (a message that
    // could not be delivered would end as an `error` result, checked below).
    send_many(&b, "away", 40);
    std::thread::sleep(Duration::from_secs(2));

    // The directory: handed over to w3 (the sends after it wait as well).
    let o = lab.release("alice", "w3", "w1");
    assert!(o.status.success(), "release: {}", text(&o));
    assert!(
        text(&o).contains("handed over from worker w1 to worker w3"),
        "{}",
        text(&o)
    );
    send_many(&b, "handed", 20);

    // The file, then the server's permissions.
    fs::create_dir_all(lab.p("d3/peers")).unwrap();
    let from = lab.p("d1/peers/alice.sqlite");
    for suffix in ["", "-wal"] {
        let f = PathBuf::from(format!("{}{suffix}", from.display()));
        if f.exists() {
            fs::copy(&f, lab.p(&format!("d3/peers/alice.sqlite{suffix}"))).unwrap();
        }
    }
    init(&nats_dir, LATTICE, lab.port, &["w1=", "w2=bob", "w3=alice"]);
    lab.nats.reload();

    // Alice at w3: everything that waited, each message once.
    let c = lab.mount("d3", "w3");
    let c3 = c.mnt.join("alice/state/c");
    let total = 30 + 100 + 40 + 20;
    let ok = wait_until(Duration::from_secs(60), || state_int(&c3) == Some(total));
    assert!(
        ok,
        "alice at w3 counted {:?}, want {total}: {}",
        state_int(&c3),
        c.log_text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(state_int(&c3), Some(total), "a message was applied twice");
    let keys = ls(&c.mnt.join("alice/state/m"));
    for (name, n) in [("before", 30), ("burst", 100), ("away", 40), ("handed", 20)] {
        let seen = keys
            .iter()
            .filter(|k| k.starts_with(&format!("{name}-")))
            .count();
        assert_eq!(seen, n, "distinct messages of {name} applied");
        // Every result back at bob and `ok`, also those alice had not sent when
        // w1 stopped (her outbox moved with her file). (The listing shows pending
        // results too; a read waits for the result.)
        assert_eq!(results(&b, name).len(), n, "results of {name} at bob");
        for i in 1..=n {
            let f = b
                .mnt
                .join(format!("bob/peers/alice/outbox/{name}-{i}.json"));
            let r: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
            assert_eq!(r["status"], "ok", "{name}-{i}: {r}");
        }
    }

    // The old worker, started again with its old copy of alice, is refused.
    let log = lab.mount_refused("d1", "w1");
    assert!(
        log.contains("alice is already served by worker w3"),
        "old worker's log: {log}"
    );
    // And it can no longer hand alice anywhere.
    let o = lab.release("alice", "w1", "w1");
    assert!(!o.status.success(), "{}", text(&o));
    let o = lab.release("alice", "w2", "w1");
    assert!(
        text(&o).contains("alice is served by worker w3, not by w1"),
        "{}",
        text(&o)
    );
    drop(c);
    drop(b);
}

/// With a replica (an S3 server of the test's own), `lattice release` is the
/// whole move: the new worker restores alice from the replica at its start,
/// takes the replica's lease, and gets what waited, each message once. The
/// old worker, started again cut off from NATS with its old copy, finds the
/// lease taken: alice is not served there (`ESTALE`, one log line), nothing
/// of it reaches the replica.
#[test]
fn a_peer_moves_by_name_with_a_replica_and_the_old_worker_is_fenced() {
    use crate::replica::{caught_up, fenced_lines, restore_ok, values, Rep};
    let s = support::Setup::new(
        LATTICE,
        &["w1=alice", "w2=bob", "w3="],
        &[("d1", "alice"), ("d2", "bob")],
    );
    let nats_dir = s.dir.path().join("nats");
    let lab = Lab {
        dir: s.dir,
        port: s.nats.port,
        nats: s.nats,
    };
    let rep = Rep::s3(lab.dir.path());
    let with_replica = |n: &str, worker: &str, url: &str| {
        let mut args = join_args(url, &lab.creds(worker), LATTICE);
        args.extend(QUICK.map(String::from));
        args.extend(rep.daemon_args(&[]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(
            &lab.p(n),
            &lab.p(&format!("m{n}")),
            &lab.p(&format!("w{n}")),
            &args,
        )
    };
    let url = lab.nats.url();
    let mut a = with_replica("d1", "w1", &url);
    let b = lab.mount("d2", "w2");
    fs::write(a.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ls(&b
        .mnt
        .join("bob/peers"))
        == ["alice"]));
    send_many(&b, "before", 30);
    let c1 = a.mnt.join("alice/state/c");
    assert!(
        wait_until(Duration::from_secs(30), || state_int(&c1) == Some(30)),
        "alice at w1 counted {:?}",
        state_int(&c1)
    );
    caught_up(&a, "alice");
    a.signal(libc::SIGTERM);
    assert!(
        a.wait(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    drop(a);

    // The move: the entry handed over, the permissions given; no file copied.
    send_many(&b, "away", 20);
    let o = lab.release("alice", "w3", "w1");
    assert!(o.status.success(), "release: {}", text(&o));
    init(&nats_dir, LATTICE, lab.port, &["w1=", "w2=bob", "w3=alice"]);
    lab.nats.reload();
    let c = with_replica("d3", "w3", &url);
    assert!(
        c.log_text()
            .contains("peer moved here: restored from the replica"),
        "{}",
        c.log_text()
    );
    let c3 = c.mnt.join("alice/state/c");
    let ok = wait_until(Duration::from_secs(60), || state_int(&c3) == Some(50));
    assert!(
        ok,
        "alice at w3 counted {:?}: {}",
        state_int(&c3),
        c.log_text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(state_int(&c3), Some(50), "a message was applied twice");
    let keys = ls(&c.mnt.join("alice/state/m"));
    assert_eq!(keys.len(), 50, "distinct messages applied");
    caught_up(&c, "alice");
    assert_eq!(
        fs::read_to_string(lab.p("d3/replica/alice.lease"))
            .unwrap()
            .trim(),
        "2",
        "w3 took the lease over"
    );

    // The old worker, started again with its old copy: with NATS the
    // directory refuses it; cut off from NATS (it starts, joining in the
    // background) the fence refuses alice.
    let log = lab.mount_refused("d1", "w1");
    assert!(
        log.contains("alice is already served by worker w3"),
        "{log}"
    );
    let dead = format!("nats://127.0.0.1:{}", support::free_port());
    let a = with_replica("d1", "w1", &dead);
    let r = fs::write(a.mnt.join("alice/inbox/stale.rhai"), "set(\"c\", 1000); 0");
    common::expect_errno(r, libc::ESTALE, "a drop at the old worker");
    let r = fs::read_to_string(&c1);
    common::expect_errno(r, libc::ESTALE, "a read at the old worker");
    assert_eq!(fenced_lines(&a.log_text()).len(), 1, "{}", a.log_text());
    drop(a);

    // Nothing doubled: w3 and its replica count 50.
    assert_eq!(state_int(&c3), Some(50));
    let mut c = c;
    c.signal(libc::SIGTERM);
    assert!(
        c.wait(Duration::from_secs(30)).success(),
        "{}",
        c.log_text()
    );
    drop(c);

    // Removed at w3 (its entry still names w3): a restart does not bring it
    // back from the replica.
    let o = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(["peer", "remove", "alice", "--data"])
        .arg(lab.p("d3"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let c = with_replica("d3", "w3", &url);
    assert!(
        c.log_text().contains("peer removed here"),
        "{}",
        c.log_text()
    );
    assert!(!lab.p("d3/peers/alice.sqlite").exists());
    drop(c);
    drop(b);
    restore_ok(&rep, "alice", &lab.p("d4"), &[]);
    let got = values(&lab.p("d4"), lab.dir.path(), "alice", &["c"]);
    assert_eq!(got[0].as_deref().map(str::trim), Some("50"));
}
