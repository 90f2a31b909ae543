//! Folders of `state/` kept apart from keys (table `state_dirs`): an empty folder
//! made with mkdir, or left by the removal or move of its last key through the
//! mount, survives a remount; a folder's mode and time are kept. A folder that
//! holds keys exists without a row; a row is what makes an empty one exist.

use rusqlite::{params, OptionalExtension};

use super::{prefix_end, SqliteStore};
use crate::error::Result;
use crate::store::Folder;

impl SqliteStore {
    pub(super) fn kept_folder(&mut self, dir: &str) -> Result<Option<Folder>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT mode, mtime, coalesce(ctime, mtime) FROM state_dirs WHERE dir=?1",
            )?
            .query_row([dir], |r| {
                Ok(Folder {
                    mode: r.get(0)?,
                    mtime_ns: r.get(1)?,
                    ctime_ns: r.get(2)?,
                })
            })
            .optional()?)
    }

    pub(super) fn kept_folders(&mut self, prefix: &str) -> Result<Vec<(String, Folder)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT dir, mode, mtime, coalesce(ctime, mtime) FROM state_dirs WHERE dir>=?1 ORDER BY dir",
            )?;
        let mut rows = stmt.query([prefix])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let dir: String = r.get(0)?;
            if !dir.starts_with(prefix) {
                break;
            }
            let f = Folder {
                mode: r.get(1)?,
                mtime_ns: r.get(2)?,
                ctime_ns: r.get(3)?,
            };
            out.push((dir, f));
        }
        Ok(out)
    }

    pub(super) fn keep(&mut self, dir: &str, mode: Option<u32>, mtime: Option<i64>) -> Result<()> {
        let new = self.kept_folder(dir)?.is_none();
        // A new row, a mode or a time set: the folder's ctime moves to now.
        let now = crate::util::now_ns();
        self.conn
            .prepare_cached(
                "INSERT INTO state_dirs(dir, mode, mtime, ctime) VALUES(?1, ?2, ?3, ?4)
                 ON CONFLICT(dir) DO UPDATE SET mode=coalesce(?2, mode), mtime=coalesce(?3, mtime),
                    ctime=CASE WHEN ?2 IS NULL AND ?3 IS NULL THEN ctime ELSE ?4 END",
            )?
            .execute(params![dir, mode, mtime, now])?;
        if new {
            self.touch_parent(dir, crate::util::now_ns())?;
        }
        Ok(())
    }

    pub(super) fn forget(&mut self, dir: &str) -> Result<bool> {
        let gone = self
            .conn
            .prepare_cached("DELETE FROM state_dirs WHERE dir=?1")?
            .execute([dir])?
            > 0;
        if gone {
            self.touch_parent(dir, crate::util::now_ns())?;
        }
        Ok(gone)
    }

    /// An entry came or went in the folder above `key`: a kept folder's time moves.
    pub(super) fn touch_parent(&mut self, key: &str, now: i64) -> Result<()> {
        if let Some(i) = key.rfind('/') {
            self.conn
                .prepare_cached("UPDATE state_dirs SET mtime=?2, ctime=?2 WHERE dir=?1")?
                .execute(params![&key[..i], now])?;
        }
        Ok(())
    }

    /// The kept folders at and under `from` move under `to` (which, if kept and
    /// empty, is replaced), with the keys (`rename_dir`).
    pub(super) fn move_folders(&mut self, from: &str, to: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM state_dirs WHERE dir=?1")?
            .execute([to])?;
        let lo = format!("{from}/");
        let hi = prefix_end(&lo);
        // substr counts characters of TEXT: skip `from`'s characters.
        let skip = from.chars().count() as i64 + 1;
        self.conn
            .prepare_cached(
                "UPDATE state_dirs SET dir = ?3 || substr(dir, ?4)
                 WHERE dir = ?5 OR (dir >= ?1 AND dir < ?2)",
            )?
            .execute(params![lo, hi, to, skip, from])?;
        let now = crate::util::now_ns();
        self.touch_parent(from, now)?;
        self.touch_parent(to, now)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{keep_parents, SqliteStore, StateKeys};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("s.db"), true).unwrap();
        (d, s)
    }

    #[test]
    fn kept_folders_exist_without_keys_move_with_their_folder_and_survive_reopening() {
        let (d, mut s) = store();
        s.keep_folder("a", Some(0o750), Some(5)).unwrap();
        s.keep_folder("a/b", None, None).unwrap();
        assert_eq!(s.stat_key("a").unwrap(), Some(None), "an empty kept folder");
        // The new entry a/b moved a's time.
        let a = s.folder("a").unwrap().unwrap();
        assert_eq!(a.mode, Some(0o750));
        assert!(a.mtime_ns.unwrap() > 5);
        let before = s.folder("a").unwrap().unwrap().ctime_ns.unwrap();
        s.keep_folder("a", None, Some(7)).unwrap();
        let a = s.folder("a").unwrap().unwrap();
        assert_eq!((a.mode, a.mtime_ns), (Some(0o750), Some(7)));
        assert!(
            a.ctime_ns.unwrap() >= before,
            "a time set moves ctime to now"
        );
        // Kept again with nothing set: ctime stays.
        s.keep_folder("a", None, None).unwrap();
        assert_eq!(s.folder("a").unwrap().unwrap().ctime_ns, a.ctime_ns);
        s.set_bytes("a/k", b"v").unwrap();
        assert!(s.folder("a").unwrap().unwrap().mtime_ns.unwrap() > 7);
        s.rename_dir("a", "z").unwrap();
        let dirs: Vec<String> = s.folders("").unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(dirs, ["z", "z/b"]);
        assert_eq!(s.folder("z").unwrap().unwrap().mode, Some(0o750));
        assert_eq!(s.get_bytes("z/k").unwrap().unwrap(), b"v");
        drop(s);
        let mut s = SqliteStore::open(&d.path().join("s.db"), true).unwrap();
        assert_eq!(s.stat_key("z/b").unwrap(), Some(None));
        assert!(s.forget_folder("z/b").unwrap());
        assert!(!s.forget_folder("z/b").unwrap());
        assert_eq!(s.stat_key("z/b").unwrap(), None);
        keep_parents(&mut s, "p/q/r", 9).unwrap();
        assert_eq!(s.folder("p/q").unwrap().unwrap().mtime_ns, Some(9));
        assert_eq!(s.folder("p").unwrap().unwrap().mode, None);
    }

    #[test]
    fn a_mode_set_stays_across_writes_and_renames() {
        let (_d, mut s) = store();
        s.set_bytes("f", b"1").unwrap();
        assert!(s.set_mode("f", 0o600).unwrap());
        assert!(!s.set_mode("nothing", 0o600).unwrap());
        s.set_bytes("f", b"22").unwrap();
        s.rename("f", "g").unwrap();
        let st = s.stat_key("g").unwrap().unwrap().unwrap();
        assert_eq!((st.size, st.mode), (2, Some(0o600)));
    }

    #[test]
    fn ctime_moves_on_every_change_and_mtime_only_with_the_contents() {
        let (_d, mut s) = store();
        let stat = |s: &mut SqliteStore, k: &str| s.stat_key(k).unwrap().unwrap().unwrap();
        s.set_bytes("f", b"1").unwrap();
        let st = stat(&mut s, "f");
        assert_eq!(st.ctime_ns, st.mtime_ns, "a write moves both");
        assert!(s.set_mtime("f", 5).unwrap());
        let st = stat(&mut s, "f");
        assert_eq!(st.mtime_ns, 5, "the time set is kept");
        assert!(st.ctime_ns > 5, "and ctime is the time of the change");
        let c = st.ctime_ns;
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(s.set_mode("f", 0o600).unwrap());
        let st = stat(&mut s, "f");
        assert_eq!(st.mtime_ns, 5, "chmod leaves mtime");
        assert!(st.ctime_ns > c, "chmod moves ctime");
        let c = st.ctime_ns;
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.rename("f", "g").unwrap();
        let st = stat(&mut s, "g");
        assert_eq!(st.mtime_ns, 5, "rename leaves mtime");
        assert!(st.ctime_ns > c, "rename moves ctime");
        s.keep_folder("d", None, Some(3)).unwrap();
        let d = s.folder("d").unwrap().unwrap();
        assert_eq!(d.mtime_ns, Some(3));
        assert!(d.ctime_ns.unwrap() > 3);
    }
}
