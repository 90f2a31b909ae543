//! The seam where a message leaves its sender: the [`Transport`] trait, its
//! in-process implementation ([`InProcess`], the target is a peer of this
//! daemon), and the kinds of message ([`MessageKind`]).

use std::str::FromStr;
use std::sync::{Arc, Weak};

use super::op::{Ack, Op};
use super::{Core, Inner};
use crate::error::err;
use crate::error::{Error, Result};
use crate::store::{DirEntry, Message};
use crate::tables::rows::Row;

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
    pub fn of(msg: &Message) -> Result<MessageKind> {
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

/// How a delivery ended: what the sender does next depends on it alone.
#[derive(Debug)]
pub enum Delivery {
    /// The target (or a durable relay such as JetStream) took the message: the
    /// sender marks it delivered.
    Taken,
    /// No such peer anywhere: the sender gets an error result now.
    NoSuchPeer(Error),
    /// The way there is down (NATS away, the daemon stopping, the target's store
    /// not openable now): retried later, not counted against `delivery_tries`
    /// (the message waits in the sender's store).
    WayDown(Error),
    /// The target refused it: counted; an error result after `delivery_tries`.
    Refused(Error),
}

/// Called exactly once with how a delivery ended.
pub type DeliveryAck = Box<dyn FnOnce(Delivery) + Send>;

/// How a message of a local peer reaches its target: in this daemon
/// (`InProcess`, today's code) or through another daemon (the lattice).
pub trait Transport: Send + Sync {
    /// Hands `msg`, written by the local peer `from`, towards `msg.to`; `ack` is
    /// called exactly once with how it ended ([`Delivery`]).
    fn deliver(&self, from: &str, msg: Message, ack: DeliveryAck);

    /// Whether this transport reaches other daemons (a lattice): a peer not served
    /// here may then be served elsewhere, or be so once the directory is read.
    fn spans_daemons(&self) -> bool {
        false
    }

    /// Whether another daemon serves `peer` (the lattice's directory says so).
    /// In process: never.
    fn serves_elsewhere(&self, _peer: &str) -> bool {
        false
    }

    /// The peers other daemons serve (sorted). In process: none.
    fn remote_peers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Claims a peer about to be created here: `EEXIST` when another daemon
    /// serves a peer of that name.
    fn claim(&self, _peer: &str) -> Result<()> {
        Ok(())
    }

    /// A peer was created here: messages for it start to flow.
    fn serve_new(&self, _peer: &str) {}

    /// Reads `key` of `owner`, a peer of another daemon, for a script of `owner`'s
    /// running at `reader`, as `owner`'s policy decides there (`caller_get`).
    fn remote_get(
        &self,
        owner: &str,
        _reader: &str,
        _key: &str,
        _script: &str,
        _params: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>> {
        Err(not_here(owner))
    }

    /// The children of the folder `dir` of `owner` (a peer of another daemon)
    /// that `owner`'s policy lets `reader` see, decided where `owner` is served
    /// (`peers/<owner>/state/` of a remote peer). `ENOENT` in process.
    fn remote_view_list(&self, owner: &str, _reader: &str, _dir: &str) -> Result<Vec<DirEntry>> {
        Err(not_here(owner))
    }

    /// `key` of `owner` as `reader` may see it there: a readable value, a folder
    /// holding one, or `None`.
    fn remote_view_stat(&self, owner: &str, _reader: &str, _key: &str) -> Result<Option<DirEntry>> {
        Err(not_here(owner))
    }

    /// The bytes of `key` of `owner`, if `reader` may read it there (`ENOENT`
    /// otherwise).
    fn remote_view_bytes(&self, owner: &str, _reader: &str, _key: &str) -> Result<Vec<u8>> {
        Err(not_here(owner))
    }

    /// The declared tables of `owner` (a peer of another daemon) of which its
    /// policy lets `reader` select rows, decided where `owner` is served.
    fn remote_tables(&self, owner: &str, _reader: &str) -> Result<Vec<String>> {
        Err(not_here(owner))
    }

    /// The rows of `table` of `owner` that `reader` may select there, in key
    /// order (`key`: only the row of that key's text, if it may).
    fn remote_rows(
        &self,
        owner: &str,
        _reader: &str,
        _table: &str,
        _key: Option<&str>,
    ) -> Result<Vec<Row>> {
        Err(not_here(owner))
    }
}

fn not_here(owner: &str) -> Error {
    err!(libc::ENOENT, "peer {owner:?} is not served by this daemon")
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
    fn deliver(&self, from: &str, msg: Message, ack: DeliveryAck) {
        match self.core.upgrade() {
            Some(inner) => Core(inner).deliver_local(from, msg, ack),
            None => ack(Delivery::WayDown(Error::stopped(format_args!(
                "message {} was delivered: it waits for the next start",
                msg.id
            )))),
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

    /// Whether `peer` is served by another daemon of the lattice (and not here).
    pub fn serves_elsewhere(&self, peer: &str) -> bool {
        !self.0.registry.exists(peer) && self.transport().serves_elsewhere(peer)
    }

    /// Whether `peer` exists here or anywhere in the lattice.
    pub fn knows(&self, peer: &str) -> bool {
        self.0.registry.exists(peer) || self.transport().serves_elsewhere(peer)
    }

    /// Whether a script here may `send` to `peer`: a peer of this daemon, or any
    /// peer at all in a lattice (the directory there has the last word, at
    /// delivery, and NATS may be away for now; so also while a daemon started
    /// with `lattice.nats` has not joined yet).
    pub fn may_send_to(&self, peer: &str) -> bool {
        self.0.registry.exists(peer) || self.0.cfg.joins_lattice || self.transport().spans_daemons()
    }

    /// The peers of the lattice served by other daemons, sorted.
    pub fn remote_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .transport()
            .remote_peers()
            .into_iter()
            .filter(|p| !self.0.registry.exists(p))
            .collect();
        v.sort();
        v
    }

    /// [`Transport::remote_view_list`]: what `reader` sees of the folder `dir` of
    /// `owner`, a peer served by another daemon.
    pub fn remote_view_list(&self, owner: &str, reader: &str, dir: &str) -> Result<Vec<DirEntry>> {
        self.transport().remote_view_list(owner, reader, dir)
    }

    /// [`Transport::remote_view_stat`].
    pub fn remote_view_stat(
        &self,
        owner: &str,
        reader: &str,
        key: &str,
    ) -> Result<Option<DirEntry>> {
        self.transport().remote_view_stat(owner, reader, key)
    }

    /// [`Transport::remote_view_bytes`].
    pub fn remote_view_bytes(&self, owner: &str, reader: &str, key: &str) -> Result<Vec<u8>> {
        self.transport().remote_view_bytes(owner, reader, key)
    }

    /// [`Transport::remote_tables`].
    pub fn remote_tables(&self, owner: &str, reader: &str) -> Result<Vec<String>> {
        self.transport().remote_tables(owner, reader)
    }

    /// [`Transport::remote_rows`].
    pub fn remote_rows(
        &self,
        owner: &str,
        reader: &str,
        table: &str,
        key: Option<&str>,
    ) -> Result<Vec<Row>> {
        self.transport().remote_rows(owner, reader, table, key)
    }

    /// The message a script `caller` drops for `target`, a peer of another daemon
    /// of the lattice, becomes (sent from `caller` by [`Op::Send`]).
    pub(super) fn drop_message(
        &self,
        caller: &str,
        target: &str,
        name: &str,
        source: Vec<u8>,
        params: &serde_json::Value,
    ) -> Result<Message> {
        self.check_script_size(name, source.len(), false)?;
        self.new_message(caller, target, name, source, params, 1)
    }

    /// Hands `msg` from `from` to its target, a peer of this daemon: the target's
    /// actor takes it in its next transaction, and `ack` is called after that
    /// commit ([`Delivery::Taken`]); no such peer, a store that cannot be opened
    /// now, or the target's refusal otherwise.
    pub fn deliver_local(&self, from: &str, msg: Message, ack: DeliveryAck) {
        let target = match self.peer(&msg.to) {
            Ok(t) => t,
            Err(e) if e.errno == libc::ENOENT => return ack(Delivery::NoSuchPeer(e)),
            Err(e) => return ack(Delivery::WayDown(e)),
        };
        let refused: Ack = Box::new(move |r| {
            ack(match r {
                Ok(()) => Delivery::Taken,
                Err(e) => Delivery::Refused(e),
            })
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
