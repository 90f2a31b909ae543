//! A temporary folder for a fuzz target's world, removed when the process exits
//! (libFuzzer ends with `exit`, so a drop guard would never run).

use std::path::PathBuf;
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(d) = DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A fresh folder named `prefix...`, removed at exit; one per process.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
        .keep();
    DIR.set(dir.clone()).expect("one world per process");
    unsafe { libc::atexit(remove_dir) };
    dir
}

/// A core over a fresh folder with the peers alice and bob (owned by this uid).
#[allow(dead_code)] // not every target needs one
pub fn core_with_alice_and_bob(prefix: &str) -> peerfs::exec::Core {
    let mut cfg = peerfs::exec::Config::new(temp_dir(prefix));
    cfg.runners = 2;
    let core = peerfs::exec::Core::start(cfg).expect("core");
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    for p in ["alice", "bob"] {
        core.create_peer(p, uid, gid).expect("peer");
    }
    core
}
