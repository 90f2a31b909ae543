//! The `peerfs` command: mount, serve, run, peer, policy, lattice, config, top,
//! completions, man, demo; and their exit statuses.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use peerfs::config::{DaemonArgs, Effective, FlagValue};
use peerfs::exec::{Config, Core};
use peerfs::lock::FolderLock;

/// The exit status of every `peerfs` command: one table, in the help
/// ([`EXIT_STATUS`]) and in docs/operating.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    /// run: the script ended with an error; policy check: the file is refused.
    Failed = 1,
    /// run, policy explain: denied.
    Denied = 2,
    /// run: a limit ended the script.
    Limit = 3,
    /// run: no result (the daemon stopped before the script ended).
    NoResult = 4,
    /// A bad argument, flag or config value, or a start refused (sysexits' EX_USAGE).
    Usage = 64,
    /// A file, mount, spool or store could not be read or written (EX_IOERR).
    Io = 74,
    /// The data or spool folder is held by another peerfs process (EX_TEMPFAIL).
    Busy = 75,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// [`Exit`] for people, at the end of `peerfs --help`.
const EXIT_STATUS: &str = "\
Exit status (every command):
  0   done (run: the script ended ok; policy explain: allowed; mount, serve,
      demo: stopped by an unmount or a signal)
  1   run: the script ended with an error; policy check: the file is refused
  2   run, policy explain: denied
  3   run: a limit ended the script
  4   run: no result (the daemon stopped before the script ended)
  64  usage: a bad argument, flag or config value, or a start refused (a mount
      path that does not exist, a metrics address in use, ...)
  74  a file, mount, spool or store could not be read or written
  75  the data or spool folder is held by another peerfs process (its pid is
      named): try again once it has stopped";

#[derive(Parser)]
#[command(
    name = "peerfs",
    version,
    about = "Every peer a directory: data, logic and policy in one SQLite file, scripts in by cp, results out by cat",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount DATA's peers at MOUNT and serve until unmounted (fusermount3 -u), SIGINT, SIGTERM or SIGHUP.
    Mount {
        mount: PathBuf,
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Let other users in (their own peers only: peer folders are 0700; key `mount.allow_other`).
        #[arg(long)]
        allow_other: bool,
        /// Clean up a stale mount left by a killed daemon first (key `mount.force`).
        #[arg(long)]
        force: bool,
    },
    /// Serve DATA's peers as plain folders under DIR (spool mode, no FUSE needed)
    /// until SIGINT, SIGTERM or SIGHUP.
    Serve {
        #[arg(long)]
        spool: PathBuf,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// A live view of a mount: peers by activity, runs/s, durations, queues, denials (q quits).
    Top {
        /// The mount to watch (default: $PEERFS_MOUNT).
        #[arg(env = "PEERFS_MOUNT")]
        mount: PathBuf,
    },
    /// Show the effective configuration (flags over the config file over the defaults).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Drop a script into PEER's inbox through the mount, wait, print its value as JSON.
    /// Exit status: 0 ok, 1 error, 2 denied, 3 limit, 4 no result, 64 usage, 74 I/O.
    Run {
        peer: String,
        /// The script file, or - for standard input.
        file: String,
        /// The mount (default: $PEERFS_MOUNT, else the only peerfs mount there is).
        #[arg(long, env = "PEERFS_MOUNT")]
        mount: Option<PathBuf>,
        /// A spool folder served by `peerfs serve` instead of a mount (default: $PEERFS_SPOOL).
        #[arg(long, env = "PEERFS_SPOOL", conflicts_with = "mount")]
        spool: Option<PathBuf>,
        /// Run it at PEER as this caller (drops it in CALLER/peers/PEER/inbox).
        #[arg(long = "as")]
        caller: Option<String>,
        /// Print the whole result object instead of its value.
        #[arg(long)]
        full: bool,
    },
    /// Create, list or remove peers in a data directory (create and remove are
    /// refused while a daemon serves it: use mkdir MOUNT/NAME there).
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Check a policy file, or explain what a peer's policy decides.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Set up a lattice of workers on NATS JetStream (see docs/lattice.md).
    Lattice {
        #[command(subcommand)]
        cmd: LatticeCmd,
    },
    /// Mount a ready demo (peers alice and bob) and print a short tour.
    Demo {
        /// Where the demo's data and mount go (default: /tmp/peerfs-demo).
        dir: Option<PathBuf>,
    },
    /// Print shell completions: `source <(peerfs completions bash)`, or save them
    /// where the shell looks (`peerfs completions fish > ~/.config/fish/completions/peerfs.fish`).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) on stdout: `peerfs man | man -l -`.
    Man,
}

#[derive(Subcommand)]
enum LatticeCmd {
    /// Write DIR/nats-server.conf (JetStream on, one user per worker, each allowed
    /// to publish only as its own peers, plus the operator's `admin`),
    /// DIR/lattice.toml (what `provision` makes), DIR/admin.creds and
    /// DIR/WORKER.creds for every worker.
    Init {
        dir: PathBuf,
        /// A worker and the peers it serves (repeatable): `--worker w1=alice,carol`.
        #[arg(long = "worker", value_name = "NAME=PEER,...", required = true)]
        workers: Vec<String>,
        /// The lattice's name.
        #[arg(long, default_value = "default")]
        lattice: String,
        /// Where the server listens (loopback by default).
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
        /// The most bytes the lattice's waiting messages may take in the server.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
        max_bytes: u64,
        /// The most messages waiting from one sender to one target.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        max_pending: u64,
    },
    /// Make (or complete, after `init` changed the plan) the lattice's stream,
    /// directory and one consumer per peer, with the operator's credentials
    /// (DIR/admin.creds); repair directory entries that name no worker.
    Provision {
        /// The folder `lattice init` wrote.
        dir: PathBuf,
        /// The NATS server (default: the one `init` was told of).
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
        /// How long a message handed to a worker waits for its acknowledgement
        /// before it is handed out again.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        ack_wait_ms: u64,
    },
    /// Hand PEER over to worker TO in the directory (moving a peer, see
    /// docs/lattice.md): run with the old worker's credentials after it stopped
    /// serving PEER; refused unless the directory names that worker.
    Release {
        peer: String,
        /// The worker that serves PEER from now on.
        #[arg(long, value_name = "WORKER")]
        to: String,
        /// The old worker's credentials file from `peerfs lattice init`.
        #[arg(long, value_name = "FILE")]
        nats_creds: PathBuf,
        /// The NATS server: `nats://host:port` (default: the credentials file's).
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
        /// The lattice's name (default: the credentials file's).
        #[arg(long)]
        lattice: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration as TOML, each value with where it came from.
    Show {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy.cedar (and a groups file, and a schema.toml of declared
    /// tables) against the peerfs schema.
    Check {
        file: PathBuf,
        #[arg(long)]
        groups: Option<PathBuf>,
        /// A schema.toml: checked, and the policy is validated against its tables.
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// Say whether PEER's policy lets CALLER do ACTION (run, read, write, send, import)
    /// on OBJECT (a script name, key, peer or module), and which policies decided.
    Explain {
        #[arg(long)]
        data: PathBuf,
        peer: String,
        caller: String,
        action: String,
        object: Option<String>,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    Create {
        name: String,
        #[arg(long)]
        data: PathBuf,
        /// Owner uid (default: yours).
        #[arg(long)]
        uid: Option<u32>,
    },
    List {
        #[arg(long)]
        data: PathBuf,
    },
    /// Moves the peer's file aside to DATA/removed/ (nothing is deleted).
    Remove {
        name: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Rebuilds or returns a peer of a stopped daemon: to a point of its own
    /// history (`--to`: one undoable entry, the log says what it undid), or
    /// from its replica in object storage (`--from`).
    Restore {
        name: String,
        #[arg(long)]
        data: PathBuf,
        /// A run id of the peer's history, or an RFC 3339 time.
        #[arg(long, value_name = "TIME|RUN", conflicts_with = "from")]
        to: Option<String>,
        /// The replica: s3://BUCKET/PREFIX or file:///PATH (the endpoint, region
        /// and credentials file come from the config file's [replica] or -o).
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// With --from: as of this time (RFC 3339, UTC: 2026-01-02T03:04:05Z),
        /// within the replica's retention; default: the latest.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// With --from: replace a peer that exists in DATA (its file is kept
        /// under DATA/removed/).
        #[arg(long)]
        force: bool,
        /// A config file whose [replica] settings apply (endpoint, credentials).
        #[arg(long, env = "PEERFS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// A config key: `-o replica.endpoint=http://127.0.0.1:9000` (repeatable).
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
}

fn main() -> ExitCode {
    // The parser's own errors exit 2 by default, which is "denied" here.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout and are no error.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    match cli.cmd {
        Cmd::Mount {
            mount,
            daemon,
            allow_other,
            force,
        } => mount_cmd(&mount, &daemon, allow_other, force),
        Cmd::Serve { spool, daemon } => serve_cmd(&spool, &daemon),
        Cmd::Config {
            cmd: ConfigCmd::Show { daemon },
        } => match load_config(&daemon, Vec::new()) {
            Ok(e) => {
                print!("{}", e.show());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "peerfs", &mut out);
            print_out(&out)
        }
        Cmd::Man => match man_page() {
            Ok(page) => print_out(&page),
            Err(e) => {
                eprintln!("peerfs man: {e}");
                Exit::Io.into()
            }
        },
        Cmd::Top { mount } => match peerfs::top::run(&mount) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("peerfs top: {e}");
                Exit::Usage.into()
            }
        },
        cmd => {
            peerfs::config::init_logging(&Default::default());
            client_cmd(cmd)
        }
    }
}

/// The commands that act on a mount, a spool or a data folder without serving
/// it (logging at the defaults).
fn client_cmd(cmd: Cmd) -> ExitCode {
    let r = match cmd {
        Cmd::Run {
            peer,
            file,
            mount,
            spool,
            caller,
            full,
        } => {
            let place = match (spool, mount) {
                (Some(s), _) => DropAt::Spool(s),
                (None, Some(m)) => DropAt::Mount(m),
                (None, None) => match only_mount() {
                    Ok(m) => DropAt::Mount(m),
                    Err(e) => {
                        eprintln!("peerfs run: {e}");
                        return Exit::Usage.into();
                    }
                },
            };
            return run(&peer, &file, &place, caller.as_deref(), full);
        }
        Cmd::Peer { cmd } => peer_cmd(cmd),
        Cmd::Policy { cmd } => return policy_cmd(cmd),
        Cmd::Lattice { cmd } => lattice_cmd(cmd),
        Cmd::Demo { dir } => demo(dir.unwrap_or_else(|| PathBuf::from("/tmp/peerfs-demo"))),
        Cmd::Mount { .. }
        | Cmd::Serve { .. }
        | Cmd::Config { .. }
        | Cmd::Top { .. }
        | Cmd::Completions { .. }
        | Cmd::Man => {
            unreachable!("main handles the daemon's and the local commands")
        }
    };
    exit_code(r)
}

/// `peerfs mount`: the config with `--allow-other` and `--force` over it, then
/// [`serve`] until unmounted.
fn mount_cmd(mount: &Path, daemon: &DaemonArgs, allow_other: bool, force: bool) -> ExitCode {
    let mut extra = Vec::new();
    for (on, key, flag) in [
        (allow_other, "mount.allow_other", "--allow-other"),
        (force, "mount.force", "--force"),
    ] {
        if on {
            extra.push(FlagValue {
                key: key.into(),
                value: toml::Value::Boolean(true),
                flag: flag.into(),
            });
        }
    }
    let eff = match load_config(daemon, extra) {
        Ok(e) => e,
        Err(code) => return code,
    };
    peerfs::config::init_logging(&eff.settings.log);
    match eff.core_config() {
        Ok(cfg) => {
            let m = &eff.settings.mount;
            exit_code(serve(
                cfg,
                mount,
                m.allow_other,
                m.force,
                None,
                Start::of(&eff),
            ))
        }
        Err(e) => {
            eprintln!("peerfs mount: {e}");
            Exit::Usage.into()
        }
    }
}

/// `peerfs serve`: the config, then [`serve_spool`] until stopped.
fn serve_cmd(spool: &Path, daemon: &DaemonArgs) -> ExitCode {
    let eff = match load_config(daemon, Vec::new()) {
        Ok(e) => e,
        Err(code) => return code,
    };
    peerfs::config::init_logging(&eff.settings.log);
    match eff.core_config() {
        Ok(cfg) => exit_code(serve_spool(cfg, spool, Start::of(&eff))),
        Err(e) => {
            eprintln!("peerfs serve: {e}");
            Exit::Usage.into()
        }
    }
}

/// A command's outcome as its exit status: 0, 75 when another daemon holds the
/// data folder, else 64 (the error printed).
fn exit_code(r: peerfs::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerfs: {e}");
            if e.errno == peerfs::lock::HELD {
                Exit::Busy.into()
            } else {
                Exit::Usage.into()
            }
        }
    }
}

/// The config file (`--config`/`PEERFS_CONFIG`) with the flags over it; a refusal
/// is printed (key, reason, line) and becomes exit status 64.
fn load_config(daemon: &DaemonArgs, extra: Vec<FlagValue>) -> Result<Effective, ExitCode> {
    let fail = |e: peerfs::Error| {
        eprintln!("peerfs: {e}");
        ExitCode::from(Exit::Usage)
    };
    let mut flags = daemon.flags().map_err(fail)?;
    flags.extend(extra);
    peerfs::config::load(daemon.config.as_deref(), &flags).map_err(fail)
}

/// Whether `path` is a mount whose daemon is gone ("Transport endpoint is not
/// connected"). statvfs(2) asks the file system itself; stat could be answered
/// from the kernel's cache of the mount's root for a moment after the daemon died.
fn is_stale(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

fn unmount(path: &Path) {
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status();
    if is_stale(path) || is_mounted(path) {
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*canon.to_string_lossy()))
}

/// Blocks SIGINT, SIGTERM and SIGHUP (a closed terminal) in every thread and
/// returns a receiver of them: each stops the daemon cleanly. SIGPIPE needs
/// nothing: Rust ignores it, so a write to a closed pipe is an error, not a death.
fn signals() -> std::sync::mpsc::Receiver<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let set2 = set;
        std::thread::spawn(move || loop {
            let mut sig = 0;
            if libc::sigwait(&set2, &mut sig) == 0 && tx.send(sig).is_err() {
                return;
            }
        });
    }
    rx
}

/// What a daemon starts with besides the executor's settings.
struct Start {
    metrics_listen: Option<std::net::SocketAddr>,
    lattice: Option<peerfs::lattice::Options>,
    /// The data folder's lock, when the caller took it already (the demo, which
    /// prepares its peers first).
    held: Option<FolderLock>,
}

impl Start {
    fn of(eff: &Effective) -> Start {
        Start {
            metrics_listen: eff.settings.metrics.listen,
            lattice: eff.settings.lattice.options(),
            held: None,
        }
    }

    /// What can be checked before anything is made, so that a refused start
    /// creates nothing: the data folder is a folder (or missing), the metrics
    /// address can be bound.
    fn check(&self, data: &Path) -> peerfs::Result<()> {
        check_data_path(data)?;
        if let Some(addr) = self.metrics_listen {
            // Bound again by the metrics listener at the end of the start (std
            // sets SO_REUSEADDR, so the port is free again at once).
            if let Err(e) = std::net::TcpListener::bind(addr) {
                return Err(peerfs::Error::new(
                    libc::EADDRINUSE,
                    format!("metrics.listen {addr}: {e}: choose a free address or leave metrics.listen unset"),
                ));
            }
        }
        Ok(())
    }
}

/// `--data` names a folder, or nothing yet (then it is made).
fn check_data_path(data: &Path) -> peerfs::Result<()> {
    match std::fs::metadata(data) {
        Ok(md) if !md.is_dir() => Err(peerfs::Error::new(
            libc::ENOTDIR,
            format!(
                "--data {} is a file: name the data folder (it is made if missing)",
                data.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// A folder that a start may make (the data or spool folder): removed again if
/// the start fails, so that a refused start leaves nothing behind; kept once the
/// daemon serves. A folder that existed before is never touched.
struct Fresh(Option<PathBuf>);

impl Fresh {
    fn new(dir: &Path) -> Fresh {
        // The topmost folder the start would make: the missing parents are made too.
        let top = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last();
        Fresh(top.map(Path::to_path_buf))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

fn serve(
    cfg: Config,
    mount: &Path,
    allow_other: bool,
    force: bool,
    tour: Option<String>,
    start: Start,
) -> peerfs::Result<()> {
    let sig = signals();
    start.check(&cfg.data_dir)?;
    check_mount_path(mount, force)?;
    let fresh = Fresh::new(&cfg.data_dir);
    let (core, _lock) = start_core(cfg, start)?;
    let vfs = peerfs::vfs::Vfs::new(core.clone());
    let opts = peerfs::fuse::MountOptions {
        allow_other,
        ..Default::default()
    };
    let session = match peerfs::fuse::spawn(vfs, mount, &opts) {
        Ok(s) => s,
        Err(e) => {
            core.shutdown();
            return Err(e);
        }
    };
    fresh.keep();
    tracing::info!(mount = %mount.display(), data = %core.config().data_dir.display(), "peerfs mounted");
    say(&tour.unwrap_or_else(|| {
        format!(
            "peerfs: ready: {} serves the peers of {}; stop with Ctrl-C or fusermount3 -u {}\n",
            mount.display(),
            core.config().data_dir.display(),
            mount.display()
        )
    }));
    let r = wait_for_unmount(session, mount, &core, sig);
    tracing::info!("unmounted; finishing the runs in flight and closing the stores");
    core.shutdown();
    r
}

/// Refuses a mount path that is no folder, is mounted already or is a stale
/// mount (cleaned up with `force`); warns of one that is not empty.
fn check_mount_path(mount: &Path, force: bool) -> peerfs::Result<()> {
    if is_stale(mount) {
        if !force {
            return Err(peerfs::Error::new(
                libc::EBUSY,
                format!("{} is a stale peerfs mount (its daemon was killed): run `fusermount3 -u {}` or pass --force",
                mount.display(),
                mount.display()),
            ));
        }
        tracing::warn!(mount = %mount.display(), "cleaning up a stale mount (--force)");
        unmount(mount);
    }
    // Never made here: a typo would mount over a new folder nobody looks at.
    if !mount.is_dir() {
        return Err(peerfs::Error::new(
            libc::ENOENT,
            format!(
                "mount path {} is not a folder: make it first (mkdir -p {})",
                mount.display(),
                mount.display()
            ),
        ));
    }
    if is_mounted(mount) {
        return Err(peerfs::Error::new(
            libc::EBUSY,
            format!("{} is already mounted: unmount it first", mount.display()),
        ));
    }
    if let Some(n) = std::fs::read_dir(mount)
        .ok()
        .map(|d| d.count())
        .filter(|n| *n > 0)
    {
        tracing::warn!(
            mount = %mount.display(),
            entries = n,
            "the mount folder is not empty: what is in it stays hidden until the unmount"
        );
    }
    Ok(())
}

/// Serves until the mount ends (an unmount, an aborted connection), or until
/// 5 s after a signal that unmounted it lazily while files were still open.
fn wait_for_unmount(
    session: peerfs::fuse::Session,
    mount: &Path,
    core: &Core,
    sig: std::sync::mpsc::Receiver<i32>,
) -> peerfs::Result<()> {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let signalled = done_tx.clone();
    let joiner = std::thread::spawn(move || {
        let r = session.join();
        let _ = done_tx.send(());
        r
    });
    let m = mount.to_path_buf();
    let c = core.clone();
    std::thread::spawn(move || {
        if let Ok(s) = sig.recv() {
            tracing::info!(signal = s, "stopping: unmounting");
            unmount(&m);
            // Readers waiting for results hold the mount (also a lazily unmounted
            // one): answer them, and stop anyway if the mount still does not end.
            c.end_waits();
            std::thread::sleep(Duration::from_secs(5));
            tracing::warn!("the mount did not end within 5 s of the signal (files still open on a lazily unmounted mount?): stopping anyway");
            let _ = signalled.send(());
        }
    });
    let _ = done_rx.recv();
    if joiner.is_finished() {
        joiner.join().unwrap_or(Ok(()))
    } else {
        Ok(())
    }
}

/// A daemon's own words on stdout, once it serves (the demo's tour, a ready
/// line): not print!, which panics when stdout is closed (`peerfs demo | head`).
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Starts the executor on a private data folder, with the metrics listener if asked.
/// The data folder's lock (`held`, or taken here) is returned with the core: keep
/// it until after [`Core::shutdown`], so that no other process opens the stores
/// while they close.
fn start_core(cfg: Config, start: Start) -> peerfs::Result<(Core, FolderLock)> {
    let lock = match start.held {
        Some(l) => l,
        None => lock_data(&cfg.data_dir, "a daemon")?,
    };
    if let (Some(o), Some(r)) = (&start.lattice, &cfg.replica) {
        // Peers moved here by name: restored before the stores open.
        peerfs::lattice::arrive::restore_arrived(o, r, &cfg.data_dir, cfg.only.as_deref())?;
    }
    let core = Core::start(cfg)?;
    if let Some(o) = start.lattice {
        if let Err(e) = peerfs::lattice::join(&core, o) {
            core.shutdown();
            return Err(e);
        }
    }
    if let Some(addr) = start.metrics_listen {
        if let Err(e) = peerfs::metrics::serve(core.clone(), addr) {
            core.shutdown();
            return Err(peerfs::Error::new(
                libc::EADDRINUSE,
                format!("metrics.listen {addr}: {e}: choose a free address or leave metrics.listen unset"),
            ));
        }
    }
    Ok((core, lock))
}

/// Serves the spool folder until SIGINT, SIGTERM or SIGHUP.
fn serve_spool(cfg: Config, spool: &Path, start: Start) -> peerfs::Result<()> {
    let sig = signals();
    start.check(&cfg.data_dir)?;
    let fresh = (Fresh::new(spool), Fresh::new(&cfg.data_dir));
    let spool_lock = FolderLock::spool(spool, "a daemon")?;
    let (core, _lock) = start_core(cfg, start)?;
    let mut sp = match peerfs::spool::Spool::start(core.clone(), spool) {
        Ok(s) => s,
        Err(e) => {
            core.shutdown();
            return Err(e);
        }
    };
    fresh.0.keep();
    fresh.1.keep();
    tracing::info!(spool = %spool.display(), data = %core.config().data_dir.display(), "peerfs serving the spool");
    say(&format!(
        "peerfs: ready: {} serves the peers of {} as plain folders; stop with Ctrl-C\n",
        spool.display(),
        core.config().data_dir.display()
    ));
    if let Ok(s) = sig.recv() {
        tracing::info!(signal = s, "stopping");
    }
    sp.stop();
    core.shutdown();
    sp.finish();
    drop(spool_lock);
    Ok(())
}

/// The manual page: clap_mangen's sections, with the exit statuses under their
/// usual heading (clap_mangen would put them under EXTRA).
fn man_page() -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    // Plain text in no-fill mode: no line of the table starts with a dot or
    // holds a backslash, roff's only special characters here.
    let table = EXIT_STATUS.trim_start_matches("Exit status (every command):\n");
    out.extend_from_slice(format!(".SH \"EXIT STATUS\"\n.nf\n{table}\n.fi\n").as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Generated text on stdout; a closed stdout (`peerfs man | head`) is no error.
fn print_out(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("peerfs: writing to standard output: {e}");
            Exit::Io.into()
        }
        _ => Exit::Ok.into(),
    }
}

/// The one peerfs mount of this mount namespace, for `peerfs run` without
/// `--mount`; with none or several, a message saying how to name one.
fn only_mount() -> Result<PathBuf, String> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = peerfs::fuse::mounts_in(&table);
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            "no peerfs mount found: name one with --mount MOUNT (or PEERFS_MOUNT), \
             or a spool folder with --spool DIR"
                .into(),
        ),
        many => Err(format!(
            "{} peerfs mounts ({}): name one with --mount MOUNT (or PEERFS_MOUNT)",
            many.len(),
            many.iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Where `peerfs run` drops its script.
enum DropAt {
    Mount(PathBuf),
    Spool(PathBuf),
}

/// `peerfs run`'s script: its bytes and the name it is dropped under (`-`:
/// standard input, under a fresh name).
fn read_script(file: &str) -> Result<(Vec<u8>, String), String> {
    if file == "-" {
        let mut s = Vec::new();
        std::io::stdin()
            .read_to_end(&mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        let name = format!("stdin-{}.rhai", peerfs::util::new_id().to_lowercase());
        return Ok((s, name));
    }
    let p = Path::new(file);
    let s = std::fs::read(p).map_err(|e| format!("reading {file}: {e}"))?;
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script.rhai".into());
    Ok((s, name))
}

fn run(peer: &str, file: &str, place: &DropAt, caller: Option<&str>, full: bool) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("peerfs run: {msg}");
        ExitCode::from(Exit::Io)
    };
    let (src, name) = match read_script(file) {
        Ok(x) => x,
        Err(msg) => return fail(msg),
    };
    let root = match place {
        DropAt::Mount(m) | DropAt::Spool(m) => m,
    };
    let base = match caller {
        Some(c) => root.join(c).join("peers").join(peer),
        None => root.join(peer),
    };
    // A peer that is not there is a wrong argument (64), not an I/O problem.
    if !base.is_dir() {
        eprintln!(
            "peerfs run: no peer folder {}: check PEER (and --as) and the mount",
            base.display()
        );
        return Exit::Usage.into();
    }
    let stem = peerfs::names::script_stem(&name).to_string();
    let out = base.join("outbox").join(format!("{stem}.json"));
    let bytes = if let DropAt::Spool(_) = place {
        let log = root.join(caller.unwrap_or(peer)).join("log");
        match peerfs::spool::drop_and_wait(&base, &log, &name, &src) {
            Ok(b) => b,
            Err(e) => return fail(e.to_string()),
        }
    } else {
        if let Err(e) = peerfs::util::write_and_close(&base.join("inbox").join(&name), &src) {
            return fail(format!(
                "submitting to {}: {e}",
                base.join("inbox").display()
            ));
        }
        match std::fs::read(&out) {
            Ok(b) => b,
            Err(e) => return fail(format!("reading {}: {e}", out.display())),
        }
    };
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return fail(format!("{} is not JSON: {e}", out.display())),
    };
    let shown = if full { &v } else { &v["value"] };
    println!("{shown}");
    let status = v["status"].as_str().unwrap_or("error");
    if status != "ok" {
        if let Some(e) = v["error"].as_str() {
            eprintln!("peerfs run: {status}: {e}");
        }
    }
    ExitCode::from(match status {
        "ok" => Exit::Ok,
        "error" => Exit::Failed,
        "denied" => Exit::Denied,
        "limit" => Exit::Limit,
        _ => Exit::NoResult,
    })
}

fn policy_cmd(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check {
            file,
            groups,
            schema,
        } => policy_check(&file, groups.as_deref(), schema.as_deref()),
        PolicyCmd::Explain {
            data,
            peer,
            caller,
            action,
            object,
        } => policy_explain(&data, &peer, &caller, &action, object.unwrap_or_default()),
    }
}

/// `peerfs policy ...` refused: the reason on stderr, the exit status `code`.
fn policy_fail(code: Exit, m: String) -> ExitCode {
    eprintln!("peerfs policy: {m}");
    ExitCode::from(code)
}

/// `peerfs policy check FILE [--groups FILE] [--schema FILE]`: each file
/// validated (the policy against the declared tables of `--schema`, if given).
fn policy_check(file: &Path, groups: Option<&Path>, schema: Option<&Path>) -> ExitCode {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    // The declared tables the policy is validated against (none: no tables).
    let mut tables = peerfs::tables::Schema::default();
    if let Some(s) = schema {
        let text = match read(s) {
            Ok(t) => t,
            Err(m) => return policy_fail(Exit::Io, m),
        };
        match peerfs::tables::parse::parse(&text) {
            Ok(sc) => {
                println!("{}: ok ({} tables)", s.display(), sc.tables.len());
                tables = sc;
            }
            Err(e) => return policy_fail(Exit::Failed, format!("{}: {}", s.display(), e.message)),
        }
    }
    let text = match read(file) {
        Ok(t) => t,
        Err(m) => return policy_fail(Exit::Io, m),
    };
    match peerfs::policy::Policy::parse_for(&text, &tables) {
        Ok(p) => {
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
            println!("{}: ok ({} policies)", file.display(), p.len());
        }
        Err(e) => return policy_fail(Exit::Failed, format!("{}: {e}", file.display())),
    }
    if let Some(g) = groups {
        let text = match read(g) {
            Ok(t) => t,
            Err(m) => return policy_fail(Exit::Io, m),
        };
        if let Err(e) = peerfs::policy::Groups::parse(&text) {
            return policy_fail(Exit::Failed, format!("{}: {e}", g.display()));
        }
        println!("{}: ok", g.display());
    }
    ExitCode::SUCCESS
}

/// `peerfs policy explain --data DATA PEER CALLER ACTION [OBJECT]`. Explaining
/// is not running: its errors are usage (64) or I/O (74), never a script's
/// error (1).
fn policy_explain(data: &Path, peer: &str, caller: &str, action: &str, obj: String) -> ExitCode {
    let Some(action) = peerfs::policy::Action::parse(action) else {
        return policy_fail(
            Exit::Usage,
            format!("unknown action {action:?}: use run, read, write, send or import"),
        );
    };
    if !data.join("peers").is_dir() {
        let m = format!(
            "{} is not a peerfs data folder (no peers/ in it): check --data",
            data.display()
        );
        return policy_fail(Exit::Usage, m);
    }
    let reg = match peerfs::peer::Registry::new(data, None) {
        Ok(r) => r,
        Err(e) => return policy_fail(Exit::Io, e.to_string()),
    };
    if !reg.exists(peer) {
        let m = format!("no peer named {peer:?} in {}", data.display());
        return policy_fail(Exit::Usage, m);
    }
    let mut st = match peerfs::store::SqliteStore::open_reader(&reg.path_of(peer)) {
        Ok(s) => s,
        Err(e) => return policy_fail(Exit::Io, e.to_string()),
    };
    let d = match peerfs::policy::verdict(&mut st, caller, peer, action, &obj) {
        Ok(d) => d,
        Err(e) => return policy_fail(Exit::Io, e.to_string()),
    };
    println!("{}", d.explain());
    ExitCode::from(if d.allowed() { Exit::Ok } else { Exit::Denied })
}

/// Makes the data folder if missing and takes its lock (the daemon that serves
/// it holds it: changing its peers behind the daemon's back makes ghosts).
fn lock_data(data: &Path, who: &str) -> peerfs::Result<FolderLock> {
    check_data_path(data)?;
    peerfs::peer::private_dir(data)?;
    FolderLock::data(data, who)
}

fn peer_cmd(cmd: PeerCmd) -> peerfs::Result<()> {
    use peerfs::peer::Registry;
    match cmd {
        PeerCmd::Create { name, data, uid } => {
            let _lock = lock_data(&data, "peer create")?;
            let r = Registry::new(&data, None)?;
            let uid = uid.unwrap_or_else(|| unsafe { libc::getuid() });
            r.create(&name, uid, unsafe { libc::getgid() })?;
            println!("created peer {name} ({})", r.path_of(&name).display());
        }
        PeerCmd::List { data } => {
            for (n, i) in Registry::new(&data, None)?.list() {
                println!("{n}\tuid={}", i.uid);
            }
        }
        PeerCmd::Remove { name, data } => {
            let _lock = lock_data(&data, "peer remove")?;
            let r = Registry::new(&data, None)?;
            if r.exists(&name) {
                let n = peerfs::exec::settle_journal(&data, &name, &r.path_of(&name))?;
                if n > 0 {
                    println!("{n} submitted scripts of {name} moved into its queue");
                }
            }
            let p = r.remove(&name)?;
            println!("moved peer {name} to {}", p.display());
        }
        PeerCmd::Restore {
            name,
            data,
            from,
            to,
            at,
            force,
            config,
            options,
        } => match (from, to) {
            (Some(from), None) => {
                restore_from_replica(name, data, from, at, force, config, options)?
            }
            (None, Some(to)) if at.is_none() && !force => restore_to(&name, &to, &data)?,
            (None, Some(_)) => {
                return Err(peerfs::Error::new(
                    libc::EINVAL,
                    format!("peer restore {name}: --at and --force go with --from (a replica); --to TIME|RUN is a point of the peer's own history"),
                ))
            }
            _ => {
                return Err(peerfs::Error::new(
                    libc::EINVAL,
                    format!("peer restore {name}: say from where: --to TIME|RUN (the peer's own history) or --from URL (its replica), one of the two"),
                ))
            }
        },
    }
    Ok(())
}

/// `peerfs peer restore NAME --from URL`: the peer rebuilt from its replica.
fn restore_from_replica(
    name: String,
    data: PathBuf,
    from: String,
    at: Option<String>,
    force: bool,
    config: Option<PathBuf>,
    options: Vec<String>,
) -> peerfs::Result<()> {
    let args = peerfs::config::DaemonArgs {
        options,
        ..Default::default()
    };
    let mut flags = args.flags()?;
    flags.push(peerfs::config::FlagValue {
        key: "replica.url".into(),
        value: toml::Value::String(from),
        flag: "--from".into(),
    });
    let eff = peerfs::config::load(config.as_deref(), &flags)?;
    let opts = eff
        .settings
        .replica
        .options()?
        .expect("--from sets the url");
    let at = at.as_deref().map(peerfs::util::parse_rfc3339).transpose()?;
    let _lock = lock_data(&data, "peer restore")?;
    let r = peerfs::replica::restore(&peerfs::replica::RestoreArgs {
        name: name.clone(),
        opts,
        at,
        data,
        force,
    })?;
    if let Some(old) = &r.replaced {
        println!("kept the earlier {name} at {}", old.display());
    }
    println!(
        "restored peer {name} ({}) from generation {} and {} log objects; integrity ok",
        r.path.display(),
        r.generation,
        r.segments
    );
    Ok(())
}

/// `peer restore NAME --to TIME|RUN`: the daemon must be stopped (the data
/// folder's lock says so).
fn restore_to(name: &str, to: &str, data: &Path) -> peerfs::Result<()> {
    let _lock = lock_data(data, "peer restore")?;
    let r = peerfs::peer::Registry::new(data, None)?;
    if !r.exists(name) {
        return Err(peerfs::Error::new(
            libc::ENOENT,
            format!("no peer named {name:?} in {}", data.display()),
        ));
    }
    let point = peerfs::store::history::Point::parse(to)?;
    let (undone, id) = peerfs::peer::restore_offline(&r.path_of(name), name, &point)?;
    println!(
        "restored peer {name} to {to} as run {id}: undid {}",
        if undone.is_empty() {
            "nothing".to_string()
        } else {
            undone.join(", ")
        }
    );
    Ok(())
}

fn demo(dir: PathBuf) -> peerfs::Result<()> {
    let data = dir.join("data");
    let mnt = dir.join("mnt");
    peerfs::peer::private_dir(&data)?;
    std::fs::create_dir_all(&mnt)?;
    // Before the peers are prepared: another demo may be serving them.
    let lock = FolderLock::data(&data, "the demo")?;
    peerfs::demo::prepare(&data)?;
    let tour = peerfs::demo::tour(&mnt);
    let mut cfg = Config::new(&data);
    cfg.idle_close = Duration::from_secs(60);
    let start = Start {
        metrics_listen: None,
        lattice: None,
        held: Some(lock),
    };
    serve(cfg, &mnt, false, true, Some(tour), start)
}

/// `peerfs lattice ...`.
fn lattice_cmd(cmd: LatticeCmd) -> peerfs::Result<()> {
    use peerfs::lattice::{handover, provision, server};
    match cmd {
        LatticeCmd::Init {
            dir,
            workers,
            lattice,
            listen,
            max_bytes,
            max_pending,
        } => {
            let workers = workers
                .iter()
                .map(|w| server::Worker::parse(w))
                .collect::<peerfs::Result<Vec<_>>>()?;
            let init = server::Init {
                dir: dir.clone(),
                lattice,
                listen,
                workers,
                max_bytes,
                max_pending,
            };
            for p in init.write()? {
                println!("wrote {}", p.display());
            }
            println!(
                "start the server with: nats-server -c {}\nthen make the lattice's objects with: peerfs lattice provision {}",
                dir.join("nats-server.conf").display(),
                dir.display()
            );
            Ok(())
        }
        LatticeCmd::Provision {
            dir,
            nats,
            ack_wait_ms,
        } => {
            let done = provision::Provision {
                dir,
                url: nats,
                ack_wait: Duration::from_millis(ack_wait_ms.max(100)),
                timeout: Duration::from_secs(5),
            }
            .run()?;
            for d in done {
                println!("{d}");
            }
            Ok(())
        }
        LatticeCmd::Release {
            peer,
            to,
            nats,
            nats_creds,
            lattice,
        } => handover::Release {
            url: nats.unwrap_or_default(),
            creds: Some(nats_creds),
            lattice: lattice.unwrap_or_default(),
            peer,
            to,
            timeout: Duration::from_secs(2),
        }
        .run()
        .map(|done| println!("{done}")),
    }
}
