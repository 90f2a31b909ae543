//! How a message leaves its sender: the seam between the executor and the ways
//! to a target (this daemon, or another one through the lattice).

use super::Core;
use crate::peer::{Ack, Op};
use crate::store::Outgoing;

/// How a message of a local peer reaches its target: in this daemon
/// (`InProcess`, today's code) or through another daemon (the lattice).
pub trait Transport: Send + Sync {
    /// Hands `msg`, written by the local peer `from`, towards `msg.to`. `ack` is
    /// called exactly once: `Ok(())` once the target (or a durable relay such as
    /// JetStream) has taken the message, and the sender may mark it delivered;
    /// `Err(e)` otherwise, where
    ///  - `e.errno == ENOENT`: no such peer anywhere: the sender gets an error result now;
    ///  - `EHOSTUNREACH`, `ETIMEDOUT`, `EAGAIN`: the way there is down: retried later,
    ///    not counted against `delivery_tries` (the message waits in the sender's store);
    ///  - any other errno: the target refused it: counted, an error result after
    ///    `delivery_tries`.
    fn deliver(&self, from: &str, msg: Outgoing, ack: Ack);
}

/// Whether a delivery error means "the way is down, try again later" (not counted).
pub fn is_transient(errno: i32) -> bool {
    matches!(errno, libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::EAGAIN)
}

/// Delivery within this daemon: the target's actor takes the message in its next
/// transaction.
pub struct InProcess {
    core: std::sync::Weak<super::Inner>,
}

impl InProcess {
    pub(super) fn new(core: &Core) -> InProcess {
        InProcess {
            core: std::sync::Arc::downgrade(&core.0),
        }
    }
}

impl Transport for InProcess {
    fn deliver(&self, from: &str, msg: Outgoing, ack: Ack) {
        match self.core.upgrade() {
            Some(inner) => Core(inner).deliver_local(from, msg, ack),
            None => ack(Err(crate::err!(libc::EAGAIN, "the daemon is stopping"))),
        }
    }
}

impl Core {
    /// The in-process path: `msg` from `from` is queued at its (local) target,
    /// `ack` called after the transaction that records it committed. `ENOENT` when
    /// this daemon does not serve `msg.to`.
    pub fn deliver_local(&self, from: &str, msg: Outgoing, ack: Ack) {
        match self.peer(&msg.to) {
            Ok(target) => self.push(
                &target,
                Op::Deliver {
                    from: from.to_string(),
                    msg,
                },
                Some(ack),
            ),
            Err(e) if e.errno == libc::ENOENT => ack(Err(e)),
            // Cannot open it now (too many files, ...): later.
            Err(e) => ack(Err(crate::err!(libc::EAGAIN, "{}", e.message))),
        }
    }

    /// The message a script `caller` drops for `target`, a peer of another daemon
    /// of the lattice, becomes (sent from `caller` by [`Op::Send`]).
    pub fn drop_message(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &serde_json::Value,
    ) -> crate::error::Result<Outgoing> {
        self.check_script_size(name, source.len(), false)?;
        self.new_message(caller, target, name, source, params, 1)
    }

    /// Drops a script at `target` served elsewhere: `ack` after it is durable at `caller`.
    pub fn drop_remote(&self, caller: &str, target: &str, name: &str, source: Vec<u8>, ack: Ack) {
        match self.drop_message(caller, target, name, source, &serde_json::json!({})) {
            Ok(msg) => self.apply_async(caller, Op::Send(msg), Some(ack)),
            Err(e) => ack(Err(e)),
        }
    }

    /// Sends every message from now on through `t`.
    pub fn set_transport(&self, t: std::sync::Arc<dyn Transport>) {
        *self.0.transport.write().unwrap() = Some(t);
    }

    pub(super) fn transport(&self) -> std::sync::Arc<dyn Transport> {
        match self.0.transport.read().unwrap().as_ref() {
            Some(t) => t.clone(),
            None => std::sync::Arc::new(InProcess::new(self)),
        }
    }
}
