//! The engine on its own: host API, sandbox limits, error messages.

use super::*;
use crate::store::{SqliteStore, Store};
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    cache: Arc<AstCache>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.sqlite"), true).unwrap();
    Fixture {
        _dir: dir,
        store,
        cache: Arc::new(AstCache::new()),
    }
}

fn run_with(f: &mut Fixture, src: &str, limits: &Limits) -> Outcome {
    let stop = AtomicBool::new(false);
    let params = json!({"n": 7});
    let input = RunInput {
        script_name: "t.rhai",
        source: src.as_bytes(),
        caller: "alice",
        target: "alice",
        params: &params,
        limits,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    let mut e = ScriptEngine::new(f.cache.clone(), Library::Embedded);
    e.run(&input, &mut f.store, &OwnerHost)
}

fn run(f: &mut Fixture, src: &str) -> Outcome {
    run_with(f, src, &Limits::default())
}

#[test]
fn value_and_state_keep_types() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"set("n", 41); set("m", #{a: [1, "x"]}); get("n") + 1"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(42));
    assert_eq!(f.store.get("m").unwrap(), Some(json!({"a": [1, "x"]})));
    let o = run(
        &mut f,
        r#"let m = get("m"); m.a[1] + get("missing") ?? "none""#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
}

#[test]
fn caller_target_params_print_and_log() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"print("hi " + caller.name); log("noted"); [caller.params.n, target.name]"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!([7, "alice"]));
    assert_eq!(o.output, "hi alice\n");
    assert_eq!(o.logs, vec!["noted".to_string()]);
    assert!(o.operations > 0);
}

#[test]
fn caller_is_a_constant() {
    let mut f = fixture();
    let o = run(&mut f, r#"caller.name = "mallory"; caller.name"#);
    assert_ne!(o.status, Status::Ok);
    let o = run(&mut f, r#"let caller = #{name: "mallory"}; get("x")"#);
    // Shadowing the variable in the script cannot change who the store thinks called.
    assert_eq!(o.status, Status::Ok);
}

#[test]
fn keys_remove_and_nested_keys() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"set("a/1", 1); set("a/2", 2); set("b", 3); remove("b"); keys("a/")"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(["a/1", "a/2"]));
    assert_eq!(f.store.get("b").unwrap(), None);
    let o = run(&mut f, r#"set("../x", 1)"#);
    assert_eq!(o.status, Status::Error);
    assert!(o.error.unwrap().contains("not allowed"));
}

#[test]
fn syntax_errors_name_the_line_and_column() {
    let mut f = fixture();
    let o = run(&mut f, "let x = 1;\nlet y = ;");
    assert_eq!(o.status, Status::Error);
    let e = o.error.unwrap();
    assert!(e.contains("syntax error") && e.contains("line 2"), "{e}");
}

#[test]
fn thrown_errors_are_errors_with_the_value() {
    let mut f = fixture();
    let o = run(&mut f, "\n throw \"no funds\";");
    assert_eq!(o.status, Status::Error);
    let e = o.error.unwrap();
    assert!(e.contains("no funds") && e.contains("line 2"), "{e}");
}

#[test]
fn endless_loop_hits_max_operations() {
    let mut f = fixture();
    let l = Limits {
        max_operations: 50_000,
        ..Limits::default()
    };
    let o = run_with(&mut f, "loop { }", &l);
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_operations (50000)"));
}

#[test]
fn endless_loop_hits_wall_time() {
    let mut f = fixture();
    let l = Limits {
        max_operations: u64::MAX / 2,
        max_wall_ms: 50,
        ..Limits::default()
    };
    let o = run_with(&mut f, "let x = 0; loop { x += 1; }", &l);
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_wall_ms (50)"));
}

#[test]
fn memory_bombs_hit_size_limits() {
    let mut f = fixture();
    // Each bomb must meet its size limit, not the wall clock of a loaded machine.
    let roomy = Limits {
        max_wall_ms: 120_000,
        ..Limits::default()
    };
    let run = |f: &mut Fixture, src: &str| run_with(f, src, &roomy);
    let o = run(&mut f, r#"let s = "xxxxxxxx"; loop { s += s; }"#);
    assert_eq!(o.status, Status::Limit);
    assert!(
        o.error.as_ref().unwrap().contains("max_string_size"),
        "{:?}",
        o.error
    );
    let o = run(&mut f, "let a = []; loop { a.push(1); }");
    assert_eq!(o.status, Status::Limit);
    assert!(
        o.error.as_ref().unwrap().contains("max_array_size"),
        "{:?}",
        o.error
    );
    let l = Limits {
        max_map_size: 1000,
        ..roomy
    };
    let o = run_with(
        &mut f,
        "let m = #{}; for i in 0..5000 { m[`k${i}`] = i; } m.len()",
        &l,
    );
    assert_eq!(o.status, Status::Limit);
    assert!(
        o.error.as_ref().unwrap().contains("max_map_size"),
        "{:?}",
        o.error
    );
    // Inside an endless `loop` Rhai does not check the map's size; the operation
    // budget bounds it instead (and so its memory).
    let o = run(
        &mut f,
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
    );
    assert_eq!(o.status, Status::Limit);
    let e = o.error.unwrap();
    assert!(
        e.contains("max_map_size") || e.contains("max_operations"),
        "{e}"
    );
}

#[test]
fn deep_recursion_hits_call_levels_not_the_stack() {
    let mut f = fixture();
    let o = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || run(&mut f, "fn r(n) { r(n + 1) } r(0)"))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_call_levels"));
}

#[test]
fn huge_output_hits_the_output_limit() {
    let mut f = fixture();
    let l = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    let o = run_with(&mut f, r#"loop { print("0123456789"); }"#, &l);
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_output_bytes (1000)"));
    assert!(o.output.len() <= 1000);
}

#[test]
fn binary_and_huge_scripts_are_refused() {
    let mut f = fixture();
    let stop = AtomicBool::new(false);
    let params = json!({});
    let l = Limits::default();
    let mut e = ScriptEngine::new(f.cache.clone(), Library::Embedded);
    let bad = [0xffu8, 0xfe, 0x00];
    let input = RunInput {
        script_name: "bin.rhai",
        source: &bad,
        caller: "a",
        target: "a",
        params: &params,
        limits: &l,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    let o = e.run(&input, &mut f.store, &OwnerHost);
    assert_eq!(o.status, Status::Error);
    assert!(o.error.unwrap().contains("not UTF-8"));
    let big = vec![b' '; (l.max_script_bytes + 1) as usize];
    let input = RunInput {
        source: &big,
        ..input
    };
    let o = e.run(&input, &mut f.store, &OwnerHost);
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_script_bytes"));
}

#[test]
fn eval_is_disabled_and_there_is_no_file_access() {
    let mut f = fixture();
    let o = run(&mut f, r#"eval("1")"#);
    assert_ne!(o.status, Status::Ok);
    let o = run(&mut f, r#"import "/etc/passwd" as p; 1"#);
    assert_ne!(o.status, Status::Ok);
}

#[test]
fn modules_peer_first_then_library_and_lib_prefix() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"import "counter" as c; c::incr("v"); c::incr("v")"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(2));
    // The peer overrides the library's counter, and can still reach the original.
    f.store
        .set_module(
            "counter",
            b"import \"lib/counter\" as base; fn incr(k) { base::add(k, 100) }",
        )
        .unwrap();
    let o = run(&mut f, r#"import "counter" as c; c::incr("v")"#);
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(102));
    let o = run(&mut f, r#"import "nope" as n; 1"#);
    assert_eq!(o.status, Status::Error);
    assert!(o.error.unwrap().contains("nope"));
}

#[test]
fn send_is_recorded_and_bounded() {
    let mut f = fixture();
    let o = run(
        &mut f,
        r#"send("bob", "1 + 1"); send("carol", "2", #{x: 1}); 0"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.sends.len(), 2);
    assert_eq!(o.sends[1].params, json!({"x": 1}));
    let l = Limits {
        max_sends: 10,
        ..Limits::default()
    };
    let o = run_with(&mut f, r#"for i in 0..1000 { send("bob", "1"); } 0"#, &l);
    assert_eq!(o.status, Status::Limit);
    assert!(o.error.unwrap().contains("max_sends (10)"));
    let o = run(&mut f, r#"send("../bob", "1")"#);
    assert_eq!(o.status, Status::Error);
}

#[test]
fn limits_cannot_be_caught_by_try() {
    let mut f = fixture();
    let l = Limits {
        max_operations: 10_000,
        ..Limits::default()
    };
    let o = run_with(&mut f, "try { loop {} } catch { 1 }", &l);
    assert_eq!(o.status, Status::Limit);
}

#[test]
fn stop_flag_interrupts() {
    let mut f = fixture();
    let stop = AtomicBool::new(true);
    let params = json!({});
    let l = Limits::default();
    let input = RunInput {
        script_name: "t.rhai",
        source: b"loop {}",
        caller: "a",
        target: "a",
        params: &params,
        limits: &l,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    let mut e = ScriptEngine::new(f.cache.clone(), Library::Embedded);
    let o = e.run(&input, &mut f.store, &OwnerHost);
    assert_eq!(o.status, Status::Interrupted);
}

#[test]
fn compiled_scripts_are_cached_by_content() {
    let mut f = fixture();
    run(&mut f, "1 + 1");
    run(&mut f, "1 + 1");
    assert_eq!(f.cache.len(), 1);
    run(&mut f, "1 + 2");
    assert_eq!(f.cache.len(), 2);
}

#[test]
fn stop_flag_set_mid_run_interrupts_it() {
    let mut f = fixture();
    let stop = Arc::new(AtomicBool::new(false));
    let params = json!({});
    let l = Limits {
        max_operations: u64::MAX / 2,
        max_wall_ms: 60_000,
        ..Limits::default()
    };
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        s2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let input = RunInput {
        script_name: "t.rhai",
        source: b"let i = 0; while i < 200000000 { i += 1; } i",
        caller: "a",
        target: "a",
        params: &params,
        limits: &l,
        stop: &stop,
        send_block: None,
        yield_at: None,
        chain: &[],
        budget: 0,
    };
    let started = std::time::Instant::now();
    let mut e = ScriptEngine::new(f.cache.clone(), Library::Embedded);
    let o = e.run(&input, &mut f.store, &OwnerHost);
    t.join().unwrap();
    assert_eq!(o.status, Status::Interrupted, "{:?}", o.error);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
