//! Spool mode through a real folder: `peerfs serve --spool DIR` driven with cp, mv,
//! `>` and rm; policies, sends between peers, an inotify overflow, a restart.

use crate::common;
use crate::spool_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{q, sh_ok as sh};
use spool_support::{names, peerfs, state_of, wait_json, wait_until, SpoolDaemon};

const T: Duration = Duration::from_secs(30);

/// A temporary folder with `peers` created in its data and a spool serving them.
fn serving(peers: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf, SpoolDaemon) {
    let t = tempfile::tempdir().unwrap();
    let (data, dir) = (t.path().join("data"), t.path().join("spool"));
    for p in peers {
        let o = peerfs(&["peer", "create", p, "--data", data.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let d = SpoolDaemon::start(&data, &dir, t.path());
    (t, data, dir, d)
}

fn log_has(dir: &Path, peer: &str, what: &str) -> bool {
    wait_until(T, || {
        std::fs::read_to_string(dir.join(peer).join("log")).is_ok_and(|l| l.contains(what))
    })
}

const COUNT: &str = r#"set("count", (get("count") ?? 0) + 1); get("count")"#;

#[test]
fn a_plain_folder_driven_with_cp_mv_redirect_and_rm() {
    let (t, data, dir, mut d) = serving(&[]);
    // mkdir makes a peer, laid out like a mount's peer folder.
    std::fs::create_dir(dir.join("alice")).unwrap();
    assert!(wait_until(T, || dir.join("alice/peers").is_dir()
        && dir.join("alice/policy.cedar").exists()));
    assert!(data.join("peers/alice.sqlite").exists());
    let a = dir.join("alice");
    std::fs::write(t.path().join("job.rhai"), COUNT).unwrap();

    // cp: taken at close.
    sh(&format!(
        "cp {} {}/inbox/",
        q(&t.path().join("job.rhai")),
        q(&a)
    ));
    let r = wait_json(&a.join("outbox/job.json"), T);
    assert_eq!(
        (r["status"].as_str(), r["value"].as_i64()),
        (Some("ok"), Some(1))
    );
    assert_eq!(r["script"], "job.rhai");
    assert!(wait_until(T, || names(&a.join("inbox")).is_empty()));
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        .as_deref()
        == Some("1")));

    // > redirection, and mv of a staging file (maildir): both taken.
    sh(&format!("echo '{COUNT}' > {}/inbox/red.rhai", q(&a)));
    assert_eq!(wait_json(&a.join("outbox/red.json"), T)["value"], 2);
    sh(&format!(
        "echo '{COUNT}' > {0}/inbox/.stage && mv {0}/inbox/.stage {0}/inbox/moved.rhai",
        q(&a)
    ));
    assert_eq!(wait_json(&a.join("outbox/moved.json"), T)["value"], 3);
    // Staging names never run.
    sh(&format!(
        "echo '{COUNT}' > {0}/inbox/.hidden.rhai; echo '{COUNT}' > {0}/inbox/edit.rhai~",
        q(&a)
    ));
    // A later script runs after them in the same inbox: they had their chance.
    sh(&format!("echo '{COUNT}' > {}/inbox/after.rhai", q(&a)));
    assert_eq!(wait_json(&a.join("outbox/after.json"), T)["value"], 4);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(names(&a.join("inbox")), [".hidden.rhai", "edit.rhai~"]);
    assert!(!a.join("outbox/.hidden.json").exists() && !a.join("outbox/edit.json").exists());

    // A script over the size limit can never run: set aside, reason in the log.
    std::fs::write(a.join("inbox/huge.rhai"), vec![b' '; 17 << 20]).unwrap();
    assert!(log_has(&dir, "alice", "huge.rhai refused"));
    assert!(log_has(&dir, "alice", "(limits.own.max_script_bytes)"));
    assert!(wait_until(T, || names(&a.join("inbox"))
        .contains(&"huge.rhai.refused~".to_string())));
    std::fs::remove_file(a.join("inbox/huge.rhai.refused~")).unwrap();

    // The documented idiom: discard the old result, drop, wait, read.
    let v = sh(&format!(
        "cd {}; rm -f outbox/job.json; cp {} inbox/ && until [ -s outbox/job.json ]; do sleep 0.05; done; jq .value outbox/job.json",
        q(&a),
        q(&t.path().join("job.rhai"))
    ));
    assert_eq!(v.trim(), "5");

    // state/ is a read-only mirror: writes, new files and rm are undone and logged.
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        .as_deref()
        == Some("5")));
    sh(&format!("echo 99 > {}/state/count", q(&a)));
    assert!(log_has(&dir, "alice", "change to state/count undone"));
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        .as_deref()
        == Some("5")));
    sh(&format!("rm {}/state/count", q(&a)));
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        .as_deref()
        == Some("5")));
    sh(&format!("echo x > {}/state/made-up", q(&a)));
    assert!(log_has(&dir, "alice", "new file state/made-up removed"));
    assert!(wait_until(T, || !a.join("state/made-up").exists()));

    // peerfs run --spool: the same pipeline as with a mount.
    let out = sh(&format!(
        "echo '6 * 7' | {} run alice - --spool {}",
        env!("CARGO_BIN_EXE_peerfs"),
        q(&dir)
    ));
    assert_eq!(out.trim(), "42");
    // Nested keys are nested folders.
    sh(&format!(
        "echo 'set(\"a/b\", \"deep\"); 0' > {}/inbox/nest.rhai",
        q(&a)
    ));
    assert!(wait_until(T, || state_of(&dir, "alice", "a/b").as_deref()
        == Some("deep")));
    // Modules are read when they change.
    sh(&format!(
        "echo 'fn twice(x) {{ x * 2 }}' > {}/modules/m.rhai",
        q(&a)
    ));
    assert!(log_has(&dir, "alice", "module m"));
    sh(&format!(
        "echo 'import \"m\" as m; m::twice(21)' > {}/inbox/imp.rhai",
        q(&a)
    ));
    assert_eq!(wait_json(&a.join("outbox/imp.json"), T)["value"], 42);
    sh(&format!("rm {}/modules/m.rhai", q(&a)));
    assert!(log_has(&dir, "alice", "remove module m"));
    d.stop();
}

#[test]
fn a_refused_policy_leaves_the_old_one_in_force() {
    let (_t, _data, dir, mut d) = serving(&["alice", "bob", "carol"]);
    let good = r#"permit(principal == Peer::"alice", action, resource);"#;
    sh(&format!("echo '{good}' > {}/bob/policy.cedar", q(&dir)));
    assert!(log_has(&dir, "bob", "policy updated"));
    let drop_at_bob = |who: &str, name: &str| {
        let p = dir.join(who).join("peers/bob");
        sh(&format!(
            "echo 'set(\"k\", 1); 1' > {}/inbox/{name}.rhai",
            q(&p)
        ));
        wait_json(&p.join(format!("outbox/{name}.json")), T)
    };
    assert_eq!(drop_at_bob("alice", "w1")["status"], "ok");
    // The policy lets alice read bob's keys: her view of bob's state shows them.
    assert!(wait_until(T, || std::fs::read_to_string(
        dir.join("alice/peers/bob/state/k")
    )
    .is_ok_and(|v| v.trim() == "1")));
    assert!(names(&dir.join("carol/peers/bob/state")).is_empty());

    sh(&format!(
        "echo 'permit(principal ==' > {}/bob/policy.cedar",
        q(&dir)
    ));
    assert!(log_has(
        &dir,
        "bob",
        "policy refused, the old one stays in force"
    ));
    // Still the old policy: alice may, carol may not.
    assert_eq!(drop_at_bob("alice", "w2")["status"], "ok");
    let r = drop_at_bob("carol", "c1");
    assert_eq!(r["status"], "denied", "{r}");
    d.stop();
}

#[test]
fn two_peers_send_to_each_other() {
    let (t, _data, dir, mut d) = serving(&["alice", "bob"]);
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        sh(&format!(
            "echo 'permit(principal == Peer::\"{other}\", action, resource);' > {}/{me}/policy.cedar",
            q(&dir)
        ));
        assert!(log_has(&dir, me, "policy updated"));
    }
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let script = format!(
            r#"send("{other}", "set(\"from_{me}\", (get(\"from_{me}\") ?? 0) + 1); \"hi {other}\""); 0"#
        );
        std::fs::write(t.path().join("ping.rhai"), script).unwrap();
        sh(&format!(
            "cp {} {}/{me}/inbox/",
            q(&t.path().join("ping.rhai")),
            q(&dir)
        ));
        // Drops through peers/<other>/inbox run at the other peer.
        sh(&format!(
            "echo 'target.name' > {}/{me}/peers/{other}/inbox/who.rhai",
            q(&dir)
        ));
    }
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        assert_eq!(
            wait_json(&dir.join(me).join("outbox/ping.json"), T)["status"],
            "ok"
        );
        let sent = wait_json(
            &dir.join(me)
                .join(format!("peers/{other}/outbox/ping-1.json")),
            T,
        );
        assert_eq!(sent["value"], format!("hi {other}"), "{sent}");
        let who = wait_json(
            &dir.join(me).join(format!("peers/{other}/outbox/who.json")),
            T,
        );
        assert_eq!(who["value"], other);
        assert!(wait_until(T, || state_of(
            &dir,
            other,
            &format!("from_{me}")
        )
        .as_deref()
            == Some("1")));
    }
    d.stop();
}

#[test]
fn thousands_dropped_at_once_overflow_the_queue_and_a_rescan_takes_them_all() {
    let (_t, _data, dir, mut d) = serving(&["alice"]);
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Each `>` makes at least three events (create, modify, close): more than fit.
    let n = queue / 2 + 2000;
    d.signal(libc::SIGSTOP);
    sh(&format!(
        "cd {}/alice/inbox && for i in $(seq 1 {n}); do echo '{COUNT}' > s$i.rhai; done",
        q(&dir)
    ));
    d.signal(libc::SIGCONT);
    let out = dir.join("alice/outbox");
    assert!(
        wait_until(Duration::from_secs(300), || names(&out).len() >= n),
        "{} of {n} results",
        names(&out).len()
    );
    assert!(
        d.log_text().contains("inotify queue overflowed"),
        "no overflow was seen"
    );
    let mut values = BTreeSet::new();
    for i in 1..=n {
        let r = wait_json(&out.join(format!("s{i}.json")), T);
        assert_eq!(r["status"], "ok", "{r}");
        values.insert(r["value"].as_i64().unwrap());
    }
    // Each ran exactly once: n runs saw n different counts, 1..=n.
    assert_eq!(values.len(), n);
    assert_eq!(values.last(), Some(&(n as i64)));
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        == Some(n.to_string())));
    assert!(names(&dir.join("alice/inbox")).is_empty());
    d.stop();
}

#[test]
fn a_restart_skips_what_was_taken_and_submits_what_was_left() {
    use std::os::unix::fs::MetadataExt;
    let (t, data, dir, mut d) = serving(&["alice"]);
    d.stop();
    let inbox = dir.join("alice/inbox");
    std::fs::write(inbox.join("taken.rhai"), COUNT).unwrap();
    std::fs::write(inbox.join("left.rhai"), COUNT).unwrap();
    // As after a crash between the commit and the removal: the submission's
    // record of taken.rhai is in the store, the file still in the inbox.
    let m = std::fs::metadata(inbox.join("taken.rhai")).unwrap();
    let ident = peerfs::spool::Ident {
        size: m.len(),
        ino: m.ino(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        hash: peerfs::spool::content_hash(COUNT.as_bytes()),
    };
    let db = rusqlite::Connection::open(data.join("peers/alice.sqlite")).unwrap();
    db.execute(
        "INSERT INTO meta(k,v,mtime) VALUES(?1,?2,0)",
        rusqlite::params![
            peerfs::spool::taken_key("alice", "taken.rhai"),
            ident.record()
        ],
    )
    .unwrap();
    drop(db);
    let mut d = SpoolDaemon::start(&data, &dir, t.path());
    assert_eq!(
        wait_json(&dir.join("alice/outbox/left.json"), T)["value"],
        1
    );
    assert!(wait_until(T, || names(&inbox).is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dir.join("alice/outbox/taken.json").exists());
    assert_eq!(state_of(&dir, "alice", "count").as_deref(), Some("1"));
    d.stop();
}

#[test]
fn scripts_written_in_place_one_after_another_are_all_taken() {
    // A close's event can be read before the kernel has dropped the writer's count
    // (the lease is then refused): such a script must still be taken, soon.
    let (_t, _data, dir, mut d) = serving(&["w0", "w1"]);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let peer = dir.join(format!("w{w}"));
            std::thread::spawn(move || {
                for i in 0..1500 {
                    let name = format!("s{i}");
                    peerfs::util::write_and_close(
                        &peer.join("inbox").join(format!("{name}.rhai")),
                        b"1 + 2",
                    )
                    .unwrap();
                    let out = peer.join("outbox").join(format!("{name}.json"));
                    let end = std::time::Instant::now() + T;
                    let r: serde_json::Value = loop {
                        if let Ok(b) = std::fs::read(&out) {
                            break serde_json::from_slice(&b).unwrap();
                        }
                        assert!(std::time::Instant::now() < end, "{name} was never taken");
                        std::thread::sleep(Duration::from_micros(500));
                    };
                    assert_eq!(r["value"], 3, "{r}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    d.stop();
}

#[test]
fn a_peer_folder_with_symlinks_gives_the_daemon_no_more_than_its_owner_has() {
    use std::os::unix::fs::PermissionsExt;
    // The daemon runs as root here; alice belongs to nobody (65534). Whatever alice
    // puts in her folder, the daemon acts there with nobody's rights.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (data, dir) = (t.path().join("data"), t.path().join("spool"));
    let o = peerfs(&[
        "peer",
        "create",
        "alice",
        "--uid",
        "65534",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Root's private folder, with a script only root may read.
    let secret = t.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("steal.rhai"), "40 + 2").unwrap();
    let mut d = SpoolDaemon::start(&data, &dir, t.path());
    let a = dir.join("alice");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A normal run still works (results written as nobody).
    sh(&format!("echo '{COUNT}' > {}/inbox/ok.rhai", q(&a)));
    assert_eq!(wait_json(&a.join("outbox/ok.json"), T)["value"], 1);
    // The state mirror is refreshed after the result is written: wait for it, or the
    // rm below races the mirror's own writes into state/.
    assert!(wait_until(T, || state_of(&dir, "alice", "count")
        .as_deref()
        == Some("1")));
    std::thread::sleep(Duration::from_millis(200));
    // state/ and outbox/ replaced by symlinks into root's folder.
    // The mirror may still be writing into state/ on a loaded machine (`rm -r`
    // then meets a folder that is not empty): try again until the swap is done.
    let swap = format!(
        "rm -rf {0}/state {0}/outbox && ln -sT {1} {0}/state && ln -sT {1} {0}/outbox",
        q(&a),
        q(&secret)
    );
    assert!(
        wait_until(T, || common::sh(&swap).status.success()),
        "state/ and outbox/ could not be replaced by symlinks"
    );
    sh(&format!(
        "echo 'set(\"planted\", 1); 1' > {}/inbox/plant.rhai",
        q(&a)
    ));
    assert!(wait_until(T, || names(&a.join("inbox")).is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        names(&secret),
        ["steal.rhai"],
        "the daemon wrote into root's folder"
    );
    // An inbox that is a symlink into root's folder: nothing there is taken, at a
    // restart either.
    d.stop();
    sh(&format!(
        "rm -r {0}/inbox && ln -s {1} {0}/inbox",
        q(&a),
        q(&secret)
    ));
    let mut d = SpoolDaemon::start(&data, &dir, t.path());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(names(&secret), ["steal.rhai"]);
    d.stop();
}

#[test]
fn a_peer_of_another_user_closed_when_idle_serves_again() {
    use std::os::unix::fs::PermissionsExt;
    // The folder is the owner's, the store the daemon's: a peer closed when idle is
    // opened again (by a drop, a scan, the log mirror) as the daemon, and serves.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = peerfs::exec::Config::new(t.path().join("data"));
    cfg.idle_close = Duration::from_millis(100);
    let core = peerfs::exec::Core::start(cfg).unwrap();
    core.create_peer("alice", 65534, 65534).unwrap();
    let dir = t.path().join("spool");
    let mut spool = peerfs::spool::Spool::start(core.clone(), &dir).unwrap();
    let a = dir.join("alice");
    for i in 0..3 {
        // Long enough for the sweeper to close the idle peer.
        std::thread::sleep(Duration::from_millis(800));
        sh(&format!("echo '{COUNT}' > {}/inbox/j{i}.rhai", q(&a)));
        assert_eq!(
            wait_json(&a.join(format!("outbox/j{i}.json")), T)["value"],
            i + 1
        );
    }
    assert!(log_has(&dir, "alice", "j2.rhai"));
    spool.stop();
    core.shutdown();
    spool.finish();
}

/// A peer's folder is one description (`peerfs::layout`): an entry added to it in
/// one line shows in a real mount (a folder in the peer's folder and its view in
/// `peers/<other>/`, a file in its folder only; with the entry's mode, read-only)
/// and in a spool's folders alike.
#[test]
fn an_entry_added_to_the_layout_shows_in_the_mount_and_the_spool() {
    use peerfs::layout::{Entry, Layout};
    use std::os::unix::fs::PermissionsExt;
    let layout = Layout::standard().with(Entry::folder("made-up", 0o555).in_views());
    let layout = std::sync::Arc::new(layout.with(Entry::file("made-up.txt", 0o444)));

    let shown = |base: &Path| {
        for at in [base.join("alice"), base.join("alice/peers/bob")] {
            assert!(
                names(&at).contains(&"made-up".to_string()),
                "{}",
                at.display()
            );
            let m = std::fs::metadata(at.join("made-up")).unwrap();
            assert!(m.is_dir(), "{}/made-up", at.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o555, "{}", at.display());
            assert!(names(&at.join("made-up")).is_empty());
        }
        let f = base.join("alice/made-up.txt");
        let m = std::fs::metadata(&f).unwrap();
        assert!(m.is_file(), "{}", f.display());
        assert_eq!((m.len(), m.permissions().mode() & 0o777), (0, 0o444));
        assert!(!names(&base.join("alice/peers/bob")).contains(&"made-up.txt".into()));
    };
    let t = tempfile::tempdir().unwrap();
    let start = |data: &str| {
        let core = peerfs::exec::Core::start(peerfs::exec::Config::new(t.path().join(data)));
        let core = core.unwrap();
        for p in ["alice", "bob"] {
            core.create_peer(p, common::uid(), common::gid()).unwrap();
        }
        core
    };

    common::require_fuse();
    let core = start("mount-data");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let vfs = peerfs::vfs::Vfs::with_layout(core.clone(), layout.clone());
    let session = peerfs::fuse::spawn(vfs, &mnt, &Default::default()).unwrap();
    shown(&mnt);
    for f in ["alice/made-up/x", "alice/made-up.txt"] {
        let e = std::fs::write(mnt.join(f), "1").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{f}: {e}");
    }
    // The standard entries are still there.
    let own = names(&mnt.join("alice"));
    for n in [
        "groups",
        "inbox",
        "log",
        "modules",
        "outbox",
        "peers",
        "policy.cedar",
        "state",
    ] {
        assert!(own.contains(&n.to_string()), "{n} in {own:?}");
    }
    session.unmount_and_join().unwrap();
    core.shutdown();

    let core = start("spool-data");
    let dir = t.path().join("spool");
    let mut spool =
        peerfs::spool::Spool::start_with_layout(core.clone(), &dir, layout.clone()).unwrap();
    shown(&dir);
    spool.stop();
    core.shutdown();
    spool.finish();
}

/// `peerfs run` as a child, stopped (by pid) if it has not ended within a minute:
/// a client that never notices a refusal fails the test instead of hanging it.
fn run_bounded(args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(Duration::from_secs(60), || c.try_wait().unwrap().is_some());
    if !ended {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    }
    let out = c.wait_with_output().unwrap();
    assert!(ended, "peerfs run {args:?} still waiting after a minute");
    out
}

/// A script of `size` bytes (a comment, then `6 * 7`).
fn padded(size: usize) -> Vec<u8> {
    let mut v = b"// ".to_vec();
    v.resize(size - 6, b'x');
    v.extend_from_slice(b"\n6 * 7");
    v
}

#[test]
fn an_owners_script_gets_the_owners_size_limit_and_run_notices_a_refusal() {
    let (t, _data, dir, mut d) = serving(&["alice", "bob"]);
    let dir_s = dir.to_str().unwrap();
    // 2 MiB: over others' limit (1 MiB), within the owner's (16 MiB).
    let big = t.path().join("big.rhai");
    std::fs::write(&big, padded(2 << 20)).unwrap();
    std::fs::copy(&big, dir.join("alice/inbox/dropped.rhai")).unwrap();
    let r = wait_json(&dir.join("alice/outbox/dropped.json"), T);
    assert_eq!(
        (r["status"].as_str(), r["value"].as_i64()),
        (Some("ok"), Some(42)),
        "{r}"
    );
    let big_s = big.to_str().unwrap();
    let o = run_bounded(&["run", "alice", big_s, "--spool", dir_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");

    // The same script sent to bob meets others' limit: refused, and run says so.
    let o = run_bounded(&["run", "bob", big_s, "--as", "alice", "--spool", dir_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("refused big.rhai") && err.contains("limits.others.max_script_bytes"),
        "{err}"
    );
    assert!(names(&dir.join("alice/peers/bob/inbox")).contains(&"big.rhai.refused~".into()));

    // Over the owner's limit: refused as well, naming the owner's limit.
    let huge = t.path().join("huge.rhai");
    std::fs::write(&huge, padded(17 << 20)).unwrap();
    let o = run_bounded(&["run", "alice", huge.to_str().unwrap(), "--spool", dir_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("refused huge.rhai") && err.contains("limits.own.max_script_bytes"),
        "{err}"
    );
    d.stop();
}
