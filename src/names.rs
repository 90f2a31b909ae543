//! Names of peers, state keys and scripts: what is allowed, and clear errors.

use crate::error::err;
use crate::error::Result;

/// Longest peer name.
pub const MAX_PEER_NAME: usize = 64;
/// Longest state key (all segments and slashes).
/// PATH_MAX less its NUL: `pathconf(_PC_PATH_MAX)` says 4096 on Linux whatever the
/// file system, and the kernel refuses a longer path itself, so every path under
/// `state/` the kernel lets through is a key peerfs takes.
pub const MAX_KEY: usize = 4095;
/// Longest single path segment of a key, module or script name (a file name).
pub const MAX_SEGMENT: usize = 255;

/// A peer name is 1 to 64 characters of ASCII letters, digits, `-`, `_` and `.`,
/// and does not begin with `.` (so `.peerfs` and staging names never collide).
pub fn check_peer_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(err!(
            libc::EINVAL,
            "peer name is empty: use 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    if name.len() > MAX_PEER_NAME {
        return Err(err!(
            libc::EINVAL,
            "peer name {name:?} is {} bytes long: at most {MAX_PEER_NAME} are allowed",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(err!(
            libc::EINVAL,
            "peer name {name:?} begins with '.': names beginning with '.' are reserved"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(err!(
            libc::EINVAL,
            "peer name {name:?} has {c:?}: use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// One segment of a state key, a module name or a script file name: non-empty,
/// not `.` or `..`, no `/` or NUL, valid UTF-8 (the caller converts), at most 255 bytes.
pub fn check_segment(what: &str, seg: &str) -> Result<()> {
    if seg.is_empty() {
        return Err(err!(libc::EINVAL, "{what} has an empty path segment"));
    }
    if seg == "." || seg == ".." {
        return Err(err!(
            libc::EINVAL,
            "{what} {seg:?} is not allowed: '.' and '..' are not names"
        ));
    }
    if seg.len() > MAX_SEGMENT {
        return Err(err!(
            libc::ENAMETOOLONG,
            "{what} segment is {} bytes long: at most {MAX_SEGMENT} are allowed",
            seg.len()
        ));
    }
    if let Some(c) = seg
        .chars()
        .find(|c| *c == '/' || *c == '\0' || c.is_control())
    {
        return Err(err!(
            libc::EINVAL,
            "{what} {seg:?} has the control character {c:?}"
        ));
    }
    Ok(())
}

/// A state key: segments joined by `/` (each a valid segment), at most 4095 bytes.
/// `a/b` is shown as the file `b` in the folder `a`.
pub fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY {
        return Err(err!(
            libc::ENAMETOOLONG,
            "state key is {} bytes long: at most {MAX_KEY} are allowed",
            key.len()
        ));
    }
    if key.is_empty() {
        return Err(err!(libc::EINVAL, "state key is empty"));
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err(err!(
                libc::EINVAL,
                "state key {key:?} has an empty segment (a leading, trailing or double '/')"
            ));
        }
        check_segment("state key", seg)?;
    }
    Ok(())
}

/// A module name as `import` names it: segments like a key; `lib/` is the shared library.
pub fn check_module_name(name: &str) -> Result<()> {
    check_key(name).map_err(|e| err!(e.errno, "module name {name:?}: {}", e.message))
}

/// Staging names in an inbox never run: they begin with `.` or end with `~`.
pub fn is_staging_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~')
}

/// The stem of a script name: `job.rhai` -> `job`; `job` -> `job`.
pub fn script_stem(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_peer_names() {
        for n in ["alice", "bob-2", "svc_api", "a.b", "A", &"x".repeat(64)] {
            check_peer_name(n).unwrap();
        }
    }

    #[test]
    fn bad_peer_names_say_why() {
        for (n, why) in [
            ("", "empty"),
            (".hidden", "begins with '.'"),
            ("a b", "' '"),
            ("a/bob", "'/'"),
            ("../bob", "begins with '.'"),
            ("é", "'é'"),
            ("a\0b", "'\\0'"),
        ] {
            let e = check_peer_name(n).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL, "{n:?}");
            assert!(e.message.contains(why), "{n:?}: {}", e.message);
        }
        assert!(check_peer_name(&"x".repeat(65))
            .unwrap_err()
            .message
            .contains("65 bytes"));
    }

    #[test]
    fn keys() {
        check_key("a").unwrap();
        check_key("a/b/c").unwrap();
        check_key("héllo wörld").unwrap();
        for k in ["", "/a", "a/", "a//b", "..", "a/../b", "a/./b", "a\nb"] {
            assert_eq!(check_key(k).unwrap_err().errno, libc::EINVAL, "{k:?}");
        }
        assert_eq!(
            check_key(&"x".repeat(256)).unwrap_err().errno,
            libc::ENAMETOOLONG
        );
        assert_eq!(
            check_key(&"x/".repeat(2100)).unwrap_err().errno,
            libc::ENAMETOOLONG
        );
    }

    #[test]
    fn staging_and_stems() {
        assert!(is_staging_name(".job.rhai.swp"));
        assert!(is_staging_name("job.rhai~"));
        assert!(!is_staging_name("job.rhai"));
        assert_eq!(script_stem("job.rhai"), "job");
        assert_eq!(script_stem("a.b.rhai"), "a.b");
        assert_eq!(script_stem("job"), "job");
        assert_eq!(script_stem(".rhai"), ".rhai");
    }
}
