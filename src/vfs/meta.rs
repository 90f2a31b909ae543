//! The daemon's own files and figures: `.peerfs/version`, `.peerfs/stats`,
//! `.peerfs/metrics`, `.peerfs/replica`, a peer's meta values (`policy.cedar`, `groups`), and statfs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::error::Result;

impl Vfs {
    pub(super) fn meta_text(&self, name: &str) -> String {
        match name {
            "version" => format!("version {}\n", env!("CARGO_PKG_VERSION")),
            "metrics" => crate::metrics::text(&self.core),
            // One line per peer shipped since the start (empty: no replica).
            "replica" => self
                .core
                .replica()
                .map(|r| r.status_text())
                .unwrap_or_default(),
            "refused" => self
                .root_refusals
                .lock()
                .unwrap()
                .iter()
                .map(String::as_str)
                .collect(),
            _ => {
                let s = self.core.stats();
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                format!(
                    "peers {}\nopen_peers {}\nsubmissions {}\nruns {}\nruns_ok {}\nruns_error {}\nruns_denied {}\nruns_limit {}\nruns_gave_way {}\ncommits {}\nmessages_delivered {}\nwrites {}\nscript_cache {}\n",
                    self.core.registry().len(),
                    self.core.registry().open_count(),
                    g(&s.submissions),
                    g(&s.runs),
                    g(&s.runs_ok),
                    g(&s.runs_error),
                    g(&s.runs_denied),
                    g(&s.runs_limit),
                    g(&s.runs_gave_way),
                    g(&s.commits),
                    g(&s.messages_delivered),
                    g(&s.writes),
                    self.core.cache().len(),
                )
            }
        }
    }

    pub(super) fn meta_bytes(&self, peer: &str, text: PolicyText) -> Result<(Vec<u8>, i64)> {
        let p = self.core.peer(peer)?;
        Ok(p.read(|s| s.meta(text.key()))?.unwrap_or_default())
    }

    pub fn statfs(&self) -> Statfs {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(
            self.core
                .registry()
                .data_dir()
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap_or_default();
        let ok = unsafe { libc::statvfs(path.as_ptr(), &mut s) } == 0;
        if !ok {
            return Statfs {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                files: 0,
                ffree: 0,
                bsize: 4096,
                namelen: 255,
            };
        }
        Statfs {
            blocks: s.f_blocks as u64 * s.f_frsize as u64 / 4096,
            bfree: s.f_bfree as u64 * s.f_frsize as u64 / 4096,
            bavail: s.f_bavail as u64 * s.f_frsize as u64 / 4096,
            files: s.f_files as u64,
            ffree: s.f_ffree as u64,
            bsize: 4096,
            namelen: 255,
        }
    }
}
