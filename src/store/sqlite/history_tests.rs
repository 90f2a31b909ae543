//! Tests of the history at the store layer: values kept by reference, undo,
//! cascade, restore, the past as read, pruning that gives space back, and a
//! reference model that keeps every version.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::error::Result;
use crate::store::history::{EntryHead, History, ItemKind, Point, Retention};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&d.path().join("p.sqlite"), true).unwrap();
    (d, s)
}

fn head(id: &str) -> EntryHead {
    EntryHead {
        id: id.into(),
        name: format!("{id}.rhai"),
        caller: "alice".into(),
        chain: vec!["alice".into()],
    }
}

/// One entry in one transaction: `f` makes its changes.
fn entry<T>(s: &mut SqliteStore, id: &str, f: impl FnOnce(&mut SqliteStore) -> T) -> T {
    s.begin().unwrap();
    s.begin_entry(&head(id)).unwrap();
    let r = f(s);
    s.end_entry().unwrap();
    s.commit().unwrap();
    r
}

fn data_rows(s: &mut SqliteStore) -> i64 {
    s.conn
        .query_row("SELECT count(*) FROM state_data", [], |r| r.get(0))
        .unwrap()
}

fn file_size(s: &mut SqliteStore) -> u64 {
    s.checkpoint().unwrap();
    std::fs::metadata(s.path()).unwrap().len()
}

#[test]
fn a_rewrite_keeps_the_old_value_by_reference_and_undo_points_back_at_it() {
    let (_d, mut s) = store();
    let big = vec![7u8; 4 << 20];
    entry(&mut s, "A", |s| s.set_bytes("v", &big).unwrap());
    let before = file_size(&mut s);
    entry(&mut s, "B", |s| {
        s.set_bytes("v", &vec![8u8; 4 << 20]).unwrap()
    });
    // One new row for the new value, the old one kept; nothing copied twice.
    assert_eq!(data_rows(&mut s), 2);
    let grew = file_size(&mut s) - before;
    assert!(grew < (4 << 20) * 105 / 100, "grew by {grew}");
    assert_eq!(s.bytes_at(1, "v").unwrap().unwrap(), big);
    let undone = entry(&mut s, "U", |s| s.undo("B", false).unwrap());
    assert_eq!(undone, vec!["B".to_string()]);
    assert_eq!(s.get_bytes("v").unwrap().unwrap(), big);
    // Undo pointed the key at the kept row: still two rows.
    assert_eq!(data_rows(&mut s), 2);
    let log = String::from_utf8(s.read_log(0, 1 << 20).unwrap()).unwrap();
    assert!(log.contains("undo B by U: undid B"), "{log}");
}

#[test]
fn without_an_entry_a_rewrite_is_in_place() {
    let (_d, mut s) = store();
    s.begin().unwrap();
    s.set("k", &json!(1)).unwrap();
    s.set("k", &json!(2)).unwrap();
    s.commit().unwrap();
    assert_eq!(data_rows(&mut s), 1);
    // A small value's entry keeps a copy: the row is rewritten in place.
    entry(&mut s, "A", |s| {
        for i in 0..10 {
            s.set("k", &json!(i)).unwrap();
        }
    });
    assert_eq!(data_rows(&mut s), 1);
    let a = s.entry("A").unwrap().unwrap().seq;
    assert_eq!(s.bytes_at(a - 1, "k").unwrap().unwrap(), b"2\n");
    assert_eq!(s.bytes_at(a, "k").unwrap().unwrap(), b"9\n");
    // A big one's keeps the old row: many writes inside one entry make one
    // new row, not one per write.
    let big = |i: u8| vec![i; 4096];
    s.begin().unwrap();
    s.set_bytes("b", &big(0)).unwrap();
    s.commit().unwrap();
    entry(&mut s, "B", |s| {
        for i in 1..10 {
            s.set_bytes("b", &big(i)).unwrap();
        }
    });
    assert_eq!(data_rows(&mut s), 3);
    let b = s.entry("B").unwrap().unwrap().seq;
    assert_eq!(s.bytes_at(b - 1, "b").unwrap().unwrap(), big(0));
    assert_eq!(s.bytes_at(b, "b").unwrap().unwrap(), big(9));
}

#[test]
fn undo_is_refused_naming_later_runs_and_cascade_undoes_them_newest_first() {
    let (_d, mut s) = store();
    entry(&mut s, "A", |s| s.set("n", &json!(1)).unwrap());
    entry(&mut s, "B", |s| s.set("n", &json!(2)).unwrap());
    entry(&mut s, "C", |s| {
        s.set("n", &json!(3)).unwrap();
        s.set("m", &json!(3)).unwrap();
    });
    s.begin().unwrap();
    s.begin_entry(&head("U")).unwrap();
    let e = s.undo("B", false).unwrap_err();
    assert_eq!(e.errno, libc::EBUSY);
    assert!(e.message.contains("C"), "{}", e.message);
    let undone = s.undo("B", true).unwrap();
    assert_eq!(undone, vec!["C".to_string(), "B".to_string()]);
    s.end_entry().unwrap();
    s.commit().unwrap();
    assert_eq!(s.get("n").unwrap(), Some(json!(1)));
    assert_eq!(s.get("m").unwrap(), None);
    // The undo is an entry: undoing it brings both back.
    entry(&mut s, "V", |s| s.undo("U", false).unwrap());
    assert_eq!(s.get("n").unwrap(), Some(json!(3)));
    assert_eq!(s.get("m").unwrap(), Some(json!(3)));
}

#[test]
fn modules_policy_renames_and_restore_to_a_run() {
    let (_d, mut s) = store();
    entry(&mut s, "A", |s| {
        s.set_meta("policy", b"permit(principal, action, resource);")
            .unwrap();
        s.set_module("m", b"fn f() { 1 }").unwrap();
        s.set("a/x", &json!("x")).unwrap();
    });
    entry(&mut s, "B", |s| {
        s.set_meta("policy", b"forbid(principal, action, resource);")
            .unwrap();
        s.remove_module("m").unwrap();
        s.rename("a/x", "b/y").unwrap();
        // Not a policy text: not recorded.
        s.set_meta("spool.taken/x", b"1").unwrap();
    });
    let seq_b = s.entry("B").unwrap().unwrap().seq;
    let kinds: Vec<_> = s
        .changes(seq_b, 1 << 10)
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.item))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ItemKind::Meta, "policy".into()),
            (ItemKind::Module, "m".into()),
            (ItemKind::State, "a/x".into()),
            (ItemKind::State, "b/y".into()),
        ]
    );
    let ended = {
        s.begin().unwrap();
        s.begin_entry(&head("R")).unwrap();
        s.restore(&Point::Run("A".into())).unwrap();
        let e = s.end_entry().unwrap();
        s.commit().unwrap();
        e
    };
    assert!(ended.kept && ended.meta && ended.modules);
    assert_eq!(
        s.meta("policy").unwrap().unwrap().0,
        b"permit(principal, action, resource);"
    );
    assert_eq!(s.module("m").unwrap().unwrap(), b"fn f() { 1 }");
    assert_eq!(s.get("a/x").unwrap(), Some(json!("x")));
    assert_eq!(s.get("b/y").unwrap(), None);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn a_rolled_back_run_has_no_entry() {
    let (_d, mut s) = store();
    s.begin().unwrap();
    s.begin_entry(&head("A")).unwrap();
    s.savepoint().unwrap();
    s.set("k", &json!(1)).unwrap();
    s.rollback_to().unwrap();
    assert!(!s.end_entry().unwrap().kept);
    s.commit().unwrap();
    assert!(s.entries(0, 10).unwrap().is_empty());
    let e = s.undo("A", false).unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
}

#[test]
fn pruning_frees_the_old_values_and_says_what_is_out_of_retention() {
    let (_d, mut s) = store();
    let big = vec![1u8; 4 << 20];
    entry(&mut s, "A", |s| s.set_bytes("v", &big).unwrap());
    for id in ["B", "C", "D"] {
        entry(&mut s, id, |s| {
            s.set_bytes("v", &vec![2u8; 4 << 20]).unwrap()
        });
    }
    let full = file_size(&mut s);
    assert_eq!(data_rows(&mut s), 4);
    // A byte bound keeps the newest entries whose old values fit.
    let ret = Retention {
        max_age_ns: i64::MAX,
        max_bytes: 5 << 20,
    };
    s.begin().unwrap();
    let n = s.prune(crate::util::now_ns(), &ret).unwrap();
    s.commit().unwrap();
    assert_eq!(n, 3, "A, B and C hold 12 MiB of old values: two of them go");
    assert_eq!(data_rows(&mut s), 2);
    let after = file_size(&mut s);
    assert!(after + (7 << 20) < full, "{after} vs {full}");
    assert_eq!(s.get_bytes("v").unwrap().unwrap(), vec![2u8; 4 << 20]);
    let e = s.seq_of(&Point::Run("A".into())).unwrap_err();
    assert!(e.message.contains("no run A"), "{}", e.message);
    // An age of a moment drops the rest.
    s.begin().unwrap();
    s.prune(
        crate::util::now_ns() + 1,
        &Retention {
            max_age_ns: 1,
            max_bytes: 0,
        },
    )
    .unwrap();
    s.commit().unwrap();
    assert!(s.entries(0, 10).unwrap().is_empty());
    assert_eq!(data_rows(&mut s), 1);
    let e = s.seq_of(&Point::Time(0)).unwrap_err();
    assert!(e.message.contains("retention"), "{}", e.message);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

/// A step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Set(u8, u8),
    Remove(u8),
    Rename(u8, u8),
    Policy(u8),
    Undo(u8, bool),
    Restore(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..5, any::<u8>()).prop_map(|(k, v)| Step::Set(k, v)),
        1 => (0u8..5).prop_map(Step::Remove),
        1 => (0u8..5, 0u8..5).prop_map(|(a, b)| Step::Rename(a, b)),
        1 => any::<u8>().prop_map(Step::Policy),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(i, c)| Step::Undo(i, c)),
        1 => any::<u8>().prop_map(Step::Restore),
    ]
}

/// An item's version in the model: (version id, content). The policy text is
/// the item `#policy`; a store's version is new at every write, as a value row.
type Snap = BTreeMap<String, (u64, u8)>;

struct Ent {
    id: String,
    before: Snap,
    after: Snap,
    touched: BTreeSet<String>,
}

/// The model: every version of the whole peer, before and after each kept entry.
#[derive(Default)]
struct Model {
    entries: Vec<Ent>,
    now: Snap,
    next: u64,
}

impl Model {
    fn fresh(&mut self, v: u8) -> (u64, u8) {
        self.next += 1;
        (self.next, v)
    }

    /// What a step changes (`None`: refused; empty: nothing to keep).
    fn apply(&mut self, step: &Step) -> Option<(Snap, BTreeSet<String>)> {
        let mut new = self.now.clone();
        let mut set_meta = false;
        match *step {
            Step::Set(k, v) => {
                let f = self.fresh(v);
                new.insert(format!("k{k}"), f);
            }
            Step::Remove(k) => {
                new.remove(&format!("k{k}"));
            }
            Step::Rename(a, b) => {
                let v = *new.get(&format!("k{a}"))?;
                new.remove(&format!("k{a}"));
                new.insert(format!("k{b}"), v);
            }
            Step::Policy(v) => {
                let f = self.fresh(v);
                new.insert("#policy".into(), f);
                set_meta = true;
            }
            Step::Undo(i, cascade) => {
                if self.entries.is_empty() {
                    return None;
                }
                let first = i as usize % self.entries.len();
                let mut set = BTreeSet::from([first]);
                for j in first + 1..self.entries.len() {
                    let hit = set.iter().any(|s| {
                        !self.entries[*s]
                            .touched
                            .is_disjoint(&self.entries[j].touched)
                    });
                    if hit {
                        set.insert(j);
                    }
                }
                if set.len() > 1 && !cascade {
                    return None;
                }
                for s in set.iter().rev() {
                    let (touched, before) = (
                        self.entries[*s].touched.clone(),
                        self.entries[*s].before.clone(),
                    );
                    for item in touched {
                        set_meta |= item == "#policy";
                        self.put_from(&mut new, &item, before.get(&item).copied());
                    }
                }
            }
            Step::Restore(i) => {
                let j = i as usize % (self.entries.len() + 1);
                let at = if j == 0 {
                    Snap::new()
                } else {
                    self.entries[j - 1].after.clone()
                };
                let items: BTreeSet<String> = self.entries[j..]
                    .iter()
                    .flat_map(|e| e.touched.iter().cloned())
                    .collect();
                for item in items {
                    if item == "#policy" {
                        set_meta |= at.contains_key(&item) || new.contains_key(&item);
                    }
                    self.put_from(&mut new, &item, at.get(&item).copied());
                }
            }
        }
        let touched = new
            .keys()
            .chain(self.now.keys())
            .filter(|k| new.get(*k) != self.now.get(*k) || (*k == "#policy" && set_meta))
            .cloned()
            .collect();
        Some((new, touched))
    }

    /// An item set back to a kept version (the policy text is copied: a new one).
    fn put_from(&mut self, snap: &mut Snap, item: &str, v: Option<(u64, u8)>) {
        match v {
            None => {
                snap.remove(item);
            }
            Some((_, c)) if item == "#policy" => {
                let f = self.fresh(c);
                snap.insert(item.into(), f);
            }
            Some(v) => {
                snap.insert(item.into(), v);
            }
        }
    }
}

fn run_step(s: &mut SqliteStore, id: &str, step: &Step, ids: &[String]) -> Result<()> {
    match *step {
        Step::Set(k, v) => s.set(&format!("k{k}"), &json!(v)),
        Step::Remove(k) => s.remove(&format!("k{k}")).map(|_| ()),
        Step::Rename(a, b) => s.rename(&format!("k{a}"), &format!("k{b}")),
        Step::Policy(v) => s.set_meta("policy", &[v]),
        Step::Undo(i, c) => {
            let Some(run) = ids.get(i as usize % ids.len().max(1)) else {
                return Err(err!(libc::ENOENT, "no entries"));
            };
            s.undo(run, c).map(|_| ())
        }
        Step::Restore(i) => {
            let j = i as usize % (ids.len() + 1);
            let p = match j {
                0 => Point::Time(0),
                j => Point::Run(ids[j - 1].clone()),
            };
            s.restore(&p).map(|_| ())
        }
    }
    .map(|_| {
        let _ = id;
    })
}

/// The store's peer as the model sees it, live or right after `seq`.
fn read(s: &mut SqliteStore, seq: Option<i64>) -> BTreeMap<String, u8> {
    let mut out = BTreeMap::new();
    for k in 0..5 {
        let key = format!("k{k}");
        let b = match seq {
            None => s.get_bytes(&key).unwrap(),
            Some(q) => s.bytes_at(q, &key).unwrap(),
        };
        if let Some(b) = b {
            let n: u8 = std::str::from_utf8(&b).unwrap().trim().parse().unwrap();
            out.insert(key, n);
        }
    }
    out
}

fn contents(snap: &Snap) -> BTreeMap<String, u8> {
    snap.iter()
        .filter(|(k, _)| *k != "#policy")
        .map(|(k, v)| (k.clone(), v.1))
        .collect()
}

fn check_model(steps: Vec<Step>) {
    let (_d, mut s) = store();
    let mut m = Model::default();
    for (n, step) in steps.iter().enumerate() {
        let id = format!("R{n:03}");
        let ids: Vec<String> = m.entries.iter().map(|e| e.id.clone()).collect();
        let want = m.apply(step);
        s.begin().unwrap();
        s.begin_entry(&head(&id)).unwrap();
        s.savepoint().unwrap();
        let got = run_step(&mut s, &id, step, &ids);
        if got.is_ok() {
            s.release().unwrap();
        } else {
            s.rollback_to().unwrap();
        }
        let kept = s.end_entry().unwrap().kept;
        s.commit().unwrap();
        match want {
            None => assert!(got.is_err(), "step {n} {step:?} should be refused"),
            Some((after, touched)) => {
                assert!(got.is_ok(), "step {n} {step:?}: {:?}", got.err());
                assert_eq!(kept, !touched.is_empty(), "step {n} {step:?} kept");
                if kept {
                    m.entries.push(Ent {
                        id: id.clone(),
                        before: m.now.clone(),
                        after: after.clone(),
                        touched,
                    });
                }
                m.now = after;
            }
        }
        assert_eq!(
            read(&mut s, None),
            contents(&m.now),
            "live after step {n} {step:?}"
        );
        let policy = s.meta("policy").unwrap().map(|p| p.0[0]);
        assert_eq!(
            policy,
            m.now.get("#policy").map(|v| v.1),
            "policy after {n}"
        );
    }
    let listed: Vec<String> = s
        .entries(0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.head.id)
        .collect();
    let ids: Vec<String> = m.entries.iter().map(|e| e.id.clone()).collect();
    assert_eq!(listed, ids);
    for e in &m.entries {
        let seq = s.entry(&e.id).unwrap().unwrap().seq;
        assert_eq!(
            read(&mut s, Some(seq)),
            contents(&e.after),
            "right after {}",
            e.id
        );
    }
    assert_eq!(s.integrity_check().unwrap(), "ok");
    // No value row is left that nothing names.
    let orphans: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM state_data d WHERE NOT EXISTS (SELECT 1 FROM state WHERE id=d.id)
               AND NOT EXISTS (SELECT 1 FROM hist WHERE b_ref=d.id OR a_ref=d.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn history_matches_a_model_that_keeps_every_version(steps in proptest::collection::vec(step(), 1..40)) {
        check_model(steps);
    }
}

#[test]
fn a_folder_moved_and_a_mode_set_are_undone() {
    let (_d, mut s) = store();
    entry(&mut s, "A", |s| {
        s.set("a/x", &json!(1)).unwrap();
        s.set("a/y/z", &json!(2)).unwrap();
    });
    entry(&mut s, "B", |s| {
        assert_eq!(s.rename_dir("a", "b").unwrap(), 2);
        assert!(s.set_mode("b/x", 0o600).unwrap());
    });
    let then: Vec<String> = s
        .list_at(1, "")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(then, ["a"]);
    entry(&mut s, "U", |s| s.undo("B", false).unwrap());
    assert_eq!(s.get("a/x").unwrap(), Some(json!(1)));
    assert_eq!(s.get("a/y/z").unwrap(), Some(json!(2)));
    assert_eq!(s.keys("b/", 10).unwrap(), Vec::<String>::new());
    assert_eq!(s.stat_key("a/x").unwrap().unwrap().unwrap().mode, None);
    // Undoing the undo moves them again, with the mode.
    entry(&mut s, "V", |s| s.undo("U", false).unwrap());
    assert_eq!(
        s.stat_key("b/x").unwrap().unwrap().unwrap().mode,
        Some(0o600)
    );
    assert_eq!(s.get("b/y/z").unwrap(), Some(json!(2)));
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

/// A store whose history was written in the layout of migration 8 (one
/// `hist_runs` row per entry, `hist_changes` rows by reference), as that
/// layout's code wrote it: A sets `n` 1 and `big`, B sets `n` 2, rewrites
/// `big` and adds module `m`, C removes `n`.
fn store_with_history_v8() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.sqlite");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        for m in &super::schema::MIGRATIONS[..8] {
            c.execute_batch(m).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version=8;
             INSERT INTO state(key, size, mtime, typed, id, mode, ctime) VALUES('big', 2000, 2, 0, 4, NULL, 2);
             INSERT INTO modules(name, source, mtime) VALUES('m', CAST('fn f() { 1 }' AS BLOB), 2);
             INSERT INTO hist_runs VALUES(1, 'A', 'A.rhai', 'alice', 'alice', 1000, 0),
                (2, 'B', 'B.rhai', 'alice', 'alice', 2000, 2002), (3, 'C', 'C.rhai', 'alice', 'alice', 3000, 2);
             INSERT INTO hist_changes VALUES(1, 'state', 'big', NULL, NULL, NULL, NULL, 2, 0, 2000, NULL),
                (1, 'state', 'n', NULL, NULL, NULL, NULL, 1, 1, 2, NULL),
                (2, 'module', 'm', NULL, NULL, NULL, NULL, 5, 0, 12, NULL),
                (2, 'state', 'big', 2, 0, 2000, NULL, 4, 0, 2000, NULL),
                (2, 'state', 'n', 1, 1, 2, NULL, 3, 1, 2, NULL),
                (3, 'state', 'n', 3, 1, 2, NULL, NULL, NULL, NULL, NULL);",
        )
        .unwrap();
        let values: [&[u8]; 5] = [b"1", &[7; 2000], b"2", &[8; 2000], b"fn f() { 1 }"];
        for (i, v) in values.iter().enumerate() {
            c.execute(
                "INSERT INTO state_data(id, data) VALUES(?1, ?2)",
                rusqlite::params![i as i64 + 1, v],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&p, true).unwrap();
    (d, s)
}

fn n_of(b: Option<Vec<u8>>) -> Option<String> {
    b.map(|b| String::from_utf8(b).unwrap().trim().to_string())
}

#[test]
fn history_written_before_migration_9_reads_and_undoes_after_it() {
    let (_d, mut s) = store_with_history_v8();
    assert_eq!(s.get_bytes("big").unwrap().unwrap(), vec![8u8; 2000]);
    let listed: Vec<(String, u64)> = (s.entries(0, 10).unwrap().into_iter())
        .map(|e| (e.head.id, e.bytes))
        .collect();
    let want = [("A", 0), ("B", 2002), ("C", 2)].map(|(i, b)| (i.to_string(), b));
    assert_eq!(listed, want.to_vec());
    assert_eq!(s.entry("B").unwrap().unwrap().head.caller, "alice");
    let [a, b, c] = ["A", "B", "C"].map(|id| s.entry(id).unwrap().unwrap().seq);
    assert!(a < b && b < c);
    // The past as read: by reference, as migration 8 kept it.
    assert_eq!(n_of(s.bytes_at(a, "n").unwrap()).unwrap(), "1");
    assert_eq!(n_of(s.bytes_at(b, "n").unwrap()).unwrap(), "2");
    assert_eq!(s.bytes_at(c, "n").unwrap(), None);
    assert_eq!(s.bytes_at(a, "big").unwrap().unwrap(), vec![7u8; 2000]);
    assert_eq!(s.changes(a, 4096).unwrap().len(), 2);
    let ch = s.changes(b, 4096).unwrap();
    assert_eq!(ch.len(), 3, "{ch:?}");
    assert_eq!(s.changes(c, 4096).unwrap().len(), 1);
    assert_eq!(s.seq_of(&Point::Time(2500)).unwrap(), b);
    // Undo of an old entry, refused then cascaded, and a restore across both layouts.
    let err = entry(&mut s, "U1", |s| s.undo("B", false).unwrap_err());
    assert!(err.message.contains('C'), "{}", err.message);
    entry(&mut s, "U2", |s| s.undo("C", false).unwrap());
    assert_eq!(n_of(s.get_bytes("n").unwrap()).unwrap(), "2");
    entry(&mut s, "D", |s| s.set("n", &json!(5)).unwrap());
    entry(&mut s, "R", |s| s.restore(&Point::Run("A".into())).unwrap());
    assert_eq!(n_of(s.get_bytes("n").unwrap()).unwrap(), "1");
    assert_eq!(s.get_bytes("big").unwrap().unwrap(), vec![7u8; 2000]);
    assert_eq!(s.module("m").unwrap(), None);
    entry(&mut s, "U3", |s| s.undo("R", false).unwrap());
    assert_eq!(n_of(s.get_bytes("n").unwrap()).unwrap(), "5");
    assert_eq!(s.get_bytes("big").unwrap().unwrap(), vec![8u8; 2000]);
    assert_eq!(s.module("m").unwrap().unwrap(), b"fn f() { 1 }");
    let ids: Vec<String> = (s.entries(0, 10).unwrap().into_iter())
        .map(|e| e.head.id)
        .collect();
    assert_eq!(ids, ["A", "B", "C", "U2", "D", "R", "U3"]);
    // Pruning everything frees every value row no live key names.
    s.begin().unwrap();
    let n = s
        .prune(
            i64::MAX,
            &Retention {
                max_age_ns: 0,
                max_bytes: 0,
            },
        )
        .unwrap();
    s.commit().unwrap();
    assert_eq!(n, 7);
    assert_eq!(data_rows(&mut s), 2);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

/// One entry, and whether it was kept.
fn kept_entry(s: &mut SqliteStore, id: &str, f: impl FnOnce(&mut SqliteStore)) -> bool {
    s.begin().unwrap();
    s.begin_entry(&head(id)).unwrap();
    f(s);
    let kept = s.end_entry().unwrap().kept;
    s.commit().unwrap();
    kept
}

#[test]
fn a_small_value_set_back_from_its_copy_is_the_same_version_again() {
    let (_d, mut s) = store();
    assert!(kept_entry(&mut s, "A", |s| s.set("k", &json!(1)).unwrap()));
    assert!(kept_entry(&mut s, "B", |s| s.set("k", &json!(2)).unwrap()));
    // B kept k's old value as a copy; the row was rewritten in place.
    assert_eq!(data_rows(&mut s), 1);
    let a = Point::Run("A".into());
    assert!(kept_entry(&mut s, "R1", |s| {
        s.restore(&a).unwrap();
    }));
    assert_eq!(n_of(s.get_bytes("k").unwrap()).unwrap(), "1");
    // k holds A's version again (from the copy): restoring to A changes nothing.
    assert!(!kept_entry(&mut s, "R2", |s| {
        s.restore(&a).unwrap();
    }));
    // Writing the same value is a new version all the same.
    assert!(kept_entry(&mut s, "C", |s| s.set("k", &json!(1)).unwrap()));
    assert!(kept_entry(&mut s, "U", |s| {
        s.undo("C", false).unwrap();
    }));
    assert!(kept_entry(&mut s, "U2", |s| {
        s.undo("R1", true).unwrap();
    }));
    assert_eq!(n_of(s.get_bytes("k").unwrap()).unwrap(), "2");
    let ids: Vec<String> = (s.entries(0, 10).unwrap().into_iter())
        .map(|e| e.head.id)
        .collect();
    assert_eq!(ids, ["A", "B", "R1", "C", "U", "U2"]);
    let orphans: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM state_data d WHERE NOT EXISTS (SELECT 1 FROM state WHERE id=d.id)
               AND NOT EXISTS (SELECT 1 FROM hist WHERE b_ref=d.id OR a_ref=d.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn version_identities_are_never_used_twice() {
    let (d, mut s) = store();
    let ver = |s: &mut SqliteStore, k: &str| -> i64 {
        (s.conn)
            .query_row("SELECT ver FROM state WHERE key=?1", [k], |r| r.get(0))
            .unwrap()
    };
    let mut seen = BTreeSet::new();
    // More than one block of identities, a commit each.
    for i in 0..1100 {
        s.begin_unsynced().unwrap();
        s.set("k", &json!(i)).unwrap();
        s.commit().unwrap();
        assert!(seen.insert(ver(&mut s, "k")), "write {i}");
    }
    // A rolled-back transaction's identities (and its reservation) go with it.
    s.begin().unwrap();
    for i in 0..2000 {
        s.set(&format!("r{i}"), &json!(i)).unwrap();
    }
    s.rollback().unwrap();
    drop(s);
    let mut s = SqliteStore::open(&d.path().join("p.sqlite"), true).unwrap();
    for i in 0..1100 {
        s.begin_unsynced().unwrap();
        s.set(&format!("n{}", i % 7), &json!(i)).unwrap();
        s.commit().unwrap();
        assert!(
            seen.insert(ver(&mut s, &format!("n{}", i % 7))),
            "write {i} after reopening"
        );
    }
    assert!(seen.iter().all(|v| *v < 0));
}
