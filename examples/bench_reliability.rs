//! `scripts-ci/bench reliability`: well-behaved peers' throughput while hostile
//! peers run endless loops, memory bombs, deep recursion and huge outputs; the
//! daemon's peak memory; and acknowledged writes lost on a full disk.
//! (crash.rounds / crash.violations come from scripts-ci/crash.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerfs::exec::{Config, Core, Op};
use serde_json::json;

const GOOD: &str = r#"let n = (get("n") ?? 0) + 1; set("n", n); n"#;
const HOSTILE: [&str; 4] = [
    "loop { }",
    r#"let s = "xxxxxxxxxxxxxxxx"; loop { s += s; }"#,
    "fn r(n) { r(n + 1) } r(0)",
    r#"loop { print("0123456789012345678901234567890123456789"); }"#,
];

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Good peers: each submits `runs` scripts; returns runs/s over all of them.
fn good_throughput(core: &Core, round: usize, runs: usize) -> f64 {
    let start = Instant::now();
    for i in 0..runs {
        for g in 0..8 {
            let p = format!("good{g}");
            let job = core
                .new_job(
                    &p,
                    &format!("r{round}-{i}.rhai"),
                    GOOD.as_bytes().to_vec(),
                    &json!({}),
                )
                .unwrap();
            if i + 1 == runs {
                core.apply(&p, Op::Submit(job)).unwrap();
            } else {
                core.apply_async(&p, Op::Submit(job), None);
            }
        }
    }
    for g in 0..8 {
        let b = core
            .wait_result(
                &format!("good{g}"),
                &format!("good{g}"),
                &format!("r{round}-{}.json", runs - 1),
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["status"], "ok", "{v}");
    }
    (runs * 8) as f64 / start.elapsed().as_secs_f64()
}

fn enospc_lost(bin: &Path) -> usize {
    let d = tempfile::tempdir().unwrap();
    let small = d.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root");
    std::fs::write(small.join("filler"), vec![0u8; 1 << 20]).unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = Command::new(bin)
        .args([
            "mount",
            mnt.to_str().unwrap(),
            "--data",
            small.join("data").to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::fs::metadata(mnt.join(".peerfs")).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::create_dir(mnt.join("alice")).unwrap();
    let mut acked = Vec::new();
    for i in 0..1000 {
        let body = format!("{i};").repeat(3000);
        if peerfs::util::write_and_close(&mnt.join(format!("alice/state/k{i}")), body.as_bytes())
            .is_ok()
        {
            acked.push((i, body));
        } else {
            break;
        }
    }
    std::fs::remove_file(small.join("filler")).unwrap();
    let lost = acked
        .iter()
        .filter(|(i, b)| {
            std::fs::read_to_string(mnt.join(format!("alice/state/k{i}")))
                .ok()
                .as_ref()
                != Some(b)
        })
        .count();
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = child.wait();
    let _ = Command::new("umount").arg("-l").arg(&small).status();
    lost
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    // The hostile scripts are the bad peers' own (dropped into their own inbox):
    // they get the limits other peers' scripts get, with 1 s of wall time.
    cfg.limits.max_wall_ms = 1000;
    cfg.own_limits = cfg.limits.clone();
    let core = Core::start(cfg).unwrap();
    let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
    for i in 0..8 {
        core.create_peer(&format!("good{i}"), u, g).unwrap();
        core.create_peer(&format!("bad{i}"), u, g).unwrap();
    }
    good_throughput(&core, 0, 200); // warm up
    let unloaded = good_throughput(&core, 1, 1000);

    let stop = Arc::new(AtomicBool::new(false));
    let feeders: Vec<_> = (0..8)
        .map(|b| {
            let (c, s) = (core.clone(), stop.clone());
            std::thread::spawn(move || {
                let p = format!("bad{b}");
                let mut i = 0usize;
                while !s.load(Ordering::Relaxed) {
                    // Keep a few hostile scripts queued at every hostile peer.
                    let src = HOSTILE[(i + b) % HOSTILE.len()];
                    let job = c
                        .new_job(
                            &p,
                            &format!("h{i}.rhai"),
                            src.as_bytes().to_vec(),
                            &json!({}),
                        )
                        .unwrap();
                    let _ = c.apply(&p, Op::Submit(job));
                    if i >= 3 {
                        let _ = c.wait_result(&p, &p, &format!("h{}.json", i - 3));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let attacked = good_throughput(&core, 2, 1000);
    stop.store(true, Ordering::Relaxed);
    for f in feeders {
        let _ = f.join();
    }
    let peak = peak_rss_mb();
    core.shutdown();

    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("peerfs");
    let lost = enospc_lost(&bin);
    println!("reliability.enospc_lost_acknowledged: {lost}");
    println!(
        "reliability.hostile_isolation_ratio: {:.3}",
        attacked / unloaded
    );
    println!("reliability.peak_rss_mb: {peak:.0}");
    eprintln!("(good peers: {unloaded:.0} runs/s unloaded, {attacked:.0} runs/s under attack)");
}
