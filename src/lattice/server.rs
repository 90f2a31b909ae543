//! `peerfs lattice init`: the server's configuration and one credentials file per
//! worker, so that operators never write permissions by hand.
//!
//! Each worker is a NATS user with a generated password. It may publish only:
//! - messages whose sender is one of its peers: `peerfs.<l>.msg.*.<peer>`;
//! - its peers' entries of the directory: `$KV.peerfs_<l>.<peer>`;
//! - the JetStream API calls on the lattice's stream and bucket (create and read
//!   them, its peers' consumers, the directory's watch) and their acknowledgements;
//! - replies (`_INBOX.>`).
//!
//! Identity follows: a worker cannot publish a message as a peer it does not
//! serve, nor claim such a peer in the directory, whatever its code does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Names;
use crate::error::err;
use crate::error::Result;
use crate::peer::name::check_peer_name;

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

/// A worker's credentials file: `user` and `password` (TOML).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Creds {
    pub user: String,
    pub password: String,
    /// The lattice these credentials are for.
    #[serde(default)]
    pub lattice: Option<String>,
    /// Where the server listens (a hint for `--nats`).
    #[serde(default)]
    pub url: Option<String>,
}

impl Creds {
    pub fn read(path: &Path) -> Result<Creds> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "credentials {}: {e}",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| err!(libc::EINVAL, "credentials {}: {e}", path.display()))
    }
}

/// What `init` writes.
pub struct Init {
    pub dir: PathBuf,
    pub lattice: String,
    pub listen: String,
    pub workers: Vec<Worker>,
}

/// A secret of 32 random hex digits from the kernel.
pub(super) fn secret() -> Result<String> {
    let mut b = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The publish permissions of a worker serving `peers`.
pub fn publish_allow(names: &Names, peers: &[String]) -> Vec<String> {
    let l = &names.lattice;
    let stream = names.stream();
    let kv = format!("KV_{}", names.bucket());
    let mut v = Vec::new();
    for p in peers {
        v.push(format!("peerfs.{l}.msg.*.{p}"));
        v.push(format!("$KV.{}.{p}", names.bucket()));
        let c = names.consumer(p);
        v.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{c}.>"));
        v.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{c}"));
        v.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{c}"));
        v.push(format!("$JS.API.CONSUMER.INFO.{stream}.{c}"));
        v.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{c}"));
        v.push(format!("$JS.ACK.{stream}.{c}.>"));
        // Reads of other peers' state as this peer (request/reply).
        v.push(format!("peerfs.{l}.read.*.{p}"));
        // Whether another process of this worker serves the peer now.
        v.push(names.alive_subject(p));
    }
    v.push("$JS.API.INFO".into());
    for s in [&stream, &kv] {
        v.push(format!("$JS.API.STREAM.INFO.{s}"));
        v.push(format!("$JS.API.STREAM.CREATE.{s}"));
    }
    // The directory: reads, and the ordered consumers of its watch and key list.
    v.push(format!("$JS.API.STREAM.MSG.GET.{kv}"));
    v.push(format!("$JS.API.DIRECT.GET.{kv}.>"));
    v.push(format!("$JS.API.CONSUMER.CREATE.{kv}"));
    v.push(format!("$JS.API.CONSUMER.CREATE.{kv}.>"));
    v.push(format!("$JS.API.CONSUMER.DELETE.{kv}.>"));
    v.push(format!("$JS.API.CONSUMER.INFO.{kv}.>"));
    v.push(format!("$JS.FC.{kv}.>"));
    v.push("_INBOX.>".into());
    v
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Init {
    /// Writes `nats-server.conf` and `<worker>.creds` (mode 0600) into `dir`.
    pub fn write(&self) -> Result<Vec<PathBuf>> {
        let names = Names::new(&self.lattice)?;
        if self.workers.is_empty() {
            return Err(err!(
                libc::EINVAL,
                "no workers: pass --worker NAME=PEER,..."
            ));
        }
        let mut seen = std::collections::HashMap::new();
        for w in &self.workers {
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
             # Each worker may publish only as the peers it serves; rerun init after moving a peer.\n\
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
        for w in &self.workers {
            let path = self.dir.join(format!("{}.creds", w.name));
            // Written again (a peer moved): the worker keeps its secret, so that
            // only the server needs a reload.
            let password = match Creds::read(&path) {
                Ok(c) if c.user == w.name => c.password,
                _ => secret()?,
            };
            let allow = publish_allow(&names, &w.peers);
            let mut sub = vec!["_INBOX.>".to_string()];
            sub.extend(w.peers.iter().flat_map(|p| {
                [
                    format!("peerfs.{}.read.{p}.*", names.lattice),
                    names.alive_subject(p),
                ]
            }));
            let _ = writeln!(
                conf,
                "    {{\n      user: \"{}\"\n      password: \"{password}\"\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n      }}\n    }}",
                w.name,
                quoted(&allow),
                quoted(&sub)
            );
            let creds = Creds {
                user: w.name.clone(),
                password,
                lattice: Some(self.lattice.clone()),
                url: Some(url.clone()),
            };
            write_private(
                &path,
                &format!(
                    "# peerfs lattice credentials of worker {} (peers: {})\n{}",
                    w.name,
                    w.peers.join(", "),
                    toml::to_string(&creds).map_err(|e| err!(libc::EINVAL, "{e}"))?
                ),
            )?;
            written.push(path);
        }
        conf.push_str("  ]\n}\n");
        let path = self.dir.join("nats-server.conf");
        write_private(&path, &conf)?;
        written.insert(0, path);
        Ok(written)
    }
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
    }
}
