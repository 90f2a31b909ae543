//! `peerfs lattice init`: the server's configuration and one credentials file per
//! worker, so that operators never write permissions by hand.
//!
//! Each worker is a NATS user with a generated password. It may publish only:
//! - messages whose sender is one of its peers: `peerfs.<l>.msg.*.<peer>`;
//! - its peers' entries of the directory: `$KV.peerfs_<l>.<peer>`;
//! - reads of the lattice's stream and directory, and pulls from and
//!   acknowledgements of its own peers' consumers (never a create or an update:
//!   the operator's `admin` user makes them, `peerfs lattice provision`);
//! - replies to requests it received (`allow_responses`: once each).
//!
//! It may subscribe only to its own inbox prefix (`_INBOX_<worker>.>`, which its
//! client uses for every reply and JetStream delivery) and to the requests for
//! its own peers.
//!
//! Identity follows: a worker cannot publish a message as a peer it does not
//! serve, claim such a peer in the directory, read another worker's replies or
//! deliveries, or touch another peer's consumer, whatever its code does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::creds::{Creds, ADMIN};
use super::Names;
use crate::error::err;
use crate::error::Result;
use crate::names::check_peer_name;

/// One worker of the deployment and the peers it serves.
#[derive(Debug, Clone)]
pub struct Worker {
    pub name: String,
    pub peers: Vec<String>,
}

impl Worker {
    /// `w1=alice,carol`.
    pub fn parse(s: &str) -> Result<Worker> {
        let (name, peers) = s
            .split_once('=')
            .ok_or_else(|| err!(libc::EINVAL, "--worker {s:?}: use NAME=PEER,PEER,..."))?;
        super::check_token("worker", name)?;
        let peers: Vec<String> = peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        for p in &peers {
            check_peer_name(p)?;
        }
        Ok(Worker {
            name: name.to_string(),
            peers,
        })
    }
}

/// What `init` writes.
pub struct Init {
    pub dir: PathBuf,
    pub lattice: String,
    pub listen: String,
    pub workers: Vec<Worker>,
    /// The most bytes the lattice's messages may take in the server's store.
    pub max_bytes: u64,
    /// The most messages waiting from one sender to one target.
    pub max_pending: u64,
}

/// A secret of 32 random hex digits from the kernel.
pub(super) fn secret() -> Result<String> {
    let mut b = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The publish permissions of a worker serving `peers`. Replies to requests it
/// received are allowed by the server's `allow_responses` (once each), not by a
/// subject here: a worker may publish into no other worker's inbox.
pub fn publish_allow(names: &Names, peers: &[String]) -> Vec<String> {
    let stream = names.stream();
    let kv = names.kv_stream();
    let mut v = Vec::new();
    for p in peers {
        v.push(names.msg_from(p));
        v.push(names.entry_subject(p));
        // Its peers' consumers: read their configuration and pull from them;
        // never create or change one (`peerfs lattice provision` makes them).
        v.push(names.consumer_api("INFO", p));
        v.push(names.consumer_api("MSG.NEXT", p));
        v.push(names.acks_of(p));
        // Reads of other peers' state as this peer (request/reply).
        v.push(names.read_as(p));
        // Whether another process of this worker serves the peer now.
        v.push(names.alive_subject(p));
    }
    v.push("$JS.API.INFO".into());
    for s in [&stream, &kv] {
        v.push(format!("$JS.API.STREAM.INFO.{s}"));
    }
    // The directory: reads, and the ordered consumers of its watch and key list
    // (they read the directory's stream, which keeps its entries whatever
    // consumers it has).
    v.push(format!("$JS.API.STREAM.MSG.GET.{kv}"));
    v.push(format!("$JS.API.DIRECT.GET.{kv}.>"));
    v.push(format!("$JS.API.CONSUMER.CREATE.{kv}"));
    v.push(format!("$JS.API.CONSUMER.CREATE.{kv}.>"));
    v.push(format!("$JS.API.CONSUMER.INFO.{kv}.>"));
    v.push(format!("$JS.FC.{kv}.>"));
    v
}

/// What a worker may subscribe to: its own inbox, and the requests for its peers.
pub fn subscribe_allow(names: &Names, worker: &str, peers: &[String]) -> Vec<String> {
    let mut v = vec![format!("{}.>", names.inbox_prefix(worker))];
    for p in peers {
        v.push(names.read_all(p));
        v.push(names.alive_subject(p));
    }
    v
}

fn admin_publish(names: &Names) -> Vec<String> {
    vec!["$JS.API.>".into(), format!("$KV.{}.>", names.bucket())]
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Init {
    /// Writes `nats-server.conf`, `lattice.toml` (what `provision` makes),
    /// `admin.creds` and `<worker>.creds` (mode 0600) into `dir`.
    pub fn write(&self) -> Result<Vec<PathBuf>> {
        let names = Names::new(&self.lattice)?;
        self.check()?;
        std::fs::create_dir_all(&self.dir)?;
        let store = self.dir.join("jetstream");
        let (host, port) = self
            .listen
            .rsplit_once(':')
            .ok_or_else(|| err!(libc::EINVAL, "--listen {:?}: use HOST:PORT", self.listen))?;
        let mut conf = String::new();
        let _ = writeln!(
            conf,
            "# nats-server configuration for the peerfs lattice {:?}, written by `peerfs lattice init`.\n\
             # Each worker may publish only as the peers it serves, read only its own inbox\n\
             # (_INBOX_<worker>) and its peers' consumers; rerun init after moving a peer.\n\
             # Loopback only: for several machines set `listen` to a reachable address and add TLS\n\
             # (see docs/lattice.md).\n\
             listen: \"{host}:{port}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n\
             authorization {{\n  users: [",
            self.lattice,
            store.display()
        );
        let mut written = Vec::new();
        let url = format!("nats://{host}:{port}");
        let admin = self.creds_of(ADMIN, &[], &url)?;
        user_conf(
            &mut conf,
            &admin.user,
            &admin.password,
            &admin_publish(&names),
            &[format!("{}.>", names.inbox_prefix(ADMIN))],
        );
        written.push(self.write_creds(&admin, "the operator (peerfs lattice provision)")?);
        for w in &self.workers {
            let creds = self.creds_of(&w.name, &w.peers, &url)?;
            user_conf(
                &mut conf,
                &w.name,
                &creds.password,
                &publish_allow(&names, &w.peers),
                &subscribe_allow(&names, &w.name, &w.peers),
            );
            let what = format!("worker {} (peers: {})", w.name, w.peers.join(", "));
            written.push(self.write_creds(&creds, &what)?);
        }
        conf.push_str("  ]\n}\n");
        let path = self.dir.join("nats-server.conf");
        write_private(&path, &conf)?;
        written.insert(0, path);
        let plan = super::provision::Plan {
            lattice: self.lattice.clone(),
            url,
            max_bytes: self.max_bytes,
            max_pending: self.max_pending,
            workers: self
                .workers
                .iter()
                .map(|w| (w.name.clone(), w.peers.clone()))
                .collect(),
        };
        let path = self.dir.join(super::provision::PLAN);
        write_private(&path, &plan.to_toml()?)?;
        written.insert(1, path);
        Ok(written)
    }

    fn check(&self) -> Result<()> {
        if self.workers.is_empty() {
            return Err(err!(
                libc::EINVAL,
                "no workers: pass --worker NAME=PEER,..."
            ));
        }
        let mut seen = std::collections::HashMap::new();
        for w in &self.workers {
            if w.name == ADMIN {
                return Err(err!(
                    libc::EINVAL,
                    "--worker {ADMIN}: that name is the operator's (admin.creds); name the worker otherwise"
                ));
            }
            for p in &w.peers {
                if let Some(other) = seen.insert(p.clone(), w.name.clone()) {
                    return Err(err!(
                        libc::EINVAL,
                        "peer {p} is given to both {other} and {}: a peer has one worker",
                        w.name
                    ));
                }
            }
        }
        if self.max_bytes < 1 << 20 || self.max_pending == 0 {
            return Err(err!(
                libc::EINVAL,
                "--max-bytes must be at least 1 MiB and --max-pending at least 1"
            ));
        }
        Ok(())
    }

    /// `user`'s credentials: written again (a peer moved), a user keeps its
    /// secret, so that only the server needs a reload.
    fn creds_of(&self, user: &str, peers: &[String], url: &str) -> Result<Creds> {
        let path = self.dir.join(format!("{user}.creds"));
        let password = match Creds::read(&path) {
            Ok(c) if c.user == user => c.password,
            _ => secret()?,
        };
        Ok(Creds {
            user: user.to_string(),
            password,
            lattice: Some(self.lattice.clone()),
            url: Some(url.to_string()),
            peers: Some(peers.to_vec()),
        })
    }

    fn write_creds(&self, c: &Creds, what: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{}.creds", c.user));
        let text = toml::to_string(c).map_err(|e| err!(libc::EINVAL, "{e}"))?;
        write_private(
            &path,
            &format!("# peerfs lattice credentials of {what}\n{text}"),
        )?;
        Ok(path)
    }
}

/// One user of `nats-server.conf`.
fn user_conf(
    conf: &mut String,
    user: &str,
    password: &str,
    publish: &[String],
    subscribe: &[String],
) {
    let _ = writeln!(
        conf,
        "    {{\n      user: \"{user}\"\n      password: \"{password}\"\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n        allow_responses: true\n      }}\n    }}",
        quoted(publish),
        quoted(subscribe)
    );
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_parse_and_refuse_shared_peers() {
        let w = Worker::parse("w1=alice,carol").unwrap();
        assert_eq!(w.peers, vec!["alice", "carol"]);
        assert!(Worker::parse("w1").is_err());
        assert!(Worker::parse("w 1=alice").is_err());
        let dir = tempfile::tempdir().unwrap();
        let init = Init {
            dir: dir.path().into(),
            lattice: "lab".into(),
            listen: "127.0.0.1:4222".into(),
            workers: vec![w.clone(), Worker::parse("w2=alice").unwrap()],
            max_bytes: 1 << 30,
            max_pending: 10_000,
        };
        assert!(init.write().is_err());
    }

    #[test]
    fn permissions_name_only_the_workers_peers() {
        let n = Names::new("lab").unwrap();
        let allow = publish_allow(&n, &["alice".into()]);
        assert!(allow.contains(&"peerfs.lab.msg.*.alice".to_string()));
        assert!(allow.contains(&"$KV.peerfs_lab.alice".to_string()));
        assert!(!allow.iter().any(|s| s.contains("bob")));
        assert!(!allow.iter().any(|s| s == ">" || s == "$JS.API.>"));
        // No inbox but replies; no stream or message consumer changes.
        assert!(!allow.iter().any(|s| s.starts_with("_INBOX")));
        assert!(!allow.iter().any(|s| s.contains("STREAM.CREATE")
            || s.contains("STREAM.UPDATE")
            || s.contains("DELETE")
            || s.contains(&format!("CREATE.{}", n.stream()))));
        let sub = subscribe_allow(&n, "w1", &["alice".into()]);
        assert_eq!(sub[0], "_INBOX_w1.>");
        assert!(!sub
            .iter()
            .any(|s| s.contains("bob") || s.starts_with("_INBOX.")));
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Creds {
            user: "w1".into(),
            password: "hunter2".into(),
            lattice: None,
            url: None,
            peers: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
