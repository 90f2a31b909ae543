//! Helpers for the spool tests: `peerfs serve --spool` as a child process.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use crate::common::wait_until;
use crate::common::Daemon;

use serde_json::Value;

/// `peerfs serve --spool DIR --data DATA` as a child process (a
/// [`Daemon`](crate::common::Daemon): Drop kills it by pid).
pub struct SpoolDaemon {
    pub d: Daemon,
}

impl SpoolDaemon {
    /// Starts the daemon and waits until it watches (layout and startup scan done).
    pub fn start(data: &Path, dir: &Path, work: &Path) -> SpoolDaemon {
        let args = [
            OsStr::new("serve"),
            "--spool".as_ref(),
            dir.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        let mut d = Daemon::spawn(&args, dir, work);
        let up = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("peerfs serve exited early ({st}): {}", d.log_text());
            }
            d.log_text().contains("spool watching")
        });
        assert!(up, "peerfs serve did not come up: {}", d.log_text());
        SpoolDaemon { d }
    }

    pub fn signal(&self, sig: i32) {
        self.d.signal(sig)
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        self.d.signal(libc::SIGTERM);
        let st = self.d.wait(Duration::from_secs(30));
        assert!(
            st.success(),
            "peerfs serve exited with {st}: {}",
            self.log_text()
        );
    }

    pub fn kill9(&mut self) {
        self.d.kill9()
    }

    pub fn log_text(&self) -> String {
        self.d.log_text()
    }
}

/// The JSON in `path` once it is there (a result appears whole: no partial read).
#[track_caller]
pub fn wait_json(path: &Path, timeout: Duration) -> Value {
    let mut v = None;
    let ok = wait_until(timeout, || {
        v = std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("a result file is whole JSON"));
        v.is_some()
    });
    assert!(ok, "no result at {} within {timeout:?}", path.display());
    v.unwrap()
}

/// The value of a state mirror file (`state/<key>`), trimmed.
pub fn state_of(dir: &Path, peer: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(peer).join("state").join(key))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Names in a folder (staging names too).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn peerfs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerfs"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
