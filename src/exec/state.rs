//! The executor's state of one open peer ([`ActorState`], attached to its
//! [`Peer`](crate::peer::Peer)): the ops queued for its actor, its queued-run
//! count, the messages in flight and their failures, the readers waiting for
//! its results, and the results it published last.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::op::{Ack, Op, Waiter};
use crate::peer::{Attached, Peer};
use crate::store::journal::Entry;

/// The executor's state of an open peer.
#[derive(Default)]
pub(crate) struct ActorState {
    pub(crate) work: Mutex<Work>,
    /// Outbox entries whose result is not in yet, by (target, file name).
    pub(crate) waits: Mutex<HashMap<(String, String), PendingResult>>,
    /// The latest results, served without a read of the store (a script's result
    /// is usually read right after it is published).
    pub(crate) recent: Mutex<Recent>,
    pub(crate) queued: AtomicU64,
    /// How many queued scripts the next batch reads; 0: `batch_max_runs` (see
    /// [`ActorState::batch_limit`]).
    batch_hint: AtomicUsize,
    pub(crate) has_undelivered: AtomicBool,
    /// Messages handed to their targets and not yet acknowledged.
    pub(crate) inflight: Mutex<HashSet<String>>,
    /// Failed deliveries per message id (past a bound the message becomes an
    /// `error` result instead of being retried forever).
    pub(crate) delivery_failures: Mutex<HashMap<String, u32>>,
    /// Submissions durable in the intake journal, not yet in the queue.
    pub(crate) held: Mutex<Held>,
    /// Submissions on their way into the journal (not committed yet).
    pub(crate) journaling: AtomicU64,
    /// Held by whoever moves held submissions (the actor's turn, a withdrawal):
    /// `true` once this open peer has read what the journal held for it.
    pub(crate) drain: Mutex<bool>,
}

/// What the intake journal holds for an open peer (see `exec::intake`).
#[derive(Default)]
pub(crate) struct Held {
    /// In journal order (`seq`).
    pub(crate) entries: Vec<Entry>,
    /// The highest `seq` this open peer took into its queue: an entry at or below
    /// it is never held again.
    pub(crate) taken: i64,
}

impl Held {
    /// Keeps `e` in journal order, once.
    pub(crate) fn insert(&mut self, e: Entry) {
        if e.seq <= self.taken {
            return;
        }
        if let Err(i) = self.entries.binary_search_by_key(&e.seq, |x| x.seq) {
            self.entries.insert(i, e);
        }
    }

    /// Held submissions not withdrawn (they count as queued).
    pub(crate) fn waiting(&self) -> u64 {
        self.entries.iter().filter(|e| !e.withdrawn).count() as u64
    }
}

impl Attached for ActorState {
    fn busy(&self) -> bool {
        let w = self.work.lock().unwrap();
        w.scheduled
            || !w.ops.is_empty()
            || self.queued() > 0
            || self.has_undelivered.load(Ordering::Relaxed)
            || self.journaling.load(Ordering::SeqCst) > 0
            || !self.held.lock().unwrap().entries.is_empty()
            || !self.waits.lock().unwrap().is_empty()
    }

    fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) + self.held.lock().unwrap().waiting()
    }
}

impl ActorState {
    /// Queued runs not finished yet.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// How many queued scripts the next batch reads (and counts the starts
    /// of), at most `max` (`batch_max_runs`): all of them, until a batch ends
    /// on its time budget with scripts it read left unrun; then about as many
    /// as that batch ran, doubling after every batch that runs all it read.
    /// Slow scripts would otherwise have each batch read, count and uncount
    /// far more rows than it runs. Powers of two: the limit is written into
    /// the statement (see `Queue::queued`), so few statements are cached.
    pub(crate) fn batch_limit(&self, max: usize) -> usize {
        match self.batch_hint.load(Ordering::Relaxed) {
            0 => max,
            n => n.min(max).max(1),
        }
    }

    /// What a batch did: it read `read` scripts and ran `ran` of them.
    pub(crate) fn batch_ran(&self, read: usize, ran: usize, max: usize) {
        let limit = self.batch_limit(max);
        let next = if ran < read {
            ran.max(1).next_power_of_two().min(limit)
        } else if read < limit {
            // The queue had fewer: no sign of the batch's pace.
            return;
        } else {
            limit.saturating_mul(2)
        };
        let hint = if next >= max { 0 } else { next };
        self.batch_hint.store(hint, Ordering::Relaxed);
    }
}

/// The executor's state of `peer` (made on first use).
pub(crate) fn actor(peer: &Peer) -> &ActorState {
    peer.attached::<ActorState>()
}

#[derive(Default)]
pub(crate) struct Work {
    pub(crate) ops: Vec<(Op, Option<Ack>)>,
    pub(crate) scheduled: bool,
    /// The actor is in a batch of runs (a submission now goes to the journal).
    pub(crate) running: bool,
    /// Batches put off in a row because ops were waiting (bounded, so that a
    /// stream of writes cannot keep queued scripts from running).
    pub(crate) deferred: u32,
}

/// A published result kept in memory (see [`Recent`]).
pub(crate) struct RecentResult {
    pub(crate) run_id: String,
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) submitted_at: i64,
    pub(crate) finished_at: i64,
}

/// The last few results published at a peer, bounded in count and bytes: a copy of
/// committed outbox rows, dropped before a change to the row commits.
#[derive(Default)]
pub(crate) struct Recent {
    map: HashMap<(String, String), RecentResult>,
    order: VecDeque<(String, String)>,
    bytes: usize,
}

impl Recent {
    const MAX_ENTRIES: usize = 64;
    const MAX_BYTES: usize = 64 * 1024;

    pub(crate) fn insert(&mut self, key: (String, String), r: RecentResult) {
        if r.bytes.len() > Self::MAX_BYTES / 4 {
            self.remove(&key.0, &key.1);
            return;
        }
        self.bytes += r.bytes.len();
        if let Some(old) = self.map.insert(key.clone(), r) {
            self.bytes -= old.bytes.len();
        } else {
            self.order.push_back(key);
        }
        while self.map.len() > Self::MAX_ENTRIES || self.bytes > Self::MAX_BYTES {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&k) {
                self.bytes -= old.bytes.len();
            }
        }
    }

    pub(crate) fn get(&self, target: &str, name: &str) -> Option<&RecentResult> {
        // Keys are owned pairs; a lookup by borrowed parts would need a second map.
        self.map.get(&(target.to_string(), name.to_string()))
    }

    pub(crate) fn remove(&mut self, target: &str, name: &str) {
        let key = (target.to_string(), name.to_string());
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.bytes.len();
            self.order.retain(|k| *k != key);
        }
    }
}

/// A result not in yet and the readers waiting for it.
pub(crate) struct PendingResult {
    pub(crate) run_id: String,
    pub(crate) waiters: Vec<Waiter>,
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn r(id: &str, len: usize) -> RecentResult {
        RecentResult {
            run_id: id.to_string(),
            bytes: Arc::new(vec![b'x'; len]),
            submitted_at: 1,
            finished_at: 2,
        }
    }

    #[test]
    fn recent_results_stay_bounded_and_forget_on_request() {
        let mut rec = Recent::default();
        for i in 0..200 {
            rec.insert(("p".into(), format!("{i}.json")), r(&i.to_string(), 100));
        }
        assert_eq!(rec.map.len(), Recent::MAX_ENTRIES);
        assert!(rec.get("p", "0.json").is_none(), "the oldest went first");
        assert_eq!(rec.get("p", "199.json").unwrap().run_id, "199");
        assert_eq!(rec.bytes, Recent::MAX_ENTRIES * 100);
        // Replacing keeps one entry and counts bytes once.
        rec.insert(("p".into(), "199.json".into()), r("new", 10));
        assert_eq!(rec.get("p", "199.json").unwrap().run_id, "new");
        assert_eq!(rec.bytes, (Recent::MAX_ENTRIES - 1) * 100 + 10);
        rec.remove("p", "199.json");
        assert!(rec.get("p", "199.json").is_none());
        assert_eq!(rec.order.len(), rec.map.len());
        // Byte bound: large results are not kept at all.
        rec.insert(("p".into(), "big.json".into()), r("b", Recent::MAX_BYTES));
        assert!(rec.get("p", "big.json").is_none());
        for i in 0..40 {
            rec.insert(("q".into(), format!("{i}")), r("m", Recent::MAX_BYTES / 8));
        }
        assert!(rec.bytes <= Recent::MAX_BYTES);
        assert_eq!(rec.order.len(), rec.map.len());
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_batch_reads_about_what_the_last_one_ran_and_grows_back() {
        let a = ActorState::default();
        assert_eq!(a.batch_limit(256), 256);
        // (read, ran) of a batch, then the next batch's limit.
        let steps = [
            // Ended on its time budget after 20 of 256: the next reads 32.
            ((256, 20), 32),
            // Ran all it read: doubles, up to the maximum.
            ((32, 32), 64),
            // A short queue says nothing of the pace.
            ((3, 3), 64),
            ((64, 64), 128),
            ((128, 128), 256),
            ((256, 256), 256),
            // A batch that ran none (stopped) still reads one.
            ((256, 0), 1),
        ];
        for ((read, ran), next) in steps {
            a.batch_ran(read, ran, 256);
            assert_eq!(a.batch_limit(256), next, "after {ran} of {read}");
        }
        // A smaller maximum (a new config) bounds the hint.
        a.batch_ran(1, 1, 256);
        assert_eq!(a.batch_limit(1), 1);
    }
}
