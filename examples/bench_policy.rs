//! `scripts-ci/bench policy`: what Cedar policies cost, no mount.
//! Prints `name: value unit` lines; every figure comes from this one process run.
//!
//! `PEERFS_BENCH_VERBOSE=1` prints every round on stderr.

use std::hint::black_box;
use std::time::{Duration, Instant};

use peerfs::exec::{Config, Core, Op};
use peerfs::policy::{Action, Groups, Policy, Request};
use serde_json::{json, Value};

/// bob's policy: 20 statements of the kinds real ones have: principals by name and
/// by group, action lists, `when` conditions on resource.key and on context, limits,
/// and forbids. alice (in `friends`) may run scripts at bob and read and write
/// `shared/*`.
const POLICY: &str = include_str!("bench_policy.cedar");

const GROUPS: &str = "friends: alice carol\nadmins: root-admin\nreaders: dave erin\n";

/// The script of both run loops: a read and a write under `shared/`.
fn script(n: usize) -> String {
    format!("let n = {n}; let v = get(\"shared/x\"); set(\"shared/x\", n); n")
}

const CHECK_CALLS: usize = 200_000;
const RUNS: usize = 5_000;
const RUN_ROUNDS: usize = 9;
const SEND_SAMPLES: usize = 300;

fn verbose() -> bool {
    std::env::var("PEERFS_BENCH_VERBOSE").as_deref() == Ok("1")
}

/// One `read` host call's decision, averaged (the per-caller candidate cache warm,
/// as it is from a script's second host call on).
fn check_ns() -> f64 {
    let policy = Policy::parse(POLICY).unwrap_or_else(|e| panic!("bench policy: {e}"));
    assert_eq!(policy.len(), 20);
    let groups = Groups::parse(GROUPS).unwrap();
    let params = json!({});
    let keys: Vec<String> = (0..64).map(|i| format!("shared/k{i}")).collect();
    fn req<'a>(key: &'a str, params: &'a Value) -> Request<'a> {
        Request {
            caller: "alice",
            target: "bob",
            action: Action::Read,
            object: Some(key),
            script: "job.rhai",
            params,
            now: 1_750_000_000,
            chain: &[],
        }
    }
    let d = policy.decide(&req("shared/x", &params), &groups);
    assert!(d.allowed && d.errors.is_empty(), "{}", d.explain());
    let d = policy.decide(&req("secret/x", &params), &groups);
    assert!(!d.allowed, "{}", d.explain());
    for k in &keys {
        black_box(policy.decide(&req(k, &params), &groups));
    }
    let start = Instant::now();
    for i in 0..CHECK_CALLS {
        let d = policy.decide(black_box(&req(&keys[i % keys.len()], &params)), &groups);
        assert!(black_box(d).allowed);
    }
    start.elapsed().as_nanos() as f64 / CHECK_CALLS as f64
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// `runs` scripts at bob, all submitted without waiting; returns runs/s once the
/// last result is in. `as_alice`: sent by alice (checked against bob's policy at
/// the run and at every host call), else run by bob itself (never checked).
fn run_loop(core: &Core, tag: &str, runs: usize, as_alice: bool) -> f64 {
    let start = Instant::now();
    for i in 0..runs {
        let name = format!("{tag}-{i}.rhai");
        let src = script(i).into_bytes();
        // alice's script goes into bob's queue (as a drop in alice/peers/bob/inbox).
        let caller = if as_alice { "alice" } else { "bob" };
        let op = Op::Submit(
            core.new_job_from(caller, "bob", &name, src, &json!({}))
                .unwrap(),
        );
        let peer = "bob";
        if i + 1 < runs {
            // A refused submission shows below: its result never appears.
            core.apply_async(peer, op, None);
        } else {
            // Ops of one peer apply in order: once the last is durable, so is every
            // one before it, and its result is registered as pending.
            core.apply(peer, op).unwrap();
        }
    }
    // bob runs them in order and the results come back in order (a retried
    // delivery could reorder them: every result is checked below).
    let (peer, target) = if as_alice {
        ("alice", "bob")
    } else {
        ("bob", "bob")
    };
    let last = parse(
        &core
            .wait_result(peer, target, &format!("{tag}-{}.json", runs - 1))
            .unwrap(),
    );
    let rate = runs as f64 / start.elapsed().as_secs_f64();
    assert_eq!(last["status"], "ok", "{last}");
    // Every result, outside the timing.
    for i in 0..runs {
        let r = parse(
            &core
                .wait_result(peer, target, &format!("{tag}-{i}.json"))
                .unwrap(),
        );
        assert!(r["status"] == "ok" && r["value"] == i, "{tag}-{i}: {r}");
    }
    rate
}

/// alice's own script sends one to bob: p50 of the time from its submission until
/// bob's result shows at alice.
fn send_round_trip(core: &Core) -> Duration {
    let mut samples: Vec<Duration> = Vec::with_capacity(SEND_SAMPLES);
    for i in 0..SEND_SAMPLES + 20 {
        let stem = format!("send{i}");
        let src = format!("send(\"bob\", \"let v = get(\\\"shared/x\\\"); {i}\"); {i}");
        let start = Instant::now();
        let job = core
            .new_job(
                "alice",
                &format!("{stem}.rhai"),
                src.into_bytes(),
                &json!({}),
            )
            .unwrap();
        core.apply("alice", Op::Submit(job)).unwrap();
        // alice's run registers the pending result of what it sent as it commits.
        let own = parse(
            &core
                .wait_result("alice", "alice", &format!("{stem}.json"))
                .unwrap(),
        );
        assert_eq!(own["status"], "ok", "{own}");
        let t_own = start.elapsed();
        let r = parse(
            &core
                .wait_result("alice", "bob", &format!("{stem}-1.json"))
                .unwrap(),
        );
        let took = start.elapsed();
        assert!(r["status"] == "ok" && r["value"] == i, "{r}");
        if i >= 20 {
            samples.push(took);
        }
        if verbose() && i % 50 == 0 {
            eprintln!("send {i}: alice's own result after {t_own:?}, bob's after {took:?}");
        }
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// Owner and policy run loops, paired and interleaved (which goes first alternates):
/// the median of the rounds' ratios (policy / owner), and the best runs/s of each.
/// A paired median, because this machine's speed swings within a second.
fn run_overhead(core: &Core) -> (f64, f64, f64) {
    run_loop(core, "warm-owner", 500, false);
    run_loop(core, "warm-policy", 500, true);
    let (mut owner, mut policed) = (0f64, 0f64);
    let mut ratios = Vec::with_capacity(RUN_ROUNDS);
    for round in 0..RUN_ROUNDS {
        let (o, p) = if round % 2 == 0 {
            let o = run_loop(core, &format!("owner{round}"), RUNS, false);
            (o, run_loop(core, &format!("policy{round}"), RUNS, true))
        } else {
            let p = run_loop(core, &format!("policy{round}"), RUNS, true);
            (run_loop(core, &format!("owner{round}"), RUNS, false), p)
        };
        if verbose() {
            eprintln!("round {round}: owner {o:.0} runs/s, alice under policy {p:.0} runs/s");
        }
        owner = owner.max(o);
        policed = policed.max(p);
        ratios.push(p / o);
    }
    ratios.sort_by(f64::total_cmp);
    (ratios[ratios.len() / 2], owner, policed)
}

/// A core with alice and bob, bob's `policy` and GROUPS in force.
fn start_core(dir: &std::path::Path, policy: &str) -> Core {
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // The daemon's defaults (what `peerfs mount` runs with).
    let core = Core::start(Config::new(dir)).unwrap();
    for p in ["alice", "bob"] {
        core.create_peer(p, uid, gid).unwrap();
    }
    core.apply("bob", Op::SetMeta("policy".into(), policy.into()))
        .unwrap();
    core.apply("bob", Op::SetMeta("groups".into(), GROUPS.into()))
        .unwrap();
    let st = core
        .policy()
        .state(&core.peer("bob").unwrap())
        .expect("bob's policy");
    assert!(!st.policy.is_empty(), "bob's stored policy did not parse");
    core
}

fn main() {
    // `PEERFS_BENCH_ONLY=check|runs|send`: one part alone (for profiling);
    // `runs-open`: the run loops under an allow-all policy (diagnosis).
    let only = std::env::var("PEERFS_BENCH_ONLY").ok();
    let part = |p: &str| only.as_deref().is_none_or(|o| o == p);
    let dir = tempfile::tempdir().unwrap();
    if part("check") {
        println!("policy.check_ns: {:.0} ns", check_ns());
    }
    if part("runs") {
        let core = start_core(&dir.path().join("runs"), POLICY);
        let (ratio, owner, policed) = run_overhead(&core);
        core.shutdown();
        println!("policy.run_overhead_ratio: {ratio:.3}");
        if verbose() {
            eprintln!("owner {owner:.0} runs/s, alice under policy {policed:.0} runs/s");
        }
    }
    if let Some(who @ ("runs-owner" | "runs-alice")) = only.as_deref() {
        // Diagnosis (profiling one side): the same loops, one kind only.
        let core = start_core(&dir.path().join(who), POLICY);
        let as_alice = who == "runs-alice";
        let best = (0..RUN_ROUNDS)
            .map(|r| run_loop(&core, &format!("{who}{r}"), RUNS, as_alice))
            .fold(0f64, f64::max);
        core.shutdown();
        println!("policy.{who}.per_s: {best:.0} runs/s");
    }
    if only.as_deref() == Some("runs-open") {
        // Diagnosis: the same loops with a policy that allows everything without a
        // condition (decided without Cedar): what the messaging alone costs.
        let open = "permit (principal, action, resource);";
        let core = start_core(&dir.path().join("runs-open"), open);
        let (ratio, _, _) = run_overhead(&core);
        core.shutdown();
        println!("policy.open_run_overhead_ratio: {ratio:.3}");
    }
    if part("send") {
        // A fresh core: its stores not grown by the run loops.
        let core = start_core(&dir.path().join("send"), POLICY);
        let p50 = send_round_trip(&core);
        core.shutdown();
        println!("policy.send_round_trip_us.p50: {} us", p50.as_micros());
    }
}
