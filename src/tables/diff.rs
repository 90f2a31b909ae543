//! What changes from one schema to the next, and what each change needs:
//! nothing (additive or looser), rows that meet it (a tightening), or the
//! owner's consent in `[confirm] drop` when data would be lost (a table or field
//! dropped, a lossy type change). The store applies the [`Plan`] and decides the
//! parts that depend on the rows it holds.

use super::{Bound, Field, Schema, Table, Type};

/// One change of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A table that did not exist.
    CreateTable { table: String },
    /// A table no longer declared: its rows are lost unless `confirmed`.
    DropTable { table: String, confirmed: bool },
    /// `renamed_from`: the table keeps its rows under its new name.
    RenameTable { from: String, to: String },
    /// A new field: rows get its default (or null); a required field without a
    /// default fails on a table with rows.
    AddField { table: String, field: String },
    /// A field no longer declared: its values are lost unless `confirmed`.
    DropField {
        table: String,
        field: String,
        confirmed: bool,
    },
    /// `renamed_from` on a field.
    RenameField {
        table: String,
        from: String,
        to: String,
    },
    /// A field whose definition changed. `tighter`: some values valid before may
    /// not be now (rows are checked). `lossy`: the type changed so values do not
    /// carry over; the field's data is dropped if `confirmed`, else refused.
    ChangeField {
        table: String,
        field: String,
        tighter: bool,
        lossy: bool,
        confirmed: bool,
    },
    /// The table's key kind or owner column changed: not supported in place.
    Rekey { table: String },
    /// The set of indexes (declared, per field, unique) changed.
    Indexes { table: String },
}

/// Every change from `old` to `new`, tables in name order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether `table` (its new name) must be rebuilt: a field was added,
    /// dropped, renamed or changed.
    pub fn rebuilds(&self, table: &str) -> bool {
        self.changes.iter().any(|c| match c {
            Change::AddField { table: t, .. }
            | Change::DropField { table: t, .. }
            | Change::RenameField { table: t, .. }
            | Change::ChangeField { table: t, .. } => t == table,
            _ => false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The old table that `t` continues, if any: the one named in `renamed_from`
/// (when it existed), else the one of the same name.
pub fn predecessor<'a>(old: &'a Schema, t: &Table) -> Option<&'a Table> {
    t.renamed_from
        .as_deref()
        .and_then(|o| old.table(o))
        .or_else(|| old.table(&t.name))
}

/// The plan from `old` to `new`.
pub fn diff(old: &Schema, new: &Schema) -> Plan {
    let mut changes = Vec::new();
    let mut continued = std::collections::BTreeSet::new();
    for t in new.tables.values() {
        let Some(o) = predecessor(old, t) else {
            changes.push(Change::CreateTable {
                table: t.name.clone(),
            });
            continue;
        };
        continued.insert(o.name.clone());
        if o.name != t.name {
            changes.push(Change::RenameTable {
                from: o.name.clone(),
                to: t.name.clone(),
            });
        }
        table_changes(new, o, t, &mut changes);
    }
    for o in old.tables.values() {
        if !continued.contains(&o.name) {
            changes.push(Change::DropTable {
                table: o.name.clone(),
                confirmed: new.confirms(&o.name),
            });
        }
    }
    Plan { changes }
}

fn table_changes(new: &Schema, o: &Table, t: &Table, out: &mut Vec<Change>) {
    let name = &t.name;
    if o.key != t.key || o.owner != t.owner {
        out.push(Change::Rekey {
            table: name.clone(),
        });
    }
    let mut kept = std::collections::BTreeSet::new();
    for f in t.fields.values() {
        let prev = f
            .renamed_from
            .as_deref()
            .and_then(|r| o.fields.get(r))
            .or_else(|| o.fields.get(&f.name));
        let Some(p) = prev else {
            out.push(Change::AddField {
                table: name.clone(),
                field: f.name.clone(),
            });
            continue;
        };
        kept.insert(p.name.clone());
        if p.name != f.name {
            out.push(Change::RenameField {
                table: name.clone(),
                from: p.name.clone(),
                to: f.name.clone(),
            });
        }
        let lossy = lossy(&p.ty, &f.ty);
        let tighter = !lossy && tighter(p, f);
        if lossy || tighter || definition(p) != definition(f) {
            out.push(Change::ChangeField {
                table: name.clone(),
                field: f.name.clone(),
                tighter,
                lossy,
                confirmed: new.confirms(&format!("{name}.{}", f.name)),
            });
        }
    }
    for p in o.fields.values() {
        if !kept.contains(&p.name) {
            out.push(Change::DropField {
                table: name.clone(),
                field: p.name.clone(),
                confirmed: new.confirms(&format!("{name}.{}", p.name)),
            });
        }
    }
    if index_set(o) != index_set(t) {
        out.push(Change::Indexes {
            table: name.clone(),
        });
    }
}

/// What a field's column holds and how it is checked (name and indexes aside).
fn definition(f: &Field) -> (String, bool, Option<String>, Option<String>, String, String) {
    (
        f.ty.to_string(),
        f.nullable,
        f.min.map(|b| b.to_string()),
        f.max.map(|b| b.to_string()),
        format!("{:?}", f.default),
        f.on_delete.as_str().to_string(),
    )
}

fn index_set(t: &Table) -> Vec<String> {
    let mut s: Vec<String> = super::sql::indexes(t)
        .into_iter()
        .map(|(_, sql)| sql)
        .collect();
    s.sort();
    s
}

/// Whether values of `from` do not carry over to `to`: the base type changed,
/// except int to float (each int is a float) and a ref retargeted (checked as
/// a tightening: every value must name a row of the new table).
pub fn lossy(from: &Type, to: &Type) -> bool {
    match (from, to) {
        (a, b) if a == b => false,
        (Type::Int, Type::Float) => false,
        (Type::Ref(_), Type::Ref(_)) => false,
        _ => true,
    }
}

/// Whether some value valid for `p` may not be valid for `f` (same base type,
/// or int to float, or a ref retargeted).
pub fn tighter(p: &Field, f: &Field) -> bool {
    let lower = |b: Option<Bound>| b.map(Bound::as_f64);
    let min_tighter = match (lower(p.min), lower(f.min)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => b > a,
    };
    let max_tighter = match (lower(p.max), lower(f.max)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => b < a,
    };
    let retarget = matches!((&p.ty, &f.ty), (Type::Ref(a), Type::Ref(b)) if a != b);
    (p.nullable && !f.nullable) || min_tighter || max_tighter || (!p.unique && f.unique) || retarget
}
