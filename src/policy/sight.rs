//! What a reader sees of a peer's declared tables: the owner every row, another
//! peer only the rows the owner's policy lets it select (a table none of whose
//! rows it may select does not show). The mount's `tables/`, the spool's mirror
//! of them and the lattice's answers to a reader of another daemon all read
//! through a [`Sight`], so they show exactly the same rows, rendered the same way.

use std::sync::Arc;

use super::{PolicyGate, PolicyState, RowAsk, RowRule};
use crate::error::{err, Result};
use crate::peer::Peer;
use crate::script::{Access, RowAction};
use crate::tables::rows::Row;
use crate::tables::Schema;

/// Rows a listing, or a `.jsonl` rendered whole (the spool's mirror, a view
/// asked of another daemon), shows at most (beyond: a script pages).
pub const MAX_ROWS: usize = 100_000;

/// A page of a streamed `.jsonl` (the mount's) holds at most this many rows...
pub const PAGE_ROWS: usize = 1_000;
/// ... and at most this many bytes (but always its first row, however long).
pub const PAGE_BYTES: usize = 1 << 20;
/// Rows a page looks at at most: a viewer who may select few rows of a big
/// table gets pages with few (or no) rows, each found in bounded time.
pub const PAGE_SCAN: usize = 10_000;

/// One page of a table as a file shows it, in key order.
#[derive(Debug, Default)]
pub struct Page {
    /// The rows that show, rendered (one JSON object a line).
    pub bytes: Vec<u8>,
    /// The key of the last row looked at (shown or not): the next page starts
    /// after it. `None`: no row was looked at.
    pub last: Option<serde_json::Value>,
    /// No row follows `last`.
    pub done: bool,
}

/// What one reader may see of one peer's tables.
pub enum Sight {
    /// The owner: everything.
    All(Arc<Schema>),
    /// Another peer: per table, as the owner's policy decides.
    Policy(Arc<PolicyState>, String),
}

impl Sight {
    /// What `viewer` sees of `owner` (a peer of this daemon).
    pub fn of(gate: &PolicyGate, owner: &Peer, viewer: &str) -> Result<Sight> {
        if viewer == owner.name {
            return Ok(Sight::All(owner.read(|s| s.schema())?));
        }
        Ok(Sight::Policy(gate.state(owner)?, viewer.to_string()))
    }

    pub fn schema(&self) -> &Schema {
        match self {
            Sight::All(s) => s,
            Sight::Policy(st, _) => &st.tables,
        }
    }

    /// The rule for selecting rows of `table` (`None`: every row shows).
    fn rule(&self, table: &str) -> Option<RowRule> {
        let Sight::Policy(st, viewer) = self else {
            return None;
        };
        let groups = st.groups.groups_of(viewer);
        let params = serde_json::json!({});
        let ask = RowAsk {
            caller: viewer,
            groups: &groups,
            script: "",
            params: &params,
            chain: &[],
        };
        Some(st.policy.row_rule(&ask, RowAction::Select, table))
    }

    /// Whether `table` shows at all.
    pub fn shows(&self, table: &str) -> bool {
        self.schema().table(table).is_some()
            && self.rule(table).is_none_or(|r| r.access != Access::None)
    }

    /// The tables that show, in name order.
    pub fn tables(&self) -> Vec<String> {
        (self.schema().tables.keys())
            .filter(|n| self.shows(n))
            .cloned()
            .collect()
    }

    /// The row of `table` of `owner` whose key's text is `key`, if it shows.
    pub fn row(&self, owner: &Peer, table: &str, key: &str) -> Result<Option<Row>> {
        let Some(t) = self.schema().table(table) else {
            return Ok(None);
        };
        let id = match t.key {
            crate::tables::KeyKind::Int => match key.parse::<i64>() {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => return Ok(None),
            },
            _ => serde_json::Value::String(key.to_string()),
        };
        let row = owner.read(|s| s.row_get(table, &id))?;
        let rule = self.rule(table);
        Ok(row.filter(|r| sees(&rule, self.schema(), r)))
    }

    /// Every row of `table` of `owner` that shows, in key order (at most
    /// [`MAX_ROWS`]).
    pub fn rows(&self, owner: &Peer, table: &str) -> Result<Vec<Row>> {
        self.rows_after(owner, table, None, MAX_ROWS)
    }

    /// At most `limit` rows of `table` that show, in key order, after the row
    /// whose key is `after`.
    pub fn rows_after(
        &self,
        owner: &Peer,
        table: &str,
        after: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        if !self.shows(table) {
            return Err(err!(libc::ENOENT, "no table {table:?}"));
        }
        let rule = self.rule(table);
        let schema = self.schema();
        owner.read(|s| scan(s, schema, table, after, limit, |r| sees(&rule, schema, r)))
    }
}

/// At most `limit` (and [`MAX_ROWS`]) rows of `table` of the store `s`
/// (declaring `schema`) that `keep` keeps, in key order, after the row whose
/// key is `after`.
fn scan(
    s: &mut dyn crate::store::Store,
    schema: &Schema,
    table: &str,
    after: Option<&serde_json::Value>,
    limit: usize,
    keep: impl Fn(&Row) -> bool,
) -> Result<Vec<Row>> {
    let limit = limit.min(MAX_ROWS);
    let t = crate::tables::rows::table(schema, table)?;
    let mut find = crate::tables::query::find(t, &Default::default(), &Default::default())?;
    find.limit = MAX_ROWS;
    let cursor = after.map(|id| {
        let mut r = Row::new();
        r.insert(crate::tables::ID.to_string(), id.clone());
        r
    });
    let mut rows = Vec::new();
    s.row_scan(table, &find, cursor.as_ref(), &mut |r| {
        if keep(&r) {
            rows.push(r);
        }
        rows.len() < limit
    })?;
    Ok(rows)
}

/// Every row of `table` of a store read apart from any peer (a snapshot's),
/// as its owner sees them, rendered as the mount's `tables/<table>.jsonl`
/// shows a live table (at most [`MAX_ROWS`]). `ENOENT`: no such table there.
pub fn render_table(s: &mut dyn crate::store::Store, table: &str) -> Result<Vec<u8>> {
    let schema = s.schema()?;
    if schema.table(table).is_none() {
        return Err(err!(libc::ENOENT, "no table {table:?}"));
    }
    render(&scan(s, &schema, table, None, MAX_ROWS, |_| true)?)
}

impl Sight {
    /// The page of `table` after the row whose key is `after` (keyset: rows
    /// inserted before the cursor are not seen, none is seen twice): at most
    /// [`PAGE_ROWS`] rows and [`PAGE_BYTES`] bytes, looking at most at
    /// [`PAGE_SCAN`] rows, each filtered by this sight's rule.
    pub fn page(
        &self,
        owner: &Peer,
        table: &str,
        after: Option<&serde_json::Value>,
    ) -> Result<Page> {
        if !self.shows(table) {
            return Err(err!(libc::ENOENT, "no table {table:?}"));
        }
        let rule = self.rule(table);
        let schema = self.schema();
        owner.read(|s| {
            let t = crate::tables::rows::table(schema, table)?;
            let find = crate::tables::query::find(t, &Default::default(), &Default::default())?;
            let cursor = after.map(|id| {
                let mut r = Row::new();
                r.insert(crate::tables::ID.to_string(), id.clone());
                r
            });
            let mut page = Page {
                done: true,
                ..Page::default()
            };
            let (mut rows, mut looked, mut failed) = (0, 0, None);
            s.row_scan(table, &find, cursor.as_ref(), &mut |r| {
                let line = match sees(&rule, schema, &r).then(|| render(std::slice::from_ref(&r))) {
                    Some(Err(e)) => {
                        failed = Some(e);
                        return false;
                    }
                    Some(Ok(l)) => Some(l),
                    None => None,
                };
                if let Some(l) = line {
                    if rows > 0 && page.bytes.len() + l.len() > PAGE_BYTES {
                        page.done = false;
                        return false;
                    }
                    page.bytes.extend_from_slice(&l);
                    rows += 1;
                }
                page.last = r.get(crate::tables::ID).cloned();
                looked += 1;
                let more = rows < PAGE_ROWS && looked < PAGE_SCAN;
                page.done = more;
                more
            })?;
            match failed {
                Some(e) => Err(e),
                None => Ok(page),
            }
        })
    }
}

fn sees(rule: &Option<RowRule>, schema: &Schema, row: &Row) -> bool {
    rule.as_ref().is_none_or(|r| r.decide(schema, row).is_ok())
}

/// A row's key as its file name (without `.json`).
pub fn key_text(r: &Row) -> String {
    match r.get(crate::tables::ID) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// Rows as a file shows them: one JSON object a line.
pub fn render(rows: &[Row]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;
    use crate::store::SqliteStore;
    use serde_json::json;

    const SCHEMA: &str = r#"
[tables.notes]
key = "string"
fields.title  = { type = "string" }
fields.pinned = { type = "bool", default = false }

[tables.counts]
key = "int"
fields.n = { type = "int" }
"#;

    fn peer() -> (tempfile::TempDir, Peer) {
        peer_of(25, 1, |i| i % 5 == 0)
    }

    /// alice with `n` notes `n00`, `n01`, ... whose titles are `len` bytes,
    /// `pinned` as it says.
    fn peer_of(n: usize, len: usize, pinned: fn(usize) -> bool) -> (tempfile::TempDir, Peer) {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&d.path().join("alice.sqlite"), true).unwrap();
        s.begin().unwrap();
        s.apply_schema(SCHEMA.as_bytes()).unwrap();
        let schema = s.schema().unwrap();
        let t = schema.table("notes").unwrap();
        let title = "t".repeat(len);
        for i in 0..n {
            let v = json!({"id": format!("n{i:02}"), "title": title, "pinned": pinned(i)});
            let row =
                crate::tables::rows::prepare_insert(&schema, t, "alice", v.as_object().unwrap(), 0)
                    .unwrap();
            s.row_insert("notes", &row).unwrap();
        }
        let c = schema.table("counts").unwrap();
        let row = crate::tables::rows::prepare_insert(
            &schema,
            c,
            "alice",
            json!({"id": 7, "n": 1}).as_object().unwrap(),
            0,
        )
        .unwrap();
        s.row_insert("counts", &row).unwrap();
        let policy = r#"permit(principal == Peer::"bob", action == Action::"select", resource is Table::notes) when { resource.pinned };"#;
        s.set_meta(super::super::PolicyText::Policy.key(), policy.as_bytes())
            .unwrap();
        s.commit().unwrap();
        (d, Peer::new("alice".into(), Box::new(s)))
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter().map(key_text).collect()
    }

    #[test]
    fn a_store_read_apart_renders_its_table_as_the_owner_sees_it() {
        let (d, p) = peer();
        let own = Sight::of(&PolicyGate::new(), &p, "alice").unwrap();
        let mut apart = SqliteStore::open_reader(&d.path().join("alice.sqlite")).unwrap();
        for table in ["notes", "counts"] {
            let want = render(&own.rows(&p, table).unwrap()).unwrap();
            assert_eq!(render_table(&mut apart, table).unwrap(), want, "{table}");
        }
        let notes = render_table(&mut apart, "notes").unwrap();
        assert_eq!(notes.split(|b| *b == b'\n').count(), 26);
        assert_eq!(
            render_table(&mut apart, "nothing").unwrap_err().errno,
            libc::ENOENT
        );
    }

    #[test]
    fn the_owner_sees_every_row_another_peer_what_the_policy_lets_it_select() {
        let (_d, p) = peer();
        let gate = PolicyGate::new();
        let own = Sight::of(&gate, &p, "alice").unwrap();
        assert_eq!(own.tables(), ["counts", "notes"]);
        assert_eq!(own.rows(&p, "notes").unwrap().len(), 25);
        assert_eq!(key_text(&own.row(&p, "counts", "7").unwrap().unwrap()), "7");
        assert!(own.row(&p, "counts", "x").unwrap().is_none());

        let bob = Sight::of(&gate, &p, "bob").unwrap();
        assert_eq!(bob.tables(), ["notes"]);
        assert!(!bob.shows("counts"));
        assert_eq!(
            ids(&bob.rows(&p, "notes").unwrap()),
            ["n00", "n05", "n10", "n15", "n20"]
        );
        assert!(bob.row(&p, "notes", "n01").unwrap().is_none());
        assert!(bob.row(&p, "notes", "n05").unwrap().is_some());
        assert_eq!(bob.rows(&p, "counts").unwrap_err().errno, libc::ENOENT);
        let carol = Sight::of(&gate, &p, "carol").unwrap();
        assert!(carol.tables().is_empty());
    }

    #[test]
    fn rows_come_in_pages_after_a_key() {
        let (_d, p) = peer();
        let gate = PolicyGate::new();
        let bob = Sight::of(&gate, &p, "bob").unwrap();
        let first = bob.rows_after(&p, "notes", None, 2).unwrap();
        assert_eq!(ids(&first), ["n00", "n05"]);
        let next = bob.rows_after(&p, "notes", Some(&json!("n05")), 2).unwrap();
        assert_eq!(ids(&next), ["n10", "n15"]);
        let last = bob.rows_after(&p, "notes", Some(&json!("n15")), 2).unwrap();
        assert_eq!(ids(&last), ["n20"]);
        let text = render(&last).unwrap();
        assert!(text.ends_with(b"\n") && text.iter().filter(|b| **b == b'\n').count() == 1);
    }

    fn lines(p: &Page) -> Vec<String> {
        (String::from_utf8(p.bytes.clone()).unwrap().lines())
            .map(|l| {
                serde_json::from_str::<Row>(l)
                    .map(|r| key_text(&r))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_page_is_filtered_and_ends_after_the_last_row_looked_at() {
        let (_d, p) = peer();
        let gate = PolicyGate::new();
        let bob = Sight::of(&gate, &p, "bob").unwrap();
        let all = bob.page(&p, "notes", None).unwrap();
        assert_eq!(lines(&all), ["n00", "n05", "n10", "n15", "n20"]);
        assert_eq!((all.last, all.done), (Some(json!("n24")), true));
        let rest = bob.page(&p, "notes", Some(&json!("n12"))).unwrap();
        assert_eq!(lines(&rest), ["n15", "n20"]);
        let none = bob.page(&p, "notes", Some(&json!("n24"))).unwrap();
        assert!(none.bytes.is_empty() && none.last.is_none() && none.done);
        assert_eq!(
            bob.page(&p, "counts", None).unwrap_err().errno,
            libc::ENOENT
        );
        let own = Sight::of(&gate, &p, "alice").unwrap();
        assert_eq!(lines(&own.page(&p, "notes", None).unwrap()).len(), 25);
    }

    /// Every page of `notes` as alice sees it: (rows, bytes) of each, checking
    /// that the pages together hold every row once, in key order.
    fn pages(p: &Peer, n: usize) -> Vec<(usize, usize)> {
        let gate = PolicyGate::new();
        let own = Sight::of(&gate, p, "alice").unwrap();
        let (mut after, mut seen, mut sizes) = (None, Vec::new(), Vec::new());
        loop {
            let page = own.page(p, "notes", after.as_ref()).unwrap();
            let ids = lines(&page);
            sizes.push((ids.len(), page.bytes.len()));
            seen.extend(ids);
            if page.done {
                break;
            }
            after = page.last;
        }
        let mut want: Vec<String> = (0..n).map(|i| format!("n{i:02}")).collect();
        want.sort();
        assert_eq!(seen, want);
        sizes
    }

    #[test]
    fn a_page_looks_at_a_bounded_number_of_rows() {
        // bob may select the last 10 rows of 25,000 only.
        let (_d, p) = peer_of(25_000, 1, |i| i >= 24_990);
        let gate = PolicyGate::new();
        let bob = Sight::of(&gate, &p, "bob").unwrap();
        let (mut after, mut seen, mut n) = (None, 0, 0);
        loop {
            let page = bob.page(&p, "notes", after.as_ref()).unwrap();
            n += 1;
            seen += lines(&page).len();
            if n == 1 {
                assert!(page.bytes.is_empty() && !page.done);
            }
            if page.done {
                break;
            }
            after = page.last;
        }
        assert_eq!((seen, n), (10, 3));
    }

    #[test]
    fn a_page_holds_at_most_its_rows_and_bytes() {
        // Short rows: the row bound.
        let (_d, p) = peer_of(2_500, 10, |_| false);
        let sizes = pages(&p, 2_500);
        assert_eq!(
            sizes[..3].iter().map(|s| s.0).collect::<Vec<_>>(),
            [1_000, 1_000, 500]
        );
        // Rows of some 3 KiB: the byte bound.
        let (_d, p) = peer_of(1_000, 3_000, |_| false);
        let sizes = pages(&p, 1_000);
        assert!(sizes.len() >= 3, "{sizes:?}");
        for (rows, bytes) in &sizes {
            assert!(
                *bytes <= PAGE_BYTES && *rows <= PAGE_BYTES / 3_000,
                "{sizes:?}"
            );
        }
        assert!(sizes[0].1 > PAGE_BYTES - 4_000, "{sizes:?}");
        // A row longer than a page is a page of its own.
        let (_d, p) = peer_of(3, PAGE_BYTES + 10, |_| false);
        assert_eq!(
            pages(&p, 3).iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }
}
