//! The config file: precedence (flag > file > default), every refusal (unknown key,
//! bad type, out-of-range value) with key, reason and line, `peerfs config show`,
//! and every sandbox limit raised and lowered through the config, for a peer's
//! own scripts and for others' scripts, shown to take effect.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peerfs::config::{self, DaemonArgs};
use peerfs::exec::{Core, Op};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_peerfs");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn peerfs(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("PEERFS_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The line of `config show` for `key` in `[section]` ("" = top level).
fn shown(out: &str, section: &str, key: &str) -> String {
    let mut cur = String::new();
    for l in out.lines() {
        if let Some(s) = l.strip_prefix('[') {
            cur = s.trim_end_matches(']').to_string();
        } else if cur == section && l.starts_with(&format!("{key} = ")) {
            return l.to_string();
        }
    }
    panic!("no {key} in [{section}] of:\n{out}")
}

#[test]
fn flag_wins_over_file_and_file_over_default() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "peerfs.toml",
        "data = \"/srv/peerfs\"\nrunners = 3\n[limits.own]\nmax_wall_ms = 1234\nmax_array_size = 777\n[log]\nformat = \"json\"\n",
    );
    let fs = f.to_str().unwrap();
    let (code, out, err) = peerfs(
        &[
            "config",
            "show",
            "--config",
            fs,
            "--runners",
            "5",
            "-o",
            "limits.own.max_array_size=888",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown(&out, "", "runners"), "runners = 5  # flag --runners");
    assert_eq!(
        shown(&out, "", "data"),
        format!("data = \"/srv/peerfs\"  # file {fs}")
    );
    assert_eq!(
        shown(&out, "limits.own", "max_wall_ms"),
        format!("max_wall_ms = 1234  # file {fs}")
    );
    assert_eq!(
        shown(&out, "limits.own", "max_array_size"),
        "max_array_size = 888  # flag -o limits.own.max_array_size"
    );
    assert_eq!(
        shown(&out, "limits.others", "max_wall_ms"),
        "max_wall_ms = 2000  # default"
    );
    assert_eq!(
        shown(&out, "log", "format"),
        format!("format = \"json\"  # file {fs}")
    );
    // The output is itself a valid config file with the same values.
    let again = write(d.path(), "again.toml", &out);
    let (code, out2, err) = peerfs(
        &["config", "show", "--config", again.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out2.contains("max_array_size = 888"), "{out2}");
    assert!(out2.contains("runners = 5"), "{out2}");

    // PEERFS_CONFIG names the file when --config is not given.
    let (code, out, err) = peerfs(&["config", "show"], &[("PEERFS_CONFIG", &f)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        shown(&out, "", "runners"),
        format!("runners = 3  # file {fs}")
    );
    // Optional keys left unset are named; a bare port means loopback.
    let (_, out, _) = peerfs(&["config", "show", "--metrics-listen", "9464"], &[]);
    assert!(out.contains("# data is not set"), "{out}");
    assert_eq!(
        shown(&out, "metrics", "listen"),
        "listen = \"127.0.0.1:9464\"  # flag --metrics-listen"
    );
    // The legacy flags set both limit sets.
    let (_, out, _) = peerfs(&["config", "show", "--max-wall-ms", "99"], &[]);
    assert_eq!(
        shown(&out, "limits.own", "max_wall_ms"),
        "max_wall_ms = 99  # flag --max-wall-ms"
    );
    assert_eq!(
        shown(&out, "limits.others", "max_wall_ms"),
        "max_wall_ms = 99  # flag --max-wall-ms"
    );
}

#[test]
fn the_library_view_of_precedence_is_the_same() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "c.toml",
        "data = \"/x\"\nrunners = 3\nmax_open_peers = 10\n[limits.others]\nmax_sends = 7\n",
    );
    let args = DaemonArgs {
        runners: Some(9),
        options: vec!["max_open_peers=11,limits.own.max_sends=8".into()],
        ..Default::default()
    };
    let e = config::load(Some(&f), &args.flags().unwrap()).unwrap();
    let c = e.core_config().unwrap();
    assert_eq!(c.runners, 9);
    assert_eq!(c.max_open_peers, 11);
    assert_eq!(c.limits.max_sends, 7);
    assert_eq!(c.own_limits.max_sends, 8);
    assert_eq!(c.data_dir, Path::new("/x"));
    // Own scripts get roomy defaults, others' the tight ones.
    assert_eq!(c.own_limits.max_array_size, 4_000_000);
    assert_eq!(c.limits.max_array_size, 10_000);
}

/// `workers`, the former name of `runners`, still sets the runner threads: in
/// the file, as `--workers` and as `-o workers=N`; `config show` names it
/// `runners`, with the spelling the user gave as its source. Both names at once
/// in a file are refused.
#[test]
fn the_former_name_workers_still_sets_the_runners() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "old.toml", "data = \"/x\"\nworkers = 3\n");
    let fs = f.to_str().unwrap();
    let (code, out, err) = peerfs(&["config", "show", "--config", fs], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        shown(&out, "", "runners"),
        format!("runners = 3  # file {fs}")
    );
    assert!(!out.contains("workers"), "{out}");
    let (code, out, err) = peerfs(&["config", "show", "--workers", "5"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown(&out, "", "runners"), "runners = 5  # flag --runners");
    let (code, out, err) = peerfs(&["config", "show", "-o", "workers=6"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown(&out, "", "runners"), "runners = 6  # flag -o workers");
    let (code, out, err) = peerfs(&["config", "show", "-o", "runners=7"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown(&out, "", "runners"), "runners = 7  # flag -o runners");

    // The executor gets the count, whichever name set it.
    let c = config::load(Some(&f), &[]).unwrap().core_config().unwrap();
    assert_eq!(c.runners, 3);
    for (opt, n) in [("workers=4", 4), ("runners=5", 5)] {
        let args = DaemonArgs {
            options: vec![opt.into()],
            ..Default::default()
        };
        let e = config::load(Some(&f), &args.flags().unwrap()).unwrap();
        assert_eq!(e.core_config().unwrap().runners, n, "-o {opt}");
    }
    refused("workers = 2\nrunners = 3\n", &["duplicate field `runners`"]);
    refused("workers = 0\n", &["line 1", "workers", "out of range"]);
}

/// The trust settings (chain budget, crash starts, delivery tries, result wait)
/// are keys too, with their ranges.
#[test]
fn the_trust_settings_are_keys() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "c.toml",
        "data = \"/x\"\nchain_budget = 50\nmax_attempts = 2\ndelivery_tries = 9\nresult_wait_ms = 1500\n",
    );
    let c = config::load(Some(&f), &[]).unwrap().core_config().unwrap();
    assert_eq!(c.chain_budget, 50);
    assert_eq!(c.max_attempts, 2);
    assert_eq!(c.delivery_tries, 9);
    assert_eq!(c.result_wait, Duration::from_millis(1500));
    let f = write(d.path(), "bad.toml", "data = \"/x\"\nmax_attempts = 0\n");
    let e = config::load(Some(&f), &[]).unwrap_err().message;
    assert!(
        e.contains("max_attempts") && e.contains("out of range"),
        "{e}"
    );
}

/// `peerfs mount` refuses a bad config at start, before mounting, with exit 64
/// and a message naming the key, the reason and the line.
fn refused(text: &str, wants: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "bad.toml", text);
    let mnt = d.path().join("mnt");
    let data = d.path().join("data");
    let (code, _, err) = peerfs(
        &[
            "mount",
            mnt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--config",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 64, "{text:?} was not refused: {err}");
    for w in wants {
        assert!(err.contains(w), "{text:?}: {w:?} missing from:\n{err}");
    }
    assert!(!data.exists(), "a refused config must not start anything");
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    refused(
        "runners = 2\n\nrunner_count = 4\n",
        &["line 3", "unknown field `runner_count`", "bad.toml"],
    );
    refused(
        "[limits.own]\nmax_operations = 5\nmax_opertions = 5\n",
        &["line 3", "unknown field `max_opertions`"],
    );
    refused("[limit]\nx = 1\n", &["line 1", "unknown field `limit`"]);
}

#[test]
fn a_bad_type_is_refused_with_its_line() {
    refused(
        "runners = \"four\"\n",
        &["line 1", "runners", "invalid type: string \"four\""],
    );
    refused(
        "[limits.others]\nmax_wall_ms = 1.5\n",
        &["line 2", "max_wall_ms", "invalid type"],
    );
    refused(
        "[log]\nformat = \"xml\"\n",
        &["line 2", "format", "unknown variant `xml`"],
    );
    refused("[metrics]\nlisten = \"nowhere\"\n", &["line 2", "listen"]);
    refused("runners = 2\nrunners = 3\n", &["line 2", "duplicate key"]);
}

#[test]
fn an_out_of_range_value_is_refused_with_its_line() {
    refused(
        "[limits.own]\nmax_call_levels = 5000\n",
        &["line 2", "max_call_levels = 5000 is above 1000", "stack"],
    );
    refused(
        "[limits.others]\n\nmax_operations = 0\n",
        &["line 3", "max_operations = 0 would refuse every run"],
    );
    refused("runners = 0\n", &["line 1", "runners", "out of range"]);
    refused(
        "[limits.own]\nmax_wall_ms = -5\n",
        &["line 2", "max_wall_ms"],
    );
}

#[test]
fn bad_flags_are_refused_too() {
    let (code, _, err) = peerfs(
        &["config", "show", "-o", "limits.own.max_expr_depth=0"],
        &[],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("max_expr_depth = 0") && err.contains("-o limits.own.max_expr_depth"),
        "{err}"
    );
    let (code, _, err) = peerfs(&["config", "show", "-o", "limits.own.nope=1"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("unknown field `nope`"), "{err}");
    let (code, _, err) = peerfs(&["config", "show", "--log-level", "peerfs=[[["], &[]);
    assert_eq!(code, 64);
    assert!(
        err.contains("log.level") && err.contains("--log-level"),
        "{err}"
    );
    let (code, _, err) = peerfs(
        &["config", "show", "--config", "/nonexistent/peerfs.toml"],
        &[],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("/nonexistent/peerfs.toml") && err.contains("--config"),
        "{err}"
    );
}

// --- every limit raised and lowered through the config ---------------------

/// One limit, a script that needs more than `low` and at most `high`, and what
/// the limit message must say.
struct Probe {
    key: &'static str,
    low: u64,
    high: u64,
    script: String,
}

fn probes() -> Vec<Probe> {
    let p = |key, low, high, script: &str| Probe {
        key,
        low,
        high,
        script: script.to_string(),
    };
    let nested = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    vec![
        p(
            "max_operations",
            1_000,
            100_000,
            "let i = 0; while i < 2000 { i += 1 } i",
        ),
        p(
            "max_wall_ms",
            30,
            60_000,
            "let i = 0; while i < 1000000 { i += 1 } i",
        ),
        p(
            "max_call_levels",
            20,
            100,
            "fn r(n) { if n == 0 { 0 } else { 1 + r(n - 1) } } r(50)",
        ),
        p("max_expr_depth", 20, 200, &nested),
        p(
            "max_string_size",
            1_000,
            10_000,
            "let s = \"x\"; for i in 0..12 { s += s } s",
        ),
        p(
            "max_array_size",
            1_000,
            5_000,
            "let a = []; for i in 0..2000 { a.push(i) } a",
        ),
        p(
            "max_map_size",
            1_000,
            5_000,
            "let m = #{}; for i in 0..2000 { m[`k${i}`] = i } m",
        ),
        p(
            "max_memory_bytes",
            1 << 20,
            64 << 20,
            "let a = []; for i in 0..200000 { a.push(i) } a.len()",
        ),
        p(
            "max_output_bytes",
            500,
            5_000,
            "for i in 0..100 { print(\"0123456789\") } 1",
        ),
        p(
            "max_sends",
            3,
            10,
            "for i in 0..5 { send(\"sink\", \"1\") } 1",
        ),
        p(
            "max_modules",
            2,
            10,
            "import \"counter\" as a; import \"kv\" as b; import \"audit\" as c; 1",
        ),
        p(
            "max_value_bytes",
            1_000,
            5_000,
            "let s = \"x\"; for i in 0..11 { s += s } set(\"v\", s); 1",
        ),
        p(
            "max_script_bytes",
            1_000,
            5_000,
            &format!("// {}\n1", "padding ".repeat(200)),
        ),
    ]
}

const OPEN: &str = "permit(principal, action, resource);";

/// A core whose `set` limits have `key = value` (through a config file).
fn core_with(dir: &Path, set: &str, key: &str, value: u64) -> Core {
    // Room in every other limit of the set, so that only `key` can end the probe.
    let ops = if key == "max_operations" {
        String::new()
    } else {
        "max_operations = 100000000\n".to_string()
    };
    let data = dir.join("data");
    let f = write(
        dir,
        "peerfs.toml",
        &format!("data = {data:?}\nrunners = 2\n[limits.{set}]\n{key} = {value}\n{ops}"),
    );
    let e = config::load(Some(&f), &[]).unwrap();
    let c = Core::start(e.core_config().unwrap()).unwrap();
    let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
    for n in ["alice", "bob", "sink"] {
        c.create_peer(n, u, g).unwrap();
    }
    c.apply(
        "bob",
        Op::SetMeta("policy".into(), OPEN.as_bytes().to_vec()),
    )
    .unwrap();
    c.apply(
        "sink",
        Op::SetMeta("policy".into(), OPEN.as_bytes().to_vec()),
    )
    .unwrap();
    c
}

/// Runs the probe as alice's own script, or from alice at bob; `Err` = refused at
/// submission (the message).
fn run_probe(c: &Core, own: bool, src: &str) -> Result<Value, String> {
    if own {
        return c.run("alice", "probe.rhai", src).map_err(|e| e.to_string());
    }
    c.submit_to(
        "alice",
        "bob",
        "probe.rhai",
        src.as_bytes().to_vec(),
        &json!({}),
    )
    .map_err(|e| e.to_string())?;
    let b = c.wait_result("alice", "bob", "probe.json").unwrap();
    Ok(serde_json::from_slice(&b).unwrap())
}

fn each_limit_takes_effect(set: &str) {
    for p in probes() {
        for (value, fits) in [(p.low, false), (p.high, true)] {
            let d = tempfile::tempdir().unwrap();
            let c = core_with(d.path(), set, p.key, value);
            let r = run_probe(&c, set == "own", &p.script);
            c.shutdown();
            let what = format!("limits.{set}.{} = {value}", p.key);
            match (fits, r) {
                (true, Ok(r)) => assert_eq!(r["status"], "ok", "{what}: {r}"),
                (false, Ok(r)) => {
                    assert_eq!(r["status"], "limit", "{what}: {r}");
                    let msg = r["error"].as_str().unwrap();
                    assert!(
                        msg.contains(&format!("{} ({value})", p.key)),
                        "{what}: the message must name the limit and its value: {msg}"
                    );
                }
                (false, Err(e)) if p.key == "max_script_bytes" => {
                    assert!(
                        e.contains("max_script_bytes") && e.contains(&value.to_string()),
                        "{what}: {e}"
                    );
                }
                (_, Err(e)) => panic!("{what}: refused at submission: {e}"),
            }
        }
    }
}

#[test]
fn every_own_limit_raised_and_lowered_takes_effect() {
    each_limit_takes_effect("own");
}

#[test]
fn every_others_limit_raised_and_lowered_takes_effect() {
    each_limit_takes_effect("others");
}

/// How many runs a chain of sends makes before the hop limit of `set` stops it:
/// for `own`, a script alice sends to herself again and again; for `others`, a
/// ping-pong between alice and bob (every hop a script from another peer).
fn chain_length(set: &str, hop_limit: u64) -> i64 {
    let d = tempfile::tempdir().unwrap();
    let c = core_with(d.path(), set, "hop_limit", hop_limit);
    c.apply(
        "alice",
        Op::SetMeta("policy".into(), OPEN.as_bytes().to_vec()),
    )
    .unwrap();
    // The chain's script reads itself from state, so that it can send itself on.
    let src = if set == "own" {
        "set(\"n\", (get(\"n\") ?? 0) + 1); send(target.name, get(\"src\")); 1"
    } else {
        "set(\"n\", (get(\"n\") ?? 0) + 1); send(caller.name, get(\"src\")); 1"
    };
    for p in ["alice", "bob"] {
        let store = format!("set(\"src\", {src:?}); 1");
        assert_eq!(c.run(p, "init.rhai", &store).unwrap()["status"], "ok");
    }
    let go = if set == "own" {
        "send(\"alice\", get(\"src\")); 1"
    } else {
        "send(\"bob\", get(\"src\")); 1"
    };
    assert_eq!(c.run("alice", "go.rhai", go).unwrap()["status"], "ok");
    let count = |c: &Core| -> i64 {
        ["alice", "bob"]
            .iter()
            .map(|p| {
                c.run(p, "peek.rhai", "get(\"n\") ?? 0").unwrap()["value"]
                    .as_i64()
                    .unwrap()
            })
            .sum()
    };
    // Wait until the count stops changing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = -1;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let n = count(&c);
        if n == last || Instant::now() > deadline {
            c.shutdown();
            return n;
        }
        last = n;
    }
}

#[test]
fn hop_limit_raised_and_lowered_takes_effect() {
    // The sends of `go` arrive with hops 1, 2, ...; the run at hops == limit may
    // not send on: it ends with `limit` and its count is rolled back, so
    // `limit - 1` runs count.
    assert_eq!(chain_length("own", 3), 2);
    assert_eq!(chain_length("own", 8), 7);
    assert_eq!(chain_length("others", 3), 2);
    assert_eq!(chain_length("others", 8), 7);
}

/// The defaults for own scripts let ordinary programs run (a prime sieve over a
/// million numbers, a map of a million entries), which others' defaults refuse.
#[test]
fn ordinary_programs_run_under_the_own_defaults() {
    let d = tempfile::tempdir().unwrap();
    // No data folder anywhere: the config says so.
    let e = config::load(None, &[]).unwrap();
    assert!(e.core_config().unwrap_err().message.contains("--data"));
    let mut cfg = peerfs::exec::Config::new(d.path());
    let defaults = config::Settings::default();
    cfg.own_limits = defaults.limits.own.clone();
    // Every default but the wall clock: how many seconds these take depends on
    // the machine's load (the operations limit bounds the work itself).
    cfg.own_limits.max_wall_ms = 120_000;
    cfg.limits = defaults.limits.others.clone();
    let c = Core::start(cfg).unwrap();
    let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
    for n in ["alice", "bob"] {
        c.create_peer(n, u, g).unwrap();
    }
    c.apply(
        "bob",
        Op::SetMeta("policy".into(), OPEN.as_bytes().to_vec()),
    )
    .unwrap();
    let sieve = "let n = 1000000; let prime = []; prime.pad(n + 1, true); \
                 let count = 0; \
                 for i in 2..=n { if prime[i] { count += 1; let j = i * i; \
                 while j <= n { prime[j] = false; j += i; } } } count";
    let r = c.run("alice", "sieve.rhai", sieve).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 78498);
    let map = "let m = #{}; for i in 0..1000000 { m[`k${i}`] = i; } m.len()";
    let r = c.run("alice", "map.rhai", map).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["value"], 1_000_000);
    // The same sieve sent by alice to bob meets the tight defaults.
    let r = run_probe(&c, false, sieve).unwrap();
    assert_eq!(r["status"], "limit", "{r}");
    c.shutdown();
}

/// The /proc folders of the `peerfs mount` processes serving `mnt`.
fn daemons(mnt: &Path) -> Vec<std::path::PathBuf> {
    let want = mnt.as_os_str().as_encoded_bytes();
    let serves = |p: &Path| {
        let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"peerfs"))
            && args.contains(&&b"mount"[..])
            && args.contains(&want)
    };
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    procs.map(|e| e.path()).filter(|p| serves(p)).collect()
}

/// The runner threads (`peerfs-runner-N`) of the one daemon serving `mnt`.
fn runner_threads(mnt: &Path) -> usize {
    let [daemon] = &daemons(mnt)[..] else {
        panic!("not one daemon serving {}", mnt.display())
    };
    std::fs::read_dir(daemon.join("task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("peerfs-runner-"))
        })
        .count()
}

/// `mount.peerfs` (what mount(8) runs for an fstab line) turns `-o` options into
/// config keys: mount(8)'s own are skipped, a key takes effect (`runners`, also
/// by its former name `workers`), an unknown key stops the mount.
#[test]
fn fstab_options_are_config_keys() {
    common::require_fuse();
    let d = tempfile::tempdir().unwrap();
    let (data, mnt, log) = (
        d.path().join("data"),
        d.path().join("mnt"),
        d.path().join("peerfs.log"),
    );
    std::fs::create_dir_all(&mnt).unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/mount-examples/mount.peerfs");
    let mount = |opts: &str| {
        Command::new("sh")
            .arg(helper)
            .arg(&data)
            .arg(&mnt)
            .args(["-o", opts])
            .env("PATH", &path)
            .env("PEERFS_LOG", &log)
            .env_remove("PEERFS_CONFIG")
            .status()
            .unwrap()
    };
    let st = mount("rw,nofail,_netdev,workers=3,limits.own.max_operations=1000");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(runner_threads(&mnt), 3, "-o workers=3");
    let unmount = || {
        Command::new("fusermount3")
            .arg("-u")
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(common::wait_until(Duration::from_secs(10), || {
            !common::is_mounted(&mnt)
        }));
    };
    std::fs::create_dir(mnt.join("alice")).unwrap();
    std::fs::write(
        mnt.join("alice/inbox/l.rhai"),
        "let i = 0; while i < 5000 { i += 1 } i",
    )
    .unwrap();
    let r: Value =
        serde_json::from_slice(&std::fs::read(mnt.join("alice/outbox/l.json")).unwrap()).unwrap();
    unmount();
    assert_eq!(r["status"], "limit", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("max_operations (1000)"),
        "{r}"
    );

    let st = mount("nofail,limits.own.bogus=1");
    assert!(!st.success(), "an unknown key must stop the mount");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("unknown field `bogus`"), "{text}");
    if common::is_mounted(&mnt) {
        unmount();
    }

    assert!(common::wait_until(Duration::from_secs(10), || {
        daemons(&mnt).is_empty()
    }));
    let st = mount("nofail,runners=2");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let n = runner_threads(&mnt);
    unmount();
    assert_eq!(n, 2, "-o runners=2");
}

/// `script_cache_entries` bounds the compiled-script cache.
#[test]
fn the_script_cache_size_is_a_key() {
    for (entries, most) in [(2u64, 2usize), (100, 6)] {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "c.toml",
            &format!(
                "data = {:?}\nscript_cache_entries = {entries}\n",
                d.path().join("data")
            ),
        );
        let c = Core::start(config::load(Some(&f), &[]).unwrap().core_config().unwrap()).unwrap();
        let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
        c.create_peer("a", u, g).unwrap();
        for i in 0..6 {
            c.run("a", &format!("s{i}.rhai"), &format!("{i}")).unwrap();
        }
        let n = c.cache().len();
        assert!(
            n <= most && n >= 1,
            "script_cache_entries = {entries}: {n} cached"
        );
        if entries == 100 {
            assert_eq!(n, 6);
        }
        c.shutdown();
    }
}

#[test]
fn the_history_settings_are_keys() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "c.toml",
        "data = \"/x\"\n[history]\nmax_age = \"12h\"\nmax_bytes = 1000000\n",
    );
    let c = config::load(Some(&f), &[]).unwrap().core_config().unwrap();
    assert_eq!(c.history.max_age_ns, 12 * 3600 * 1_000_000_000);
    assert_eq!(c.history.max_bytes, 1_000_000);
    let f = write(
        d.path(),
        "n.toml",
        "data = \"/x\"\n[history]\nmax_age = 0\n",
    );
    let c = config::load(Some(&f), &[]).unwrap().core_config().unwrap();
    assert!(!c.history.records());
    let c = config::load(None, &[]).unwrap();
    assert_eq!(c.settings.history.max_age, "30d");
    let f = write(
        d.path(),
        "bad.toml",
        "data = \"/x\"\n[history]\nmax_age = \"soon\"\n",
    );
    let e = config::load(Some(&f), &[]).unwrap_err().message;
    assert!(
        e.contains("max_age") && e.contains("not a span of time"),
        "{e}"
    );
}
