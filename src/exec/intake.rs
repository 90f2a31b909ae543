//! Intake independent of runs: a submission is made durable in the intake journal
//! (`store::journal`, one per data folder, its own connection and lock), not in
//! its peer's store, whose connection a batch of runs holds for as long as its
//! scripts run. So a close into an inbox waits for one fsync of the journal
//! (shared with every submission waiting at that moment, whatever their peer:
//! group commit, no timer), never for a script.
//!
//! The peer's actor takes what the journal holds for it at the start of each turn
//! (`take_held`), in journal order and before anything else of the turn, in one
//! transaction with the journal mark (`Op::JournalMark`) that makes the take
//! happen once; then it drops those entries from the journal. Until then they are
//! *held*: listed in `inbox/` as queued, their results pending in `outbox/`,
//! counted as queued, and a withdrawal (`rm`) marks them in the journal.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::op::{Ack, Op};
use super::slot::result_slot;
use super::state::actor;
use super::txn::Effect;
use super::{test_hooks, Change, Core};
use crate::error::{err, Error, Result};
use crate::names::script_stem;
use crate::peer::Peer;
use crate::store::journal::{Entry, Journal};
use crate::store::{Job, OutboxEntry};

/// A submission on its way into the journal.
pub(super) struct Submission {
    peer: Arc<Peer>,
    job: Job,
    ack: Option<Ack>,
}

pub(super) type Intake = Mutex<Option<Sender<Submission>>>;

/// The most submissions one journal commit takes.
const GROUP_MAX: usize = 1024;

/// Where a job's result shows while it waits: (slot, file name).
fn result_key(peer: &str, job: &Job) -> (String, String) {
    (
        result_slot(peer, &job.caller),
        format!("{}.json", script_stem(&job.name)),
    )
}

impl Core {
    pub(super) fn journal(&self) -> Option<&Journal> {
        self.0.journal.as_ref()
    }

    /// Whether `peer`'s actor is in a batch of runs now (a submission meanwhile
    /// goes through the intake journal).
    pub fn running(&self, peer: &str) -> bool {
        // Not opened for this: a closed peer runs nothing.
        self.0.registry.is_open(peer)
            && self
                .peer(peer)
                .is_ok_and(|p| actor(&p).work.lock().unwrap().running)
    }

    /// Submits `job` to `peer`; `ack` once it is durable. An idle actor (not
    /// scheduled, nothing held or on its way into the journal) takes it at once,
    /// in the transaction that may also run it (one commit for both); otherwise
    /// the intake journal takes it, whatever the actor is running.
    pub(super) fn submit_job(&self, peer: Arc<Peer>, job: Job, ack: Option<Ack>) {
        let st = actor(&peer);
        let mut w = st.work.lock().unwrap();
        // `journaling` is raised under this lock, and lowered only after the
        // entry is held: an earlier submission is seen in one or the other. An
        // actor that is not running a batch takes ops before its next batch.
        // With a replica a submission commits in its peer's store (which is
        // replicated; the journal is not), so it waits for the actor: in `sync`
        // mode its close waits for the upload, and in `async` mode a restore
        // after a crash must have it once `sync_ms` passed since its close.
        let idle = self.journal().is_none()
            || self.replica().is_some()
            || (!w.running
                && st.journaling.load(Ordering::SeqCst) == 0
                && st.held.lock().unwrap().entries.is_empty()
                && !self.stopping());
        if idle {
            w.ops.push((Op::Submit(job), ack));
            if w.scheduled {
                return;
            }
            w.scheduled = true;
            drop(w);
            return self.ready(peer);
        }
        st.journaling.fetch_add(1, Ordering::SeqCst);
        drop(w);
        self.journal_submit(peer, job, ack);
    }

    /// Submits `job` through the intake journal (its `journaling` count raised).
    fn journal_submit(&self, peer: Arc<Peer>, job: Job, ack: Option<Ack>) {
        // Refused now, while the submitter can still be told (as the queue would).
        if job.caller != peer.name && !self.0.registry.exists(&job.caller) {
            actor(&peer).journaling.fetch_sub(1, Ordering::SeqCst);
            let e = err!(
                libc::ENOENT,
                "no peer named {:?} to take the result of {}",
                job.caller,
                job.name
            );
            return if let Some(a) = ack {
                a(Err(e))
            };
        }
        let tx = self.0.intake.lock().unwrap().clone();
        let sub = Submission { peer, job, ack };
        let refused = match tx {
            Some(tx) => tx.send(sub).err().map(|e| e.0),
            None => Some(sub),
        };
        if let Some(sub) = refused {
            actor(&sub.peer).journaling.fetch_sub(1, Ordering::SeqCst);
            if let Some(a) = sub.ack {
                a(Err(crate::Error::stopped(format_args!(
                    "{} was submitted",
                    sub.job.name
                ))));
            }
        }
    }

    /// The journal's writer: commits whatever is waiting, one fsync for all.
    pub(super) fn journal_writer(&self, rx: Receiver<Submission>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            self.commit_submissions(batch);
        }
    }

    fn commit_submissions(&self, batch: Vec<Submission>) {
        let entries: Vec<(&str, &Job)> = batch
            .iter()
            .map(|s| (s.peer.name.as_str(), &s.job))
            .collect();
        let t = std::time::Instant::now();
        let committed = match self.journal() {
            Some(j) => j.append(&entries),
            None => Err(err!(libc::EIO, "no intake journal")),
        };
        self.0.metrics.commit(t.elapsed());
        self.0.stats.commits.fetch_add(1, Ordering::Relaxed);
        let seqs = match committed {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, n = batch.len(), "intake journal commit failed: the submissions were refused");
                for s in batch {
                    actor(&s.peer).journaling.fetch_sub(1, Ordering::SeqCst);
                    if let Some(a) = s.ack {
                        a(Err(e.clone()));
                    }
                }
                return;
            }
        };
        if batch.iter().any(|s| test_hooks::journal_marked(&s.job)) {
            test_hooks::abort_after_journal();
        }
        for (s, seq) in batch.into_iter().zip(seqs) {
            let entry = Entry {
                seq,
                peer: s.peer.name.clone(),
                job: s.job,
                withdrawn: false,
            };
            self.hold(&s.peer, entry);
            actor(&s.peer).journaling.fetch_sub(1, Ordering::SeqCst);
            self.schedule(&s.peer);
            if let Some(a) = s.ack {
                a(Ok(()));
            }
        }
    }

    /// Keeps a journal entry as held by `peer`: its result pending, its script
    /// listed, until the actor takes it.
    fn hold(&self, peer: &Arc<Peer>, e: Entry) {
        // Withdrawn ones too: their result (saying so) comes when they are taken.
        let (slot, name) = result_key(&peer.name, &e.job);
        self.pre_register(
            peer,
            &[Effect::Pending {
                target: slot,
                name,
                run_id: e.job.id.clone(),
            }],
        );
        actor(peer).held.lock().unwrap().insert(e);
    }

    /// Reads what the journal holds for `peer` (once per open peer, under its
    /// drain lock): entries after the peer's mark are held, those at or below it
    /// were taken before a crash and are dropped.
    fn load_held(&self, peer: &Arc<Peer>, loaded: &mut MutexGuard<'_, bool>) -> Result<()> {
        let Some(journal) = self.journal().filter(|_| !**loaded) else {
            **loaded = true;
            return Ok(());
        };
        let key = journal.mark_key();
        let mark = peer
            .read(|s| s.meta(&key))?
            .and_then(|(v, _)| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        journal.forget(&peer.name, mark)?;
        let entries = journal.entries_of(&peer.name, mark)?;
        if !entries.is_empty() {
            tracing::info!(peer = %peer.name, n = entries.len(), "submissions held in the intake journal");
        }
        for e in entries {
            self.hold(peer, e);
        }
        **loaded = true;
        Ok(())
    }

    /// At open: what the journal holds for `peer` becomes held (once).
    pub(super) fn load_journal(&self, peer: &Arc<Peer>) -> Result<()> {
        let mut loaded = actor(peer).drain.lock().unwrap();
        self.load_held(peer, &mut loaded)
    }

    /// One turn's writes: what the journal holds for `peer` first (in journal
    /// order), then `ops`, in one transaction; then the journal forgets what was
    /// taken.
    pub(super) fn apply_turn(&self, peer: &Arc<Peer>, ops: Vec<(Op, Option<Ack>)>) {
        let mut loaded = actor(peer).drain.lock().unwrap();
        if let Err(e) = self.load_held(peer, &mut loaded) {
            tracing::error!(peer = %peer.name, error = %e, "cannot read the intake journal; held submissions wait");
        }
        let held: Vec<Entry> = actor(peer).held.lock().unwrap().entries.clone();
        let journal = self.journal();
        let (Some(journal), false) = (journal, held.is_empty()) else {
            drop(loaded);
            if !ops.is_empty() {
                self.apply_ops(peer, ops);
            }
            return;
        };
        let mark = held.last().map_or(0, |e| e.seq);
        let outcomes: Arc<Mutex<Vec<Option<Error>>>> = Arc::new(Mutex::new(vec![None; held.len()]));
        let taken = Arc::new(Mutex::new(false));
        let mut all = Vec::with_capacity(held.len() + 1 + ops.len());
        let keys: Vec<(String, String)> = held
            .iter()
            .map(|e| result_key(&peer.name, &e.job))
            .collect();
        for (i, e) in held.into_iter().enumerate() {
            let out = outcomes.clone();
            let ack: Ack = Box::new(move |r| out.lock().unwrap()[i] = r.err());
            let op = Op::Journaled {
                job: e.job,
                withdrawn: e.withdrawn,
            };
            all.push((op, Some(ack)));
        }
        let t2 = taken.clone();
        all.push((
            Op::JournalMark {
                key: journal.mark_key(),
                seq: mark,
            },
            Some(Box::new(move |r| *t2.lock().unwrap() = r.is_ok())),
        ));
        all.extend(ops);
        self.apply_ops(peer, all);
        if !*taken.lock().unwrap() {
            // Not taken: they stay held (and pending) for the next turn.
            drop(loaded);
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        {
            let mut h = actor(peer).held.lock().unwrap();
            h.taken = h.taken.max(mark);
            h.entries.retain(|e| e.seq > mark);
        }
        // Taken, but refused by the store (its caller went): it will never run, so
        // its readers are told why.
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
        for (key, e) in keys.into_iter().zip(outcomes) {
            if let Some(e) = e {
                tracing::warn!(peer = %peer.name, script = %key.1, error = %e, "a held submission was refused");
                self.unregister(peer, vec![key], &e);
            }
        }
        test_hooks::abort_after_drain(peer, mark);
        if let Err(e) = journal.forget(&peer.name, mark) {
            // Harmless: the peer's mark keeps them from being taken again.
            tracing::warn!(peer = %peer.name, error = %e, "cannot drop taken entries from the intake journal");
        }
        drop(loaded);
    }

    /// Marks held submissions of `peer` named `name` withdrawn (durably, in the
    /// journal); how many there were.
    pub(super) fn withdraw_held(&self, peer: &Arc<Peer>, name: &str) -> Result<usize> {
        let mut loaded = actor(peer).drain.lock().unwrap();
        self.load_held(peer, &mut loaded)?;
        let Some(journal) = self.journal() else {
            return Ok(0);
        };
        let mut h = actor(peer).held.lock().unwrap();
        let seqs: Vec<i64> = h
            .entries
            .iter()
            .filter(|e| e.job.name == name && !e.withdrawn)
            .map(|e| e.seq)
            .collect();
        if seqs.is_empty() {
            return Ok(0);
        }
        journal.withdraw(&seqs)?;
        for e in h.entries.iter_mut().filter(|e| seqs.contains(&e.seq)) {
            e.withdrawn = true;
        }
        drop(h);
        drop(loaded);
        self.notify(&peer.name, Change::Inbox);
        self.schedule(peer);
        Ok(seqs.len())
    }

    /// The names of the scripts `peer` holds, in journal order (with their size
    /// and submission time), for listings of `inbox/`.
    pub(super) fn held_names(&self, peer: &Peer) -> Vec<(String, u64, i64)> {
        actor(peer)
            .held
            .lock()
            .unwrap()
            .entries
            .iter()
            .filter(|e| !e.withdrawn)
            .map(|e| {
                (
                    e.job.name.clone(),
                    e.job.source.len() as u64,
                    e.job.submitted_at,
                )
            })
            .collect()
    }

    /// The latest held script of `peer` named `name`.
    pub(super) fn held_named(&self, peer: &Peer, name: &str) -> Option<Job> {
        actor(peer)
            .held
            .lock()
            .unwrap()
            .entries
            .iter()
            .rev()
            .find(|e| !e.withdrawn && e.job.name == name)
            .map(|e| e.job.clone())
    }

    /// The pending results of held submissions in `peer`'s outbox slot `key`.
    pub(super) fn held_results(peer: &Peer, key: &str) -> Vec<OutboxEntry> {
        let h = actor(peer).held.lock().unwrap();
        let mut out: Vec<OutboxEntry> = Vec::new();
        for e in &h.entries {
            let (slot, name) = result_key(&peer.name, &e.job);
            if slot != key {
                continue;
            }
            out.retain(|o| o.name != name);
            out.push(OutboxEntry {
                target: slot,
                name,
                run_id: e.job.id.clone(),
                result: None,
                submitted_at: e.job.submitted_at,
                finished_at: None,
            });
        }
        out
    }
}

/// Without a daemon (`peerfs peer remove`): moves what the data folder's intake
/// journal holds for peer `name` (its store at `store`) into that store's queue,
/// so that the peer's store is whole when it moves; returns how many. Withdrawn
/// submissions are dropped.
pub fn settle_journal(
    data: &std::path::Path,
    name: &str,
    store: &std::path::Path,
) -> Result<usize> {
    use crate::store::journal::Journal;
    use crate::store::{Documents, SqliteStore, Txn};
    if !data.join("intake.sqlite").exists() {
        return Ok(0);
    }
    let journal = Journal::open_in(data)?;
    if !journal.holds(name)? {
        return Ok(0);
    }
    let mut st = SqliteStore::open(store, false)?;
    let key = journal.mark_key();
    let mark = st
        .meta(&key)?
        .and_then(|(v, _)| String::from_utf8(v).ok()?.parse::<i64>().ok())
        .unwrap_or(0);
    let entries = journal.entries_of(name, mark)?;
    let Some(last) = entries.last().map(|e| e.seq) else {
        journal.forget(name, mark)?;
        return Ok(0);
    };
    let mut txn = Txn::begin(&mut st, true)?;
    let mut n = 0;
    for e in entries.iter().filter(|e| !e.withdrawn) {
        let (slot, out) = result_key(name, &e.job);
        txn.outbox_pending(&slot, &out, &e.job.id, e.job.submitted_at)?;
        txn.enqueue(&e.job)?;
        n += 1;
    }
    txn.set_meta(&key, last.to_string().as_bytes())?;
    txn.commit()?;
    journal.forget(name, last)?;
    Ok(n)
}
