//! A reference model of `state/` as a file system: random sequences of file
//! operations (create, write at edge offsets, truncate by path and by handle to 0,
//! to the cap and past it, rename onto and over, unlink, mkdir, rmdir, read)
//! applied to the vfs (no FUSE in the loop) and to a `BTreeMap`, compared after
//! every step: the same errno, the same files with the same bytes.

use std::collections::BTreeMap;
use std::sync::mpsc;

use peerfs::exec::{Config, Core};
use peerfs::vfs::{Caller, Node, SetAttr, Vfs, MAX_STATE_FILE};
use proptest::prelude::*;

const CAP: u64 = MAX_STATE_FILE;

/// The files of the model: three at the top, two in the folder `d`.
const FILES: &[&str] = &["a", "b", "c", "d/x", "d/y"];

#[derive(Debug, Clone)]
enum Op {
    /// Open (creating if missing), write `len` bytes at `offset`, close.
    Write(usize, u64, usize, u8),
    /// truncate(2) by path.
    Truncate(usize, u64),
    /// open, ftruncate(fd), close.
    Ftruncate(usize, u64),
    Unlink(usize),
    Rename(usize, usize),
    Mkdir,
    Rmdir,
    Read(usize),
}

fn edge() -> impl Strategy<Value = u64> {
    // The cap itself is rare: a 64 MiB value costs a commit and a read per step.
    prop_oneof![
        4 => Just(0u64),
        2 => Just(1),
        2 => Just(7),
        4 => 0u64..64,
        1 => Just(CAP),
        2 => Just(CAP + 1),
        2 => Just(999_999_999_999_999),
        1 => Just(i64::MAX as u64),
        1 => Just(u64::MAX),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FILES.len();
    prop_oneof![
        (f.clone(), edge(), 0usize..6, any::<u8>()).prop_map(|(i, o, l, b)| Op::Write(i, o, l, b)),
        (f.clone(), edge()).prop_map(|(i, s)| Op::Truncate(i, s)),
        (f.clone(), edge()).prop_map(|(i, s)| Op::Ftruncate(i, s)),
        f.clone().prop_map(Op::Unlink),
        (f.clone(), f.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        Just(Op::Mkdir),
        Just(Op::Rmdir),
        f.prop_map(Op::Read),
    ]
}

struct Fs {
    _dir: tempfile::TempDir,
    core: Core,
    vfs: std::sync::Arc<Vfs>,
    who: Caller,
}

impl Fs {
    fn new() -> Fs {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().join("data"));
        cfg.runners = 2;
        let core = Core::start(cfg).unwrap();
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        core.create_peer("alice", uid, gid).unwrap();
        let vfs = Vfs::new(core.clone());
        let who = Caller {
            uid,
            gid,
            pid: std::process::id(),
        };
        Fs {
            _dir: dir,
            core,
            vfs,
            who,
        }
    }

    fn dir(d: &str) -> Node {
        Node::State {
            peer: "alice".into(),
            dir: d.into(),
        }
    }

    /// The folder and name of a model file.
    fn split(path: &str) -> (Node, &str) {
        match path.split_once('/') {
            Some((d, n)) => (Fs::dir(d), n),
            None => (Fs::dir(""), path),
        }
    }

    fn node(&self, path: &str) -> peerfs::Result<Node> {
        let (parent, name) = Fs::split(path);
        // The kernel looks the parent up first: a missing folder is ENOENT.
        if let Node::State { dir, .. } = &parent {
            if !dir.is_empty() {
                self.vfs.lookup(&Fs::dir(""), dir)?;
            }
        }
        self.vfs.lookup(&parent, name).map(|(n, _)| n)
    }

    fn close(&self, fh: u64) -> peerfs::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.vfs.flush(
            fh,
            &self.who,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let r = rx.recv().unwrap();
        self.vfs.release(fh);
        r
    }

    fn write(&self, path: &str, offset: u64, data: &[u8]) -> peerfs::Result<()> {
        let (parent, name) = Fs::split(path);
        let fh = match self.node(path) {
            Ok(n) => self.vfs.open(&n, libc::O_WRONLY, &self.who)?.fh,
            Err(e) if e.errno == libc::ENOENT => {
                if let Node::State { dir, .. } = &parent {
                    if !dir.is_empty() {
                        self.vfs.lookup(&Fs::dir(""), dir)?;
                    }
                }
                self.vfs
                    .create(&parent, name, libc::O_WRONLY | libc::O_CREAT, &self.who)?
                    .2
                    .fh
            }
            Err(e) => return Err(e),
        };
        let w = self.vfs.write(fh, offset, data);
        let c = self.close(fh);
        w.map(|_| ()).and(c)
    }

    fn read(&self, path: &str) -> peerfs::Result<Vec<u8>> {
        let n = self.node(path)?;
        let fh = self.vfs.open(&n, libc::O_RDONLY, &self.who)?.fh;
        let mut out = Vec::new();
        loop {
            let (tx, rx) = mpsc::channel();
            self.vfs.read(
                fh,
                out.len() as u64,
                1 << 20,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            match rx.recv().unwrap() {
                Ok(b) if b.is_empty() => break,
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => {
                    self.vfs.release(fh);
                    return Err(e);
                }
            }
        }
        self.vfs.release(fh);
        Ok(out)
    }

    fn names(&self, d: &str) -> Vec<String> {
        self.vfs
            .readdir(&Fs::dir(d))
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

#[derive(Default, Debug)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    d: bool,
}

impl Model {
    /// Whether the folder of `path` exists (the top always does).
    fn parent_ok(&self, path: &str) -> bool {
        !path.contains('/') || self.d
    }

    fn apply(&mut self, op: &Op) -> Result<Option<Vec<u8>>, i32> {
        let path = |i: &usize| FILES[*i].to_string();
        match op {
            Op::Write(i, off, len, byte) => {
                let p = path(i);
                if !self.parent_ok(&p) {
                    return Err(libc::ENOENT);
                }
                let end = off.saturating_add(*len as u64);
                let f = self.files.entry(p).or_default();
                if end > CAP {
                    return Err(libc::EFBIG);
                }
                if f.len() < end as usize {
                    f.resize(end as usize, 0);
                }
                f[*off as usize..end as usize].fill(*byte);
                Ok(None)
            }
            Op::Truncate(i, size) | Op::Ftruncate(i, size) => {
                let p = path(i);
                if !self.parent_ok(&p) || !self.files.contains_key(&p) {
                    return Err(libc::ENOENT);
                }
                if *size > CAP {
                    return Err(libc::EFBIG);
                }
                self.files.get_mut(&p).unwrap().resize(*size as usize, 0);
                Ok(None)
            }
            Op::Unlink(i) => {
                let p = path(i);
                if !self.parent_ok(&p) {
                    return Err(libc::ENOENT);
                }
                self.files.remove(&p).map(|_| None).ok_or(libc::ENOENT)
            }
            Op::Rename(a, b) => {
                let (pa, pb) = (path(a), path(b));
                if !self.parent_ok(&pa) || !self.files.contains_key(&pa) || !self.parent_ok(&pb) {
                    return Err(libc::ENOENT);
                }
                let v = self.files.remove(&pa).unwrap();
                self.files.insert(pb, v);
                Ok(None)
            }
            Op::Mkdir => {
                if self.d {
                    return Err(libc::EEXIST);
                }
                self.d = true;
                Ok(None)
            }
            Op::Rmdir => {
                if !self.d {
                    return Err(libc::ENOENT);
                }
                if self.files.keys().any(|k| k.starts_with("d/")) {
                    return Err(libc::ENOTEMPTY);
                }
                self.d = false;
                Ok(None)
            }
            Op::Read(i) => {
                let p = path(i);
                if !self.parent_ok(&p) {
                    return Err(libc::ENOENT);
                }
                self.files.get(&p).cloned().map(Some).ok_or(libc::ENOENT)
            }
        }
    }
}

fn run(fs: &Fs, op: &Op) -> Result<Option<Vec<u8>>, i32> {
    let path = |i: &usize| FILES[*i];
    let r: peerfs::Result<Option<Vec<u8>>> = match op {
        Op::Write(i, off, len, byte) => fs.write(path(i), *off, &vec![*byte; *len]).map(|_| None),
        Op::Truncate(i, size) => fs
            .node(path(i))
            .and_then(|n| fs.vfs.setattr(&n, None, SetAttr::size(*size)))
            .map(|_| None),
        Op::Ftruncate(i, size) => fs.node(path(i)).and_then(|n| {
            let fh = fs.vfs.open(&n, libc::O_WRONLY, &fs.who)?.fh;
            let t = fs.vfs.setattr(&n, Some(fh), SetAttr::size(*size));
            let c = fs.close(fh);
            t.and(c).map(|_| None)
        }),
        Op::Unlink(i) => {
            let (parent, name) = Fs::split(path(i));
            fs.node(path(i))
                .and_then(|_| fs.vfs.unlink(&parent, name))
                .map(|_| None)
        }
        Op::Rename(a, b) => {
            let ((pa, na), (pb, nb)) = (Fs::split(path(a)), Fs::split(path(b)));
            let parent_b = if path(b).contains('/') {
                fs.vfs.lookup(&Fs::dir(""), "d").map(|_| ())
            } else {
                Ok(())
            };
            fs.node(path(a))
                .and(parent_b)
                .and_then(|_| fs.vfs.rename(&pa, na, &pb, nb, 0))
                .map(|_| None)
        }
        Op::Mkdir => fs.vfs.mkdir(&Fs::dir(""), "d", &fs.who).map(|_| None),
        Op::Rmdir => fs.vfs.rmdir(&Fs::dir(""), "d").map(|_| None),
        Op::Read(i) => fs.read(path(i)).map(Some),
    };
    r.map_err(|e| e.errno)
}

/// Compares everything the vfs shows with the model.
fn same(fs: &Fs, model: &Model) -> Result<(), TestCaseError> {
    let mut top: Vec<String> = model
        .files
        .keys()
        .filter(|k| !k.contains('/'))
        .cloned()
        .collect();
    if model.d {
        top.push("d".into());
    }
    top.sort();
    prop_assert_eq!(fs.names(""), top);
    if model.d {
        let inner: Vec<String> = model
            .files
            .keys()
            .filter_map(|k| k.strip_prefix("d/").map(str::to_string))
            .collect();
        prop_assert_eq!(fs.names("d"), inner);
    }
    for (k, v) in &model.files {
        let got = fs
            .read(k)
            .map_err(|e| TestCaseError::fail(format!("read {k}: {e}")))?;
        prop_assert_eq!(got.len(), v.len(), "size of {}", k);
        prop_assert!(got == *v, "bytes of {}", k);
    }
    Ok(())
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let fs = Fs::new();
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got = run(&fs, op);
        prop_assert_eq!(&got, &want, "step {}: {:?}", step, op);
        same(&fs, &model)?;
        // Every step closes what it opened: nothing is left held against the budget.
        let held = fs.vfs.held_bytes("alice");
        prop_assert_eq!(held, 0, "step {}: {:?} left bytes held", step, op);
    }
    let p = fs.core.peer("alice").unwrap();
    let ok = p.read(|s| s.integrity_check()).unwrap();
    prop_assert_eq!(ok, "ok");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn state_files_match_a_model(ops in proptest::collection::vec(op(), 1..30)) {
        check(&ops)?;
    }
}

#[test]
fn regression_write_far_past_the_cap_leaves_a_new_file_empty() {
    check(&[Op::Write(0, u64::MAX, 1, 1), Op::Read(0)]).unwrap();
}

#[test]
fn regression_rename_over_an_existing_file_and_out_of_a_folder() {
    check(&[
        Op::Mkdir,
        Op::Write(3, 0, 3, 9),
        Op::Write(0, 1, 2, 4),
        Op::Rename(3, 0),
        Op::Rmdir,
    ])
    .unwrap();
}

/// Write handles and staging files of one peer share a budget: past it `EDQUOT`,
/// and the bytes come back when a handle closes or a staging file goes.
#[test]
fn buffers_of_one_peer_have_a_budget() {
    let fs = Fs::new();
    fs.vfs.set_buffer_budget(1 << 20);
    let chunk = vec![1u8; 400 << 10];
    let state = Fs::dir("");
    let mut fhs = Vec::new();
    for name in ["h1", "h2"] {
        let (_, _, o) = fs
            .vfs
            .create(&state, name, libc::O_WRONLY | libc::O_CREAT, &fs.who)
            .unwrap();
        fs.vfs.write(o.fh, 0, &chunk).unwrap();
        fhs.push(o.fh);
    }
    let (_, _, o) = fs
        .vfs
        .create(&state, "h3", libc::O_WRONLY | libc::O_CREAT, &fs.who)
        .unwrap();
    let e = fs.vfs.write(o.fh, 0, &chunk).unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
    assert!(e.message.contains("budget"), "{}", e.message);
    let e = fs
        .vfs
        .setattr(
            &Node::StateFile {
                peer: "alice".into(),
                key: "h3".into(),
            },
            Some(o.fh),
            SetAttr::size(600 << 10),
        )
        .unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT);
    // A closed handle gives its bytes back.
    fs.close(fhs.pop().unwrap()).unwrap();
    fs.vfs.write(o.fh, 0, &chunk).unwrap();
    fs.close(o.fh).unwrap();
    fs.close(fhs.pop().unwrap()).unwrap();
    assert_eq!(fs.read("h3").unwrap(), chunk);

    // Staging files in the inbox count until they are removed.
    let inbox = Node::Inbox {
        peer: "alice".into(),
        target: "alice".into(),
    };
    for name in [".s1", ".s2"] {
        let (_, _, o) = fs
            .vfs
            .create(&inbox, name, libc::O_WRONLY | libc::O_CREAT, &fs.who)
            .unwrap();
        fs.vfs.write(o.fh, 0, &vec![b' '; 450 << 10]).unwrap();
        fs.close(o.fh).unwrap();
    }
    let (_, _, o) = fs
        .vfs
        .create(&inbox, ".s3", libc::O_WRONLY | libc::O_CREAT, &fs.who)
        .unwrap();
    assert_eq!(
        fs.vfs
            .write(o.fh, 0, &vec![b' '; 450 << 10])
            .unwrap_err()
            .errno,
        libc::EDQUOT
    );
    fs.vfs.unlink(&inbox, ".s1").unwrap();
    fs.vfs.write(o.fh, 0, &vec![b' '; 450 << 10]).unwrap();
    fs.close(o.fh).unwrap();
}
