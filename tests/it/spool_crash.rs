//! Crash anywhere, spool mode: SIGKILL `peerfs serve --spool` at random moments
//! while scripts stream into inboxes (renamed in, or written in place and closed),
//! restart, and check at the end that every script that reached an inbox under its
//! final name ran exactly once and has its result. `scripts-ci/crash-spool` runs
//! many rounds (PEERFS_SPOOL_CRASH_ROUNDS); the test suite runs a few.

use crate::common;
use crate::spool_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool_support::{names, peerfs, wait_until, SpoolDaemon};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn script(name: &str) -> String {
    format!(
        r#"set("count", (get("count") ?? 0) + 1); let k = "ran/{name}"; set(k, (get(k) ?? 0) + 1); 0"#
    )
}

/// One script into `inbox` as `name`: renamed in from a staging name, or written
/// in place and closed. Either way it has reached the inbox when this returns.
fn drop_script(inbox: &Path, name: &str, rename: bool) {
    let src = script(name.trim_end_matches(".rhai"));
    if rename {
        let stage = inbox.join(format!(".{name}.part"));
        std::fs::write(&stage, &src).unwrap();
        std::fs::rename(&stage, inbox.join(name)).unwrap();
    } else {
        std::fs::write(inbox.join(name), &src).unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_runs_nothing_twice() {
    let rounds: usize = std::env::var("PEERFS_SPOOL_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let t = tempfile::tempdir().unwrap();
    let (data, dir) = (t.path().join("data"), t.path().join("spool"));
    for p in ["alice", "bob"] {
        let o = peerfs(&["peer", "create", p, "--data", data.to_str().unwrap()]);
        assert!(o.status.success());
    }
    let mut d = SpoolDaemon::start(&data, &dir, t.path());
    common::sh_ok(&format!(
        "echo 'permit(principal == Peer::\"bob\", action, resource);' > {}/alice/policy.cedar",
        common::q(&dir)
    ));
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(dir.join("alice/log")).is_ok_and(|l| l.contains("policy updated"))
    }));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    // Every script that reached an inbox: name -> the outbox its result goes to.
    let dropped: Arc<Mutex<BTreeMap<String, PathBuf>>> = Default::default();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, dropped, dir) = (stop.clone(), dropped.clone(), dir.clone());
            let seed = rng.below(u64::MAX) | 1;
            std::thread::spawn(move || {
                let mut rng = Rng(seed);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("r{round}-{i}.rhai");
                    // Own scripts, and scripts bob drops at alice.
                    let (inbox, outbox) = if rng.below(3) == 0 {
                        (
                            dir.join("bob/peers/alice/inbox"),
                            dir.join("bob/peers/alice/outbox"),
                        )
                    } else {
                        (dir.join("alice/inbox"), dir.join("alice/outbox"))
                    };
                    drop_script(&inbox, &name, rng.below(2) == 0);
                    dropped.lock().unwrap().insert(name, outbox);
                    i += 1;
                    std::thread::sleep(Duration::from_micros(rng.below(3000)));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        d = SpoolDaemon::start(&data, &dir, t.path());
    }
    let all = dropped.lock().unwrap().clone();
    let inboxes = [dir.join("alice/inbox"), dir.join("bob/peers/alice/inbox")];
    let settled = wait_until(Duration::from_secs(120), || {
        inboxes.iter().all(|i| names(i).is_empty())
            && all
                .iter()
                .all(|(n, o)| o.join(n.replace(".rhai", ".json")).exists())
    });
    let missing: Vec<_> = all
        .iter()
        .filter(|(n, o)| !o.join(n.replace(".rhai", ".json")).exists())
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        settled,
        "not settled: inboxes {:?}, {} results missing (first {:?})",
        inboxes.iter().map(|i| names(i)).collect::<Vec<_>>(),
        missing.len(),
        missing.first()
    );
    d.stop();
    // The store is the truth: each script ran once, and nothing else ran.
    let db = rusqlite::Connection::open(data.join("peers/alice.sqlite")).unwrap();
    let mut ran = BTreeMap::new();
    let mut count = 0i64;
    let mut stmt = db
        .prepare("SELECT s.key, CAST(d.data AS TEXT) FROM state s JOIN state_data d ON d.id = s.id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    for row in rows {
        let (k, v) = row.unwrap();
        let v: i64 = v.parse().unwrap();
        if k == "count" {
            count = v;
        } else if let Some(n) = k.strip_prefix("ran/") {
            ran.insert(format!("{n}.rhai"), v);
        }
    }
    let twice: Vec<_> = ran.iter().filter(|(_, v)| **v != 1).collect();
    let lost: Vec<_> = all.keys().filter(|n| !ran.contains_key(*n)).collect();
    let extra: Vec<_> = ran.keys().filter(|n| !all.contains_key(*n)).collect();
    println!(
        "spool_crash.rounds: {rounds}\nspool_crash.scripts: {}\nspool_crash.violations: {}",
        all.len(),
        twice.len() + lost.len() + extra.len()
    );
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(extra.is_empty(), "ran but never dropped: {extra:?}");
    assert_eq!(count, all.len() as i64);
}
