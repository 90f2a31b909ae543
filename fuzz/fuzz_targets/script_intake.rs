//! Arbitrary bytes as a script, under tight sandbox limits: every run ends with an
//! `Outcome` that respects the limits, and none panics or hangs. Runs happen on a
//! thread with a 64 MiB stack, as the daemon's runners do.
//!
//! Inputs of odd length run as a guest (bob at alice, reads of `shared/*` only);
//! even ones as the owner.
#![cfg_attr(fuzzing, no_main)]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

#[path = "shared/temp.rs"]
mod temp;
use peerfs::script::{
    AstCache, Capability, Host, Library, Limits, OwnerHost, RunInput, ScriptEngine, Status,
};
use peerfs::store::prelude::*;
use peerfs::store::SqliteStore;
use serde_json::{json, Value};

struct Fixture {
    store: SqliteStore,
    engine: ScriptEngine,
}

static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();

fn fixture() -> &'static Mutex<Fixture> {
    FIXTURE.get_or_init(|| {
        let dir = temp::temp_dir("peerfs-fuzz-script-");
        let mut store = SqliteStore::open(&dir.join("alice.sqlite"), true).expect("store");
        store.set("n", &json!(41)).unwrap();
        store.set("shared/doc", &json!({"a": [1, "x"]})).unwrap();
        store.set("a/b/c", &json!("deep")).unwrap();
        store
            .set_module("util", b"fn twice(x) { x * 2 }\nconst K = 7;")
            .unwrap();
        let engine = ScriptEngine::new(Arc::new(AstCache::new()), Library::Embedded);
        Mutex::new(Fixture { store, engine })
    })
}

/// Another peer's script: may read `shared/*`, nothing else.
struct Guest;

impl Host for Guest {
    fn check(&self, cap: Capability, object: &str) -> Result<(), peerfs::Error> {
        if cap == Capability::Read && object.starts_with("shared/") {
            Ok(())
        } else {
            Err(peerfs::Error::new(
                libc::EACCES,
                format!("denied: {} {object}", cap.as_str()),
            ))
        }
    }
    fn caller_get(&self, key: &str) -> Result<Option<Value>, peerfs::Error> {
        Ok(Some(json!({ "key": key })))
    }
}

fn limits() -> Limits {
    Limits {
        max_operations: 10_000,
        max_wall_ms: 200,
        max_string_size: 4096,
        max_array_size: 256,
        max_map_size: 256,
        max_output_bytes: 4096,
        max_sends: 4,
        max_script_bytes: 64 << 10,
        max_modules: 4,
        ..Limits::default()
    }
}

fn run(source: &[u8]) {
    let mut f = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let f = &mut *f;
    let l = limits();
    let stop = AtomicBool::new(false);
    let params = json!({"n": 7, "s": "x"});
    let guest = source.len() % 2 == 1;
    let input = RunInput {
        script_name: "fuzz.rhai",
        source,
        caller: if guest { "bob" } else { "alice" },
        target: "alice",
        params: &params,
        limits: &l,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    // As the executor does: a transaction around the run, here always undone so
    // every input starts from the same state.
    f.store.begin().expect("begin");
    let started = std::time::Instant::now();
    let o = if guest {
        f.engine.run(&input, &mut f.store, &Guest)
    } else {
        f.engine.run(&input, &mut f.store, &OwnerHost)
    };
    let took = started.elapsed();
    f.store.rollback().expect("rollback");

    assert!(
        o.storage_error.is_none(),
        "storage error: {:?}",
        o.storage_error
    );
    match o.status {
        Status::Ok => assert!(o.error.is_none(), "{o:?}"),
        _ => {
            assert!(o.error.as_deref().is_some_and(|e| !e.is_empty()), "{o:?}");
            assert!(o.sends.is_empty() && o.logs.is_empty(), "{o:?}");
        }
    }
    assert_ne!(o.status, Status::Interrupted, "never stopped: {o:?}");
    assert!(o.output.len() <= l.max_output_bytes as usize, "{o:?}");
    assert!(o.sends.len() <= l.max_sends as usize, "{o:?}");
    assert!(o.logs.len() <= 1000);
    assert!(
        o.operations <= l.max_operations + 1,
        "{} operations",
        o.operations
    );
    if guest && o.status == Status::Ok {
        assert!(o.sends.is_empty(), "a guest without send sent: {o:?}");
    }
    // Far past max_wall_ms is a hang in waiting (compiling is not under the clock,
    // but 64 KiB of source must not take seconds).
    assert!(
        took.as_millis() < 5_000,
        "a run took {took:?} (max_wall_ms {}): {:?}",
        l.max_wall_ms,
        o.status
    );
}

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || run(&data))
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
});
