//! The client side of a spool (`peerfs run --spool DIR`): drop a script the
//! maildir way and wait for its result (the folders named by `crate::layout`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::err;
use crate::error::Result;
use crate::layout::{INBOX, OUTBOX};
use crate::names::script_stem;
use crate::util::{now_ns, rfc3339};

/// Drops `src` as `name` into `base/inbox/` (written under a staging name, fsynced,
/// renamed in) and waits until `base/outbox/<stem>.json` holds the result of this
/// submission (one submitted after the drop: an older result of the same name
/// does not count). `base` is `DIR/peer` or `DIR/caller/peers/peer`; `log` is the
/// caller's `DIR/caller/log`, where the spool writes why it refused a script.
///
/// A script the spool refuses (too big, not the owner's) is renamed to
/// `<name>.refused~` beside it and never runs: this notices the rename of the very
/// file it dropped (by its inode) and fails with the reason.
pub fn drop_and_wait(base: &Path, log: &Path, name: &str, src: &[u8]) -> Result<Vec<u8>> {
    let inbox = base.join(INBOX.name);
    if !inbox.is_dir() {
        return Err(err!(
            libc::ENOENT,
            "{} is not a spool inbox: is the peer's name right, and is `peerfs serve --spool` serving that folder?",
            inbox.display()
        ));
    }
    // Results carry millisecond times: anything submitted from this millisecond on.
    let since = rfc3339(now_ns() / 1_000_000 * 1_000_000);
    let me = unsafe { (libc::getuid(), libc::getgid()) };
    // The log as it was before the drop: a refusal's line comes after this.
    let log_before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    // A staging name beside it (`.peerfs-tmp-*`), fsynced, then renamed in.
    let tmp = super::files::write_tmp(&inbox.join(name), src, 0o644, me, true)?;
    let ino = std::fs::metadata(&tmp)
        .map_err(|e| err!(libc::EIO, "submitting to {}: {e}", inbox.display()))?
        .ino();
    std::fs::rename(&tmp, inbox.join(name))
        .map_err(|e| err!(libc::EIO, "submitting to {}: {e}", inbox.display()))?;
    let out = base
        .join(OUTBOX.name)
        .join(format!("{}.json", script_stem(name)));
    let refused = inbox.join(format!("{name}.refused~"));
    let started = Instant::now();
    let mut warned = false;
    loop {
        if let Ok(b) = std::fs::read(&out) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                let at = v["submitted_at"].as_str().unwrap_or_default();
                if v["script"].as_str() == Some(name) && at >= since.as_str() {
                    return Ok(b);
                }
            }
        }
        if std::fs::metadata(&refused).is_ok_and(|m| m.ino() == ino) {
            let why = refusal(log, log_before, name);
            return Err(err!(
                libc::EINVAL,
                "the spool refused {name} and will not run it (it is now {}): {why}",
                refused.display()
            ));
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "peerfs run: still waiting for {} (is `peerfs serve --spool` running?)",
                out.display()
            );
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The reason the spool gave for refusing `name`, from the log past `from`: the
/// line is appended just after the rename, so it is waited for a little.
fn refusal(log: &Path, from: u64, name: &str) -> String {
    let mark = format!("spool: {name} refused: ");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        if let Some(l) = tail.lines().rev().find(|l| l.contains(&mark)) {
            let why = &l[l.find(&mark).unwrap_or(0) + mark.len()..];
            return why.to_string();
        }
        if Instant::now() > until {
            return format!("the reason is in {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
