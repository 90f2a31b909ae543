//! `peerfs top`, driven in a real terminal: tmux runs it against a live mount,
//! capture-pane reads the screen, send-keys quits it.

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_peerfs");

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux(format!("peerfs-{name}-{}", std::process::id()))
    }
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux (scripts-ci/setup installs it)")
    }
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
    fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The cells of the table row of `peer` (borders dropped).
fn row(screen: &str, peer: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l
            .split_whitespace()
            .filter(|c| *c != "│")
            .map(|c| c.trim_matches('│').to_string())
            .collect();
        (cells.first().map(String::as_str) == Some(peer)).then_some(cells)
    })
}

#[test]
fn top_shows_peers_by_activity_and_quits_on_q() {
    let m = Mounted::with(
        |c| c.metrics_peer_labels = true,
        peerfs::fuse::MountOptions::default(),
    );
    for p in ["alice", "bob", "mallory"] {
        m.add_peer(p);
    }
    std::fs::write(
        m.p("bob/policy.cedar"),
        "permit(principal == Peer::\"alice\", action == Action::\"run\", resource);\n",
    )
    .unwrap();
    // bob: two runs from others, one denied at run, one ended by a limit.
    assert_eq!(
        m.run_in("mallory/peers/bob", "x.rhai", "1")["status"],
        "denied"
    );
    assert_eq!(
        m.run_in("alice/peers/bob", "l.rhai", "loop {}")["status"],
        "limit"
    );
    m.run_ok("alice", "a0.rhai", "1");

    let t = Tmux::new("top");
    let cmd = format!("{BIN} top {}", q(&m.mnt));
    let out = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // alice keeps running scripts while top watches: she must come first.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, inbox) = (stop.clone(), m.p("alice/inbox"));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(inbox.join(format!("b{i}.rhai")), "1").unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        })
    };
    let mut screen = String::new();
    let seen = wait_until(Duration::from_secs(15), || {
        screen = t.screen();
        let (Some(a), Some(b)) = (row(&screen, "alice"), row(&screen, "bob")) else {
            return false;
        };
        let rate: f64 = a[1].parse().unwrap_or(0.0);
        let line_of = |p: &str| screen.lines().position(|l| row(l, p).is_some());
        rate > 0.0 && line_of("alice") < line_of("bob") && b[6] == "1" && b[7] == "1"
    });
    stop.store(true, Ordering::Relaxed);
    let sent = busy.join().unwrap();
    assert!(
        seen,
        "alice first with runs/s > 0, bob with 1 denied and 1 limit:\n{screen}"
    );
    assert!(screen.contains("peerfs top"), "{screen}");
    assert!(
        screen.contains("RUNS/S") && screen.contains("P99"),
        "{screen}"
    );
    // alice's p50 is a duration.
    let a = row(&screen, "alice").unwrap();
    assert!(
        a[3].ends_with("µs") || a[3].ends_with("ms"),
        "p50 {:?}:\n{screen}",
        a[3]
    );
    // The totals catch up with every run alice made.
    let want = (sent + 1).to_string();
    let caught = wait_until(Duration::from_secs(10), || {
        screen = t.screen();
        row(&screen, "alice").is_some_and(|a| a[2] == want)
    });
    assert!(caught, "alice's runs should reach {want}:\n{screen}");

    t.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(
        wait_until(Duration::from_secs(5), || !t.alive()),
        "top did not quit on q:\n{}",
        t.screen()
    );
}

/// By default the metrics name no peer: top shows the daemon-wide line and says
/// how to get the per-peer table.
#[test]
fn top_without_peer_labels_shows_the_daemon_wide_figures_and_says_why_no_peers() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.run_ok("alice", "a0.rhai", "1");
    m.run_ok("alice", "a1.rhai", "1");
    let t = Tmux::new("top-plain");
    let cmd = format!("{BIN} top {}", q(&m.mnt));
    let out = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut screen = String::new();
    let seen = wait_until(Duration::from_secs(15), || {
        screen = t.screen();
        screen.contains("runs 2 ") && screen.contains("metrics.peer_labels = true")
    });
    assert!(seen, "{screen}");
    assert!(row(&screen, "alice").is_none(), "{screen}");
    t.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(wait_until(Duration::from_secs(5), || !t.alive()));
}

#[test]
fn top_on_something_that_is_not_a_mount_says_so() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("top").arg(d.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".peerfs/metrics") && err.contains("daemon"),
        "{err}"
    );
}
