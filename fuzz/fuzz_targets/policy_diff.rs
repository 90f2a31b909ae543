//! Differential: every generated policy, groups file and request is decided by
//! peerfs's native evaluator (`src/policy/native.rs`, used when a caller's
//! statements stay within its subset) and by Cedar alone; any difference in the
//! outcome, the deciding policies, the limits or the policies that errored is an
//! authorization bug (as Cedar tests its implementation against its model).
//!
//! Input bytes drive a small grammar: statements built from the scopes and
//! conditions the native subset covers (and a few it does not, which Cedar then
//! decides on both sides), groups over a few peers, and requests with varied
//! callers, objects, params and times.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use peerfs::policy::{Action, Groups, Policy, Request};
use serde_json::json;

const PEERS: [&str; 4] = ["alice", "bob", "mal", "eve"];
const GROUPS: [&str; 2] = ["g", "h"];
const KEYS: [&str; 6] = ["shared/x", "a*b", "secret/k", "", "x/k1", "pub"];
const STRINGS: [&str; 6] = ["ro", "rw", "job.rhai", "alice", "shared/*", "5"];

/// Bytes as a stream of choices (0 when exhausted).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.next() as usize % items.len()]
    }
}

fn lit(b: &mut Bytes) -> String {
    format!("{:?}", b.pick(&STRINGS))
}

/// A boolean condition, `depth` levels at most.
fn cond(b: &mut Bytes, depth: u8) -> String {
    let leaf = depth == 0;
    match b.next() % if leaf { 12 } else { 18 } {
        0 => format!(
            "resource.key like {:?}",
            b.pick(&["shared/*", "*", "a\\*b", "*/k*", ""])
        ),
        1 => format!("resource.key == {:?}", b.pick(&KEYS)),
        2 => format!("context.script == {}", lit(b)),
        3 => format!("context.now > {}", b.next() as i64 * 10_000_000),
        4 => format!("context.params.hasTag({})", lit(b)),
        5 => format!("context.params.getTag({}) == {}", lit(b), lit(b)),
        6 => format!("principal.name == {:?}", b.pick(&PEERS)),
        7 => format!("principal in Group::{:?}", b.pick(&GROUPS)),
        8 => format!("principal == Peer::{:?}", b.pick(&PEERS)),
        9 => format!(
            "context.params_json like {:?}",
            b.pick(&["*ro*", "{}", "*"])
        ),
        10 => "resource has key".to_string(),
        11 => b.pick(&["true", "false"]).to_string(),
        12 => format!("!({})", cond(b, depth - 1)),
        13 => format!("({}) && ({})", cond(b, depth - 1), cond(b, depth - 1)),
        14 => format!("({}) || ({})", cond(b, depth - 1), cond(b, depth - 1)),
        15 => format!(
            "if {} then {} else {}",
            cond(b, depth - 1),
            cond(b, depth - 1),
            cond(b, depth - 1)
        ),
        // Outside the native subset: Cedar decides these on both sides.
        16 => format!("[{}, \"x\"].contains(resource.key)", lit(b)),
        _ => format!("context.origin == {:?}", b.pick(&PEERS)),
    }
}

fn statement(b: &mut Bytes) -> String {
    let effect = if b.next().is_multiple_of(3) {
        "forbid"
    } else {
        "permit"
    };
    let principal = match b.next() % 4 {
        0 => "principal".to_string(),
        1 => format!("principal == Peer::{:?}", b.pick(&PEERS)),
        _ => format!("principal in Group::{:?}", b.pick(&GROUPS)),
    };
    let action = match b.next() % 4 {
        0 => "action".to_string(),
        1 => r#"action in [Action::"read", Action::"write"]"#.to_string(),
        _ => format!(
            "action == Action::{:?}",
            b.pick(&["run", "read", "write", "send", "import"])
        ),
    };
    let mut s = format!("{effect} ({principal}, {action}, resource)");
    for _ in 0..b.next() % 3 {
        let kw = if b.next().is_multiple_of(4) {
            "unless"
        } else {
            "when"
        };
        s.push_str(&format!(" {kw} {{ {} }}", cond(b, 2)));
    }
    s.push_str(";\n");
    s
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut text = String::new();
    for _ in 0..1 + b.next() % 5 {
        text.push_str(&statement(&mut b));
    }
    // Statements that touch attributes an action's resource lacks, and the like,
    // fail Cedar's strict validation: such policies are refused at close, so
    // they are never decided.
    let Ok(policy) = Policy::parse(&text) else {
        return;
    };
    let mut groups = String::new();
    for g in GROUPS {
        let members: Vec<&str> = PEERS
            .iter()
            .copied()
            .filter(|_| b.next() % 2 == 0)
            .collect();
        groups.push_str(&format!("{g}: {}\n", members.join(" ")));
    }
    let groups = Groups::parse(&groups).expect("generated groups parse");
    let params = [
        json!({}),
        json!({"mode": "ro"}),
        json!({"mode": "rw", "n": 5}),
        json!({"ro": [1, 2]}),
    ];
    let chain: Vec<String> = vec!["mal".into(), "bob".into()];
    for _ in 0..8 {
        let action = *b.pick(&Action::ALL);
        let caller = *b.pick(&PEERS);
        let object = *b.pick(&KEYS);
        let script = *b.pick(&STRINGS);
        let req = Request {
            caller,
            target: "owner",
            action,
            object: Some(object),
            script,
            params: b.pick(&params),
            now: b.next() as i64 * 10_000_000,
            chain: if b.next() % 2 == 0 { &chain } else { &[] },
        };
        let native = policy.decide(&req, &groups);
        let cedar = policy.decide_via_cedar(&req, &groups);
        let names = |d: &peerfs::policy::Decision| {
            let mut v: Vec<String> = d
                .errors
                .iter()
                .map(|e| {
                    e.split_once(": ")
                        .map_or(e.as_str(), |(n, _)| n)
                        .to_string()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            (
                native.allowed,
                &native.policies,
                &native.limits,
                names(&native)
            ),
            (cedar.allowed, &cedar.policies, &cedar.limits, names(&cedar)),
            "native {} vs cedar {} for {req:?} under\n{text}",
            native.explain(),
            cedar.explain()
        );
    }
});
