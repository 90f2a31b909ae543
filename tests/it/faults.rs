//! Faults: a full disk and a corrupt peer file. Needs root (to mount a small tmpfs)
//! and FUSE; fails loudly without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerfs::util::write_and_close;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(
            ok.success(),
            "cannot mount a tmpfs at {} (this test needs root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    fn start(mnt: &Path, data: &Path) -> Daemon {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: this test needs FUSE"
        );
        std::fs::create_dir_all(mnt).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_peerfs"))
            .args([
                "mount",
                mnt.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::fs::metadata(mnt.join(".peerfs")).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "peerfs did not mount"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn a_full_disk_fails_with_enospc_loses_nothing_and_recovers_without_restart() {
    let d = tempfile::tempdir().unwrap();
    let small = d.path().join("small");
    let _fs = Tmpfs::mount(&small, "3m");
    let data = small.join("data");
    // A filler file to free later.
    std::fs::write(small.join("filler"), vec![0u8; 1 << 20]).unwrap();
    let mnt = d.path().join("mnt");
    let dm = Daemon::start(&mnt, &data);
    std::fs::create_dir(mnt.join("alice")).unwrap();
    let state = mnt.join("alice/state");
    let mut acked = Vec::new();
    let mut enospc = false;
    for i in 0..400 {
        let body = format!("{i}:").repeat(4000);
        match write_and_close(&state.join(format!("k{i}")), body.as_bytes()) {
            Ok(()) => acked.push((i, body)),
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "a full disk must be ENOSPC, got {e}"
                );
                enospc = true;
                break;
            }
        }
    }
    assert!(enospc, "the disk never filled");
    assert!(!acked.is_empty());
    // A submission that must be stored (this one runs too long to finish inside
    // its submission's transaction, so it is queued) fails the same way, at close.
    let big = format!(
        "let s = \"{}\"; let i = 0; while i < 100000000 {{ i += 1; }} 1",
        "x".repeat(200_000)
    );
    let r = write_and_close(&mnt.join("alice/inbox/big.rhai"), big.as_bytes());
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::ENOSPC));
    assert!(
        std::fs::metadata(mnt.join("alice/outbox/big.json")).is_err(),
        "a refused script has no result"
    );
    // Everything acknowledged is intact.
    for (i, body) in &acked {
        assert_eq!(
            &std::fs::read_to_string(state.join(format!("k{i}"))).unwrap(),
            body,
            "k{i}"
        );
    }
    // Free space: the same daemon works again.
    std::fs::remove_file(small.join("filler")).unwrap();
    write_and_close(&state.join("after"), b"42\n").unwrap();
    write_and_close(&mnt.join("alice/inbox/ok.rhai"), b"get(\"after\") + 1").unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("alice/outbox/ok.json")).unwrap()).unwrap();
    assert_eq!(r["value"], 43, "{r}");
    drop(dm);
    let ic = Command::new("sqlite3")
        .arg(data.join("peers/alice.sqlite"))
        .arg("PRAGMA integrity_check")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ic.stdout).trim(), "ok");
}

#[test]
fn a_corrupt_peer_file_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    {
        let c = peerfs::exec::Core::start(peerfs::exec::Config::new(&data)).unwrap();
        c.create_peer("alice", 0, 0).unwrap();
        c.create_peer("bob", 0, 0).unwrap();
        c.run("bob", "x.rhai", "set(\"k\", 1); 1").unwrap();
        c.shutdown();
    }
    // Trash bob's header.
    let p = data.join("peers/bob.sqlite");
    let mut bytes = std::fs::read(&p).unwrap();
    for b in bytes.iter_mut().take(100) {
        *b = 0x5a;
    }
    std::fs::write(&p, bytes).unwrap();
    let mnt = d.path().join("mnt");
    let _dm = Daemon::start(&mnt, &data);
    // alice works; bob answers an error for bob alone; the daemon keeps serving.
    write_and_close(&mnt.join("alice/inbox/a.rhai"), b"1 + 1").unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("alice/outbox/a.json")).unwrap()).unwrap();
    assert_eq!(r["value"], 2);
    let e = std::fs::read_dir(mnt.join("bob/state")).expect_err("a corrupt store must be an error");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = write_and_close(&mnt.join("bob/inbox/b.rhai"), b"1")
        .expect_err("a corrupt store refuses submissions");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    write_and_close(&mnt.join("alice/inbox/c.rhai"), b"3").unwrap();
    assert!(std::fs::read(mnt.join("alice/outbox/c.json")).is_ok());
}

#[test]
fn a_busy_store_is_ebusy_for_that_peer_alone_and_recovers() {
    let d = tempfile::tempdir().unwrap();
    let c = peerfs::exec::Core::start(peerfs::exec::Config::new(d.path())).unwrap();
    c.create_peer("alice", 0, 0).unwrap();
    c.create_peer("bob", 0, 0).unwrap();
    c.run("alice", "a.rhai", "1").unwrap();
    // Another process holds alice's file locked (longer than the 5 s busy timeout).
    let other = rusqlite::Connection::open(d.path().join("peers/alice.sqlite")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let e = c
        .apply(
            "alice",
            peerfs::exec::Op::SetBytes("k".into(), b"1".to_vec()),
        )
        .expect_err("a locked store must refuse the write");
    assert_eq!(e.errno, libc::EBUSY, "{e}");
    assert!(
        e.message.contains("locked") || e.message.contains("busy"),
        "{e}"
    );
    // bob is not affected.
    assert_eq!(c.run("bob", "b.rhai", "2").unwrap()["value"], 2);
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    c.apply(
        "alice",
        peerfs::exec::Op::SetBytes("k".into(), b"1".to_vec()),
    )
    .unwrap();
    c.shutdown();
}

#[test]
fn a_read_only_data_directory_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    {
        let c = peerfs::exec::Core::start(peerfs::exec::Config::new(&data)).unwrap();
        c.create_peer("alice", 0, 0).unwrap();
        c.run("alice", "a.rhai", "set(\"k\", 1); 1").unwrap();
        c.shutdown();
    }
    // Bind the data directory read-only (root can write through file modes).
    let ro = d.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    assert!(
        Command::new("mount")
            .arg("--bind")
            .arg(&data)
            .arg(&ro)
            .status()
            .unwrap()
            .success(),
        "needs root"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _g = Unmount(ro.clone());
    assert!(Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&ro)
        .status()
        .unwrap()
        .success());
    let c = peerfs::exec::Core::start(peerfs::exec::Config::new(&ro)).unwrap();
    let r = c.submit("alice", "x.rhai", b"1".to_vec());
    let e = r.expect_err("a read-only store must refuse a submission");
    assert!(
        matches!(e.errno, libc::EROFS | libc::EIO | libc::EACCES),
        "{e}"
    );
    assert!(!e.message.is_empty());
    c.shutdown();
}
