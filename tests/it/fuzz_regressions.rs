//! Inputs the fuzz targets (`fuzz/`, run by `scripts-ci/fuzz`) found to break an
//! invariant, kept as tests. Each names its target and what was wrong.

use peerfs::store::prelude::*;
use peerfs::store::value::{parse_file, render};
use peerfs::store::SqliteStore;
use serde_json::Value;

/// value_encoding: a non-string value rendered to a file must parse back to itself.
/// serde_json's default float parser can be one ulp off, so this number read back as
/// 1.8332272036361825e30 after being shown as `1.8332272036361822e+30`. Fixed by
/// enabling serde_json's `float_roundtrip` feature (Cargo.toml).
#[test]
fn value_encoding_big_number_round_trips() {
    let input = b"1833227203636182233720182233720";
    let v: Value = serde_json::from_slice(input).unwrap();
    assert_eq!(
        parse_file(&render(&v)),
        v,
        "rendered as {:?}",
        String::from_utf8_lossy(&render(&v))
    );
    assert_eq!(parse_file(input), v);
}

/// The same bug seen from a script: a float stored as JSON in a peer's store must
/// come back as the same float.
#[test]
fn value_encoding_stored_floats_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("p.sqlite"), true).unwrap();
    for f in [
        1.8332272036361822e30,
        1.8332272036361825e30,
        0.1 + 0.2,
        5e-324,
        1.7976931348623157e308,
    ] {
        let v = serde_json::json!(f);
        store.set("f", &v).unwrap();
        assert_eq!(store.get("f").unwrap(), Some(v.clone()), "{f:e}");
        assert_eq!(parse_file(&render(&v)), v, "{f:e}");
    }
}
