//! The intake journal: one SQLite file per data folder (`DATA/intake.sqlite`)
//! where submissions are made durable before their peer's actor takes them into
//! the peer's own queue. It has its own connection and lock, so a submission
//! never waits for a run in progress at its peer.
//!
//! Exactly once: an entry's `seq` only grows (AUTOINCREMENT: never reused, even
//! after deletes). The actor that moves entries into a peer's queue records, in the
//! same transaction, the highest `seq` it took under the meta key
//! [`Journal::mark_key`]; entries at or below that mark are already in the queue
//! (a crash came between that commit and the journal's delete) and are dropped,
//! never taken twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{rows, Job};
use crate::error::{err, Result};

/// A submission held in the journal.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: i64,
    pub peer: String,
    pub job: Job,
    /// The owner withdrew it (`rm`) before it reached the queue: it ends unrun.
    pub withdrawn: bool,
}

pub struct Journal {
    /// `None` once closed (the daemon stopped).
    conn: Mutex<Option<Connection>>,
    /// Names this journal in the peers' marks (a peer moved between data folders
    /// meets another journal, whose numbering is its own).
    id: String,
    path: PathBuf,
}

const COLS: &str = "seq,id,name,source,caller,params,msg_id,hops,submitted_at,chain,budget,attempts,peer,withdrawn";

impl Journal {
    /// The journal of the data folder `data` (created if missing).
    pub fn open_in(data: &Path) -> Result<Journal> {
        Journal::open(&data.join("intake.sqlite"))
    }

    pub fn open(path: &Path) -> Result<Journal> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| {
            err!(
                libc::EIO,
                "cannot open the intake journal {}: {e}",
                path.display()
            )
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS intake(
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                peer TEXT NOT NULL,
                id TEXT NOT NULL, name TEXT NOT NULL, source BLOB NOT NULL,
                caller TEXT NOT NULL, params TEXT NOT NULL, msg_id TEXT,
                hops INTEGER NOT NULL, submitted_at INTEGER NOT NULL, chain TEXT,
                budget INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                withdrawn INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS intake_peer ON intake(peer, seq);",
        )?;
        let id: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k='id'", [], |r| r.get(0))
            .optional()?;
        let id = match id {
            Some(id) => id,
            None => {
                let id = crate::util::new_id();
                conn.execute("INSERT INTO meta(k,v) VALUES('id',?1)", [&id])?;
                id
            }
        };
        crate::util::make_private(path)?;
        if let Some(dir) = path.parent() {
            crate::util::sync_dir(dir);
        }
        Ok(Journal {
            conn: Mutex::new(Some(conn)),
            id,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The peer meta key under which a peer's store records the highest `seq` of
    /// this journal it has taken.
    pub fn mark_key(&self) -> String {
        format!("intake-journal/{}", self.id)
    }

    /// Appends submissions in one transaction, fsynced before it returns (group
    /// commit: the caller passes whatever is waiting). Returns their `seq`s.
    pub fn append(&self, entries: &[(&str, &Job)]) -> Result<Vec<i64>> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        // Whatever `forget` left behind: this commit is fsynced.
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        let tx = conn.transaction()?;
        let mut seqs = Vec::with_capacity(entries.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO intake(peer,id,name,source,caller,params,msg_id,hops,submitted_at,chain,budget,attempts)
                 VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
            )?;
            for (peer, job) in entries {
                stmt.execute(params![
                    peer,
                    job.id,
                    job.name,
                    job.source,
                    job.caller,
                    job.params,
                    job.msg_id,
                    job.hops as i64,
                    job.submitted_at,
                    rows::chain_text(&job.chain),
                    job.budget as i64,
                    job.attempts as i64
                ])?;
                seqs.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// The entries of `peer` after `mark`, in order. Rows that cannot be read as a
    /// script (a damaged file) are left out and reported.
    pub fn entries_of(&self, peer: &str, mark: i64) -> Result<Vec<Entry>> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        let sql = format!("SELECT {COLS} FROM intake WHERE peer=?1 AND seq>?2 ORDER BY seq");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows: Vec<(i64, std::result::Result<Job, rows::BadRow>, bool)> = stmt
            .query_map(params![peer, mark], |r| {
                let (seq, job) = rows::job(r)?;
                let withdrawn: i64 = r.get(13)?;
                Ok((seq, job, withdrawn != 0))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, job, withdrawn) in rows {
            match job {
                Ok(mut job) => {
                    job.seq = 0;
                    out.push(Entry {
                        seq,
                        peer: peer.to_string(),
                        job,
                        withdrawn,
                    })
                }
                Err(why) => {
                    tracing::error!(journal = %self.path.display(), seq, peer, reason = %why, "an intake journal row cannot be read: it is skipped")
                }
            }
        }
        Ok(out)
    }

    /// Whether `peer` has entries.
    pub fn holds(&self, peer: &str) -> Result<bool> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM intake WHERE peer=?1 LIMIT 1)")?
            .query_row([peer], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// The peers with entries.
    pub fn peers(&self) -> Result<Vec<String>> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        let mut stmt = conn.prepare_cached("SELECT DISTINCT peer FROM intake")?;
        let v = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Drops entries of `peer` up to `mark` (already in its queue). Not fsynced:
    /// the peer's mark keeps a row left behind by a crash from being taken again.
    pub fn forget(&self, peer: &str, mark: i64) -> Result<()> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let r = conn
            .prepare_cached("DELETE FROM intake WHERE peer=?1 AND seq<=?2")
            .and_then(|mut s| s.execute(params![peer, mark]));
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        r?;
        Ok(())
    }

    /// Closes the journal (its WAL checkpointed and removed); later calls fail.
    pub fn close(&self) {
        if let Some(conn) = self.conn.lock().unwrap().take() {
            if let Err((_, e)) = conn.close() {
                tracing::warn!(journal = %self.path.display(), error = %e, "closing the intake journal failed");
            }
        }
    }

    /// Marks entries withdrawn (durably): they end unrun when their peer takes them.
    pub fn withdraw(&self, seqs: &[i64]) -> Result<()> {
        let mut g = self.conn.lock().unwrap();
        let conn = open_conn(&mut g)?;
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE intake SET withdrawn=1 WHERE seq=?1")?;
            for s in seqs {
                stmt.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn open_conn(g: &mut Option<Connection>) -> Result<&mut Connection> {
    g.as_mut().ok_or_else(|| {
        err!(
            libc::EIO,
            "the daemon is stopping: the intake journal is closed"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, caller: &str) -> Job {
        Job {
            id: crate::util::new_id(),
            name: name.to_string(),
            source: b"1".to_vec(),
            caller: caller.to_string(),
            params: "{}".to_string(),
            submitted_at: 1,
            chain: vec![caller.to_string()],
            budget: 10,
            ..Default::default()
        }
    }

    #[test]
    fn entries_keep_their_order_and_a_mark_drops_those_taken() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open_in(d.path()).unwrap();
        let (a1, b1, a2) = (
            job("a1.rhai", "alice"),
            job("b1.rhai", "bob"),
            job("a2.rhai", "bob"),
        );
        let seqs = j
            .append(&[("alice", &a1), ("bob", &b1), ("alice", &a2)])
            .unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let alice = j.entries_of("alice", 0).unwrap();
        assert_eq!(
            alice
                .iter()
                .map(|e| e.job.name.as_str())
                .collect::<Vec<_>>(),
            ["a1.rhai", "a2.rhai"]
        );
        assert_eq!(alice[1].job.caller, "bob");
        assert_eq!(alice[0].job.id, a1.id);
        assert!(j.holds("bob").unwrap() && !j.holds("carol").unwrap());
        // Withdrawn, and still there until taken.
        j.withdraw(&[seqs[2]]).unwrap();
        assert!(j.entries_of("alice", 0).unwrap()[1].withdrawn);
        // Taken up to the first: only the second is left; bob's are untouched.
        j.forget("alice", seqs[0]).unwrap();
        assert_eq!(j.entries_of("alice", 0).unwrap().len(), 1);
        assert_eq!(j.entries_of("alice", seqs[2]).unwrap().len(), 0);
        assert_eq!(j.entries_of("bob", 0).unwrap().len(), 1);
        // Reopened: the same id (marks name it) and numbering that never goes back.
        let key = j.mark_key();
        drop(j);
        let j = Journal::open_in(d.path()).unwrap();
        assert_eq!(j.mark_key(), key);
        j.forget("alice", i64::MAX).unwrap();
        j.forget("bob", i64::MAX).unwrap();
        let next = j.append(&[("alice", &a1)]).unwrap();
        assert!(next[0] > seqs[2], "seq reused: {next:?} after {seqs:?}");
        j.close();
        assert!(j.append(&[("alice", &a1)]).is_err(), "closed");
    }
}
