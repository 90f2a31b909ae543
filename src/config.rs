//! The daemon's configuration: a TOML file, command-line flags over it, defaults
//! under both (flag > file > default).
//!
//! Every setting has one key (`runners`, `limits.own.max_wall_ms`, `log.format`,
//! ...). The file is read with serde and `deny_unknown_fields`, so an unknown key,
//! a value of the wrong type or a limit out of range is refused at start with the
//! key, the reason and the file's line. Flags are turned into the same keys
//! (`--runners 4` is `runners = 4`, `-o limits.own.max_operations=5000` any key),
//! so `mount.peerfs`/fstab `-o` options, the flags and the file are one namespace.
//! A key's former name ([`FORMER_KEYS`]: `workers` for `runners`) is still read,
//! in the file, as a flag and as `-o`, and shown under the current name.
//!
//! How the layers merge: the defaults, the file and the flags are each flattened
//! to `dotted.key -> value`, laid over each other, and the result is deserialized
//! once more into [`Settings`]; the flat map remembers where each value came from,
//! for `peerfs config show`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::err;
use crate::exec::Config;
use crate::script::{Library, Limits};

/// Everything a config file can say. Shared by every daemon subcommand (`mount`,
/// `serve`); settings of one subcommand only live in its own table (`[mount]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The data folder: `DATA/peers/<name>.sqlite`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Serve only these peers (isolated deployment); empty: every peer in `data`.
    pub peers: Vec<String>,
    /// Runner threads running scripts (formerly `workers`).
    #[serde(alias = "workers", deserialize_with = "between::<_, 1, 4096>")]
    pub runners: u64,
    /// Open peers kept at most (idle ones beyond this are closed first).
    #[serde(deserialize_with = "between::<_, 1, 10_000_000>")]
    pub max_open_peers: u64,
    /// An open peer with no work is closed after this many milliseconds.
    #[serde(deserialize_with = "between::<_, 1, 86_400_000>")]
    pub idle_close_ms: u64,
    /// Runs kept in each peer's history.
    #[serde(deserialize_with = "between::<_, 1, 1_000_000_000>")]
    pub run_retention: u64,
    /// Most runs committed together (one fsync).
    #[serde(deserialize_with = "between::<_, 1, 100_000>")]
    pub batch_max_runs: u64,
    /// Compiled scripts and modules kept in the cache.
    #[serde(deserialize_with = "between::<_, 1, 10_000_000>")]
    pub script_cache_entries: u64,
    /// Runs a chain of sends may make in all (a script and every script it leads
    /// to share it), so that any chain, a send worm too, ends.
    #[serde(deserialize_with = "between::<_, 1, 1_000_000_000>")]
    pub chain_budget: u64,
    /// Starts of a queued script that never finished (it crashed the daemon)
    /// after which it ends with an `error` result.
    #[serde(deserialize_with = "between::<_, 1, 1_000>")]
    pub max_attempts: u64,
    /// Failed deliveries of a message after which it becomes an `error` result.
    #[serde(deserialize_with = "between::<_, 1, 1_000_000>")]
    pub delivery_tries: u64,
    /// Longest a read of a pending result waits, in milliseconds (then `ETIMEDOUT`).
    #[serde(deserialize_with = "between::<_, 1, 86_400_000>")]
    pub result_wait_ms: u64,
    /// A folder of `NAME.rhai` modules to use as the shared library instead of
    /// the one built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    pub mount: MountSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub limits: LimitSets,
    pub lattice: LatticeSettings,
    pub replica: ReplicaSettings,
    pub history: HistorySettings,
}

/// `[replica]`: every peer's store shipped to object storage (docs/operating.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaSettings {
    /// `s3://BUCKET/PREFIX` or `file:///PATH`; unset: no replica.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "replica_url"
    )]
    pub url: Option<String>,
    /// The S3-compatible service (`http://127.0.0.1:9000`); unset: AWS, or
    /// `AWS_ENDPOINT_URL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The S3 region (unset: `AWS_REGION`, else `us-east-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A credentials file (`aws_access_key_id = ...` lines, as AWS's own);
    /// unset: the `AWS_*` variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// How far behind the replica may be, in milliseconds.
    #[serde(deserialize_with = "between::<_, 10, 3_600_000>")]
    pub sync_ms: u64,
    /// `async`, or `sync`: a submission's close waits until its commit is in
    /// the replica.
    pub mode: crate::replica::Mode,
    /// How far back a restore may go: `7d`, `12h`, `30m` or seconds.
    #[serde(deserialize_with = "retention")]
    pub retention: String,
    /// In `sync` mode, the longest a close waits for the replica (then `ETIMEDOUT`).
    #[serde(deserialize_with = "between::<_, 10, 3_600_000>")]
    pub sync_timeout_ms: u64,
}

impl Default for ReplicaSettings {
    fn default() -> ReplicaSettings {
        let o = crate::replica::Options::new(crate::replica::Url::File(PathBuf::new()));
        ReplicaSettings {
            url: None,
            endpoint: None,
            region: None,
            credentials: None,
            sync_ms: o.sync.as_millis() as u64,
            mode: o.mode,
            retention: "7d".into(),
            sync_timeout_ms: o.sync_timeout.as_millis() as u64,
        }
    }
}

/// `[history]`: what each peer's history keeps (docs/guide.md, History).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    /// How long an entry is kept: `30d`, `12h`, `90m`, `45s` or seconds as a
    /// number; `0` keeps no history at all.
    #[serde(deserialize_with = "age")]
    pub max_age: String,
    /// Bytes of old values each peer's history keeps at most (the oldest
    /// entries go first); 0: no bound but the age.
    pub max_bytes: u64,
}

impl Default for HistorySettings {
    fn default() -> HistorySettings {
        HistorySettings {
            max_age: "30d".into(),
            max_bytes: 0,
        }
    }
}

impl ReplicaSettings {
    /// How to replicate, when `url` is set.
    pub fn options(&self) -> crate::Result<Option<crate::replica::Options>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut o = crate::replica::Options::new(crate::replica::Url::parse(url)?);
        o.endpoint = self.endpoint.clone();
        o.region = self.region.clone();
        o.credentials = self.credentials.clone();
        o.sync = Duration::from_millis(self.sync_ms);
        o.mode = self.mode;
        o.retention = crate::replica::parse_duration(&self.retention)?;
        o.sync_timeout = Duration::from_millis(self.sync_timeout_ms);
        Ok(Some(o))
    }
}

fn replica_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    crate::replica::Url::parse(&url).map_err(|e| serde::de::Error::custom(e.message))?;
    Ok(Some(url))
}

fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    crate::replica::parse_duration(&text).map_err(|e| serde::de::Error::custom(e.message))?;
    Ok(text)
}

fn age<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Secs(u64),
        Text(String),
    }
    let text = match Given::deserialize(d)? {
        Given::Secs(n) => n.to_string(),
        Given::Text(t) => t,
    };
    crate::util::parse_age(&text).map_err(|e| serde::de::Error::custom(e.message))?;
    Ok(text)
}

/// `[lattice]`: joining other daemons over NATS JetStream (docs/lattice.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatticeSettings {
    /// `nats://host:port` (credentials only from `creds`); unset: the URL of the
    /// credentials file, and with no file either, this daemon is on its own.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "nats_url")]
    pub nats: Option<String>,
    /// A credentials file written by `peerfs lattice init`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds: Option<PathBuf>,
    /// The lattice's name (daemons on one NATS with one name see each other).
    pub name: String,
    /// This worker's name in the directory (default: its NATS user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// How long JetStream waits for a delivered message's acknowledgement.
    #[serde(deserialize_with = "between::<_, 100, 3_600_000>")]
    pub ack_wait_ms: u64,
    /// How long a request to NATS may take before it fails (`ETIMEDOUT`).
    #[serde(deserialize_with = "between::<_, 10, 600_000>")]
    pub timeout_ms: u64,
}

impl Default for LatticeSettings {
    fn default() -> LatticeSettings {
        let o = crate::lattice::Options::new("");
        LatticeSettings {
            nats: None,
            creds: None,
            name: o.name,
            worker: None,
            ack_wait_ms: o.ack_wait.as_millis() as u64,
            timeout_ms: o.timeout.as_millis() as u64,
        }
    }
}

impl LatticeSettings {
    /// How to join, when `nats` or `creds` is set. The credentials file from
    /// `lattice init` names the server and the lattice: they are used where
    /// `nats` and `name` are not set (a credentials file that cannot be read is
    /// reported when the daemon joins).
    pub fn options(&self) -> Option<crate::lattice::Options> {
        let file = self
            .creds
            .as_ref()
            .and_then(|f| crate::lattice::creds::Creds::read(f).ok());
        let url = match (&self.nats, &file) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => c.url.clone().unwrap_or_default(),
            (None, None) if self.creds.is_some() => String::new(),
            (None, None) => return None,
        };
        let default_name = crate::lattice::Options::new("").name;
        let mut o = crate::lattice::Options::new(url);
        o.creds = self.creds.clone();
        o.name = match file.and_then(|c| c.lattice) {
            Some(l) if self.name == default_name => l,
            _ => self.name.clone(),
        };
        o.worker = self.worker.clone();
        o.ack_wait = Duration::from_millis(self.ack_wait_ms);
        o.timeout = Duration::from_millis(self.timeout_ms);
        Some(o)
    }
}

/// `[mount]`: settings of `peerfs mount` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountSettings {
    /// Let other users in (their own peers only: peer folders are 0700).
    pub allow_other: bool,
    /// Clean up a stale mount left by a killed daemon first.
    pub force: bool,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`info`, `peerfs=debug`, ...); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            level: "peerfs=info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Record run durations, commit latency, policy decisions and per-peer
    /// figures (the plain counters count either way).
    pub enabled: bool,
    /// Serve `GET /metrics` on this address (e.g. `127.0.0.1:9464`, or a bare
    /// port for loopback); unset: only the mount's `.peerfs/metrics` file.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "listen_addr"
    )]
    pub listen: Option<SocketAddr>,
    /// Per-peer series are exported for at most this many peers (the busiest), so
    /// that ten thousand peers do not make ten thousand series.
    #[serde(deserialize_with = "between::<_, 0, 1000>")]
    pub top_peers: u64,
    /// Export per-peer series (`peer="alice"`) at all. Off by default: the metrics
    /// are readable by every user of the mount and every client of the listener,
    /// and a peer's name says who has a peer.
    pub peer_labels: bool,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            listen: None,
            top_peers: 20,
            peer_labels: false,
        }
    }
}

/// `[limits.own]` and `[limits.others]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSets {
    /// A peer's own scripts (dropped into its own `inbox/`).
    #[serde(default = "Limits::own")]
    pub own: Limits,
    /// Scripts other peers send; the target's policy can tighten them further.
    #[serde(default = "Limits::others")]
    pub others: Limits,
}

impl Default for LimitSets {
    fn default() -> LimitSets {
        LimitSets {
            own: Limits::own(),
            others: Limits::others(),
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        let c = Config::new("");
        Settings {
            data: None,
            peers: Vec::new(),
            runners: c.runners as u64,
            max_open_peers: c.max_open_peers as u64,
            idle_close_ms: c.idle_close.as_millis() as u64,
            run_retention: c.run_retention,
            batch_max_runs: c.batch_max_runs as u64,
            script_cache_entries: c.script_cache_entries as u64,
            chain_budget: c.chain_budget,
            max_attempts: u64::from(c.max_attempts),
            delivery_tries: u64::from(c.delivery_tries),
            result_wait_ms: c.result_wait.as_millis() as u64,
            library: None,
            mount: MountSettings::default(),
            log: LogSettings::default(),
            metrics: MetricsSettings::default(),
            limits: LimitSets::default(),
            lattice: LatticeSettings::default(),
            replica: ReplicaSettings::default(),
            history: HistorySettings::default(),
        }
    }
}

fn between<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !(MIN..=MAX).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range: use a value from {MIN} to {MAX}"
        )));
    }
    Ok(v)
}

/// A NATS URL without credentials (they would show in `ps` and `config show`).
fn nats_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    crate::lattice::refuse_secret_in_url(&url).map_err(|e| serde::de::Error::custom(e.message))?;
    Ok(Some(url))
}

/// `HOST:PORT`, or a port (number or text) meaning `127.0.0.1:PORT`.
fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Port(u16),
        Text(String),
    }
    let text = match Given::deserialize(d)? {
        Given::Port(p) => return Ok(Some(SocketAddr::from(([127, 0, 0, 1], p)))),
        Given::Text(t) => t,
    };
    if let Ok(p) = text.parse::<u16>() {
        return Ok(Some(SocketAddr::from(([127, 0, 0, 1], p))));
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address: use HOST:PORT (127.0.0.1:9464), or a port for loopback"
        ))
    })
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    /// The flag as it was given (`--runners`, `-o`).
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Flag(s) => write!(f, "flag {s}"),
        }
    }
}

/// A setting given on the command line, as a config key.
#[derive(Debug, Clone)]
pub struct FlagValue {
    pub key: String,
    pub value: toml::Value,
    /// How the user spelled it, for messages (`--runners`).
    pub flag: String,
}

/// The command-line flags every daemon subcommand shares (`mount`, `serve`):
/// flatten it into the subcommand with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// A TOML config file (keys: `peerfs config show` lists them all).
    #[arg(long, env = "PEERFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data folder (key `data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Serve only this peer (repeatable): an isolated deployment (key `peers`).
    #[arg(long = "peer", value_name = "NAME")]
    pub peers: Vec<String>,
    /// Runner threads running scripts (key `runners`; default: 2 per core, at
    /// least 4). Formerly `--workers`, still accepted.
    #[arg(long, alias = "workers")]
    pub runners: Option<u64>,
    /// Most milliseconds one run may take, own scripts and others' alike (keys
    /// `limits.own.max_wall_ms` and `limits.others.max_wall_ms`).
    #[arg(long)]
    pub max_wall_ms: Option<u64>,
    /// Most Rhai operations one run may take, own scripts and others' alike (keys
    /// `limits.own.max_operations` and `limits.others.max_operations`).
    #[arg(long)]
    pub max_operations: Option<u64>,
    /// Log lines as text (default) or JSON (key `log.format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `peerfs=debug` (key `log.level`; RUST_LOG wins when set).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (key `metrics.listen`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Join a lattice on this NATS server: `nats://host:port` (key
    /// `lattice.nats`; default: the URL in --nats-creds). Credentials only from
    /// --nats-creds, never in the URL.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The worker's credentials file from `peerfs lattice init` (key `lattice.creds`).
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// The lattice's name (key `lattice.name`; default `default`).
    #[arg(long, value_name = "NAME")]
    pub lattice: Option<String>,
    /// Any config key: `-o KEY=VALUE` (repeatable, or comma-separated as in fstab);
    /// a bare `KEY` means `KEY=true`.
    #[arg(short = 'o', value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

impl DaemonArgs {
    /// The flags as config keys, in the order given (a later one wins).
    pub fn flags(&self) -> crate::Result<Vec<FlagValue>> {
        let mut out = Vec::new();
        let mut put = |key: &str, value: toml::Value, flag: &str| {
            out.push(FlagValue {
                key: key.into(),
                value,
                flag: flag.into(),
            })
        };
        let path = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        if let Some(d) = &self.data {
            put("data", path(d), "--data");
        }
        if !self.peers.is_empty() {
            let names = self.peers.iter().cloned().map(toml::Value::String);
            put("peers", toml::Value::Array(names.collect()), "--peer");
        }
        if let Some(r) = self.runners {
            put("runners", int(r), "--runners");
        }
        for set in ["own", "others"] {
            if let Some(m) = self.max_wall_ms {
                put(
                    &format!("limits.{set}.max_wall_ms"),
                    int(m),
                    "--max-wall-ms",
                );
            }
            if let Some(m) = self.max_operations {
                let key = format!("limits.{set}.max_operations");
                put(&key, int(m), "--max-operations");
            }
        }
        if let Some(f) = self.log_format {
            let s = if f == LogFormat::Json { "json" } else { "text" };
            put("log.format", toml::Value::String(s.into()), "--log-format");
        }
        if let Some(l) = &self.log_level {
            put("log.level", toml::Value::String(l.clone()), "--log-level");
        }
        if let Some(a) = &self.metrics_listen {
            let v = toml::Value::String(a.clone());
            put("metrics.listen", v, "--metrics-listen");
        }
        if let Some(u) = &self.nats {
            put("lattice.nats", toml::Value::String(u.clone()), "--nats");
        }
        if let Some(c) = &self.nats_creds {
            put("lattice.creds", path(c), "--nats-creds");
        }
        if let Some(n) = &self.lattice {
            put("lattice.name", toml::Value::String(n.clone()), "--lattice");
        }
        for o in self.options.iter().flat_map(|o| o.split(',')) {
            let o = o.trim();
            if o.is_empty() {
                continue;
            }
            let (key, value) = match o.split_once('=') {
                Some((k, v)) => (k.trim(), parse_value(v.trim())),
                None => (o, toml::Value::Boolean(true)),
            };
            if key.is_empty() {
                return Err(err!(libc::EINVAL, "-o {o:?} has no key: use -o KEY=VALUE"));
            }
            put(current_key(key), value, &format!("-o {key}"));
        }
        Ok(out)
    }
}

/// Keys renamed, as (former name, current name): the former is still read (in a
/// file, as `-o`; the flag has a clap alias) and means the current one.
pub const FORMER_KEYS: &[(&str, &str)] = &[("workers", "runners")];

/// The current name of `key` (itself unless it is a former name).
fn current_key(key: &str) -> &str {
    FORMER_KEYS
        .iter()
        .find(|(former, _)| *former == key)
        .map_or(key, |(_, current)| current)
}

fn int(v: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A `-o` value: TOML when it is (numbers, booleans, quoted strings, arrays),
/// otherwise the text itself (`data=/srv/peerfs`).
fn parse_value(v: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

/// The effective configuration and where each value came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub settings: Settings,
    /// `dotted.key -> (value, source)`, for every key that has a value.
    pub values: BTreeMap<String, (toml::Value, Source)>,
}

/// Reads the config file (if any) and lays the flags over it.
pub fn load(file: Option<&Path>, flags: &[FlagValue]) -> crate::Result<Effective> {
    let mut values = BTreeMap::new();
    let defaults = toml::Value::try_from(Settings::default())
        .map_err(|e| err!(libc::EINVAL, "the built-in defaults do not serialize: {e}"))?;
    flatten("", &defaults, &Source::Default, &mut values);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "config file {}: {e}: check the path given with --config or PEERFS_CONFIG",
                path.display()
            )
            .with_source(e)
        })?;
        // Typed first: this is where unknown keys, bad types and out-of-range
        // values are caught, with the line.
        toml::from_str::<Settings>(&text).map_err(|e| {
            err!(
                libc::EINVAL,
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            )
            .with_source(e)
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            err!(libc::EINVAL, "config file {}: {e}", path.display()).with_source(e)
        })?;
        let src = Source::File(path.to_path_buf());
        flatten("", &toml::Value::Table(table), &src, &mut values);
    }
    for f in flags {
        values.insert(
            f.key.clone(),
            (f.value.clone(), Source::Flag(f.flag.clone())),
        );
    }
    let merged = unflatten(&values);
    let settings = Settings::deserialize(toml::Value::Table(merged)).map_err(|e| {
        let by: Vec<&str> = flags.iter().map(|f| f.flag.as_str()).collect();
        err!(
            libc::EINVAL,
            "command-line settings ({}): {}",
            by.join(", "),
            e.to_string().trim_end()
        )
        .with_source(e)
    })?;
    // Show what was understood (`9464` is `127.0.0.1:9464`), with the sources kept.
    if let Ok(eff) = toml::Value::try_from(&settings) {
        let mut understood = BTreeMap::new();
        flatten("", &eff, &Source::Default, &mut understood);
        for (k, (v, _)) in values.iter_mut() {
            if let Some((e, _)) = understood.remove(k) {
                *v = e;
            }
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&settings.log.level) {
        return Err(err!(
            libc::EINVAL,
            "log.level {:?} ({}) is not a log filter ({e}): use e.g. \"info\" or \"peerfs=debug\"",
            settings.log.level,
            values["log.level"].1
        ));
    }
    Ok(Effective { settings, values })
}

fn flatten(
    prefix: &str,
    v: &toml::Value,
    src: &Source,
    out: &mut BTreeMap<String, (toml::Value, Source)>,
) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, src, out);
            }
        }
        _ => {
            out.insert(current_key(prefix).to_string(), (v.clone(), src.clone()));
        }
    }
}

fn unflatten(values: &BTreeMap<String, (toml::Value, Source)>) -> toml::Table {
    let mut root = toml::Table::new();
    for (key, (v, _)) in values {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut t = &mut root;
        for p in parts {
            let e = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !e.is_table() {
                *e = toml::Value::Table(toml::Table::new());
            }
            t = e.as_table_mut().expect("just made a table");
        }
        t.insert(last.to_string(), v.clone());
    }
    root
}

impl Effective {
    /// The effective configuration as TOML, each value with its source.
    pub fn show(&self) -> String {
        let mut sections: BTreeMap<&str, Vec<(&str, &toml::Value, &Source)>> = BTreeMap::new();
        for (key, (v, src)) in &self.values {
            let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
            sections.entry(section).or_default().push((name, v, src));
        }
        let mut s = String::from(
            "# The effective peerfs configuration: each value with where it came from\n\
             # (flag > file > default).\n",
        );
        for (key, how) in [
            ("data", "--data DATA"),
            ("library", "a folder of NAME.rhai modules"),
            ("metrics.listen", "--metrics-listen ADDR"),
            (
                "lattice.creds",
                "--nats-creds FILE from `peerfs lattice init`: joins its lattice",
            ),
            (
                "lattice.nats",
                "--nats nats://HOST:PORT; default: the credentials file's",
            ),
            ("lattice.worker", "default: the credentials' user"),
            (
                "replica.url",
                "s3://BUCKET/PREFIX or file:///PATH: every store shipped to object storage",
            ),
        ] {
            if !self.values.contains_key(key) {
                let _ = writeln!(s, "# {key} is not set ({how})");
            }
        }
        for (section, keys) in sections {
            if !section.is_empty() {
                let _ = writeln!(s, "\n[{section}]");
            }
            for (name, v, src) in keys {
                let _ = writeln!(s, "{name} = {v}  # {src}");
            }
        }
        s
    }

    /// The executor's settings. `data` must be set somewhere.
    pub fn core_config(&self) -> crate::Result<Config> {
        let s = &self.settings;
        let data = s.data.as_ref().ok_or_else(|| {
            err!(
                libc::EINVAL,
                "no data folder: pass --data DATA or put data = \"DATA\" in the config file"
            )
        })?;
        let mut c = Config::new(data);
        if !s.peers.is_empty() {
            c.only = Some(s.peers.clone());
        }
        c.runners = s.runners as usize;
        c.max_open_peers = s.max_open_peers as usize;
        c.idle_close = Duration::from_millis(s.idle_close_ms);
        c.run_retention = s.run_retention;
        c.batch_max_runs = s.batch_max_runs as usize;
        c.script_cache_entries = s.script_cache_entries as usize;
        c.chain_budget = s.chain_budget;
        c.max_attempts = s.max_attempts as u32;
        c.delivery_tries = s.delivery_tries as u32;
        c.result_wait = Duration::from_millis(s.result_wait_ms);
        if let Some(l) = &s.library {
            c.library = Library::Dir(l.clone());
        }
        c.limits = s.limits.others.clone();
        c.own_limits = s.limits.own.clone();
        c.metrics = s.metrics.enabled;
        c.metrics_top_peers = s.metrics.top_peers as usize;
        c.metrics_peer_labels = s.metrics.peer_labels;
        c.joins_lattice = s.lattice.nats.is_some() || s.lattice.creds.is_some();
        c.replica = s.replica.options()?;
        c.history = crate::store::history::Retention {
            max_age_ns: i64::try_from(crate::util::parse_age(&s.history.max_age)?.as_nanos())
                .unwrap_or(i64::MAX),
            max_bytes: s.history.max_bytes,
        };
        Ok(c)
    }
}

/// Installs the global tracing subscriber: text or JSON lines on stderr.
pub fn init_logging(log: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| "peerfs=info".into());
    // A log line that cannot be written (stderr a pipe whose reader is gone, as
    // in `peerfs mount ... 2>&1 | tee` after Ctrl-C) is dropped: reporting it
    // would write to the same closed stderr, which panics.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match log.format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}
