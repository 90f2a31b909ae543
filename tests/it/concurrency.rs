//! Races, on purpose: many writers on one peer, many peers at once, readers racing
//! results, shutdown while runs are in flight. Threads start together at a barrier;
//! a watchdog turns a deadlock into a failure.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use peerfs::exec::{Config, Core, Op};
use serde_json::{json, Value};

fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("deadlock: the work did not finish in time")
}

fn core(dir: &std::path::Path) -> Core {
    let mut c = Config::new(dir);
    c.runners = 4;
    Core::start(c).unwrap()
}

const INC: &str = r#"let n = (get("n") ?? 0) + 1; set("n", n); n"#;

#[test]
fn many_writers_on_one_peer_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("p", 0, 0).unwrap();
    let threads = 8;
    let per = 150;
    let b = Arc::new(Barrier::new(threads));
    let values = within(60, {
        let c = c.clone();
        move || {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (c, b) = (c.clone(), b.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        let mut vals = Vec::new();
                        for i in 0..per {
                            let name = format!("t{t}-{i}.rhai");
                            c.submit("p", &name, INC.as_bytes().to_vec()).unwrap();
                            // A reader races the run that is about to finish.
                            let r: Value = serde_json::from_slice(
                                &c.wait_result("p", "p", &format!("t{t}-{i}.json")).unwrap(),
                            )
                            .unwrap();
                            assert_eq!(r["status"], "ok", "{r}");
                            vals.push(r["value"].as_i64().unwrap());
                        }
                        vals
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<i64>>()
        }
    });
    // Runs are serial: every value 1..=N appears exactly once.
    let mut v = values;
    v.sort();
    assert_eq!(v, (1..=(threads * per) as i64).collect::<Vec<_>>());
    c.shutdown();
}

#[test]
fn many_peers_at_once() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    for i in 0..40 {
        c.create_peer(&format!("p{i}"), 0, 0).unwrap();
    }
    let b = Arc::new(Barrier::new(40));
    within(60, {
        let c = c.clone();
        move || {
            let hs: Vec<_> = (0..40)
                .map(|i| {
                    let (c, b) = (c.clone(), b.clone());
                    std::thread::spawn(move || {
                        let p = format!("p{i}");
                        b.wait();
                        for j in 0..30 {
                            let job = c
                                .new_job(
                                    &p,
                                    &format!("j{j}.rhai"),
                                    INC.as_bytes().to_vec(),
                                    &json!({}),
                                )
                                .unwrap();
                            c.apply(&p, Op::Submit(job)).unwrap();
                        }
                        let r: Value =
                            serde_json::from_slice(&c.wait_result(&p, &p, "j29.json").unwrap())
                                .unwrap();
                        assert_eq!(r["value"], 30, "{p}: {r}");
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        }
    });
    c.shutdown();
}

#[test]
fn readers_racing_a_rerun_of_the_same_name_get_a_complete_result() {
    let d = tempfile::tempdir().unwrap();
    let c = core(d.path());
    c.create_peer("p", 0, 0).unwrap();
    within(60, {
        let c = c.clone();
        move || {
            let b = Arc::new(Barrier::new(5));
            let writer = {
                let (c, b) = (c.clone(), b.clone());
                std::thread::spawn(move || {
                    b.wait();
                    for i in 0..200 {
                        c.submit("p", "same.rhai", format!("{i}").into_bytes())
                            .unwrap();
                    }
                })
            };
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let (c, b) = (c.clone(), b.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        for _ in 0..200 {
                            match c.wait_result("p", "p", "same.json") {
                                Ok(bytes) => {
                                    let r: Value = serde_json::from_slice(&bytes)
                                        .expect("a complete JSON result");
                                    assert_eq!(r["status"], "ok");
                                }
                                Err(e) => assert_eq!(e.errno, libc::ENOENT, "{e}"),
                            }
                        }
                    })
                })
                .collect();
            writer.join().unwrap();
            for r in readers {
                r.join().unwrap();
            }
        }
    });
    let last: Value =
        serde_json::from_slice(&c.wait_result("p", "p", "same.json").unwrap()).unwrap();
    assert_eq!(last["value"], 199);
    c.shutdown();
}

#[test]
fn shutdown_while_runs_are_in_flight_keeps_them_queued() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.own_limits.max_operations = u64::MAX / 2;
    cfg.own_limits.max_wall_ms = 60_000;
    let c = Core::start(cfg.clone()).unwrap();
    c.create_peer("p", 0, 0).unwrap();
    // Submitted together (a blocking submit would wait for the run in progress).
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..4 {
        let job = c
            .new_job(
                "p",
                &format!("slow{i}.rhai"),
                format!(
                    r#"set("started{i}", true); let i = 0; while i < 20000000 {{ i += 1; }} i"#
                )
                .into_bytes(),
                &json!({}),
            )
            .unwrap();
        let tx = tx.clone();
        c.apply_async(
            "p",
            Op::Submit(job),
            Some(Box::new(move |r| tx.send(r).unwrap())),
        );
    }
    for _ in 0..4 {
        rx.recv().unwrap().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // Readers are waiting when the daemon stops: they must be answered, not hang.
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.wait_result("p", "p", "slow3.json"))
    };
    within(30, {
        let c = c.clone();
        move || c.shutdown()
    });
    let e = waiter
        .join()
        .unwrap()
        .expect_err("a reader waiting at shutdown gets an error, not a hang");
    assert!(e.is_stopped(), "the one 'stopped' error: {e:?}");
    assert_eq!(e.errno, libc::ENOTCONN, "{e}");
    drop(c);
    let mut s = peerfs::store::SqliteStore::open(&d.path().join("peers/p.sqlite"), false).unwrap();
    use peerfs::store::prelude::*;
    let hist = s.run_history(10).unwrap();
    // Usually all four submissions commit together and the shutdown interrupts the
    // first run. On a loaded machine a runner may start the first run before the
    // other three submissions reach it: they commit after it, and the shutdown
    // interrupts the second. Either way every run that did not finish stays queued
    // and left nothing behind, and one run was in flight when the daemon stopped.
    let queued = s.queue_len().unwrap();
    assert!(
        queued >= 1,
        "the run in flight at shutdown stays queued: {hist:?}"
    );
    assert_eq!(
        queued + hist.len() as u64,
        4,
        "every script either ran or stays queued: {hist:?}"
    );
    for i in 0..4 {
        let ran = hist.iter().any(|r| r.2.contains(&format!("slow{i}.rhai")));
        assert_eq!(
            s.get(&format!("started{i}")).unwrap().is_some(),
            ran,
            "slow{i}: its effects are there exactly when it ran (interrupted: rolled back)"
        );
    }
}
