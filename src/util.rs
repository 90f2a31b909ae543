//! Small helpers: time stamps (RFC 3339, written and parsed), run ids (ULIDs), a
//! write that reports `close(2)`, a file made private to the daemon and a folder
//! fsynced (for the stores, the journal and the registry alike).

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{err, Result};

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T11:00:00.123Z`; the
/// milliseconds are floored, so a time before the epoch rounds down too.
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
    // Every i64 of nanoseconds (years 1677 to 2262) is inside jiff's range.
    let ts = jiff::Timestamp::from_second(secs).expect("i64 nanoseconds are within jiff's range");
    let mut text = format!("{ts:.0}");
    text.pop(); // the `Z`
    text
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time (`2026-11-26T11:00:00Z`,
/// `2026-11-26T12:00:00.5+01:00`): the offset is required, since a time without
/// one names no instant.
pub fn parse_rfc3339(text: &str) -> Result<i64> {
    let ts: jiff::Timestamp = text.trim().parse().map_err(|e: jiff::Error| {
        err!(
            libc::EINVAL,
            "time {text:?} is not an RFC 3339 time ({e}): write it like 2026-11-26T11:00:00Z"
        )
        .with_source(e)
    })?;
    i64::try_from(ts.as_nanosecond()).map_err(|_| {
        err!(
            libc::ERANGE,
            "time {text:?} is outside 1677-09-21..2262-04-11: pick a time in that range"
        )
    })
}

/// A ULID (26 characters, Crockford base32): 48 bits of milliseconds and 80 random
/// bits. Ids from one process sort by creation time and never repeat: within a
/// millisecond the generator counts up from the last id.
pub fn new_id() -> String {
    static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let id = match generator.generate() {
        Ok(id) => id,
        // 2^80 ids in one millisecond: borrow the next millisecond.
        Err(overflow) => overflow.commit_overflow_increment(),
    };
    id.to_string()
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

/// Makes a file the daemon's own and private (0600, owned by the daemon's uid).
pub(crate) fn make_private(path: &std::path::Path) -> Result<()> {
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )?;
    let (uid, gid) = daemon_ids();
    let md = std::fs::metadata(path)?;
    use std::os::unix::fs::MetadataExt;
    if md.uid() != uid || md.gid() != gid {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

pub(crate) fn daemon_ids() -> (u32, u32) {
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// fsyncs a directory so that a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// A span of time written `30d`, `12h`, `90m`, `45s` or as seconds (`120`), at
/// most 100 years: the one way the config writes ages and durations
/// (`history.max_age`, `replica.retention`). Hand-written: four units, and
/// the crates that parse durations (humantime, jiff's friendly format) take
/// calendar units and combinations this format has no use for.
pub fn parse_age(text: &str) -> crate::Result<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match num.parse::<u64>() {
        Ok(n) if mult > 0 && n <= 100 * 365 * 86_400 / mult => {
            Ok(std::time::Duration::from_secs(n * mult))
        }
        _ => Err(crate::error::err!(
            libc::EINVAL,
            "{text:?} is not a span of time: write a number and a unit (s, m, h, d), like 30d or 12h, or seconds; at most 100 years"
        )),
    }
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
        assert_eq!(rfc3339(1_999_999), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "2262-04-11T23:47:16.854Z");
        assert_eq!(rfc3339(i64::MIN), "1677-09-21T00:12:43.145Z");
        // The same second again (its text reused), then the next one.
        assert_eq!(rfc3339(951_782_400_007_000_000), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339(951_782_401_050_000_000), "2000-02-29T00:00:01.050Z");
        assert_eq!(rfc3339(-1_000_000), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_matches_the_civil_calendar_every_day_for_four_centuries() {
        // Howard Hinnant's days-to-civil, the formula peerfs used before jiff.
        fn civil(z: i64) -> (i64, u32, u32) {
            let z = z + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
            let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
            let y = yoe + era * 400;
            (if m <= 2 { y + 1 } else { y }, m, d)
        }
        for day in (-106_751..106_751i64).step_by(7) {
            let ns = day * 86_400_000_000_000 + 45_296_789_000_000;
            let (y, m, d) = civil(day);
            assert_eq!(rfc3339(ns), format!("{y:04}-{m:02}-{d:02}T12:34:56.789Z"));
        }
    }

    #[test]
    fn parse_rfc3339_reads_what_rfc3339_writes() {
        for ns in [
            0,
            1_795_000_000_123_000_000,
            -1_000_000,
            951_782_400_000_000_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)).unwrap(), ns);
        }
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap(), 0);
        let eleven = parse_rfc3339("2026-11-26T11:00:00Z").unwrap();
        assert_eq!(rfc3339(eleven), "2026-11-26T11:00:00.000Z");
        assert_eq!(
            parse_rfc3339(" 2026-11-26T11:00:00.000000001Z\n").unwrap(),
            eleven + 1
        );
    }

    #[test]
    fn parse_rfc3339_refuses_what_names_no_instant() {
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-11-26T11:00:00",
            "2026-13-01T00:00:00Z",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL, "{bad:?}");
            assert!(e.message.contains("RFC 3339"), "{e}");
            assert!(std::error::Error::source(&e).is_some(), "{bad:?}");
        }
        let e = parse_rfc3339("9999-01-01T00:00:00Z").unwrap_err();
        assert_eq!(e.errno, libc::ERANGE);
    }

    #[test]
    fn ids_are_unique_sorted_and_crockford() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 26);
            assert!(
                id.bytes()
                    .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)),
                "{id}"
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids sort as made");
        let first = ulid::Ulid::from_string(&ids[0]).unwrap();
        let now_ms = (now_ns() / 1_000_000) as u64;
        assert!(now_ms.abs_diff(first.timestamp_ms()) < 60_000, "time first");
    }

    #[test]
    fn spans_of_time_have_four_units_or_seconds() {
        use std::time::Duration;
        assert_eq!(
            super::parse_age("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            super::parse_age("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            super::parse_age(" 90m ").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(super::parse_age("120").unwrap(), Duration::from_secs(120));
        assert_eq!(super::parse_age("0").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "d",
            "7 weeks",
            "1.5h",
            "-1s",
            "36501d",
            "99999999999999999999",
        ] {
            assert_eq!(
                super::parse_age(bad).unwrap_err().errno,
                libc::EINVAL,
                "{bad:?}"
            );
        }
    }
}
