//! SQLite's write-ahead log as bytes: its header, its frames and their
//! checksums (the format in SQLite's documentation, "The WAL File Format"), read
//! from a store's `-wal` file, and frames applied to a database image.
//!
//! Written here rather than taken from a crate: the format is 32 bytes of
//! header, 24 bytes before each page and one checksum; no well-kept crate reads
//! it, and the replica needs exactly the rule SQLite's own recovery uses (a
//! frame counts when its salts match the header and its checksum chain holds,
//! and only up to the last frame that ends a transaction).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{err, Result};

pub const HEADER: u64 = 32;
pub const FRAME_HEADER: u64 = 24;

/// A WAL file's header: what every frame of this log carries (the salts) and
/// where the checksum chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub page_size: u32,
    /// Counts the log's restarts (a checkpoint that emptied it, then a write).
    pub ckpt_seq: u32,
    pub salt: (u32, u32),
    pub cksum: (u32, u32),
    /// Checksums of big-endian words (magic 0x377f0683) or native ones.
    pub big_endian: bool,
}

/// Where reading a log goes on from: the end of the last transaction taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pos {
    pub header: Header,
    /// Byte offset in the `-wal` file (a frame boundary after a commit frame).
    pub offset: u64,
    /// The checksum of the frame before `offset` (the header's at its start).
    pub cksum: (u32, u32),
}

impl Pos {
    pub fn start(header: Header) -> Pos {
        Pos {
            header,
            offset: HEADER,
            cksum: header.cksum,
        }
    }
}

/// The checksum SQLite computes over `data` (a multiple of 8 bytes), from `s`.
pub fn checksum(data: &[u8], big_endian: bool, s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    let word = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    for c in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&c[0..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&c[4..8])).wrapping_add(s0);
    }
    (s0, s1)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The header of the log at `wal`; `None` when there is no log or it holds no
/// valid header (SQLite then starts a new one at the next write).
pub fn read_header(wal: &Path) -> Result<Option<Header>> {
    let mut f = match File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut b = [0u8; HEADER as usize];
    if f.read_exact(&mut b).is_err() {
        return Ok(None);
    }
    let magic = be32(&b, 0);
    let big_endian = match magic {
        0x377f0682 => false,
        0x377f0683 => true,
        _ => return Ok(None),
    };
    let cksum = (be32(&b, 24), be32(&b, 28));
    if checksum(&b[..24], big_endian, (0, 0)) != cksum {
        return Ok(None);
    }
    let page_size = match be32(&b, 8) {
        1 => 65536,
        n => n,
    };
    Ok(Some(Header {
        page_size,
        ckpt_seq: be32(&b, 12),
        salt: (be32(&b, 16), be32(&b, 20)),
        cksum,
        big_endian,
    }))
}

/// Whether the log still holds what ended at `pos` (the frame before it, with
/// its salts and checksum): after a power loss, the end of a log whose
/// transactions were shipped may be gone from the disk.
pub fn holds(wal: &Path, pos: &Pos) -> Result<bool> {
    if pos.offset <= HEADER {
        return Ok(true);
    }
    let f = match File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if f.metadata()?.len() < pos.offset {
        return Ok(false);
    }
    let at = pos.offset - FRAME_HEADER - u64::from(pos.header.page_size);
    let mut b = [0u8; FRAME_HEADER as usize];
    if f.read_exact_at(&mut b, at).is_err() {
        return Ok(false);
    }
    Ok((be32(&b, 8), be32(&b, 12)) == pos.header.salt && (be32(&b, 16), be32(&b, 20)) == pos.cksum)
}

/// The whole transactions of the log after `from`: their frames' bytes, and
/// the position after the last one. Frames of a transaction still being
/// written, or left over from before a restart, are not taken.
pub fn read_after(wal: &Path, from: &Pos) -> Result<(Vec<u8>, Pos)> {
    let mut f = match File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), *from)),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    if len <= from.offset {
        return Ok((Vec::new(), *from));
    }
    let mut bytes = Vec::with_capacity((len - from.offset) as usize);
    f.seek(SeekFrom::Start(from.offset))?;
    f.read_to_end(&mut bytes)?;
    let h = &from.header;
    let size = (FRAME_HEADER + u64::from(h.page_size)) as usize;
    let (mut s, mut at, mut taken) = (from.cksum, 0usize, (0usize, from.cksum));
    while at + size <= bytes.len() {
        let fr = &bytes[at..at + size];
        if (be32(fr, 8), be32(fr, 12)) != h.salt {
            break;
        }
        let mut c = checksum(&fr[..8], h.big_endian, s);
        c = checksum(&fr[FRAME_HEADER as usize..], h.big_endian, c);
        if c != (be32(fr, 16), be32(fr, 20)) {
            break;
        }
        s = c;
        at += size;
        if be32(fr, 4) != 0 {
            taken = (at, s);
        }
    }
    bytes.truncate(taken.0);
    let to = Pos {
        header: *h,
        offset: from.offset + taken.0 as u64,
        cksum: taken.1,
    };
    Ok((bytes, to))
}

/// Whole transactions' frames reduced to the last image of each page (pages
/// past the final size left out, as a checkpoint leaves them), the last frame
/// carrying the database's size: laid over the state before them, they give
/// the state after them, as all the frames would. Salts and checksums are
/// left as they were (only SQLite's own recovery reads them, never this).
pub fn compact(frames: &[u8], page_size: u32) -> Vec<u8> {
    let size = (FRAME_HEADER + u64::from(page_size)) as usize;
    let mut last = std::collections::HashMap::new();
    let mut pages = 0;
    for (i, fr) in frames.chunks_exact(size).enumerate() {
        last.insert(be32(fr, 0), i);
        if be32(fr, 4) != 0 {
            pages = be32(fr, 4);
        }
    }
    let mut keep: Vec<usize> = last
        .into_iter()
        .filter(|(pgno, _)| *pgno <= pages)
        .map(|(_, i)| i)
        .collect();
    keep.sort_unstable();
    let mut out = Vec::with_capacity(keep.len() * size);
    for i in keep {
        let fr = &frames[i * size..(i + 1) * size];
        out.extend_from_slice(&fr[..4]);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&fr[8..]);
    }
    if out.len() >= size {
        let at = out.len() - size + 4;
        out[at..at + 4].copy_from_slice(&pages.to_be_bytes());
    }
    out
}

/// The page size of the database image `file`, from its header.
pub fn page_size_of(file: &mut File) -> Result<u32> {
    let mut b = [0u8; 100];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut b)
        .map_err(|e| err!(libc::EIO, "a database image without its header: {e}"))?;
    if &b[..16] != b"SQLite format 3\0" {
        return Err(err!(libc::EIO, "not an SQLite database image"));
    }
    Ok(match u16::from_be_bytes([b[16], b[17]]) {
        1 => 65536,
        n => u32::from(n),
    })
}

/// Frames laid over a database image, as a checkpoint lays them over the file.
pub struct Applier {
    file: File,
    page_size: u64,
    /// Pages of the database after the last commit frame applied.
    pages: Option<u64>,
}

impl Applier {
    /// Applies frames of pages of `page_size` bytes to the database image `file`.
    pub fn new(file: File, page_size: u32) -> Applier {
        Applier {
            file,
            page_size: u64::from(page_size),
            pages: None,
        }
    }

    /// Writes the pages of `frames` (whole frames, ending with a commit frame).
    pub fn apply(&mut self, frames: &[u8]) -> Result<()> {
        let size = (FRAME_HEADER + self.page_size) as usize;
        if !frames.len().is_multiple_of(size) {
            return Err(err!(
                libc::EIO,
                "a log segment of {} bytes is not whole frames of {size}",
                frames.len()
            ));
        }
        for fr in frames.chunks_exact(size) {
            let pgno = u64::from(be32(fr, 0));
            if pgno == 0 {
                return Err(err!(libc::EIO, "a log frame for page 0"));
            }
            self.file
                .write_all_at(&fr[FRAME_HEADER as usize..], (pgno - 1) * self.page_size)?;
            let commit = be32(fr, 4);
            if commit != 0 {
                self.pages = Some(u64::from(commit));
            }
        }
        Ok(())
    }

    /// Cuts the image to the size of its last transaction, flushes it and
    /// gives the file back.
    pub fn finish(mut self) -> Result<File> {
        if let Some(p) = self.pages {
            self.file.set_len(p * self.page_size)?;
        }
        self.file.flush()?;
        self.file.sync_all()?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db(dir: &Path) -> (Connection, std::path::PathBuf) {
        let p = dir.join("a.sqlite");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        (c, p)
    }

    #[test]
    fn frames_read_after_a_position_rebuild_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (c, p) = db(dir.path());
        let wal = dir.path().join("a.sqlite-wal");
        // The image before any frame, as a copy of the file.
        let base = dir.path().join("base");
        std::fs::copy(&p, &base).unwrap();
        let h = read_header(&wal).unwrap().expect("a log");
        let (first, pos) = read_after(&wal, &Pos::start(h)).unwrap();
        for i in 0..500 {
            c.execute("INSERT INTO t(v) VALUES(?1)", [format!("v{i:0200}")])
                .unwrap();
        }
        let (rest, end) = read_after(&wal, &pos).unwrap();
        assert!(end.offset > pos.offset);
        // Nothing more after the end.
        assert!(read_after(&wal, &end).unwrap().0.is_empty());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&base)
            .unwrap();
        let mut a = Applier::new(f, h.page_size);
        a.apply(&compact(&first, h.page_size)).unwrap();
        let small = compact(&rest, h.page_size);
        assert!(
            small.len() * 4 < rest.len(),
            "500 commits of a few pages each"
        );
        a.apply(&small).unwrap();
        a.finish().unwrap();
        let r = Connection::open(&base).unwrap();
        let n: i64 = r
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
        let ok: String = r
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_torn_or_foreign_frame_ends_what_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _p) = db(dir.path());
        let wal = dir.path().join("a.sqlite-wal");
        c.execute("INSERT INTO t(v) VALUES('x')", []).unwrap();
        let h = read_header(&wal).unwrap().unwrap();
        let (all, end) = read_after(&wal, &Pos::start(h)).unwrap();
        assert!(!all.is_empty());
        assert!(holds(&wal, &end).unwrap());
        // A flipped byte in the last frame's page: that transaction is not taken.
        let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        f.write_all_at(b"!", end.offset - 1).unwrap();
        let (cut, pos) = read_after(&wal, &Pos::start(h)).unwrap();
        assert!(pos.offset < end.offset);
        assert_eq!(cut.len() as u64, pos.offset - HEADER);
        // A log that lost its tail no longer holds where the replica ended.
        f.set_len(end.offset - 100).unwrap();
        assert!(!holds(&wal, &end).unwrap());
        assert!(holds(&wal, &pos).unwrap());
    }
}
