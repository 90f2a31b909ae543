//! The native evaluator against Cedar: on the shipped and benchmark policies, on
//! every construct of its subset, on evaluation errors, and outside the subset
//! (where Cedar decides).

use super::*;

/// bob's 20-statement policy of `examples/bench_policy.rs`.
const BENCH_POLICY: &str = include_str!("../../../examples/bench_policy.cedar");

/// Validated policies exercising every construct of the native subset.
const CONSTRUCTS: &str = r#"
@id("like-escaped-star")
permit (principal, action == Action::"read", resource) when { resource.key like "a\*b" };
@id("like-stars")
permit (principal, action in [Action::"read", Action::"write"], resource)
when { resource.key like "*/k*" && !(resource.key like "*\**") };
@id("unless-secret")
permit (principal, action == Action::"write", resource)
unless { resource.key like "secret/*" || resource.key == "" };
@id("has-name")
permit (principal, action == Action::"run", resource)
when { principal has name && resource has name && principal.name != "zed" && resource.name like "*.rhai" };
@id("tag-mode")
permit (principal, action == Action::"run", resource)
when { context.params.hasTag("mode") && context.params.getTag("mode") == "ro" };
@id("tag-n-forbid")
forbid (principal, action, resource)
when { context.params.hasTag("n") && context.params.getTag("n") == "5" };
@id("tag-to")
permit (principal, action == Action::"send", resource)
when { context.params.hasTag("to") && context.params.getTag("to") == resource.peer };
@id("now-window")
permit (principal, action == Action::"send", resource)
when { (context.now >= 1000 && context.now < 2000) || context.now > 1700000000 };
@id("now-nonpositive")
forbid (principal, action == Action::"send", resource) when { context.now <= 0 }
unless { principal in Group::"admins" };
@id("groups-import")
permit (principal, action == Action::"import", resource)
when { principal in Group::"friends" || principal in [Group::"admins", Group::"readers"] };
@id("self-in")
permit (principal, action == Action::"import", resource) when { principal in Peer::"zed" };
@id("resource-in")
permit (principal, action == Action::"write", resource)
when { resource in Key::"inbox" || resource in [Key::"a*b", Key::"status"] };
@id("resource-eq")
permit (principal, action == Action::"read", resource)
when { resource == Key::"k" && principal != Peer::"mallory" && resource.key != "x" };
@id("if-then-else")
permit (principal, action == Action::"read", resource)
when { if principal in Group::"readers" then resource.key like "public/*" else context.now == 1999 };
@id("is")
permit (principal is Peer, action == Action::"send", resource is Target in Target::"bob")
when { resource is Target && principal is Peer && !(resource is Target in Target::"carol") };
@id("literal-peer-in-group")
permit (principal, action == Action::"read", resource)
when { Peer::"carol" in Group::"friends" && resource.key == "carol-only" };
@id("literal-resource-attr")
permit (principal, action == Action::"read", resource)
when { resource == Key::"status" && Key::"status".key == "status" };
@id("script-and-json")
permit (principal, action == Action::"run", resource)
when { context.script == "ok.rhai" && context.params_json like "*\"dry\":true*" };
@id("sets")
permit (principal, action == Action::"read", resource)
when {
  [1, 2, 2] == [2, 1] && ["a", resource.key] != ["a"] && ["a"] != [resource.key, "a"] &&
  [principal] == [Peer::"alice"]
};
@id("resource-scope-in")
forbid (principal, action == Action::"read", resource in Key::"public/blocked");
"#;

/// Unvalidated policies: evaluation errors (type errors, missing attributes,
/// tags and entities) and `==` / `!=` across types.
const ERRORS: &str = r#"
@id("tag-missing")
permit (principal, action, resource) when { context.params.getTag("mode") == "ro" };
@id("lt-type")
permit (principal, action == Action::"read", resource) when { resource.key < 5 };
@id("ge-type")
permit (principal, action == Action::"write", resource) when { context.now >= "5" };
@id("eq-across-types")
permit (principal, action, resource)
when { !(context.now == "5") && principal != Group::"friends" && 1 != true && resource != "x" && [1] != 1 };
@id("and-nonbool")
forbid (principal, action == Action::"write", resource) when { context.now > 1000 && 5 };
@id("or-nonbool")
permit (principal, action == Action::"write", resource) when { context.now > 1000 || "x" };
@id("wrong-attr")
permit (principal, action == Action::"run", resource) when { resource.key == "x" };
@id("has-others")
permit (principal, action == Action::"run", resource)
when { !(resource has key) && !(context.params has x) && !(Group::"g" has name) && !(principal has key) };
@id("has-nonentity")
permit (principal, action == Action::"run", resource) when { context.now has x };
@id("group-attr")
permit (principal, action == Action::"send", resource) when { Group::"friends".name == "x" };
@id("params-attr")
permit (principal, action == Action::"send", resource) when { context.params.name == "x" };
@id("tag-on-principal")
permit (principal, action == Action::"import", resource)
when { principal.hasTag("x") || principal.getTag("x") == "y" };
@id("tag-on-group")
permit (principal, action == Action::"import", resource) when { Group::"g".getTag("x") == "y" };
@id("tag-key-nonstring")
permit (principal, action == Action::"import", resource) when { context.params.hasTag(5) };
@id("in-set-nonentity")
permit (principal, action == Action::"read", resource) when { principal in [Group::"friends", 5] };
@id("in-lhs-string")
permit (principal, action == Action::"read", resource) when { "x" in Group::"friends" };
@id("in-rhs-string")
permit (principal, action == Action::"read", resource) when { principal in "friends" };
@id("like-nonstring")
permit (principal, action == Action::"read", resource) when { context.now like "1*" };
@id("is-nonentity")
permit (principal, action == Action::"read", resource) when { context.now is Key };
@id("if-nonbool")
permit (principal, action == Action::"read", resource) when { if context.now then true else false };
@id("unless-nonbool")
permit (principal, action == Action::"read", resource) unless { context.script };
@id("when-nonbool")
permit (principal, action == Action::"read", resource) when { context.now };
@id("not-nonbool")
permit (principal, action == Action::"read", resource) when { !context.script };
@id("short-circuit")
permit (principal, action == Action::"read", resource)
when { (false && 5) == false && (true || 5) && (if true then true else 5) };
@id("errors-after-false")
permit (principal, action == Action::"write", resource)
when { resource.key == "never" } when { context.now < "x" };
@id("set-elem-error")
permit (principal, action == Action::"send", resource)
when { [context.params.getTag("to")] == [resource.peer] };
@id("forbid-erroring")
forbid (principal, action == Action::"read", resource) when { context.params.getTag("deny") == "yes" };
"#;

/// Policies outside the native subset: Cedar decides them.
const OUTSIDE: [&str; 8] = [
    r#"permit (principal, action == Action::"read", resource) when { ["a", "b"].contains(resource.key) };"#,
    r#"permit (principal, action == Action::"read", resource) when { ip("10.0.0.1").isInRange(ip("10.0.0.0/8")) && resource.key == "k" };"#,
    r#"permit (principal, action == Action::"read", resource) when { decimal("1.5").lessThan(decimal("2.0")) };"#,
    r#"permit (principal, action == Action::"read", resource) when { context has params };"#,
    r#"permit (principal, action, resource) when { action == Action::"read" };"#,
    r#"permit (principal, action == Action::"read", resource) when { context.now + 1 > 1000 };"#,
    r#"permit (principal, action == Action::"read", resource) when { context.script like "*" && ["x"].isEmpty() == false };"#,
    r#"permit (principal, action == Action::"read", resource) when { [Group::"friends"].containsAny([Group::"admins"]) || principal in Group::"friends" };"#,
];

const CROSS_GROUPS: &str = "friends: alice carol\nadmins: root-admin\nreaders: dave erin\nnone:\n";

/// Every request shape the cross-check asks about.
fn cross_check(p: &Policy, label: &str) -> (usize, usize, usize) {
    let groupsets = [groups(CROSS_GROUPS), Groups::default()];
    let callers = [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "frank",
        "mallory",
        "root-admin",
        "zed",
    ];
    let objects = [
        "shared/k1",
        "shared/",
        "shared",
        "public/x",
        "public/blocked",
        "secret/x",
        "config/a",
        "inbox/carol/m",
        "inbox",
        "report-1",
        "reports/q",
        "status",
        "carol-only",
        "lib",
        "bob",
        "carol",
        "a*b",
        "a/k*",
        "x/k1",
        "axb",
        "ok.rhai",
        "k",
        "",
    ];
    let params = [
        json!({}),
        json!(null),
        json!({"mode": "ro"}),
        json!({"mode": "rw", "n": 5}),
        json!({"n": "5"}),
        json!({"dry": true, "x": [1, 2]}),
        json!(["mode", "ro"]),
        json!({"to": "carol", "deny": "yes"}),
        json!({"to": "bob", "deny": "no", "mode": "ro"}),
    ];
    let nows = [-5, 0, 999, 1000, 1999, 2000, 1_750_000_000];
    let scripts = ["s.rhai", "ok.rhai"];
    let (mut allowed, mut denied, mut errored) = (0, 0, 0);
    let mut round = 0usize;
    for g in &groupsets {
        for caller in callers {
            for action in Action::ALL {
                for object in objects {
                    for k in 0..4 {
                        round += 1;
                        let r = req(
                            caller,
                            action,
                            if object.is_empty() && k == 0 {
                                None
                            } else {
                                Some(object)
                            },
                            scripts[(round / 3) % scripts.len()],
                            &params[(round * 7 + k) % params.len()],
                            nows[(round * 5 + k) % nows.len()],
                        );
                        let d = p.decide(&r, g);
                        let cedar = p.decide_via_cedar(&r, g);
                        assert_same(&d, &cedar, &(label, &r));
                        assert_eq!(d, p.decide(&r, g), "cached: {label} {r:?}");
                        if d.allowed {
                            allowed += 1;
                        } else {
                            denied += 1;
                        }
                        if !d.errors.is_empty() {
                            errored += 1;
                        }
                    }
                }
            }
        }
    }
    (allowed, denied, errored)
}

/// The statements of a policy text whose statements all start with `@id(`.
fn statements(text: &str) -> Vec<String> {
    text.split("\n@id(")
        .filter(|s| !s.trim().is_empty())
        .map(|s| format!("@id({s}"))
        .collect()
}

fn all_native(p: &Policy) -> bool {
    p.inner.ordered.iter().all(|m| m.native.is_some())
}

#[test]
fn native_matches_cedar_on_shipped_and_bench_policies() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let p = parse(&std::fs::read_to_string(&path).unwrap());
        assert!(all_native(&p), "{path:?}");
        cross_check(&p, &path.display().to_string());
    }
    let p = parse(BENCH_POLICY);
    assert_eq!(p.len(), 20);
    assert!(all_native(&p));
    let (allowed, denied, errored) = cross_check(&p, "bench");
    assert!(allowed > 100 && denied > 100, "{allowed} {denied}");
    assert_eq!(errored, 0);
}

#[test]
fn native_matches_cedar_on_every_construct() {
    let p = parse(CONSTRUCTS);
    for m in &p.inner.ordered {
        assert!(m.native.is_some(), "{} not compiled", m.name);
    }
    let (allowed, denied, errored) = cross_check(&p, "constructs");
    assert!(allowed > 100 && denied > 100, "{allowed} {denied}");
    assert_eq!(errored, 0);
    // each statement alone, so that every one decides somewhere
    for src in statements(CONSTRUCTS) {
        let one = parse(&src);
        let m = &one.inner.ordered[0];
        let (allowed, denied, _) = cross_check(&one, &m.name);
        assert!(denied > 0, "{}", m.name);
        if m.effect == Effect::Permit {
            assert!(allowed > 0, "{} never allows", m.name);
        }
    }
    // spot checks
    let g = groups(CROSS_GROUPS);
    let d = ask(&p, &g, "carol", Action::Read, "carol-only");
    assert!(
        d.allowed && d.policies == ["literal-peer-in-group"],
        "{d:?}"
    );
    assert!(!ask(&p, &g, "bob", Action::Read, "carol-only").allowed);
    assert!(ask(&p, &g, "x", Action::Read, "a*b").allowed);
    assert!(!ask(&p, &g, "x", Action::Read, "axb").allowed);
    assert!(ask(&p, &g, "zed", Action::Import, "m").allowed);
    assert!(ask(&p, &g, "dave", Action::Import, "m").allowed);
    assert!(!ask(&p, &g, "bob", Action::Import, "m").allowed);
}

#[test]
fn native_matches_cedar_on_evaluation_errors() {
    let p = Policy::parse_unvalidated(ERRORS).unwrap();
    for m in &p.inner.ordered {
        assert!(m.native.is_some(), "{} not compiled", m.name);
    }
    let (allowed, denied, errored) = cross_check(&p, "errors");
    assert!(allowed > 100 && denied > 100 && errored > 100);
    let mut errored_names = HashSet::new();
    let singles: Vec<Policy> = statements(ERRORS)
        .iter()
        .map(|src| Policy::parse_unvalidated(src).unwrap())
        .collect();
    for one in &singles {
        let m = &one.inner.ordered[0];
        let (allowed, _, errored) = cross_check(one, &m.name);
        if errored > 0 {
            errored_names.insert(m.name.clone());
        }
        if ["eq-across-types", "short-circuit", "has-others"].contains(&m.name.as_str()) {
            assert!(allowed > 0 && errored == 0, "{}", m.name);
        }
    }
    for m in &p.inner.ordered {
        let clean = [
            "eq-across-types",
            "short-circuit",
            "has-others",
            "errors-after-false",
        ];
        assert_eq!(
            errored_names.contains(&m.name),
            !clean.contains(&m.name.as_str()),
            "{}",
            m.name
        );
    }
    // a missing tag is an error, reported under the policy's name
    let params = json!({});
    let r = req("x", Action::Import, Some("m"), "s", &params, 0);
    let d = check(&p, &Groups::default(), &r);
    assert!(d.errors.iter().any(|e| e.starts_with("tag-missing: ")));
}

#[test]
fn outside_the_subset_cedar_decides() {
    let g = groups(CROSS_GROUPS);
    for text in OUTSIDE {
        let p = parse(text);
        assert!(p.inner.ordered[0].native.is_none(), "compiled: {text}");
        cross_check(&p, text);
        // mixed with compiled statements: the whole candidate set goes to Cedar
        let mixed = format!(
            "{text}\npermit (principal in Group::\"friends\", action == Action::\"read\", resource) when {{ resource.key like \"shared/*\" }};"
        );
        let p = parse(&mixed);
        assert!(p.inner.ordered[0].native.is_none());
        assert!(p.inner.ordered[1].native.is_some());
        cross_check(&p, &mixed);
        let env = env().unwrap();
        let c = p
            .candidates(env, "alice", g.uids_of("alice"), Action::Read)
            .unwrap();
        assert!(!c.native && c.set.is_some());
        assert!(ask(&p, &g, "alice", Action::Read, "shared/x").allowed);
    }
    let p = parse(OUTSIDE[0]);
    assert!(ask(&p, &g, "x", Action::Read, "a").allowed);
    assert!(!ask(&p, &g, "x", Action::Read, "c").allowed);
}
