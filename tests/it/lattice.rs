//! Two (or three) daemons on one lattice: each `peerfs mount` a real mount over its
//! own data folder, one nats-server per test (free loopback port, temporary store,
//! configuration from `peerfs lattice init`), stopped by pid.

use crate::common;
use crate::lattice_support as support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{errno, wait_until, Daemon};
use support::{create_peer, init, join_args, ls, state_int, value, Nats, Proxy, QUICK};

const LATTICE: &str = "t";

/// A deployment: w1 serves alice (and may serve carol), w2 serves bob.
struct Lab {
    dir: tempfile::TempDir,
    nats: Nats,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        init(
            &dir.path().join("nats"),
            LATTICE,
            port,
            &["w1=alice,carol", "w2=bob"],
        );
        for (data, peer) in [("d1", "alice"), ("d2", "bob")] {
            create_peer(&dir.path().join(data), peer);
        }
        let nats = Nats::start(&dir.path().join("nats/nats-server.conf"), port);
        Lab { dir, nats }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `peerfs mount` of data folder `n` (`d1`, `d2`, ...) with `worker`'s credentials.
    fn mount(&self, n: &str, worker: &str, url: &str, extra: &[&str]) -> Daemon {
        let creds = self.p(&format!("nats/{worker}.creds"));
        let mut args = join_args(url, &creds, LATTICE);
        args.extend(QUICK.iter().chain(extra).map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(
            &self.p(n),
            &self.p(&format!("m{n}")),
            &self.p(&format!("w{n}")),
            &args,
        )
    }

    /// The same, expected to refuse to start; returns its log.
    fn mount_refused(&self, n: &str, worker: &str, extra: &[&str]) -> String {
        let creds = self.p(&format!("nats/{worker}.creds"));
        let mnt = self.p(&format!("m{n}"));
        fs::create_dir_all(&mnt).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .arg("mount")
            .arg(&mnt)
            .arg("--data")
            .arg(self.p(n))
            .args(join_args(&self.nats.url(), &creds, LATTICE))
            .args(["-o", "lattice.timeout_ms=1000"])
            .args(extra)
            .env("RUST_LOG", "peerfs=info")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a worker that may not serve its peer started"
        );
        assert!(!common::is_mounted(&mnt), "it mounted anyway");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

const BOB_POLICY: &str = r#"permit(principal == Peer::"alice", action in [Action::"run", Action::"read", Action::"write"], resource);"#;

#[test]
fn two_daemons_one_lattice() {
    let lab = Lab::new();
    let url = lab.nats.url();
    let a = lab.mount("d1", "w1", &url, &[]);
    let b = lab.mount("d2", "w2", &url, &[]);
    fs::write(b.mnt.join("bob/policy.cedar"), BOB_POLICY).unwrap();

    // Every daemon sees every peer.
    assert!(
        wait_until(Duration::from_secs(10), || ls(&a.mnt.join("alice/peers"))
            == ["bob"]),
        "alice/peers: {:?}",
        ls(&a.mnt.join("alice/peers"))
    );
    assert_eq!(ls(&b.mnt.join("bob/peers")), ["alice"]);

    // A drop into peers/bob/inbox/ runs at bob, the result shows at alice.
    fs::write(
        a.mnt.join("alice/peers/bob/inbox/who.rhai"),
        r#"set("seen", caller.name); target.name + " for " + caller.name"#,
    )
    .unwrap();
    let v = value(&a.mnt.join("alice/peers/bob/outbox/who.json"));
    assert_eq!(v, "bob for alice");
    assert_eq!(
        fs::read_to_string(b.mnt.join("bob/state/seen"))
            .unwrap()
            .trim(),
        "alice"
    );

    // send() across daemons, its result back in alice's outbox for bob.
    fs::write(
        a.mnt.join("alice/inbox/fan.rhai"),
        r#"send("bob", "set(\"sent\", caller.name); 7 * 6"); "sent""#,
    )
    .unwrap();
    assert_eq!(value(&a.mnt.join("alice/outbox/fan.json")), "sent");
    assert_eq!(value(&a.mnt.join("alice/peers/bob/outbox/fan-1.json")), 42);

    // caller_get across daemons: alice's own policy decides what bob reads of her.
    fs::write(
        a.mnt.join("alice/policy.cedar"),
        r#"permit(principal == Peer::"bob", action == Action::"read", resource) when { resource.key == "shared" };"#,
    )
    .unwrap();
    fs::write(a.mnt.join("alice/state/shared"), "\"s3\"").unwrap();
    fs::write(a.mnt.join("alice/state/private"), "\"no\"").unwrap();
    fs::write(
        a.mnt.join("alice/peers/bob/inbox/peek.rhai"),
        r#"caller_get("shared")"#,
    )
    .unwrap();
    assert_eq!(value(&a.mnt.join("alice/peers/bob/outbox/peek.json")), "s3");
    fs::write(
        a.mnt.join("alice/peers/bob/inbox/pry.rhai"),
        r#"caller_get("private")"#,
    )
    .unwrap();
    let pry = fs::read_to_string(a.mnt.join("alice/peers/bob/outbox/pry.json")).unwrap();
    assert!(pry.contains("denied"), "{pry}");

    // A new peer is claimed in the directory; a name already served is EEXIST.
    fs::create_dir(a.mnt.join("carol")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ls(&b
        .mnt
        .join("bob/peers"))
        == ["alice", "carol"]));
    let e = fs::create_dir(a.mnt.join("bob")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST, "mkdir of a peer served elsewhere");
    let e = fs::create_dir(b.mnt.join("carol")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST, "mkdir of carol at w2");
    // A peer this worker's credentials do not list: refused at once, saying why.
    let e = fs::create_dir(b.mnt.join("zed")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES, "mkdir of a peer w2 may not serve");
    assert!(
        b.log_text()
            .contains("zed is not among the peers of worker w2"),
        "{}",
        b.log_text()
    );

    // A worker cannot take another name than its NATS user's.
    create_peer(&lab.p("d3"), "bob");
    let log = lab.mount_refused("d3", "w2", &["-o", "lattice.worker=w9"]);
    assert!(
        log.contains("is not the user of the credentials (w2)"),
        "second worker's log: {log}"
    );

    // Nor does a second process of w2 itself (the same credentials, which the
    // directory cannot tell from a restart): the first one answers for bob.
    let log = lab.mount_refused("d3", "w2", &[]);
    assert!(
        log.contains("bob is already served by worker w2 (pid"),
        "second process's log: {log}"
    );
    assert!(log.contains(&format!("pid {} on", b.pid())), "{log}");

    // A rogue worker with w1's credentials cannot act as bob.
    let log = lab.mount_refused("d3", "w1", &["--peer", "bob"]);
    assert!(
        log.contains("cannot register peer bob")
            || log.contains("bob is already served by worker w2")
            || log.contains("bob is not among the peers of worker w1"),
        "rogue's log: {log}"
    );

    // Nor can a raw client with w1's credentials publish as bob.
    let creds = peerfs::lattice::creds::Creds::read(&lab.p("nats/w1.creds")).unwrap();
    let refused = raw_publish_as_bob(&url, &creds);
    assert!(
        refused,
        "JetStream acknowledged a publish as bob with w1's credentials"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = fs::read_to_string(a.mnt.join("alice/log")).unwrap();
    assert!(
        !log.contains("caller=bob"),
        "a run with caller=bob happened at alice: {log}"
    );
    let nats_log = lab.nats.log_text();
    assert!(
        nats_log.contains(r#"Publish Violation - User "w1", Subject "peerfs.t.msg.alice.bob""#),
        "the server did not refuse the raw publish: {nats_log}"
    );
    drop(a);
    drop(b);
}

/// Publishes a message from "bob" to alice through JetStream with w1's
/// credentials; true when the server refused it (no acknowledgement).
fn raw_publish_as_bob(url: &str, c: &peerfs::lattice::creds::Creds) -> bool {
    let (rt, client) = support::raw_client(url, c, None);
    rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        let body = serde_json::json!({
            "from": "bob", "id": "forged-1", "to": "alice", "kind": "script",
            "name": "forged.rhai", "source": "set(\"pwned\", 1)", "params": "{}",
            "hops": 0, "payload": "", "created_at": 0, "chain": [], "budget": 0
        })
        .to_string();
        // Core NATS as well: the server drops it.
        let _ = client
            .publish("peerfs.t.msg.alice.bob", body.clone().into())
            .await;
        let _ = client.flush().await;
        let r = tokio::time::timeout(Duration::from_secs(3), async {
            js.publish("peerfs.t.msg.alice.bob", body.into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        })
        .await;
        !matches!(r, Ok(Ok(_)))
    })
}

/// Messages travel in batches (one JetStream message for several of one sender
/// to one target). A batch is applied message by message, each once whatever
/// batches it came in; a batch with one message that claims another sender is
/// refused whole. A message too big for the server ends as an error result.
/// The target is closed while idle: each batch opens it again.
#[test]
fn batches_apply_each_message_once_and_a_forged_batch_not_at_all() {
    let lab = Lab::new();
    let url = lab.nats.url();
    // Bob is closed while idle, so a batch also opens his store on its way in.
    let b = lab.mount("d2", "w2", &url, &["-o", "idle_close_ms=200"]);
    fs::write(b.mnt.join("bob/policy.cedar"), BOB_POLICY).unwrap();
    let stats = b.mnt.join(".peerfs/stats");
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&stats)
            .unwrap()
            .contains("\nopen_peers 0\n")),
        "bob stayed open: {}",
        fs::read_to_string(&stats).unwrap()
    );
    let creds = peerfs::lattice::creds::Creds::read(&lab.p("nats/w1.creds")).unwrap();
    let msg = |n: u32, from: &str| {
        serde_json::json!({
            "from": from, "id": format!("raw-{n}"), "to": "bob", "kind": "script",
            "name": format!("raw-{n}.rhai"),
            "source": format!(r#"set("c", (get("c") ?? 0) + 1); set("m/{n}", 1); {n}"#),
            "params": "{}", "hops": 1, "payload": "", "created_at": 1, "chain": [from],
            "budget": 0
        })
    };
    let batch = |v: &[serde_json::Value]| serde_json::Value::from(v.to_vec()).to_string();
    let c = b.mnt.join("bob/state/c");
    raw_publish(
        &url,
        &creds,
        &[(
            "b1",
            batch(&[msg(1, "alice"), msg(2, "alice"), msg(3, "alice")]),
        )],
    );
    assert!(
        wait_until(Duration::from_secs(20), || state_int(&c) == Some(3)),
        "bob applied {:?} of the batch's 3 messages",
        state_int(&c)
    );
    // The same messages again, grouped otherwise (new JetStream ids): nothing new.
    raw_publish(
        &url,
        &creds,
        &[
            ("b2", batch(&[msg(2, "alice"), msg(3, "alice")])),
            ("b3", msg(1, "alice").to_string()),
        ],
    );
    // One message in a batch claims carol (w1 serves her, but not this subject).
    raw_publish(
        &url,
        &creds,
        &[("b4", batch(&[msg(4, "alice"), msg(5, "carol")]))],
    );
    let log = || fs::read_to_string(&b.stderr).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || log()
            .contains("claims to come from carol")),
        "the forged batch was not refused: {}",
        log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_int(&c), Some(3), "a message of a batch ran twice");
    assert_eq!(ls(&b.mnt.join("bob/state/m")), ["1", "2", "3"]);

    // Too big for NATS (max_payload 1 MiB): an error result, not endless retries.
    let a = lab.mount("d1", "w1", &url, &["-o", "delivery_tries=2"]);
    assert!(wait_until(Duration::from_secs(20), || a
        .mnt
        .join("alice/peers/bob")
        .exists()));
    fs::write(
        a.mnt.join("alice/inbox/big.rhai"),
        r#"let s = "1;"; for i in 0..20 { s += s; } send("bob", s); s.len()"#,
    )
    .unwrap();
    assert_eq!(value(&a.mnt.join("alice/outbox/big.json")), 2 << 20);
    let r: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(a.mnt.join("alice/peers/bob/outbox/big-1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("max_payload"), "{r}");
    drop(a);
    drop(b);
}

/// Publishes each `(Nats-Msg-Id, body)` on alice→bob's subject through
/// JetStream with `c`'s credentials, each acknowledged.
fn raw_publish(url: &str, c: &peerfs::lattice::creds::Creds, msgs: &[(&str, String)]) {
    let (rt, client) = support::raw_client(url, c, None);
    rt.block_on(async {
        let js = async_nats::jetstream::new(client);
        for (id, body) in msgs {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", *id);
            js.publish_with_headers("peerfs.t.msg.bob.alice", h, body.clone().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
}

/// Alice sends `n` scripts to bob, each recording its number and counting runs.
fn send_many(a: &Daemon, name: &str, n: usize) {
    let script = format!(
        r#"for i in 0..{n} {{ send("bob", "set(\"c\", (get(\"c\") ?? 0) + 1); set(\"m/{name}-\" + caller.params.i, 1);", #{{ i: i }}); }} "queued""#
    );
    fs::write(a.mnt.join(format!("alice/inbox/{name}.rhai")), script).unwrap();
}

/// Waits until bob counted `want` runs in all, then checks that every message
/// ran once: as many runs as distinct messages, and every result back at alice.
fn expect_once(a: &Daemon, b_state: &Path, name: &str, n: usize, want_total: i64) {
    let c = b_state.join("c");
    let ok = wait_until(Duration::from_secs(60), || {
        state_int(&c) == Some(want_total)
    });
    assert!(
        ok,
        "bob counted {:?} runs, want {want_total}",
        state_int(&c)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_int(&c), Some(want_total), "a message ran twice");
    let seen = ls(&b_state.join("m"))
        .into_iter()
        .filter(|k| k.starts_with(&format!("{name}-")))
        .count();
    assert_eq!(seen, n, "distinct messages of {name} applied");
    let outbox = a.mnt.join("alice/peers/bob/outbox");
    let ok = wait_until(Duration::from_secs(30), || {
        ls(&outbox)
            .iter()
            .filter(|f| f.starts_with(&format!("{name}-")))
            .count()
            == n
    });
    assert!(
        ok,
        "results of {name} back at alice: {:?}",
        ls(&outbox).len()
    );
    for i in 1..=n {
        let r: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(outbox.join(format!("{name}-{i}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "ok", "{name}-{i}: {r}");
    }
}

#[test]
fn faults_every_acknowledged_message_runs_once() {
    let mut lab = Lab::new();
    let proxy = Proxy::start(lab.nats.port);
    // NATS down at daemon start: local work goes on, messages wait.
    lab.nats.kill9();
    let mut a = lab.mount("d1", "w1", &lab.nats.url(), &[]);
    let b_url = proxy.url();
    let mut b = lab.mount("d2", "w2", &b_url, &[]);
    fs::write(b.mnt.join("bob/policy.cedar"), BOB_POLICY).unwrap();
    fs::write(a.mnt.join("alice/inbox/local.rhai"), "1 + 1").unwrap();
    assert_eq!(value(&a.mnt.join("alice/outbox/local.json")), 2);
    send_many(&a, "down", 20);
    assert_eq!(value(&a.mnt.join("alice/outbox/down.json")), "queued");
    // A read of a pending remote result does not hang the mount.
    lab.nats.restart();
    let b_state = b.mnt.join("bob/state");
    expect_once(&a, &b_state, "down", 20, 20);

    // nats-server SIGKILLed and restarted mid-stream (its store on disk).
    send_many(&a, "restart", 200);
    std::thread::sleep(Duration::from_millis(150));
    lab.nats.kill9();
    std::thread::sleep(Duration::from_millis(500));
    lab.nats.restart();
    expect_once(&a, &b_state, "restart", 200, 220);

    // bob's worker SIGKILLed mid-run and restarted.
    send_many(&a, "crash", 200);
    std::thread::sleep(Duration::from_millis(200));
    b.kill9();
    // (Dropping the killed daemon unmounts what it left.)
    drop(b);
    let mut b = lab.mount("d2", "w2", &b_url, &[]);
    expect_once(&a, &b_state, "crash", 200, 420);

    // A partition between bob's worker and NATS, longer than the ack wait (1 s).
    send_many(&a, "cut", 200);
    std::thread::sleep(Duration::from_millis(100));
    proxy.cut();
    std::thread::sleep(Duration::from_millis(2500));
    proxy.heal();
    expect_once(&a, &b_state, "cut", 200, 620);

    a.kill9();
    b.kill9();
    drop(a);
    drop(b);
}

#[test]
fn spool_worker_joins_the_lattice() {
    let lab = Lab::new();
    let url = lab.nats.url();
    let a = lab.mount("d1", "w1", &url, &[]);
    fs::write(
        a.mnt.join("alice/policy.cedar"),
        r#"permit(principal == Peer::"bob", action == Action::"run", resource);"#,
    )
    .unwrap();
    // bob is served by `peerfs serve --spool` with w2's credentials.
    let spool = lab.p("spool");
    let creds = lab.p("nats/w2.creds");
    let data = lab.p("d2");
    let join = join_args(&url, &creds, LATTICE);
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "serve".as_ref(),
        "--spool".as_ref(),
        spool.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    args.extend(join.iter().map(std::ffi::OsStr::new));
    let mut s = Daemon::spawn(&args, &spool, &lab.p("ws"));
    assert!(
        wait_until(Duration::from_secs(20), || spool
            .join("bob/peers/alice/outbox")
            .is_dir()),
        "the spool's peers/ does not show alice: {}",
        s.log_text()
    );
    fs::write(b_policy_path(&spool), BOB_POLICY).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(
            spool.join("bob/log")
        )
        .unwrap_or_default()
        .contains("policy")),
        "bob's policy was not taken: {}",
        s.log_text()
    );
    // A drop on alice's mount runs at the spool's bob.
    assert!(wait_until(Duration::from_secs(10), || ls(&a
        .mnt
        .join("alice/peers"))
        == ["bob"]));
    fs::write(a.mnt.join("alice/peers/bob/inbox/s.rhai"), "target.name").unwrap();
    assert_eq!(value(&a.mnt.join("alice/peers/bob/outbox/s.json")), "bob");
    // And the spool's bob sends to alice on the mount.
    let tmp = lab.p("ws/send.rhai");
    fs::write(
        &tmp,
        r#"send("alice", "caller.name + \" at \" + target.name"); 1"#,
    )
    .unwrap();
    fs::rename(&tmp, spool.join("bob/inbox/send.rhai")).unwrap();
    let res = spool.join("bob/peers/alice/outbox/send-1.json");
    assert!(
        wait_until(Duration::from_secs(20), || res.exists()),
        "no result of bob's send in the spool: {}",
        s.log_text()
    );
    assert_eq!(value(&res), "bob at alice");
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(20)).success());
}

fn b_policy_path(spool: &Path) -> PathBuf {
    spool.join("bob/policy.cedar")
}

/// Every file under `root` with its bytes, and every folder (bytes `None`),
/// by path relative to `root`, sorted.
fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for name in ls(&root.join(&rel)) {
            let r = rel.join(&name);
            let p = root.join(&r);
            if p.is_dir() {
                out.push((r.display().to_string(), None));
                todo.push(r);
            } else {
                let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((r.display().to_string(), Some(bytes)));
            }
        }
    }
    out.sort();
    out
}

const READ_PUB: &str = r#"permit(principal == Peer::"alice", action == Action::"read", resource) when { resource.key like "pub/*" };"#;

#[test]
fn remote_state_view_shows_what_the_owners_policy_lets_read() {
    let mut lab = Lab::new();
    let url = lab.nats.url();
    let a = lab.mount("d1", "w1", &url, &[]);
    let mut b = lab.mount("d2", "w2", &url, &[]);
    // carol, served by alice's daemon, gets the same state and policy as bob:
    // what alice sees of bob (remote) must be what she sees of carol (local).
    fs::create_dir(a.mnt.join("carol")).unwrap();
    let big: String = (0..(3 << 20) / 16).map(|i| format!("{i:015}\n")).collect();
    for owner in [b.mnt.join("bob"), a.mnt.join("carol")] {
        let st = owner.join("state");
        fs::create_dir_all(st.join("pub/deep")).unwrap();
        fs::create_dir_all(st.join("other")).unwrap();
        fs::write(st.join("pub/a"), "\"hello\"").unwrap();
        fs::write(st.join("pub/deep/b"), "[1, 2, 3]").unwrap();
        fs::write(st.join("pub/big"), &big).unwrap();
        fs::write(st.join("secret"), "42").unwrap();
        fs::write(st.join("other/c"), "\"no\"").unwrap();
        fs::write(owner.join("policy.cedar"), READ_PUB).unwrap();
    }
    let view = a.mnt.join("alice/peers/bob/state");
    assert!(
        wait_until(Duration::from_secs(10), || ls(&view) == ["pub"]),
        "alice/peers/bob/state: {:?}: {}",
        ls(&view),
        a.log_text()
    );
    assert_eq!(ls(&view.join("pub")), ["a", "big", "deep"]);
    assert_eq!(ls(&view.join("pub/deep")), ["b"]);
    assert_eq!(fs::read(view.join("pub/a")).unwrap(), b"\"hello\"");
    assert_eq!(
        fs::read(view.join("pub/deep/b")).unwrap(),
        fs::read(b.mnt.join("bob/state/pub/deep/b")).unwrap()
    );
    // A value larger than one NATS message comes in chunks, whole.
    let got = fs::read(view.join("pub/big")).unwrap();
    assert!(got == big.as_bytes(), "pub/big: {} bytes", got.len());
    let md = fs::metadata(view.join("pub/a")).unwrap();
    assert_eq!(md.len(), 7);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o444
    );
    assert!(fs::metadata(view.join("pub/deep")).unwrap().is_dir());
    for hidden in ["secret", "other", "other/c", "nothing"] {
        let e = fs::read(view.join(hidden)).unwrap_err();
        assert_eq!(errno(&e), libc::ENOENT, "{hidden}");
    }
    let e = fs::write(view.join("pub/a"), "1").unwrap_err();
    assert!(
        [libc::EACCES, libc::EROFS, libc::EPERM].contains(&errno(&e)),
        "a write to a remote view: {e}"
    );
    // Exactly what a peer of the same daemon shows.
    assert_eq!(tree(&view), tree(&a.mnt.join("alice/peers/carol/state")));
    // coreutils see the same.
    let out = common::sh_ok(&format!(
        "ls {} && cat {}",
        common::q(&view.join("pub")),
        common::q(&view.join("pub/a"))
    ));
    assert_eq!(out, "a\nbig\ndeep\n\"hello\"");

    // The view follows bob's values and bob's policy.
    fs::write(b.mnt.join("bob/state/pub/a"), "\"changed\"").unwrap();
    assert_eq!(fs::read(view.join("pub/a")).unwrap(), b"\"changed\"");
    fs::write(
        b.mnt.join("bob/policy.cedar"),
        r#"permit(principal == Peer::"alice", action == Action::"read", resource) when { resource.key == "secret" };"#,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || ls(&view) == ["secret"]),
        "after bob's policy changed: {:?}",
        ls(&view)
    );
    assert_eq!(fs::read(view.join("secret")).unwrap(), b"42");
    let e = fs::read(view.join("pub/a")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT, "pub/a after bob revoked it");

    // bob's worker there but not answering (frozen): ETIMEDOUT after
    // lattice.timeout_ms (1 s here).
    b.freeze();
    fails_fast(&view, "bob's worker frozen", &[libc::ETIMEDOUT]);
    b.signal(libc::SIGCONT);
    // bob's worker stopped: fail fast with an errno, never hang.
    b.signal(libc::SIGTERM);
    assert!(b.wait(Duration::from_secs(20)).success());
    std::thread::sleep(Duration::from_millis(1100));
    fails_fast(&view, "bob's worker stopped", UNREACHABLE);
    // NATS itself away: the same.
    lab.nats.kill9();
    std::thread::sleep(Duration::from_millis(300));
    fails_fast(&view, "NATS stopped", UNREACHABLE);
    drop(b);
    drop(a);
}

const UNREACHABLE: &[i32] = &[libc::EHOSTUNREACH, libc::ETIMEDOUT];

/// `ls VIEW` and `cat VIEW/secret` fail with one of `want` within a few seconds.
fn fails_fast(view: &Path, why: &str, want: &[i32]) {
    let ls_view = || fs::read_dir(view).map(|d| d.count());
    let cat_secret = || fs::read(view.join("secret")).map(|v| v.len());
    for (what, op) in [
        ("ls", &ls_view as &dyn Fn() -> std::io::Result<usize>),
        ("cat", &cat_secret),
    ] {
        let t = std::time::Instant::now();
        let e = match op() {
            Err(e) => e,
            Ok(n) => panic!(
                "{what} with {why} succeeded ({n}: {:?}) after {:?}",
                fs::read_dir(view).map(|d| d.map(|e| e.map(|e| e.file_name())).collect::<Vec<_>>()),
                t.elapsed()
            ),
        };
        assert!(want.contains(&errno(&e)), "{what} with {why}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what} with {why} took {:?}",
            t.elapsed()
        );
    }
}

const NOTES: &str = r#"
[tables.notes]
key = "string"
fields.title  = { type = "string" }
fields.pinned = { type = "bool", default = false }
"#;
const SELECT_PINNED: &str = r#"permit(principal == Peer::"alice", action == Action::"select", resource is Table::notes) when { resource.pinned };"#;

#[test]
fn remote_tables_view_shows_the_rows_the_owners_policy_lets_select() {
    let lab = Lab::new();
    let url = lab.nats.url();
    let a = lab.mount("d1", "w1", &url, &[]);
    let mut b = lab.mount("d2", "w2", &url, &[]);
    // carol, served by alice's daemon, gets the same tables and rows as bob:
    // what alice sees of bob (remote) must be what she sees of carol (local).
    fs::create_dir(a.mnt.join("carol")).unwrap();
    for owner in [b.mnt.join("bob"), a.mnt.join("carol")] {
        fs::write(owner.join("schema.toml"), NOTES).unwrap();
        let rows = owner.join("tables/notes");
        fs::write(
            rows.join("a.json"),
            r#"{"title": "public", "pinned": true}"#,
        )
        .unwrap();
        fs::write(rows.join("b.json"), r#"{"title": "private"}"#).unwrap();
    }
    let view = a.mnt.join("alice/peers/bob/tables");
    // No policy: no table of bob's shows to alice.
    assert_eq!(ls(&view), Vec::<String>::new());
    for owner in [b.mnt.join("bob"), a.mnt.join("carol")] {
        fs::write(owner.join("policy.cedar"), SELECT_PINNED).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || ls(&view)
            == ["notes", "notes.jsonl"]),
        "alice/peers/bob/tables: {:?}: {}",
        ls(&view),
        a.log_text()
    );
    assert_eq!(ls(&view.join("notes")), ["a.json"]);
    assert_eq!(
        fs::read(view.join("notes/a.json")).unwrap(),
        fs::read(b.mnt.join("bob/tables/notes/a.json")).unwrap()
    );
    let all = fs::read_to_string(view.join("notes.jsonl")).unwrap();
    assert!(all.lines().count() == 1 && all.contains("public"), "{all}");
    let e = fs::read(view.join("notes/b.json")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT, "a row alice may not select");
    assert!(fs::write(view.join("notes/a.json"), "{}").is_err());
    assert_eq!(tree(&view), tree(&a.mnt.join("alice/peers/carol/tables")));

    // Many rows come page by page, whole and in key order.
    fs::write(
        b.mnt.join("bob/inbox/seed.rhai"),
        r#"for i in 0..2500 { db.notes.insert(#{ id: `n${i}`, title: "x", pinned: i % 2 == 0 }); } 0"#,
    )
    .unwrap();
    assert_eq!(value(&b.mnt.join("bob/outbox/seed.json")), 0);
    let all = fs::read_to_string(view.join("notes.jsonl")).unwrap();
    let keys: Vec<String> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 1 + 1250);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(ls(&view.join("notes")).len(), 1251);

    // bob's worker gone: fail fast with an errno, never hang.
    b.signal(libc::SIGTERM);
    assert!(b.wait(Duration::from_secs(20)).success());
    std::thread::sleep(Duration::from_millis(1100));
    let t = std::time::Instant::now();
    let e = fs::read_dir(&view).map(|d| d.count()).unwrap_err();
    assert!(
        UNREACHABLE.contains(&errno(&e)),
        "ls with bob's worker stopped: {e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    drop(b);
    drop(a);
}
