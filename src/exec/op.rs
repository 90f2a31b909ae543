//! The vocabulary of a peer's actor: the changes it applies ([`Op`]) and the
//! callbacks that answer them ([`Ack`]) and readers of results ([`Waiter`]).

use std::sync::Arc;

use crate::error::Result;
use crate::store::{Job, Message};

/// A change to a peer's storage, made by its actor in a transaction.
pub enum Op {
    /// A script for this peer's queue; `outbox` is where its result will show.
    Submit(Job),
    SetBytes(String, Vec<u8>),
    Remove(String),
    Rename(String, String),
    /// Every key under the folder `from` moved under `to`, in one transaction.
    RenameDir(String, String),
    /// A key's modification time set (`touch -d`, `utimensat`, rsync's times).
    SetMtime(String, i64),
    /// A key's permission bits set (chmod).
    SetMode(String, u32),
    /// A folder made in `state/` (mkdir): kept while it holds no key.
    MakeDir(String),
    /// A kept folder of `state/` removed (rmdir of an empty folder).
    RemoveDir(String),
    /// A `state/` folder's permission bits or time set (chmod, utimensat).
    SetDirAttrs {
        dir: String,
        mode: Option<u32>,
        mtime: Option<i64>,
    },
    SetModule(String, Vec<u8>),
    RemoveModule(String),
    SetMeta(String, Vec<u8>),
    /// A row file written by the owner (`tables/<table>/<key>.json`): the row
    /// inserted, or replaced whole.
    PutRow {
        table: String,
        key: String,
        json: Vec<u8>,
    },
    /// A row file removed by the owner: the row deleted.
    DeleteRow {
        table: String,
        key: String,
    },
    OutboxRemove(String, String),
    /// A message from another peer (a script to run, or a result to show).
    Deliver {
        from: String,
        msg: Message,
    },
    /// The target took the message: stop retrying it.
    Delivered(String),
    /// A script this peer sends to a peer of another daemon (dropped into its
    /// `peers/<to>/inbox/`): recorded with its pending result row, delivered after
    /// the commit; its result comes back into this peer's outbox for `to`.
    Send(Message),
    Log(String),
    /// The owner withdraws the queued scripts of this name.
    Withdraw(String),
    /// A script a spool intake took from a folder: submitted like [`Op::Submit`],
    /// and in the same transaction `record` is stored under the meta key `key` (what
    /// was taken, so a restart that finds the file still there skips it) and the
    /// meta keys in `forget` (files already removed) are dropped.
    Intake {
        job: Job,
        key: String,
        record: Vec<u8>,
        forget: Vec<String>,
    },
    /// A script a spool intake took from `caller`'s `peers/<to>/inbox/` for a peer
    /// served by another daemon of the lattice: sent like [`Op::Send`] (its
    /// outgoing row and pending result at this peer, the caller), and in the same
    /// transaction the intake's `record` is stored under `key` and the keys in
    /// `forget` are dropped, as for [`Op::Intake`]: taken and sent exactly once.
    IntakeSend {
        msg: Message,
        key: String,
        record: Vec<u8>,
        forget: Vec<String>,
    },
    /// A submission taken from the intake journal into this peer's queue (or run
    /// at once, as [`Op::Submit`]); `withdrawn`: the owner removed it before, so
    /// it ends unrun with a result that says so.
    Journaled {
        job: Job,
        withdrawn: bool,
    },
    /// Records under the meta key `key` the highest journal `seq` taken into this
    /// peer's queue, in the transaction that takes it (see `store::journal`).
    JournalMark {
        key: String,
        seq: i64,
    },
    /// Drops spool intake records of files already removed (no fsync of its own: a
    /// record left behind only matches a file with the same name, size, inode,
    /// mtime and content hash).
    Forget(Vec<String>),
}

/// Called once with the outcome of an [`Op`]: after its transaction committed (the
/// change is on disk) or failed.
pub type Ack = Box<dyn FnOnce(Result<()>) + Send>;

/// Called once with a result's JSON bytes (or an error) when it is ready.
pub type Waiter = Box<dyn FnOnce(Result<Arc<Vec<u8>>>) + Send>;
