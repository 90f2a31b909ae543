//! The schema parser, the value checks, the differ and the SQL, on their own.

use serde_json::json;

use super::diff::{diff, Change};
use super::parse::parse;
use super::query::{find, prefix_end, Op};
use super::value::{check, key_sql, to_sql};
use super::*;

/// The contract's example schema (docs/guide.md; also a seed of the schema
/// parser's fuzz corpus).
pub(crate) const NOTES: &str = include_str!("../../fuzz/corpus/schema_parse/issue_example");

fn err_of(text: &str) -> String {
    parse(text).unwrap_err().message
}

#[test]
fn the_example_parses_into_its_tables_and_fields() {
    let s = parse(NOTES).unwrap();
    assert_eq!(s.tables.len(), 2);
    let n = s.table("notes").unwrap();
    assert_eq!((n.key, n.owner), (KeyKind::Ulid, true));
    let tag = n.field("tag").unwrap();
    assert_eq!(
        (tag.ty.clone(), tag.nullable, tag.index),
        (Type::String, true, true)
    );
    let labels = n.field("labels").unwrap();
    assert_eq!(labels.ty, Type::List(Box::new(Type::String)));
    assert_eq!(labels.max, Some(Bound::Int(20)));
    assert_eq!(labels.default, Some(FieldDefault::Value(json!([]))));
    assert_eq!(n.field("created").unwrap().default, Some(FieldDefault::Now));
    assert_eq!(n.indexes["by_tag_created"], ["tag", "created"]);
    let c = s.table("comments").unwrap();
    assert_eq!(c.key, KeyKind::Ulid);
    let note = c.field("note").unwrap();
    assert_eq!(
        (note.ty.ref_target(), note.on_delete),
        (Some("notes"), OnDelete::Cascade)
    );
    assert_eq!(parse("").unwrap(), Schema::default());
    assert_eq!(parse("# nothing yet\n").unwrap(), Schema::default());
}

#[test]
fn errors_name_the_table_and_field_and_the_fix() {
    let e = err_of("[tables.notes]\nfields.title = { type = \"strng\" }\n");
    assert!(
        e.contains("notes.title") && e.contains("\"strng\" is not a type"),
        "{e}"
    );
    let e = err_of("[tables.notes]\nfields.title = { type = \"string\", maxx = 3 }\n");
    assert!(e.contains("line 2") && e.contains("maxx"), "{e}");
    let e = err_of("[tables.Notes]\n");
    assert!(e.contains("table name \"Notes\""), "{e}");
    let e = err_of("[tables.a__b]\n");
    assert!(e.contains("a__b"), "{e}");
    let e = err_of("[tables.notes]\nfields.id = { type = \"string\" }\n");
    assert!(
        e.contains("notes.id") && e.contains("every table has"),
        "{e}"
    );
    let e = err_of("[tables.c]\nfields.n = { type = \"ref<notes>\" }\n");
    assert!(
        e.contains("c.n") && e.contains("ref<notes> names no declared table"),
        "{e}"
    );
    let e = err_of("[tables.n]\nfields.r = { type = \"int\", min = 5, max = 1 }\n");
    assert!(e.contains("n.r: min 5 is above max 1"), "{e}");
    let e = err_of("[tables.n]\nfields.b = { type = \"bool\", max = 1 }\n");
    assert!(e.contains("n.b: max does not apply to a bool"), "{e}");
    let e = err_of("[tables.n]\nfields.s = { type = \"string\", max = -1 }\n");
    assert!(e.contains("n.s: max must be a length"), "{e}");
    let e = err_of("[tables.n]\nfields.r = { type = \"int\", default = \"x\" }\n");
    assert!(
        e.contains("n.r: default: expected int, got string \"x\""),
        "{e}"
    );
    let e = err_of("[tables.n]\nfields.r = { type = \"int\", max = 5, default = 9 }\n");
    assert!(e.contains("expected int of at most 5, got int 9"), "{e}");
    let e = err_of("[tables.n]\nfields.t = { type = \"string\", on_delete = \"cascade\" }\n");
    assert!(e.contains("n.t: on_delete applies to ref"), "{e}");
    let e = err_of(
        "[tables.n]\n[tables.m]\nfields.r = { type = \"ref<n>\", on_delete = \"set_null\" }\n",
    );
    assert!(e.contains("m.r") && e.contains("ref<n>?"), "{e}");
    let e = err_of("[tables.n]\nfields.l = { type = \"list<int>\", index = true }\n");
    assert!(e.contains("n.l: a list<int> cannot be indexed"), "{e}");
    let e = err_of("[tables.n]\nindexes.by_x = [\"x\"]\n");
    assert!(e.contains("index by_x: no column \"x\""), "{e}");
    let e = err_of("[tables.n]\nkey = \"uuid\"\n");
    assert!(e.contains("table n: key \"uuid\""), "{e}");
    let e = err_of("[tables.n]\n[confirm]\ndrop = [\"a.b.c\"]\n");
    assert!(e.contains("a.b.c"), "{e}");
    let e = err_of("[tables.n]\nrenamed_from = \"m\"\n[tables.m]\n");
    assert!(e.contains("renamed_from \"m\""), "{e}");
}

#[test]
fn types_parse_with_their_nullability() {
    use super::parse::parse_type;
    assert_eq!(parse_type("int?"), Some((Type::Int, true)));
    assert_eq!(
        parse_type("list<datetime>"),
        Some((Type::List(Box::new(Type::Datetime)), false))
    );
    assert_eq!(
        parse_type("ref<notes>?"),
        Some((Type::Ref("notes".into()), true))
    );
    for bad in [
        "list<list<int>>",
        "list<ref<a>>",
        "ref<Bad>",
        "int??",
        "list<>",
        "text",
    ] {
        assert_eq!(parse_type(bad), None, "{bad}");
    }
}

#[test]
fn values_are_checked_against_type_nullability_and_bounds() {
    let s = parse(NOTES).unwrap();
    let n = s.table("notes").unwrap();
    let f = |name: &str| n.field(name).unwrap();
    assert!(check(f("title"), &json!("Groceries")).is_ok());
    let e = check(f("title"), &json!(5)).unwrap_err().message;
    assert_eq!(e, "expected string of at most 200 characters, got int 5");
    assert!(check(f("title"), &json!("x".repeat(201))).is_err());
    assert!(check(f("title"), &json!(null)).is_err());
    assert!(check(f("tag"), &json!(null)).is_ok());
    assert!(check(f("rating"), &json!(5)).is_ok());
    assert!(check(f("rating"), &json!(6)).is_err());
    assert!(check(f("rating"), &json!(2.5)).is_err());
    assert!(check(f("labels"), &json!(["a", "b"])).is_ok());
    assert!(check(f("labels"), &json!(["a", 1])).is_err());
    assert!(check(f("labels"), &json!(vec!["x"; 21])).is_err());
    assert!(check(f("created"), &json!("2026-11-26T11:00:00Z")).is_ok());
    let e = check(f("created"), &json!("yesterday"))
        .unwrap_err()
        .message;
    assert!(
        e.contains("RFC 3339") && e.contains("got string \"yesterday\""),
        "{e}"
    );
    assert!(check(f("pinned"), &json!(1)).is_err());
    assert_eq!(
        to_sql(f("created"), &json!("1970-01-01T00:00:01Z")).unwrap(),
        rusqlite::types::Value::Integer(1_000_000_000)
    );
    assert_eq!(
        value::from_sql(
            &Type::Datetime,
            rusqlite::types::ValueRef::Integer(1_500_000_000)
        ),
        json!("1970-01-01T00:00:01.5Z")
    );
    assert!(key_sql(n, &json!("not a ulid")).is_err());
    assert!(key_sql(n, &json!(crate::util::new_id())).is_ok());
}

#[test]
fn the_sql_is_strict_with_real_columns_indexes_and_foreign_keys() {
    let s = parse(NOTES).unwrap();
    let n = s.table("notes").unwrap();
    let ddl = sql::create_table(&s, n, "t_notes");
    assert!(
        ddl.starts_with(
            "CREATE TABLE \"t_notes\" (\"id\" TEXT PRIMARY KEY NOT NULL, \"owner\" TEXT NOT NULL"
        ),
        "{ddl}"
    );
    assert!(
        ddl.contains("\"rating\" INTEGER,")
            && ddl.contains("\"title\" TEXT NOT NULL")
            && ddl.ends_with(") STRICT"),
        "{ddl}"
    );
    let c = s.table("comments").unwrap();
    let ddl = sql::create_table(&s, c, "t_comments");
    assert!(
        ddl.contains("\"note\" TEXT NOT NULL REFERENCES \"t_notes\"(\"id\") ON DELETE CASCADE"),
        "{ddl}"
    );
    let names: Vec<String> = sql::indexes(n).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["t_notes__f_tag", "t_notes__i_by_tag_created"]);
    // Real SQLite takes every statement.
    let db = rusqlite::Connection::open_in_memory().unwrap();
    for t in s.tables.values() {
        db.execute_batch(&sql::create_table(&s, t, &t.sql_name()))
            .unwrap();
        for (_, i) in sql::indexes(t) {
            db.execute_batch(&i).unwrap();
        }
    }
}

#[test]
fn finds_check_columns_values_and_options() {
    let s = parse(NOTES).unwrap();
    let n = s.table("notes").unwrap();
    let m = |v: serde_json::Value| v.as_object().unwrap().clone();
    let f = find(
        n,
        &m(json!({"tag": "home", "rating": {"gte": 3, "lt": 5}})),
        &m(json!({"order": "-created", "limit": 20})),
    )
    .unwrap();
    assert_eq!(f.filters.len(), 3);
    assert_eq!(
        (f.order.col.as_str(), f.order.desc, f.limit),
        ("created", true, 20)
    );
    let f = find(
        n,
        &m(json!({"tag": {"in": ["a", "b"]}, "title": {"prefix": "Gro"}})),
        &m(json!({})),
    )
    .unwrap();
    assert_eq!(f.filters[0].op, Op::In);
    assert_eq!(f.limit, query::DEFAULT_LIMIT);
    let e = find(n, &m(json!({"titel": "x"})), &m(json!({})))
        .unwrap_err()
        .message;
    assert!(e.contains("no field \"titel\""), "{e}");
    let e = find(n, &m(json!({"rating": "high"})), &m(json!({})))
        .unwrap_err()
        .message;
    assert!(
        e.contains("table notes, field rating: expected int, got string \"high\""),
        "{e}"
    );
    let e = find(n, &m(json!({"rating": {"like": 1}})), &m(json!({})))
        .unwrap_err()
        .message;
    assert!(e.contains("\"like\" is not a filter"), "{e}");
    let e = find(n, &m(json!({"labels": ["a"]})), &m(json!({})))
        .unwrap_err()
        .message;
    assert!(e.contains("cannot be filtered"), "{e}");
    assert!(find(n, &m(json!({})), &m(json!({"limit": 100000}))).is_err());
    assert!(find(n, &m(json!({})), &m(json!({"order": "-labels"}))).is_err());
    assert!(find(n, &m(json!({})), &m(json!({"sort": "x"}))).is_err());
    assert_eq!(prefix_end("ab"), Some("ac".into()));
    assert_eq!(prefix_end(""), None);
    assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".into()));
}

fn changes(old: &str, new: &str) -> Vec<Change> {
    diff(&parse(old).unwrap(), &parse(new).unwrap()).changes
}

#[test]
fn additive_changes_need_nothing() {
    let base = "[tables.n]\nfields.a = { type = \"int\" }\n";
    assert!(changes(base, base).is_empty());
    assert_eq!(
        changes(
            base,
            &format!("{base}fields.b = {{ type = \"string?\" }}\n")
        ),
        [Change::AddField {
            table: "n".into(),
            field: "b".into()
        }]
    );
    assert_eq!(
        changes(base, &format!("{base}[tables.m]\n")),
        [Change::CreateTable { table: "m".into() }]
    );
    assert_eq!(
        changes(
            base,
            "[tables.n]\nfields.a = { type = \"int\", index = true }\n"
        ),
        [Change::Indexes { table: "n".into() }]
    );
    // Looser: nullable, bounds removed, int to float.
    let looser = changes(
        "[tables.n]\nfields.a = { type = \"int\", max = 3 }\n",
        "[tables.n]\nfields.a = { type = \"float?\" }\n",
    );
    assert!(
        matches!(
            &looser[..],
            [Change::ChangeField {
                tighter: false,
                lossy: false,
                ..
            }]
        ),
        "{looser:?}"
    );
}

#[test]
fn tightenings_are_marked_for_a_check_of_the_rows() {
    for (from, to) in [("int?", "int"), ("int", "int\", min = \"0")] {
        let c = changes(
            &format!("[tables.n]\nfields.a = {{ type = \"{from}\" }}\n"),
            &format!("[tables.n]\nfields.a = {{ type = \"{to}\" }}\n")
                .replace("min = \"0\"", "min = 0"),
        );
        assert!(
            matches!(
                &c[..],
                [Change::ChangeField {
                    tighter: true,
                    lossy: false,
                    ..
                }]
            ),
            "{from} -> {to}: {c:?}"
        );
    }
    let c = changes(
        "[tables.n]\nfields.s = { type = \"string\", max = 10 }\n",
        "[tables.n]\nfields.s = { type = \"string\", max = 5, unique = true }\n",
    );
    assert!(
        matches!(&c[0], Change::ChangeField { tighter: true, .. }),
        "{c:?}"
    );
}

#[test]
fn drops_and_lossy_changes_need_consent() {
    let base = "[tables.n]\nfields.a = { type = \"int\" }\nfields.b = { type = \"int\" }\n";
    assert_eq!(
        changes(base, "[tables.n]\nfields.a = { type = \"int\" }\n"),
        [Change::DropField {
            table: "n".into(),
            field: "b".into(),
            confirmed: false
        }]
    );
    assert_eq!(
        changes(
            base,
            "[tables.n]\nfields.a = { type = \"int\" }\n[confirm]\ndrop = [\"n.b\"]\n"
        ),
        [Change::DropField {
            table: "n".into(),
            field: "b".into(),
            confirmed: true
        }]
    );
    assert_eq!(
        changes(base, ""),
        [Change::DropTable {
            table: "n".into(),
            confirmed: false
        }]
    );
    assert_eq!(
        changes(base, "[confirm]\ndrop = [\"n\"]\n"),
        [Change::DropTable {
            table: "n".into(),
            confirmed: true
        }]
    );
    let c = changes(
        base,
        "[tables.n]\nfields.a = { type = \"string\" }\nfields.b = { type = \"int\" }\n",
    );
    assert!(
        matches!(
            &c[..],
            [Change::ChangeField {
                lossy: true,
                confirmed: false,
                ..
            }]
        ),
        "{c:?}"
    );
}

#[test]
fn renames_keep_data_under_the_new_name() {
    let base = "[tables.n]\nfields.a = { type = \"int\" }\n";
    assert_eq!(
        changes(
            base,
            "[tables.m]\nrenamed_from = \"n\"\nfields.a = { type = \"int\" }\n"
        ),
        [Change::RenameTable {
            from: "n".into(),
            to: "m".into()
        }]
    );
    assert_eq!(
        changes(
            base,
            "[tables.n]\nfields.b = { type = \"int\", renamed_from = \"a\" }\n"
        ),
        [Change::RenameField {
            table: "n".into(),
            from: "a".into(),
            to: "b".into()
        }]
    );
    // A rename whose old name is already gone is an addition.
    assert_eq!(
        changes(base, "[tables.n]\nfields.a = { type = \"int\" }\nfields.c = { type = \"int?\", renamed_from = \"z\" }\n"),
        [Change::AddField { table: "n".into(), field: "c".into() }]
    );
}

#[test]
fn a_changed_key_or_owner_is_flagged() {
    let c = changes("[tables.n]\n", "[tables.n]\nkey = \"int\"\n");
    assert_eq!(c, [Change::Rekey { table: "n".into() }]);
}
