//! `peerfs peer restore NAME --to TIME|RUN`: a peer whose daemon is stopped
//! returned to a point of its history, in one transaction, as one entry of its
//! history (undoable like a `restore_to` of its own scripts), with the line in
//! its `log` that says what it undid.

use std::path::Path;

use crate::error::{err, Result};
use crate::store::history::{EntryHead, Point};
use crate::store::prelude::*;
use crate::store::SqliteStore;

/// Returns the peer `owner` whose store is `path` to `point`; the run ids undone
/// and the id of the restore's own entry.
pub fn restore_offline(path: &Path, owner: &str, point: &Point) -> Result<(Vec<String>, String)> {
    let mut st = SqliteStore::open(path, false)?;
    let id = crate::util::new_id();
    let head = EntryHead {
        id: id.clone(),
        name: "peerfs peer restore".into(),
        caller: owner.to_string(),
        chain: vec![owner.to_string()],
    };
    st.begin()?;
    let r = (|| {
        let h = st
            .history()
            .ok_or_else(|| err!(libc::EIO, "this store keeps no history"))?;
        h.begin_entry(&head)?;
        let undone = h.restore(point)?;
        h.end_entry()?;
        Ok(undone)
    })();
    match r {
        Ok(undone) => {
            st.commit()?;
            st.checkpoint()?;
            Ok((undone, id))
        }
        Err(e) => {
            let _ = st.rollback();
            Err(e)
        }
    }
}
