//! `scripts-ci/bench engine`: run throughput and memory of the core, no mount.
//! Prints `name: value unit` lines; every figure comes from this one process run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use peerfs::exec::{Config, Core, Op};
use serde_json::json;

const SCRIPT: &str = "set(\"k\", n); n";

fn rss_bytes() -> u64 {
    unsafe { libc::malloc_trim(0) };
    peerfs::metrics::rss_bytes()
}

fn uid() -> (u32, u32) {
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Submits `runs` scripts to each peer without waiting, then waits for every last result.
fn drive(core: &Core, peers: &[String], runs: usize) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..runs {
        for p in peers {
            let src = format!("let n = {i}; {SCRIPT}");
            let job = core
                .new_job(p, &format!("j{i}.rhai"), src.into_bytes(), &json!({}))
                .unwrap();
            let a = acked.clone();
            core.apply_async(
                p,
                Op::Submit(job),
                Some(Box::new(move |r| {
                    r.expect("submission failed");
                    a.fetch_add(1, Ordering::Relaxed);
                })),
            );
        }
    }
    if std::env::var("PEERFS_BENCH_DEBUG").is_ok() {
        while acked.load(Ordering::Relaxed) < (runs * peers.len()) as u64 {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        eprintln!("all submissions durable after {:?}", start.elapsed());
    }
    let last = format!("j{}.json", runs - 1);
    for p in peers {
        // Each peer's submissions are applied in order: once the last is acknowledged
        // its result can be awaited.
        loop {
            match core.wait_result(p, p, &last) {
                Ok(b) => {
                    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    assert_eq!(v["status"], "ok", "{v}");
                    assert_eq!(v["value"], (runs - 1) as i64);
                    break;
                }
                Err(e) if e.errno == libc::ENOENT => {
                    std::thread::sleep(std::time::Duration::from_micros(200))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(acked.load(Ordering::Relaxed), (runs * peers.len()) as u64);
    (runs * peers.len()) as f64 / secs
}

fn eval_only(n: usize) -> f64 {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let mut engine = rhai::Engine::new();
    let store: Arc<Mutex<HashMap<String, rhai::Dynamic>>> = Arc::default();
    let s2 = store.clone();
    engine.register_fn("set", move |k: &str, v: rhai::Dynamic| {
        s2.lock().unwrap().insert(k.to_string(), v);
    });
    let mut sum = 0i64;
    let start = Instant::now();
    for i in 0..n {
        // Same work per run as the daemon: a distinct source (a cache hit in both).
        let ast = engine.compile(format!("let n = {i}; {SCRIPT}")).unwrap();
        let mut scope = rhai::Scope::new();
        sum += engine.eval_ast_with_scope::<i64>(&mut scope, &ast).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(sum > 0 && store.lock().unwrap().len() == 1);
    n as f64 / secs
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (u, g) = uid();
    if std::env::var("PEERFS_BENCH_ONLY").as_deref() == Ok("metrics") {
        metrics_overhead(&dir.path().join("metrics"));
        return;
    }
    if std::env::var("PEERFS_BENCH_ONLY").as_deref() == Ok("corpus") {
        corpus_vs_stock(&dir.path().join("corpus"));
        return;
    }
    if std::env::var("PEERFS_BENCH_ONLY").as_deref() == Ok("memory") {
        memory(&dir.path().join("b"));
        return;
    }
    let mut cfg = Config::new(dir.path().join("a"));
    cfg.runners = 2;
    if let Ok(us) = std::env::var("PEERFS_INLINE_US") {
        cfg.inline_runs = std::time::Duration::from_micros(us.parse().unwrap());
    }
    if let Ok(n) = std::env::var("PEERFS_BATCH_RUNS") {
        cfg.batch_max_runs = n.parse().unwrap();
    }
    // For a profile under a slow tool (callgrind): batches as full as at full speed.
    if let Ok(ms) = std::env::var("PEERFS_BATCH_MS") {
        cfg.batch_max_time = std::time::Duration::from_millis(ms.parse().unwrap());
    }
    let core = Core::start(cfg).unwrap();

    core.create_peer("one", u, g).unwrap();
    let one = drive(&core, &["one".to_string()], 20_000);
    println!("engine.one_peer.runs_per_s: {one:.0} runs/s");
    if std::env::var("PEERFS_BENCH_ONLY").as_deref() == Ok("one") {
        core.shutdown();
        return;
    }
    if std::env::var("PEERFS_BENCH_ONLY").as_deref() == Ok("ratio") {
        let eval = eval_only(20_000);
        println!("engine.eval_only.runs_per_s: {eval:.0} runs/s");
        println!("engine.durable_vs_eval_ratio: {:.3}", one / eval);
        core.shutdown();
        return;
    }

    let many: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for p in &many {
        core.create_peer(p, u, g).unwrap();
    }
    let many_rate = drive(&core, &many, 200);
    println!("engine.many_peers.runs_per_s: {many_rate:.0} runs/s");

    metrics_overhead(&dir.path().join("metrics"));
    corpus_vs_stock(&dir.path().join("corpus"));

    let eval = eval_only(20_000);
    println!("engine.eval_only.runs_per_s: {eval:.0} runs/s");
    println!("engine.durable_vs_eval_ratio: {:.3}", one / eval);
    core.shutdown();
    drop(core);

    memory(&dir.path().join("b"));
}

/// A fresh core; 10,000 peers created (none open), then 1,000 open at once.
fn memory(dir: &std::path::Path) {
    let (u, g) = uid();
    let mut cfg = Config::new(dir);
    cfg.runners = 2;
    let core = Core::start(cfg).unwrap();
    // Warm up: the first peer's open and run allocate the engine and caches.
    core.create_peer("warm", u, g).unwrap();
    core.run("warm", "w.rhai", "1").unwrap();
    let before = rss_bytes();
    for i in 0..10_000 {
        core.create_peer(&format!("idle{i}"), u, g).unwrap();
    }
    let after = rss_bytes();
    let idle = after.saturating_sub(before) as f64 / 10_000.0;
    println!("engine.idle_peer_bytes: {idle:.0} bytes");

    let before = rss_bytes();
    let mut held = Vec::new();
    for i in 0..1_000 {
        let name = format!("idle{i}");
        held.push(core.peer(&name).unwrap());
        core.run(&name, "o.rhai", "set(\"k\", 1); 1").unwrap();
    }
    assert!(core.registry().open_count() >= 1_000);
    let after = rss_bytes();
    let open = after.saturating_sub(before) as f64 / 1_000.0;
    println!("engine.open_peer_bytes: {open:.0} bytes");
    drop(held);
    core.shutdown();
}

/// `engine.metrics_overhead_ratio`: one peer's runs/s with metrics recorded over
/// the same without (`metrics.enabled = false`), on two cores side by side in this
/// process. Rounds alternate between them so that a noisy neighbour hits both;
/// each side's best round counts.
fn metrics_overhead(dir: &std::path::Path) {
    let (u, g) = uid();
    let start = |on: bool| {
        let mut cfg = Config::new(dir.join(if on { "on" } else { "off" }));
        cfg.runners = 2;
        cfg.metrics = on;
        let c = Core::start(cfg).unwrap();
        c.create_peer("one", u, g).unwrap();
        c
    };
    let (on, off) = (start(true), start(false));
    let (mut best_on, mut best_off) = (0f64, 0f64);
    for round in 0..6 {
        // Fresh peers per round: a peer's growing run history is not what is measured.
        let name = format!("r{round}");
        for c in [&on, &off] {
            c.create_peer(&name, u, g).unwrap();
        }
        let peers = [name];
        best_on = best_on.max(drive(&on, &peers, 5_000));
        best_off = best_off.max(drive(&off, &peers, 5_000));
    }
    println!("engine.metrics_on.runs_per_s: {best_on:.0} runs/s");
    println!("engine.metrics_off.runs_per_s: {best_off:.0} runs/s");
    println!("engine.metrics_overhead_ratio: {:.3}", best_on / best_off);
    // What recording one run costs by itself (a run and a commit's worth), less
    // exposed to the neighbours' load than the ratio above: its share of a run.
    let m = peerfs::exec::metrics::Metrics::new(true, 20);
    let n = 1_000_000;
    let t = Instant::now();
    for i in 0..n {
        let took = std::time::Duration::from_micros(20 + (i % 64) as u64);
        m.run("one", peerfs::script::Status::Ok, took);
        m.commit(took);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("engine.metrics_record_ns: {ns:.0} ns/run");
    println!("engine.metrics_record_share: {:.4}", ns * best_off / 1e9);
    on.shutdown();
    off.shutdown();
}

/// Scripts of the kinds Rhai ships as examples, each with the value it must give.
const CORPUS: [(&str, &str, i64); 6] = [
    (
        "array_1m",
        "let a = []; for i in 0..1_000_000 { a.push(i); } let s = 0; for x in a { s += x; } s",
        499_999_500_000,
    ),
    (
        "map_10k_strings",
        "let m = #{}; for i in 0..10_000 { m[`key${i}`] = `value ${i}`; }
         let n = 0; for k in m.keys() { n += m[k].len(); } n",
        98_890,
    ),
    (
        "string_build",
        r#"let s = ""; for i in 0..100_000 { s += `${i},`; } s.len()"#,
        588_890,
    ),
    (
        "nested_loops",
        "let n = 0; for i in 0..1000 { for j in 0..1000 { if (i + j) % 7 == 0 { n += 1; } } } n",
        142_857,
    ),
    (
        "recursion",
        "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } } fib(24)",
        46_368,
    ),
    (
        "closures_objects",
        "let make = |k| |x| x * k;
         let fs = []; for k in 0..1000 { fs.push(make.call(k)); }
         let obj = #{ total: 0 }; obj.add = |x| { this.total += x; };
         for i in 0..100_000 { obj.add(i); }
         let sum = 0; for f in fs { sum += f.call(3); }
         obj.total + sum",
        4_999_950_000 + 1_498_500,
    ),
];

/// `engine.corpus_vs_stock_ratio`: each corpus script's time in a stock
/// `rhai::Engine` over its time as an owner's script through peerfs (a run of the
/// core, owner's default limits), in this process; rounds alternate between the
/// two and each side's best of three counts. The figure is the worst script's.
/// Both sides run over peerfs's counting allocator (it is the process's).
fn corpus_vs_stock(dir: &std::path::Path) {
    let (u, g) = uid();
    let mut cfg = Config::new(dir.to_path_buf());
    cfg.runners = 2;
    let core = Core::start(cfg).unwrap();
    core.create_peer("corpus", u, g).unwrap();
    let stock = rhai::Engine::new();
    let mut worst = f64::MAX;
    for (name, src, want) in CORPUS {
        let (mut best_peerfs, mut best_stock) = (f64::MAX, f64::MAX);
        for round in 0..3 {
            let t = Instant::now();
            let r = core
                .run("corpus", &format!("{name}{round}.rhai"), src)
                .unwrap();
            best_peerfs = best_peerfs.min(t.elapsed().as_secs_f64());
            assert_eq!(r["status"], "ok", "{name}: {r}");
            assert_eq!(r["value"], want, "{name}: {r}");
            let t = Instant::now();
            let v = stock.eval::<i64>(src).unwrap();
            best_stock = best_stock.min(t.elapsed().as_secs_f64());
            assert_eq!(v, want, "{name} (stock)");
        }
        if std::env::var("PEERFS_BENCH_RHAI_LIMITS").is_ok() {
            rhai_size_limits(name, src, best_stock);
        }
        let ratio = best_stock / best_peerfs;
        println!(
            "engine.corpus.{name}_ms: {:.1} ms (stock {:.1} ms)",
            best_peerfs * 1e3,
            best_stock * 1e3
        );
        println!("engine.corpus.{name}_ratio: {ratio:.3}");
        worst = worst.min(ratio);
    }
    println!("engine.corpus_vs_stock_ratio: {worst:.3}");
    core.shutdown();
}

/// With PEERFS_BENCH_RHAI_LIMITS set: the script in a stock engine with Rhai's own
/// size limits at the owner's old defaults (how peerfs bounded memory before
/// max_memory_bytes), against the stock engine's `best_stock`; stopped after 20 s.
fn rhai_size_limits(name: &str, src: &str, best_stock: f64) {
    let mut e = rhai::Engine::new();
    e.set_max_string_size(64 << 20);
    e.set_max_array_size(4_000_000);
    e.set_max_map_size(4_000_000);
    let t = Instant::now();
    e.on_progress(move |_| (t.elapsed().as_secs() >= 20).then(|| "20 s".into()));
    let r = e.eval::<i64>(src);
    let took = t.elapsed().as_secs_f64();
    let done = if r.is_ok() {
        ""
    } else {
        " (stopped: did not finish)"
    };
    println!(
        "engine.corpus.{name}_rhai_size_limits_ratio: {:.4}{done}",
        best_stock / took
    );
}
