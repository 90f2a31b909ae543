//! The per-peer buffer budget as counters: the bytes each peer holds in the
//! daemon's memory (writers' buffers, readers' snapshots, staging files), kept up
//! to date as they grow, shrink and go, so that a growing write checks one number
//! instead of walking every open file. See [`super::BUFFER_BUDGET`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::err;
use crate::error::{Error, Result};

/// The budget every peer has, and each peer's counter.
pub(super) struct Budget {
    limit: Arc<AtomicU64>,
    peers: Mutex<HashMap<String, Arc<Held>>>,
}

/// The bytes one peer holds now, against the budget all peers share.
pub(super) struct Held {
    peer: String,
    bytes: AtomicU64,
    limit: Arc<AtomicU64>,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Budget {
        Budget {
            limit: Arc::new(AtomicU64::new(limit)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The counter of `peer` (made at its first use; it stays, at zero when idle).
    pub(super) fn of(&self, peer: &str) -> Arc<Held> {
        let mut peers = self.peers.lock().unwrap();
        if let Some(h) = peers.get(peer) {
            return h.clone();
        }
        let h = Arc::new(Held {
            peer: peer.to_string(),
            bytes: AtomicU64::new(0),
            limit: self.limit.clone(),
        });
        peers.insert(peer.to_string(), h.clone());
        h
    }

    /// The bytes `peer` holds now (0 for a peer that never held any).
    pub(super) fn held(&self, peer: &str) -> u64 {
        self.peers
            .lock()
            .unwrap()
            .get(peer)
            .map_or(0, |h| h.bytes.load(Ordering::Relaxed))
    }

    /// A charge of nothing yet against the counter of the peer acting at `peer`
    /// (`None`: the mount's own files, outside every peer's budget).
    pub(super) fn charge(&self, peer: Option<&str>) -> Charge {
        Charge {
            held: peer.map(|p| self.of(p)),
            bytes: 0,
        }
    }
}

impl Held {
    /// `EDQUOT` if `more` bytes would pass the budget; nothing taken either way.
    pub(super) fn check(&self, more: u64) -> Result<()> {
        let (held, budget) = (self.bytes.load(Ordering::Acquire), self.limit());
        if held.saturating_add(more) > budget {
            return Err(self.refusal(held, more, budget));
        }
        Ok(())
    }

    /// Takes `more` bytes if the peer stays within its budget (`EDQUOT` if not,
    /// nothing taken). Check and take are one atomic step: two writers cannot
    /// both pass on the same last bytes.
    pub(super) fn take(&self, more: u64) -> Result<()> {
        if more == 0 {
            return Ok(());
        }
        let budget = self.limit();
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held.saturating_add(more) <= budget).then_some(held + more)
            })
            .map(|_| ())
            .map_err(|held| self.refusal(held, more, budget))
    }

    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    fn refusal(&self, held: u64, more: u64, budget: u64) -> Error {
        err!(
            libc::EDQUOT,
            "{} holds {held} bytes in open files (read or written) and staging files, and \
             {more} more would pass its budget of {budget}: close or remove some first",
            self.peer
        )
    }

    /// Moves a charge of `from` bytes to `to`, unchecked: bytes that are held whatever
    /// the budget says (a result once read, a staging file's committed text).
    pub(super) fn adjust(&self, from: u64, to: u64) {
        if to > from {
            self.bytes.fetch_add(to - from, Ordering::AcqRel);
        } else {
            self.bytes.fetch_sub(from - to, Ordering::AcqRel);
        }
    }
}

/// Bytes one handle holds against its peer's counter; given back when it drops,
/// so that a closed handle, whatever path closed it, holds nothing.
pub(super) struct Charge {
    held: Option<Arc<Held>>,
    bytes: u64,
}

impl Charge {
    /// Grows the charge to `len` bytes if that stays within the budget; a smaller
    /// `len` gives bytes back.
    pub(super) fn resize(&mut self, len: u64) -> Result<()> {
        if let Some(h) = &self.held {
            if len > self.bytes {
                h.take(len - self.bytes)?;
            } else {
                h.adjust(self.bytes, len);
            }
        }
        self.bytes = len;
        Ok(())
    }

    /// Sets the charge to `len` bytes, unchecked (see [`Held::adjust`]).
    pub(super) fn set(&mut self, len: u64) {
        if let Some(h) = &self.held {
            h.adjust(self.bytes, len);
        }
        self.bytes = len;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_take_within_the_budget_and_give_back_on_drop() {
        let b = Budget::new(100);
        let mut c1 = b.charge(Some("alice"));
        let mut c2 = b.charge(Some("alice"));
        c1.resize(60).unwrap();
        assert_eq!(b.held("alice"), 60);
        let e = c2.resize(41).unwrap_err();
        assert_eq!(e.errno, libc::EDQUOT);
        assert!(e.message.contains("alice holds 60 bytes"), "{}", e.message);
        assert_eq!(b.held("alice"), 60, "a refused charge takes nothing");
        let alice = b.of("alice");
        assert_eq!(alice.check(41).unwrap_err().errno, libc::EDQUOT);
        alice.check(40).unwrap();
        assert_eq!(b.held("alice"), 60, "a check takes nothing");
        c2.resize(40).unwrap();
        c1.resize(10).unwrap();
        assert_eq!(b.held("alice"), 50);
        // Unchecked: held whatever the budget says.
        c1.set(200);
        assert_eq!(b.held("alice"), 240);
        let mut other = b.charge(Some("bob"));
        other.resize(100).unwrap();
        drop(c1);
        drop(c2);
        assert_eq!(b.held("alice"), 0);
        assert_eq!(b.held("bob"), 100);
        let mut none = b.charge(None);
        none.resize(1 << 40).unwrap();
    }
}
