//! The fence of a peer's replica: a lease object, `PREFIX/<peer>/lease`,
//! naming the worker that writes the peer's replica and its epoch. Only the
//! lease's holder uploads; a worker that takes a peer over (a move: the
//! peer restored from the replica, or its file brought by hand) takes the
//! lease with the epoch one more, so the worker it took the peer from finds
//! its epoch superseded at its next upload and stops.
//!
//! Writes are conditional. On S3: create-if-absent (`PutMode::Create`, an
//! `If-None-Match: *` put), then compare-and-set on the object's ETag
//! (`PutMode::Update`, `If-Match`). `object_store`'s local folder has no
//! compare-and-set (`PutMode::Update` is not implemented there), so for a
//! `file://` replica the same compare-and-set is made here: under flock(2) on
//! `<peer>/lease.lock` (never replaced), the lease's bytes are compared with
//! those read before and the new lease is renamed over it.
//!
//! Which epoch a worker holds is kept in `DATA/replica/NAME.lease`: a worker
//! that finds the lease at its own epoch holds it (its restart), one with an
//! older epoch was superseded (fenced), and one with no record takes it over.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::remote::os_err;
use crate::error::{err, Result};

/// The lease object's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub epoch: u64,
    /// Who holds it: host, process and data folder.
    pub holder: String,
    /// When it was taken (RFC 3339).
    pub at: String,
}

/// What a compare-and-set compares: the object's ETag (S3) or its bytes
/// (a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Tag(Option<String>, Option<String>),
    Bytes(Vec<u8>),
}

/// The outcome of taking or checking a lease.
#[derive(Debug, Clone)]
pub enum Held {
    /// Ours, at this epoch and version.
    Ours(u64, Version),
    /// Another worker's, at a later epoch than ours.
    Superseded(Lease),
}

/// Where leases are written: the object store, and for a `file://` replica its folder.
#[derive(Clone)]
pub struct Fence {
    pub store: Arc<dyn ObjectStore>,
    pub folder: Option<PathBuf>,
    pub holder: String,
}

/// The epoch this data folder holds of `name`'s lease (`None`: never held, or
/// the peer came from elsewhere).
pub fn local_epoch(data: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(record(data, name)).ok()?;
    text.trim().parse().ok()
}

pub fn save_epoch(data: &Path, name: &str, epoch: u64) -> Result<()> {
    let f = record(data, name);
    let tmp = f.with_extension("lease.tmp");
    std::fs::write(&tmp, format!("{epoch}\n"))?;
    std::fs::rename(&tmp, &f)?;
    Ok(())
}

/// `DATA/replica/NAME.lease`.
pub fn record(data: &Path, name: &str) -> PathBuf {
    data.join("replica").join(format!("{name}.lease"))
}

/// Whether this data folder was the last to hold `peer`'s lease (its record
/// is at the lease's epoch): a peer removed here, not moved here.
pub fn held_here_last(opts: &super::Options, data: &Path, peer: &str) -> Result<bool> {
    let Some(mine) = local_epoch(data, peer) else {
        return Ok(false);
    };
    let (store, prefix) = super::remote::open(opts, false)?;
    let fence = Fence {
        store,
        folder: match &opts.url {
            super::Url::File(dir) => Some(dir.clone()),
            super::Url::S3 { .. } => None,
        },
        holder: String::new(),
    };
    let key = super::remote::Names::new(&prefix, peer).lease();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lease = rt.block_on(fence.read(&key))?;
    Ok(lease.is_some_and(|(l, _)| l.epoch == mine))
}

impl Fence {
    /// Takes `key`'s lease (epoch one more than the lease's when `local` is
    /// `None`), keeps it (`local` is its epoch), or finds it superseded.
    pub async fn take(&self, key: &Key, local: Option<u64>) -> Result<Held> {
        for _ in 0..4 {
            let (epoch, expected) = match self.read(key).await? {
                None => (local.unwrap_or(0) + 1, None),
                Some((l, v)) if Some(l.epoch) == local => return Ok(Held::Ours(l.epoch, v)),
                Some((l, _)) if local.is_some_and(|e| l.epoch > e) => {
                    return Ok(Held::Superseded(l))
                }
                // Never held here (or the object went back: ours again, past it).
                Some((l, v)) => (l.epoch.max(local.unwrap_or(0)) + 1, Some(v)),
            };
            let lease = Lease {
                epoch,
                holder: self.holder.clone(),
                at: crate::util::rfc3339(crate::util::now_ns()),
            };
            if let Some(v) = self.write(key, expected.as_ref(), &lease).await? {
                return Ok(Held::Ours(epoch, v));
            }
        }
        Err(err!(
            libc::EAGAIN,
            "replica: the lease {key} changed at every try: another worker takes it at the same time"
        ))
    }

    /// Whether the lease is still ours (`Ours`, its version unchanged) or
    /// was taken by another worker since.
    pub async fn check(&self, key: &Key, epoch: u64, version: &Version) -> Result<Held> {
        if let (Version::Tag(Some(tag), _), None) = (version, &self.folder) {
            // A HEAD: the body is read only when the tag changed.
            match self.store.head(key).await {
                Ok(m) if m.e_tag.as_ref() == Some(tag) => {
                    return Ok(Held::Ours(epoch, version.clone()))
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(os_err(&format!("reading {key}"), e)),
            }
        }
        match self.read(key).await? {
            Some((l, _)) if l.epoch > epoch => Ok(Held::Superseded(l)),
            // Gone, or rewritten at our epoch or an older one: ours again.
            _ => self.take(key, Some(epoch)).await,
        }
    }

    async fn read(&self, key: &Key) -> Result<Option<(Lease, Version)>> {
        let (bytes, version) = match &self.folder {
            Some(dir) => match std::fs::read(dir.join(key.as_ref())) {
                Ok(b) => (b.clone(), Version::Bytes(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            None => match self.store.get(key).await {
                Ok(r) => {
                    let v = Version::Tag(r.meta.e_tag.clone(), r.meta.version.clone());
                    let b = r
                        .bytes()
                        .await
                        .map_err(|e| os_err(&format!("reading {key}"), e))?;
                    (b.to_vec(), v)
                }
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(os_err(&format!("reading {key}"), e)),
            },
        };
        let lease: Lease = serde_json::from_slice(&bytes).map_err(|e| {
            err!(
                libc::EIO,
                "replica: the lease {key} is not a lease ({e}): remove it to let a worker take it"
            )
        })?;
        Ok(Some((lease, version)))
    }

    /// Writes `lease` if the object is still `expected` (absent: `None`).
    /// `None` when another write came first.
    async fn write(
        &self,
        key: &Key,
        expected: Option<&Version>,
        lease: &Lease,
    ) -> Result<Option<Version>> {
        let body = serde_json::to_vec(lease)?;
        if let Some(dir) = &self.folder {
            return write_in_folder(&dir.join(key.as_ref()), expected, &body);
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(Version::Tag(e_tag, version)) => PutMode::Update(UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            }),
            Some(Version::Bytes(_)) => {
                return Err(err!(
                    libc::EINVAL,
                    "replica: a folder's lease version on S3"
                ))
            }
        };
        match self
            .store
            .put_opts(key, PutPayload::from(body), mode.into())
            .await
        {
            Ok(r) => Ok(Some(Version::Tag(r.e_tag, r.version))),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(None),
            Err(e) => Err(os_err(&format!("storing {key}"), e)),
        }
    }
}

/// The compare-and-set of a folder: under flock(2) on `FILE.lock`, the lease
/// is compared with `expected` and replaced by a rename.
fn write_in_folder(
    file: &Path,
    expected: Option<&Version>,
    body: &[u8],
) -> Result<Option<Version>> {
    let dir = file.parent().expect("a lease has a folder");
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lease.lock"))?;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let now = match std::fs::read(file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let same = match (expected, &now) {
        (None, None) => true,
        (Some(Version::Bytes(b)), Some(n)) => b == n,
        _ => false,
    };
    if !same {
        return Ok(None);
    }
    let tmp = dir.join(".lease.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    crate::util::sync_dir(dir);
    // (The lock goes with `lock`.)
    Ok(Some(Version::Bytes(body.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(dir: &Path, who: &str) -> Fence {
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
        Fence {
            store: Arc::new(store),
            folder: Some(dir.to_path_buf()),
            holder: who.into(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The first worker creates the lease at epoch 1; a worker taking the
    /// peer over gets epoch 2; the first one's check then finds it
    /// superseded, and so does its restart with its old epoch.
    #[test]
    fn a_takeover_supersedes_the_old_holder() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from("alice/lease");
        let (w1, w3) = (fence(dir.path(), "w1"), fence(dir.path(), "w3"));
        rt().block_on(async {
            let Held::Ours(1, v1) = w1.take(&key, None).await.unwrap() else {
                panic!("w1 holds epoch 1");
            };
            assert!(matches!(
                w1.check(&key, 1, &v1).await.unwrap(),
                Held::Ours(1, _)
            ));
            // A restart of w1 keeps its epoch, without a write.
            assert!(matches!(
                w1.take(&key, Some(1)).await.unwrap(),
                Held::Ours(1, _)
            ));
            let Held::Ours(2, _) = w3.take(&key, None).await.unwrap() else {
                panic!("w3 takes epoch 2");
            };
            match w1.check(&key, 1, &v1).await.unwrap() {
                Held::Superseded(l) => assert_eq!((l.epoch, l.holder.as_str()), (2, "w3")),
                h => panic!("w1 still holds it: {h:?}"),
            }
            assert!(matches!(
                w1.take(&key, Some(1)).await.unwrap(),
                Held::Superseded(_)
            ));
        });
    }

    /// A compare-and-set against a version that changed meanwhile writes nothing.
    #[test]
    fn a_stale_compare_and_set_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from("bob/lease");
        let f = fence(dir.path(), "w1");
        rt().block_on(async {
            let Held::Ours(_, v1) = f.take(&key, None).await.unwrap() else {
                panic!()
            };
            let l = |epoch| Lease {
                epoch,
                holder: "x".into(),
                at: String::new(),
            };
            assert!(f.write(&key, Some(&v1), &l(2)).await.unwrap().is_some());
            assert!(f.write(&key, Some(&v1), &l(3)).await.unwrap().is_none());
            assert!(f.write(&key, None, &l(4)).await.unwrap().is_none());
            let (now, _) = f.read(&key).await.unwrap().unwrap();
            assert_eq!(now.epoch, 2);
        });
    }
}
