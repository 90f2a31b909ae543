//! Every example policy in `policies/`, installed with `cp` through a real mount,
//! with an allow and a deny case each; plus the confused deputy and a chain of
//! sends, driven through the mount.

use crate::common;

use std::path::Path;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

struct Case<'a> {
    caller: &'a str,
    script: &'a str,
    status: &'a str,
}

fn check(policy: &str, groups: &str, cases: &[Case]) {
    let m = Mounted::new();
    for p in ["alice", "bob", "carol", "mallory"] {
        m.add_peer(p);
    }
    m.run_ok(
        "bob",
        "seed.rhai",
        r#"set("shared/x", 1); set("private", 2); 0"#,
    );
    if !groups.is_empty() {
        std::fs::write(m.p("bob/groups"), groups).unwrap();
    }
    let src = Path::new(REPO).join("policies").join(policy);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.p("bob/policy.cedar"))));
    for (i, c) in cases.iter().enumerate() {
        let name = format!("case{i}.rhai");
        let r = m.run_in(&format!("{}/peers/bob", c.caller), &name, c.script);
        assert_eq!(
            r["status"], c.status,
            "{policy}: {} runs {:?}: {r}",
            c.caller, c.script
        );
        assert_eq!(r["caller"], c.caller);
        assert_eq!(r["target"], "bob");
    }
    // Denied scripts left no trace in bob's state.
    let keys = m.run_ok("bob", "keys.rhai", "keys()");
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for k in keys {
        assert!(
            ["shared/x", "private", "shared/ok"].contains(&k),
            "{policy}: unexpected key {k} in bob's state"
        );
    }
}

#[test]
fn private_denies_everyone() {
    check(
        "private.cedar",
        "",
        &[
            Case {
                caller: "alice",
                script: "1",
                status: "denied",
            },
            Case {
                caller: "carol",
                script: r#"get("private")"#,
                status: "denied",
            },
        ],
    );
}

#[test]
fn friends_read_only() {
    check(
        "friends-read-only.cedar",
        "friends: alice\n",
        &[
            Case {
                caller: "alice",
                script: r#"get("private")"#,
                status: "ok",
            },
            Case {
                caller: "alice",
                script: r#"set("shared/y", 1)"#,
                status: "denied",
            },
            Case {
                caller: "carol",
                script: "1",
                status: "denied",
            },
        ],
    );
}

#[test]
fn shared_folder() {
    check(
        "shared-folder.cedar",
        "",
        &[
            Case {
                caller: "alice",
                script: r#"set("shared/ok", 1); get("shared/x")"#,
                status: "ok",
            },
            Case {
                caller: "alice",
                script: r#"get("private")"#,
                status: "denied",
            },
            Case {
                caller: "alice",
                script: r#"set("private", 9)"#,
                status: "denied",
            },
            Case {
                caller: "carol",
                script: "1",
                status: "denied",
            },
        ],
    );
}

#[test]
fn group_members() {
    check(
        "group-members.cedar",
        "members: alice carol\n",
        &[
            Case {
                caller: "carol",
                script: r#"set("shared/ok", get("shared/x")); 1"#,
                status: "ok",
            },
            Case {
                caller: "mallory",
                script: "1",
                status: "denied",
            },
            // The policy's own limit: at most 1,000,000 operations.
            Case {
                caller: "alice",
                script: "loop {}",
                status: "limit",
            },
        ],
    );
}

#[test]
fn open_to_all_but() {
    check(
        "open-to-all-but.cedar",
        "",
        &[
            Case {
                caller: "carol",
                script: r#"get("private")"#,
                status: "ok",
            },
            Case {
                caller: "carol",
                script: r#"set("shared/z", 1)"#,
                status: "denied",
            },
            Case {
                caller: "mallory",
                script: "1",
                status: "denied",
            },
        ],
    );
}

#[test]
fn confused_deputy_and_chains_through_the_mount() {
    let m = Mounted::new();
    for p in ["alice", "bob", "carol"] {
        m.add_peer(p);
    }
    let w = |peer: &str, text: &str| {
        std::fs::write(m.p(&format!("{peer}/policy.cedar")), text).unwrap()
    };
    w(
        "bob",
        r#"permit(principal == Peer::"alice", action in [Action::"run", Action::"import", Action::"send"], resource);"#,
    );
    w(
        "alice",
        r#"permit(principal == Peer::"bob", action == Action::"read", resource) when { resource.key like "public/*" };"#,
    );
    w(
        "carol",
        r#"permit(principal == Peer::"bob", action in [Action::"run", Action::"write"], resource);"#,
    );
    m.run_ok(
        "alice",
        "seed.rhai",
        r#"set("public/name", "Alice"); set("secret", "pin"); 0"#,
    );
    std::fs::write(
        m.p("bob/modules/steal.rhai"),
        "fn take() { caller_get(\"secret\") } fn name() { caller_get(\"public/name\") }",
    )
    .unwrap();
    let r = m.run_in(
        "alice/peers/bob",
        "n.rhai",
        r#"import "steal" as s; s::name()"#,
    );
    assert_eq!(r["value"], "Alice", "{r}");
    let r = m.run_in(
        "alice/peers/bob",
        "t.rhai",
        r#"import "steal" as s; s::take()"#,
    );
    assert_eq!(r["status"], "denied", "{r}");
    assert!(!r.to_string().contains("pin"));
    // alice -> bob -> carol: the caller at each hop is the peer one step back.
    let r = m.run_in(
        "alice/peers/bob",
        "hop.rhai",
        r#"send("carol", "set(`from`, caller.name); caller.name"); caller.name"#,
    );
    assert_eq!(r["value"], "alice", "{r}");
    let at_carol = std::fs::read(m.p("bob/peers/carol/outbox/hop-1.json")).unwrap();
    let at_carol: serde_json::Value = serde_json::from_slice(&at_carol).unwrap();
    assert_eq!(at_carol["value"], "bob", "{at_carol}");
    assert_eq!(
        std::fs::read_to_string(m.p("carol/state/from")).unwrap(),
        "bob"
    );
}

/// Rhai's own map, array and string methods are not state access: a caller bob
/// lets only `run` may use them, while a state call is still refused before the
/// run, also through a function pointer.
#[test]
fn values_methods_are_not_state_access_for_a_run_only_caller() {
    let m = Mounted::new();
    for p in ["alice", "bob"] {
        m.add_peer(p);
    }
    m.run_ok("bob", "seed.rhai", r#"set("private", 2); 0"#);
    std::fs::write(
        m.p("bob/policy.cedar"),
        r#"permit(principal == Peer::"alice", action == Action::"run", resource);"#,
    )
    .unwrap();
    let r = m.run_in(
        "alice/peers/bob",
        "m.rhai",
        r#"let m = #{a: 1, b: 2}; let a = [3, 4]; let s = "xy"; m.keys().len() + m.get("a") + a.get(0) + s.len()"#,
    );
    assert_eq!(
        (r["status"].as_str(), r["value"].as_i64()),
        (Some("ok"), Some(8)),
        "{r}"
    );
    for (name, src, what) in [
        ("k.rhai", r#"keys().len()"#, "keys()"),
        ("p.rhai", r#""pri".keys()"#, "keys()"),
        ("f.rhai", r#"Fn("get").call("private")"#, "get()"),
    ] {
        let r = m.run_in("alice/peers/bob", name, src);
        assert_eq!(r["status"], "denied", "{src}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains("before running") && e.contains(what),
            "{src}: {r}"
        );
        assert!(!r.to_string().contains("private"), "{r}");
    }
}
