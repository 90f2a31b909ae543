//! The Rhai engine: this file is the sandboxed run (compile, run, classify its
//! end); beside it are the sandbox limits (`limits`), the host API and module
//! resolver (`host`), `undo` and `restore_to` (`undo`), the compiled-script cache (`cache`), value sizes (`sizes`)
//! and the counting allocator (`alloc`).
//!
//! One [`ScriptEngine`] lives on each runner thread. A run installs its context
//! (the target's store, caller, limits, output buffer) in a thread-local for the
//! duration of `eval`, so the registered host functions reach it without locks.

mod alloc;
pub(crate) mod cache;
mod db;
#[cfg(test)]
mod db_tests;
mod host;
mod limits;
mod sizes;
mod undo;

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Map, Scope};
use serde_json::Value;

pub use cache::AstCache;
pub use host::{Access, Capability, Host, OwnerHost, RowAction, SendRequest};
pub use limits::{Bounded, Limits};

use crate::store::Store;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Denied,
    Limit,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Denied => "denied",
            Status::Limit => "limit",
            Status::Interrupted => "interrupted",
        }
    }
}

/// What a run produced. Effects on the store were made in the caller's savepoint;
/// the caller keeps them only if `status` is `Ok`.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub value: Value,
    pub output: String,
    pub error: Option<String>,
    pub operations: u64,
    pub logs: Vec<String>,
    pub sends: Vec<SendRequest>,
    pub duration: Duration,
    /// The script changed the target's state (its changes are kept when `status`
    /// is `Ok`).
    pub wrote: bool,
    /// The script wrote rows of declared tables (kept when `status` is `Ok`).
    pub wrote_rows: bool,
    /// The store failed while keeping or undoing the script's effects: the caller
    /// must abandon its transaction.
    pub storage_error: Option<crate::error::Error>,
}

/// Everything a run needs besides the engine.
pub struct RunInput<'a> {
    pub script_name: &'a str,
    pub source: &'a [u8],
    pub caller: &'a str,
    pub target: &'a str,
    pub params: &'a Value,
    pub limits: &'a Limits,
    /// Set by the daemon when it stops: the run ends as `interrupted`.
    pub stop: &'a AtomicBool,
    /// When set, `send` ends the run with this message (status `limit`).
    pub send_block: Option<&'a str>,
    /// When set, a run still going at this instant ends as `interrupted` (its
    /// effects rolled back, the script still queued): runs made inside a write
    /// transaction give way so that the closes waiting for it are not held up.
    pub yield_at: Option<Instant>,
    /// Provenance: the peers whose scripts led to this one, the origin first and
    /// the direct caller last (`caller.origin`, `caller.chain`). Empty: `[caller]`.
    pub chain: &'a [String],
    /// Runs this run and everything it sends may make in all (its share of its
    /// chain's budget): it may send at most `budget - 1` scripts. 0: no budget.
    pub budget: u64,
}

/// Deepest nesting of arrays and objects a value may have to be kept or shown:
/// below the JSON parser's own limit (128), so whatever is written can be read back.
pub const MAX_VALUE_DEPTH: usize = 100;

/// How deeply `v` nests arrays and objects (a scalar is 0).
pub fn value_depth(v: &Value) -> usize {
    // Iterative: a value deep enough to matter must not cost stack.
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// `Err` when `v` nests too deeply to be written as JSON and read back.
pub fn check_depth(v: &Value, what: &str) -> crate::error::Result<()> {
    let d = value_depth(v);
    if d > MAX_VALUE_DEPTH {
        return Err(crate::error::err!(
            libc::EINVAL,
            "{what} nests arrays/maps {d} levels deep: at most {MAX_VALUE_DEPTH} can be kept as JSON"
        ));
    }
    Ok(())
}

/// Where `import "lib/x"` and unqualified imports without a peer module look.
#[derive(Debug, Clone, Default)]
pub enum Library {
    /// The library built into the binary (`scripts/lib` at build time).
    #[default]
    Embedded,
    /// A folder of `NAME.rhai` files.
    Dir(std::path::PathBuf),
}

/// The shared module library compiled into the binary.
pub const EMBEDDED_LIB: &[(&str, &str)] = &[
    ("counter", include_str!("../../scripts/lib/counter.rhai")),
    ("kv", include_str!("../../scripts/lib/kv.rhai")),
    ("audit", include_str!("../../scripts/lib/audit.rhai")),
];

impl Library {
    pub fn load(&self, name: &str) -> Option<String> {
        match self {
            Library::Embedded => EMBEDDED_LIB
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.to_string()),
            Library::Dir(d) => {
                crate::names::check_module_name(name).ok()?;
                std::fs::read_to_string(d.join(format!("{name}.rhai"))).ok()
            }
        }
    }
}

pub struct ScriptEngine {
    engine: Engine,
    cache: Arc<AstCache>,
}

impl ScriptEngine {
    pub fn new(cache: Arc<AstCache>, library: Library) -> ScriptEngine {
        let mut engine = Engine::new();
        // No dynamic code: every script that runs is one the policy checked.
        engine.disable_symbol("eval");
        host::register(&mut engine);
        undo::register(&mut engine);
        db::register(&mut engine);
        sizes::register(&mut engine);
        engine.set_module_resolver(host::Resolver {
            cache: cache.clone(),
            library,
        });
        engine.on_print(host::on_print);
        engine.on_debug(|s, _, _| host::on_print(s));
        engine.on_progress(host::on_progress);
        ScriptEngine { engine, cache }
    }

    fn apply(&mut self, l: &Limits) {
        let e = &mut self.engine;
        e.set_max_operations(l.max_operations.max(1));
        e.set_max_call_levels(l.max_call_levels as usize);
        e.set_max_expr_depths(
            l.max_expr_depth as usize,
            (l.max_expr_depth / 2).max(1) as usize,
        );
        // Rhai's string, array and map size limits stay unset (0): see `sizes`.
        e.set_max_modules(l.max_modules as usize);
    }

    /// Compiles (or takes from the cache) a script; errors are (status, message).
    pub fn compile(
        &mut self,
        name: &str,
        source: &[u8],
        limits: &Limits,
    ) -> Result<Arc<rhai::AST>, (Status, String)> {
        if source.len() as u64 > limits.max_script_bytes {
            return Err((
                Status::Limit,
                format!(
                    "script {name} is {} bytes: max_script_bytes is {}",
                    source.len(),
                    limits.max_script_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(source).map_err(|e| {
            (
                Status::Error,
                format!(
                    "script {name} is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        if text.contains('\0') {
            return Err((
                Status::Error,
                format!("script {name} is binary (it contains NUL bytes)"),
            ));
        }
        self.apply(limits);
        self.cache.compile(&self.engine, text).map_err(|e| {
            let limit = matches!(e.err_type(), rhai::ParseErrorType::ExprTooDeep);
            if limit {
                (
                    Status::Limit,
                    format!(
                        "max_expr_depth ({}) reached {}",
                        limits.max_expr_depth,
                        e.position()
                    ),
                )
            } else {
                (Status::Error, format!("syntax error: {e}"))
            }
        })
    }

    /// Runs one script against `store`, inside the caller's transaction. The
    /// script's own effects sit in a savepoint opened at its first write: kept
    /// when the status is `ok`, undone otherwise.
    pub fn run(&mut self, input: &RunInput, store: &mut dyn Store, host: &dyn Host) -> Outcome {
        let started = Instant::now();
        let fail = |status, msg: String| Outcome {
            status,
            value: Value::Null,
            output: String::new(),
            error: Some(msg),
            operations: 0,
            logs: vec![],
            sends: vec![],
            duration: started.elapsed(),
            wrote: false,
            wrote_rows: false,
            storage_error: None,
        };
        let ast = match self.compile(input.script_name, input.source, input.limits) {
            Ok(a) => a,
            Err((s, m)) => return fail(s, m),
        };
        if let Err(denied) = host.check_script(&ast) {
            return fail(Status::Denied, denied.message);
        }
        self.apply(input.limits);
        let mut scope = scope_of(input);
        let deadline = started + Duration::from_millis(input.limits.max_wall_ms);
        let guard = host::install(store, host, input, deadline);
        // The shared values the run makes (what closures capture), emptied when
        // its value is read: a closure stored in a variable it captured is a
        // reference cycle that would never be freed.
        let cells = rhai::shared_cells::track();
        let result = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &ast);
        let ctx = guard.finish();

        let savepoint = ctx.savepoint;
        let mut out = Outcome {
            status: Status::Ok,
            value: Value::Null,
            output: ctx.output,
            error: None,
            operations: ctx.ops + ctx.db_ops,
            logs: ctx.logs,
            sends: ctx.sends,
            duration: started.elapsed(),
            wrote: savepoint,
            wrote_rows: ctx.wrote_rows,
            storage_error: ctx.storage_error,
        };
        let value = match result {
            Ok(v) => value_of(&v, input.limits),
            Err(e) => Err(classify(&e, input.limits, ctx.fatal)),
        };
        cells.end();
        drop(scope);
        match value {
            Ok(j) => out.value = j,
            Err((status, msg)) => {
                out.status = status;
                out.error = Some(msg);
            }
        }
        if out.status != Status::Ok {
            out.sends.clear();
            out.logs.clear();
        }
        if savepoint {
            let r = if out.status == Status::Ok {
                store.release()
            } else {
                store.rollback_to()
            };
            if let Err(e) = r {
                out.storage_error.get_or_insert(e);
            }
        }
        out
    }
}

/// The constants a script sees: `caller` (its name, origin, chain and params)
/// and `target` (its name).
fn scope_of(input: &RunInput) -> Scope<'static> {
    let mut caller = Map::new();
    caller.insert("name".into(), input.caller.into());
    let chain: rhai::Array = if input.chain.is_empty() {
        vec![input.caller.into()]
    } else {
        input.chain.iter().map(|p| p.as_str().into()).collect()
    };
    caller.insert("origin".into(), chain[0].clone());
    caller.insert("chain".into(), chain.into());
    let params = rhai::serde::to_dynamic(input.params).unwrap_or(Dynamic::UNIT);
    caller.insert("params".into(), params);
    let mut target = Map::new();
    target.insert("name".into(), input.target.into());
    let mut scope = Scope::new();
    scope.push_constant("caller", caller);
    scope.push_constant("target", target);
    scope.push_constant("db", db::Db);
    scope
}

/// A script's value as the JSON of its result. A value that could not be read
/// back would poison its result's delivery: the run that made it fails instead.
fn value_of(v: &Dynamic, limits: &Limits) -> Result<Value, (Status, String)> {
    let j = serde_json::to_value(v).map_err(|e| {
        let msg = format!("the script's value cannot be shown as JSON: {e}");
        (Status::Error, msg)
    })?;
    check_depth(&j, "the script's value").map_err(|e| (Status::Error, e.message))?;
    match limits::size_error(
        &j,
        "the script's value",
        limits.max_array_size,
        limits.max_map_size,
        limits.max_string_size,
    ) {
        None => Ok(j),
        Some(e) => Err((Status::Limit, e)),
    }
}

/// Maps a Rhai error to a status and a message that says what happened and where.
fn classify(e: &EvalAltResult, l: &Limits, fatal: Option<(Status, String)>) -> (Status, String) {
    let mut root = e;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
    | EvalAltResult::ErrorInModule(_, inner, _) = root
    {
        root = inner;
    }
    let pos = root.position();
    let at = if pos.is_none() {
        String::new()
    } else {
        format!(" at {pos}")
    };
    match root {
        EvalAltResult::ErrorTerminated(..) => {
            fatal.unwrap_or((Status::Interrupted, format!("run terminated{at}")))
        }
        EvalAltResult::ErrorTooManyOperations(_) => (
            Status::Limit,
            format!("max_operations ({}) reached{at}", l.max_operations),
        ),
        EvalAltResult::ErrorStackOverflow(_) => (
            Status::Limit,
            format!(
                "max_call_levels ({}) reached: recursion too deep{at}",
                l.max_call_levels
            ),
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            let which = if what.contains("Length of string") || what.contains("string") {
                format!("max_string_size ({})", l.max_string_size)
            } else if what.contains("array") || what.contains("Array") {
                format!("max_array_size ({})", l.max_array_size)
            } else if what.contains("map") || what.contains("Map") {
                format!("max_map_size ({})", l.max_map_size)
            } else {
                "a size limit".to_string()
            };
            (Status::Limit, format!("{which} reached: {what}{at}"))
        }
        EvalAltResult::ErrorTooManyModules(_) => (
            Status::Limit,
            format!("max_modules ({}) reached{at}", l.max_modules),
        ),
        EvalAltResult::ErrorParsing(rhai::ParseErrorType::ExprTooDeep, _) => (
            Status::Limit,
            format!("max_expr_depth ({}) reached{at}", l.max_expr_depth),
        ),
        EvalAltResult::ErrorRuntime(v, _) => (Status::Error, format!("thrown: {v}{at}")),
        _ => (Status::Error, e.to_string()),
    }
}

thread_local! {
    static ENGINE: RefCell<Option<ScriptEngine>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's engine, creating it on first use.
pub fn with_engine<R>(
    cache: &Arc<AstCache>,
    lib: &Library,
    f: impl FnOnce(&mut ScriptEngine) -> R,
) -> R {
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        let eng = e.get_or_insert_with(|| ScriptEngine::new(cache.clone(), lib.clone()));
        f(eng)
    })
}

#[cfg(test)]
mod tests;
