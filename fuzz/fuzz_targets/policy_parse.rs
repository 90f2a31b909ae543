//! `policy.cedar` and `groups` texts: parsing never panics, and a policy that parses
//! decides a fixed set of requests without panicking and consistently (the cache,
//! the static shortcut and `could_ever_allow` agree with each other).
//!
//! Input: the policy text, then optionally a NUL byte and the groups text (without a
//! NUL, the whole text is also tried as a groups file).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use peerfs::policy::{valid_name, Action, Groups, Policy, Request};
use serde_json::json;

const CALLERS: [&str; 3] = ["alice", "bob", "mallory"];
const OBJECTS: [Option<&str>; 3] = [Some("shared/x"), Some("job.rhai"), None];

fn check_groups(g: &Groups) {
    let names = g.group_names();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "unsorted: {names:?}");
    assert!(names.iter().all(|n| valid_name(n)), "{names:?}");
    assert_eq!(g.is_empty(), names.is_empty());
    for c in CALLERS {
        let mine = g.groups_of(c);
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        assert!(
            mine.iter().all(|m| names.contains(m)),
            "{mine:?} not in {names:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (policy_bytes, groups_bytes) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let Ok(text) = std::str::from_utf8(policy_bytes) else {
        return;
    };
    let groups = match Groups::parse(&String::from_utf8_lossy(groups_bytes)) {
        Ok(g) => {
            check_groups(&g);
            g
        }
        Err(e) => {
            assert!(e.message.starts_with("groups line "), "{e}");
            Groups::default()
        }
    };
    let policy = match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert_eq!(policy.text(), text);
    #[allow(clippy::len_zero, reason = "is_empty is what is checked, against len")]
    let empty = policy.len() == 0;
    assert_eq!(policy.is_empty(), empty);

    let params = json!({"mode": "ro", "n": 5, "list": [1, 2]});
    for caller in CALLERS {
        let caller_groups = groups.groups_of(caller);
        for action in Action::ALL {
            for object in OBJECTS {
                let req = Request {
                    caller,
                    target: "owner",
                    action,
                    object,
                    script: "job.rhai",
                    params: &params,
                    now: 1_700_000_000,
                    chain: &[],
                };
                let d = policy.decide(&req, &groups);
                assert_eq!(d.action, action);
                let _ = d.explain();
                if d.allowed {
                    assert!(!d.policies.is_empty(), "allowed by no policy: {d:?}");
                    assert!(
                        policy.could_ever_allow(caller, &caller_groups, action),
                        "decide allowed {caller} {action} but could_ever_allow says never: {d:?}"
                    );
                }
                if !d.allowed || action != Action::Run {
                    assert!(d.limits.is_empty(), "limits without an allowed run: {d:?}");
                }
                if policy.is_empty() {
                    assert!(!d.allowed);
                }
                // The second answer comes from the per-caller cache: the same.
                assert_eq!(policy.decide(&req, &groups), d, "cached answer differs");
            }
        }
    }
});
