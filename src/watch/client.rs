//! The client side of a spool (`peerfs run --spool DIR`): drop a script the
//! maildir way and wait for its result.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::err;
use crate::error::Result;
use crate::peer::name::script_stem;
use crate::util::{now_ns, rfc3339};

/// Drops `src` as `name` into `base/inbox/` (written under a staging name, fsynced,
/// renamed in) and waits until `base/outbox/<stem>.json` holds the result of this
/// submission (one submitted after the drop: an older result of the same name
/// does not count). `base` is `DIR/peer` or `DIR/caller/peers/peer`.
pub fn drop_and_wait(base: &Path, name: &str, src: &[u8]) -> Result<Vec<u8>> {
    let inbox = base.join("inbox");
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
    // A staging name beside it (`.peerfs-tmp-*`), fsynced, then renamed in.
    let tmp = super::files::write_tmp(&inbox.join(name), src, 0o644, me, true)?;
    std::fs::rename(&tmp, inbox.join(name))
        .map_err(|e| err!(libc::EIO, "submitting to {}: {e}", inbox.display()))?;
    let out = base
        .join("outbox")
        .join(format!("{}.json", script_stem(name)));
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
