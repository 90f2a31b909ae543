//! What a reader sees of a peer's state: only the keys a check (the owner's
//! policy) lets it read, and the folders that hold at least one of them. The
//! mount's `peers/<other>/state/` uses it for a peer of this daemon, and the
//! lattice's owner side answers a remote reader with the same functions, so
//! both see exactly the same thing.

use super::Peer;
use crate::error::err;
use crate::error::Result;
use crate::store::DirEntry;

/// Keys looked at to decide whether a folder holds a readable one.
const FOLDER_SCAN: usize = 1_000_000;

fn under(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    }
}

impl Peer {
    /// `key` as a reader allowed `may` sees it: a readable value (a file, with
    /// its size and time), a folder holding one (`is_dir`), or nothing.
    pub fn view_stat(&self, key: &str, may: impl Fn(&str) -> bool) -> Result<Option<DirEntry>> {
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        match self.read(|s| s.stat_key(key))? {
            Some(Some(st)) if may(key) => Ok(Some(DirEntry {
                name,
                is_dir: false,
                size: st.size,
                mtime_ns: st.mtime_ns,
            })),
            Some(None) => {
                let keys = self.read(|s| s.keys(&under(key), FOLDER_SCAN))?;
                Ok(keys.iter().any(|k| may(k)).then_some(DirEntry {
                    name,
                    is_dir: true,
                    size: 0,
                    mtime_ns: 0,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The children of the folder `dir` ("" for the top) a reader allowed `may`
    /// sees, sorted by name.
    pub fn view_list(&self, dir: &str, may: impl Fn(&str) -> bool) -> Result<Vec<DirEntry>> {
        let prefix = under(dir);
        let (entries, keys) =
            self.read(|s| Ok((s.list_dir(dir)?, s.keys(&prefix, FOLDER_SCAN)?)))?;
        // The folders that hold a readable key, at any depth.
        let mut folders = std::collections::HashSet::new();
        for k in &keys {
            if let Some((first, _)) = k[prefix.len()..].split_once('/') {
                if !folders.contains(first) && may(k) {
                    folders.insert(first.to_string());
                }
            }
        }
        Ok(entries
            .into_iter()
            .filter(|e| {
                if e.is_dir {
                    folders.contains(&e.name)
                } else {
                    may(&format!("{prefix}{}", e.name))
                }
            })
            .collect())
    }

    /// The bytes of `key` (what the owner's `state/` file shows), for a reader
    /// allowed `may`; `ENOENT` when it may not read it or there is no such value.
    pub fn view_bytes(&self, key: &str, may: impl Fn(&str) -> bool) -> Result<Vec<u8>> {
        if !may(key) {
            return Err(err!(
                libc::ENOENT,
                "no readable key {key:?} of {}",
                self.name
            ));
        }
        self.read(|s| s.get_bytes(key))?
            .ok_or_else(|| err!(libc::ENOENT, "no state key {key:?} of {}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn peer(keys: &[&str]) -> (tempfile::TempDir, Peer) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("bob.sqlite"), true).unwrap();
        let p = Peer::new("bob".into(), Box::new(s));
        for k in keys {
            p.writer
                .lock()
                .unwrap()
                .set(k, &serde_json::json!(k))
                .unwrap();
        }
        (d, p)
    }

    fn names(v: Vec<DirEntry>) -> Vec<(String, bool)> {
        v.into_iter().map(|e| (e.name, e.is_dir)).collect()
    }

    #[test]
    fn only_readable_keys_and_the_folders_holding_them() {
        let (_d, p) = peer(&[
            "pub/a",
            "pub/deep/b",
            "secret",
            "other/c",
            "mixed/no",
            "mixed/pub",
        ]);
        let may = |k: &str| k.starts_with("pub/") || k == "mixed/pub";
        let s = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(n, d)| (n.to_string(), *d)).collect()
        };
        assert_eq!(
            names(p.view_list("", may).unwrap()),
            s(&[("mixed", true), ("pub", true)])
        );
        assert_eq!(
            names(p.view_list("pub", may).unwrap()),
            s(&[("a", false), ("deep", true)])
        );
        assert_eq!(
            names(p.view_list("mixed", may).unwrap()),
            s(&[("pub", false)])
        );
        assert!(p.view_list("other", may).unwrap().is_empty());

        let a = p.view_stat("pub/a", may).unwrap().unwrap();
        assert_eq!((a.name.as_str(), a.is_dir, a.size), ("a", false, 5));
        assert!(p.view_stat("pub/deep", may).unwrap().unwrap().is_dir);
        for hidden in ["secret", "other", "other/c", "mixed/no", "none"] {
            assert_eq!(p.view_stat(hidden, may).unwrap(), None, "{hidden}");
        }
        assert_eq!(p.view_bytes("pub/a", may).unwrap(), b"pub/a");
        assert_eq!(p.view_bytes("secret", may).unwrap_err().errno, libc::ENOENT);
        assert_eq!(
            p.view_bytes("pub/none", may).unwrap_err().errno,
            libc::ENOENT
        );
    }
}
