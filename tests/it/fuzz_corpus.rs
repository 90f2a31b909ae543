//! Every fuzz target's committed corpus (fuzz/corpus/<target>/), each input run once
//! through the target's own checks, here in the test suite: what fuzzing once found
//! or was seeded with stays checked on every `scripts-ci/test`, without libFuzzer or
//! a sanitizer build. Long coverage-guided fuzzing runs in CI (`.ci/run`, through
//! `scripts-ci/fuzz`).
//!
//! The target files are included as they are: under cargo-fuzz (`cfg(fuzzing)`)
//! their `fuzz_target!` comes from libfuzzer-sys; here from the macro below, which
//! turns the target's body into a plain `check(data)`.
// Three targets include fuzz/fuzz_targets/shared/temp.rs, each for a world of its
// own (its folder and its core), as in their own fuzz binaries.
#![allow(clippy::duplicate_mod, reason = "one temp world per target")]

use std::path::Path;

macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn check($data: &[u8]) $body
    };
}

#[path = "../../fuzz/fuzz_targets/names.rs"]
mod names;
#[path = "../../fuzz/fuzz_targets/policy_diff.rs"]
mod policy_diff;
#[path = "../../fuzz/fuzz_targets/policy_parse.rs"]
mod policy_parse;
#[path = "../../fuzz/fuzz_targets/schema_parse.rs"]
mod schema_parse;
#[path = "../../fuzz/fuzz_targets/script_intake.rs"]
mod script_intake;
#[path = "../../fuzz/fuzz_targets/value_encoding.rs"]
mod value_encoding;
#[path = "../../fuzz/fuzz_targets/vfs_ops.rs"]
mod vfs_ops;
#[path = "../../fuzz/fuzz_targets/vfs_paths.rs"]
mod vfs_paths;

/// Runs `check` on every file of fuzz/corpus/`target`/ and says how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // A panic names the input, as libFuzzer's artifact would.
        let r = std::panic::catch_unwind(|| check(&data));
        if let Err(e) = r {
            eprintln!("fuzz target {target} fails on {}", f.display());
            std::panic::resume_unwind(e);
        }
    }
    files.len()
}

macro_rules! corpus_tests {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            let n = replay(stringify!($target), $target::check);
            assert!(n > 0, "fuzz/corpus/{} has no inputs", stringify!($target));
        }
    )*};
}

corpus_tests!(
    names,
    policy_diff,
    policy_parse,
    schema_parse,
    script_intake,
    value_encoding,
    vfs_ops,
    vfs_paths,
);

/// Every target in fuzz/Cargo.toml has its corpus replayed above.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    let replayed = [
        "names",
        "policy_diff",
        "policy_parse",
        "schema_parse",
        "script_intake",
        "value_encoding",
        "vfs_ops",
        "vfs_paths",
    ];
    for line in manifest.lines() {
        if let Some(name) = line.strip_prefix("name = \"") {
            let name = name.trim_end_matches('"');
            if name != "peerfs-fuzz" {
                assert!(
                    replayed.contains(&name),
                    "fuzz target {name} is not replayed in tests/fuzz_corpus.rs"
                );
            }
        }
    }
}
