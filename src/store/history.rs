//! A peer's history as the store keeps it: the [`History`] trait every backend
//! with history implements, and the plain types it speaks in.
//!
//! Every run (or write through the mount) that changed something is one
//! *entry*: its run id, caller, chain, script name, time, and for each *item*
//! it changed (a state key, a module, `policy`, `groups`, `schema`, a table's row)
//! the version before and after. Versions are kept by reference: a state
//! value's bytes are stored once and shared by the live state and every entry
//! that names them. Undo and restore are changes like any other, made inside
//! the entry of the run that asked for them (so they can be undone too).

use crate::error::Result;

/// What kind of thing an item of an entry is. New kinds (rows of declared
/// tables) add a variant and a name; the change records stay the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    /// A key of `state/`.
    State,
    /// A module of `modules/` (its name without `.rhai`).
    Module,
    /// A text kept in the meta table: `policy`, `groups` or `schema`.
    Meta,
    /// A row of a declared table: `<table>/<key>`.
    Row,
}

impl ItemKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ItemKind::State => "state",
            ItemKind::Module => "module",
            ItemKind::Meta => "meta",
            ItemKind::Row => "row",
        }
    }

    pub fn parse(s: &str) -> Option<ItemKind> {
        [
            ItemKind::State,
            ItemKind::Module,
            ItemKind::Meta,
            ItemKind::Row,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Meta keys whose changes the history records (the texts `policy.cedar`,
/// `groups` and `schema.toml`); other meta rows are the daemon's own bookkeeping.
pub const TRACKED_META: &[&str] = &["policy", "groups", crate::tables::META_KEY];

/// Who is changing the store now: the entry its changes go to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryHead {
    /// The run id (the result's `id`), or a fresh id for a write through the mount.
    pub id: String,
    /// The script's name, or what the mount wrote (`write state/k`).
    pub name: String,
    pub caller: String,
    pub chain: Vec<String>,
}

/// An entry of the history, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the history (larger: later).
    pub seq: i64,
    pub head: EntryHead,
    /// When it finished (ns since the epoch).
    pub at: i64,
    /// Bytes of old values it keeps.
    pub bytes: u64,
}

/// One version of an item: its size, and its bytes as a file shows them when
/// asked for (`value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub size: u64,
    /// A state value written by a script (JSON) rather than as a file's bytes.
    pub typed: bool,
    pub mode: Option<u32>,
    pub value: Option<Vec<u8>>,
}

/// One item an entry changed: before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    pub kind: ItemKind,
    pub item: String,
    pub before: Option<Shown>,
    pub after: Option<Shown>,
}

/// Where a restore goes to: right after an entry, or the last entry finished
/// by a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    Run(String),
    Time(i64),
}

impl Point {
    /// A run id, or an RFC 3339 time (it has a `T` and a `:`; run ids never
    /// have a `:`).
    pub fn parse(text: &str) -> Result<Point> {
        Ok(if text.contains('T') && text.contains(':') {
            Point::Time(crate::util::parse_rfc3339(text)?)
        } else {
            Point::Run(text.to_string())
        })
    }
}

/// How long the history keeps entries, and how many bytes of old values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// 0: nothing is recorded.
    pub max_age_ns: i64,
    /// 0: no bound.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_ns: 30 * 86_400 * 1_000_000_000,
            max_bytes: 0,
        }
    }
}

impl Retention {
    pub fn records(&self) -> bool {
        self.max_age_ns > 0
    }
}

/// How an entry ended: whether it was kept (it changed something), and whether
/// it changed the policy texts or modules (which the daemon caches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    pub kept: bool,
    pub meta: bool,
    pub modules: bool,
}

/// The history of one peer's store.
pub trait History {
    /// Changes from now on go to the entry `head` (made at its first change).
    fn begin_entry(&mut self, head: &EntryHead) -> Result<()>;
    /// Ends the entry begun last; whether it changed anything (an entry whose
    /// changes were rolled back, or that changed nothing, is not kept).
    fn end_entry(&mut self) -> Result<Ended>;
    /// Entries after `after_seq`, oldest first, at most `limit`.
    fn entries(&mut self, after_seq: i64, limit: usize) -> Result<Vec<Entry>>;
    /// The entry of a run id.
    fn entry(&mut self, id: &str) -> Result<Option<Entry>>;
    /// The place in the history of a point: the `seq` of the entry the peer was
    /// right after then (0: before every entry kept). Refused when the point is
    /// out of retention or unknown.
    fn seq_of(&mut self, point: &Point) -> Result<i64>;
    /// What an entry changed (`values_up_to`: values of at most that size shown).
    fn changes(&mut self, seq: i64, values_up_to: u64) -> Result<Vec<ItemChange>>;
    /// A state key as right after the entry `seq`: a value (`Some(Some)`), a
    /// folder (`Some(None)`) or nothing.
    fn stat_at(&mut self, seq: i64, key: &str) -> Result<Option<Option<Shown>>>;
    /// A state value's bytes, as `state/` shows them, right after the entry `seq`.
    fn bytes_at(&mut self, seq: i64, key: &str) -> Result<Option<Vec<u8>>>;
    /// The children of a folder of `state/` right after the entry `seq`.
    fn list_at(&mut self, seq: i64, dir: &str) -> Result<Vec<super::DirEntry>>;
    /// The declared tables right after the entry `seq`, by name.
    fn tables_at(&mut self, seq: i64) -> Result<Vec<String>>;
    /// A table's rows right after the entry `seq`, in key order, with the
    /// fields of then; `None`: no such table then.
    fn table_at(&mut self, seq: i64, table: &str) -> Result<Option<Vec<crate::tables::rows::Row>>>;
    /// Undoes the entry of `run` (with `cascade`, every later entry in the way
    /// too, newest first) inside the open entry; the run ids undone.
    fn undo(&mut self, run: &str, cascade: bool) -> Result<Vec<String>>;
    /// Returns every item to the point, inside the open entry; the run ids undone.
    fn restore(&mut self, point: &Point) -> Result<Vec<String>>;
    /// Drops entries out of `ret` at `now`, freeing the values only they kept;
    /// how many were dropped.
    fn prune(&mut self, now: i64, ret: &Retention) -> Result<u64>;
}
