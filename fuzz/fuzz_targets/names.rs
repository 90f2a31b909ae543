//! Names of peers, keys and scripts: every accepted name obeys the documented rules,
//! and every name that obeys them is accepted.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use peerfs::names::{
    check_key, check_module_name, check_peer_name, check_segment, is_staging_name, script_stem,
    MAX_KEY, MAX_PEER_NAME, MAX_SEGMENT,
};

fn model_peer_name(n: &str) -> bool {
    (1..=MAX_PEER_NAME).contains(&n.len())
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn model_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= MAX_SEGMENT
        && !s.chars().any(|c| c == '/' || c == '\0' || c.is_control())
}

fn model_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY && k.split('/').all(model_segment)
}

fn one(s: &str) {
    let peer = check_peer_name(s);
    assert_eq!(
        peer.is_ok(),
        model_peer_name(s),
        "check_peer_name({s:?}) = {peer:?}"
    );
    if let Err(e) = &peer {
        assert!(!e.message.is_empty() && e.errno > 0);
    }
    // The groups file and the policy use their own copy of the rule: the same answer.
    assert_eq!(
        peer.is_ok(),
        peerfs::policy::valid_name(s),
        "valid_name({s:?})"
    );

    let key = check_key(s);
    assert_eq!(key.is_ok(), model_key(s), "check_key({s:?}) = {key:?}");
    if key.is_ok() {
        assert!(s.len() <= MAX_KEY);
        for seg in s.split('/') {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{s:?}");
        }
    }
    assert_eq!(check_module_name(s).is_ok(), key.is_ok(), "{s:?}");

    let seg = check_segment("fuzz", s);
    assert_eq!(
        seg.is_ok(),
        model_segment(s),
        "check_segment({s:?}) = {seg:?}"
    );
    // A valid peer name is a valid one-segment key.
    if peer.is_ok() {
        assert!(seg.is_ok() && key.is_ok(), "{s:?}");
    }

    assert_eq!(is_staging_name(s), s.starts_with('.') || s.ends_with('~'));

    let stem = script_stem(s);
    assert!(s.starts_with(stem), "stem {stem:?} of {s:?}");
    if stem.len() < s.len() {
        // `stem` + the last `.` and what follows it, which holds no other `.`.
        assert!(!stem.is_empty(), "{s:?}");
        assert_eq!(s.as_bytes()[stem.len()], b'.', "{s:?}");
        assert!(!s[stem.len() + 1..].contains('.'), "{s:?}");
    } else {
        // Nothing cut: no `.` except possibly a leading one.
        assert!(!s.bytes().skip(1).any(|b| b == b'.'), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    one(&text);
    // Each line and each path segment on its own as well (short names are the interesting ones).
    for part in text.split(['\n', '/']).take(64) {
        one(part);
    }
});
