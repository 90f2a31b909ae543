//! The inode table: the adapter's only state. It maps the vfs's path identities
//! (`Node`) to the inode numbers the kernel knows, and counts the kernel's lookups so
//! that an inode is dropped when the kernel forgets it.
//!
//! Invariants:
//! - ino 1 is the root, always present, never forgotten.
//! - A node's number is a hash of the node with the top bit set, so readdir can give
//!   every entry the number a later lookup will give it without keeping anything.
//!   A number is only handed out while no other inode holds it: if the hash is
//!   taken (a collision, or an inode renamed away from this path that the kernel
//!   still holds), the node gets a number from a counter (2, 3, ...) that is never
//!   reused. So a number the kernel holds never names a different node.
//! - `by_node` and `by_ino` always describe the same set of pairs.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

struct Slot<K> {
    key: K,
    lookups: u64,
}

struct Maps<K> {
    by_node: HashMap<K, u64>,
    by_ino: HashMap<u64, Slot<K>>,
}

/// Generic over the key so that the table is tested without the vfs's `Node`.
pub struct InodeTable<K> {
    next: AtomicU64,
    maps: Mutex<Maps<K>>,
    hash: fn(&K) -> u64,
}

/// The number a node gets when it is free: a fixed-key SipHash (the same in every
/// run) with the top bit set, so it never meets the root or the counter's numbers.
fn hashed<K: Hash>(key: &K) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() | (1 << 63)
}

impl<K: Clone + Eq + Hash> InodeTable<K> {
    pub fn new(root: K) -> InodeTable<K> {
        Self::with_hash(root, hashed::<K>)
    }

    fn with_hash(root: K, hash: fn(&K) -> u64) -> InodeTable<K> {
        let mut by_node = HashMap::new();
        let mut by_ino = HashMap::new();
        by_node.insert(root.clone(), ROOT_INO);
        by_ino.insert(
            ROOT_INO,
            Slot {
                key: root,
                lookups: 0,
            },
        );
        InodeTable {
            next: AtomicU64::new(ROOT_INO + 1),
            maps: Mutex::new(Maps { by_node, by_ino }),
            hash,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps<K>> {
        // A panic while holding the lock leaves the maps consistent (every mutation
        // below is a pair of inserts/removes with no panicking code between them).
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ino_locked(&self, maps: &mut Maps<K>, key: &K) -> u64 {
        if let Some(&ino) = maps.by_node.get(key) {
            return ino;
        }
        let h = (self.hash)(key);
        let ino = if maps.by_ino.contains_key(&h) {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            h
        };
        maps.by_node.insert(key.clone(), ino);
        maps.by_ino.insert(
            ino,
            Slot {
                key: key.clone(),
                lookups: 0,
            },
        );
        ino
    }

    /// The number `key` has, or the one a lookup would give it now, without
    /// keeping anything (readdir: the kernel does not hold what it lists).
    pub fn ino(&self, key: &K) -> u64 {
        let maps = self.lock();
        if let Some(&ino) = maps.by_node.get(key) {
            return ino;
        }
        // If the hash is taken (a collision, or a renamed inode the kernel still
        // holds), a lookup will hand out a counter number instead; until then the
        // listing shows the hash (only `ls -i` could tell).
        (self.hash)(key)
    }

    /// The ino of `key`, counting one kernel lookup (lookup, create, mkdir). Call it
    /// before the reply is sent, so that a FORGET can never overtake the count.
    pub fn lookup(&self, key: &K) -> u64 {
        let mut maps = self.lock();
        let ino = self.ino_locked(&mut maps, key);
        if let Some(slot) = maps.by_ino.get_mut(&ino) {
            slot.lookups += 1;
        }
        ino
    }

    /// The ino of `key` if it has one (invalidation: a node the kernel never saw
    /// needs no invalidating).
    pub fn get(&self, key: &K) -> Option<u64> {
        self.lock().by_node.get(key).copied()
    }

    /// The inos whose keys match `f` (invalidating every file a change may touch).
    pub fn matching(&self, f: impl Fn(&K) -> bool) -> Vec<u64> {
        self.lock()
            .by_node
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, &ino)| ino)
            .collect()
    }

    /// The key an ino stands for.
    pub fn key(&self, ino: u64) -> Option<K> {
        self.lock().by_ino.get(&ino).map(|s| s.key.clone())
    }

    /// A rename succeeded: the kernel now holds `from`'s inode at `to`'s path, so the
    /// ino follows the rename. `to` is None when the new path cannot be resolved (a
    /// script renamed into an inbox may already be gone): the ino then keeps its old
    /// key until forgotten, but a new file at `from`'s path gets a fresh ino. An inode
    /// that `to` replaced keeps its number and key until forgotten (forget leaves the
    /// reverse mapping alone once it points elsewhere).
    pub fn renamed(&self, from: &K, to: Option<&K>) {
        let mut maps = self.lock();
        let Some(ino) = maps.by_node.get(from).copied() else {
            return;
        };
        if ino == ROOT_INO {
            return;
        }
        maps.by_node.remove(from);
        if let Some(to) = to {
            maps.by_node.insert(to.clone(), ino);
            if let Some(slot) = maps.by_ino.get_mut(&ino) {
                slot.key = to.clone();
            }
        }
    }

    /// Every key `f` maps to a new one takes its ino along (the children of a
    /// renamed folder, which the kernel may still hold).
    pub fn rekey(&self, f: impl Fn(&K) -> Option<K>) {
        let mut maps = self.lock();
        let moved: Vec<(K, K, u64)> = maps
            .by_node
            .iter()
            .filter_map(|(k, &ino)| f(k).map(|n| (k.clone(), n, ino)))
            .collect();
        for (old, new, ino) in moved {
            if maps.by_node.get(&old) == Some(&ino) {
                maps.by_node.remove(&old);
            }
            maps.by_node.insert(new.clone(), ino);
            if let Some(slot) = maps.by_ino.get_mut(&ino) {
                slot.key = new;
            }
        }
    }

    /// The kernel dropped `n` references. Unknown inos (already dropped, or a forget
    /// that arrives before a lookup it overtook) are ignored; a count that would go
    /// below zero drops the entry.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut maps = self.lock();
        let Some(slot) = maps.by_ino.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups == 0 {
            if let Some(slot) = maps.by_ino.remove(&ino) {
                // Only remove the reverse mapping if it still points at this ino.
                if maps.by_node.get(&slot.key) == Some(&ino) {
                    maps.by_node.remove(&slot.key);
                }
            }
        }
    }

    /// Number of inos held (root included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_ino.len()
    }

    #[cfg(test)]
    fn lookups(&self, ino: u64) -> Option<u64> {
        self.lock().by_ino.get(&ino).map(|s| s.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> InodeTable<&'static str> {
        InodeTable::new("/")
    }

    #[test]
    fn root_is_one_and_nodes_get_their_hash() {
        let t = table();
        assert_eq!(t.get(&"/"), Some(ROOT_INO));
        assert_eq!(t.key(ROOT_INO), Some("/"));
        let (a, b) = (t.lookup(&"a"), t.lookup(&"b"));
        assert_eq!(a, hashed(&"a"));
        assert_eq!(b, hashed(&"b"));
        assert_ne!(a, b);
        assert!(a >= 1 << 63 && b >= 1 << 63);
        // A listing shows the number a lookup gives, and keeps nothing.
        assert_eq!(t.ino(&"c"), hashed(&"c"));
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(&"c"), hashed(&"c"));
    }

    #[test]
    fn a_taken_hash_falls_back_to_numbers_never_reused() {
        // Every key hashes alike: the first gets the hash, the rest counter numbers.
        let t = InodeTable::with_hash("/", |_| 1 << 63);
        let a = t.lookup(&"a");
        let b = t.lookup(&"b");
        let c = t.lookup(&"c");
        assert_eq!(a, 1 << 63);
        assert_eq!((b, c), (2, 3));
        assert_eq!(
            (t.key(a), t.key(b), t.key(c)),
            (Some("a"), Some("b"), Some("c"))
        );
        t.forget(b, 1);
        assert_eq!(t.lookup(&"b"), 4, "a dropped counter number is not reused");
        t.forget(a, 1);
        assert_eq!(t.lookup(&"d"), 1 << 63, "a freed hash is free again");
    }

    #[test]
    fn same_node_same_ino_and_counts_add_up() {
        let t = table();
        let a = t.lookup(&"a");
        assert_eq!(t.lookup(&"a"), a);
        assert_eq!(t.ino(&"a"), a);
        assert_eq!(t.lookups(a), Some(2));
        assert_eq!(t.key(a), Some("a"));
    }

    #[test]
    fn forget_to_zero_drops_and_the_node_keeps_its_number() {
        let t = table();
        let a = t.lookup(&"a");
        t.lookup(&"a");
        t.forget(a, 1);
        assert_eq!(t.key(a), Some("a"));
        t.forget(a, 1);
        assert_eq!(t.key(a), None);
        assert_eq!(t.get(&"a"), None);
        assert_eq!(t.len(), 1);
        // The node gets its number back: nobody else can have held it.
        assert_eq!(t.lookup(&"a"), a);
    }

    #[test]
    fn batch_forget_of_more_than_counted_drops() {
        let t = table();
        let a = t.lookup(&"a");
        t.forget(a, 5);
        assert_eq!(t.key(a), None);
    }

    #[test]
    fn out_of_order_and_unknown_forgets_are_tolerated() {
        let t = table();
        t.forget(99, 1); // never allocated
        let a = t.lookup(&"a");
        t.forget(a, 1);
        t.forget(a, 1); // second forget of a dropped ino
        assert_eq!(t.key(a), None);
        // Counts add up per number: a forget that the lookup overtook is taken off
        // what the kernel holds, as the kernel itself counts.
        let a2 = t.lookup(&"a");
        assert_eq!(a2, a);
        t.lookup(&"a");
        t.forget(a, 1);
        assert_eq!(t.key(a2), Some("a"));
        assert_eq!(t.lookups(a2), Some(1));
    }

    #[test]
    fn rename_moves_the_ino_to_the_new_key() {
        let t = table();
        let a = t.lookup(&"a");
        let b = t.lookup(&"b");
        t.renamed(&"a", Some(&"b"));
        assert_eq!(t.key(a), Some("b"));
        assert_eq!(t.get(&"b"), Some(a));
        assert_eq!(t.get(&"a"), None);
        // The replaced inode lives until forgotten, and forgetting it does not
        // disturb the moved one.
        assert_eq!(t.key(b), Some("b"));
        t.forget(b, 1);
        assert_eq!(t.key(b), None);
        assert_eq!(t.get(&"b"), Some(a));
        t.forget(a, 1);
        assert_eq!(t.get(&"b"), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rename_to_an_unresolved_path_frees_the_old_name() {
        let t = table();
        let a = t.lookup(&"a");
        t.renamed(&"a", None);
        assert_eq!(t.key(a), Some("a"));
        let a2 = t.lookup(&"a");
        assert_ne!(a2, a);
        t.forget(a, 1);
        assert_eq!(t.get(&"a"), Some(a2));
        t.renamed(&"unknown", Some(&"x"));
        assert_eq!(t.get(&"x"), None);
    }

    #[test]
    fn matching_finds_every_ino_whose_key_matches() {
        let t = table();
        let a = t.lookup(&"s/a");
        let b = t.lookup(&"s/b");
        t.lookup(&"x");
        let mut got = t.matching(|k| k.starts_with("s/"));
        got.sort();
        assert_eq!(got, vec![a, b]);
        assert!(t.matching(|k| k.starts_with("none")).is_empty());
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = table();
        t.forget(ROOT_INO, 10);
        assert_eq!(t.key(ROOT_INO), Some("/"));
        assert_eq!(t.get(&"/"), Some(ROOT_INO));
    }

    #[test]
    fn readdir_numbers_keep_nothing_and_match_later_lookups() {
        let t = table();
        let a = t.ino(&"a");
        assert_eq!(t.lookups(a), None);
        assert_eq!(t.key(a), None);
        // The kernel looks it up later: same number, counted.
        assert_eq!(t.lookup(&"a"), a);
        assert_eq!(t.ino(&"a"), a);
        t.forget(a, 1);
        assert_eq!(t.key(a), None);
        // A renamed inode keeps its number at the new name.
        let x = t.lookup(&"x");
        t.renamed(&"x", Some(&"y"));
        assert_eq!(t.ino(&"y"), x);
    }

    #[test]
    fn concurrent_lookups_agree_on_one_number() {
        let t = std::sync::Arc::new(table());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..100).map(|_| t.lookup(&"x")).collect::<Vec<_>>())
            })
            .collect();
        let all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert!(all.iter().all(|&i| i == all[0]));
        assert_eq!(t.lookups(all[0]), Some(800));
    }

    #[test]
    fn forgets_racing_new_lookups_never_lose_a_counted_inode() {
        let t = std::sync::Arc::new(table());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (t, b) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    for _ in 0..2000 {
                        let ino = t.lookup(&"x");
                        // Our own lookup keeps it alive until our forget.
                        assert_eq!(t.key(ino), Some("x"), "a counted inode vanished");
                        t.forget(ino, 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Every lookup was forgotten: the name holds no inode any more.
        assert_eq!(t.get(&"x"), None);
    }
}
