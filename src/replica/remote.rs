//! Where replicas live: the object store a `replica.url` names (S3 or a local
//! folder, one `object_store` trait), the names of a peer's objects there, and
//! the listing a restore and retention read back.
//!
//! A peer's replica, under `PREFIX/<peer>/`:
//! - `lease`: the worker that writes the peer's replica, and its epoch
//!   (`lease.rs`);
//! - `<gen>/snapshot`: the store's whole file as of a point of its log;
//! - `<gen>/owner`: `uid:gid` of the peer's owner when the generation began;
//! - `<gen>/wal/<log:08x>-<start:016x>-<end:016x>`: the whole transactions
//!   between bytes `start` and `end` of the `log`-th log of the generation (it
//!   counts the log's restarts), as frames SQLite wrote, reduced to the last
//!   image of each page (`wal::compact`).
//!
//! A generation (`gen`, a ULID: its time is when it began) is a snapshot and the
//! transactions after it, without a gap. An object's time (`last_modified`) is
//! when it was stored: a restore "as of T" takes the objects stored by T.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore};

use super::{Options, Url};
use crate::error::{err, Error, Result};

/// An object store error as a peerfs error (the object's name and the reason).
pub fn os_err(what: &str, e: object_store::Error) -> Error {
    let errno = match &e {
        object_store::Error::NotFound { .. } => libc::ENOENT,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            libc::EEXIST
        }
        _ => libc::EIO,
    };
    err!(errno, "replica: {what}: {e}").with_source(e)
}

/// The object store of `o.url`, and the prefix under it. A folder is made
/// (private: it holds every peer's data) when `make` (the daemon), and must
/// exist otherwise (a restore).
pub fn open(o: &Options, make: bool) -> Result<(Arc<dyn ObjectStore>, Key)> {
    match &o.url {
        Url::File(dir) => {
            if make {
                crate::peer::private_dir(dir)?;
            } else if !dir.is_dir() {
                return Err(err!(
                    libc::ENOENT,
                    "replica folder {} does not exist: check --from",
                    dir.display()
                ));
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| os_err(&format!("folder {}", dir.display()), e))?;
            Ok((Arc::new(fs), Key::default()))
        }
        Url::S3 { bucket, prefix } => {
            // reqwest's rustls takes the process's provider: ring, as async-nats's.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(file) = &o.credentials {
                let (id, secret, token) = read_credentials(file)?;
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = token {
                    b = b.with_token(t);
                }
            }
            if let Some(e) = &o.endpoint {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            if let Some(r) = &o.region {
                b = b.with_region(r);
            }
            let s3 = b
                .with_retry(object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..Default::default()
                })
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .build()
                .map_err(|e| os_err(&format!("bucket {bucket}"), e))?;
            Ok((Arc::new(s3), Key::from(prefix.as_str())))
        }
    }
}

/// `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token` from
/// a credentials file (`key = value` lines; sections and comments ignored).
fn read_credentials(file: &PathBuf) -> Result<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        err!(
            e.raw_os_error().unwrap_or(libc::EIO),
            "replica credentials file {}: {e}",
            file.display()
        )
    })?;
    let get = |k: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(a, _)| a.trim().eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim().to_string())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok((id, secret, get("aws_session_token"))),
        _ => Err(err!(
            libc::EINVAL,
            "replica credentials file {} lacks aws_access_key_id or aws_secret_access_key",
            file.display()
        )),
    }
}

/// The names of a peer's objects.
#[derive(Clone)]
pub struct Names {
    pub peer: Key,
}

impl Names {
    pub fn new(prefix: &Key, peer: &str) -> Names {
        Names {
            peer: prefix.clone().join(peer),
        }
    }

    pub fn snapshot(&self, gen: &str) -> Key {
        self.peer.clone().join(gen).join("snapshot")
    }

    /// The fence: which worker writes this peer's replica (`lease.rs`).
    pub fn lease(&self) -> Key {
        self.peer.clone().join("lease")
    }

    pub fn owner(&self, gen: &str) -> Key {
        self.peer.clone().join(gen).join("owner")
    }

    pub fn segment(&self, gen: &str, log: u32, start: u64, end: u64) -> Key {
        self.peer
            .clone()
            .join(gen)
            .join("wal")
            .join(format!("{log:08x}-{start:016x}-{end:016x}"))
    }
}

/// One object of a peer's replica, as listed.
#[derive(Debug, Clone)]
pub enum Object {
    Snapshot {
        gen: String,
    },
    Owner {
        gen: String,
    },
    Segment {
        gen: String,
        log: u32,
        start: u64,
        end: u64,
    },
}

/// Every object of a peer's replica, with its listing (time, size).
pub async fn list(store: &dyn ObjectStore, n: &Names) -> Result<Vec<(Object, ObjectMeta)>> {
    let metas: Vec<ObjectMeta> = store
        .list(Some(&n.peer))
        .try_collect()
        .await
        .map_err(|e| os_err(&format!("listing {}", n.peer), e))?;
    let base: Vec<_> = n.peer.parts().collect();
    let mut out = Vec::new();
    for m in metas {
        let parts: Vec<String> = m
            .location
            .parts()
            .skip(base.len())
            .map(|p| p.as_ref().to_string())
            .collect();
        let obj = match parts.as_slice() {
            [gen, s] if s == "snapshot" => Object::Snapshot { gen: gen.clone() },
            [gen, s] if s == "owner" => Object::Owner { gen: gen.clone() },
            [gen, w, name] if w == "wal" => {
                let f: Vec<&str> = name.split('-').collect();
                let [l, s, e] = f.as_slice() else {
                    continue;
                };
                let (Ok(log), Ok(start), Ok(end)) = (
                    u32::from_str_radix(l, 16),
                    u64::from_str_radix(s, 16),
                    u64::from_str_radix(e, 16),
                ) else {
                    continue;
                };
                Object::Segment {
                    gen: gen.clone(),
                    log,
                    start,
                    end,
                }
            }
            _ => continue,
        };
        out.push((obj, m));
    }
    Ok(out)
}
