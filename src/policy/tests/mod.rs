//! Tests of the policy language: the design example, parse and validation
//! errors, groups, sandbox limits, the static check, the request context, and the
//! shipped example policies; `native.rs` cross-checks the native evaluator
//! against Cedar.

mod native;
mod rows;

use super::*;
use serde_json::json;

const EXAMPLE: &str = r#"permit(principal == Peer::"alice", action == Action::"run", resource);
permit(principal == Peer::"alice", action == Action::"read", resource);
permit(principal == Peer::"alice", action == Action::"write", resource)
  when { resource.key like "shared/*" };
permit(principal in Group::"friends", action in [Action::"run", Action::"send"], resource);
forbid(principal == Peer::"mallory", action, resource);
"#;

const GROUPS: &str = "friends: bob mallory\n";

fn parse(text: &str) -> Policy {
    match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => panic!("policy should parse: {e}\n---\n{text}"),
    }
}

fn groups(text: &str) -> Groups {
    match Groups::parse(text) {
        Ok(g) => g,
        Err(e) => panic!("groups should parse: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match Policy::parse(text) {
        Ok(_) => panic!("policy should NOT parse:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn req<'a>(
    caller: &'a str,
    action: Action,
    object: Option<&'a str>,
    script: &'a str,
    params: &'a serde_json::Value,
    now: i64,
) -> Request<'a> {
    Request {
        caller,
        target: "owner",
        action,
        object,
        script,
        params,
        now,
        chain: &[],
    }
}

/// The names of the policies that errored, sorted (the messages of the native
/// evaluator are worded differently from Cedar's, and Cedar's order is not
/// file order).
fn error_names(d: &Decision) -> Vec<&str> {
    let mut names: Vec<&str> = d
        .errors
        .iter()
        .map(|e| e.split_once(": ").map_or(e.as_str(), |(name, _)| name))
        .collect();
    names.sort_unstable();
    names
}

/// `d` (from `decide`) and `cedar` (from `decide_via_cedar`) agree: same
/// outcome, deciding policies, limits, and the same policies erroring.
fn assert_same(d: &Decision, cedar: &Decision, what: &dyn fmt::Debug) {
    assert_eq!(
        (d.allowed, d.action, &d.policies, &d.limits),
        (cedar.allowed, cedar.action, &cedar.policies, &cedar.limits),
        "native {:?} vs cedar {:?}: {what:?}",
        d.explain(),
        cedar.explain()
    );
    assert_eq!(
        error_names(d),
        error_names(cedar),
        "errors {:?} vs cedar {:?}: {what:?}",
        d.errors,
        cedar.errors
    );
}

/// Decide, cross-checking the native evaluator and the cache against plain Cedar.
fn check(p: &Policy, g: &Groups, req: &Request) -> Decision {
    let d = p.decide(req, g);
    assert_same(&d, &p.decide_via_cedar(req, g), req);
    assert_eq!(d, p.decide(req, g), "cached: {req:?}");
    d
}

fn ask(p: &Policy, g: &Groups, caller: &str, action: Action, object: &str) -> Decision {
    let params = json!({});
    check(
        p,
        g,
        &req(
            caller,
            action,
            Some(object),
            "s.rhai",
            &params,
            1_700_000_000,
        ),
    )
}

fn allowed(p: &Policy, g: &Groups, caller: &str, action: Action, object: &str) -> bool {
    let d = ask(p, g, caller, action, object);
    assert!(d.errors.is_empty(), "unexpected errors: {:?}", d.errors);
    d.allowed
}

// --- the design example --------------------------------------------------

#[test]
fn example_alice() {
    let p = parse(EXAMPLE);
    let g = groups(GROUPS);
    assert!(allowed(&p, &g, "alice", Action::Run, "job.rhai"));
    assert!(allowed(&p, &g, "alice", Action::Read, "anything"));
    assert!(allowed(&p, &g, "alice", Action::Write, "shared/notes"));
    assert!(!allowed(&p, &g, "alice", Action::Write, "private/notes"));
    assert!(!allowed(&p, &g, "alice", Action::Write, "shared")); // no slash
    assert!(!allowed(&p, &g, "alice", Action::Send, "bob"));
    assert!(!allowed(&p, &g, "alice", Action::Import, "lib"));
}

#[test]
fn example_friends_and_mallory() {
    let p = parse(EXAMPLE);
    let g = groups(GROUPS);
    assert!(allowed(&p, &g, "bob", Action::Run, "x.rhai"));
    assert!(allowed(&p, &g, "bob", Action::Send, "carol"));
    assert!(!allowed(&p, &g, "bob", Action::Read, "k"));
    // mallory is in friends, but forbid wins
    let d = ask(&p, &g, "mallory", Action::Run, "x.rhai");
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["policy4".to_string()]);
    assert_eq!(d.explain(), "deny (forbid policy4)");
    assert!(!allowed(&p, &g, "mallory", Action::Send, "bob"));
    // bob without the groups file is just a stranger
    assert!(!allowed(
        &p,
        &Groups::default(),
        "bob",
        Action::Run,
        "x.rhai"
    ));
}

#[test]
fn example_unknown_peer_denied() {
    let p = parse(EXAMPLE);
    let g = groups(GROUPS);
    for a in Action::ALL {
        let d = ask(&p, &g, "zed", a, "x");
        assert!(!d.allowed, "{a}");
        assert!(d.policies.is_empty());
        assert_eq!(d.explain(), format!("deny: no policy permits {a}"));
    }
}

#[test]
fn determining_policies_in_file_order() {
    let p = parse(
        r#"permit(principal, action == Action::"run", resource);
@id("alice-run") permit(principal == Peer::"alice", action == Action::"run", resource);
permit(principal in Group::"g", action, resource);"#,
    );
    let g = groups("g: alice");
    let d = ask(&p, &g, "alice", Action::Run, "s");
    assert!(d.allowed);
    assert_eq!(d.policies, vec!["policy0", "alice-run", "policy2"]);
    assert_eq!(d.explain(), "allow (policy0, alice-run, policy2)");
}

// --- empty / errors ------------------------------------------------------

#[test]
fn empty_policy_denies_everything() {
    let g = groups(GROUPS);
    for p in [
        Policy::empty(),
        Policy::default(),
        parse(""),
        parse("  \n// only a comment\n"),
    ] {
        assert!(p.is_empty());
        for a in Action::ALL {
            let d = ask(&p, &g, "alice", a, "x");
            assert!(!d.allowed);
            assert!(d.errors.is_empty());
            assert!(!p.could_ever_allow("alice", &[], a));
        }
    }
    assert_eq!(Policy::empty().text(), "");
}

#[test]
fn syntax_error_has_position() {
    let e = parse_err(
        "permit(principal, action, resource);\npermit(principal, action, resource) when { 1 + };",
    );
    assert!(e.starts_with("2:"), "{e}");
    let e = parse_err("permit(principal, action, resource)");
    assert!(e.contains(':'), "{e}");
    let e = parse_err("permit(principal, action, resource); garbage");
    assert!(e.starts_with("1:"), "{e}");
}

#[test]
fn unknown_action_fails_validation() {
    let e = parse_err("permit(principal, action, resource);\npermit(principal, action == Action::\"delete\", resource);");
    assert!(e.starts_with("2:"), "{e}");
    assert!(e.contains("delete"), "{e}");
}

#[test]
fn unknown_attribute_fails_validation() {
    let e = parse_err(
        "permit(principal, action == Action::\"read\", resource) when { resource.nope == \"x\" };",
    );
    assert!(e.contains("nope"), "{e}");
    assert!(e.starts_with("1:"), "{e}");
    // `key` exists on Key but not on Script
    let e = parse_err(
        "permit(principal, action == Action::\"run\", resource) when { resource.key == \"x\" };",
    );
    assert!(e.contains("key"), "{e}");
    // unconstrained action: `resource.key` is not valid for every action
    parse_err("permit(principal, action, resource) when { resource.key == \"x\" };");
    // unknown context field
    parse_err("permit(principal, action, resource) when { context.user == \"x\" };");
    // unknown entity type
    parse_err("permit(principal == User::\"x\", action, resource);");
    // getTag without hasTag guard
    parse_err(
        "permit(principal, action, resource) when { context.params.getTag(\"m\") == \"x\" };",
    );
}

#[test]
fn templates_rejected() {
    let e = parse_err("permit(principal == ?principal, action, resource);");
    assert!(e.contains("template"), "{e}");
}

#[test]
fn error_display_is_message() {
    let e = PolicyError::new("1:2: boom");
    assert_eq!(e.to_string(), "1:2: boom");
}

// --- groups --------------------------------------------------------------

#[test]
fn groups_parse_good() {
    let g = groups(
        "# my groups\n\nfriends: alice bob   # trailing comment\nwork:carol alice\nfriends: dave\nempty:\n  v1.2_x-y: a.b\n",
    );
    assert_eq!(g.groups_of("alice"), vec!["friends", "work"]);
    assert_eq!(g.groups_of("bob"), vec!["friends"]);
    assert_eq!(g.groups_of("dave"), vec!["friends"]);
    assert_eq!(g.groups_of("a.b"), vec!["v1.2_x-y"]);
    assert!(g.groups_of("nobody").is_empty());
    assert_eq!(g.group_names(), ["empty", "friends", "v1.2_x-y", "work"]);
    assert!(Groups::default().groups_of("alice").is_empty());
    assert!(groups("").is_empty());
    assert!(groups("# nothing\n\n").is_empty());
}

#[test]
fn groups_parse_bad() {
    let cases = [
        ("friends: alice\nno colon here\n", 2),
        ("\n\n.hidden: alice\n", 3),
        ("friends: alice .bob\n", 1),
        ("ok: a\nbad group: a\n", 2),
        ("g: a/b\n", 1),
        (": alice\n", 1),
        ("g: a:b\n", 1),
    ];
    for (text, line) in cases {
        match Groups::parse(text) {
            Ok(_) => panic!("should fail: {text:?}"),
            Err(e) => assert!(
                e.message.starts_with(&format!("groups line {line}:")),
                "{text:?}: {e}"
            ),
        }
    }
    let long = "x".repeat(65);
    assert!(Groups::parse(&format!("g: {long}")).is_err());
    assert!(Groups::parse(&format!("g: {}", "x".repeat(64))).is_ok());
    assert!(valid_name("a.b-c_D9"));
    assert!(!valid_name(""));
    assert!(!valid_name(".a"));
    assert!(!valid_name("é"));
}

// --- limits --------------------------------------------------------------

#[test]
fn limits_min_over_determining_permits() {
    let p = parse(
        r#"@max_operations("100000") @max_wall_ms("500") @max_sends("3")
permit(principal, action == Action::"run", resource);
@max_operations("5000") @max_string_size("1024")
permit(principal == Peer::"alice", action, resource);
@max_wall_ms("100")
permit(principal == Peer::"zed", action == Action::"run", resource) when { context.now < 0 };
permit(principal, action in [Action::"run", Action::"read"], resource);"#,
    );
    let g = Groups::default();
    let d = ask(&p, &g, "alice", Action::Run, "s");
    assert!(d.allowed);
    assert_eq!(
        d.limits,
        Limits {
            max_operations: Some(5000),
            max_wall_ms: Some(500),
            max_string_size: Some(1024),
            max_sends: Some(3),
            ..Limits::default()
        }
    );
    let d = ask(&p, &g, "bob", Action::Run, "s");
    assert_eq!(d.limits.max_operations, Some(100000));
    assert_eq!(d.limits.max_string_size, None);
    // zed's tighter policy does not apply (condition false)
    assert_eq!(
        ask(&p, &g, "zed", Action::Run, "s").limits.max_wall_ms,
        Some(500)
    );
    // limits only for run
    let d = ask(&p, &g, "alice", Action::Read, "k");
    assert!(d.allowed);
    assert!(d.limits.is_empty());
}

#[test]
fn limits_none_when_unannotated_or_denied() {
    let p = parse(
        "@max_operations(\"7\") permit(principal, action, resource);\nforbid(principal == Peer::\"m\", action, resource);\npermit(principal == Peer::\"u\", action, resource);",
    );
    let g = Groups::default();
    let d = ask(&p, &g, "m", Action::Run, "s");
    assert!(!d.allowed);
    assert!(d.limits.is_empty());
    assert_eq!(
        ask(&p, &g, "u", Action::Run, "s").limits.max_operations,
        Some(7)
    );
    let p = parse("permit(principal, action, resource);");
    let d = ask(&p, &g, "u", Action::Run, "s");
    assert!(d.allowed && d.limits.is_empty());
}

#[test]
fn bad_limit_annotations_rejected() {
    let cases = [
        (r#"@max_bananas("1") permit(principal, action, resource);"#, "max_bananas"),
        (r#"@max_operations("10k") permit(principal, action, resource);"#, "max_operations"),
        (r#"@max_operations("-1") permit(principal, action, resource);"#, "max_operations"),
        (r#"@max_operations("") permit(principal, action, resource);"#, "max_operations"),
        (r#"@max_operations permit(principal, action, resource);"#, "max_operations"),
        (r#"@max_operations(" 5") permit(principal, action, resource);"#, "max_operations"),
        (
            r#"@max_operations("99999999999999999999999") permit(principal, action, resource);"#,
            "max_operations",
        ),
        (r#"@max_sends("1") forbid(principal, action, resource);"#, "permit"),
        (
            r#"@max_sends("1") permit(principal, action == Action::"read", resource);"#,
            "run",
        ),
        (
            "permit(principal, action, resource);\n\n  @max_sends(\"x\") permit(principal, action, resource);",
            "3:3:",
        ),
    ];
    for (text, needle) in cases {
        let e = parse_err(text);
        assert!(e.contains(needle), "{text}: {e}");
    }
    // other annotations are fine
    parse(r#"@description("hi") @max_operations("0") permit(principal, action, resource);"#);
}

#[test]
fn id_annotation() {
    let p = parse(r#"@id("open") permit(principal, action, resource);"#);
    assert_eq!(
        ask(&p, &Groups::default(), "a", Action::Read, "k").policies,
        vec!["open"]
    );
    let e = parse_err(
        "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") permit(principal, action, resource);",
    );
    assert!(e.starts_with("2:1:") && e.contains("duplicate"), "{e}");
    parse_err(r#"@id("") permit(principal, action, resource);"#);
}

// --- could_ever_allow ----------------------------------------------------

#[test]
fn could_ever_allow_cases() {
    let p = parse(EXAMPLE);
    let friends = vec!["friends".to_string()];
    assert!(p.could_ever_allow("alice", &[], Action::Run));
    assert!(p.could_ever_allow("alice", &[], Action::Read));
    assert!(p.could_ever_allow("alice", &[], Action::Write)); // conditional permit counts
    assert!(!p.could_ever_allow("alice", &[], Action::Send));
    assert!(!p.could_ever_allow("alice", &[], Action::Import));
    assert!(p.could_ever_allow("alice", &friends, Action::Send));
    assert!(p.could_ever_allow("bob", &friends, Action::Send));
    assert!(!p.could_ever_allow("bob", &friends, Action::Read));
    assert!(!p.could_ever_allow("bob", &[], Action::Run));
    // unconditional forbid
    assert!(!p.could_ever_allow("mallory", &friends, Action::Run));

    let p = parse(
        r#"permit(principal, action, resource);
forbid(principal == Peer::"a", action, resource) when { context.now > 5 };
forbid(principal is Peer in Group::"bad", action == Action::"send", resource);
forbid(principal, action == Action::"write", resource is Key);
forbid(principal, action == Action::"import", resource == Module::"os");"#,
    );
    assert!(p.could_ever_allow("a", &[], Action::Run)); // conditional forbid
    assert!(p.could_ever_allow("b", &[], Action::Send));
    assert!(!p.could_ever_allow("b", &["bad".to_string()], Action::Send));
    assert!(!p.could_ever_allow("b", &[], Action::Write));
    assert!(p.could_ever_allow("b", &[], Action::Import)); // only one module forbidden

    let p = parse(
        r#"permit(principal is Peer in Group::"g", action in [Action::"read", Action::"write"], resource);"#,
    );
    assert!(p.could_ever_allow("x", &["g".to_string()], Action::Write));
    assert!(!p.could_ever_allow("x", &["h".to_string()], Action::Write));
    assert!(!p.could_ever_allow("x", &["g".to_string()], Action::Run));
}

// --- context -------------------------------------------------------------

#[test]
fn context_script_and_now() {
    let p = parse(
        r#"permit(principal, action == Action::"run", resource) when { context.script == "ok.rhai" };
permit(principal, action == Action::"read", resource) when { context.now >= 1000 && context.now < 2000 };
permit(principal, action == Action::"send", resource) when { resource.peer == "carol" && resource == Target::"carol" };
permit(principal, action == Action::"import", resource) when { resource.module like "std/*" };
permit(principal, action == Action::"write", resource == Key::"config") when { principal.name like "adm-*" };"#,
    );
    let g = Groups::default();
    let empty = json!({});
    let run = |script: &str| {
        check(
            &p,
            &g,
            &req("x", Action::Run, Some(script), script, &empty, 0),
        )
        .allowed
    };
    assert!(run("ok.rhai"));
    assert!(!run("evil.rhai"));
    let read = |now| check(&p, &g, &req("x", Action::Read, Some("k"), "s", &empty, now)).allowed;
    assert!(read(1000));
    assert!(read(1999));
    assert!(!read(999));
    assert!(!read(2000));
    assert!(!read(-5));
    assert!(allowed(&p, &g, "x", Action::Send, "carol"));
    assert!(!allowed(&p, &g, "x", Action::Send, "dave"));
    assert!(allowed(&p, &g, "x", Action::Import, "std/json"));
    assert!(!allowed(&p, &g, "x", Action::Import, "os"));
    assert!(allowed(&p, &g, "adm-1", Action::Write, "config"));
    assert!(!allowed(&p, &g, "adm-1", Action::Write, "other"));
    assert!(!allowed(&p, &g, "bob", Action::Write, "config"));
    // object None = empty string
    let d = check(&p, &g, &req("x", Action::Send, None, "s", &empty, 0));
    assert!(!d.allowed);
}

#[test]
fn context_params() {
    let p = parse(
        r#"permit(principal, action == Action::"run", resource)
  when { context.params.hasTag("mode") && context.params.getTag("mode") == "ro" };
permit(principal, action == Action::"read", resource)
  when { context.params.hasTag("n") && context.params.getTag("n") == "5" };
permit(principal, action == Action::"write", resource)
  when { context.params_json like "*\"dry\":true*" };
permit(principal, action == Action::"send", resource)
  when { context.params.hasTag("to") && context.params.getTag("to") == resource.peer };"#,
    );
    let g = Groups::default();
    let go = |a, obj: &str, params: serde_json::Value| {
        let d = check(&p, &g, &req("x", a, Some(obj), "s", &params, 0));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        d.allowed
    };
    assert!(go(Action::Run, "s", json!({"mode": "ro"})));
    assert!(!go(Action::Run, "s", json!({"mode": "rw"})));
    assert!(!go(Action::Run, "s", json!({})));
    assert!(!go(Action::Run, "s", json!(null)));
    assert!(!go(Action::Run, "s", json!(["mode", "ro"])));
    assert!(go(Action::Read, "k", json!({"n": 5})));
    assert!(!go(Action::Read, "k", json!({"n": "6"})));
    assert!(go(Action::Read, "k", json!({"n": "5"}))); // strings and numbers both become "5"
    assert!(go(Action::Write, "k", json!({"dry": true, "x": [1, 2]})));
    assert!(!go(Action::Write, "k", json!({"dry": false})));
    assert!(go(Action::Send, "carol", json!({"to": "carol"})));
    assert!(!go(Action::Send, "dave", json!({"to": "carol"})));
}

#[test]
fn evaluation_error_reported_and_skipped() {
    let p = parse(
        r#"@id("overflow") permit(principal, action, resource) when { context.now + 9223372036854775807 > 0 };"#,
    );
    let d = ask(&p, &Groups::default(), "x", Action::Read, "k");
    assert!(!d.allowed);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].starts_with("overflow:"), "{:?}", d.errors);
    let e = d.explain();
    assert!(
        e.starts_with("deny: no policy permits read [errors: overflow:"),
        "{e}"
    );
}

#[test]
fn static_shortcut_matches_cedar() {
    let p = parse(
        r#"@max_operations("10") permit(principal, action == Action::"run", resource);
@max_operations("5") permit(principal in Group::"g", action, resource);
permit(principal == Peer::"a", action in [Action::"read", Action::"write"], resource == Key::"k1");
permit(principal is Peer in Group::"h", action == Action::"read", resource in Key::"k2");
permit(principal is Peer, action == Action::"send", resource is Target);
forbid(principal == Peer::"m", action, resource);
forbid(principal in Group::"h", action == Action::"write", resource == Key::"k2");
forbid(principal, action == Action::"import", resource == Module::"os");"#,
    );
    let g = groups("g: a b\nh: b c m\n");
    for caller in ["a", "b", "c", "m", "z"] {
        for a in Action::ALL {
            for obj in ["k1", "k2", "os", "x", ""] {
                let d = ask(&p, &g, caller, a, obj);
                assert!(d.errors.is_empty());
            }
        }
    }
    assert_eq!(
        ask(&p, &g, "b", Action::Run, "s").limits.max_operations,
        Some(5)
    );
    assert_eq!(
        ask(&p, &g, "c", Action::Run, "s").limits.max_operations,
        Some(10)
    );
    assert!(ask(&p, &g, "c", Action::Read, "k2").allowed);
    assert!(!ask(&p, &g, "c", Action::Read, "k1").allowed);
    assert!(!ask(&p, &g, "b", Action::Write, "k2").allowed);
    assert!(ask(&p, &g, "b", Action::Write, "k1").allowed);
    assert_eq!(
        ask(&p, &g, "m", Action::Run, "s").explain(),
        "deny (forbid policy5)"
    );
}

#[test]
fn cache_follows_group_changes() {
    let p = parse(r#"permit(principal in Group::"g", action, resource);"#);
    assert!(allowed(&p, &groups("g: a"), "a", Action::Read, "k"));
    assert!(!allowed(&p, &groups("g: b"), "a", Action::Read, "k"));
    assert!(allowed(&p, &groups("g: a b"), "a", Action::Read, "k"));
    assert!(!allowed(&p, &Groups::default(), "a", Action::Read, "k"));
}

// --- misc ----------------------------------------------------------------

#[test]
fn action_names_roundtrip() {
    for a in Action::ALL {
        assert_eq!(Action::parse(a.as_str()), Some(a));
        assert_eq!(a.to_string(), a.as_str());
    }
    assert_eq!(Action::parse("Run"), None);
    assert_eq!(Action::parse(""), None);
}

#[test]
fn policy_is_clone_send_sync_and_keeps_text() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Policy>();
    assert_traits::<Groups>();
    let p = parse(EXAMPLE);
    assert_eq!(p.clone().text(), EXAMPLE);
    assert_eq!(p.len(), 5);
    let handle = std::thread::spawn(move || {
        p.decide(
            &Request {
                caller: "alice",
                target: "me",
                action: Action::Run,
                object: Some("s"),
                script: "s",
                params: &json!({}),
                now: 0,
                chain: &[],
            },
            &Groups::default(),
        )
        .allowed
    });
    assert!(matches!(handle.join(), Ok(true)));
}

#[test]
fn warnings_for_impossible_policy() {
    let p = parse(r#"permit(principal, action == Action::"run", resource) when { false };"#);
    assert!(!p.warnings().is_empty());
}

#[test]
fn schema_parses() {
    assert!(env().is_ok());
    assert!(SCHEMA.contains("entity Peer in [Group]"));
}

// --- shipped example policies ---------------------------------------------

macro_rules! example_policy {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/", $name))
    };
}

#[test]
fn example_private() {
    let p = parse(example_policy!("private.cedar"));
    let g = groups("friends: alice");
    assert!(p.is_empty());
    assert!(!allowed(&p, &g, "alice", Action::Run, "s"));
    assert!(!allowed(&p, &g, "alice", Action::Read, "k"));
    assert!(!p.could_ever_allow("alice", &["friends".into()], Action::Run));
}

#[test]
fn example_friends_read_only() {
    let p = parse(example_policy!("friends-read-only.cedar"));
    let g = groups("friends: alice");
    assert!(allowed(&p, &g, "alice", Action::Run, "s"));
    assert!(allowed(&p, &g, "alice", Action::Read, "k"));
    assert!(!allowed(&p, &g, "alice", Action::Write, "k"));
    assert!(!allowed(&p, &g, "bob", Action::Read, "k"));
    assert_eq!(
        ask(&p, &g, "alice", Action::Read, "k").explain(),
        "allow (friends-run-read)"
    );
}

#[test]
fn example_shared_folder() {
    let p = parse(example_policy!("shared-folder.cedar"));
    let g = Groups::default();
    assert!(allowed(&p, &g, "alice", Action::Run, "s"));
    assert!(allowed(&p, &g, "alice", Action::Read, "shared/a"));
    assert!(allowed(&p, &g, "alice", Action::Write, "shared/a/b"));
    assert!(!allowed(&p, &g, "alice", Action::Read, "secret"));
    assert!(!allowed(&p, &g, "alice", Action::Write, "secret"));
    assert!(!allowed(&p, &g, "bob", Action::Read, "shared/a"));
}

#[test]
fn example_group_members() {
    let p = parse(example_policy!("group-members.cedar"));
    let g = groups("members: alice bob");
    for a in Action::ALL {
        // Members do not send as this peer (see the policy's comment).
        assert_eq!(allowed(&p, &g, "bob", a, "x"), a != Action::Send, "{a}");
        assert!(!allowed(&p, &g, "carol", a, "x"), "{a}");
    }
    let d = ask(&p, &g, "alice", Action::Run, "s");
    assert_eq!(d.limits.max_operations, Some(1_000_000));
    assert_eq!(d.limits.max_wall_ms, Some(1000));
}

#[test]
fn example_open_to_all_but() {
    let p = parse(example_policy!("open-to-all-but.cedar"));
    let g = Groups::default();
    assert!(allowed(&p, &g, "anyone", Action::Run, "s"));
    assert!(allowed(&p, &g, "anyone", Action::Read, "k"));
    assert!(!allowed(&p, &g, "anyone", Action::Write, "k"));
    assert!(!allowed(&p, &g, "mallory", Action::Read, "k"));
    assert_eq!(
        ask(&p, &g, "mallory", Action::Run, "s").explain(),
        "deny (forbid not-mallory)"
    );
    assert!(!p.could_ever_allow("mallory", &[], Action::Read));
}

#[test]
fn context_origin_and_chain_follow_the_request_chain() {
    let p = parse(
        r#"@id("bobs-own")
permit (principal == Peer::"bob", action, resource) when { context.origin == "bob" };
@id("no-mal-writes")
forbid (principal, action == Action::"write", resource) when { context.chain.contains("mal") };"#,
    );
    let g = Groups::default();
    let params = json!({});
    let direct: Vec<String> = vec!["bob".into()];
    let via_mal: Vec<String> = vec!["mal".into(), "bob".into()];
    let q = |action, chain: &[String]| {
        let r = Request {
            chain,
            ..req("bob", action, Some("k"), "s", &params, 0)
        };
        check(&p, &g, &r)
    };
    // An empty chain is the caller alone, like an explicit one.
    assert!(q(Action::Read, &[]).allowed);
    assert!(q(Action::Write, &direct).allowed);
    let d = q(Action::Read, &via_mal);
    assert!(!d.allowed && d.policies.is_empty(), "{}", d.explain());
    assert_eq!(
        q(Action::Write, &via_mal).explain(),
        "deny (forbid no-mal-writes)"
    );
}
