//! Declared tables in the policy: the Cedar schema generated from schema.toml,
//! policies validated against it, how far a caller may act on a table, rows
//! decided one by one, and the static check of `db.<table>.<op>`.

use serde_json::json;

use crate::policy::{schema_text, Policy, RowAsk};
use crate::script::{Access, RowAction};
use crate::tables::parse::parse;

const TABLES: &str = r#"
[tables.notes]
owner = true
fields.title   = { type = "string", max = 200 }
fields.tag     = { type = "string?", index = true }
fields.pinned  = { type = "bool", default = false }
fields.rating  = { type = "int?", min = 1, max = 5 }
fields.labels  = { type = "list<string>", max = 20, default = [] }
fields.created = { type = "datetime", default = "now" }
fields.extra   = { type = "map?" }

[tables.comments]
owner = true
fields.note = { type = "ref<notes>", on_delete = "cascade", index = true }
fields.text = { type = "string", max = 2000 }
"#;

/// The issue's example policy.
const POLICY: &str = r#"permit(principal in Group::"friends", action == Action::"run", resource);
permit(principal in Group::"friends", action == Action::"select", resource is Table::notes)
  when { resource.pinned || resource.owner == principal };
permit(principal, action == Action::"insert", resource is Table::comments);
permit(principal, action in [Action::"update", Action::"delete"], resource is Table::comments)
  when { resource.owner == principal };
"#;

#[test]
fn the_cedar_schema_has_a_type_per_table_with_its_fields() {
    let s = schema_text(&parse(TABLES).unwrap());
    assert!(s.contains("namespace Table {"), "{s}");
    assert!(s.contains("entity notes = { \"table\": String, \"id\": String, \"owner\": Peer, \"created\": Long, \"labels\": Set<String>, \"pinned\": Bool, \"rating\"?: Long, \"tag\"?: String, \"title\": String };"), "{s}");
    assert!(!s.contains("extra"), "maps are not shown: {s}");
    assert!(
        s.contains("resource: [Table::comments, Table::notes]"),
        "{s}"
    );
    assert_eq!(schema_text(&parse("").unwrap()), crate::policy::SCHEMA);
}

#[test]
fn policies_are_validated_against_the_declared_tables() {
    let t = parse(TABLES).unwrap();
    Policy::parse_for(POLICY, &t).unwrap();
    // Without the tables, the same text is refused.
    assert!(Policy::parse(POLICY).is_err());
    let typo = POLICY.replace("resource.pinned ||", "resource.pinnned ||");
    let e = Policy::parse_for(&typo, &t).unwrap_err().message;
    assert!(e.starts_with("3:") && e.contains("pinnned"), "{e}");
    let e = Policy::parse_for(
        "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource.rating == \"high\" };",
        &t,
    )
    .unwrap_err()
    .message;
    assert!(e.starts_with("1:"), "{e}");
    let e = Policy::parse_for(
        "permit(principal, action == Action::\"select\", resource is Table::note);",
        &t,
    )
    .unwrap_err()
    .message;
    assert!(e.contains("Table::note"), "{e}");
    // A nullable field needs `has`.
    let e = Policy::parse_for(
        "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource.tag == \"x\" };",
        &t,
    )
    .unwrap_err()
    .message;
    assert!(e.contains("tag"), "{e}");
    Policy::parse_for(
        "permit(principal, action == Action::\"select\", resource is Table::notes) when { resource has tag && resource.tag == \"x\" && resource.created < context.now && resource.labels.contains(\"a\") };",
        &t,
    )
    .unwrap();
}

fn ask<'a>(caller: &'a str, groups: &'a [String], params: &'a serde_json::Value) -> RowAsk<'a> {
    RowAsk {
        caller,
        groups,
        script: "s.rhai",
        params,
        chain: &[],
    }
}

#[test]
fn access_and_rows_are_decided_by_the_policy() {
    let t = parse(TABLES).unwrap();
    let p = Policy::parse_for(POLICY, &t).unwrap();
    let friends = vec!["friends".to_string()];
    let params = json!({});
    let bob = ask("bob", &friends, &params);
    let stranger = ask("eve", &[], &params);
    let notes_select = p.row_rule(&bob, RowAction::Select, "notes");
    assert_eq!(notes_select.access, Access::PerRow);
    assert_eq!(
        p.row_rule(&stranger, RowAction::Select, "notes").access,
        Access::None
    );
    assert_eq!(
        p.row_rule(&bob, RowAction::Insert, "comments").access,
        Access::All
    );
    assert_eq!(
        p.row_rule(&bob, RowAction::Insert, "notes").access,
        Access::None
    );
    let row = |pinned: bool, owner: &str| {
        json!({"id": "01J", "owner": owner, "title": "t", "pinned": pinned, "labels": [],
               "created": "2026-01-01T00:00:00Z", "tag": null, "rating": null, "extra": {"a": 1}})
        .as_object()
        .unwrap()
        .clone()
    };
    assert!(notes_select.decide(&t, &row(true, "alice")).is_ok());
    assert!(notes_select.decide(&t, &row(false, "bob")).is_ok());
    let e = notes_select.decide(&t, &row(false, "alice")).unwrap_err();
    assert!(e.contains("select on table notes"), "{e}");
    // A forbid makes every row a question.
    let p = Policy::parse_for(
        &format!("{POLICY}forbid(principal, action == Action::\"insert\", resource is Table::comments) when {{ resource.text like \"*spam*\" }};\n"),
        &t,
    )
    .unwrap();
    let rule = p.row_rule(&bob, RowAction::Insert, "comments");
    assert_eq!(rule.access, Access::PerRow);
    let c = |text: &str| {
        json!({"id": "01K", "owner": "bob", "note": "01J", "text": text})
            .as_object()
            .unwrap()
            .clone()
    };
    assert!(rule.decide(&t, &c("hello")).is_ok());
    assert!(rule.decide(&t, &c("buy spam")).is_err());
}

#[test]
fn the_static_check_sees_db_calls() {
    let e = rhai::Engine::new();
    let ast = e
        .compile(r#"let id = db.notes.insert(#{}); db.notes.get(id); db.comments.delete(1); db.notes.find(#{})"#)
        .unwrap();
    let used = crate::policy::calls::row_calls_used(&ast);
    assert_eq!(
        used,
        [
            (RowAction::Insert, "notes".to_string()),
            (RowAction::Select, "notes".to_string()),
            (RowAction::Delete, "comments".to_string()),
        ]
    );
}

#[test]
fn rows_decided_natively_match_cedar() {
    let t = parse(TABLES).unwrap();
    let friends = vec!["friends".to_string()];
    let params = json!({"mode": "ro"});
    let bob = ask("bob", &friends, &params);
    let conditions = [
        (
            "when { resource.pinned || resource.owner == principal }",
            true,
        ),
        (
            "when { resource has tag && resource.tag like \"h*\" }",
            true,
        ),
        ("when { resource has rating && resource.rating >= 3 }", true),
        ("unless { resource.title == \"secret\" }", true),
        ("when { resource.owner in Group::\"friends\" }", true),
        (
            "when { resource.created < context.now && resource.table == \"notes\" }",
            true,
        ),
        (
            "when { resource == Table::notes::\"n1\" || resource.id == \"n2\" }",
            true,
        ),
        ("when { resource.owner.name == \"bob\" }", true),
        (
            "when { context.params.hasTag(\"mode\") && resource.pinned }",
            true,
        ),
        ("when { resource.labels.contains(\"a\") }", false),
    ];
    let owners = ["alice", "bob", "carol"];
    let tags = [json!(null), json!("home"), json!("work")];
    let mut rows = Vec::new();
    for i in 0..54 {
        let mut r = json!({
            "id": format!("n{}", i % 4), "owner": owners[i % 3], "title": if i % 5 == 0 { "secret" } else { "t" },
            "pinned": i % 2 == 0, "labels": if i % 3 == 0 { json!(["a"]) } else { json!([]) },
            "created": if i % 4 == 0 { "2099-01-01T00:00:00Z" } else { "2020-01-01T00:00:00Z" },
            "tag": tags[i % 3].clone(), "rating": if i % 6 == 0 { json!(null) } else { json!(i % 6) },
        });
        r.as_object_mut()
            .unwrap()
            .retain(|_, v| !v.is_null() || i % 7 != 0);
        rows.push(r.as_object().unwrap().clone());
    }
    for (cond, native) in conditions {
        for forbid in [false, true] {
            let mut text = format!("permit(principal, action == Action::\"select\", resource is Table::notes) {cond};\n");
            if forbid {
                text.push_str("forbid(principal, action == Action::\"select\", resource is Table::notes) when { resource.pinned };\n");
            }
            let p = Policy::parse_for(&text, &t).unwrap_or_else(|e| panic!("{text}: {e}"));
            let rule = p.row_rule(&bob, RowAction::Select, "notes");
            assert_eq!(rule.is_native(), native, "{text}");
            for row in &rows {
                let n = rule.decide(&t, row).is_ok();
                let c = rule.decide_via_cedar(&t, row).unwrap();
                assert_eq!(n, c, "{text} on {row:?}");
            }
        }
    }
}
