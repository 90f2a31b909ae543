//! Bounded waits for results, that notice when their reader is killed.
//!
//! A read of a pending result is answered when the run finishes. fuser 0.18
//! answers `FUSE_INTERRUPT` with `ENOSYS` (after which the kernel sends no more),
//! and a request the daemon has read keeps its caller in uninterruptible sleep
//! until it is answered: so a reader killed (`kill -9`) or interrupted (Ctrl-C)
//! while it waits would sit in D state until the run ends. Each waiting read is
//! therefore watched: every 100 ms its caller's /proc/<pid>/status is read, and a
//! pending SIGKILL, or a pending SIGINT, SIGTERM, SIGHUP or SIGQUIT that the
//! reader neither blocks nor ignores, answers the read with `EINTR` (the kernel
//! then delivers the signal); a read still waiting after `Config::result_wait`
//! is answered with `ETIMEDOUT` (the result stays: read it again later).
//!
//! Also the blocking form of a callback ([`block_on`]), for callers that wait
//! on the calling thread (`Core::apply`, `Core::wait_result`).

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::op::Waiter;
use crate::error::{err, Error, Result};

/// Calls `start` with a callback and blocks until the callback is called;
/// [`Error::stopped`] before `what` when it is dropped uncalled.
pub(crate) fn block_on<T: Send + 'static>(
    what: &str,
    start: impl FnOnce(Box<dyn FnOnce(Result<T>) + Send>),
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().map_err(|_| Error::stopped(what))?
}

/// One waiting read: its answer (taken by whoever answers first), its caller.
struct WaitingRead {
    answer: Arc<Mutex<Option<Waiter>>>,
    pid: u32,
    deadline: Instant,
    what: String,
}

#[derive(Default)]
pub(crate) struct WaitingReads {
    reads: Mutex<Vec<WaitingRead>>,
    /// Set when the daemon stops: a read that would wait is answered at once.
    closed: std::sync::atomic::AtomicBool,
}

/// `waiter`, callable once from either side: the run's publication or the thread that ends waits (`peerfs-waits`).
pub(crate) fn shared(waiter: Waiter) -> (Arc<Mutex<Option<Waiter>>>, Waiter) {
    let answer = Arc::new(Mutex::new(Some(waiter)));
    let answer2 = answer.clone();
    let w: Waiter = Box::new(move |r| {
        let w = answer2.lock().unwrap().take();
        if let Some(w) = w {
            w(r)
        }
    });
    (answer, w)
}

impl WaitingReads {
    /// Watches a read that is still waiting (`answer` not yet answered).
    pub(crate) fn add(
        &self,
        answer: Arc<Mutex<Option<Waiter>>>,
        pid: u32,
        wait: Duration,
        what: String,
    ) {
        if answer.lock().unwrap().is_none() {
            return;
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            let w = answer.lock().unwrap().take();
            if let Some(w) = w {
                w(Err(stopped()));
            }
            return;
        }
        self.reads.lock().unwrap().push(WaitingRead {
            answer,
            pid,
            deadline: Instant::now() + wait,
            what,
        });
    }

    /// One pass: answers the reads whose caller has a signal pending or whose
    /// time is up, and forgets the ones answered.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        self.reads.lock().unwrap().retain(|w| {
            if w.answer.lock().unwrap().is_none() {
                return false;
            }
            let why = if w.pid != 0 && signalled(w.pid) {
                Some(err!(
                    libc::EINTR,
                    "reading {}: the reader (pid {}) was interrupted by a signal while it waited",
                    w.what,
                    w.pid
                ))
            } else if now >= w.deadline {
                Some(err!(
                    libc::ETIMEDOUT,
                    "reading {}: the result is not ready yet after the longest wait \
                     (result_wait); it stays pending: read it again later",
                    w.what
                ))
            } else {
                None
            };
            match why {
                Some(e) => {
                    due.push((w.answer.clone(), e));
                    false
                }
                None => true,
            }
        });
        for (answer, e) in due {
            let w = answer.lock().unwrap().take();
            if let Some(w) = w {
                tracing::info!(error = %e, "a waiting read ends");
                w(Err(e));
            }
        }
    }

    /// Answers every read still waiting, and from now on every read that would
    /// wait, with [`Error::stopped`].
    pub(crate) fn clear(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in std::mem::take(&mut *self.reads.lock().unwrap()) {
            let f = w.answer.lock().unwrap().take();
            if let Some(f) = f {
                f(Err(stopped()));
            }
        }
    }
}

fn stopped() -> Error {
    Error::stopped("the result was ready (it runs after the next start)")
}

/// Whether thread `pid` has a fatal or interrupting signal pending (or is gone).
fn signalled(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    pending_stop(&status)
}

/// The rule of [`signalled`], over the text of /proc/<pid>/status.
pub(crate) fn pending_stop(status: &str) -> bool {
    let mask = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    if pending & bit(libc::SIGKILL) != 0 {
        return true;
    }
    let caught_or_default = !(mask("SigBlk:") | mask("SigIgn:"));
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
        .iter()
        .any(|&s| pending & caught_or_default & bit(s) != 0)
}

#[cfg(test)]
mod tests {
    use super::pending_stop;

    fn status(pnd: &str, shd: &str, blk: &str, ign: &str) -> String {
        format!(
            "Name:\tcat\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0\n"
        )
    }

    #[test]
    fn pending_kill_or_unblocked_interrupts_stop_a_wait() {
        let z = "0000000000000000";
        assert!(!pending_stop(&status(z, z, z, z)));
        // SIGKILL (bit 8), per thread or shared.
        assert!(pending_stop(&status("0000000000000100", z, z, z)));
        assert!(pending_stop(&status(z, "0000000000000100", z, z)));
        // SIGINT (bit 1): unless blocked or ignored.
        assert!(pending_stop(&status(z, "0000000000000002", z, z)));
        assert!(!pending_stop(&status(
            z,
            "0000000000000002",
            "0000000000000002",
            z
        )));
        assert!(!pending_stop(&status(
            z,
            "0000000000000002",
            z,
            "0000000000000002"
        )));
        // SIGCHLD (bit 17) does not stop a wait.
        assert!(!pending_stop(&status("0000000000010000", z, z, z)));
    }
}
