//! The demo: peers alice and bob with an example module and policy, and a tour.

use std::path::Path;

use crate::error::Result;
use crate::peer::Registry;
use crate::policy::PolicyText;
use crate::store::{Documents, SqliteStore, StateKeys};

/// bob lets alice run scripts, read his state and write under `shared/`.
pub const BOB_POLICY: &str = include_str!("../policies/demo-bob.cedar");
pub const GREETING_MODULE: &str = include_str!("../scripts/examples/greeting.rhai");

/// The example scripts, for the tour and tests.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("hello.rhai", include_str!("../scripts/examples/hello.rhai")),
    ("visit.rhai", include_str!("../scripts/examples/visit.rhai")),
    ("note.rhai", include_str!("../scripts/examples/note.rhai")),
    (
        "ask-bob.rhai",
        include_str!("../scripts/examples/ask-bob.rhai"),
    ),
];

/// Creates alice and bob in `data` (once), with bob's policy and a module each.
pub fn prepare(data: &Path) -> Result<()> {
    let reg = Registry::new(data, None)?;
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    for name in ["alice", "bob"] {
        if reg.exists(name) {
            continue;
        }
        reg.create(name, uid, gid)?;
        let mut s = SqliteStore::open(&reg.path_of(name), false)?;
        s.set_module("greeting", GREETING_MODULE.as_bytes())?;
        if name == "bob" {
            s.set_meta(PolicyText::Policy.key(), BOB_POLICY.as_bytes())?;
            s.set(
                "shared/welcome",
                &serde_json::json!("hi alice, write under shared/"),
            )?;
        }
    }
    let ex = data.join("examples");
    std::fs::create_dir_all(&ex)?;
    for (n, src) in EXAMPLES {
        std::fs::write(ex.join(n), src)?;
    }
    Ok(())
}

pub fn tour(mnt: &Path) -> String {
    let m = mnt.display();
    let ex = mnt
        .parent()
        .map(|p| p.join("data/examples"))
        .unwrap_or_default();
    let ex = ex.display();
    format!(
        r#"
peerfs demo mounted at {m}   (Ctrl-C here, or `fusermount3 -u {m}`, to stop)

In another terminal:
  ls {m}                                          # one folder per peer
  cp {ex}/hello.rhai {m}/alice/inbox/ && jq . {m}/alice/outbox/hello.json
  cp {ex}/visit.rhai {m}/alice/inbox/ && jq .value {m}/alice/outbox/visit.json
  cat {m}/alice/state/visits                     # state: one file per key
  echo 41 > {m}/alice/state/m                     # a number, as scripts see it
  echo 'get("m") + 1' > {m}/alice/inbox/calc.rhai && jq .value {m}/alice/outbox/calc.json
  cat {m}/bob/policy.cedar                        # who may do what at bob
  cp {ex}/note.rhai {m}/alice/peers/bob/inbox/ && jq . {m}/alice/peers/bob/outbox/note.json
  ls {m}/alice/peers/bob/state/                   # what bob lets alice read
  cp {ex}/ask-bob.rhai {m}/alice/inbox/ && jq .status {m}/alice/peers/bob/outbox/ask-bob-1.json
  tail -f {m}/bob/log                             # every run, submission and denial
"#
    )
}
