//! Staging files: files that live only in memory (made and not yet closed, or a
//! staging name such as `inbox/.x` or a `modules/` draft), keyed by folder and
//! name. Every change of their bytes goes through [`Staging`], which keeps the
//! owning peer's budget counter (`super::budget`) equal to what they hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::budget::Budget;
use super::Node;
use crate::error::Result;

/// A file that exists only in memory: created and not yet flushed, or a staging
/// name (`.x`, `x~`) in an inbox or modules folder.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub(super) data: Vec<u8>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime_ns: i64,
    /// When it was made or last changed (contents, mode or times).
    pub(super) ctime_ns: i64,
    /// Permission bits set by chmod before it was stored (state files).
    pub(super) mode: Option<u32>,
}

/// A staging file's folder and name.
pub(super) type Key = (Node, String);

/// The staging files of the mount, counted against their peers' budgets.
pub(super) struct Staging {
    files: Mutex<HashMap<Key, Staged>>,
    budget: Arc<Budget>,
}

impl Staging {
    pub(super) fn new(budget: Arc<Budget>) -> Staging {
        Staging {
            files: Mutex::new(HashMap::new()),
            budget,
        }
    }

    /// Moves the counter of the peer acting in `key`'s folder from `from` bytes to `to`.
    fn count(&self, key: &Key, from: usize, to: usize) {
        if from != to {
            if let Some(peer) = key.0.peer() {
                self.budget.of(peer).adjust(from as u64, to as u64);
            }
        }
    }

    /// A copy of the staging file at `key`.
    pub(super) fn get(&self, key: &Key) -> Option<Staged> {
        self.files.lock().unwrap().get(key).cloned()
    }

    pub(super) fn insert(&self, key: Key, s: Staged) {
        let new = s.data.len();
        let old = self.files.lock().unwrap().insert(key.clone(), s);
        self.count(&key, old.map_or(0, |o| o.data.len()), new);
    }

    pub(super) fn remove(&self, key: &Key) -> Option<Staged> {
        let old = self.files.lock().unwrap().remove(key);
        if let Some(o) = &old {
            self.count(key, o.data.len(), 0);
        }
        old
    }

    /// Drops `from` and keeps `s` at `to`, in one step (a rename between staging
    /// names).
    pub(super) fn rename(&self, from: &Key, to: Key, s: Staged) {
        let new = s.data.len();
        let (gone, old) = {
            let mut files = self.files.lock().unwrap();
            let gone = files.remove(from);
            (gone, files.insert(to.clone(), s))
        };
        self.count(from, gone.map_or(0, |g| g.data.len()), 0);
        self.count(&to, old.map_or(0, |o| o.data.len()), new);
    }

    /// Changes the staging file at `key` with `f`, if there is one; a change of
    /// its size is counted, unchecked (see [`Staging::resize`] for a checked one).
    pub(super) fn update<R>(&self, key: &Key, f: impl FnOnce(&mut Staged) -> R) -> Option<R> {
        let (r, from, to) = {
            let mut files = self.files.lock().unwrap();
            let s = files.get_mut(key)?;
            let from = s.data.len();
            let r = f(s);
            (r, from, s.data.len())
        };
        self.count(key, from, to);
        Some(r)
    }

    /// The staging file at `key` with `data` as its bytes (made, owned by
    /// `uid`/`gid`, if there is none), its times now.
    pub(super) fn store(&self, key: Key, data: Vec<u8>, uid: u32, gid: u32, now_ns: i64) {
        let (from, to) = {
            let mut files = self.files.lock().unwrap();
            let e = files.entry(key.clone()).or_insert(Staged {
                data: vec![],
                uid,
                gid,
                mtime_ns: now_ns,
                ctime_ns: now_ns,
                mode: None,
            });
            let from = e.data.len();
            e.data = data;
            e.mtime_ns = now_ns;
            e.ctime_ns = now_ns;
            (from, e.data.len())
        };
        self.count(&key, from, to);
    }

    /// truncate(2) of the staging file at `key` to `size`: growth is checked
    /// against the budget (`EDQUOT`, nothing changed). `Ok(false)`: no such file.
    pub(super) fn resize(&self, key: &Key, size: u64, now_ns: i64) -> Result<bool> {
        let mut files = self.files.lock().unwrap();
        let s = files.get_mut(key);
        let len = s.as_ref().map_or(0, |s| s.data.len() as u64);
        if let Some(peer) = key.0.peer() {
            let held = self.budget.of(peer);
            if s.is_none() {
                // No file to cut (refused below), but past the budget it is
                // EDQUOT first, as ever.
                held.check(size)?;
            } else if size > len {
                held.take(size - len)?;
            } else {
                held.adjust(len, size);
            }
        }
        let Some(s) = s else {
            return Ok(false);
        };
        s.data.resize(size as usize, 0);
        s.mtime_ns = now_ns;
        s.ctime_ns = now_ns;
        Ok(true)
    }

    /// The names of the staging files in `parent`.
    pub(super) fn names_in(&self, parent: &Node) -> Vec<String> {
        let files = self.files.lock().unwrap();
        files
            .keys()
            .filter(|(p, _)| p == parent)
            .map(|(_, n)| n.clone())
            .collect()
    }
}
