//! A peer's `state/` through a real mount: coreutils on keys and folders, big
//! values and offsets, a reference-model property test of file operations,
//! and attributes that follow what runs change.
//!
//! Every test mounts its own daemon (in-process through `peerfs::fuse::spawn`, or
//! the `peerfs` binary where a process must die) and unmounts in a drop guard.
//! Without FUSE these tests fail; they never skip.

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::json;

#[test]
fn state_files_with_coreutils() {
    let m = Mounted::new();
    m.add_peer("alice");
    let st = m.p("alice/state");
    let s = q(&st);

    // echo / cat / cp / mv / rm
    sh_ok(&format!("echo hi > {s}/greet"));
    assert_eq!(sh_ok(&format!("cat {s}/greet")), "hi\n");
    let local = m.local("note.txt", "a note\nwith two lines\n");
    sh_ok(&format!("cp {} {s}/note", q(&local)));
    assert_eq!(
        fs::read(st.join("note")).unwrap(),
        fs::read(&local).unwrap()
    );
    sh_ok(&format!("cp {s}/note {}", q(&m.work.join("back.txt"))));
    assert_eq!(
        fs::read(m.work.join("back.txt")).unwrap(),
        fs::read(&local).unwrap()
    );
    sh_ok(&format!("mv {s}/greet {s}/hello"));
    expect_errno(
        fs::metadata(st.join("greet")),
        libc::ENOENT,
        "old name after mv",
    );
    assert_eq!(fs::read_to_string(st.join("hello")).unwrap(), "hi\n");
    // mv over an existing key replaces it.
    sh_ok(&format!("mv {s}/hello {s}/note"));
    assert_eq!(fs::read_to_string(st.join("note")).unwrap(), "hi\n");
    sh_ok(&format!("rm {s}/note"));
    expect_errno(fs::metadata(st.join("note")), libc::ENOENT, "after rm");
    assert!(m.names("alice/state").is_empty());
    // The script sees what the files hold, typed.
    sh_ok(&format!("echo 41 > {s}/n && echo hi > {s}/word"));
    assert_eq!(
        m.run_ok("alice", "types.rhai", "[get(\"n\") + 1, get(\"word\")]"),
        json!([42, "hi"])
    );

    // nested keys
    sh_ok(&format!(
        "mkdir -p {s}/a/b && echo 1 > {s}/a/b/c && echo 2 > {s}/a/d"
    ));
    let found = sh_ok(&format!("cd {s} && find . | sort"));
    assert_eq!(
        found.lines().collect::<Vec<_>>(),
        [".", "./a", "./a/b", "./a/b/c", "./a/d", "./n", "./word"]
    );
    assert_eq!(
        m.run_ok("alice", "keys.rhai", "keys(\"a/\")"),
        json!(["a/b/c", "a/d"])
    );
    // A folder made by a script's key is a folder on the mount.
    m.run_ok("alice", "deep.rhai", "set(\"x/y/z\", #{k: [1, 2]}); 0");
    assert!(st.join("x/y").is_dir());
    // Maps are JSON: jq reads them.
    assert_eq!(sh_ok(&format!("jq -c .k {s}/x/y/z")).trim(), "[1,2]");
    sh_ok(&format!("echo '{{\"a\": {{\"b\": 5}}}}' > {s}/cfg"));
    assert_eq!(sh_ok(&format!("jq .a.b {s}/cfg")).trim(), "5");
    assert_eq!(m.run_ok("alice", "cfg.rhai", "get(\"cfg\").a.b"), 5);

    // stat: sizes and mtimes
    let before = SystemTime::now() - Duration::from_secs(60);
    let size = sh_ok(&format!("stat -c %s {s}/a/b/c"));
    assert_eq!(size.trim(), "2");
    let md = fs::metadata(st.join("cfg")).unwrap();
    assert_eq!(md.len(), fs::read(st.join("cfg")).unwrap().len() as u64);
    let mtime = md.modified().unwrap();
    assert!(
        mtime > before && mtime < SystemTime::now() + Duration::from_secs(5),
        "mtime {mtime:?}"
    );
    assert!(md.is_file() && !md.is_dir());
    assert!(fs::metadata(st.join("a")).unwrap().is_dir());

    // rmdir of a non-empty state folder
    expect_errno(
        fs::remove_dir(st.join("a")),
        libc::ENOTEMPTY,
        "rmdir state/a",
    );
    let out = sh(&format!("rmdir {s}/a/b"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{out:?}"
    );
    sh_ok(&format!("rm {s}/a/b/c && rmdir {s}/a/b"));
    assert_eq!(m.names("alice/state/a"), ["d"]);
    // An empty folder made with mkdir can be removed with rmdir.
    sh_ok(&format!("mkdir {s}/empty && rmdir {s}/empty"));
    expect_errno(
        fs::metadata(st.join("empty")),
        libc::ENOENT,
        "removed folder",
    );
    // rm -r of a folder
    sh_ok(&format!("rm -r {s}/x"));
    expect_errno(fs::metadata(st.join("x")), libc::ENOENT, "rm -r x");
    // Removing the last key leaves its folder, empty, until rmdir.
    sh_ok(&format!("rm {s}/a/d"));
    assert!(st.join("a").is_dir());
    assert!(m.names("alice/state/a").is_empty());
    sh_ok(&format!("rmdir {s}/a"));
    assert_eq!(m.names("alice/state"), ["cfg", "n", "word"]);
}

#[test]
fn a_16_mib_value_round_trips_and_offsets_work() {
    let m = Mounted::new();
    m.add_peer("alice");
    let big = m.work.join("big");
    sh_ok(&format!(
        "dd if=/dev/urandom of={} bs=1M count=16 status=none",
        q(&big)
    ));
    let st = m.p("alice/state");
    sh_ok(&format!("cp {} {}", q(&big), q(&st.join("big"))));
    sh_ok(&format!("cmp {} {}", q(&big), q(&st.join("big"))));
    assert_eq!(fs::metadata(st.join("big")).unwrap().len(), 16 << 20);
    // dd straight to the mount, in odd block sizes
    sh_ok(&format!(
        "dd if={} of={} bs=100000 status=none",
        q(&big),
        q(&st.join("big2"))
    ));
    sh_ok(&format!("cmp {} {}", q(&big), q(&st.join("big2"))));

    // A write at an offset (no truncation) changes only those bytes.
    let mut want = fs::read(&big).unwrap();
    {
        let mut f = OpenOptions::new().write(true).open(st.join("big")).unwrap();
        f.seek(SeekFrom::Start(10_000_000)).unwrap();
        f.write_all(b"HELLO PEERFS").unwrap();
        close(f).expect("close after a write at an offset");
    }
    want[10_000_000..10_000_012].copy_from_slice(b"HELLO PEERFS");
    let got = fs::read(st.join("big")).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ after a write at an offset");
    // A read at an offset.
    let mut f = File::open(st.join("big")).unwrap();
    f.seek(SeekFrom::Start(9_999_998)).unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &want[9_999_998..10_000_014]);
    // Extending past the end fills with zeros; truncate shortens.
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(st.join("big2"))
            .unwrap();
        f.seek(SeekFrom::Start((16 << 20) + 10)).unwrap();
        f.write_all(b"end").unwrap();
        close(f).expect("close after a write past the end");
    }
    let got = fs::read(st.join("big2")).unwrap();
    assert_eq!(got.len(), (16 << 20) + 13);
    assert_eq!(&got[16 << 20..], b"\0\0\0\0\0\0\0\0\0\0end");
    sh_ok(&format!("truncate -s 5 {}", q(&st.join("big2"))));
    assert_eq!(fs::read(st.join("big2")).unwrap(), &want[..5]);
}

mod reftest {
    //! Random file operations on state/ through the mount, against a BTreeMap.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `dir/keep` always exists, so `dir/` is always a folder.
    const KEYS: [&str; 5] = ["a", "b", "c", "dir/x", "dir/y"];

    #[derive(Debug, Clone)]
    pub enum Op {
        Write(usize, Vec<u8>),
        Append(usize, Vec<u8>),
        Remove(usize),
        Rename(usize, usize),
        Read(usize),
        List,
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "[a-z \n]{0,12}".prop_map(String::into_bytes),
            prop_oneof![
                Just("42\n"),
                Just("{\"a\":[1,2]}"),
                Just("\"s\""),
                Just(" 1.5 "),
                Just("true"),
                Just("null\n"),
            ]
            .prop_map(|s| s.as_bytes().to_vec()),
        ]
    }

    pub fn op() -> impl Strategy<Value = Op> {
        let k = 0..KEYS.len();
        prop_oneof![
            3 => (k.clone(), bytes()).prop_map(|(k, b)| Op::Write(k, b)),
            1 => (k.clone(), bytes()).prop_map(|(k, b)| Op::Append(k, b)),
            2 => k.clone().prop_map(Op::Remove),
            2 => (k.clone(), k.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => k.prop_map(Op::Read),
            1 => Just(Op::List),
        ]
    }

    fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
        r.err().map(|e| e.raw_os_error().unwrap_or(-1))
    }

    /// Applies `op` to the mount under `state` and to `model`.
    pub fn step(
        state: &Path,
        model: &mut BTreeMap<String, Vec<u8>>,
        op: &Op,
    ) -> Result<(), TestCaseError> {
        let path = |k: usize| state.join(KEYS[k]);
        match op {
            Op::Write(k, b) => {
                prop_assert_eq!(errno_of(fs::write(path(*k), b)), None);
                model.insert(KEYS[*k].to_string(), b.clone());
            }
            Op::Append(k, b) => {
                let r = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path(*k))
                    .and_then(|mut f| f.write_all(b));
                prop_assert_eq!(errno_of(r), None);
                model
                    .entry(KEYS[*k].to_string())
                    .or_default()
                    .extend_from_slice(b);
            }
            Op::Remove(k) => {
                let want = if model.remove(KEYS[*k]).is_some() {
                    None
                } else {
                    Some(libc::ENOENT)
                };
                prop_assert_eq!(errno_of(fs::remove_file(path(*k))), want);
            }
            Op::Rename(a, b) => {
                let r = errno_of(fs::rename(path(*a), path(*b)));
                match model.get(KEYS[*a]).cloned() {
                    None => prop_assert_eq!(r, Some(libc::ENOENT)),
                    Some(v) => {
                        prop_assert_eq!(r, None);
                        model.remove(KEYS[*a]);
                        model.insert(KEYS[*b].to_string(), v);
                    }
                }
            }
            Op::Read(k) => match model.get(KEYS[*k]) {
                Some(v) => prop_assert_eq!(&fs::read(path(*k)).unwrap(), v),
                None => prop_assert_eq!(errno_of(fs::read(path(*k))), Some(libc::ENOENT)),
            },
            Op::List => {}
        }
        check(state, model)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The mount shows exactly the model: listings, sizes and bytes.
    pub fn check(state: &Path, model: &BTreeMap<String, Vec<u8>>) -> Result<(), TestCaseError> {
        let mut top: Vec<String> = model.keys().filter(|k| !k.contains('/')).cloned().collect();
        top.push("dir".into());
        top.sort();
        prop_assert_eq!(listing(state), top);
        let mut sub: Vec<String> = model
            .keys()
            .filter_map(|k| k.strip_prefix("dir/").map(str::to_string))
            .collect();
        sub.push("keep".into());
        sub.sort();
        prop_assert_eq!(listing(&state.join("dir")), sub);
        for k in KEYS {
            let p = state.join(k);
            match model.get(k) {
                Some(v) => {
                    prop_assert_eq!(&fs::read(&p).unwrap(), v, "key {}", k);
                    prop_assert_eq!(
                        fs::metadata(&p).unwrap().len(),
                        v.len() as u64,
                        "size of {}",
                        k
                    );
                }
                None => {
                    prop_assert_eq!(errno_of(fs::metadata(&p)), Some(libc::ENOENT), "key {}", k)
                }
            }
        }
        Ok(())
    }

    #[test]
    fn state_through_the_mount_matches_a_btreemap() {
        let m = Mounted::new();
        let n = AtomicUsize::new(0);
        let mut runner = TestRunner::new(Config {
            cases: 30,
            failure_persistence: None,
            ..Config::default()
        });
        let r = runner.run(&proptest::collection::vec(op(), 1..25), |ops| {
            // A fresh peer per case: one mount for the whole run.
            let peer = format!("p{}", n.fetch_add(1, Ordering::Relaxed));
            m.add_peer(&peer);
            let state = m.p(&format!("{peer}/state"));
            fs::create_dir(state.join("dir")).unwrap();
            fs::write(state.join("dir/keep"), "k").unwrap();
            let mut model = BTreeMap::new();
            for op in &ops {
                step(&state, &mut model, op)
                    .map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Ok(())
        });
        if let Err(e) = r {
            panic!("{e}");
        }
    }
}

#[test]
fn an_empty_new_file_is_stored_at_close_and_nothing_comes_back_later() {
    let m = Mounted::new();
    m.add_peer("alice");
    let st = m.p("alice/state");
    for i in 0..40 {
        let (a, b) = (st.join(format!("e{i}")), st.join(format!("f{i}")));
        fs::write(&a, b"").unwrap();
        fs::rename(&a, &b).unwrap();
        let (c, d) = (st.join(format!("t{i}")), st.join(format!("u{i}")));
        File::create(&c).unwrap();
        fs::remove_file(&c).unwrap();
        let _ = d;
    }
    sh_ok(&format!("touch {}", q(&st.join("touched"))));
    // Let any late request (RELEASE comes after close returns) land.
    std::thread::sleep(Duration::from_millis(300));
    m.run_ok("alice", "sync.rhai", "1");
    let mut want: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    want.push("touched".into());
    want.sort();
    assert_eq!(m.names("alice/state"), want);
    assert_eq!(
        m.run_ok("alice", "keys.rhai", "keys(\"\").len"),
        41,
        "the store holds what the mount shows"
    );
    assert_eq!(fs::read(st.join("touched")).unwrap(), b"");
}

#[test]
fn stat_shows_what_a_run_just_changed() {
    let m = Mounted::new();
    m.add_peer("alice");
    m.add_peer("bob");
    fs::write(
        m.p("bob/policy.cedar"),
        "permit(principal == Peer::\"alice\", action == Action::\"read\", resource);",
    )
    .unwrap();
    let x = m.p("alice/state/x");
    let bx = m.p("alice/peers/bob/state/x");
    fs::write(&x, "1").unwrap();
    fs::write(m.p("bob/state/x"), "1").unwrap();
    assert_eq!(fs::metadata(&x).unwrap().len(), 1);
    assert_eq!(fs::metadata(&bx).unwrap().len(), 1);
    let log_size = fs::metadata(m.p("alice/log")).unwrap().len();
    // Right after the result is read, with no pause: sizes are the new ones.
    m.run_ok("alice", "s.rhai", "set(\"x\", \"hello world\"); 0");
    m.run_ok("bob", "s.rhai", "set(\"x\", \"hello bob\"); 0");
    assert_eq!(fs::metadata(&x).unwrap().len(), 11);
    assert_eq!(sh_ok(&format!("stat -c %s {}", q(&x))).trim(), "11");
    assert_eq!(fs::metadata(&bx).unwrap().len(), 9);
    let log_now = fs::metadata(m.p("alice/log")).unwrap().len();
    assert!(log_now > log_size);
    assert_eq!(log_now, fs::read(m.p("alice/log")).unwrap().len() as u64);
    let out = m.p("alice/outbox/s.json");
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        fs::read(&out).unwrap().len() as u64
    );
    // A key a run removed is gone at once.
    m.run_ok("alice", "r.rhai", "remove(\"x\"); 0");
    expect_errno(fs::metadata(&x), libc::ENOENT, "stat of a removed key");
    expect_errno(fs::read(&x), libc::ENOENT, "read of a removed key");
}

#[test]
fn listed_inode_numbers_match_stat() {
    let m = Mounted::new();
    m.add_peer("alice");
    for i in 0..50 {
        fs::write(m.p(&format!("alice/state/k{i}")), format!("{i}")).unwrap();
    }
    // `ls -i` (numbers from the listing) agrees with `stat` (numbers from lookups),
    // before and after the files were looked up.
    for _ in 0..2 {
        let listed = sh_ok(&format!("cd {} && ls -1i", q(&m.p("alice/state"))));
        let stat = sh_ok(&format!(
            "cd {} && stat -c '%i %n' k*",
            q(&m.p("alice/state"))
        ));
        let norm = |s: &str| {
            let mut v: Vec<(String, String)> = s
                .lines()
                .map(|l| {
                    let mut it = l.split_whitespace();
                    (
                        it.next().unwrap().to_string(),
                        it.next().unwrap().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(norm(&listed), norm(&stat));
        assert_eq!(norm(&listed).len(), 50);
    }
}
