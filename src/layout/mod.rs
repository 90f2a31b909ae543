//! The peer folder's tree as data: one [`Entry`] per name in a peer's folder (and
//! in its view of another peer, `peers/<other>/`), with its kind, mode, who may
//! write it, what a close there means and the [`Room`] of code that serves it.
//! The mount's lookups and listings (`vfs/tree.rs`) and the spool's layout and
//! path parsing (`spool/`) are derived from a [`Layout`]; adding `tables/` or
//! `.history/` is one entry here plus the code that serves its room.
//!
//! [`text`] owns the peer's policy texts as files: validated whole, then applied
//! or refused with the reason in the peer's log, the old text staying in force.

pub mod text;

use crate::policy::PolicyText;

pub use text::apply_text;

/// A file or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
}

/// Who may write an entry (for a folder: make, change and remove what is in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Only the daemon: read-only to everyone else.
    Daemon,
    /// The peer's owner (acting as the peer whose folder it is).
    Owner,
}

/// What closing a file written in (or as) an entry means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Nothing: nobody writes there.
    Nothing,
    /// The script is submitted (`inbox/`).
    Submit,
    /// The value is stored under its key (`state/`).
    Store,
    /// `x.rhai` is stored as module `x` (`modules/`).
    StoreModule,
    /// The whole text is validated, then applied or refused ([`text`]).
    Apply(PolicyText),
}

/// The code that serves an entry: the vfs and the spool each have one arm per room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Inbox,
    Outbox,
    State,
    Modules,
    Peers,
    Text(PolicyText),
    Log,
    /// `tables/`: the declared tables' rows, read-only (`vfs/tables.rs`).
    Tables,
    /// `.history/`: the peer's past, read only, for its owner (`vfs/history.rs`;
    /// the spool does not lay it out).
    History,
    /// `.snapshots/`: copies of the peer taken with mkdir, read only
    /// (`vfs/snapshots.rs`; the spool does not lay it out).
    Snapshots,
    /// Served by no code yet: shown empty and read-only (a room being built).
    Reserved,
}

/// One name in a peer's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub kind: Kind,
    /// The permission bits it shows (a state folder's own mode wins, see `vfs`).
    pub mode: u16,
    pub writer: Writer,
    pub close: Close,
    pub room: Room,
    /// Also in a peer's view of every other peer (`peers/<other>/<name>`).
    pub in_view: bool,
}

impl Entry {
    /// A read-only folder no code serves yet ([`Room::Reserved`]).
    pub const fn folder(name: &'static str, mode: u16) -> Entry {
        Entry {
            name,
            kind: Kind::Dir,
            mode,
            writer: Writer::Daemon,
            close: Close::Nothing,
            room: Room::Reserved,
            in_view: false,
        }
    }

    /// A read-only, empty file no code serves yet ([`Room::Reserved`]).
    pub const fn file(name: &'static str, mode: u16) -> Entry {
        Entry {
            kind: Kind::File,
            ..Entry::folder(name, mode)
        }
    }

    /// The same entry, shown in `peers/<other>/` too (sets [`Entry::in_view`]).
    pub const fn in_views(self) -> Entry {
        Entry {
            in_view: true,
            ..self
        }
    }

    pub const fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

const fn text(t: PolicyText) -> Entry {
    Entry {
        name: t.file(),
        kind: Kind::File,
        mode: 0o644,
        writer: Writer::Owner,
        close: Close::Apply(t),
        room: Room::Text(t),
        in_view: false,
    }
}

pub const INBOX: Entry = Entry {
    name: "inbox",
    kind: Kind::Dir,
    mode: 0o755,
    writer: Writer::Owner,
    close: Close::Submit,
    room: Room::Inbox,
    in_view: true,
};
pub const OUTBOX: Entry = Entry {
    name: "outbox",
    writer: Writer::Daemon,
    close: Close::Nothing,
    room: Room::Outbox,
    ..INBOX
};
pub const STATE: Entry = Entry {
    name: "state",
    close: Close::Store,
    room: Room::State,
    ..INBOX
};
pub const MODULES: Entry = Entry {
    name: "modules",
    close: Close::StoreModule,
    room: Room::Modules,
    in_view: false,
    ..INBOX
};
pub const PEERS: Entry = Entry {
    name: "peers",
    writer: Writer::Daemon,
    close: Close::Nothing,
    room: Room::Peers,
    in_view: false,
    ..INBOX
};
pub const POLICY: Entry = text(PolicyText::Policy);
pub const GROUPS: Entry = text(PolicyText::Groups);
pub const SCHEMA: Entry = text(PolicyText::Schema);
pub const TABLES: Entry = Entry {
    name: "tables",
    kind: Kind::Dir,
    mode: 0o555,
    writer: Writer::Daemon,
    close: Close::Nothing,
    room: Room::Tables,
    in_view: true,
};
pub const LOG: Entry = Entry {
    name: "log",
    kind: Kind::File,
    mode: 0o444,
    writer: Writer::Daemon,
    close: Close::Nothing,
    room: Room::Log,
    in_view: false,
};

pub const HISTORY: Entry = Entry {
    name: ".history",
    kind: Kind::Dir,
    mode: 0o500,
    writer: Writer::Daemon,
    close: Close::Nothing,
    room: Room::History,
    in_view: false,
};

pub const SNAPSHOTS: Entry = Entry {
    name: ".snapshots",
    mode: 0o700,
    room: Room::Snapshots,
    ..HISTORY
};

/// A peer's folder as it is served today, in the order `ls -U` shows it.
pub const PEER_FOLDER: [Entry; 12] = [
    INBOX, OUTBOX, STATE, MODULES, PEERS, POLICY, GROUPS, SCHEMA, TABLES, LOG, HISTORY, SNAPSHOTS,
];

/// The entries of a peer's folder that the mount and the spool serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    entries: Vec<Entry>,
}

impl Layout {
    /// [`PEER_FOLDER`].
    pub fn standard() -> Layout {
        Layout {
            entries: PEER_FOLDER.to_vec(),
        }
    }

    /// This layout with `entry` added (in place of an entry of the same name).
    pub fn with(mut self, entry: Entry) -> Layout {
        self.entries.retain(|e| e.name != entry.name);
        self.entries.push(entry);
        self
    }

    /// A peer's own folder.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// A peer's view of another peer (`peers/<other>/`).
    pub fn view(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.in_view)
    }

    /// The entry `name` of a peer's own folder.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The entry `name` of a view (`peers/<other>/<name>`).
    pub fn view_entry(&self, name: &str) -> Option<&Entry> {
        self.view().find(|e| e.name == name)
    }

    /// The entries of `kind` that a peer's owner writes, for messages:
    /// `inbox/, state/ and modules/` (each name followed by `suffix`, the last
    /// joined by `conj`: "and", "or").
    pub fn written(&self, kind: Kind, suffix: &str, conj: &str) -> String {
        let names: Vec<String> = (self.entries.iter())
            .filter(|e| e.kind == kind && e.writer == Writer::Owner)
            .map(|e| format!("{}{suffix}", e.name))
            .collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} {conj} {last}", rest.join(", ")),
            None => "nothing".to_string(),
        }
    }

    /// The entry served by `room` (each room but [`Room::Reserved`] has one).
    pub fn of_room(&self, room: Room) -> Option<&Entry> {
        self.entries.iter().find(|e| e.room == room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_texts_are_named_by_their_type() {
        let l = Layout::standard();
        let mut names: Vec<_> = l.entries().iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PEER_FOLDER.len());
        for t in PolicyText::ALL {
            let e = l.of_room(Room::Text(t)).unwrap();
            assert_eq!((e.name, e.close), (t.file(), Close::Apply(t)));
        }
        let view: Vec<_> = l.view().map(|e| e.name).collect();
        assert_eq!(view, ["inbox", "outbox", "state", "tables"]);
        assert_eq!(
            l.written(Kind::Dir, "/", "and"),
            "inbox/, state/ and modules/"
        );
        assert_eq!(
            l.written(Kind::File, "", "or"),
            "policy.cedar, groups or schema.toml"
        );
    }

    #[test]
    fn an_entry_added_replaces_one_of_its_name() {
        let l = Layout::standard().with(Entry::folder("tables", 0o555).in_views());
        assert_eq!(l.entry("tables").unwrap().room, Room::Reserved);
        assert!(l.view_entry("tables").is_some());
        let l = Layout::standard().with(Entry::file("log", 0o400));
        assert_eq!(l.entries().len(), PEER_FOLDER.len());
        assert_eq!(l.entry("log").unwrap().kind, Kind::File);
    }
}
