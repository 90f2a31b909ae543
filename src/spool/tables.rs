//! The spool's `tables/` (DESIGN §7, as on the mount): each peer's own rows and,
//! under `peers/<o>/tables/`, the rows `o`'s policy lets the viewer select
//! (`policy::sight`), mirrored after each commit that changed rows, the schema
//! or the policy: `<table>.jsonl` (every row, one a line) and `<table>/<key>.json`
//! (one row). In its own folder the owner writes a row file (taken at close or
//! rename, as `Op::PutRow`, validated like the mount's) and removes one (an
//! `Op::DeleteRow`); a refusal goes to the peer's `log`, a refused file is
//! renamed `<key>.json.refused~` and the row's file shows the row as it is.
//! Anything else changed in a `tables/` mirror is undone and logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::files::{self, as_user};
use super::mirror::{list_files, Mirror, Mirrored, Note, RowDone};
use super::user_of;
use crate::error::Result;
use crate::exec::Op;
use crate::layout::TABLES;
use crate::names::is_staging_name;
use crate::policy::sight::{key_text, render, Sight};

/// `rel` (under `tables/`) names a row file: `<table>/<key>.json`.
fn row_file(rel: &str) -> Option<(&str, &str)> {
    let (t, name) = rel.split_once('/')?;
    let key = name.strip_suffix(".json")?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && !is_staging_name(s);
    (ok(t) && ok(name) && !key.is_empty()).then_some((t, key))
}

/// What tells one version of a file from another without reading it.
type Stamp = (u64, u64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.ino(), m.size(), files::mtime_ns(&m)))
}

/// A key that can be a file's name in a table's folder.
fn file_key(k: &str) -> bool {
    !k.is_empty() && !k.contains('/') && k != "." && k != ".." && !is_staging_name(k)
}

/// What a mirror of tables holds: files (path under `tables/` -> bytes) and
/// the tables' folders (one per table shown, empty ones too).
type Wanted = (BTreeMap<String, Vec<u8>>, Vec<String>);

impl Mirror {
    /// Every mirror of `owner`'s tables: its own and every other peer's view.
    pub(super) fn sync_tables(&mut self, owner: &str) {
        self.sync_tables_view(owner, owner, false);
        for viewer in self.others(owner) {
            self.sync_tables_view(&viewer, owner, false);
        }
    }

    /// Makes `viewer`'s `tables/` mirror of `owner` match the store. In the
    /// owner's own folder, row files that differ from what this process wrote
    /// are the owner's and are applied (once the mirror was made whole once).
    /// `check`: touched from outside; what differs is undone and logged.
    pub(super) fn sync_tables_view(&mut self, viewer: &str, owner: &str, check: bool) {
        if (viewer != owner && self.core.serves_elsewhere(owner)) != self.remote {
            return;
        }
        let dir = self.view_dir(viewer, owner, TABLES.name);
        if !dir.is_dir() {
            return;
        }
        let (want, dirs) = match self.wanted_tables(viewer, owner) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(peer = owner, viewer, error = %e, "cannot read the rows to mirror");
                return;
            }
        };
        let user = user_of(&self.core, viewer);
        let mine = viewer == owner;
        let taking = mine && self.tables_seen.contains(&dir);
        let (keep, seen) = if taking {
            self.take_row_files(owner, &dir, &want)
        } else {
            Default::default()
        };
        let mode = |rel: &str| {
            if mine && row_file(rel).is_some() {
                0o644
            } else {
                0o444
            }
        };
        // A row file that appeared, went or changed since it was taken above
        // (a `cp` renamed into place between the two listings) is the owner's:
        // left for the event its change brings.
        let changed = |rel: &str| {
            taking
                && row_file(rel).is_some()
                && as_user(user, || stamp(&dir.join(rel))) != seen.get(rel).copied()
        };
        let kept =
            |rel: &str| keep.contains(rel) || rel.split('/').any(is_staging_name) || changed(rel);
        let m = Mirrored {
            what: "tables",
            mode: &mode,
            keep: &kept,
            dirs: &dirs,
        };
        let undone = as_user(user, || self.sync_files(&dir, &want, user, check, &m));
        self.tables_seen.insert(dir);
        for u in undone {
            let line = if mine {
                format!(
                    "spool: {u}: only row files (tables/<table>/<key>.json) are written there; \
                     the rest of tables/ is a read-only mirror of the rows"
                )
            } else {
                format!(
                    "spool: {u} of peers/{owner}: peers/{owner}/tables/ is a read-only mirror \
                     of the rows {owner}'s policy lets {viewer} select"
                )
            };
            tracing::warn!(peer = viewer, "{line}");
            self.core.apply_async(viewer, Op::Log(line), None);
        }
    }

    /// The files and folders `viewer`'s mirror of `owner`'s tables should hold.
    fn wanted_tables(&mut self, viewer: &str, owner: &str) -> Result<Wanted> {
        if viewer != owner && !self.core.registry().exists(owner) {
            if self.core.serves_elsewhere(owner) {
                return self.wanted_remote_tables(viewer, owner);
            }
            // Served nowhere: nothing shows.
            return Ok(Default::default());
        }
        let p = self.core.peer(owner)?;
        let sight = Sight::of(self.core.policy(), &p, viewer)?;
        let (mut files, mut dirs) = (BTreeMap::new(), Vec::new());
        for t in sight.tables() {
            let rows = sight.rows(&p, &t)?;
            table_files(&mut files, &t, &rows)?;
            dirs.push(t);
        }
        Ok((files, dirs))
    }

    /// The same, for `owner` a peer of another daemon: asked of its worker.
    fn wanted_remote_tables(&self, viewer: &str, owner: &str) -> Result<Wanted> {
        let (mut files, mut dirs) = (BTreeMap::new(), Vec::new());
        for t in self.core.remote_tables(owner, viewer)? {
            let rows = self.core.remote_rows(owner, viewer, &t, None)?;
            table_files(&mut files, &t, &rows)?;
            dirs.push(t);
        }
        Ok((files, dirs))
    }

    /// The owner's writes and removals of row files under `dir` (its own
    /// `tables/`), handed to the executor: the files being applied (left alone
    /// by the sync that follows), and the stamp of every row file found.
    fn take_row_files(
        &mut self,
        owner: &str,
        dir: &Path,
        want: &BTreeMap<String, Vec<u8>>,
    ) -> (HashSet<String>, HashMap<String, Stamp>) {
        let user = user_of(&self.core, owner);
        let mut have = Vec::new();
        as_user(user, || list_files(dir, dir, &mut have));
        let mut keep = HashSet::new();
        let mut seen = HashMap::new();
        let max = self.core.base_limits(true).max_value_bytes;
        for rel in have.into_iter().filter(|r| row_file(r).is_some()) {
            let path = dir.join(&rel);
            if let Some(s) = as_user(user, || stamp(&path)) {
                seen.insert(rel.clone(), s);
            }
            let t = match as_user(user, || files::take(&path, user.0, max)) {
                Ok(Ok(t)) => t,
                // Being written: its close brings an event, or looked at again
                // shortly (see `Mirror::rows_busy`).
                Ok(Err(files::Skip::BeingWritten)) => {
                    keep.insert(rel);
                    self.rows_busy.insert(owner.to_string());
                    continue;
                }
                Ok(Err(files::Skip::Foreign(uid))) => {
                    self.refuse_row(
                        owner,
                        &path,
                        &rel,
                        &format!("owned by uid {uid}, not by the peer's owner"),
                    );
                    continue;
                }
                Ok(Err(files::Skip::TooBig(n))) => {
                    let why = format!(
                        "{n} bytes: a row file may have {max} (limits.own.max_value_bytes)"
                    );
                    self.refuse_row(owner, &path, &rel, &why);
                    continue;
                }
                Ok(Err(files::Skip::NotAFile)) => continue,
                Err(e) => {
                    // Left as it is; the next change looks at it again.
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a row file");
                    keep.insert(rel);
                    continue;
                }
            };
            let h = t.ident.hash;
            if self.written.get(&path) == Some(&h) {
                continue;
            }
            keep.insert(rel.clone());
            if self.rows_pending.get(&path) != Some(&Some(h)) {
                self.rows_pending.insert(path.clone(), Some(h));
                let (table, key) = row_file(&rel).expect("a row file");
                let op = Op::PutRow {
                    table: table.to_string(),
                    key: key.to_string(),
                    json: t.data,
                };
                self.submit_row(owner, path, rel, Some(h), op);
            }
        }
        self.take_removals(owner, dir, want, &mut keep);
        (keep, seen)
    }

    /// Row files this process wrote, or the owner wrote and is applying, that
    /// are gone: removed by the owner (a removal follows the write).
    fn take_removals(
        &mut self,
        owner: &str,
        dir: &Path,
        want: &BTreeMap<String, Vec<u8>>,
        keep: &mut HashSet<String>,
    ) {
        let user = user_of(&self.core, owner);
        let writing = (self.rows_pending.iter()).filter_map(|(p, t)| t.map(|_| p));
        let candidates: HashSet<&PathBuf> = self.written.keys().chain(writing).collect();
        let gone: Vec<(PathBuf, String)> = as_user(user, || {
            (candidates.into_iter())
                .filter_map(|p| {
                    let rel = p.strip_prefix(dir).ok()?.to_str()?.to_string();
                    let shown = want.contains_key(&rel) || self.rows_pending.contains_key(p);
                    let gone = std::fs::symlink_metadata(p).is_err();
                    (row_file(&rel).is_some() && shown && gone).then(|| (p.clone(), rel))
                })
                .collect()
        });
        for (path, rel) in gone {
            keep.insert(rel.clone());
            if self.rows_pending.get(&path) != Some(&None) {
                self.rows_pending.insert(path.clone(), None);
                let (table, key) = row_file(&rel).expect("a row file");
                let op = Op::DeleteRow {
                    table: table.to_string(),
                    key: key.to_string(),
                };
                self.submit_row(owner, path, rel, None, op);
            }
        }
    }

    fn submit_row(&self, owner: &str, path: PathBuf, rel: String, taken: Option<u128>, op: Op) {
        let tx = self.tx.clone();
        let o = owner.to_string();
        let ack = Box::new(move |result| {
            let d = RowDone {
                owner: o,
                path,
                rel,
                taken,
                result,
            };
            let _ = tx.send(Note::RowDone(d));
        });
        self.core.apply_async(owner, op, Some(ack));
    }

    /// A row file's write or removal answered: the owner whose mirror is made
    /// whole again.
    pub(super) fn row_done(&mut self, d: RowDone) -> Option<String> {
        if self.rows_pending.get(&d.path) == Some(&d.taken) {
            self.rows_pending.remove(&d.path);
        }
        match (d.result, d.taken) {
            // The owner's file is now the row's (rewritten as the mirror shows it).
            (Ok(()), Some(h)) => {
                self.written.insert(d.path, h);
            }
            (Ok(()), None) => {
                self.written.remove(&d.path);
            }
            (Err(e), Some(_)) => self.refuse_row(&d.owner, &d.path, &d.rel, &e.message),
            (Err(e), None) => {
                // Put back by the sync that follows.
                self.written.remove(&d.path);
                let line = format!(
                    "spool: rm of tables/{} refused: {} (the file is put back)",
                    d.rel, e.message
                );
                tracing::warn!(peer = %d.owner, "{line}");
                self.core.apply_async(&d.owner, Op::Log(line), None);
            }
        }
        Some(d.owner)
    }

    /// A row file that is not applied: renamed `<name>.refused~` (a staging
    /// name: never taken again), the reason in the owner's log; the sync that
    /// follows shows the row as it is.
    fn refuse_row(&mut self, owner: &str, path: &Path, rel: &str, why: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.refused~"));
        let user = user_of(&self.core, owner);
        if let Err(e) = as_user(user, || std::fs::rename(path, &aside)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot set a refused row file aside");
        }
        self.written.remove(path);
        let line = format!(
            "spool: tables/{rel} refused: {why} (renamed to {name}.refused~; the row is as it was)"
        );
        tracing::warn!(peer = owner, "{line}");
        self.core.apply_async(owner, Op::Log(line), None);
    }
}

/// A table's files in a mirror: `<t>.jsonl` with every row, and `<t>/<key>.json`
/// for each row whose key can be a file's name.
fn table_files(
    files: &mut BTreeMap<String, Vec<u8>>,
    t: &str,
    rows: &[serde_json::Map<String, serde_json::Value>],
) -> Result<()> {
    files.insert(format!("{t}.jsonl"), render(rows)?);
    for r in rows {
        let k = key_text(r);
        if file_key(&k) {
            files.insert(format!("{t}/{k}.json"), render(std::slice::from_ref(r))?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_files_are_a_table_and_a_key() {
        assert_eq!(row_file("notes/a.json"), Some(("notes", "a")));
        assert_eq!(row_file("notes/01H.json"), Some(("notes", "01H")));
        for not in [
            "notes.jsonl",
            "notes/a.txt",
            "notes/.json",
            "notes/.a.json",
            "notes/a.json~",
            "notes/deep/a.json",
            ".t/a.json",
        ] {
            assert_eq!(row_file(not), None, "{not}");
        }
        assert!(file_key("a") && !file_key("a/b") && !file_key("..") && !file_key(""));
    }
}
