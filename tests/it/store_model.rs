//! A reference model: random state operations applied to the SQLite store and to a
//! `BTreeMap`, compared after every step (as mountpoint-s3's reftests do).

use std::collections::BTreeMap;

use peerfs::store::prelude::*;
use peerfs::store::SqliteStore;
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Op {
    Set(String, Value),
    SetBytes(String, Vec<u8>),
    Remove(String),
    Txn(Vec<(String, Value)>, bool),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{1,2}".prop_map(|s| s),
        ("[a-c]{1,2}", "[a-c]{1,2}").prop_map(|(a, b)| format!("{a}/{b}")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z ]{0,8}".prop_map(|s| json!(s)),
        (any::<bool>(), any::<i16>()).prop_map(|(b, n)| json!({"b": b, "n": [n]})),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        (key(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(k, b)| Op::SetBytes(k, b)),
        key().prop_map(Op::Remove),
        (
            proptest::collection::vec((key(), value()), 1..4),
            any::<bool>()
        )
            .prop_map(|(w, c)| Op::Txn(w, c)),
    ]
}

/// A key may not be both a value and a folder: the model refuses such writes too.
fn allowed(model: &BTreeMap<String, Value>, k: &str) -> bool {
    let mut idx = 0;
    while let Some(p) = k[idx..].find('/') {
        if model.contains_key(&k[..idx + p]) {
            return false;
        }
        idx += p + 1;
    }
    let pre = format!("{k}/");
    !model.keys().any(|m| m.starts_with(&pre))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn state_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&d.path().join("m.sqlite"), true).unwrap();
        let mut model: BTreeMap<String, Value> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Set(k, v) => {
                    let ok = allowed(&model, &k);
                    prop_assert_eq!(s.set(&k, &v).is_ok(), ok);
                    if ok { model.insert(k, v); }
                }
                Op::SetBytes(k, b) => {
                    let ok = allowed(&model, &k);
                    prop_assert_eq!(s.set_bytes(&k, &b).is_ok(), ok);
                    if ok {
                        prop_assert_eq!(s.get_bytes(&k).unwrap().unwrap(), b.clone());
                        model.insert(k, peerfs::store::value::parse_file(&b));
                    }
                }
                Op::Remove(k) => {
                    prop_assert_eq!(s.remove(&k).unwrap(), model.remove(&k).is_some());
                }
                Op::Txn(writes, commit) => {
                    s.begin().unwrap();
                    let mut m2 = model.clone();
                    for (k, v) in writes {
                        if allowed(&m2, &k) {
                            s.set(&k, &v).unwrap();
                            m2.insert(k, v);
                        }
                    }
                    if commit { s.commit().unwrap(); model = m2; } else { s.rollback().unwrap(); }
                }
            }
            // Every key and value agrees, and listings agree with the model.
            let keys = s.keys("", 10_000).unwrap();
            prop_assert_eq!(&keys, &model.keys().cloned().collect::<Vec<_>>());
            for (k, v) in &model {
                let got = s.get(k).unwrap();
                prop_assert_eq!(got.as_ref(), Some(v));
            }
            let top: Vec<String> = s.list_dir("").unwrap().into_iter().map(|e| e.name).collect();
            let mut want: Vec<String> = model.keys().map(|k| k.split('/').next().unwrap().to_string()).collect();
            want.dedup();
            want.sort();
            want.dedup();
            prop_assert_eq!(top, want);
        }
    }
}
