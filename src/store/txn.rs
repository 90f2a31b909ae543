//! Transactions at the store's seam as guards, as rusqlite's `Transaction` and
//! `Savepoint` are: a [`Txn`] that is dropped without [`Txn::commit`] rolls back,
//! a [`Savepoint`] dropped without [`Savepoint::release`] rolls back to where it
//! began. Callers no longer write their own cleanup on each error path: an early
//! return (`?`) leaves the store as it was.

use std::ops::{Deref, DerefMut};

use super::Store;
use crate::error::Result;

/// An open transaction on a store; rolled back on drop unless committed.
pub struct Txn<'a> {
    st: &'a mut dyn Store,
    open: bool,
}

impl<'a> Txn<'a> {
    /// Begins a transaction whose commit is fsynced ([`Store::begin`]), or only
    /// atomic (`synced` false: [`Store::begin_unsynced`]).
    pub fn begin(st: &'a mut dyn Store, synced: bool) -> Result<Txn<'a>> {
        if synced {
            st.begin()?;
        } else {
            st.begin_unsynced()?;
        }
        Ok(Txn { st, open: true })
    }

    /// Commits. A failed commit has rolled back (the store does so itself).
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.st.commit()
    }

    /// Rolls back now, reporting a failure (a drop only logs it).
    pub fn rollback(mut self) -> Result<()> {
        self.open = false;
        self.st.rollback()
    }

    /// A savepoint inside this transaction.
    pub fn savepoint(&mut self) -> Result<Savepoint<'_>> {
        self.st.savepoint()?;
        Ok(Savepoint {
            st: &mut *self.st,
            open: true,
        })
    }
}

impl<'a> Deref for Txn<'a> {
    type Target = dyn Store + 'a;
    fn deref(&self) -> &Self::Target {
        &*self.st
    }
}

impl DerefMut for Txn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.st
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.st.rollback() {
                tracing::warn!(error = %e, "rolling back a dropped transaction failed");
            }
        }
    }
}

/// A savepoint inside a [`Txn`]; rolled back to on drop unless released.
pub struct Savepoint<'a> {
    st: &'a mut dyn Store,
    open: bool,
}

impl<'a> Savepoint<'a> {
    /// Keeps what was done since the savepoint (in the transaction).
    pub fn release(mut self) -> Result<()> {
        self.open = false;
        self.st.release()
    }

    /// Undoes what was done since the savepoint now, reporting a failure.
    pub fn rollback(mut self) -> Result<()> {
        self.open = false;
        self.st.rollback_to()
    }
}

impl<'a> Deref for Savepoint<'a> {
    type Target = dyn Store + 'a;
    fn deref(&self) -> &Self::Target {
        &*self.st
    }
}

impl DerefMut for Savepoint<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.st
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.st.rollback_to() {
                tracing::warn!(error = %e, "rolling back a dropped savepoint failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::StateKeys;
    use serde_json::json;

    fn store(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(&dir.join("p.sqlite"), true).unwrap()
    }

    #[test]
    fn a_dropped_transaction_rolls_back_and_a_committed_one_stays() {
        let d = tempfile::tempdir().unwrap();
        let mut st = store(d.path());
        {
            let mut t = Txn::begin(&mut st, true).unwrap();
            t.set("a", &json!(1)).unwrap();
            // An early return: the guard goes out of scope uncommitted.
        }
        assert_eq!(st.get("a").unwrap(), None);
        let mut t = Txn::begin(&mut st, false).unwrap();
        t.set("a", &json!(2)).unwrap();
        t.commit().unwrap();
        assert_eq!(st.get("a").unwrap(), Some(json!(2)));
        // The store takes a new transaction after each (none was left open).
        let mut t = Txn::begin(&mut st, true).unwrap();
        t.set("b", &json!(3)).unwrap();
        t.rollback().unwrap();
        assert_eq!(st.get("b").unwrap(), None);
    }

    #[test]
    fn a_dropped_savepoint_undoes_only_its_own_changes() {
        let d = tempfile::tempdir().unwrap();
        let mut st = store(d.path());
        let mut t = Txn::begin(&mut st, true).unwrap();
        t.set("kept", &json!(1)).unwrap();
        {
            let mut sp = t.savepoint().unwrap();
            sp.set("dropped", &json!(2)).unwrap();
        }
        let mut sp = t.savepoint().unwrap();
        sp.set("released", &json!(3)).unwrap();
        sp.release().unwrap();
        let mut sp = t.savepoint().unwrap();
        sp.set("rolled", &json!(4)).unwrap();
        sp.rollback().unwrap();
        t.commit().unwrap();
        assert_eq!(st.get("kept").unwrap(), Some(json!(1)));
        assert_eq!(st.get("dropped").unwrap(), None);
        assert_eq!(st.get("released").unwrap(), Some(json!(3)));
        assert_eq!(st.get("rolled").unwrap(), None);
    }
}
