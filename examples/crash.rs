//! `scripts-ci/crash`: kill the daemon with SIGKILL at random moments while scripts
//! stream in through the mount (state changes, sends between peers, module and
//! policy edits; some scripts take a while, so that drops meanwhile wait in the
//! intake journal and kills land between its commit and the peer's take), remount, and check after every round that nothing acknowledged
//! was lost and nothing ran twice. Prints `crash.rounds: N`,
//! `crash.rounds_killed_with_journal_held: N` (kills that left submissions in the
//! intake journal, not yet in their peer's queue) and `crash.violations: N`.
//!
//! Usage: crash [ROUNDS] (default 200). Needs the `peerfs` binary next to this one
//! (target/release/peerfs) and FUSE.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, mnt: &Path, data: &Path) -> Daemon {
        let child = Command::new(bin)
            .args([
                "mount",
                mnt.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--force",
                // The checks count runs in each peer's history: none is pruned
                // (the long mode acknowledges tens of thousands).
                "-o",
                "run_retention=100000000",
            ])
            .env("RUST_LOG", "peerfs=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start peerfs");
        let d = Daemon {
            child,
            mnt: mnt.to_path_buf(),
        };
        let t = Instant::now();
        while !mounted(mnt) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    fn kill(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        unmount(&self.mnt);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        unmount(&self.mnt);
    }
}

fn mounted(mnt: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = mnt.to_string_lossy();
    m.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
        && std::fs::metadata(mnt.join(".peerfs")).is_ok()
}

fn unmount(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// What the client knows was acknowledged (close or rename returned success).
#[derive(Default)]
struct Acked {
    /// counter scripts at alice: id
    own: BTreeSet<u64>,
    /// scripts alice sent to bob through peers/bob/inbox: id
    remote: BTreeSet<u64>,
    /// scripts at alice that send() to bob: id
    sends: BTreeSet<u64>,
}

fn client(mnt: PathBuf, next: Arc<Mutex<u64>>, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut rng = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let id = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        let kind = rng % 12;
        let r = match kind {
            0..=4 | 10 | 11 => {
                // Some take a while, so that drops meanwhile wait in the intake
                // journal (the kill lands between its commit and alice's take).
                let slow = if kind >= 10 {
                    "let i = 0; while i < 100000 { i += 1; } "
                } else {
                    ""
                };
                let src = format!("{slow}let c = (get(\"count\") ?? 0) + 1; set(\"count\", c); set(\"seen/{id}\", c); c");
                peerfs::util::write_and_close(
                    &mnt.join(format!("alice/inbox/c{id}.rhai")),
                    src.as_bytes(),
                )
                .map(|_| 0)
            }
            5 | 6 => {
                let src = format!("set(\"shared/r{id}\", caller.name); 1");
                peerfs::util::write_and_close(
                    &mnt.join(format!("alice/peers/bob/inbox/r{id}.rhai")),
                    src.as_bytes(),
                )
                .map(|_| 1)
            }
            7 | 8 => {
                let src = format!("send(\"bob\", \"set(`shared/s{id}`, caller.name); 1\"); 1");
                peerfs::util::write_and_close(
                    &mnt.join(format!("alice/inbox/s{id}.rhai")),
                    src.as_bytes(),
                )
                .map(|_| 2)
            }
            9 => {
                // Module and policy edits: acknowledged or not, they must not break anything.
                let _ = std::fs::write(
                    mnt.join("alice/modules/m.rhai"),
                    format!("fn v() {{ {id} }}"),
                );
                peerfs::util::write_and_close(&mnt.join("bob/policy.cedar"), BOB_POLICY.as_bytes())
                    .map(|_| 3)
            }
            _ => unreachable!(),
        };
        if let Ok(k) = r {
            let mut a = acked.lock().unwrap();
            match k {
                0 => {
                    a.own.insert(id);
                }
                1 => {
                    a.remote.insert(id);
                }
                2 => {
                    a.sends.insert(id);
                }
                _ => {}
            }
        }
    }
}

const BOB_POLICY: &str = "permit(principal == Peer::\"alice\", action in [Action::\"run\", Action::\"read\", Action::\"write\"], resource);\n";

struct Db(Connection);

impl Db {
    fn open(p: &Path) -> Db {
        Db(Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap())
    }
    fn strings(&self, sql: &str) -> Vec<String> {
        let mut st = self.0.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }
}

/// The scripts the intake journal (`DATA/intake.sqlite`) still holds for the
/// peer whose store is `db`: those after the peer's mark (the ones at or below it
/// are in its store already), not withdrawn.
fn journal_held(data: &Path, peer: &str, db: &Db) -> BTreeSet<String> {
    let path = data.join("intake.sqlite");
    if !path.exists() {
        return BTreeSet::new();
    }
    let j = Db::open(&path);
    let Some(id) = j.strings("SELECT v FROM meta WHERE k='id'").pop() else {
        return BTreeSet::new();
    };
    let mark: i64 = db
        .strings(&format!(
            "SELECT CAST(v AS TEXT) FROM meta WHERE k='intake-journal/{id}'"
        ))
        .pop()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    j.strings(&format!(
        "SELECT name FROM intake WHERE peer='{peer}' AND seq>{mark} AND withdrawn=0"
    ))
    .into_iter()
    .collect()
}

/// Checks the stores (daemon stopped). `settled`: every queue should be drained.
fn check(data: &Path, acked: &Acked, settled: bool) -> Vec<String> {
    let mut v = Vec::new();
    let alice = Db::open(&data.join("peers/alice.sqlite"));
    let bob = Db::open(&data.join("peers/bob.sqlite"));
    for (name, db) in [("alice", &alice), ("bob", &bob)] {
        let ic = db.strings("PRAGMA integrity_check");
        if ic != ["ok"] {
            v.push(format!("{name}: integrity_check {ic:?}"));
        }
    }
    let count = |db: &Db, sql: &str| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in db.strings(sql) {
            *m.entry(s).or_insert(0) += 1;
        }
        m
    };
    let runs_a = count(&alice, "SELECT name FROM runs");
    let held_a = journal_held(data, "alice", &alice);
    let held_b = journal_held(data, "bob", &bob);
    let runs_b = count(&bob, "SELECT name FROM runs");
    // A script held in the journal after its peer's mark is taken at the next
    // start: if it also ran already, it would run twice.
    for n in held_a.iter().filter(|n| runs_a.contains_key(*n)) {
        v.push(format!("{n} ran and is still held in the intake journal"));
    }
    for n in held_b.iter().filter(|n| runs_b.contains_key(*n)) {
        v.push(format!(
            "{n} ran at bob and is still held in the intake journal"
        ));
    }
    if settled && !(held_a.is_empty() && held_b.is_empty()) {
        v.push(format!(
            "the intake journal still holds {held_a:?} {held_b:?}"
        ));
    }
    // Queued: in the peer's queue, or held in the journal.
    let queued_a: BTreeSet<String> = alice
        .strings("SELECT name FROM queue")
        .into_iter()
        .chain(held_a)
        .collect();
    let queued_b: BTreeSet<String> = bob
        .strings("SELECT name FROM queue")
        .into_iter()
        .chain(held_b)
        .collect();
    let undelivered: BTreeSet<String> = alice
        .strings("SELECT name FROM sent WHERE delivered_at IS NULL")
        .into_iter()
        .collect();
    // No run twice, anywhere.
    for (n, c) in runs_a.iter().chain(runs_b.iter()) {
        if *c > 1 {
            v.push(format!("{n} ran {c} times"));
        }
    }
    // Every acknowledged own script ran once or is still queued.
    for id in &acked.own {
        let n = format!("c{id}.rhai");
        let ran = runs_a.contains_key(&n);
        if !ran && !queued_a.contains(&n) {
            v.push(format!("acknowledged {n} was lost"));
        } else if !ran && settled {
            v.push(format!("acknowledged {n} is still queued after settling"));
        }
    }
    // State equals what the results say: count == number of counter runs that were ok,
    // and seen/<id> exists exactly for those.
    let ok_counters: BTreeSet<String> = alice
        .strings("SELECT name FROM runs WHERE status='ok' AND name LIKE 'c%'")
        .into_iter()
        .collect();
    let count_val: i64 = alice
        .0
        .query_row(
            "SELECT coalesce((SELECT CAST(CAST(d.data AS TEXT) AS INTEGER) FROM state s JOIN state_data d ON d.id = s.id WHERE s.key='count'), 0)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if count_val as usize != ok_counters.len() {
        v.push(format!(
            "count is {count_val} but {} counter runs are ok",
            ok_counters.len()
        ));
    }
    let seen = alice
        .strings("SELECT key FROM state WHERE key LIKE 'seen/%'")
        .len();
    if seen != ok_counters.len() {
        v.push(format!(
            "{seen} seen/ keys but {} counter runs are ok",
            ok_counters.len()
        ));
    }
    // Remote scripts: ran once at bob, queued at bob, or not yet delivered by alice.
    for id in &acked.remote {
        let n = format!("r{id}.rhai");
        let there = runs_b.contains_key(&n) || queued_b.contains(&n) || undelivered.contains(&n);
        if !there || (settled && !runs_b.contains_key(&n)) {
            v.push(format!("acknowledged remote {n} was lost"));
        }
    }
    // Sends: every ok sending run delivered exactly one script that ran once at bob.
    let ok_senders: BTreeSet<String> = alice
        .strings("SELECT name FROM runs WHERE status='ok' AND name LIKE 's%'")
        .into_iter()
        .collect();
    for s in &ok_senders {
        let sent = format!("{}-1.rhai", s.trim_end_matches(".rhai"));
        let there =
            runs_b.contains_key(&sent) || queued_b.contains(&sent) || undelivered.contains(&sent);
        if !there || (settled && !runs_b.contains_key(&sent)) {
            v.push(format!("message {sent} from an ok run was lost"));
        }
    }
    if settled {
        for id in &acked.sends {
            if !runs_a.contains_key(&format!("s{id}.rhai")) {
                v.push(format!("acknowledged s{id}.rhai never ran"));
            }
        }
    }
    // Bob's state matches bob's ok runs.
    let bob_keys = bob
        .strings("SELECT key FROM state WHERE key LIKE 'shared/r%' OR key LIKE 'shared/s%'")
        .len();
    let bob_ok = bob
        .strings("SELECT name FROM runs WHERE status='ok' AND (name LIKE 'r%' OR name LIKE 's%')")
        .len();
    if bob_keys != bob_ok {
        v.push(format!("bob has {bob_keys} keys from {bob_ok} ok runs"));
    }
    v
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("peerfs");
    assert!(
        bin.exists(),
        "build the peerfs binary first: {}",
        bin.display()
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the crash harness needs FUSE"
    );
    let dir = tempfile::tempdir().unwrap();
    let base = std::env::var_os("PEERFS_CRASH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf());
    let data = base.join("data");
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    {
        let d = Daemon::start(&bin, &mnt, &data);
        std::fs::create_dir(mnt.join("alice")).unwrap();
        std::fs::create_dir(mnt.join("bob")).unwrap();
        std::fs::write(mnt.join("bob/policy.cedar"), BOB_POLICY).unwrap();
        d.kill();
    }
    let next = Arc::new(Mutex::new(0u64));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut violations = Vec::new();
    let mut rng = 12345u64;
    // Rounds whose kill left submissions held in the intake journal.
    let mut held_rounds = 0;
    for round in 0..rounds {
        let d = Daemon::start(&bin, &mnt, &data);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (m, n, a, s) = (mnt.clone(), next.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || client(m, n, a, s))
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(5 + rng % 80));
        d.kill(); // SIGKILL at a random moment
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        let found = check(&data, &acked.lock().unwrap(), false);
        for f in &found {
            eprintln!("round {round}: {f}");
        }
        let held: usize = ["alice", "bob"]
            .iter()
            .map(|p| {
                journal_held(&data, p, &Db::open(&data.join(format!("peers/{p}.sqlite")))).len()
            })
            .sum();
        if held > 0 {
            held_rounds += 1;
        }
        violations.extend(found);
    }
    // Let everything settle: run until queues and messages drain, then check fully.
    {
        let d = Daemon::start(&bin, &mnt, &data);
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        loop {
            // A listing that fails is not an empty inbox.
            let q: usize = ["alice", "bob"]
                .iter()
                .map(|p| match std::fs::read_dir(mnt.join(p).join("inbox")) {
                    Ok(d) => d.count(),
                    Err(e) => {
                        eprintln!("settling: listing {p}/inbox: {e}");
                        usize::MAX / 4
                    }
                })
                .sum();
            if q == 0 {
                break;
            }
            // Every round leaves scripts queued (a daemon lives 5 - 85 ms): the
            // long mode's thousands take minutes on a busy machine.
            if t.elapsed() > Duration::from_secs(900) {
                eprintln!("settling: {q} scripts still listed after 900 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("settled in {:.1} s", t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(1500));
        let stop = Command::new("fusermount3").arg("-u").arg(&mnt).status();
        let _ = stop;
        drop(d);
    }
    let found = check(&data, &acked.lock().unwrap(), true);
    for f in &found {
        eprintln!("settled: {f}");
    }
    violations.extend(found);
    let a = acked.lock().unwrap();
    eprintln!(
        "acknowledged: {} own, {} remote, {} sending scripts",
        a.own.len(),
        a.remote.len(),
        a.sends.len()
    );
    println!("crash.rounds: {rounds}");
    println!("crash.rounds_killed_with_journal_held: {held_rounds}");
    println!("crash.violations: {}", violations.len());
    if !violations.is_empty() {
        std::process::exit(1);
    }
}
