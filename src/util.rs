//! Small helpers: time stamps and run ids without extra dependencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T11:00:00.123Z`.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let ms = ns.rem_euclid(1_000_000_000) / 1_000_000;
    // A run writes several stamps of the same second: the date and time part is
    // made once per second and thread (`YYYY-MM-DDTHH:MM:SS`, 19 bytes).
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            *last = (secs, seconds_text(secs));
        }
        let mut out = String::with_capacity(24);
        out.push_str(&last.1);
        out.push('.');
        let ms = ms as u32;
        out.push(char::from(b'0' + (ms / 100) as u8));
        out.push(char::from(b'0' + (ms / 10 % 10) as u8));
        out.push(char::from(b'0' + (ms % 10) as u8));
        out.push('Z');
        out
    })
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch (UTC).
fn seconds_text(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID-shaped id (26 characters, Crockford base32): 48 bits of milliseconds and
/// 80 bits that are a per-process random start plus a counter, so ids sort by
/// creation time within a process and never repeat.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(now_ns(), std::process::id()), &mut h);
        std::hash::Hasher::finish(&h)
    });
    let ms = (now_ns() / 1_000_000) as u128 & ((1 << 48) - 1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let low = ((seed as u128 & 0xffff) << 64) | seed.rotate_left(17).wrapping_add(n) as u128;
    let v: u128 = (ms << 80) | (low & ((1u128 << 80) - 1));
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as i32;
        let idx = if shift >= 0 {
            (v >> shift) & 31
        } else {
            (v << -shift) & 31
        };
        *c = CROCKFORD[idx as usize];
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// Writes a whole file and closes it, reporting the error of `close(2)` too (Rust's
/// `File` drop ignores it). On peerfs, `close` is when a script is submitted or a
/// value stored: its success is the acknowledgment.
pub fn write_and_close(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        // The same second again (its text reused), then the next one.
        assert_eq!(rfc3339(951_782_400_007_000_000), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339(951_782_401_050_000_000), "2000-02-29T00:00:01.050Z");
        assert_eq!(rfc3339(-1_000_000), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn ids_are_unique_and_sorted_within_a_millisecond_stream() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        let mut set = std::collections::BTreeSet::new();
        for id in &ids {
            assert_eq!(id.len(), 26);
            assert!(set.insert(id.clone()));
        }
    }
}
