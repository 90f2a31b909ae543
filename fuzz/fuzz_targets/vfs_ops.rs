//! Sequences of file operations on every kind of node (state files and folders,
//! inbox scripts and staging files, modules, policy.cedar, groups, log, results,
//! .peerfs/, another peer's view), with sizes and offsets drawn from the edges.
//! Every operation gives a result or a clear errno, never a panic or an abort; a
//! refused size changes nothing; the store stays intact.
#![cfg_attr(fuzzing, no_main)]

use std::sync::{mpsc, Arc, OnceLock};

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

#[path = "shared/temp.rs"]
mod temp;
use peerfs::exec::Core;
use peerfs::vfs::{Caller, Node, SetAttr, Vfs};

struct World {
    core: Core,
    vfs: Arc<Vfs>,
    who: Caller,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let core = temp::core_with_alice_and_bob("peerfs-fuzz-ops-");
        let vfs = Vfs::new(core.clone());
        // Small buffers, so that the budget is reached too.
        vfs.set_buffer_budget(8 << 20);
        World {
            core,
            vfs,
            who: Caller {
                uid: unsafe { libc::getuid() },
                gid: unsafe { libc::getgid() },
                pid: std::process::id(),
            },
        }
    })
}

/// Paths the operations act on, relative to the mount.
const PATHS: &[&str] = &[
    "alice/state/a",
    "alice/state/d",
    "alice/state/d/x",
    "alice/state/e",
    "alice/inbox/.s",
    "alice/inbox/job.rhai",
    "alice/modules/m.rhai",
    "alice/modules/.draft",
    "alice/policy.cedar",
    "alice/groups",
    "alice/log",
    "alice/outbox/job.json",
    ".peerfs/stats",
    "alice/peers/bob/state/k",
    "alice/peers/bob/inbox/.t",
    "bob/state/k",
];

const SIZES: &[u64] = &[
    0,
    1,
    5,
    4096,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    64 << 20,
    (64 << 20) + 1,
    999_999_999_999_999,
    i64::MAX as u64,
    u64::MAX,
];

/// The parent folder node and name of a path, if its parent resolves.
fn resolve(vfs: &Vfs, path: &str) -> Option<(Node, String)> {
    let mut node = Node::Root;
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop()?.to_string();
    for p in parts {
        node = vfs.lookup(&node, p).ok()?.0;
    }
    Some((node, name))
}

fn wait<T: Send + 'static>(f: impl FnOnce(peerfs::vfs::Reply<T>)) -> peerfs::Result<T> {
    let (tx, rx) = mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().expect("every request is answered")
}

fn ok_or_errno<T>(what: &str, r: peerfs::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(e.errno > 0, "{what}: an error without an errno: {e:?}");
            assert!(!e.message.is_empty(), "{what}: an error without a reason");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let vfs = &*w.vfs;
    let mut open: Vec<u64> = Vec::new();
    for op in data.chunks(3).take(24) {
        let [kind, a, b] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let path = PATHS[a as usize % PATHS.len()];
        let size = SIZES[b as usize % SIZES.len()];
        let Some((parent, name)) = resolve(vfs, path) else {
            continue;
        };
        let node = vfs.lookup(&parent, &name).ok().map(|(n, _)| n);
        match kind % 12 {
            0 => {
                if let Some((_, _, o)) = ok_or_errno(
                    "create",
                    vfs.create(&parent, &name, libc::O_WRONLY | libc::O_CREAT, &w.who),
                ) {
                    open.push(o.fh);
                }
            }
            1 | 2 => {
                let flags = [libc::O_RDONLY, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDWR]
                    [b as usize % 3]
                    | if kind & 0x10 != 0 {
                        libc::O_NONBLOCK
                    } else {
                        0
                    };
                if let Some(n) = &node {
                    if let Some(o) = ok_or_errno("open", vfs.open(n, flags, &w.who)) {
                        open.push(o.fh);
                    }
                }
            }
            3 => {
                if let Some(&fh) = open.last() {
                    let bytes = vec![b'x'; (a as usize % 3) * 700];
                    ok_or_errno("write", vfs.write(fh, size, &bytes));
                }
            }
            4 => {
                if let Some(n) = &node {
                    let fh = open.last().copied();
                    ok_or_errno("setattr", vfs.setattr(n, fh, SetAttr::size(size)));
                    if size > vfs.size_cap(n) {
                        // A refused size leaves the file as it was.
                        let again = vfs.getattr(n, None);
                        if let Ok(attr) = again {
                            assert!(attr.size <= vfs.size_cap(n), "{n:?}: {attr:?}");
                        }
                    }
                }
            }
            5 => {
                if let Some(fh) = open.pop() {
                    // Pending results are never waited on here: the reply may come
                    // when a run finishes, which this loop must not depend on.
                    let r = wait(|reply| vfs.flush(fh, &w.who, reply));
                    ok_or_errno("flush", r);
                    vfs.release(fh);
                }
            }
            6 => {
                ok_or_errno("unlink", vfs.unlink(&parent, &name));
            }
            7 => {
                let to = PATHS[b as usize % PATHS.len()];
                if let Some((np, nn)) = resolve(vfs, to) {
                    ok_or_errno("rename", vfs.rename(&parent, &name, &np, &nn, 0));
                }
            }
            8 => {
                ok_or_errno("mkdir", vfs.mkdir(&parent, &name, &w.who));
            }
            9 => {
                ok_or_errno("rmdir", vfs.rmdir(&parent, &name));
            }
            10 => {
                if let Some(&fh) = open.last() {
                    let is_result = node
                        .as_ref()
                        .is_some_and(|n| matches!(n, Node::OutboxFile { .. }));
                    if !is_result {
                        let r = wait(|reply| vfs.read(fh, size, 4096, reply));
                        ok_or_errno("read", r);
                    }
                }
            }
            _ => {
                if let Some(n) = &node {
                    ok_or_errno("getattr", vfs.getattr(n, None));
                    if n.is_dir() {
                        ok_or_errno("readdir", vfs.readdir(n));
                    }
                }
            }
        }
    }
    for fh in open {
        vfs.release(fh);
    }
    for p in ["alice", "bob"] {
        let peer = w.core.peer(p).expect("peer");
        let ok = peer.read(|s| s.integrity_check()).expect("integrity_check");
        assert_eq!(ok, "ok", "{p}'s store");
    }
});
