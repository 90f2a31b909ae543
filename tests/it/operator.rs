//! What an operator runs around a daemon: a second daemon or a `peer` command on
//! a served folder, exit statuses, signals, start-up checks, completions, the man
//! page. Real mounts and real processes; each daemon is stopped by its pid.

use crate::common;
use crate::spool_support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use spool_support::SpoolDaemon;

const T: Duration = Duration::from_secs(30);

fn peerfs(args: &[&OsStr]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PEERFS_MOUNT")
        .env_remove("PEERFS_SPOOL")
        .env_remove("PEERFS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Expects `o` to be the refusal of a busy folder: exit 75, naming `pid`.
#[track_caller]
fn refused_busy(o: &Output, pid: i32, what: &str) {
    let err = text(o);
    assert_eq!(o.status.code(), Some(75), "{what}: {err}");
    assert!(err.contains(&format!("pid {pid}")), "{what}: {err}");
}

#[test]
fn a_served_data_folder_refuses_a_second_daemon_and_the_peer_commands() {
    let (dir, data, mnt, work) = dirs();
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    d.run_ok("alice", "a.rhai", "set(\"x\", 1); 1");

    let m2 = dir.path().join("m2");
    std::fs::create_dir(&m2).unwrap();
    let o = peerfs(&[
        "mount".as_ref(),
        m2.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "a second mount");
    assert!(!is_mounted(&m2), "the second mount was made");

    let sp = dir.path().join("sp2");
    let o = peerfs(&[
        "serve".as_ref(),
        "--spool".as_ref(),
        sp.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "serve on the same data");

    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "dave".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "peer create");
    assert!(!data.join("peers/dave.sqlite").exists());
    let o = peerfs(&[
        "peer".as_ref(),
        "remove".as_ref(),
        "alice".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    refused_busy(&o, d.pid(), "peer remove");
    // alice is still whole: served, and her store where it was.
    assert_eq!(d.run_ok("alice", "b.rhai", "get(\"x\") + 1"), 2);
    assert!(data.join("peers/alice.sqlite").exists());

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(T).code(), Some(0));
    // Once the daemon is gone, the lock went with it.
    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "dave".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = peerfs(&[
        "peer".as_ref(),
        "list".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(list.contains("alice") && list.contains("dave"), "{list}");
}

#[test]
fn a_served_spool_folder_refuses_a_second_daemon_on_other_data() {
    let t = tempfile::tempdir().unwrap();
    let spool = t.path().join("spool");
    let d = SpoolDaemon::start(&t.path().join("d1"), &spool, t.path());
    let other = t.path().join("d2");
    let o = peerfs(&[
        "serve".as_ref(),
        "--spool".as_ref(),
        spool.as_os_str(),
        "--data".as_ref(),
        other.as_os_str(),
    ]);
    refused_busy(&o, d.d.pid(), "a second serve on the spool");
    // Refused before its data folder was touched.
    assert!(
        !other.exists(),
        "the refused daemon made {}",
        other.display()
    );
}

#[test]
fn a_second_demo_on_the_same_folder_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let mnt = dir.join("mnt");
    let mut d = Daemon::spawn(&["demo".as_ref(), dir.as_os_str()], &mnt, t.path());
    assert!(
        wait_until(T, || std::fs::read(mnt.join(".peerfs/version")).is_ok()),
        "the demo did not come up: {}",
        d.log_text()
    );
    let o = peerfs(&["demo".as_ref(), dir.as_os_str()]);
    refused_busy(&o, d.pid(), "a second demo");
    // The first demo still serves.
    assert_eq!(d.run_ok("alice", "a.rhai", "40 + 2"), 42);
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(T).code(), Some(0));
    assert!(!is_mounted(&mnt));
}

#[test]
fn usage_errors_exit_64_everywhere_and_help_and_version_exit_0() {
    let t = tempfile::tempdir().unwrap();
    let s = |a: &str| a.to_string();
    // Each is refused by the argument parser (clap's own status would be 2,
    // which is "denied" here).
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec![s("--no-such-flag")],
        vec![s("serve")],
        vec![s("top")],
        vec![s("mount")],
        vec![
            s("run"),
            s("alice"),
            s("-"),
            s("--mount"),
            s("m"),
            s("--spool"),
            s("s"),
        ],
        vec![s("peer"), s("create"), s("carol")],
        vec![
            s("mount"),
            t.path().display().to_string(),
            s("--runners"),
            s("many"),
        ],
    ];
    for args in &cases {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = peerfs(&a);
        assert_eq!(o.status.code(), Some(64), "peerfs {args:?}: {}", text(&o));
        assert!(!text(&o).is_empty(), "peerfs {args:?} said nothing");
    }
    let o = peerfs(&["--help".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for line in [
        "64  usage",
        "75  the data or spool folder",
        "2   run, policy explain: denied",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    let o = peerfs(&["--version".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("peerfs "));
    let o = peerfs(&["run".as_ref(), "--help".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn policy_explain_and_check_errors_are_not_a_scripts_error() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let d = data.as_os_str();
    let o = peerfs(&[
        "peer".as_ref(),
        "create".as_ref(),
        "alice".as_ref(),
        "--data".as_ref(),
        d,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let explain = |args: &[&str], data: &OsStr| {
        let mut a: Vec<&OsStr> = vec![
            "policy".as_ref(),
            "explain".as_ref(),
            "--data".as_ref(),
            data,
        ];
        a.extend(args.iter().map(OsStr::new));
        peerfs(&a)
    };
    // Denied by the default policy: 2, with the reason on stdout.
    let o = explain(&["alice", "bob", "run", "x.rhai"], d);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!o.stdout.is_empty());
    // Errors of the explaining itself: usage, never 1 (a script's error).
    let o = explain(&["alice", "bob", "fly"], d);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("fly"), "{}", text(&o));
    let o = explain(&["carol", "bob", "run"], d);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("carol"), "{}", text(&o));
    let missing = t.path().join("nothing-here");
    let o = explain(&["alice", "bob", "run"], missing.as_os_str());
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(!missing.exists(), "explain made {}", missing.display());

    // policy check: a refused file is 1, an unreadable one 74.
    let bad = t.path().join("bad.cedar");
    std::fs::write(&bad, "permit(principal, action, resource").unwrap();
    let o = peerfs(&["policy".as_ref(), "check".as_ref(), bad.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = peerfs(&["policy".as_ref(), "check".as_ref(), missing.as_os_str()]);
    assert_eq!(o.status.code(), Some(74), "{}", text(&o));
}

/// `peerfs ARGS` with stdout and stderr into one pipe; returns the child and the
/// pipe's read end (drop it to close the pipe, as when `| tee` is interrupted).
fn spawn_into_pipe(args: &[&OsStr]) -> (std::process::Child, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "peerfs=info")
        .stdin(Stdio::null())
        .stdout(w.try_clone().unwrap())
        .stderr(w)
        .spawn()
        .unwrap();
    (child, r)
}

/// Every `-wal` and `-shm` file under `dir`.
fn wal_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                todo.push(p);
            } else if n.ends_with("-wal") || n.ends_with("-shm") {
                found.push(p);
            }
        }
    }
    found
}

/// A mount whose output went to a pipe that is now closed: each signal stops it
/// cleanly, exit 0, stores closed (no -wal, no -shm), mount gone.
#[test]
fn every_signal_stops_a_daemon_whose_output_pipe_is_closed_cleanly() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let (_dir, data, mnt, work) = dirs();
        let args = [
            "mount".as_ref(),
            mnt.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        let (mut child, reader) = spawn_into_pipe(&args);
        let pid = child.id() as i32;
        assert!(
            wait_until(T, || std::fs::read(mnt.join(".peerfs/version")).is_ok()),
            "the mount did not come up (signal {sig})"
        );
        // The reader goes, as `tee` does on Ctrl-C.
        drop(reader);
        let m = Guard(&mnt);
        std::fs::create_dir(mnt.join("alice")).unwrap();
        std::fs::write(mnt.join("alice/inbox/a.rhai"), "set(\"x\", 1); 1").unwrap();
        let r = std::fs::read_to_string(mnt.join("alice/outbox/a.json")).unwrap();
        assert!(r.contains("\"ok\""), "{r}");
        // A refusal logs a warning: written into the closed pipe.
        assert!(std::fs::create_dir(mnt.join("a b")).is_err());
        assert!(data.join("peers/alice.sqlite").exists());
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let st = wait_exit(&mut child);
        assert_eq!(st.code(), Some(0), "signal {sig}: {st}");
        assert!(!is_mounted(&mnt), "signal {sig}: still mounted");
        assert_eq!(
            wal_files(&data),
            Vec::<std::path::PathBuf>::new(),
            "signal {sig}"
        );
        drop(m);
        let _ = work;
    }
}

/// Waits up to `T` for `child` to exit; kills it (by its pid) past that.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let mut st = None;
    wait_until(T, || {
        st = child.try_wait().unwrap();
        st.is_some()
    });
    st.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("peerfs did not exit within {T:?}");
    })
}

/// Unmounts what a test mounted through a child it manages itself.
struct Guard<'a>(&'a Path);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.0)
                .status();
        }
    }
}

#[test]
fn a_mount_path_that_does_not_exist_is_refused_and_nothing_is_made() {
    let t = tempfile::tempdir().unwrap();
    let (mnt, data) = (t.path().join("typo"), t.path().join("data"));
    let o = peerfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        text(&o).contains(&mnt.display().to_string()),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("mkdir -p"), "{}", text(&o));
    assert!(!mnt.exists(), "the mount path was made");
    assert!(!data.exists(), "the data folder was made");
}

#[test]
fn a_refused_start_makes_no_data_folder() {
    let t = tempfile::tempdir().unwrap();
    let (mnt, data) = (t.path().join("mnt"), t.path().join("data"));
    std::fs::create_dir(&mnt).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = peerfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--metrics-listen".as_ref(),
        addr.as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains(&addr), "{}", text(&o));
    assert!(!is_mounted(&mnt));
    assert!(!data.exists(), "a refused start made the data folder");
    // A start refused after the data folder was made (no NATS server where the
    // lattice is said to be) removes it, and the missing parents it made too.
    let deep = t.path().join("new/deeper/data");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = peerfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data".as_ref(),
        deep.as_os_str(),
        "--nats".as_ref(),
        url.as_ref(),
        "-o".as_ref(),
        "lattice.timeout_ms=500".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(!is_mounted(&mnt));
    assert!(
        !t.path().join("new").exists(),
        "a refused start left folders"
    );
    // The same in spool mode: neither the spool nor the data folder.
    let spool = t.path().join("spool");
    let o = peerfs(&[
        "serve".as_ref(),
        "--spool".as_ref(),
        spool.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--metrics-listen".as_ref(),
        addr.as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        !spool.exists() && !data.exists(),
        "a refused serve made folders"
    );
}

#[test]
fn data_naming_a_file_says_so() {
    let t = tempfile::tempdir().unwrap();
    let (mnt, file) = (t.path().join("mnt"), t.path().join("notes.txt"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(&file, "x").unwrap();
    let f = file.as_os_str();
    let spool = t.path().join("spool");
    for args in [
        vec!["mount".as_ref(), mnt.as_os_str(), "--data".as_ref(), f],
        vec![
            "serve".as_ref(),
            "--spool".as_ref(),
            spool.as_os_str(),
            "--data".as_ref(),
            f,
        ],
        vec![
            "peer".as_ref(),
            "create".as_ref(),
            "alice".as_ref(),
            "--data".as_ref(),
            f,
        ],
    ] {
        let o = peerfs(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
        let err = text(&o);
        assert!(
            err.contains("is a file") && err.contains("notes.txt"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
    assert!(!is_mounted(&mnt));
    assert!(!spool.exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn a_mount_over_a_non_empty_folder_is_warned_about() {
    let (_dir, data, mnt, work) = dirs();
    std::fs::write(mnt.join("forgotten.txt"), "hidden by the mount").unwrap();
    let mut d = Daemon::start(&data, &mnt, &work, &[]);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(T).code(), Some(0));
    let log = d.log_text();
    assert!(log.contains("WARN") && log.contains("not empty"), "{log}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("forgotten.txt")).unwrap(),
        "hidden by the mount"
    );
}

/// docs/spool.md: peer folders are 0700, also one made by its owner's `mkdir`
/// (which gets the umask's 0755): another local user cannot look in.
#[test]
fn a_spool_peer_folder_made_by_a_users_mkdir_becomes_0700() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (runuser)"
    );
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = t.path().join("spool");
    let d = SpoolDaemon::start(&t.path().join("data"), &spool, t.path());
    // DIR lets its users make peers (docs/spool.md).
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let carol = spool.join("carol");
    sh_ok(&format!(
        "umask 022; runuser -u nobody -- mkdir {}",
        q(&carol)
    ));
    assert!(
        wait_until(T, || carol.join("peers").is_dir()),
        "carol was not laid out: {}",
        d.log_text()
    );
    let md = std::fs::metadata(&carol).unwrap();
    assert_eq!(md.uid(), 65534);
    assert_eq!(
        md.mode() & 0o777,
        0o700,
        "carol's folder is {:o}",
        md.mode() & 0o777
    );
    // Another user cannot list it.
    let o = sh(&format!("runuser -u daemon -- ls {}", q(&carol)));
    assert!(!o.status.success(), "another user listed carol's folder");
    // carol can use it.
    sh_ok(&format!("runuser -u nobody -- ls {}/inbox", q(&carol)));
}

/// A plain `mount` says on stdout when it serves: the line comes once the mount
/// is up (a script can wait for it), and start-up logs no line per peer.
#[test]
fn a_mount_prints_a_ready_line_once_it_serves_and_starts_quietly() {
    use std::io::BufRead;
    let (_dir, data, mnt, work) = dirs();
    // Two peers from before, made by the peer command.
    for p in ["alice", "bob"] {
        let o = peerfs(&[
            "peer".as_ref(),
            "create".as_ref(),
            p.as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let log = work.join("daemon.log");
    let mut child = Command::new(BIN)
        .args([
            "mount".as_ref(),
            mnt.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ])
        .env("RUST_LOG", "peerfs=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _g = Guard(&mnt);
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("ready") && line.contains(&mnt.display().to_string()),
        "{line:?}"
    );
    // Up when it says so: no waiting needed.
    assert!(is_mounted(&mnt));
    std::fs::create_dir(mnt.join("carol")).unwrap();
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        4,
        ".peerfs, alice, bob, carol"
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("vacuum"), "a line per peer at start:\n{log}");
    // The stores were made with incremental vacuum from the start.
    for p in ["alice", "carol"] {
        let c = rusqlite::Connection::open(data.join(format!("peers/{p}.sqlite"))).unwrap();
        let v: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 2, "{p}");
    }
}

/// `peerfs run` without --mount uses the only peerfs mount; with none or two it
/// says how to name one. Run in a mount namespace of its own, where the mounts
/// of other tests (and other users) are lazily unmounted first.
#[test]
fn run_finds_the_only_mount() {
    require_fuse();
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| q(&t.path().join(n));
    std::fs::write(t.path().join("job.rhai"), "40 + 2").unwrap();
    for d in ["m1", "m2"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    let script = format!(
        r#"set -u
# Other tests' mounts, copied into this namespace: `fuse.peerfs`, or `fuse` with
# the source `peerfs` (how root's mounts show).
ms=$(cat /proc/self/mounts)
echo "$ms" | while read -r dev mp fs rest; do
  case "$fs:$dev" in fuse.peerfs:*|fuse:peerfs) umount -l "$mp" ;; esac
done
pids=""
trap 'for x in $pids; do kill -TERM $x; done; wait' EXIT
up() {{ i=0; until [ -e "$1/.peerfs/version" ] || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done; }}
{bin} run alice {job} >/dev/null 2>{err0}; echo "none=$?"
{bin} mount {m1} --data {d1} >/dev/null 2>&1 & pids="$pids $!"
up {m1}
mkdir {m1}/alice
{bin} run alice {job}; echo "one=$?"
{bin} mount {m2} --data {d2} >/dev/null 2>&1 & pids="$pids $!"
up {m2}
{bin} run alice {job} >/dev/null 2>{err2}; echo "two=$?"
"#,
        bin = q(Path::new(BIN)),
        job = p("job.rhai"),
        m1 = p("m1"),
        m2 = p("m2"),
        d1 = p("d1"),
        d2 = p("d2"),
        err0 = p("err0"),
        err2 = p("err2"),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(so.contains("none=64"), "{so}\n{se}");
    assert!(so.contains("42\none=0"), "{so}\n{se}");
    assert!(so.contains("two=64"), "{so}\n{se}");
    let err0 = std::fs::read_to_string(t.path().join("err0")).unwrap();
    assert!(
        err0.contains("no peerfs mount") && err0.contains("--mount"),
        "{err0}"
    );
    let err2 = std::fs::read_to_string(t.path().join("err2")).unwrap();
    assert!(
        err2.contains("2 peerfs mounts") && err2.contains("m2"),
        "{err2}"
    );
    // The namespace's mounts went with their daemons.
    assert!(!is_mounted(&t.path().join("m1")));
}

/// Completions come from the clap definitions: bash's complete subcommands and
/// flags when sourced; zsh's and fish's are their shells' formats.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("peerfs.bash");
    let o = peerfs(&["completions".as_ref(), "bash".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::write(&f, &o.stdout).unwrap();
    // What bash offers after `peerfs mo<TAB>` and `peerfs mount /m --al<TAB>`.
    let complete = |words: &str| {
        sh_ok(&format!(
            "bash -c 'source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             _peerfs peerfs \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[@]}}\"'",
            q(&f)
        ))
    };
    assert_eq!(complete("peerfs mo").trim(), "mount");
    assert_eq!(complete("peerfs mount /m --al").trim(), "--allow-other");
    let c = complete("peerfs comp");
    assert_eq!(c.trim(), "completions", "{c}");

    let o = peerfs(&["completions".as_ref(), "zsh".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
    let z = String::from_utf8_lossy(&o.stdout);
    assert!(
        z.starts_with("#compdef peerfs") && z.contains("--spool"),
        "{z}"
    );
    let o = peerfs(&["completions".as_ref(), "fish".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
    let fish = String::from_utf8_lossy(&o.stdout);
    assert!(
        fish.contains("complete -c peerfs") && fish.contains("allow-other"),
        "{fish}"
    );
    // An unknown shell is a usage error.
    let o = peerfs(&["completions".as_ref(), "cmd.exe".as_ref()]);
    assert_eq!(o.status.code(), Some(64));
}

/// `peerfs man` is a roff page that man(1) renders, with the subcommands and
/// the exit statuses.
#[test]
fn the_man_page_renders() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("peerfs.1");
    let o = peerfs(&["man".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(o.stdout.starts_with(b".ie") || o.stdout.starts_with(b".TH"));
    std::fs::write(&f, &o.stdout).unwrap();
    let page = sh_ok(&format!("MANWIDTH=100 man -l {} 2>&1 | col -b", q(&f)));
    for want in [
        "peerfs",
        "SYNOPSIS",
        "mount",
        "serve",
        "completions",
        "EXIT STATUS",
        "75",
    ] {
        assert!(page.contains(want), "the page lacks {want:?}:\n{page}");
    }
    // A reader gone early (`peerfs man | head -1`) is no error, and no panic.
    let (mut child, reader) = spawn_into_pipe(&["man".as_ref()]);
    drop(reader);
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(0), "{st}");
}

/// A refused file operation is explained, in words, in the log of the peer whose
/// folder it was in: the user of the mount may not see the daemon's stderr.
#[test]
fn refusals_are_written_in_words_to_the_peers_log() {
    let (_dir, data, mnt, work) = dirs();
    let d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    d.add_peer("bob");
    std::fs::write(
        d.p("bob/policy.cedar"),
        "permit(principal == Peer::\"alice\", action == Action::\"read\", resource);",
    )
    .unwrap();
    d.run_ok("bob", "w.rhai", "set(\"shared/welcome\", \"hi\"); 1");
    let view = d.p("alice/peers/bob/state/shared/welcome");
    assert_eq!(
        std::fs::read_to_string(&view).unwrap().trim(),
        "\"hi\"".trim_matches('"')
    );

    // Each refused with an errno only...
    let tab = d.p("alice/state/a\tb");
    assert!(std::fs::write(&tab, "1").is_err());
    assert!(std::fs::write(&view, "mine now").is_err());
    assert!(std::fs::write(d.p("alice/notes.txt"), "x").is_err());
    let bad = d.p("alice/policy.cedar");
    // The refusal comes at close (which std::fs::write does not check).
    let mut f = std::fs::File::create(&bad).unwrap();
    std::io::Write::write_all(&mut f, b"permit(principal, action").unwrap();
    expect_errno(close(f), libc::EINVAL, "close of a bad policy");

    // ... and in words in alice's log.
    let mut log = String::new();
    let all_there = wait_until(T, || {
        log = d.log_of("alice");
        log.matches(" refused ").count() >= 3 && log.contains("policy refused")
    });
    assert!(all_there, "{log}");
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(" refused ") && l.contains(what))
            .unwrap_or_else(|| panic!("no refusal of {what:?} in alice's log:\n{log}"))
            .to_string()
    };
    assert!(
        line("alice/state/a\\tb").contains("control character"),
        "{log}"
    );
    let l = line("alice/peers/bob/state/shared/welcome");
    assert!(l.contains("read-only"), "{l}");
    let l = line("notes.txt");
    assert!(l.contains("inbox"), "{l}");
    assert!(log.contains("peerfs policy check"), "{log}");
    // No Rust debug text.
    assert!(
        !log.contains("ViewStateFile") && !log.contains("{ peer"),
        "{log}"
    );
    // bob's log has none of alice's refusals.
    assert!(!d.log_of("bob").contains("refused"), "{}", d.log_of("bob"));
    // A peer that could not be made has no log: .peerfs/refused says why.
    expect_errno(std::fs::create_dir(d.p("a b")), libc::EINVAL, "mkdir 'a b'");
    let refused = std::fs::read_to_string(d.p(".peerfs/refused")).unwrap();
    assert!(
        refused.contains("refused mkdir a b: peer name"),
        "{refused}"
    );
}

/// Editors write a new file beside the one they edit and rename it into place:
/// `sed -i`, vim (swap file), `mv .new policy.cedar`. The peer's folder takes
/// their files and validates at the rename as at a close.
#[test]
fn policy_and_groups_can_be_edited_with_sed_vim_and_mv() {
    let (_dir, data, mnt, work) = dirs();
    let d = Daemon::start(&data, &mnt, &work, &[]);
    d.add_peer("alice");
    let a = d.p("alice");
    let policy = a.join("policy.cedar");
    let allow = |who: &str| {
        format!("permit(principal == Peer::\"{who}\", action == Action::\"run\", resource);\n")
    };
    std::fs::write(&policy, allow("bob")).unwrap();

    // sed -i: a temporary file, renamed onto policy.cedar.
    sh_ok(&format!(
        "cd {} && sed -i 's/bob/carol/' policy.cedar",
        q(&a)
    ));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), allow("carol"));
    // A bad edit is refused at the rename; the policy in force stays.
    let o = sh(&format!(
        "cd {} && sed -i 's/permit/permit((/' policy.cedar",
        q(&a)
    ));
    assert!(
        !o.status.success(),
        "a broken policy was renamed into place"
    );
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), allow("carol"));
    assert!(
        d.log_of("alice").contains("policy refused"),
        "{}",
        d.log_of("alice")
    );

    // vim, with its swap file beside the file.
    sh_ok(&format!(
        "cd {} && timeout 20 vim -Es -N -u NONE -i NONE +'set swapfile' +'%s/carol/dave/' +wq policy.cedar",
        q(&a)
    ));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), allow("dave"));

    // Written under a dot name, then mv'd into place; groups the same way.
    sh_ok(&format!(
        "cd {0} && printf '%s' {1} > .policy.new && mv .policy.new policy.cedar && \
         echo 'friends: bob carol' > .groups.new && mv .groups.new groups",
        q(&a),
        q(Path::new(&allow("eve")))
    ));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), allow("eve"));
    assert_eq!(
        std::fs::read_to_string(a.join("groups")).unwrap(),
        "friends: bob carol\n"
    );
    // The editors' files are gone, and only they were ever allowed.
    assert_eq!(
        d.names("alice"),
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
    expect_errno(
        std::fs::write(a.join("notes.txt"), "x"),
        libc::EACCES,
        "a file of no editor",
    );
    // policy.cedar itself is not renamed away.
    expect_errno(
        std::fs::rename(&policy, a.join("policy.cedar~")),
        libc::EACCES,
        "mv policy.cedar away",
    );
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), allow("eve"));
}

/// `rm` of a script submitted while the peer runs another (held in the intake
/// journal, or already in the queue) withdraws it: it never runs, and its result
/// says so.
#[test]
fn rm_of_a_script_being_submitted_withdraws_it() {
    let (_dir, data, mnt, work) = dirs();
    let limits = ["--max-operations", "500000000", "--max-wall-ms", "30000"];
    let d = Daemon::start(&data, &mnt, &work, &limits);
    d.add_peer("alice");
    let (busy, _) = busy_script(&d, "alice", 1.5);
    std::fs::write(d.p("alice/inbox/w1.rhai"), &busy).unwrap();
    // w2's close returns once it is durable, while w1 still runs.
    let w2 = d.p("alice/inbox/w2.rhai");
    std::fs::write(&w2, b"set(\"w2\", 1); 2").unwrap();
    assert!(d.names("alice/inbox").contains(&"w2.rhai".to_string()));
    std::fs::remove_file(&w2).expect("rm inbox/w2.rhai");
    let r = d.run("alice", "after.rhai", "get(\"w2\")");
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r["value"].is_null(), "w2 ran after its rm: {r}");
    let w2r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.p("alice/outbox/w2.json")).unwrap()).unwrap();
    assert_ne!(w2r["status"], "ok", "{w2r}");
    assert!(
        w2r["error"].as_str().unwrap_or("").contains("withdrawn"),
        "{w2r}"
    );
}
