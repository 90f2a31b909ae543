//! `scripts-ci/bench lattice`: sends between daemons over NATS JetStream against
//! sends within one daemon, measured in the same run. Every daemon is a real
//! `peerfs mount` (child process) on its own data folder; one nats-server (free
//! loopback port, temporary store) carries the lattice.
//!
//! - round trip: alice's script sends one script to bob and the result is read
//!   back in `alice/peers/bob/outbox/` (the read waits): p50 of 200, with bob in
//!   the same daemon (`in_process`) and in another one (`cross_worker`), measured
//!   in turns of 20 with every daemon up, so that both see the same machine;
//! - throughput: one script at alice sends 10,000 scripts to bob; the clock stops
//!   when the last result is back; the mean of two runs each, in the order
//!   in-process, cross, cross, in-process;
//! - many: 100 peers over 4 daemons, each sending 50 scripts to other peers;
//! - faults: nats-server SIGKILLed and restarted while 500 sends are in flight;
//!   every script must run once (`lost`, `doubled` count the others).
//!
//! Needs `nats-server` (scripts-ci/setup installs it) and FUSE.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LATTICE: &str = "bench";
const ALL: &str =
    r#"permit(principal, action in [Action::"run", Action::"read", Action::"write"], resource);"#;

fn bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("peerfs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

struct Proc(Child, Option<PathBuf>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(m) = &self.1 {
            let _ = Command::new("fusermount3").arg("-u").arg(m).status();
            std::thread::sleep(Duration::from_millis(200));
            // Only a mount the first unmount left behind is still there: quiet.
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn nats(conf: &Path, port: u16) -> Proc {
    let c = Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server");
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    // The stream, directory and consumers, made by the operator (idempotent).
    assert!(
        wait_until(Duration::from_secs(10), || Command::new(bin())
            .args(["lattice", "provision"])
            .arg(conf.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()),
        "lattice provision"
    );
    Proc(c, None)
}

fn create(data: &Path, peer: &str) {
    assert!(Command::new(bin())
        .args(["peer", "create", peer, "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
}

fn mount(data: &Path, mnt: &Path, lattice: Option<(&str, &Path)>) -> Proc {
    std::fs::create_dir_all(mnt).unwrap();
    let mut c = Command::new(bin());
    // 10,000 sends from one run: more than the default chain budget.
    c.arg("mount").arg(mnt).arg("--data").arg(data);
    c.args(["-o", "chain_budget=100000"]);
    if let Some((url, creds)) = lattice {
        c.args(["--nats", url, "--lattice", LATTICE, "--nats-creds"])
            .arg(creds);
    }
    let child = c
        .env("RUST_LOG", "peerfs=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || mnt
            .join(".peerfs/version")
            .exists()),
        "mount {} did not come up",
        mnt.display()
    );
    Proc(child, Some(mnt.to_path_buf()))
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `n` round trips alice → bob (results in `alice/peers/bob/outbox/`).
fn round_trips(mnt: &Path, tag: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("rt-{tag}-{i}");
        let t = Instant::now();
        std::fs::write(
            mnt.join(format!("alice/inbox/{name}.rhai")),
            r#"send("bob", "1 + 1"); 0"#,
        )
        .unwrap();
        std::fs::read(mnt.join(format!("alice/outbox/{name}.json"))).unwrap();
        let r = std::fs::read(mnt.join(format!("alice/peers/bob/outbox/{name}-1.json"))).unwrap();
        v.push(t.elapsed());
        assert!(
            String::from_utf8_lossy(&r).contains("\"ok\""),
            "{}",
            String::from_utf8_lossy(&r)
        );
    }
    v
}

/// Sends/s of `n` sends alice → bob, until every result is back.
fn throughput(mnt: &Path, tag: &str, n: usize) -> f64 {
    let name = format!("tp-{tag}");
    let t = Instant::now();
    std::fs::write(
        mnt.join(format!("alice/inbox/{name}.rhai")),
        format!(r#"for i in 0..{n} {{ send("bob", "1"); }} 0"#),
    )
    .unwrap();
    // The sending run first (its sends' result rows exist once it committed).
    let own = std::fs::read(mnt.join(format!("alice/outbox/{name}.json"))).unwrap();
    let own = String::from_utf8_lossy(&own);
    assert!(own.contains("\"ok\""), "{own}");
    let out = mnt.join("alice/peers/bob/outbox");
    let r = std::fs::read(out.join(format!("{name}-{n}.json"))).unwrap();
    assert!(String::from_utf8_lossy(&r).contains("\"ok\""));
    // The last result can overtake others only after a fault: count them all.
    assert!(wait_until(Duration::from_secs(120), || {
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .count()
            == n
    }));
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let workers: Vec<String> = (0..4)
        .map(|w| {
            let mut peers: Vec<String> = (0..25).map(|i| format!("p{w}x{i}")).collect();
            match w {
                0 => peers.push("alice".into()),
                1 => peers.push("bob".into()),
                _ => {}
            }
            format!("w{w}={}", peers.join(","))
        })
        .collect();
    let mut init = Command::new(bin());
    init.args(["lattice", "init"])
        .arg(d.join("nats"))
        .args(["--lattice", LATTICE, "--listen"])
        .arg(format!("127.0.0.1:{port}"));
    for w in &workers {
        init.args(["--worker", w]);
    }
    assert!(init.stdout(Stdio::null()).status().unwrap().success());
    let mut server = Some(nats(&d.join("nats/nats-server.conf"), port));
    let url = format!("nats://127.0.0.1:{port}");

    // In process: alice and bob in one daemon, no lattice. It stays mounted while
    // the lattice's daemons run, and the two are measured in turns, so that both
    // figures of a ratio see the same machine.
    let solo = d.join("solo");
    create(&solo, "alice");
    create(&solo, "bob");
    let solo_mount = mount(&solo, &d.join("m-solo"), None);
    let solo_mnt = solo_mount.1.clone().unwrap();
    std::fs::write(solo_mnt.join("bob/policy.cedar"), ALL).unwrap();

    // Across workers: w0 (alice, p0x*) and w1 (bob, p1x*), then w2 and w3.
    let mut mounts = Vec::new();
    for w in 0..4 {
        let data = d.join(format!("d{w}"));
        for i in 0..25 {
            create(&data, &format!("p{w}x{i}"));
        }
        match w {
            0 => create(&data, "alice"),
            1 => create(&data, "bob"),
            _ => {}
        }
        let creds = d.join(format!("nats/w{w}.creds"));
        mounts.push(mount(&data, &d.join(format!("m{w}")), Some((&url, &creds))));
    }
    let mnt = |w: usize| mounts[w].1.clone().unwrap();
    std::fs::write(mnt(1).join("bob/policy.cedar"), ALL).unwrap();
    for w in 0..4 {
        for i in 0..25 {
            std::fs::write(mnt(w).join(format!("p{w}x{i}/policy.cedar")), ALL).unwrap();
        }
    }
    assert!(wait_until(Duration::from_secs(20), || mnt(0)
        .join("alice/peers/bob")
        .exists()));
    round_trips(&solo_mnt, "warm", 20);
    round_trips(&mnt(0), "warm", 20);
    // 200 round trips each, in ten turns of 20.
    let (mut rt_in, mut rt_x) = (Vec::new(), Vec::new());
    for turn in 0..10 {
        rt_in.extend(round_trips(&solo_mnt, &format!("m{turn}"), 20));
        rt_x.extend(round_trips(&mnt(0), &format!("x{turn}"), 20));
    }
    let (rt_in, rt_x) = (p50(rt_in), p50(rt_x));
    // 10,000 sends each, twice, in the order in, cross, cross, in.
    let mut tp = [0.0f64; 2];
    for (k, which) in [0, 1, 1, 0].into_iter().enumerate() {
        let m = if which == 0 { solo_mnt.clone() } else { mnt(0) };
        tp[which] += throughput(&m, &format!("t{k}"), 10_000) / 2.0;
    }
    let [tp_in, tp_x] = tp;
    drop(solo_mount);

    // Many: every peer sends 50 scripts to peers of the other daemons.
    let targets = |w: usize, i: usize| -> Vec<String> {
        (0..50)
            .map(|k| format!("p{}x{}", (w + 1 + k % 3) % 4, (i + k) % 25))
            .collect()
    };
    let t = Instant::now();
    for w in 0..4 {
        for i in 0..25 {
            let quoted: Vec<String> = targets(w, i).iter().map(|t| format!("\"{t}\"")).collect();
            std::fs::write(
                mnt(w).join(format!("p{w}x{i}/inbox/many.rhai")),
                format!(
                    "for t in [{}] {{ send(t, \"set(\\\"got/\\\" + caller.name, 1); 1\"); }} 0",
                    quoted.join(",")
                ),
            )
            .unwrap();
        }
    }
    let total = 4 * 25 * 50;
    // Counted where the results come back: each sender's folders of its 50
    // targets, polled every 20 ms (not every peer's whole `peers/`, which would
    // be ten times the reads and take the cores from what is measured).
    let mut back = vec![0usize; 100];
    let mut last = Instant::now();
    let done = wait_until(Duration::from_secs(300), || {
        for w in 0..4 {
            for i in 0..25 {
                if back[w * 25 + i] == 50 {
                    continue;
                }
                back[w * 25 + i] = targets(w, i)
                    .iter()
                    .filter(|t| {
                        let out = mnt(w).join(format!("p{w}x{i}/peers/{t}/outbox"));
                        std::fs::read_dir(out).is_ok_and(|o| {
                            o.flatten()
                                .any(|f| f.file_name().to_string_lossy().starts_with("many-"))
                        })
                    })
                    .count();
            }
        }
        last = Instant::now();
        if back.iter().sum::<usize>() >= total {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(done, "many: not every result came back: {:?}", back);
    let many = total as f64 / (last - t).as_secs_f64();

    // Faults: nats-server killed and restarted with 500 sends in flight.
    let n = 500;
    std::fs::write(
        mnt(0).join("alice/inbox/fault.rhai"),
        format!(r#"for i in 0..{n} {{ send("bob", "set(\"f/\" + caller.params.i, (get(\"f/\" + caller.params.i) ?? 0) + 1); 1", #{{ i: i }}); }} 0"#),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(server.take());
    std::thread::sleep(Duration::from_millis(500));
    server = Some(nats(&d.join("nats/nats-server.conf"), port));
    let state = mnt(1).join("bob/state/f");
    let count = || std::fs::read_dir(&state).map(|r| r.count()).unwrap_or(0);
    wait_until(Duration::from_secs(120), || count() >= n);
    std::thread::sleep(Duration::from_secs(2));
    let mut lost = 0;
    let mut doubled = 0;
    for i in 0..n {
        match std::fs::read_to_string(state.join(i.to_string())) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => doubled += 1,
            Err(_) => lost += 1,
        }
    }
    drop(mounts);
    drop(server);

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "lattice.in_process.send_round_trip_us.p50: {:.0}",
        us(rt_in)
    );
    println!(
        "lattice.cross_worker.send_round_trip_us.p50: {:.0}",
        us(rt_x)
    );
    println!("lattice.round_trip_ratio: {:.2}", us(rt_x) / us(rt_in));
    println!("lattice.in_process.sends_per_s: {tp_in:.0}");
    println!("lattice.cross_worker.sends_per_s: {tp_x:.0}");
    println!("lattice.throughput_ratio: {:.2}", tp_x / tp_in);
    println!("lattice.many.sends_per_s: {many:.0}");
    println!("lattice.faults.lost: {lost}");
    println!("lattice.faults.doubled: {doubled}");
}
