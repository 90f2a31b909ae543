//! The outbox: where a result lives (the peer's own outbox or a caller's slot at
//! the target), listing and removing results, and readers waiting for a result
//! (`read_result` and the blocking and bounded forms around it).

use std::sync::Arc;

use serde_json::Value;

use super::op::{Op, Waiter};
use super::slot::caller_slot;
use super::state::{actor, PendingResult};
use super::{wait, Core};
use crate::error::err;
use crate::error::Result;
use crate::names::script_stem;
use crate::peer::Peer;
use crate::store::{Job, OutboxEntry};

impl Core {
    /// Where the result `name` of `peer`'s outbox for `target` lives: the peer
    /// holding it and the outbox row's target. A script `peer` dropped at `target`
    /// has its result at `target` (in `peer`'s slot); one that `peer`'s own script
    /// sent has it at `peer`. When both exist, the dropped one shows.
    pub(super) fn result_place(
        &self,
        peer: &str,
        target: &str,
        name: &str,
    ) -> Result<(Arc<Peer>, String)> {
        self.result_at(peer, target, name, false)
            .map(|(p, key, _)| (p, key))
    }

    /// [`Core::result_place`], with the entry found there (`None`: none, or its
    /// submission is not committed yet). `fetch`: also read it when it is `peer`'s
    /// own (a held one is read anyway, to know where it is).
    pub(super) fn result_at(
        &self,
        peer: &str,
        target: &str,
        name: &str,
        fetch: bool,
    ) -> Result<(Arc<Peer>, String, Option<OutboxEntry>)> {
        if peer != target {
            if let Ok(t) = self.peer(target) {
                let slot = caller_slot(peer);
                let e = Self::entry(&t, &slot, name)?;
                if e.is_some()
                    || actor(&t)
                        .waits
                        .lock()
                        .unwrap()
                        .contains_key(&(slot.clone(), name.to_string()))
                {
                    return Ok((t, slot, e));
                }
            }
        }
        let p = self.peer(peer)?;
        let e = if fetch {
            Self::entry(&p, target, name)?
        } else {
            None
        };
        Ok((p, target.to_string(), e))
    }

    /// The outbox row `(key, name)` of `p`: from memory if just published.
    pub(super) fn entry(p: &Peer, key: &str, name: &str) -> Result<Option<OutboxEntry>> {
        if let Some(r) = actor(p).recent.lock().unwrap().get(key, name) {
            return Ok(Some(OutboxEntry {
                target: key.to_string(),
                name: name.to_string(),
                run_id: r.run_id.clone(),
                result: Some(String::from_utf8_lossy(&r.bytes).into_owned()),
                submitted_at: r.submitted_at,
                finished_at: Some(r.finished_at),
            }));
        }
        // A held submission of that name is a newer run than the stored row.
        if let Some(h) = Core::held_results(p, key)
            .into_iter()
            .find(|e| e.name == name)
        {
            return Ok(Some(h));
        }
        p.read(|s| s.outbox_get(key, name))
    }

    /// The results in `peer`'s outbox for `target` (`peer` itself: its own outbox).
    pub fn outbox_list(&self, peer: &str, target: &str) -> Result<Vec<OutboxEntry>> {
        let p = self.peer(peer)?;
        let mut out = p.read(|s| s.outbox_list(target))?;
        add_held(&mut out, Core::held_results(&p, target));
        if peer != target {
            if let Ok(t) = self.peer(target) {
                let slot = caller_slot(peer);
                let mut held = t.read(|s| s.outbox_list(&slot))?;
                add_held(&mut held, Core::held_results(&t, &slot));
                out.retain(|e| !held.iter().any(|h| h.name == e.name));
                out.extend(held.into_iter().map(|mut h| {
                    h.target = target.to_string();
                    h
                }));
            }
        }
        Ok(out)
    }

    /// One result of `peer`'s outbox for `target`.
    pub fn outbox_get(&self, peer: &str, target: &str, name: &str) -> Result<Option<OutboxEntry>> {
        let (_, _, e) = self.result_at(peer, target, name, true)?;
        Ok(e.map(|mut e| {
            e.target = target.to_string();
            e
        }))
    }

    /// Withdraws the queued scripts named `name` of `peer`'s own queue (`rm` in its
    /// inbox): they end unrun with an `error` result that says so.
    /// Those still held in the intake journal are withdrawn there, without waiting
    /// for a run in progress; those already in the queue by the peer's actor.
    pub fn withdraw(&self, peer: &str, name: &str) -> Result<()> {
        let p = self.peer(peer)?;
        // A submission on its way into the journal (its close still running) is
        // held in a moment: it must be seen, or it would run after this rm.
        let t = std::time::Instant::now();
        while actor(&p)
            .journaling
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            && t.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let held = self.withdraw_held(&p, name)?;
        if held > 0 && p.read(|s| s.queued_named(name))?.is_none() {
            return Ok(());
        }
        match self.apply(peer, Op::Withdraw(name.to_string())) {
            Err(e) if e.errno == libc::ENOENT && held > 0 => Ok(()),
            r => r,
        }
    }

    /// The scripts queued at `peer` (held in the intake journal or in its queue),
    /// in submission order, once per name: (name, size, submission time).
    pub fn queue_names(&self, peer: &str) -> Result<Vec<(String, u64, i64)>> {
        let p = self.peer(peer)?;
        let mut out = p.read(|s| s.queue_names(100_000))?;
        out.extend(self.held_names(&p));
        let mut seen = std::collections::HashSet::new();
        out.retain(|(n, _, _)| seen.insert(n.clone()));
        Ok(out)
    }

    /// The latest queued script of `peer` named `name` (held or in its queue).
    pub fn queued_named(&self, peer: &str, name: &str) -> Result<Option<Job>> {
        let p = self.peer(peer)?;
        if let Some(j) = self.held_named(&p, name) {
            return Ok(Some(j));
        }
        // An empty queue needs no look (the usual lookup of a new name).
        if actor(&p).queued() == 0 {
            return Ok(None);
        }
        p.read(|s| s.queued_named(name))
    }

    /// Discards a result (`rm` in an outbox).
    pub fn outbox_remove(&self, peer: &str, target: &str, name: &str) -> Result<()> {
        let (p, key) = self.result_place(peer, target, name)?;
        let holder = p.name.clone();
        drop(p);
        self.apply(&holder, Op::OutboxRemove(key, name.to_string()))
    }

    /// Calls `waiter` with the result in `peer`'s outbox for `target` (`peer` itself
    /// for its own runs) named `name` (e.g. `job.json`), as soon as it is ready.
    pub fn read_result(&self, peer: &str, target: &str, name: &str, waiter: Waiter) {
        let (p, target) = match self.result_place(peer, target, name) {
            Ok(r) => r,
            Err(e) => return waiter(Err(e)),
        };
        let target = target.as_str();
        let key = (target.to_string(), name.to_string());
        let mut waits = actor(&p).waits.lock().unwrap();
        if let Some(pending) = waits.get_mut(&key) {
            pending.waiters.push(waiter);
            return;
        }
        // Not pending: the committed row is final (read under the lock, so a run that
        // finishes now publishes after we looked).
        let recent = actor(&p)
            .recent
            .lock()
            .unwrap()
            .get(target, name)
            .map(|r| r.bytes.clone());
        if let Some(bytes) = recent {
            drop(waits);
            return waiter(Ok(bytes));
        }
        match p.read(|s| s.outbox_get(target, name)) {
            Ok(Some(e)) => match e.result {
                Some(r) => {
                    drop(waits);
                    waiter(Ok(Arc::new(r.into_bytes())))
                }
                None => waits
                    .entry(key)
                    .or_insert(PendingResult {
                        run_id: e.run_id,
                        waiters: vec![],
                    })
                    .waiters
                    .push(waiter),
            },
            Ok(None) => {
                drop(waits);
                waiter(Err(err!(
                    libc::ENOENT,
                    "no result named {name} in {peer}'s outbox"
                )))
            }
            Err(e) => {
                drop(waits);
                waiter(Err(e))
            }
        }
    }

    /// [`Core::read_result`] for a reader, thread `pid` (0: unknown), whose wait
    /// is bounded by `Config::result_wait` and ends with `EINTR` when the reader
    /// is killed or interrupted meanwhile (see `exec::wait`).
    pub fn read_result_as(&self, peer: &str, target: &str, name: &str, pid: u32, waiter: Waiter) {
        let (answer, w) = wait::shared(waiter);
        self.read_result(peer, target, name, w);
        let what = format!("{peer}'s result {name} from {target}");
        self.0.waits.add(answer, pid, self.0.cfg.result_wait, what);
    }

    /// Answers every read waiting for a result with [`crate::Error::stopped`].
    pub fn end_waits(&self) {
        self.0.waits.clear();
    }

    /// Whether a result is still pending (for `O_NONBLOCK` opens).
    pub fn result_pending(&self, peer: &str, target: &str, name: &str) -> Result<bool> {
        let (p, key) = self.result_place(peer, target, name)?;
        let pending = actor(&p)
            .waits
            .lock()
            .unwrap()
            .contains_key(&(key, name.to_string()));
        Ok(pending)
    }

    /// Waits for a result (blocking).
    pub fn wait_result(&self, peer: &str, target: &str, name: &str) -> Result<Arc<Vec<u8>>> {
        wait::block_on("the result was ready", |w| {
            self.read_result(peer, target, name, w)
        })
    }

    /// Submits the owner's script, waits for its result and returns it parsed.
    pub fn run(&self, peer: &str, name: &str, source: &str) -> Result<Value> {
        self.submit(peer, name, source.as_bytes().to_vec())?;
        let bytes = self.wait_result(peer, peer, &format!("{}.json", script_stem(name)))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Pending results of held submissions added to a slot's rows (a row of the same
/// name is replaced: the held submission is the newer run).
fn add_held(rows: &mut Vec<OutboxEntry>, held: Vec<OutboxEntry>) {
    for h in held {
        rows.retain(|r| r.name != h.name);
        rows.push(h);
    }
}
