//! Path resolution on the mount: any '/'-separated path walked with `lookup` from
//! the root (and `readdir` on every folder reached) gives errors, never panics; a
//! node `lookup` returns has attributes, and a folder's listing agrees with lookup.
#![cfg_attr(fuzzing, no_main)]

use std::sync::{Arc, OnceLock};

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

#[path = "shared/temp.rs"]
mod temp;
use peerfs::exec::Op;
use peerfs::vfs::{Kind, Node, Vfs};

struct World {
    vfs: Arc<Vfs>,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let core = temp::core_with_alice_and_bob("peerfs-fuzz-vfs-");
        let set = |peer: &str, key: &str, val: &[u8]| {
            core.apply(peer, Op::SetBytes(key.into(), val.to_vec()))
                .expect("set");
        };
        for (k, v) in [
            ("n", &b"41\n"[..]),
            ("greeting", b"hello\n"),
            ("a/b/c", b"{\"x\":[1,2]}"),
            ("a/b/d", b"2"),
            ("a.x", b"dot"),
            ("a-b", b"dash"),
            ("shared/doc", b"\"text\""),
            ("shared/deep/1/2/3", b"null"),
            ("h\u{e9}llo w\u{f6}rld", b"\xff\xfe"),
            ("job.json", b"{}"),
        ] {
            set("alice", k, v);
        }
        set("bob", "mine", b"1");
        set("bob", "shared/b", b"2");
        core.apply(
            "alice",
            Op::SetModule("util".into(), b"fn f() { 1 }".to_vec()),
        )
        .expect("module");
        core.apply(
            "alice",
            Op::SetMeta(
                "policy".into(),
                br#"permit(principal == Peer::"bob", action == Action::"read", resource)
  when { resource.key like "shared/*" };
permit(principal in Group::"friends", action == Action::"read", resource == Key::"n");
"#
                .to_vec(),
            ),
        )
        .expect("policy");
        core.apply(
            "alice",
            Op::SetMeta("groups".into(), b"friends: bob\n".to_vec()),
        )
        .expect("groups");
        // Results in the outboxes.
        core.run("alice", "job.rhai", r#"set("from_run", 1); 42"#)
            .expect("run");
        core.run("bob", "other.rhai", "throw \"no\"").expect("run");
        World {
            vfs: Vfs::new(core),
        }
    })
}

/// A folder's listing: every entry looks up to the same node, of the same kind.
fn check_listing(vfs: &Vfs, dir: &Node) {
    let Ok(list) = vfs.readdir(dir) else { return };
    assert!(
        list.windows(2).all(|w| w[0].0 < w[1].0),
        "{dir:?}: unsorted or duplicate names"
    );
    for (name, node, kind) in list {
        assert_eq!(
            node.is_dir(),
            kind == Kind::Dir,
            "{dir:?} lists {name:?} as {node:?} {kind:?}"
        );
        match vfs.lookup(dir, &name) {
            Ok((n, attr)) => {
                assert_eq!(
                    n, node,
                    "{dir:?}: {name:?} lists as one node, looks up as another"
                );
                assert_eq!(attr.kind, kind, "{dir:?}: {name:?}");
            }
            Err(e) => panic!("{dir:?} lists {name:?} ({node:?}) but lookup fails: {e:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let vfs = &*w.vfs;
    let path = String::from_utf8_lossy(data);
    let mut node = Node::Root;
    let mut listed = false;
    for name in path.split('/').take(32) {
        if node.is_dir() && !listed {
            check_listing(vfs, &node);
            listed = true;
        }
        match vfs.lookup(&node, name) {
            Ok((n, attr)) => {
                let again = vfs.getattr(&n, None).unwrap_or_else(|e| {
                    panic!("lookup({node:?}, {name:?}) = {n:?} but getattr fails: {e:?}")
                });
                assert_eq!(attr.kind, again.kind, "{n:?}");
                assert_eq!(attr.kind == Kind::Dir, n.is_dir(), "{n:?}: {attr:?}");
                if n != node {
                    listed = false;
                }
                node = n;
            }
            Err(e) => {
                assert!(e.errno > 0, "{e:?}");
                // Not a folder: lookups under it fail, and nothing else happens.
                if !node.is_dir() {
                    assert!(e.errno == libc::ENOTDIR, "{node:?} / {name:?}: {e:?}");
                }
            }
        }
    }
    if node.is_dir() && !listed {
        check_listing(vfs, &node);
    }
});
