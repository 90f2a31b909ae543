//! `scripts-ci/bench history`: what keeping history costs, against the same work
//! without it, in the same run.
//!
//! - `history.drop_to_result_speed_ratio`: drops (a script that sets a key) and
//!   the read of their result through a real mount, on a daemon that keeps
//!   history against one with `history.max_age = 0`; the time without over the
//!   time with (40 short rounds, alternating which side goes first; the median
//!   of the pairs' ratios; goal ≥ 0.9).
//! - `history.rewrite_64mib_bytes_ratio`: bytes the process writes (`wchar` of
//!   /proc/self/io: WAL and checkpoint) to replace a 64 MiB value in a store,
//!   recorded in a history entry against not (goal ≤ 1.05).
//! - `history.stat_cat_ratio`: `stat` and `cat` of every key under
//!   `.history/<run>/state/` with 10,000 runs retained against the same under
//!   `state/` (goal ≤ 2).
//! - `history.row_write_speed_ratio`: entries that insert a row of a declared
//!   table and update it, in a store, recorded in the history against not
//!   (unsynced commits, so the cost of recording shows; rounds alternate; the
//!   median of the pairs' ratios, without over with);
//!   `history.state_write_speed_ratio` the same with a state key set twice,
//!   and `history.row_vs_state_kept_ratio` the time of a recorded state entry
//!   over that of a recorded row entry.
//! - `history.wal_frames_per_run`: WAL frames (pages) a one-key run commits,
//!   history kept against not, counted in the peer's log (no mount; what an
//!   entry costs is mostly these pages: writing and checksumming them).
//!
//! Files live under `$PEERFS_BENCH_DIR/history` (default target/bench).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod bench_support;
use bench_support::{fusermount_u, verbose};

use peerfs::exec::{Config, Core};
use peerfs::store::history::EntryHead;
use peerfs::store::prelude::*;
use peerfs::store::SqliteStore;

const ROUNDS: usize = 5;
const DROPS: usize = 200;
/// Drop-to-result pairs of rounds (kept, off) and drops in each round.
const PAIRS: usize = 40;
const DROPS_PER_PAIR: usize = 25;
const RUNS_KEPT: usize = 10_000;
const KEYS: usize = 100;

fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn mount(data: &Path, mnt: &Path, keep: bool) -> (Core, peerfs::fuse::Session) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    let mut cfg = Config::new(data);
    if !keep {
        cfg.history.max_age_ns = 0;
    }
    let core = Core::start(cfg).unwrap();
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    core.create_peer("alice", uid, gid).unwrap();
    let vfs = peerfs::vfs::Vfs::new(core.clone());
    let s = peerfs::fuse::spawn(vfs, mnt, &peerfs::fuse::MountOptions::default())
        .unwrap_or_else(|e| panic!("mounting peerfs at {}: {e}", mnt.display()));
    (core, s)
}

/// `n` drops into alice's inbox, each read back from the outbox.
fn drops(mnt: &Path, round: usize, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        let name = format!("r{round}-{i}");
        let src = format!("set(\"k{}\", {i}); 0", i % KEYS);
        std::fs::write(mnt.join(format!("alice/inbox/{name}.rhai")), src).unwrap();
        let out = std::fs::read(mnt.join(format!("alice/outbox/{name}.json"))).unwrap();
        assert!(out.starts_with(b"{"), "{}", String::from_utf8_lossy(&out));
    }
    t.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn drop_to_result(run: &Path) {
    let (ck, sk) = mount(&run.join("kept"), &run.join("mnt-kept"), true);
    let (co, so) = mount(&run.join("off"), &run.join("mnt-off"), false);
    let (mk, mo) = (run.join("mnt-kept"), run.join("mnt-off"));
    drops(&mk, 99, 50);
    drops(&mo, 99, 50);
    let (mut kept, mut off, mut ratios) = (Duration::ZERO, Duration::ZERO, Vec::new());
    // Short rounds, alternating which goes first: a burst of load from
    // elsewhere on the machine falls on both sides of a pair.
    for r in 0..PAIRS {
        let (k, o) = if r % 2 == 0 {
            let k = drops(&mk, r, DROPS_PER_PAIR);
            (k, drops(&mo, r, DROPS_PER_PAIR))
        } else {
            let o = drops(&mo, r, DROPS_PER_PAIR);
            (drops(&mk, r, DROPS_PER_PAIR), o)
        };
        if verbose() {
            eprintln!("round {r}: kept {k:?} off {o:?}");
        }
        ratios.push(o.as_secs_f64() / k.as_secs_f64());
        kept += k;
        off += o;
    }
    let per = |d: Duration| d.as_micros() as f64 / (PAIRS * DROPS_PER_PAIR) as f64;
    println!("history.drop_to_result_us.kept: {:.0} us", per(kept));
    println!("history.drop_to_result_us.off: {:.0} us", per(off));
    println!("history.drop_to_result_speed_ratio: {:.3}", median(ratios));
    for (c, s, m) in [(ck, sk, mk), (co, so, mo)] {
        let _ = s.unmount_and_join();
        fusermount_u(&m);
        c.shutdown();
    }
}

/// Bytes written to replace a 64 MiB value, with an entry recording it or not.
fn rewrite_bytes(path: &Path, record: bool) -> u64 {
    let mut s = SqliteStore::open(path, true).unwrap();
    s.begin().unwrap();
    s.set_bytes("v", &vec![1u8; 64 << 20]).unwrap();
    s.commit().unwrap();
    s.checkpoint().unwrap();
    let before = wchar();
    s.begin().unwrap();
    if record {
        let head = EntryHead {
            id: "R".into(),
            name: "r.rhai".into(),
            caller: "alice".into(),
            chain: vec!["alice".into()],
        };
        s.history().unwrap().begin_entry(&head).unwrap();
    }
    s.set_bytes("v", &vec![2u8; 64 << 20]).unwrap();
    if record {
        assert!(s.history().unwrap().end_entry().unwrap().kept);
    }
    s.commit().unwrap();
    s.checkpoint().unwrap();
    wchar() - before
}

fn rewrite(run: &Path) {
    std::fs::create_dir_all(run).unwrap();
    let off = rewrite_bytes(&run.join("off.sqlite"), false);
    let kept = rewrite_bytes(&run.join("kept.sqlite"), true);
    println!("history.rewrite_64mib_bytes.kept: {kept} bytes");
    println!("history.rewrite_64mib_bytes.off: {off} bytes");
    println!(
        "history.rewrite_64mib_bytes_ratio: {:.3}",
        kept as f64 / off as f64
    );
}

/// stat and cat of every key under `dir`, `times` times over.
fn stat_cat(dir: &Path, times: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..times {
        for k in 0..KEYS {
            let p = dir.join(format!("k{k}"));
            std::fs::metadata(&p).unwrap();
            std::fs::read(&p).unwrap();
        }
    }
    t.elapsed()
}

fn reads(run: &Path) {
    let mnt = run.join("mnt-reads");
    let (core, s) = mount(&run.join("reads"), &mnt, true);
    let rounds = RUNS_KEPT / DROPS;
    for r in 0..rounds {
        drops(&mnt, r, DROPS);
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(mnt.join("alice/.history"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(runs.len() >= RUNS_KEPT, "{} runs kept", runs.len());
    let mut sorted = runs;
    sorted.sort();
    let past = sorted[sorted.len() / 2].join("state");
    let live = mnt.join("alice/state");
    stat_cat(&live, 1);
    stat_cat(&past, 1);
    let mut ratios = Vec::new();
    for r in 0..ROUNDS {
        let l = stat_cat(&live, 5);
        let h = stat_cat(&past, 5);
        if verbose() {
            eprintln!("round {r}: state {l:?} history {h:?}");
        }
        ratios.push(h.as_secs_f64() / l.as_secs_f64());
    }
    println!("history.runs_kept: {}", sorted.len());
    println!("history.stat_cat_ratio: {:.3}", median(ratios));
    let _ = s.unmount_and_join();
    fusermount_u(&mnt);
    core.shutdown();
}

/// `n` entries of one insert and one update each (`record`: in the history):
/// rows of a declared table, or (`rows` false) two state keys set.
fn writes(s: &mut SqliteStore, round: usize, n: usize, record: bool, rows: bool) -> Duration {
    use peerfs::store::history::History;
    let schema = s.schema().unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        s.begin_unsynced().unwrap();
        if record {
            let head = EntryHead {
                id: format!("r{round}-{i}"),
                ..Default::default()
            };
            s.begin_entry(&head).unwrap();
        }
        if rows {
            let t = schema.table("notes").unwrap();
            let mut v = serde_json::Map::new();
            v.insert("title".into(), format!("note {i}").into());
            let row = peerfs::tables::rows::prepare_insert(&schema, t, "alice", &v, 0).unwrap();
            let id = s.row_insert("notes", &row).unwrap();
            let mut row = s.row_get("notes", &id).unwrap().unwrap();
            row.insert("pinned".into(), true.into());
            s.row_replace("notes", &row).unwrap();
        } else {
            let key = format!("k/{round}-{i}");
            s.set(&key, &serde_json::json!({ "title": format!("note {i}") }))
                .unwrap();
            s.set(
                &key,
                &serde_json::json!({ "title": format!("note {i}"), "pinned": true }),
            )
            .unwrap();
        }
        if record {
            s.end_entry().unwrap();
        }
        s.commit().unwrap();
    }
    t0.elapsed()
}

/// `history.{row,state}_write_speed_ratio`: entries recorded against not;
/// also the µs an entry takes recorded and not.
fn store_writes(run: &Path, rows: bool) -> (f64, [f64; 2]) {
    std::fs::create_dir_all(run).unwrap();
    let text = "[tables.notes]\nfields.title = { type = \"string\" }\nfields.pinned = { type = \"bool\", default = false }\n";
    let mut stores = [true, false].map(|record| {
        let mut s = SqliteStore::open(&run.join(format!("{record}-{rows}.sqlite")), true).unwrap();
        s.begin().unwrap();
        s.apply_schema(text.as_bytes()).unwrap();
        s.commit().unwrap();
        let w = wchar();
        writes(&mut s, 99, 100, record, rows);
        if verbose() {
            let per = (wchar() - w) / 100;
            eprintln!("rows {rows} record {record}: {per} bytes written per entry");
        }
        s
    });
    let (mut ratios, mut total) = (Vec::new(), [Duration::ZERO; 2]);
    let n = DROPS_PER_PAIR * 4;
    for r in 0..PAIRS {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut d = [Duration::ZERO; 2];
        for i in order {
            d[i] = writes(&mut stores[i], r, n, i == 0, rows);
            total[i] += d[i];
        }
        if verbose() {
            eprintln!("round {r}: kept {:?} off {:?}", d[0], d[1]);
        }
        ratios.push(d[1].as_secs_f64() / d[0].as_secs_f64());
    }
    let us = total.map(|t| t.as_micros() as f64 / (PAIRS * n) as f64);
    (median(ratios), us)
}

fn rows(run: &Path) {
    let (r, ru) = store_writes(run, true);
    let (s, su) = store_writes(run, false);
    println!("history.row_write_us.kept: {:.0} us", ru[0]);
    println!("history.row_write_us.off: {:.0} us", ru[1]);
    println!("history.state_write_us.kept: {:.0} us", su[0]);
    println!("history.state_write_us.off: {:.0} us", su[1]);
    println!("history.row_write_speed_ratio: {r:.3}");
    println!("history.state_write_speed_ratio: {s:.3}");
    println!("history.row_vs_state_kept_ratio: {:.3}", su[0] / ru[0]);
}

/// WAL frames per one-key run of a core (no mount), counted from an emptied log.
fn frames_per_run(data: &Path, keep: bool) -> f64 {
    const RUNS: usize = 60;
    std::fs::create_dir_all(data).unwrap();
    let mut cfg = Config::new(data);
    if !keep {
        cfg.history.max_age_ns = 0;
    }
    let core = Core::start(cfg).unwrap();
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    core.create_peer("alice", uid, gid).unwrap();
    let run = |r: usize, i: usize| {
        let src = format!("set(\"k{}\", {}); 0", i % KEYS, r * 1000 + i);
        core.run("alice", &format!("f{r}-{i}.rhai"), &src).unwrap();
    };
    (0..2 * KEYS).for_each(|i| run(0, i));
    let db = data.join("peers/alice.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    (0..RUNS).for_each(|i| run(1, i));
    // Fewer frames than an automatic checkpoint waits for: the log holds them all.
    let wal = std::fs::read(data.join("peers/alice.sqlite-wal")).unwrap();
    let page = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    // Frames of the log's current generation (their salts are the header's)
    // and how many of them end a commit.
    let (mut frames, mut commits) = (0, 0);
    for f in wal[32..].chunks_exact(page + 24) {
        if f[8..16] == wal[16..24] {
            frames += 1;
            commits += (f[4..8] != [0; 4]) as usize;
        }
    }
    assert!(
        commits >= RUNS,
        "{commits} commits: the log was checkpointed"
    );
    drop(c);
    core.shutdown();
    frames as f64 / RUNS as f64
}

fn frames(run: &Path) {
    let kept = frames_per_run(&run.join("frames-kept"), true);
    let off = frames_per_run(&run.join("frames-off"), false);
    println!("history.wal_frames_per_run.kept: {kept:.2}");
    println!("history.wal_frames_per_run.off: {off:.2}");
}

fn main() {
    let root = std::env::var_os("PEERFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")))
        .join("history");
    let run = root.join(bench_support::run_id());
    std::fs::create_dir_all(&run).unwrap();
    // One part by name (`rewrite`, `drops`, `reads`, `rows`, `frames`), or all of them.
    let only = std::env::args().nth(1);
    let part = |p: &str| only.as_deref().is_none_or(|o| o == p);
    if part("rewrite") {
        rewrite(&run.join("rewrite"));
    }
    if part("drops") {
        drop_to_result(&run);
    }
    if part("reads") {
        reads(&run);
    }
    if part("rows") {
        rows(&run.join("rows"));
    }
    if part("frames") {
        frames(&run);
    }
    let _ = std::fs::remove_dir_all(&run);
}
