//! The seam where a message leaves its sender: the [`Transport`] trait, its
//! in-process implementation ([`InProcess`], the target is a peer of this
//! daemon), and the kinds of message ([`MessageKind`]).

use std::str::FromStr;
use std::sync::{Arc, Weak};

use super::op::{Ack, Op};
use super::{Core, Inner};
use crate::error::err;
use crate::error::{Error, Result};
use crate::store::Outgoing;

/// What a message between peers carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A script to run at `to`.
    Script,
    /// A result for `to`'s outbox.
    Result,
}

impl MessageKind {
    /// The name stored in a message row's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Script => "script",
            MessageKind::Result => "result",
        }
    }

    /// The kind of `msg` (`EINVAL` for a kind this daemon does not know).
    pub fn of(msg: &Outgoing) -> Result<MessageKind> {
        msg.kind.parse()
    }
}

impl FromStr for MessageKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<MessageKind> {
        match s {
            "script" => Ok(MessageKind::Script),
            "result" => Ok(MessageKind::Result),
            other => Err(err!(libc::EINVAL, "unknown message kind {other:?}")),
        }
    }
}

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

/// Whether a delivery error means the way to the target is down (retried, not
/// counted; see [`Transport::deliver`]).
pub(super) fn way_down(e: &Error) -> bool {
    matches!(e.errno, libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::EAGAIN)
}

/// Delivery to peers of this daemon ([`Core::deliver_local`]).
pub struct InProcess {
    // Weak: the core holds its transport.
    core: Weak<Inner>,
}

impl InProcess {
    pub fn new(core: &Core) -> InProcess {
        InProcess::of(Arc::downgrade(&core.0))
    }

    pub(super) fn of(core: Weak<Inner>) -> InProcess {
        InProcess { core }
    }
}

impl Transport for InProcess {
    fn deliver(&self, from: &str, msg: Outgoing, ack: Ack) {
        match self.core.upgrade() {
            Some(inner) => Core(inner).deliver_local(from, msg, ack),
            None => ack(Err(err!(
                libc::EAGAIN,
                "the daemon is stopping: message {} waits for the next start",
                msg.id
            ))),
        }
    }
}

impl Core {
    /// Replaces how messages of local peers reach their targets (in process by
    /// default).
    pub fn set_transport(&self, t: Arc<dyn Transport>) {
        *self.0.transport.write().unwrap() = t;
    }

    pub(super) fn transport(&self) -> Arc<dyn Transport> {
        self.0.transport.read().unwrap().clone()
    }

    /// Hands `msg` from `from` to its target, a peer of this daemon: the target's
    /// actor takes it in its next transaction, and `ack` is called after that
    /// commit. Errors follow [`Transport::deliver`]: `ENOENT` when there is no
    /// such peer, `EAGAIN` when it cannot be opened now, and a refusal by the
    /// target never with one of those errnos (it is counted).
    pub fn deliver_local(&self, from: &str, msg: Outgoing, ack: Ack) {
        let target = match self.peer(&msg.to) {
            Ok(t) => t,
            Err(e) if e.errno == libc::ENOENT => return ack(Err(e)),
            Err(e) => return ack(Err(Error::new(libc::EAGAIN, e.message))),
        };
        let refused: Ack = Box::new(move |r| {
            ack(r.map_err(|e| {
                if e.errno == libc::ENOENT || way_down(&e) {
                    Error::new(libc::EIO, e.message)
                } else {
                    e
                }
            }))
        });
        self.push(
            &target,
            Op::Deliver {
                from: from.to_string(),
                msg,
            },
            Some(refused),
        );
    }
}
