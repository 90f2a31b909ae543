//! `schema.toml` texts: parsing never panics; a schema that parses is applied to
//! a fresh store (its tables and indexes made by SQLite), dropped (its tables are
//! empty: no consent needed) and made again; it is diffed against a fixed schema
//! both ways and against itself (no change); it makes a Cedar schema that Cedar
//! takes; its defaults are valid values of their fields.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use peerfs::store::prelude::*;
use peerfs::store::SqliteStore;
use peerfs::tables::{diff, parse::parse, value, FieldDefault};

const BASE: &str = "[tables.notes]\nfields.title = { type = \"string\", max = 200 }\nfields.tag = { type = \"string?\", index = true }\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let schema = match parse(text) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.errno, libc::EINVAL);
            assert!(e.message.starts_with("schema.toml"), "{}", e.message);
            return;
        }
    };
    for t in schema.tables.values() {
        for f in t.fields.values() {
            if let Some(FieldDefault::Value(v)) = &f.default {
                assert!(value::check(f, v).is_ok(), "{}.{}: {v}", t.name, f.name);
            }
        }
    }
    peerfs::policy::check_schema_text(&schema).unwrap_or_else(|e| {
        panic!(
            "cedar schema: {e}\n{}",
            peerfs::policy::schema_text(&schema)
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("f.sqlite"), true).unwrap();
    let apply = |st: &mut SqliteStore, text: &str| {
        st.begin().unwrap();
        let r = st.apply_schema(text.as_bytes());
        match r {
            Ok(_) => st.commit().unwrap(),
            Err(_) => st.rollback().unwrap(),
        }
        r
    };
    apply(&mut st, text)
        .unwrap_or_else(|e| panic!("a parsed schema is refused on an empty store: {e:?}"));
    // Empty tables: dropped and made again without consent.
    apply(&mut st, "").unwrap_or_else(|e| panic!("to no tables: {e:?}"));
    apply(&mut st, text).unwrap_or_else(|e| panic!("made again: {e:?}"));
    let base = parse(BASE).unwrap();
    let _ = diff(&base, &schema);
    let _ = diff(&schema, &base);
    assert!(
        diff(&schema, &schema).is_empty(),
        "a schema differs from itself"
    );
});
