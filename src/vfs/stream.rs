//! A file served in pages as it is read: a table's `tables/<table>.jsonl`. The
//! handle holds one page (see `policy::sight::Page`, at most `PAGE_ROWS` rows
//! and `PAGE_BYTES` bytes) and the key after which the next page starts; a
//! sequential read pulls the pages in key order, a read before the page held
//! (a seek back) starts again from the first page and skips to its offset.

use crate::error::Result;
use crate::policy::sight::Page;

/// Where a reader of a streamed file is: the page it holds and what follows.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// The bytes of the page held.
    page: Vec<u8>,
    /// The offset in the file of `page`'s first byte.
    start: u64,
    /// The key of the last row looked at: the next page starts after it.
    after: Option<serde_json::Value>,
    /// No page follows the one held.
    done: bool,
}

/// Fetches the page after a key (`None`: the first page).
pub(super) type Fetch<'a> = &'a mut dyn FnMut(Option<&serde_json::Value>) -> Result<Page>;

impl Stream {
    pub(super) fn new() -> Stream {
        Stream::default()
    }

    /// The bytes the handle holds now.
    pub(super) fn held(&self) -> u64 {
        self.page.len() as u64
    }

    /// Up to `size` bytes from `offset` (fewer at the end of the file), pulling
    /// the pages that hold them. An error leaves the stream where it was.
    pub(super) fn read(&mut self, offset: u64, size: u32, fetch: Fetch) -> Result<Vec<u8>> {
        if offset < self.start {
            *self = Stream::new();
        }
        let want = size as usize;
        let mut out = Vec::with_capacity(want.min(self.page.len()));
        let mut pos = offset;
        loop {
            let end = self.start + self.page.len() as u64;
            if pos < end {
                let from = (pos - self.start) as usize;
                let n = (want - out.len()).min(self.page.len() - from);
                out.extend_from_slice(&self.page[from..from + n]);
                pos += n as u64;
            }
            if out.len() == want || self.done {
                return Ok(out);
            }
            let next = fetch(self.after.as_ref())?;
            self.page = next.bytes;
            self.start = end;
            self.after = next.last.or(self.after.take());
            self.done = next.done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A table of `n` rows `{"id":i}` served `per` rows a page, counting the
    /// pages fetched and the most bytes a page held.
    struct Table {
        n: u64,
        per: u64,
        fetched: usize,
    }

    impl Table {
        fn text(&self) -> Vec<u8> {
            (0..self.n)
                .flat_map(|i| format!("{{\"id\":{i}}}\n").into_bytes())
                .collect()
        }

        fn page(&mut self, after: Option<&serde_json::Value>) -> Result<Page> {
            self.fetched += 1;
            let from = after.map_or(0, |a| a.as_u64().unwrap() + 1);
            let to = (from + self.per).min(self.n);
            let bytes = (from..to)
                .flat_map(|i| format!("{{\"id\":{i}}}\n").into_bytes())
                .collect();
            Ok(Page {
                bytes,
                last: (to > from).then(|| json!(to - 1)),
                done: to == self.n,
            })
        }
    }

    fn read_all(s: &mut Stream, t: &mut Table, chunk: u32) -> (Vec<u8>, u64) {
        let (mut out, mut most) = (Vec::new(), 0);
        loop {
            let got = s.read(out.len() as u64, chunk, &mut |a| t.page(a)).unwrap();
            most = most.max(s.held());
            if got.is_empty() {
                return (out, most);
            }
            out.extend(got);
        }
    }

    #[test]
    fn a_sequential_read_pulls_each_page_once_and_holds_one() {
        let mut t = Table {
            n: 10_000,
            per: 100,
            fetched: 0,
        };
        let mut s = Stream::new();
        let (all, most) = read_all(&mut s, &mut t, 4096);
        assert_eq!(all, t.text());
        assert_eq!(t.fetched, 100);
        // One page held at a time: 100 rows of at most 12 bytes.
        assert!(most <= 100 * 12, "{most}");
        assert!((all.len() as u64) > 50 * most);
    }

    #[test]
    fn a_read_before_the_page_held_starts_again() {
        let mut t = Table {
            n: 1_000,
            per: 50,
            fetched: 0,
        };
        let whole = t.text();
        let mut s = Stream::new();
        let head = s.read(0, 7_000, &mut |a| t.page(a)).unwrap();
        assert_eq!(head, whole[..7_000]);
        let fetched = t.fetched;
        // Back to offset 10: from the first page again.
        let again = s.read(10, 100, &mut |a| t.page(a)).unwrap();
        assert_eq!(again, whole[10..110]);
        assert_eq!(t.fetched, fetched + 1);
        // Forward past several pages, then the end.
        let far = s.read(9_000, 30, &mut |a| t.page(a)).unwrap();
        assert_eq!(far, whole[9_000..9_030]);
        let end = whole.len() as u64;
        let tail = s.read(end - 5, 100, &mut |a| t.page(a)).unwrap();
        assert_eq!(tail, whole[whole.len() - 5..]);
        assert!(s.read(end, 100, &mut |a| t.page(a)).unwrap().is_empty());
        assert!(s.read(end + 10, 1, &mut |a| t.page(a)).unwrap().is_empty());
    }

    #[test]
    fn empty_pages_are_passed_over_and_an_error_changes_nothing() {
        // A viewer who may select no row of the first pages.
        let mut n = 0;
        let mut fetch = |a: Option<&serde_json::Value>| -> Result<Page> {
            n += 1;
            let i = a.map_or(0, |v| v.as_u64().unwrap() + 1);
            Ok(Page {
                bytes: if i == 3 { b"x\n".to_vec() } else { Vec::new() },
                last: Some(json!(i)),
                done: i == 4,
            })
        };
        let mut s = Stream::new();
        assert_eq!(s.read(0, 100, &mut fetch).unwrap(), b"x\n");
        assert_eq!(n, 5);
        let mut failing =
            |_: Option<&serde_json::Value>| Err(crate::error::err!(libc::EIO, "store gone"));
        let mut s = Stream::new();
        assert_eq!(s.read(0, 1, &mut failing).unwrap_err().errno, libc::EIO);
        assert_eq!((s.held(), s.start, s.done), (0, 0, false));
    }
}
