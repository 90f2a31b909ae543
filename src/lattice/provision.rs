//! The lattice's shared objects, made by the operator and only checked by workers.
//!
//! `peerfs lattice provision DIR` connects with the operator's credentials
//! (`DIR/admin.creds`, from `lattice init`) and makes what `DIR/lattice.toml`
//! describes: the message stream (one subject per peer, with limits), the
//! directory's bucket and one consumer per peer. It is idempotent: run it again
//! after `lattice init` changed the plan (a new peer), and it adds what is new.
//! It also repairs directory entries that name no worker of the plan.
//!
//! Workers have no right to create or change any of these (a worker is not
//! trusted, docs/threat-model.md): at start each checks that the stream, the
//! bucket and its peers' consumers are as this module makes them, and refuses to
//! serve (naming what differs) when they are not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use serde::{Deserialize, Serialize};

use super::{check_token, creds::Creds, Names};
use crate::error::err;
use crate::error::{Error, Result};
use crate::names::check_peer_name;

/// The file `lattice init` writes beside `nats-server.conf`.
pub const PLAN: &str = "lattice.toml";

/// How long JetStream's duplicate window is: a message published again within it
/// (a lost acknowledgement) is dropped by the server; later, the target's store
/// recognises it.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What `lattice init` decided: the lattice, its limits, and who serves whom.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub lattice: String,
    /// Where the server listens.
    pub url: String,
    /// The most bytes the lattice's waiting messages may take in the server.
    pub max_bytes: u64,
    /// The most messages waiting from one sender to one target.
    pub max_pending: u64,
    /// Worker → the peers it serves.
    pub workers: BTreeMap<String, Vec<String>>,
}

impl Plan {
    pub fn read(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "{}: {e} (written by `peerfs lattice init`)",
                path.display()
            )
        })?;
        let plan: Plan =
            toml::from_str(&text).map_err(|e| err!(libc::EINVAL, "{}: {e}", path.display()))?;
        check_token("lattice", &plan.lattice)?;
        for (w, peers) in &plan.workers {
            check_token("worker", w)?;
            for p in peers {
                check_peer_name(p)?;
            }
        }
        Ok(plan)
    }

    pub fn to_toml(&self) -> Result<String> {
        let text = toml::to_string(self).map_err(|e| err!(libc::EINVAL, "{e}"))?;
        Ok(format!(
            "# The lattice {:?} as `peerfs lattice provision` makes it; written by `peerfs lattice init`.\n{text}",
            self.lattice
        ))
    }

    /// Every peer of the plan, with its worker.
    pub fn peers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.workers
            .iter()
            .flat_map(|(w, ps)| ps.iter().map(move |p| (p.as_str(), w.as_str())))
    }
}

/// The message stream: one subject per peer of the lattice (a message to a name
/// that is no peer is stored nowhere), work-queue retention, and the limits the
/// operator chose: at most `max_bytes` in all, at most `max_pending` waiting per
/// sender→target pair, new messages refused (never old ones dropped) beyond them.
pub fn stream_config(names: &Names, subjects: Vec<String>, plan: &Plan) -> stream::Config {
    stream::Config {
        name: names.stream(),
        description: Some(
            "peerfs: messages between peers, kept until their target took them".into(),
        ),
        subjects,
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_bytes: plan.max_bytes.min(i64::MAX as u64) as i64,
        max_messages_per_subject: plan.max_pending.min(i64::MAX as u64) as i64,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..Default::default()
    }
}

/// The directory's bucket, as its stream (what `create_key_value` would make:
/// that call first asks for the account's details in a form a 2.9 server does
/// not give).
pub fn bucket_config(names: &Names) -> stream::Config {
    let bucket = names.bucket();
    stream::Config {
        name: names.kv_stream(),
        description: Some("peerfs: which worker serves which peer".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// `peer`'s consumer: where its messages wait, whichever worker serves it.
pub fn consumer_config(names: &Names, peer: &str, ack_wait: Duration) -> consumer::pull::Config {
    let name = names.consumer(peer);
    consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject: names.msg_to(peer),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        deliver_policy: consumer::DeliverPolicy::All,
        max_ack_pending: 10_000,
        // Its state is rebuilt from the stream (docs/lattice.md, sizing).
        num_replicas: 1,
        ..Default::default()
    }
}

fn mismatch(what: &str, why: String) -> Error {
    err!(
        libc::EACCES,
        "{what} is not as `peerfs lattice provision` makes it: {why}; run `peerfs lattice provision` with the operator's credentials (docs/lattice.md)"
    )
}

/// Refuses a message stream that would not keep the lattice's promises: another
/// retention, no limits, subjects broader than one peer's, or none for `peers`.
pub fn check_stream(names: &Names, c: &stream::Config, peers: &[String]) -> Result<()> {
    let what = format!("the lattice stream {}", names.stream());
    if c.retention != stream::RetentionPolicy::WorkQueue {
        return Err(mismatch(
            &what,
            format!("its retention is {:?}", c.retention),
        ));
    }
    if c.storage != stream::StorageType::File {
        return Err(mismatch(&what, "it is not kept on disk".into()));
    }
    if c.max_bytes <= 0 || c.max_messages_per_subject <= 0 {
        return Err(mismatch(&what, "it has no size limits".into()));
    }
    if c.discard != stream::DiscardPolicy::New || !c.discard_new_per_subject {
        return Err(mismatch(
            &what,
            "beyond its limits it drops old messages instead of refusing new ones".into(),
        ));
    }
    if c.duplicate_window.is_zero() {
        return Err(mismatch(&what, "it has no duplicate window".into()));
    }
    let prefix = format!("peerfs.{}.msg.", names.lattice);
    for s in &c.subjects {
        let peer = s.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".*"));
        if !peer.is_some_and(|p| check_peer_name(p).is_ok() && !p.contains(['*', '>'])) {
            return Err(mismatch(&what, format!("it takes the subject {s:?}")));
        }
    }
    for p in peers {
        if !c.subjects.contains(&names.msg_to(p)) {
            return Err(mismatch(&what, format!("it takes no messages for {p}")));
        }
    }
    Ok(())
}

/// Refuses a directory whose entries could be deleted or hold a history.
pub fn check_bucket(names: &Names, c: &stream::Config) -> Result<()> {
    let what = format!("the lattice directory {}", names.kv_stream());
    let want = bucket_config(names);
    if c.subjects != want.subjects
        || c.max_messages_per_subject != 1
        || !c.deny_delete
        || c.storage != stream::StorageType::File
    {
        return Err(mismatch(
            &what,
            format!(
                "subjects {:?}, history {}, deletes {}",
                c.subjects,
                c.max_messages_per_subject,
                if c.deny_delete { "denied" } else { "allowed" }
            ),
        ));
    }
    Ok(())
}

/// Refuses a consumer of `peer` that would hand out other peers' messages, or
/// drop messages without an acknowledgement.
pub fn check_consumer(names: &Names, peer: &str, c: &consumer::Config) -> Result<()> {
    let what = format!(
        "the consumer {} of {}",
        names.consumer(peer),
        names.stream()
    );
    if c.filter_subject != names.msg_to(peer) {
        return Err(mismatch(
            &what,
            format!("it hands out {:?}", c.filter_subject),
        ));
    }
    if c.ack_policy != consumer::AckPolicy::Explicit {
        return Err(mismatch(
            &what,
            format!("its acknowledgements are {:?}", c.ack_policy),
        ));
    }
    if c.durable_name.as_deref() != Some(names.consumer(peer).as_str()) {
        return Err(mismatch(&what, "it is not durable".into()));
    }
    Ok(())
}

/// Whether a JetStream error says the object does not exist.
pub(super) fn not_found(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("not found")
}

/// Connects as `creds` (or anonymously), with the user's own inbox prefix: the
/// server lets each user read only `_INBOX_<user>.>`.
pub async fn connect(
    url: &str,
    creds: Option<&Creds>,
    names: &Names,
    client_name: String,
    timeout: Duration,
) -> Result<async_nats::Client> {
    super::refuse_secret_in_url(url)?;
    let mut co = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(c) = creds {
        co = co
            .user_and_password(c.user.clone(), c.password.clone())
            .custom_inbox_prefix(names.inbox_prefix(&c.user));
    }
    co.connect(url)
        .await
        .map_err(|e| err!(libc::EHOSTUNREACH, "nats {url}: {e}"))
}

/// What `provision` is asked to do.
pub struct Provision {
    /// The folder `lattice init` wrote (`lattice.toml`, `admin.creds`).
    pub dir: PathBuf,
    /// The server, when not the plan's `url`.
    pub url: Option<String>,
    /// The consumers' acknowledgement wait.
    pub ack_wait: Duration,
    pub timeout: Duration,
}

impl Provision {
    /// Makes or completes the lattice's objects; returns what was done.
    pub fn run(&self) -> Result<Vec<String>> {
        let plan = Plan::read(&self.dir.join(PLAN))?;
        let creds = Creds::read(&self.dir.join(format!("{}.creds", super::creds::ADMIN)))?;
        if plan.peers().next().is_none() {
            return Err(err!(
                libc::EINVAL,
                "the plan names no peer: pass --worker NAME=PEER,... to `lattice init`"
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.provision(&plan, &creds))
    }

    async fn provision(&self, plan: &Plan, creds: &Creds) -> Result<Vec<String>> {
        let names = Names::new(&plan.lattice)?;
        let url = self.url.as_deref().unwrap_or(&plan.url);
        let client = connect(
            url,
            Some(creds),
            &names,
            "peerfs lattice provision".into(),
            self.timeout,
        )
        .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.timeout);
        let mut done = Vec::new();
        let stream = make_stream(&js, &names, plan, &mut done).await?;
        let kv = make_bucket(&js, &names, &mut done).await?;
        for (peer, worker) in plan.peers() {
            let want = consumer_config(&names, peer, self.ack_wait);
            let c = stream
                .create_consumer(want)
                .await
                .map_err(|e| err!(libc::EIO, "consumer {}: {e}", names.consumer(peer)))?;
            check_consumer(&names, peer, &c.cached_info().config)?;
            repair_entry(&kv, plan, peer, worker, &mut done).await?;
        }
        done.push(format!(
            "{} consumers in {}: {}",
            plan.peers().count(),
            names.stream(),
            plan.peers().map(|(p, _)| p).collect::<Vec<_>>().join(", ")
        ));
        Ok(done)
    }
}

async fn make_stream(
    js: &jetstream::Context,
    names: &Names,
    plan: &Plan,
    done: &mut Vec<String>,
) -> Result<stream::Stream> {
    let name = names.stream();
    let fail = |e: &dyn std::fmt::Display| err!(libc::EIO, "stream {name}: {e}");
    let mut subjects: Vec<String> = plan.peers().map(|(p, _)| names.msg_to(p)).collect();
    let existing = match js.get_stream(&name).await {
        Ok(mut s) => Some(s.info().await.map_err(|e| fail(&e))?.config.clone()),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(fail(&e)),
    };
    // A peer left out of the plan keeps its subject: what waits for it stays
    // reachable.
    if let Some(old) = &existing {
        let prefix = format!("peerfs.{}.msg.", names.lattice);
        for s in &old.subjects {
            if s.starts_with(&prefix) && s.ends_with(".*") && !subjects.contains(s) {
                subjects.push(s.clone());
            }
        }
    }
    subjects.sort();
    let want = stream_config(names, subjects, plan);
    let info = match existing {
        None => {
            done.push(format!("created the stream {name}"));
            js.create_stream(want)
                .await
                .map_err(|e| fail(&e))?
                .cached_info()
                .config
                .clone()
        }
        Some(_) => {
            done.push(format!("updated the stream {name}"));
            js.update_stream(want).await.map_err(|e| fail(&e))?.config
        }
    };
    let peers: Vec<String> = plan.peers().map(|(p, _)| p.to_string()).collect();
    check_stream(names, &info, &peers)?;
    js.get_stream(&name).await.map_err(|e| fail(&e))
}

async fn make_bucket(
    js: &jetstream::Context,
    names: &Names,
    done: &mut Vec<String>,
) -> Result<kv::Store> {
    let name = names.kv_stream();
    let fail = |e: &dyn std::fmt::Display| err!(libc::EIO, "the directory {name}: {e}");
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let c = s.info().await.map_err(|e| fail(&e))?.config.clone();
            check_bucket(names, &c)?;
        }
        Err(e) if not_found(&e) => {
            js.create_stream(bucket_config(names))
                .await
                .map_err(|e| fail(&e))?;
            done.push(format!("created the directory {name}"));
        }
        Err(e) => return Err(fail(&e)),
    }
    js.get_key_value(names.bucket()).await.map_err(|e| fail(&e))
}

/// An entry that names no worker of the plan (damaged, or written by a worker
/// tricked into it) is set to the plan's worker; one naming a worker of the plan
/// is left alone (a peer moved with `lattice release`).
async fn repair_entry(
    kv: &kv::Store,
    plan: &Plan,
    peer: &str,
    worker: &str,
    done: &mut Vec<String>,
) -> Result<()> {
    let now = kv
        .get(peer)
        .await
        .map_err(|e| err!(libc::EIO, "the directory entry of {peer}: {e}"))?;
    let Some(v) = now else { return Ok(()) };
    let holder = String::from_utf8_lossy(&v);
    if plan.workers.contains_key(holder.as_ref()) {
        return Ok(());
    }
    kv.put(peer, worker.to_string().into())
        .await
        .map_err(|e| err!(libc::EIO, "repairing the directory entry of {peer}: {e}"))?;
    let shown: String = holder.chars().take(60).collect();
    tracing::warn!(peer, worker, damaged = %shown, "directory entry repaired");
    done.push(format!(
        "repaired the directory entry of {peer} (it held {shown:?}; now {worker})"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            lattice: "lab".into(),
            url: "nats://127.0.0.1:4222".into(),
            max_bytes: 1 << 30,
            max_pending: 1000,
            workers: [("w1".to_string(), vec!["alice".to_string()])].into(),
        }
    }

    #[test]
    fn the_stream_check_refuses_what_a_worker_could_abuse() {
        let n = Names::new("lab").unwrap();
        let p = plan();
        let peers = vec!["alice".to_string()];
        let good = stream_config(&n, vec![n.msg_to("alice")], &p);
        check_stream(&n, &good, &peers).unwrap();
        let cases: Vec<(&str, stream::Config)> = vec![
            (
                "limits",
                stream::Config {
                    max_bytes: -1,
                    ..good.clone()
                },
            ),
            (
                "retention",
                stream::Config {
                    retention: stream::RetentionPolicy::Limits,
                    ..good.clone()
                },
            ),
            (
                "drops old",
                stream::Config {
                    discard: stream::DiscardPolicy::Old,
                    ..good.clone()
                },
            ),
            (
                "any target",
                stream::Config {
                    subjects: vec![format!("peerfs.lab.msg.>")],
                    ..good.clone()
                },
            ),
            (
                "wildcard target",
                stream::Config {
                    subjects: vec![n.msg_to("alice"), "peerfs.lab.msg.*.*".into()],
                    ..good.clone()
                },
            ),
            (
                "missing peer",
                stream::Config {
                    subjects: vec![n.msg_to("bob")],
                    ..good.clone()
                },
            ),
        ];
        for (why, c) in cases {
            let e = check_stream(&n, &c, &peers).unwrap_err();
            assert_eq!(e.errno, libc::EACCES, "{why}: {e}");
            assert!(e.message.contains("lattice provision"), "{why}: {e}");
        }
    }

    #[test]
    fn the_consumer_check_refuses_another_filter() {
        let n = Names::new("lab").unwrap();
        let c = consumer_config(&n, "bob", Duration::from_secs(1));
        let c = consumer::IntoConsumerConfig::into_consumer_config(c);
        check_consumer(&n, "bob", &c).unwrap();
        let stolen = consumer::Config {
            filter_subject: n.msg_to("alice"),
            ..c.clone()
        };
        assert_eq!(
            check_consumer(&n, "bob", &stolen).unwrap_err().errno,
            libc::EACCES
        );
    }

    #[test]
    fn the_plan_round_trips() {
        let p = plan();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(PLAN);
        std::fs::write(&f, p.to_toml().unwrap()).unwrap();
        assert_eq!(Plan::read(&f).unwrap(), p);
    }
}
