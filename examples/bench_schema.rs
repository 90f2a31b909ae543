//! `scripts-ci/bench schema`: declared tables, no mount. Every figure is a ratio
//! of two measurements of this one process run (or a status):
//!
//! * `schema.find_vs_scan_ratio`: 10,000 notes, 1 % tagged "rare"; an indexed
//!   `db.notes.find(#{ tag: "rare" })` against a script that scans the same data
//!   kept as state keys (runs/s over runs/s).
//! * `schema.others_100k`: at 100,000 rows, another peer's `find` (under the
//!   daemon's default limits for others) ends with this status.
//! * `schema.insert_vs_set_ratio`: runs/s of scripts inserting a row against runs/s
//!   of scripts setting a key of the same content.
//! * `schema.row_policy_ratio`: another peer's `find` under a per-row policy
//!   condition against the same `find` under a table-wide permit.
//!
//! `PEERFS_BENCH_VERBOSE=1` prints every round on stderr.

use std::time::Instant;

use peerfs::exec::{Config, Core, Op};
use serde_json::{json, Value};

const SCHEMA: &str = r#"
[tables.notes]
owner = true
fields.title  = { type = "string", max = 200 }
fields.tag    = { type = "string?", index = true }
fields.rating = { type = "int", min = 0, max = 100 }
"#;

const ROUNDS: usize = 7;

fn verbose() -> bool {
    std::env::var("PEERFS_BENCH_VERBOSE").as_deref() == Ok("1")
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Runs `src` as `caller` at `target` and waits for its result.
fn run(core: &Core, caller: &str, target: &str, name: &str, src: &str) -> Value {
    let job = core
        .new_job_from(caller, target, name, src.as_bytes().to_vec(), &json!({}))
        .unwrap();
    core.apply(target, Op::Submit(job)).unwrap();
    let out = if caller == target { target } else { caller };
    parse(
        &core
            .wait_result(out, target, &name.replace(".rhai", ".json"))
            .unwrap(),
    )
}

fn run_ok(core: &Core, caller: &str, target: &str, name: &str, src: &str) -> Value {
    let r = run(core, caller, target, name, src);
    assert_eq!(r["status"], "ok", "{name}: {r}");
    r["value"].clone()
}

/// `n` runs of `src(i)` submitted without waiting; runs/s once the last is in.
fn rate(
    core: &Core,
    caller: &str,
    target: &str,
    tag: &str,
    n: usize,
    src: impl Fn(usize) -> String,
) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let job = core
            .new_job_from(
                caller,
                target,
                &format!("{tag}-{i}.rhai"),
                src(i).into_bytes(),
                &json!({}),
            )
            .unwrap();
        if i + 1 < n {
            core.apply_async(target, Op::Submit(job), None);
        } else {
            core.apply(target, Op::Submit(job)).unwrap();
        }
    }
    let out = if caller == target { target } else { caller };
    let last = parse(
        &core
            .wait_result(out, target, &format!("{tag}-{}.json", n - 1))
            .unwrap(),
    );
    let r = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(last["status"], "ok", "{tag}: {last}");
    r
}

/// The median over rounds of `a / b`, the two measured one after the other
/// (which goes first alternates).
fn paired(mut a: impl FnMut(usize) -> f64, mut b: impl FnMut(usize) -> f64, what: &str) -> f64 {
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = a(round);
            (x, b(round))
        } else {
            let y = b(round);
            (a(round), y)
        };
        if verbose() {
            eprintln!("{what} round {round}: {x:.1}/s vs {y:.1}/s");
        }
        ratios.push(x / y);
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn start(dir: &std::path::Path, peers: &[&str]) -> Core {
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let core = Core::start(Config::new(dir)).unwrap();
    for p in peers {
        core.create_peer(p, uid, gid).unwrap();
        core.apply(p, Op::SetMeta("schema".into(), SCHEMA.into()))
            .unwrap();
    }
    core
}

/// `rows` notes at `peer` (1 % tagged "rare"), in runs of 5,000; with `keys`,
/// the same notes as state keys too.
fn fill(core: &Core, peer: &str, rows: usize, keys: bool) {
    for b in 0..rows.div_ceil(5000) {
        let (lo, hi) = (b * 5000, ((b + 1) * 5000).min(rows));
        let set = if keys {
            r#"set(`n/${i}`, #{ title: `note ${i}`, tag: tag, rating: i % 100 });"#
        } else {
            ""
        };
        let src = format!(
            r#"for i in {lo}..{hi} {{ let tag = if i % 100 == 0 {{ "rare" }} else {{ "common" }};
               db.notes.insert(#{{ title: `note ${{i}}`, tag: tag, rating: i % 100 }}); {set} }} 0"#
        );
        run_ok(core, peer, peer, &format!("fill-{peer}-{b}.rhai"), &src);
    }
}

fn find_vs_scan(dir: &std::path::Path) -> f64 {
    let core = start(dir, &["bob"]);
    fill(&core, "bob", 10_000, true);
    let find = r#"db.notes.find(#{ tag: "rare" }).len()"#;
    let scan = r#"let n = 0; for k in keys("n/") { if get(k).tag == "rare" { n += 1; } } n"#;
    assert_eq!(run_ok(&core, "bob", "bob", "f.rhai", find), json!(100));
    assert_eq!(run_ok(&core, "bob", "bob", "s.rhai", scan), json!(100));
    let r = paired(
        |i| {
            rate(&core, "bob", "bob", &format!("find{i}"), 200, |_| {
                find.to_string()
            })
        },
        |i| {
            rate(&core, "bob", "bob", &format!("scan{i}"), 5, |_| {
                scan.to_string()
            })
        },
        "find vs scan",
    );
    core.shutdown();
    r
}

fn others_100k(dir: &std::path::Path) -> String {
    let core = start(dir, &["alice", "bob"]);
    fill(&core, "bob", 100_000, false);
    let policy = r#"permit(principal, action == Action::"run", resource);
permit(principal, action == Action::"select", resource is Table::notes);
"#;
    core.apply("bob", Op::SetMeta("policy".into(), policy.into()))
        .unwrap();
    let r = run(
        &core,
        "alice",
        "bob",
        "others.rhai",
        r#"db.notes.find(#{ tag: "rare" }, #{ limit: 1000 }).len()"#,
    );
    core.shutdown();
    if verbose() {
        eprintln!("others_100k: {r}");
    }
    match r["status"].as_str() {
        Some("ok") if r["value"] == 1000 => "ok".to_string(),
        Some(s) => s.to_string(),
        None => "none".to_string(),
    }
}

fn insert_vs_set(dir: &std::path::Path) -> f64 {
    let core = start(dir, &["bob"]);
    let r = paired(
        |i| {
            rate(&core, "bob", "bob", &format!("ins{i}"), 2000, |n| {
                format!(
                    r#"db.notes.insert(#{{ title: "note {n}", tag: "t", rating: {} }})"#,
                    n % 100
                )
            })
        },
        |i| {
            rate(&core, "bob", "bob", &format!("set{i}"), 2000, |n| {
                format!(
                    r#"set("k/{i}/{n}", #{{ title: "note {n}", tag: "t", rating: {} }})"#,
                    n % 100
                )
            })
        },
        "insert vs set",
    );
    core.shutdown();
    r
}

fn row_policy(dir: &std::path::Path) -> f64 {
    let core = start(dir, &["alice", "wide", "rows"]);
    fill(&core, "wide", 10_000, false);
    fill(&core, "rows", 10_000, false);
    let wide = r#"permit(principal, action == Action::"run", resource);
permit(principal, action == Action::"select", resource is Table::notes);
"#;
    let rows = r#"permit(principal, action == Action::"run", resource);
permit(principal, action == Action::"select", resource is Table::notes) when { resource.rating >= 0 };
"#;
    core.apply("wide", Op::SetMeta("policy".into(), wide.into()))
        .unwrap();
    core.apply("rows", Op::SetMeta("policy".into(), rows.into()))
        .unwrap();
    let find = r#"db.notes.find(#{ tag: "rare" }).len()"#;
    assert_eq!(run_ok(&core, "alice", "rows", "r.rhai", find), json!(100));
    let r = paired(
        |i| {
            rate(&core, "alice", "rows", &format!("rows{i}"), 100, |_| {
                find.to_string()
            })
        },
        |i| {
            rate(&core, "alice", "wide", &format!("wide{i}"), 100, |_| {
                find.to_string()
            })
        },
        "row policy vs table-wide",
    );
    core.shutdown();
    r
}

fn main() {
    let only = std::env::var("PEERFS_BENCH_ONLY").ok();
    let part = |p: &str| only.as_deref().is_none_or(|o| o == p);
    let dir = tempfile::tempdir().unwrap();
    if part("find") {
        println!(
            "schema.find_vs_scan_ratio: {:.1}",
            find_vs_scan(&dir.path().join("find"))
        );
    }
    if part("others") {
        println!(
            "schema.others_100k: {}",
            others_100k(&dir.path().join("others"))
        );
    }
    if part("insert") {
        println!(
            "schema.insert_vs_set_ratio: {:.3}",
            insert_vs_set(&dir.path().join("insert"))
        );
    }
    if part("rows") {
        println!(
            "schema.row_policy_ratio: {:.3}",
            row_policy(&dir.path().join("rows"))
        );
    }
}
