//! The engine on its own: host API, sandbox limits, error messages.

use super::*;
use crate::store::{Documents, SqliteStore, StateKeys};
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

fn assert_limit(o: &Outcome, names: &[&str]) {
    assert_eq!(o.status, Status::Limit, "{:?}", o.error);
    let e = o.error.as_deref().unwrap();
    assert!(names.iter().any(|n| e.contains(n)), "{e}");
}

#[test]
fn memory_bombs_hit_the_memory_limit() {
    let mut f = fixture();
    // Each bomb must meet its limit, not the wall clock of a loaded machine.
    let roomy = Limits {
        max_wall_ms: 120_000,
        max_operations: 1 << 40,
        max_memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let run = |f: &mut Fixture, src: &str| run_with(f, src, &roomy);
    for bomb in [
        r#"let s = "xxxxxxxx"; loop { s += s; }"#,
        r#"let s = "x"; loop { s = s + s; }"#,
        "let a = []; loop { a.push(1); }",
        "let a = [1]; loop { a += a; }",
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        "let a = []; let i = 0; loop { a.push(`${i}`); i += 1; }",
        "let a = [[]]; loop { a.push(a[a.len() - 1] + [1]); }",
        "let b = blob(); loop { b += b + blob(10); }",
        "fn f(a) { a.push(a.len()); f(a) } let all = []; loop { all.push([1, 2, 3]); }",
    ] {
        let o = run(&mut f, bomb);
        assert_limit(&o, &["max_memory_bytes (16777216) reached: the run held"]);
    }
}

#[test]
fn one_step_bombs_are_refused_before_allocating() {
    let mut f = fixture();
    // A petabyte: had any of these been attempted, the allocation would fail and
    // the process abort.
    for (src, limit) in [
        (
            r#"let s = " "; s.pad(1_000_000_000_000_000, " "); s.len()"#,
            "max_string_size",
        ),
        (
            r#"let s = ""; s.pad(1_000_000_000_000_000, 'x'); s.len()"#,
            "max_string_size",
        ),
        (
            "let a = []; a.pad(1_000_000_000_000_000, 0); a.len()",
            "max_array_size",
        ),
        (
            "let b = blob(1_000_000_000_000_000); b.len()",
            "max_array_size",
        ),
        (
            "let b = blob(1_000_000_000_000_000, 7); b.len()",
            "max_array_size",
        ),
        (
            "let b = blob(); b.pad(1_000_000_000_000_000, 7); b.len()",
            "max_array_size",
        ),
    ] {
        let o = run(&mut f, src);
        assert_limit(&o, &[&format!("{limit} (")]);
        assert!(o.error.unwrap().contains("a step would make"));
    }
    // Within the size limits but over the memory left: refused before the step
    // too (the message says what the step would allocate, not what was held).
    let l = Limits {
        max_memory_bytes: 1 << 20,
        max_string_size: 1 << 30,
        max_array_size: 1 << 30,
        ..Limits::default()
    };
    for src in [
        r#"let s = ""; s.pad(100_000_000, "x"); s.len()"#,
        "let a = []; a.pad(10_000_000, 0); a.len()",
        r#"let a = []; let y = "x"; y.pad(10_000, "y"); a.pad(1000, y); a.len()"#,
        "let b = blob(100_000_000); b.len()",
    ] {
        let o = run_with(&mut f, src, &l);
        assert_limit(
            &o,
            &["max_memory_bytes (1048576) reached: a step would allocate"],
        );
    }
    // Under every limit, the same steps work as Rhai's own.
    let o = run(
        &mut f,
        r#"let s = "ab"; s.pad(5, "xy"); let t = "a"; t.pad(3, 'é');
           let a = [1]; a.pad(3, "z"); let b = blob(2, 0x141); b.pad(4, 9);
           [s, t, a, b.to_array(), blob(1).len()]"#,
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(
        o.value,
        json!(["abxyx", "aéé", [1, "z", "z"], [0x41, 0x41, 9, 9], 1])
    );
}

#[test]
fn values_leaving_a_run_meet_the_size_limits() {
    let mut f = fixture();
    let l = Limits {
        max_array_size: 1000,
        max_map_size: 1000,
        max_string_size: 1000,
        ..Limits::default()
    };
    let cases = [
        ("let a = []; a.pad(999, 0); a", None),
        ("let a = []; for i in 0..2000 { a.push(i) } a.len()", None),
        (
            "let a = []; for i in 0..2000 { a.push(i) } a",
            Some("max_array_size (1000)"),
        ),
        (
            "let m = #{}; for i in 0..2000 { m[`k${i}`] = i } m",
            Some("max_map_size (1000)"),
        ),
        (
            r#"let s = ""; for i in 0..2000 { s += "x" } set("k", s); 1"#,
            Some("max_string_size (1000)"),
        ),
        (
            r#"let a = []; for i in 0..600 { a.push([i, i]) } set("k", a); 1"#,
            Some("max_array_size (1000)"),
        ),
        (
            r#"let m = #{}; for i in 0..2000 { m[`k${i}`] = i } send("bob", "1", m); 1"#,
            Some("max_map_size (1000)"),
        ),
    ];
    for (src, limit) in cases {
        let o = run_with(&mut f, src, &l);
        match limit {
            None => assert_eq!(o.status, Status::Ok, "{src}: {:?}", o.error),
            Some(name) => assert_limit(&o, &[name]),
        }
    }
    assert_eq!(f.store.get("k").unwrap(), None);
}

#[test]
fn big_values_are_built_at_the_owners_limits() {
    let mut f = fixture();
    // Rhai's own for2.rhai: a million numbers pushed, then summed. With Rhai's size
    // limits set this was quadratic and never ended within max_wall_ms.
    let o = run_with(
        &mut f,
        "let a = []; for i in 0..1_000_000 { a.push(i) } let s = 0; for x in a { s += x } s",
        &Limits::own(),
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(499_999_500_000i64));
    let o = run_with(
        &mut f,
        "let m = #{}; for i in 0..10_000 { m[`key${i}`] = `value ${i}` } m.len()",
        &Limits::own(),
    );
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, json!(10_000));
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

#[test]
fn steps_on_big_values_meet_the_wall_limit_without_waiting_a_thousand_steps() {
    let mut f = fixture();
    // Each step copies 16 MiB: at 1,024 steps between looks at the clock this ran
    // on for seconds past its 50 ms; looked at every step while the run holds a
    // big value, it ends after a few dozen.
    let l = Limits {
        max_wall_ms: 50,
        max_operations: 1 << 40,
        max_memory_bytes: 256 << 20,
        max_string_size: 1 << 30,
        ..Limits::default()
    };
    let src = r#"let s = ""; s.pad(16_000_000, "x"); loop { let t = s.to_upper(); }"#;
    let o = run_with(&mut f, src, &l);
    assert_limit(&o, &["max_wall_ms (50) reached"]);
    assert!(o.operations < 512, "{} operations", o.operations);
}

#[test]
fn closures_stored_in_what_they_captured_are_freed_when_the_run_ends() {
    let mut f = fixture();
    // Each round makes a cycle: x holds f, f captured x. Rhai frees by reference
    // counting only, so without the run's shared values emptied at its end each
    // cycle (and the 4 KiB string in it) stayed allocated for good.
    let src = r#"
        fn cycle(i) { let s = " "; s.pad(4096, " "); let x = #{ s: s }; let f = || x; x.f = f; i }
        let n = 0;
        for i in 0..500 { let y = #{ a: [i] }; let g = || y; y.g = g; n += cycle(i); }
        let top = #{}; let h = || top; top.h = h;
        n
    "#;
    let l = Limits {
        max_operations: 1 << 30,
        max_wall_ms: 60_000,
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    run_with(&mut f, "1", &l); // the engine and its caches made first
    let before = super::alloc::thread_held();
    let o = run_with(&mut f, src, &l);
    let left = super::alloc::thread_held() - before;
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert_eq!(o.value, serde_json::json!(124_750));
    drop(o);
    // 500 cycles of over 4 KiB would leave more than 2 MB; the compiled script
    // stays in the cache.
    assert!(left < 256 << 10, "{left} bytes left after the run");
}
