//! Serving a directory listing in pieces, apart from fuser so it can be tested.
//!
//! Positions: 0 is ".", 1 is "..", i >= 2 is `entries[i - 2]`. Each entry goes out
//! with the position of the *next* one: that is the offset the kernel sends back to
//! continue, so a listing resumed at any offset neither repeats nor skips an entry
//! (the entries come from a snapshot taken at opendir, so positions are stable).

use crate::vfs::Kind;

/// Where entries go: `add` returns true when the buffer is full and the entry was
/// NOT taken (fuser's `ReplyDirectory::add`).
pub trait DirSink {
    fn add(&mut self, ino: u64, next_offset: u64, kind: Option<Kind>, name: &str) -> bool;
}

/// Adds entries from position `offset` on until the sink is full. `kind` None is a
/// directory ("." and ".."). `ino_of` gives a child's inode number.
pub fn fill<K>(
    sink: &mut impl DirSink,
    dir_ino: u64,
    parent_ino: u64,
    entries: &[(String, K, Kind)],
    offset: u64,
    mut ino_of: impl FnMut(&K) -> u64,
) {
    let total = entries.len() as u64 + 2;
    for pos in offset..total {
        let next = pos + 1;
        let full = match pos {
            0 => sink.add(dir_ino, next, None, "."),
            1 => sink.add(parent_ino, next, None, ".."),
            _ => {
                let (name, key, kind) = &entries[(pos - 2) as usize];
                sink.add(ino_of(key), next, Some(*kind), name)
            }
        };
        if full {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` entries per call.
    struct Buf {
        room: usize,
        got: Vec<(u64, u64, String)>,
    }

    impl DirSink for Buf {
        fn add(&mut self, ino: u64, next: u64, _kind: Option<Kind>, name: &str) -> bool {
            if self.got.len() == self.room {
                return true;
            }
            self.got.push((ino, next, name.to_string()));
            false
        }
    }

    fn entries(n: usize) -> Vec<(String, u64, Kind)> {
        (0..n)
            .map(|i| (format!("e{i}"), 100 + i as u64, Kind::File))
            .collect()
    }

    fn list(n: usize, room: usize) -> Vec<String> {
        let es = entries(n);
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut b = Buf {
                room,
                got: Vec::new(),
            };
            fill(&mut b, 7, 1, &es, offset, |k| *k);
            if b.got.is_empty() {
                return out;
            }
            offset = b.got.last().unwrap().1;
            out.extend(b.got.into_iter().map(|(_, _, n)| n));
        }
    }

    #[test]
    fn dot_entries_first_with_next_offsets() {
        let mut b = Buf {
            room: 10,
            got: Vec::new(),
        };
        fill(&mut b, 7, 1, &entries(2), 0, |k| *k);
        assert_eq!(
            b.got,
            vec![
                (7, 1, ".".to_string()),
                (1, 2, "..".to_string()),
                (100, 3, "e0".to_string()),
                (101, 4, "e1".to_string()),
            ]
        );
    }

    #[test]
    fn resuming_at_any_buffer_size_lists_everything_once() {
        let want = list(50, usize::MAX);
        assert_eq!(want.len(), 52);
        for room in 1..8 {
            assert_eq!(list(50, room), want, "room {room}");
        }
    }

    #[test]
    fn offset_past_the_end_adds_nothing() {
        let mut b = Buf {
            room: 10,
            got: Vec::new(),
        };
        fill(&mut b, 7, 1, &entries(2), 4, |k| *k);
        fill(&mut b, 7, 1, &entries(2), 99, |k| *k);
        assert!(b.got.is_empty());
    }
}
