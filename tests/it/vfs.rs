//! The rules the vfs owns, driven without FUSE: the path grammar, attributes and
//! what SETATTR changes (sizes, times, chmod and chown), the cache lifetimes the
//! kernel is given, the typed flags, staging of `policy.cedar`, `groups` and
//! modules (nothing applies until the close that validates the whole text), size
//! and offset checks (`EFBIG`), the per-peer buffer budget (`EDQUOT`, readers
//! included), rename rules (files and folders), unlink while open, and what
//! `state/` keeps across a restart (empty folders, modes, folder times).

use std::sync::{mpsc, Arc};
use std::time::Duration;

use peerfs::exec::{Config, Core};
use peerfs::vfs::{
    attr_ttl, entry_ttl, Attr, Caller, Kind, Node, OpenFlags, RenameFlags, SetAttr, SetTime, Vfs,
    CACHE_TTL,
};

const POLICY: &str = "permit(principal == Peer::\"alice\", action, resource);\n";

struct Fs {
    _dir: tempfile::TempDir,
    core: Core,
    vfs: Arc<Vfs>,
    who: Caller,
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

/// A core and its vfs over the data folder `data` (as at a mount).
fn start(data: &std::path::Path) -> (Core, Arc<Vfs>) {
    let mut cfg = Config::new(data);
    cfg.runners = 2;
    let core = Core::start(cfg).unwrap();
    let vfs = Vfs::new(core.clone());
    (core, vfs)
}

fn fs() -> Fs {
    let dir = tempfile::tempdir().unwrap();
    let (core, vfs) = start(&dir.path().join("data"));
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    core.create_peer("alice", uid, gid).unwrap();
    core.create_peer("bob", uid, gid).unwrap();
    Fs {
        _dir: dir,
        core,
        vfs,
        who: Caller {
            uid,
            gid,
            pid: std::process::id(),
        },
    }
}

fn state(dir: &str) -> Node {
    Node::State {
        peer: "alice".into(),
        dir: dir.into(),
    }
}

fn key(k: &str) -> Node {
    Node::StateFile {
        peer: "alice".into(),
        key: k.into(),
    }
}

fn inbox() -> Node {
    Node::Inbox {
        peer: "alice".into(),
        target: "alice".into(),
    }
}

fn wait<T: Send + 'static>(f: impl FnOnce(peerfs::vfs::Reply<T>)) -> peerfs::Result<T> {
    let (tx, rx) = mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the vfs answered")
}

impl Fs {
    /// close(2): flush by the opener, then release.
    fn close(&self, fh: u64) -> peerfs::Result<()> {
        let r = wait(|reply| self.vfs.flush(fh, &self.who, reply));
        self.vfs.release(fh);
        r
    }

    fn flush(&self, fh: u64) -> peerfs::Result<()> {
        wait(|reply| self.vfs.flush(fh, &self.who, reply))
    }

    /// `echo -n data > parent/name`.
    fn put(&self, parent: &Node, name: &str, data: &[u8]) -> peerfs::Result<()> {
        let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
        let (_, _, o) = self.vfs.create(parent, name, flags, &self.who)?;
        self.vfs.write(o.fh, 0, data)?;
        self.close(o.fh)
    }

    /// The whole contents of `node`.
    fn read(&self, node: &Node) -> peerfs::Result<Vec<u8>> {
        let fh = self.vfs.open(node, OpenFlags::READ, &self.who)?.fh;
        let r = wait(|reply| self.vfs.read(fh, 0, 1 << 24, reply));
        self.vfs.release(fh);
        r
    }

    fn attr(&self, node: &Node) -> Attr {
        self.vfs.getattr(node, None).unwrap()
    }

    fn errno_of<T: std::fmt::Debug>(&self, r: peerfs::Result<T>) -> i32 {
        r.expect_err("an error").errno
    }
}

fn names(list: &[(String, Node, Kind)]) -> Vec<&str> {
    list.iter().map(|(n, _, _)| n.as_str()).collect()
}

// ---- the path grammar ----

#[test]
fn the_tree_is_the_path_grammar() {
    let f = fs();
    let v = &f.vfs;
    assert_eq!(
        names(&v.readdir(&Node::Root).unwrap()),
        [".peerfs", "alice", "bob"]
    );
    let (n, a) = v.lookup(&Node::Root, "alice").unwrap();
    assert_eq!(n, Node::Peer("alice".into()));
    assert_eq!((a.kind, a.perm), (Kind::Dir, 0o700));
    assert_eq!(f.errno_of(v.lookup(&Node::Root, "carol")), libc::ENOENT);
    assert_eq!(f.errno_of(v.lookup(&Node::Root, "..")), libc::ENOENT);
    let alice = Node::Peer("alice".into());
    assert_eq!(
        names(&v.readdir(&alice).unwrap()),
        [
            ".history",
            ".snapshots",
            "groups",
            "inbox",
            "log",
            "modules",
            "outbox",
            "peers",
            "policy.cedar",
            "schema.toml",
            "state",
            "tables"
        ]
    );
    assert_eq!(f.errno_of(v.lookup(&alice, "other")), libc::ENOENT);
    // peers/ lists the others, never the peer itself.
    let peers = Node::Peers("alice".into());
    assert_eq!(names(&v.readdir(&peers).unwrap()), ["bob"]);
    assert_eq!(f.errno_of(v.lookup(&peers, "alice")), libc::ENOENT);
    let (view, _) = v.lookup(&peers, "bob").unwrap();
    assert_eq!(
        names(&v.readdir(&view).unwrap()),
        ["inbox", "outbox", "state", "tables"]
    );
    let (inbox, _) = v.lookup(&view, "inbox").unwrap();
    assert_eq!(
        inbox,
        Node::Inbox {
            peer: "alice".into(),
            target: "bob".into()
        }
    );
    // .peerfs/
    let (meta, a) = v.lookup(&Node::Root, ".peerfs").unwrap();
    assert_eq!(a.perm, 0o555);
    assert_eq!(
        names(&v.readdir(&meta).unwrap()),
        ["metrics", "refused", "replica", "stats", "version"]
    );
    let stats = f.read(&Node::MetaFile("stats")).unwrap();
    assert!(String::from_utf8(stats).unwrap().starts_with("peers 2\n"));
    // Under a file there is nothing.
    assert_eq!(
        f.errno_of(v.lookup(&Node::Log("alice".into()), "x")),
        libc::ENOTDIR
    );
    // State keys: a bad segment is refused with its reason, not "missing".
    assert_ne!(f.errno_of(v.lookup(&state(""), "")), 0);
    assert_eq!(f.errno_of(v.lookup(&state(""), "nothing")), libc::ENOENT);
    f.put(&state(""), "k", b"v").unwrap();
    let (k, a) = v.lookup(&state(""), "k").unwrap();
    assert_eq!((k, a.kind, a.size), (key("k"), Kind::File, 1));
    // Files are made only in inbox/, state/ and modules/.
    let e = v
        .create(&alice, "new", OpenFlags::WRITE, &f.who)
        .unwrap_err();
    assert_eq!(e.errno, libc::EACCES, "{}", e.message);
    let e = v
        .mkdir(&Node::Modules("alice".into()), "d", &f.who)
        .unwrap_err();
    assert_eq!(e.errno, libc::EACCES);
    // mknod, symlinks and links: EPERM, with the reason.
    assert_eq!(peerfs::vfs::special_file("fifo").errno, libc::EPERM);
}

#[test]
fn the_log_and_results_are_read_only() {
    let f = fs();
    let log = Node::Log("alice".into());
    assert_eq!(f.attr(&log).perm, 0o444);
    assert_eq!(
        f.errno_of(f.vfs.open(&log, OpenFlags::WRITE, &f.who)),
        libc::EACCES
    );
    assert_eq!(
        f.errno_of(f.vfs.open(&state(""), OpenFlags::READ, &f.who)),
        libc::EISDIR
    );
    assert_eq!(
        f.errno_of(
            f.vfs
                .open(&Node::MetaFile("stats"), OpenFlags::WRITE, &f.who)
        ),
        libc::EACCES
    );
}

// ---- attributes, setattr and cache lifetimes ----

#[test]
fn files_get_no_cache_time_and_folders_a_short_one() {
    assert_eq!(entry_ttl(Kind::File), Duration::ZERO);
    assert_eq!(entry_ttl(Kind::Dir), CACHE_TTL);
    assert_eq!(attr_ttl(&key("k"), Kind::File), Duration::ZERO);
    // Scripts in an inbox and results keep their attributes a while.
    let script = Node::InboxFile {
        peer: "alice".into(),
        target: "alice".into(),
        name: "x.rhai".into(),
    };
    assert_eq!(attr_ttl(&script, Kind::File), CACHE_TTL);
    assert_eq!(attr_ttl(&state(""), Kind::Dir), CACHE_TTL);
}

#[test]
fn chown_and_chmod_of_daemon_files_are_accepted_and_ls_stays_truthful() {
    let f = fs();
    let policy = Node::Policy("alice".into());
    let before = f.attr(&policy);
    let change = SetAttr {
        mode: Some(0o600),
        uid: Some(before.uid + 1),
        gid: Some(before.gid + 1),
        ..SetAttr::default()
    };
    let a = f.vfs.setattr(&policy, None, change).unwrap();
    // Accepted (so cp -p, install -m, rsync -a work), and what is shown is what
    // is enforced: the peer's owner owns it, with the mode the daemon gives it.
    assert_eq!(
        (a.perm, a.uid, a.gid),
        (before.perm, before.uid, before.gid)
    );
    assert_eq!(f.attr(&policy), a);
    let peer = Node::Peer("alice".into());
    let a = f.vfs.setattr(&peer, None, SetAttr::mode(0o777)).unwrap();
    assert_eq!(a.perm, 0o700, "a peer's folder stays 0700");
}

#[test]
fn utimens_keeps_the_time_set_and_atime_alone_changes_nothing() {
    let f = fs();
    f.put(&state(""), "k", b"value").unwrap();
    let t = 1_000_000_000_123_456_789;
    let a = f.vfs.setattr(&key("k"), None, SetAttr::mtime(t)).unwrap();
    assert_eq!(a.mtime_ns, t);
    assert_eq!(f.attr(&key("k")).mtime_ns, t);
    // atime only: nothing kept, the attributes answered as they are.
    let only_atime = SetAttr {
        atime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    assert_eq!(
        f.vfs.setattr(&key("k"), None, only_atime).unwrap().mtime_ns,
        t
    );
    // A folder keeps the time set.
    f.vfs.mkdir(&state(""), "d", &f.who).unwrap();
    let a = f.vfs.setattr(&state("d"), None, SetAttr::mtime(t)).unwrap();
    assert_eq!(a.mtime_ns, t);
    assert_eq!(f.attr(&state("d")).mtime_ns, t);
    // UTIME_NOW moves it to now.
    let now = SetAttr {
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    let a = f.vfs.setattr(&key("k"), None, now).unwrap();
    assert!(a.mtime_ns > t);
    // The daemon's own files keep theirs, and say so by not failing.
    let log = Node::Log("alice".into());
    f.vfs.setattr(&log, None, SetAttr::mtime(t)).unwrap();
}

#[test]
fn folder_times_move_when_entries_come_and_go() {
    let f = fs();
    f.vfs.mkdir(&state(""), "d", &f.who).unwrap();
    f.vfs
        .setattr(&state("d"), None, SetAttr::mtime(1_000))
        .unwrap();
    f.put(&state("d"), "x", b"1").unwrap();
    let after_create = f.attr(&state("d")).mtime_ns;
    assert!(after_create > 1_000);
    f.vfs
        .setattr(&state("d"), None, SetAttr::mtime(2_000))
        .unwrap();
    f.vfs.unlink(&state("d"), "x").unwrap();
    assert!(f.attr(&state("d")).mtime_ns > 2_000);
}

// ---- typed flags ----

#[test]
fn flags_cross_as_types() {
    let f = OpenFlags::from_libc(libc::O_RDWR | libc::O_TRUNC);
    assert!(f.write && f.truncate && !f.exclusive);
    assert_eq!(OpenFlags::from(libc::O_RDONLY), OpenFlags::READ);
    assert!(RenameFlags::from_libc(libc::RENAME_NOREPLACE).noreplace);
}

// ---- staging of whole-text files ----

#[test]
fn a_truncated_policy_applies_nothing_until_the_close_validates_it() {
    let f = fs();
    let policy = Node::Policy("alice".into());
    let trunc = OpenFlags::from_libc(libc::O_WRONLY | libc::O_TRUNC);
    let o = f.vfs.open(&policy, trunc, &f.who).unwrap();
    f.vfs.write(o.fh, 0, POLICY.as_bytes()).unwrap();
    f.close(o.fh).unwrap();
    assert_eq!(f.read(&policy).unwrap(), POLICY.as_bytes());

    // `echo bad > policy.cedar`: O_TRUNC, a flush before any write (the shell's
    // dup2), then the bad text: refused, and the old text stays in force.
    let o = f.vfs.open(&policy, trunc, &f.who).unwrap();
    f.flush(o.fh).unwrap();
    assert_eq!(f.read(&policy).unwrap(), POLICY.as_bytes(), "not emptied");
    f.vfs.write(o.fh, 0, b"permit(oops").unwrap();
    let e = f.close(o.fh).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(
        e.message.contains("old one stays in force"),
        "{}",
        e.message
    );
    assert_eq!(f.read(&policy).unwrap(), POLICY.as_bytes());

    // ftruncate then a bad rewrite: the same.
    let o = f.vfs.open(&policy, OpenFlags::WRITE, &f.who).unwrap();
    f.vfs
        .setattr(&policy, Some(o.fh), SetAttr::size(0))
        .unwrap();
    f.flush(o.fh).unwrap();
    assert_eq!(f.read(&policy).unwrap(), POLICY.as_bytes());
    f.vfs.write(o.fh, 0, b"forbid(").unwrap();
    assert_eq!(f.close(o.fh).unwrap_err().errno, libc::EINVAL);
    assert_eq!(f.read(&policy).unwrap(), POLICY.as_bytes());

    // truncate(2) by path: refused (write the whole file instead).
    assert_eq!(
        f.errno_of(f.vfs.setattr(&policy, None, SetAttr::size(0))),
        libc::EACCES
    );

    // `: > policy.cedar`: a truncation no write follows applies at the release.
    let o = f.vfs.open(&policy, trunc, &f.who).unwrap();
    f.close(o.fh).unwrap();
    let emptied = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        f.attr(&policy).size == 0
    });
    assert!(emptied, "an empty policy is applied at the release");
}

#[test]
fn groups_and_modules_are_staged_the_same_way() {
    let f = fs();
    let groups = Node::Groups("alice".into());
    let trunc = OpenFlags::from_libc(libc::O_WRONLY | libc::O_TRUNC);
    let o = f.vfs.open(&groups, trunc, &f.who).unwrap();
    f.vfs.write(o.fh, 0, b"friends: bob\n").unwrap();
    f.close(o.fh).unwrap();
    let o = f.vfs.open(&groups, trunc, &f.who).unwrap();
    f.flush(o.fh).unwrap();
    f.vfs.write(o.fh, 0, b"no colon here\n").unwrap();
    assert_eq!(f.close(o.fh).unwrap_err().errno, libc::EINVAL);
    assert_eq!(f.read(&groups).unwrap(), b"friends: bob\n");

    let modules = Node::Modules("alice".into());
    f.put(&modules, "m.rhai", b"fn one() { 1 }\n").unwrap();
    let m = Node::ModuleFile {
        peer: "alice".into(),
        name: "m.rhai".into(),
    };
    let o = f.vfs.open(&m, trunc, &f.who).unwrap();
    f.flush(o.fh).unwrap();
    assert_eq!(f.read(&m).unwrap(), b"fn one() { 1 }\n", "not emptied");
    f.vfs.write(o.fh, 0, b"fn two() { 2 }\n").unwrap();
    f.close(o.fh).unwrap();
    assert_eq!(f.read(&m).unwrap(), b"fn two() { 2 }\n");
    // A draft (no .rhai) is a staging file: in memory, listed, not a module.
    f.put(&modules, "draft", b"x").unwrap();
    assert_eq!(
        names(&f.vfs.readdir(&modules).unwrap()),
        ["draft", "m.rhai"]
    );
    f.vfs
        .rename(&modules, "draft", &modules, "d.rhai", RenameFlags::NONE)
        .unwrap();
    assert_eq!(
        names(&f.vfs.readdir(&modules).unwrap()),
        ["d.rhai", "m.rhai"]
    );
}

// ---- sizes, offsets and the budget ----

#[test]
fn sizes_and_offsets_past_the_cap_are_efbig_and_change_nothing() {
    let f = fs();
    f.put(&state(""), "x", b"small").unwrap();
    let cap = f.vfs.size_cap(&key("x"));
    for size in [cap + 1, 999_999_999_999_999, i64::MAX as u64, u64::MAX] {
        let e = f
            .vfs
            .setattr(&key("x"), None, SetAttr::size(size))
            .unwrap_err();
        assert_eq!(e.errno, libc::EFBIG, "{size}: {}", e.message);
    }
    assert_eq!(f.read(&key("x")).unwrap(), b"small");
    // Through a handle: at the call, not at close.
    let o = f.vfs.open(&key("x"), OpenFlags::WRITE, &f.who).unwrap();
    let e = f
        .vfs
        .setattr(&key("x"), Some(o.fh), SetAttr::size(cap + 1))
        .unwrap_err();
    assert_eq!(e.errno, libc::EFBIG);
    assert_eq!(
        f.errno_of(f.vfs.write(o.fh, u64::MAX - 1, b"ab")),
        libc::EFBIG
    );
    assert_eq!(f.errno_of(f.vfs.write(o.fh, cap, b"a")), libc::EFBIG);
    f.close(o.fh).unwrap();
    assert_eq!(f.read(&key("x")).unwrap(), b"small");
    // A staging file in the inbox: the script cap.
    let inbox = inbox();
    f.put(&inbox, ".s", b"let").unwrap();
    let s = Node::InboxFile {
        peer: "alice".into(),
        target: "alice".into(),
        name: ".s".into(),
    };
    let e = f
        .vfs
        .setattr(&s, None, SetAttr::size(999_999_999_999_999))
        .unwrap_err();
    assert_eq!(e.errno, libc::EFBIG);
    assert_eq!(f.attr(&s).size, 3);
    // policy.cedar: its own, smaller cap.
    let policy = Node::Policy("alice".into());
    let o = f.vfs.open(&policy, OpenFlags::WRITE, &f.who).unwrap();
    assert_eq!(
        f.errno_of(f.vfs.write(o.fh, peerfs::vfs::MAX_META_FILE, b"x")),
        libc::EFBIG
    );
    f.vfs.release(o.fh);
}

#[test]
fn truncating_a_staging_file_by_path_counts_against_the_budget() {
    let f = fs();
    f.vfs.set_buffer_budget(1 << 20);
    let inbox = inbox();
    f.put(&inbox, ".s", b"").unwrap();
    let s = Node::InboxFile {
        peer: "alice".into(),
        target: "alice".into(),
        name: ".s".into(),
    };
    let e = f.vfs.setattr(&s, None, SetAttr::size(2 << 20)).unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
    f.vfs.setattr(&s, None, SetAttr::size(1 << 19)).unwrap();
    assert_eq!(f.attr(&s).size, 1 << 19);
    // Another peer's budget is its own.
    let bob_inbox = Node::Inbox {
        peer: "bob".into(),
        target: "bob".into(),
    };
    f.put(&bob_inbox, ".s", &vec![b' '; 900 << 10]).unwrap();
}

/// The budget is a counter per peer: right after each write, truncation and close
/// it says what the peer's handles and staging files hold, a write past it is
/// `EDQUOT` and takes nothing, and it is back at zero once every file is closed.
#[test]
fn the_budget_counter_follows_writes_truncates_and_closes() {
    const K: u64 = 1 << 10;
    let f = fs();
    f.vfs.set_buffer_budget(1 << 20);
    let held = || f.vfs.held_bytes("alice");
    f.put(&state(""), "x", &vec![7u8; (200 * K) as usize])
        .unwrap();
    assert_eq!(held(), 0, "a closed handle holds nothing");
    let create = |name: &str| {
        let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
        f.vfs.create(&state(""), name, flags, &f.who).unwrap().2.fh
    };
    let (a, b) = (create("a"), create("b"));
    f.vfs.write(a, 0, &vec![1u8; (300 * K) as usize]).unwrap();
    assert_eq!(held(), 300 * K);
    f.vfs
        .write(b, 100 * K, &vec![2u8; (200 * K) as usize])
        .unwrap();
    assert_eq!(held(), 600 * K, "a write past the end holds the gap too");
    f.vfs.write(b, 0, b"overwrite").unwrap();
    assert_eq!(
        held(),
        600 * K,
        "a write inside the buffer holds nothing more"
    );
    // Truncations through a handle: down gives back, up takes.
    f.vfs
        .setattr(&key("a"), Some(a), SetAttr::size(100 * K))
        .unwrap();
    assert_eq!(held(), 400 * K);
    f.vfs
        .setattr(&key("b"), Some(b), SetAttr::size(500 * K))
        .unwrap();
    assert_eq!(held(), 600 * K);
    // A reader holds its snapshot.
    let r = f.vfs.open(&key("x"), OpenFlags::READ, &f.who).unwrap().fh;
    assert_eq!(held(), 800 * K);
    // Past the budget: refused as before, nothing taken.
    let e = f
        .vfs
        .write(a, 100 * K, &vec![3u8; (300 * K) as usize])
        .unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
    assert!(
        e.message.contains(&format!("holds {} bytes", 800 * K)),
        "{}",
        e.message
    );
    let e = f
        .vfs
        .setattr(&key("b"), Some(b), SetAttr::size(800 * K))
        .unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
    assert_eq!(held(), 800 * K);
    // A staging file holds its bytes after its handle has closed.
    f.put(&inbox(), ".s", &vec![b' '; (50 * K) as usize])
        .unwrap();
    assert_eq!(held(), 850 * K);
    // Another peer's counter is its own.
    let bob = Node::State {
        peer: "bob".into(),
        dir: String::new(),
    };
    let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
    let c = f.vfs.create(&bob, "c", flags, &f.who).unwrap().2.fh;
    f.vfs.write(c, 0, &vec![4u8; (900 * K) as usize]).unwrap();
    assert_eq!((held(), f.vfs.held_bytes("bob")), (850 * K, 900 * K));
    // A flush commits but the handle holds its buffer until its release.
    f.flush(a).unwrap();
    assert_eq!(held(), 850 * K);
    f.vfs.release(a);
    assert_eq!(held(), 750 * K);
    // An unlinked writer gives its bytes back at its release, storing nothing.
    f.vfs.unlink(&state(""), "b").unwrap();
    f.close(b).unwrap();
    assert_eq!(held(), 250 * K);
    f.vfs.release(r);
    assert_eq!(held(), 50 * K);
    f.vfs.unlink(&inbox(), ".s").unwrap();
    f.close(c).unwrap();
    assert_eq!((held(), f.vfs.held_bytes("bob")), (0, 0));
    assert_eq!(f.read(&key("a")).unwrap().len() as u64, 100 * K);
}

/// Writers on different handles of one peer racing for the last bytes of its
/// budget: the check and the take are one step, so together they fill it
/// exactly, never past it, and the counter says what they hold.
#[test]
fn racing_writers_fill_the_budget_exactly() {
    const CHUNK: usize = 4 << 10;
    let f = fs();
    f.vfs.set_buffer_budget(1 << 20);
    let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
    let fhs: Vec<u64> = (0..8)
        .map(|i| {
            let name = format!("r{i}");
            f.vfs.create(&state(""), &name, flags, &f.who).unwrap().2.fh
        })
        .collect();
    let accepted: u64 = std::thread::scope(|s| {
        let ts: Vec<_> = fhs
            .iter()
            .map(|&fh| {
                let vfs = &f.vfs;
                s.spawn(move || {
                    let mut at = 0u64;
                    // Each asks for 512 KiB: twice what the budget leaves them.
                    while at < 512 << 10 {
                        match vfs.write(fh, at, &[9u8; CHUNK]) {
                            Ok(_) => at += CHUNK as u64,
                            Err(e) => {
                                assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
                                break;
                            }
                        }
                    }
                    at
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(accepted, 1 << 20);
    assert_eq!(f.vfs.held_bytes("alice"), 1 << 20);
    for fh in fhs {
        f.vfs.release(fh);
    }
    assert_eq!(f.vfs.held_bytes("alice"), 0);
}

// ---- renames ----

#[test]
fn rename_rules() {
    let f = fs();
    let root = state("");
    f.put(&root, "a", b"A").unwrap();
    f.put(&root, "b", b"B").unwrap();
    // RENAME_NOREPLACE over an existing name; RENAME_EXCHANGE; across peers.
    let noreplace = RenameFlags {
        noreplace: true,
        ..RenameFlags::NONE
    };
    assert_eq!(
        f.errno_of(f.vfs.rename(&root, "a", &root, "b", noreplace)),
        libc::EEXIST
    );
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::NONE
    };
    assert_eq!(
        f.errno_of(f.vfs.rename(&root, "a", &root, "b", exchange)),
        libc::EINVAL
    );
    let bob = Node::State {
        peer: "bob".into(),
        dir: String::new(),
    };
    assert_eq!(
        f.errno_of(f.vfs.rename(&root, "a", &bob, "a", RenameFlags::NONE)),
        libc::EXDEV
    );
    // Over an existing file: replaced.
    f.vfs
        .rename(&root, "a", &root, "b", RenameFlags::NONE)
        .unwrap();
    assert_eq!(f.read(&key("b")).unwrap(), b"A");
    assert_eq!(f.errno_of(f.vfs.lookup(&root, "a")), libc::ENOENT);

    // Folders: within state/, over an empty folder, not over a non-empty one,
    // not over a file, not into itself; a file not over a folder.
    f.vfs.mkdir(&root, "d", &f.who).unwrap();
    f.put(&state("d"), "x", b"X").unwrap();
    f.vfs.mkdir(&state("d"), "inner", &f.who).unwrap();
    f.vfs
        .rename(&root, "d", &root, "e", RenameFlags::NONE)
        .unwrap();
    assert_eq!(f.read(&key("e/x")).unwrap(), b"X");
    assert_eq!(
        names(&f.vfs.readdir(&state("e")).unwrap()),
        ["inner", "x"],
        "an empty folder inside moves along"
    );
    assert_eq!(f.errno_of(f.vfs.lookup(&root, "d")), libc::ENOENT);
    f.vfs.mkdir(&root, "empty", &f.who).unwrap();
    f.vfs
        .rename(&root, "e", &root, "empty", RenameFlags::NONE)
        .unwrap();
    assert_eq!(f.read(&key("empty/x")).unwrap(), b"X");
    f.vfs.mkdir(&root, "full", &f.who).unwrap();
    f.put(&state("full"), "y", b"Y").unwrap();
    assert_eq!(
        f.errno_of(
            f.vfs
                .rename(&root, "empty", &root, "full", RenameFlags::NONE)
        ),
        libc::ENOTEMPTY
    );
    assert_eq!(
        f.errno_of(f.vfs.rename(&root, "empty", &root, "b", RenameFlags::NONE)),
        libc::ENOTDIR
    );
    assert_eq!(
        f.errno_of(
            f.vfs
                .rename(&root, "empty", &state("empty"), "sub", RenameFlags::NONE)
        ),
        libc::EINVAL
    );
    assert_eq!(
        f.errno_of(f.vfs.rename(&root, "b", &root, "full", RenameFlags::NONE)),
        libc::EISDIR
    );
    // A state folder stays in state/.
    let inbox = inbox();
    assert_ne!(
        f.vfs
            .rename(&root, "full", &inbox, "full", RenameFlags::NONE)
            .map_err(|e| e.errno),
        Ok(())
    );
}

#[test]
fn a_staged_script_renamed_to_a_real_name_is_submitted() {
    let f = fs();
    let inbox = inbox();
    f.put(&inbox, ".job.rhai", b"40 + 2").unwrap();
    // Listed while staged, not queued.
    assert_eq!(names(&f.vfs.readdir(&inbox).unwrap()), [".job.rhai"]);
    f.vfs
        .rename(&inbox, ".job.rhai", &inbox, "job.rhai", RenameFlags::NONE)
        .unwrap();
    assert!(!names(&f.vfs.readdir(&inbox).unwrap()).contains(&".job.rhai"));
    let result = Node::OutboxFile {
        peer: "alice".into(),
        target: "alice".into(),
        name: "job.json".into(),
    };
    let text = f.read(&result).unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("42"),
        "{}",
        String::from_utf8_lossy(&text)
    );
}

// ---- unlink while open ----

#[test]
fn a_file_unlinked_while_open_stays_gone_and_fstat_answers() {
    let f = fs();
    let root = state("");
    let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
    let (node, _, o) = f.vfs.create(&root, "f", flags, &f.who).unwrap();
    f.vfs.write(o.fh, 0, b"hi").unwrap();
    f.vfs.unlink(&root, "f").unwrap();
    let a = f.vfs.getattr(&node, Some(o.fh)).unwrap();
    assert_eq!((a.nlink, a.size), (0, 2));
    // The kernel's fstat of an unlinked file comes without a handle.
    assert_eq!(f.vfs.getattr(&node, None).unwrap().nlink, 0);
    f.close(o.fh).unwrap();
    assert_eq!(f.errno_of(f.vfs.lookup(&root, "f")), libc::ENOENT);
    assert_eq!(f.errno_of(f.vfs.getattr(&node, None)), libc::ENOENT);

    // The same for a stored value opened for writing.
    f.put(&root, "g", b"old").unwrap();
    let o = f.vfs.open(&key("g"), OpenFlags::WRITE, &f.who).unwrap();
    f.vfs.write(o.fh, 0, b"new").unwrap();
    f.vfs.unlink(&root, "g").unwrap();
    f.close(o.fh).unwrap();
    assert_eq!(f.errno_of(f.vfs.lookup(&root, "g")), libc::ENOENT);

    // A reader keeps the bytes it opened.
    f.put(&root, "h", b"kept").unwrap();
    let o = f.vfs.open(&key("h"), OpenFlags::READ, &f.who).unwrap();
    f.vfs.unlink(&root, "h").unwrap();
    assert_eq!(wait(|r| f.vfs.read(o.fh, 0, 100, r)).unwrap(), b"kept");
    f.vfs.release(o.fh);
}

#[test]
fn a_child_closing_an_inherited_descriptor_does_not_commit() {
    let f = fs();
    let inbox = inbox();
    let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
    let (node, _, o) = f.vfs.create(&inbox, "x.rhai", flags, &f.who).unwrap();
    f.vfs.write(o.fh, 0, b"let d = ").unwrap();
    // A close from another process (pid 1 is never this test's) leaves the handle.
    let other = Caller { pid: 1, ..f.who };
    wait(|r| f.vfs.flush(o.fh, &other, r)).unwrap();
    f.vfs.write(o.fh, 8, b"1; d + 1").unwrap();
    f.close(o.fh).unwrap();
    let _ = node;
    let result = Node::OutboxFile {
        peer: "alice".into(),
        target: "alice".into(),
        name: "x.json".into(),
    };
    let text = String::from_utf8(f.read(&result).unwrap()).unwrap();
    assert!(text.contains("\"ok\""), "the whole script ran: {text}");
}

// ---- what state/ keeps: modes, empty folders, folder times ----

#[test]
fn modes_set_in_state_are_kept_and_shown() {
    let f = fs();
    let root = state("");
    f.put(&root, "k", b"v").unwrap();
    let a = f
        .vfs
        .setattr(&key("k"), None, SetAttr::mode(0o100600))
        .unwrap();
    assert_eq!(a.perm, 0o600);
    // Kept over a rewrite and a rename, as on any file system.
    f.put(&root, "k", b"rewritten").unwrap();
    assert_eq!(f.attr(&key("k")).perm, 0o600);
    f.vfs
        .rename(&root, "k", &root, "k2", RenameFlags::NONE)
        .unwrap();
    assert_eq!(f.attr(&key("k2")).perm, 0o600);
    // Set-id and sticky bits are not kept.
    let a = f
        .vfs
        .setattr(&key("k2"), None, SetAttr::mode(0o4755))
        .unwrap();
    assert_eq!(a.perm, 0o755);

    // chmod before the first close (rsync's temporary files, `install -m`): shown
    // at once, and stored with the value.
    let flags = OpenFlags::from_libc(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL);
    let (t, _, o) = f.vfs.create(&root, ".t.XXXX", flags, &f.who).unwrap();
    let a = f.vfs.setattr(&t, None, SetAttr::mode(0o700)).unwrap();
    assert_eq!(a.perm, 0o700);
    f.vfs.write(o.fh, 0, b"#!/bin/sh\n").unwrap();
    assert_eq!(f.vfs.getattr(&t, Some(o.fh)).unwrap().perm, 0o700);
    f.close(o.fh).unwrap();
    f.vfs
        .rename(&root, ".t.XXXX", &root, "run.sh", RenameFlags::NONE)
        .unwrap();
    assert_eq!(f.attr(&key("run.sh")).perm, 0o700);

    // Folders keep theirs; a peer's own files and folders keep the daemon's.
    f.vfs.mkdir(&root, "d", &f.who).unwrap();
    assert_eq!(f.attr(&state("d")).perm, 0o755);
    let a = f
        .vfs
        .setattr(&state("d"), None, SetAttr::mode(0o750))
        .unwrap();
    assert_eq!(a.perm, 0o750);
    // A folder that only holds keys (a script set e/x) takes a mode too.
    f.core
        .apply(
            "alice",
            peerfs::exec::Op::SetBytes("e/x".into(), b"1".to_vec()),
        )
        .unwrap();
    let a = f
        .vfs
        .setattr(&state("e"), None, SetAttr::mode(0o700))
        .unwrap();
    assert_eq!(a.perm, 0o700);
    let inbox_dir = inbox();
    let a = f
        .vfs
        .setattr(&inbox_dir, None, SetAttr::mode(0o700))
        .unwrap();
    assert_eq!(a.perm, 0o755, "the daemon's folders keep their mode");
}

#[test]
fn empty_folders_their_modes_and_times_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let who = Caller {
        uid,
        gid,
        pid: std::process::id(),
    };
    let root = state("");
    let t = 1_577_934_245_000_000_000;
    {
        let (core, vfs) = start(&data);
        core.create_peer("alice", uid, gid).unwrap();
        vfs.mkdir(&root, "e", &who).unwrap();
        vfs.mkdir(&state("e"), "inner", &who).unwrap();
        let change = SetAttr {
            mode: Some(0o700),
            mtime: Some(SetTime::At(t)),
            ..SetAttr::default()
        };
        vfs.setattr(&state("e"), None, change).unwrap();
        // rm of a folder's last key leaves the folder.
        vfs.mkdir(&root, "d", &who).unwrap();
        let flags = OpenFlags::from_libc(libc::O_WRONLY | libc::O_CREAT);
        let (_, _, o) = vfs.create(&state("d"), "x", flags, &who).unwrap();
        wait(|r| vfs.flush(o.fh, &who, r)).unwrap();
        vfs.release(o.fh);
        vfs.unlink(&state("d"), "x").unwrap();
        // A folder moved with its empty folder inside.
        vfs.mkdir(&root, "m", &who).unwrap();
        vfs.mkdir(&state("m"), "sub", &who).unwrap();
        vfs.rename(&root, "m", &root, "moved", RenameFlags::NONE)
            .unwrap();
        core.shutdown();
    }
    let (core, vfs) = start(&data);
    assert_eq!(
        names(&vfs.readdir(&root).unwrap()),
        ["d", "e", "moved"],
        "empty folders survive"
    );
    assert_eq!(names(&vfs.readdir(&state("e")).unwrap()), ["inner"]);
    assert_eq!(names(&vfs.readdir(&state("moved")).unwrap()), ["sub"]);
    let (_, a) = vfs.lookup(&root, "e").unwrap();
    assert_eq!((a.kind, a.perm, a.mtime_ns), (Kind::Dir, 0o700, t));
    assert_eq!(vfs.lookup(&root, "d").unwrap().1.kind, Kind::Dir);
    // rmdir: not while it holds a folder; then gone for good.
    assert_eq!(vfs.rmdir(&root, "e").unwrap_err().errno, libc::ENOTEMPTY);
    vfs.rmdir(&state("e"), "inner").unwrap();
    vfs.rmdir(&root, "e").unwrap();
    assert_eq!(vfs.rmdir(&root, "e").unwrap_err().errno, libc::ENOENT);
    core.shutdown();
    drop(vfs);
    let (core, vfs) = start(&data);
    assert_eq!(names(&vfs.readdir(&root).unwrap()), ["d", "moved"]);
    core.shutdown();
}

#[test]
fn read_only_handles_count_against_the_budget() {
    let f = fs();
    f.vfs.set_buffer_budget(1 << 20);
    f.put(&state(""), "big", &vec![7u8; 600 << 10]).unwrap();
    // Each reader holds the value's bytes from its open to its release.
    let r1 = f.vfs.open(&key("big"), OpenFlags::READ, &f.who).unwrap();
    let e = f
        .vfs
        .open(&key("big"), OpenFlags::READ, &f.who)
        .unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT, "{}", e.message);
    // A writer's buffer and a reader's snapshot share it.
    let e = f
        .vfs
        .open(&key("big"), OpenFlags::WRITE, &f.who)
        .unwrap_err();
    assert_eq!(e.errno, libc::EDQUOT);
    f.vfs.release(r1.fh);
    let r2 = f.vfs.open(&key("big"), OpenFlags::READ, &f.who).unwrap();
    f.vfs.release(r2.fh);
    // Another peer's readers are its own.
    let bob = Node::State {
        peer: "bob".into(),
        dir: String::new(),
    };
    f.put(&bob, "big", &vec![7u8; 600 << 10]).unwrap();
    let rb = f
        .vfs
        .open(
            &Node::StateFile {
                peer: "bob".into(),
                key: "big".into(),
            },
            OpenFlags::READ,
            &f.who,
        )
        .unwrap();
    let r3 = f.vfs.open(&key("big"), OpenFlags::READ, &f.who).unwrap();
    f.vfs.release(r3.fh);
    f.vfs.release(rb.fh);
}
