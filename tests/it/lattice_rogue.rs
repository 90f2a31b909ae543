//! A rogue worker: a raw NATS client holding only w2's credentials from
//! `peerfs lattice init` (the worker of bob), trying what docs/threat-model.md
//! says a worker cannot do, while honest workers (w1 serving alice, w3 serving
//! dave) keep exchanging messages. Each attack must meet a permissions violation
//! or change nothing, and every honest message must run exactly once.

use crate::common;
use crate::lattice_support as support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use common::{wait_until, Daemon};
use futures_util::StreamExt;
use peerfs::lattice::creds::Creds;
use support::{create_peer, free_port, join_args, state_int, value, Nats, QUICK};

const LATTICE: &str = "r";
const STREAM: &str = "PEERFS_r";
const ALICE_POLICY: &str = r#"permit(principal == Peer::"dave", action in [Action::"run", Action::"read", Action::"write"], resource);"#;

/// w1 serves alice, w2 (the rogue's credentials) bob, w3 dave.
struct Lab {
    dir: tempfile::TempDir,
    nats: Nats,
}

impl Lab {
    fn new(init_flags: &[&str]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .args(["lattice", "init"])
            .arg(dir.path().join("nats"))
            .args(["--lattice", LATTICE, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "--worker", "w1=alice", "--worker", "w2=bob", "--worker", "w3=dave",
            ])
            .args(init_flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        create_peer(&dir.path().join("d1"), "alice");
        create_peer(&dir.path().join("d3"), "dave");
        let nats = Nats::start(&dir.path().join("nats/nats-server.conf"), port);
        Lab { dir, nats }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn creds(&self, user: &str) -> Creds {
        Creds::read(&self.p(&format!("nats/{user}.creds"))).unwrap()
    }

    /// The credentials file alone: it names the server and the lattice.
    fn args(&self, worker: &str) -> Vec<String> {
        let creds = self.p(&format!("nats/{worker}.creds"));
        let mut args = vec!["--nats-creds".to_string(), creds.to_str().unwrap().into()];
        args.extend(QUICK.iter().map(|a| a.to_string()));
        args
    }

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

    /// `peerfs mount` expected to refuse; its stderr.
    fn mount_refused(&self, n: &str, worker: &str) -> String {
        let mnt = self.p(&format!("m{n}"));
        fs::create_dir_all(&mnt).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .arg("mount")
            .arg(&mnt)
            .arg("--data")
            .arg(self.p(n))
            .args(self.args(worker))
            .output()
            .unwrap();
        assert!(!out.status.success(), "the worker started");
        assert!(!common::is_mounted(&mnt));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The server's permission violations by `user`.
    fn violations(&self, user: &str) -> Vec<String> {
        self.nats
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("Violation - User \"{user}\"")))
            .map(String::from)
            .collect()
    }
}

/// A NATS client of the test's own (with the inbox prefix the server lets this
/// user read), on a runtime of its own.
struct Client {
    rt: tokio::runtime::Runtime,
    nc: async_nats::Client,
}

impl Client {
    fn connect(url: &str, c: &Creds) -> Client {
        let (rt, nc) = support::raw_client(url, c, Some(Duration::from_millis(800)));
        Client { rt, nc }
    }

    fn js(&self) -> jetstream::Context {
        let _g = self.rt.enter();
        let mut js = jetstream::new(self.nc.clone());
        js.set_timeout(Duration::from_millis(800));
        js
    }

    /// Publishes and flushes (a refused publish is a violation in the server's log).
    fn publish(&self, subject: &str, body: &[u8], reply: Option<&str>) {
        let nc = self.nc.clone();
        let (s, b) = (subject.to_string(), body.to_vec());
        let r = reply.map(String::from);
        self.rt.block_on(async move {
            match r {
                Some(r) => nc.publish_with_reply(s, r, b.into()).await.unwrap(),
                None => nc.publish(s, b.into()).await.unwrap(),
            }
            nc.flush().await.unwrap();
        });
    }

    /// A JetStream publish with `id` as `Nats-Msg-Id`; whether it was stored.
    fn js_publish(&self, subject: &str, id: &str, body: Vec<u8>) -> bool {
        let js = self.js();
        let (s, id) = (subject.to_string(), id.to_string());
        self.rt.block_on(async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            match js.publish_with_headers(s, h, body.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        })
    }

    /// The stream's configuration and (messages, bytes), as the operator sees them.
    fn stream(&self) -> (jetstream::stream::Config, u64, u64) {
        let js = self.js();
        self.rt.block_on(async move {
            let mut s = js.get_stream(STREAM).await.unwrap();
            let i = s.info().await.unwrap();
            (i.config.clone(), i.state.messages, i.state.bytes)
        })
    }

    fn consumer_filter(&self, peer: &str) -> String {
        let js = self.js();
        let name = format!("peer_{peer}");
        self.rt.block_on(async move {
            let s = js.get_stream(STREAM).await.unwrap();
            let mut c: jetstream::consumer::PullConsumer = s.get_consumer(&name).await.unwrap();
            c.info().await.unwrap().config.filter_subject.clone()
        })
    }

    fn entry(&self, peer: &str) -> Option<String> {
        let js = self.js();
        let p = peer.to_string();
        self.rt.block_on(async move {
            let kv = js.get_key_value("peerfs_r").await.unwrap();
            kv.get(&p)
                .await
                .unwrap()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
    }
}

/// dave sends `n` scripts to alice, each counting its run in alice's `c` and
/// marking `m/<name>-<i>`.
fn dave_sends(dave: &Daemon, name: &str, n: usize) {
    let script = format!(
        r#"for i in 0..{n} {{ send("alice", "set(\"c\", (get(\"c\") ?? 0) + 1); set(\"m/{name}-\" + caller.params.i, 1); 1", #{{ i: i }}); }} "queued""#
    );
    fs::write(dave.mnt.join(format!("dave/inbox/{name}.rhai")), script).unwrap();
    assert_eq!(
        value(&dave.mnt.join(format!("dave/outbox/{name}.json"))),
        "queued"
    );
}

/// alice counted `total` runs in all, and stays there; every result of `name`
/// came back to dave `ok`.
fn expect_once(alice_state: &std::path::Path, dave: &Daemon, name: &str, n: usize, total: i64) {
    let c = alice_state.join("c");
    assert!(
        wait_until(Duration::from_secs(60), || state_int(&c) == Some(total)),
        "alice counted {:?} runs, want {total}",
        state_int(&c)
    );
    let outbox = dave.mnt.join("dave/peers/alice/outbox");
    for i in 1..=n {
        let f = outbox.join(format!("{name}-{i}.json"));
        assert_eq!(value(&f), 1, "{}", f.display());
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_int(&c), Some(total), "a message ran twice");
}

/// A clean stop (unmount; the daemon exits and closes its stores).
fn stop(mut d: Daemon) {
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&d.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    d.wait(Duration::from_secs(20));
}

#[test]
fn a_rogue_worker_reads_nothing_and_takes_nothing() {
    let lab = Lab::new(&[]);
    let url = lab.nats.url();
    let alice = lab.mount("d1", "w1");
    let dave = lab.mount("d3", "w3");
    fs::write(alice.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
    let rogue = Client::connect(&url, &lab.creds("w2"));
    let admin = Client::connect(&url, &lab.creds("admin"));
    let (stream_before, _, _) = admin.stream();

    // 1. Every inbox but its own, every message subject, every acknowledgement.
    let wide = [
        "_INBOX.>",
        "_INBOX_w1.>",
        "_INBOX_w3.>",
        ">",
        "peerfs.r.msg.>",
        "$JS.ACK.>",
        "peerfs.r.read.alice.*",
    ];
    let mut subs: Vec<_> = wide
        .iter()
        .map(|s| {
            rogue
                .rt
                .block_on(rogue.nc.subscribe(s.to_string()))
                .unwrap()
        })
        .collect();
    rogue.rt.block_on(rogue.nc.flush()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || lab
        .violations("w2")
        .len()
        >= wide.len()));
    dave_sends(&dave, "seen", 10);
    let alice_state = alice.mnt.join("alice/state");
    expect_once(&alice_state, &dave, "seen", 10, 10);
    fs::read_to_string(dave.mnt.join("dave/peers/alice/state/c")).unwrap();
    for (s, sub) in wide.iter().zip(subs.iter_mut()) {
        let got = rogue
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), sub.next()).await });
        assert!(
            !matches!(got, Ok(Some(_))),
            "the rogue read a message on {s}"
        );
        assert!(
            lab.violations("w2").iter().any(|l| l.contains(&format!(
                "Subscription Violation - User \"w2\", Subject \"{s}\""
            ))),
            "no violation for {s}"
        );
    }

    // 2. With alice's worker stopped (a restart, a move), take or delete her
    // messages: re-filter bob's consumer, make another, pull alice's, purge,
    // delete, change or make the stream.
    stop(alice);
    let filter = r#"{"stream_name":"PEERFS_r","config":{"durable_name":"peer_bob","filter_subject":"peerfs.r.msg.alice.*","ack_policy":"explicit","deliver_policy":"all"}}"#;
    let attempts = [
        "$JS.API.CONSUMER.DURABLE.CREATE.PEERFS_r.peer_bob",
        "$JS.API.CONSUMER.CREATE.PEERFS_r",
        "$JS.API.CONSUMER.CREATE.PEERFS_r.peer_bob.peerfs.r.msg.alice.*",
        "$JS.API.CONSUMER.DURABLE.CREATE.PEERFS_r.peer_alice",
        "$JS.API.CONSUMER.MSG.NEXT.PEERFS_r.peer_alice",
        "$JS.API.CONSUMER.DELETE.PEERFS_r.peer_alice",
        "$JS.API.STREAM.PURGE.PEERFS_r",
        "$JS.API.STREAM.DELETE.PEERFS_r",
        "$JS.API.STREAM.UPDATE.PEERFS_r",
        "$JS.API.STREAM.CREATE.PEERFS_r",
        "$JS.API.STREAM.MSG.DELETE.PEERFS_r",
        "$JS.API.STREAM.UPDATE.KV_peerfs_r",
        "$JS.API.STREAM.PURGE.KV_peerfs_r",
    ];
    dave_sends(&dave, "away", 5);
    for a in attempts {
        rogue.publish(a, filter.as_bytes(), Some("_INBOX_w2.steal"));
        assert!(
            wait_until(Duration::from_secs(5), || lab.violations("w2").iter().any(
                |l| l.contains(&format!("Publish Violation - User \"w2\", Subject \"{a}\""))
            )),
            "the server let the rogue publish on {a}"
        );
    }
    // Its own consumer hands it nothing of alice's.
    let mut next = rogue
        .rt
        .block_on(rogue.nc.subscribe("_INBOX_w2.pull".to_string()))
        .unwrap();
    rogue.publish(
        "$JS.API.CONSUMER.MSG.NEXT.PEERFS_r.peer_bob",
        br#"{"batch":10,"expires":300000000}"#,
        Some("_INBOX_w2.pull"),
    );
    let got = rogue.rt.block_on(async {
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), next.next()).await
        {
            n += usize::from(!m.payload.is_empty());
        }
        n
    });
    assert_eq!(got, 0, "bob's consumer handed out messages");
    assert_eq!(admin.consumer_filter("bob"), "peerfs.r.msg.bob.*");
    assert_eq!(admin.consumer_filter("alice"), "peerfs.r.msg.alice.*");
    let (stream_after, _, _) = admin.stream();
    assert_eq!(stream_after.subjects, stream_before.subjects);
    assert_eq!(stream_after.max_bytes, stream_before.max_bytes);

    // alice back: what waited runs, once.
    let alice = lab.mount("d1", "w1");
    let alice_state = alice.mnt.join("alice/state");
    expect_once(&alice_state, &dave, "away", 5, 15);
    drop(alice);
    drop(dave);
}

#[test]
fn a_rogue_worker_cannot_suppress_redirect_or_lock_out() {
    let lab = Lab::new(&[]);
    let url = lab.nats.url();
    let alice = lab.mount("d1", "w1");
    let dave = lab.mount("d3", "w3");
    fs::write(alice.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
    let rogue = Client::connect(&url, &lab.creds("w2"));
    let admin = Client::connect(&url, &lab.creds("admin"));
    assert!(wait_until(Duration::from_secs(10), || dave
        .mnt
        .join("dave/peers/alice")
        .exists()));

    // 3. A result dropped as a duplicate: with alice's daemon stopped mid-way
    // (SIGSTOP), the rogue publishes first under the result's predictable id.
    alice.freeze();
    fs::write(dave.mnt.join("dave/peers/alice/inbox/q.rhai"), "40 + 2").unwrap();
    let log = || fs::read_to_string(dave.mnt.join("dave/log")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || log()
        .contains(" q.rhai to alice")));
    let id = log()
        .lines()
        .find(|l| l.contains(" q.rhai to alice"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    for guess in [format!("{id}-result"), id.clone()] {
        // Stored (its own subject); its id must not shadow alice's.
        assert!(rogue.js_publish("peerfs.r.msg.dave.bob", &guess, b"{}".to_vec()));
    }
    alice.signal(libc::SIGCONT);
    assert_eq!(value(&dave.mnt.join("dave/peers/alice/outbox/q.json")), 42);

    // 4. A confused deputy: reads of alice's state asked as bob, with replies
    // that name alice's directory entry, a message subject of hers, her
    // acknowledgements and the stream's deletion.
    let js = rogue.js();
    rogue.rt.block_on(async {
        let kv = js.get_key_value("peerfs_r").await.unwrap();
        kv.create("bob", "w2".into()).await.unwrap();
    });
    // The request itself is answered, into the rogue's own inbox (alice has just
    // been continued and catches up first: under the whole suite's load that took
    // over the client's default 10 s once).
    let asked = rogue.rt.block_on(
        rogue.nc.send_request(
            "peerfs.r.read.alice.bob".to_string(),
            async_nats::Request::new()
                .payload(br#"{"key":"c"}"#.to_vec().into())
                .timeout(Some(Duration::from_secs(30))),
        ),
    );
    let asked = String::from_utf8_lossy(&asked.expect("an answer in the rogue's inbox").payload)
        .into_owned();
    assert!(asked.contains("denied"), "{asked}");
    for reply in [
        "$KV.peerfs_r.alice",
        "peerfs.r.msg.dave.alice",
        "$JS.ACK.PEERFS_r.peer_alice.1.1.1.1.1.1",
        "$JS.API.STREAM.DELETE.PEERFS_r",
        "_INBOX_w1.x",
    ] {
        for kind in ["get", "list", "stat"] {
            let body = format!(r#"{{"kind":"{kind}","key":"c"}}"#);
            rogue.publish("peerfs.r.read.alice.bob", body.as_bytes(), Some(reply));
        }
    }
    rogue.publish("peerfs.r.alive.alice", b"x", Some("$KV.peerfs_r.alice"));
    assert!(wait_until(Duration::from_secs(5), || lab
        .violations("w2")
        .iter()
        .any(|l| l.contains("peerfs.r.alive.alice"))));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(admin.entry("alice").as_deref(), Some("w1"));
    let (_, _, _) = admin.stream();
    assert!(
        !fs::read_to_string(dave.mnt.join("dave/log"))
            .unwrap()
            .contains("caller=alice"),
        "alice's worker published a message as alice"
    );
    assert!(
        alice.log_text().contains("not answered"),
        "{}",
        alice.log_text()
    );
    // alice's worker restarts as before: nothing locked it out.
    stop(alice);
    let alice = lab.mount("d1", "w1");
    dave_sends(&dave, "after", 3);
    expect_once(&alice.mnt.join("alice/state"), &dave, "after", 3, 3);

    // A directory entry damaged anyway (here by the operator's own hand) is
    // named at start and repaired by `lattice provision`.
    stop(alice);
    admin.rt.block_on(async {
        let kv = admin.js().get_key_value("peerfs_r").await.unwrap();
        kv.put("alice", r#"{"value":null}"#.into()).await.unwrap();
    });
    let refused = lab.mount_refused("d1", "w1");
    assert!(refused.contains("is damaged"), "{refused}");
    assert!(refused.contains("lattice provision"), "{refused}");
    let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(["lattice", "provision"])
        .arg(lab.p("nats"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("repaired the directory entry of alice"),
        "{said}"
    );
    assert_eq!(admin.entry("alice").as_deref(), Some("w1"));
    let alice = lab.mount("d1", "w1");
    drop(alice);
    drop(dave);
}

#[test]
fn a_rogue_worker_cannot_fill_the_server_or_make_the_stream() {
    let lab = Lab::new(&["--max-bytes", "4194304", "--max-pending", "4"]);
    let url = lab.nats.url();
    let rogue = Client::connect(&url, &lab.creds("w2"));
    let admin = Client::connect(&url, &lab.creds("admin"));
    let big = vec![b'x'; 512 << 10];

    // 5. A peer that does not exist: nothing is stored.
    for i in 0..6 {
        assert!(!rogue.js_publish("peerfs.r.msg.nobody.bob", &format!("n{i}"), big.clone()));
    }
    assert_eq!(admin.stream().1, 0, "messages to no peer were stored");
    // A peer whose worker is away: at most --max-pending per sender, at most
    // --max-bytes in all.
    let stored = (0..10)
        .filter(|i| rogue.js_publish("peerfs.r.msg.alice.bob", &format!("a{i}"), big.clone()))
        .count();
    assert_eq!(stored, 4, "messages waiting from bob to alice");
    let stored = (0..10)
        .filter(|i| rogue.js_publish("peerfs.r.msg.dave.bob", &format!("d{i}"), big.clone()))
        .count();
    let (_, msgs, bytes) = admin.stream();
    assert!(bytes <= 4 << 20, "{bytes} bytes stored");
    assert!(stored < 4 && msgs < 8, "{stored} to dave, {msgs} in all");

    // The honest workers take (and drop) what the rogue left, and exchange
    // messages exactly once.
    let alice = lab.mount("d1", "w1");
    let dave = lab.mount("d3", "w3");
    fs::write(alice.mnt.join("alice/policy.cedar"), ALICE_POLICY).unwrap();
    assert!(wait_until(Duration::from_secs(10), || dave
        .mnt
        .join("dave/peers/alice")
        .exists()));
    dave_sends(&dave, "full", 5);
    expect_once(&alice.mnt.join("alice/state"), &dave, "full", 5, 5);
    assert!(wait_until(Duration::from_secs(20), || admin.stream().1 == 0));

    // 6. A stream made otherwise (a broader subject, no limits): a worker
    // refuses it, naming the fix, and provisioning makes it right.
    stop(alice);
    stop(dave);
    let js = admin.js();
    admin.rt.block_on(async {
        js.delete_stream(STREAM).await.unwrap();
        js.create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["peerfs.r.msg.>".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let refused = lab.mount_refused("d1", "w1");
    assert!(
        refused.contains("not as `peerfs lattice provision` makes it"),
        "{refused}"
    );
    lab.nats.provision();
    let alice = lab.mount("d1", "w1");
    drop(alice);

    // Another lattice than the credentials': refused, naming both.
    let creds = lab.p("nats/w1.creds");
    fs::create_dir_all(lab.p("m-other")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .arg("mount")
        .arg(lab.p("m-other"))
        .arg("--data")
        .arg(lab.p("d1"))
        .args(join_args(&url, &creds, "other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("are for the lattice r, not other"),
        "{err}"
    );

    // Credentials never in argv, never printed.
    let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .arg("mount")
        .arg(lab.p("m-other"))
        .arg("--data")
        .arg(lab.p("d1"))
        .args([
            "--nats",
            "nats://w1:secret@127.0.0.1:9",
            "--lattice",
            LATTICE,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("process list"),
        "{err}"
    );
    let password = lab.creds("w1").password;
    let out = Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(["config", "show", "--data"])
        .arg(lab.p("d1"))
        .arg("--nats-creds")
        .arg(lab.p("nats/w1.creds"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("w1.creds") && !shown.contains(&password),
        "{shown}"
    );
}
