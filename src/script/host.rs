//! The host API a script sees (`get`, `set`, `send`, ...), the module resolver and
//! the engine callbacks, all reaching the current run through a thread-local.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Module, Position, Scope, AST};
use serde_json::Value;

use super::{AstCache, Library, RunInput, Status};
use crate::error::Result;
use crate::names::{check_key, check_module_name, check_peer_name};
use crate::store::Store;

/// What a host call needs the policy's leave for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Read,
    Write,
    Send,
    Import,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::Send => "send",
            Capability::Import => "import",
        }
    }
}

/// An action on a row of a declared table (DESIGN §7), as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowAction {
    Select,
    Insert,
    Update,
    Delete,
}

impl RowAction {
    pub const ALL: [RowAction; 4] = [
        RowAction::Select,
        RowAction::Insert,
        RowAction::Update,
        RowAction::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowAction::Select => "select",
            RowAction::Insert => "insert",
            RowAction::Update => "update",
            RowAction::Delete => "delete",
        }
    }
}

/// How far a caller may do a row action on a table, before looking at rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// On every row (the owner; a permit without conditions on the row).
    All,
    /// On the rows the policy allows, each decided.
    PerRow,
    /// On no row.
    None,
}

/// A `send(peer, script, params)` call, delivered after the run commits.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub to: String,
    pub source: String,
    pub params: Value,
}

/// The policy side of a run: what the caller may do at the target.
pub trait Host {
    /// `Err(message)` names the action and the deciding policy.
    fn check(&self, cap: Capability, object: &str) -> Result<()>;
    /// A static check over the compiled script before it runs.
    fn check_script(&self, _ast: &AST) -> Result<()> {
        Ok(())
    }
    /// Reads the caller's state, as the caller's own policy lets the target.
    fn caller_get(&self, key: &str) -> Result<Option<Value>>;
    /// Whether a peer named `peer` exists for `send` (here, or in the lattice).
    fn knows_peer(&self, _peer: &str) -> bool {
        true
    }
    /// How far the caller may do `action` on rows of `table` (none unless a
    /// host says otherwise).
    fn row_access(&self, _action: RowAction, _table: &str) -> Access {
        Access::None
    }
    /// Whether the caller may do `action` on `row` of `table`; `Err` names the
    /// action and the deciding policy.
    fn check_row(
        &self,
        action: RowAction,
        table: &str,
        _row: &crate::tables::rows::Row,
    ) -> Result<()> {
        Err(crate::error::err!(
            libc::EACCES,
            "{} on table {table} is not allowed here",
            action.as_str()
        ))
    }
}

/// The owner's own scripts: every capability; the caller's state is the target's.
pub struct OwnerHost;

impl Host for OwnerHost {
    fn check(&self, _: Capability, _: &str) -> Result<()> {
        Ok(())
    }
    fn row_access(&self, _: RowAction, _: &str) -> Access {
        Access::All
    }
    fn check_row(&self, _: RowAction, _: &str, _: &crate::tables::rows::Row) -> Result<()> {
        Ok(())
    }
    fn caller_get(&self, _key: &str) -> Result<Option<Value>> {
        // Never reached: the owner's caller_get reads its own store directly.
        Ok(None)
    }
}

pub(super) struct Ctx {
    store: *mut (dyn Store + 'static),
    host: *const (dyn Host + 'static),
    stop: *const AtomicBool,
    pub(super) caller: String,
    pub(super) target: String,
    deadline: Instant,
    yield_at: Option<Instant>,
    /// The earlier of `deadline` and `yield_at` on the coarse clock (`coarse_ns`):
    /// while the run holds a big value, every operation compares against it.
    check_at: u64,
    max_output: usize,
    max_sends: usize,
    max_wall_ms: u64,
    max_string: usize,
    max_array: usize,
    max_map: usize,
    max_value: u64,
    /// `max_memory_bytes`, and the thread's count of held bytes when the run began.
    max_memory: i64,
    mem_base: i64,
    pub(super) output: String,
    output_over: bool,
    pub(super) ops: u64,
    /// Work of queries of declared tables, in operations (beside Rhai's `ops`).
    pub(super) db_ops: u64,
    pub(super) max_ops: u64,
    pub(super) logs: Vec<String>,
    pub(super) sends: Vec<SendRequest>,
    pub(super) fatal: Option<(Status, String)>,
    /// Whether the run's savepoint is open (opened at the first write).
    pub(super) savepoint: bool,
    /// Whether the run wrote rows of declared tables.
    pub(super) wrote_rows: bool,
    pub(super) storage_error: Option<crate::error::Error>,
    send_block: Option<String>,
    /// The run's share of its chain's budget (0: none) and the chain's origin.
    budget: u64,
    pub(super) origin: String,
}

thread_local! {
    static CTX: RefCell<Option<Ctx>> = const { RefCell::new(None) };
}

/// Clears the run context when dropped, also when a run panics.
pub(super) struct Guard(());

impl Guard {
    pub(super) fn finish(self) -> Ctx {
        let c = CTX
            .with(|c| c.borrow_mut().take())
            .expect("run context installed");
        std::mem::forget(self);
        c
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        CTX.with(|c| c.borrow_mut().take());
    }
}

/// Installs the run context. The pointers stay valid until the guard is finished or
/// dropped: `ScriptEngine::run` holds `store` and `host` borrowed for that long.
pub(super) fn install(
    store: &mut dyn Store,
    host: &dyn Host,
    input: &RunInput,
    deadline: Instant,
) -> Guard {
    // SAFETY: only lifetimes are erased; the guard's scope bounds every use.
    let store: *mut (dyn Store + 'static) = unsafe { std::mem::transmute(store as *mut dyn Store) };
    let host: *const (dyn Host + 'static) = unsafe { std::mem::transmute(host as *const dyn Host) };
    let ctx = Ctx {
        store,
        host,
        stop: input.stop as *const AtomicBool,
        caller: input.caller.to_string(),
        target: input.target.to_string(),
        deadline,
        yield_at: input.yield_at,
        check_at: coarse_at(deadline.min(input.yield_at.unwrap_or(deadline))),
        max_output: input.limits.max_output_bytes as usize,
        max_sends: input.limits.max_sends as usize,
        max_wall_ms: input.limits.max_wall_ms,
        max_string: input.limits.max_string_size as usize,
        max_array: input.limits.max_array_size as usize,
        max_map: input.limits.max_map_size as usize,
        max_value: input.limits.max_value_bytes,
        max_memory: input.limits.max_memory_bytes.min(i64::MAX as u64) as i64,
        mem_base: super::alloc::thread_held(),
        output: String::new(),
        output_over: false,
        ops: 0,
        db_ops: 0,
        max_ops: input.limits.max_operations,
        logs: Vec::new(),
        sends: Vec::new(),
        fatal: None,
        savepoint: false,
        wrote_rows: false,
        storage_error: None,
        send_block: input.send_block.map(str::to_string),
        budget: input.budget,
        origin: input
            .chain
            .first()
            .map_or(input.caller, String::as_str)
            .to_string(),
    };
    CTX.with(|c| *c.borrow_mut() = Some(ctx));
    Guard(())
}

pub(super) type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

pub(super) fn with_ctx<T>(f: impl FnOnce(&mut Ctx) -> RhaiResult<T>) -> RhaiResult<T> {
    CTX.with(|c| match c.borrow_mut().as_mut() {
        Some(ctx) => f(ctx),
        None => Err("host functions are only available inside a run".into()),
    })
}

/// Ends the run for good (scripts cannot catch this): a denial or a limit.
pub(super) fn fatal(ctx: &mut Ctx, status: Status, msg: String) -> Box<EvalAltResult> {
    ctx.fatal = Some((status, msg.clone()));
    Box::new(EvalAltResult::ErrorTerminated(msg.into(), Position::NONE))
}

fn check(ctx: &mut Ctx, cap: Capability, object: &str) -> RhaiResult<()> {
    // SAFETY: see `install`.
    let host = unsafe { &*ctx.host };
    host.check(cap, object)
        .map_err(|e| fatal(ctx, Status::Denied, e.message))
}

/// `max_value_bytes`: the value's JSON encoding, counted without building it.
fn check_value_size(ctx: &mut Ctx, key: &str, v: &Value) -> RhaiResult<()> {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, v);
    if n.0 > ctx.max_value {
        let msg = format!(
            "max_value_bytes ({}) reached: the value for key {key:?} is {} bytes as JSON",
            ctx.max_value, n.0
        );
        return Err(fatal(ctx, Status::Limit, msg));
    }
    Ok(())
}

fn store(ctx: &mut Ctx) -> &mut dyn Store {
    // SAFETY: see `install`.
    unsafe { &mut *ctx.store }
}

/// The store, for a write: the run's savepoint is opened first.
pub(super) fn store_w(ctx: &mut Ctx) -> RhaiResult<&mut dyn Store> {
    if !ctx.savepoint {
        // SAFETY: see `install`.
        if let Err(e) = unsafe { &mut *ctx.store }.savepoint() {
            ctx.storage_error = Some(e.clone());
            return Err(fatal(ctx, Status::Error, e.message));
        }
        ctx.savepoint = true;
    }
    Ok(store(ctx))
}

fn bad_key(key: &str) -> RhaiResult<()> {
    check_key(key).map_err(|e| e.message.into())
}

fn storage_err(e: crate::error::Error) -> Box<EvalAltResult> {
    e.message.into()
}

pub(super) fn to_json(v: &Dynamic) -> RhaiResult<Value> {
    let j = serde_json::to_value(v).map_err(|e| format!("value cannot be stored: {e}"))?;
    super::check_depth(&j, "value").map_err(|e| -> Box<EvalAltResult> { e.message.into() })?;
    Ok(j)
}

/// `max_string_size`, `max_array_size` and `max_map_size` on a value leaving the
/// run (stored, sent): once per value, not at every change inside the script.
fn check_sizes(ctx: &mut Ctx, what: &str, v: &Value) -> RhaiResult<()> {
    let (a, m, s) = (ctx.max_array, ctx.max_map, ctx.max_string);
    match super::limits::size_error(v, what, a as u64, m as u64, s as u64) {
        Some(msg) => Err(fatal(ctx, Status::Limit, msg)),
        None => Ok(()),
    }
}

fn to_dyn(v: Option<Value>) -> RhaiResult<Dynamic> {
    match v {
        None => Ok(Dynamic::UNIT),
        Some(v) => rhai::serde::to_dynamic(v),
    }
}

/// The run's context as `db` (`script/db.rs`) uses it.
impl Ctx {
    pub(super) fn store(&mut self) -> &mut dyn Store {
        store(self)
    }
    /// The store, for a write of rows.
    pub(super) fn store_w(&mut self) -> RhaiResult<&mut dyn Store> {
        self.wrote_rows = true;
        store_w(self)
    }
    pub(super) fn host(&self) -> &dyn Host {
        // SAFETY: see `install`.
        unsafe { &*self.host }
    }
    /// The host, borrowed apart from the context (for a closure that also uses
    /// the store). Valid for the run, like every pointer of the context.
    pub(super) fn host_ref<'a>(&self) -> &'a dyn Host {
        // SAFETY: see `install`: the host outlives the run and every use in it.
        unsafe { &*self.host }
    }
    pub(super) fn fatal(&mut self, status: Status, msg: String) -> Box<EvalAltResult> {
        fatal(self, status, msg)
    }
    pub(super) fn check_sizes(&mut self, what: &str, v: &Value) -> RhaiResult<()> {
        check_sizes(self, what, v)
    }
    /// Counts query work from here, within what the run has left.
    pub(super) fn start_work(&mut self) {
        let left = self.max_ops.saturating_sub(self.ops + self.db_ops);
        store(self).limit_work(Some(left));
    }
    pub(super) fn end_work(&mut self) {
        let s = store(self);
        let w = s.work();
        s.limit_work(None);
        self.db_ops += w;
    }
    pub(super) fn work_over(&self) -> bool {
        self.ops + self.db_ops >= self.max_ops
    }
    /// Adds work done outside SQLite; past the limit the run ends.
    pub(super) fn add_ops(&mut self, n: u64) -> RhaiResult<()> {
        self.db_ops += n;
        if self.ops + self.db_ops > self.max_ops {
            let msg = format!("max_operations ({}) reached", self.max_ops);
            return Err(fatal(self, Status::Limit, msg));
        }
        Ok(())
    }
}

/// A row action the caller may never do on `table`: the run ends `denied`.
pub(super) fn deny(c: &mut Ctx, action: RowAction, table: &str) -> Box<EvalAltResult> {
    let msg = match c.host().check_row(action, table, &Default::default()) {
        Err(e) => e.message,
        Ok(()) => format!("{} on table {table} denied", action.as_str()),
    };
    fatal(c, Status::Denied, msg)
}

/// The host API: state ([`register_state`]) and the calls that reach beyond
/// this peer's state or out of the run ([`register_calls`]); `db` and `undo`
/// register their own beside it (script/mod.rs).
pub(super) fn register(engine: &mut Engine) {
    register_state(engine);
    register_calls(engine);
}

/// `get`, `set`, `remove` and `keys` on the target's state, each checked by
/// the policy.
fn register_state(engine: &mut Engine) {
    engine.register_fn("get", |key: &str| -> RhaiResult<Dynamic> {
        bad_key(key)?;
        let v = with_ctx(|c| {
            check(c, Capability::Read, key)?;
            store(c).get(key).map_err(storage_err)
        })?;
        to_dyn(v)
    });
    engine.register_fn("set", |key: &str, value: Dynamic| -> RhaiResult<()> {
        bad_key(key)?;
        let v = to_json(&value)?;
        with_ctx(|c| {
            check(c, Capability::Write, key)?;
            check_sizes(c, &format!("the value for key {key:?}"), &v)?;
            check_value_size(c, key, &v)?;
            store_w(c)?.set(key, &v).map_err(storage_err)
        })
    });
    engine.register_fn("remove", |key: &str| -> RhaiResult<bool> {
        bad_key(key)?;
        with_ctx(|c| {
            check(c, Capability::Write, key)?;
            store_w(c)?.remove(key).map_err(storage_err)
        })
    });
    engine.register_fn("keys", readable_keys);
    engine.register_fn("keys", || readable_keys(""));
}

/// The keys under `prefix` the caller may read (the owner: all).
fn readable_keys(prefix: &str) -> RhaiResult<Array> {
    with_ctx(|c| {
        let limit = 100_000;
        let keys = store(c).keys(prefix, limit).map_err(storage_err)?;
        // SAFETY: see `install`.
        let host = unsafe { &*c.host };
        Ok(keys
            .into_iter()
            .filter(|k| host.check(Capability::Read, k).is_ok())
            .map(Dynamic::from)
            .collect())
    })
}

/// `caller_get` (the caller's state, as the caller's policy allows), `send`
/// and `log`.
fn register_calls(engine: &mut Engine) {
    engine.register_fn("caller_get", |key: &str| -> RhaiResult<Dynamic> {
        bad_key(key)?;
        let v = with_ctx(|c| {
            if c.caller == c.target {
                return store(c).get(key).map_err(storage_err);
            }
            let host = unsafe { &*c.host };
            host.caller_get(key)
                .map_err(|e| fatal(c, Status::Denied, e.message))
        })?;
        to_dyn(v)
    });
    engine.register_fn("send", |peer: &str, script: &str| {
        send(peer, script, Map::new())
    });
    engine.register_fn("send", send);
    engine.register_fn("log", |text: &str| -> RhaiResult<()> {
        with_ctx(|c| {
            if c.logs.len() >= 1000 {
                let msg = "log limit reached: a run may write at most 1000 log lines".to_string();
                return Err(fatal(c, Status::Limit, msg));
            }
            let t: String = text.chars().take(c.max_string.min(4096)).collect();
            c.logs.push(t);
            Ok(())
        })
    });
}

/// `send(peer, script, params)`: a send request, kept until the run commits,
/// within the run's sends, the chain's budget and the hop limit.
fn send(peer: &str, script: &str, params: Map) -> RhaiResult<()> {
    check_peer_name(peer).map_err(|e| -> Box<EvalAltResult> { e.message.into() })?;
    let params = to_json(&Dynamic::from_map(params))?;
    with_ctx(|c| {
        check(c, Capability::Send, peer)?;
        check_sizes(c, "the params sent", &params)?;
        let host = unsafe { &*c.host };
        if !host.knows_peer(peer) {
            // A clear error now, not a message that could never be delivered.
            return Err(format!(
                "send: no peer {peer:?} here: this daemon does not serve it, and it is in \
                 no lattice (`--nats`) that could reach another daemon"
            )
            .into());
        }
        if let Some(m) = c.send_block.clone() {
            return Err(fatal(c, Status::Limit, m));
        }
        if c.budget > 0 && c.sends.len() as u64 + 1 >= c.budget {
            // Each script sent takes at least one run of the chain's budget,
            // so a chain (a send worm too) ends however it fans out.
            let msg = format!(
                "chain_budget reached: the chain that began at {} may make a bounded number \
                 of runs in all, and this run's share ({}) lets it send at most {} scripts",
                c.origin,
                c.budget,
                c.budget - 1
            );
            return Err(fatal(c, Status::Limit, msg));
        }
        if c.sends.len() >= c.max_sends {
            let msg = format!(
                "max_sends ({}) reached: a run may send at most that many scripts",
                c.max_sends
            );
            return Err(fatal(c, Status::Limit, msg));
        }
        c.sends.push(SendRequest {
            to: peer.to_string(),
            source: script.to_string(),
            params,
        });
        Ok(())
    })
}

pub(super) fn on_print(s: &str) {
    CTX.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            if c.output_over {
                return;
            }
            if c.output.len() + s.len() + 1 > c.max_output {
                c.output_over = true;
                return;
            }
            c.output.push_str(s);
            c.output.push('\n');
        }
    })
}

/// Bytes held from which a run's every operation compares the clock (see
/// `on_progress`).
const BIG_HELD: i64 = 256 << 10;

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock `Instant` reads, at the
/// kernel's tick (a few milliseconds), for a few nanoseconds a read.
fn coarse_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// `at` on the coarse clock.
fn coarse_at(at: Instant) -> u64 {
    let now = Instant::now();
    let ahead = at.saturating_duration_since(now).as_nanos() as u64;
    coarse_ns().saturating_add(ahead)
}

pub(super) fn on_progress(ops: u64) -> Option<Dynamic> {
    CTX.with(|c| {
        let mut b = c.borrow_mut();
        let c = b.as_mut()?;
        c.ops = ops;
        // Rhai bounds its own count; queries of declared tables add theirs.
        if c.db_ops != 0 && ops + c.db_ops > c.max_ops {
            let msg = format!(
                "max_operations ({}) reached: the script and its queries of declared tables",
                c.max_ops
            );
            c.fatal = Some((Status::Limit, msg.clone()));
            return Some(msg.into());
        }
        // O(1): one thread-local read. A step that copies a big value at once can
        // pass the limit by that value's size before this sees it; steps that make
        // a value of a size they are given check before allocating (`guard`).
        let held = super::alloc::thread_held().wrapping_sub(c.mem_base);
        if held > c.max_memory {
            let msg = format!(
                "max_memory_bytes ({}) reached: the run held {held} bytes",
                c.max_memory
            );
            c.fatal = Some((Status::Limit, msg.clone()));
            return Some(msg.into());
        }
        if c.output_over {
            let msg = format!(
                "max_output_bytes ({}) reached: the script printed too much",
                c.max_output
            );
            c.fatal = Some((Status::Limit, msg.clone()));
            return Some(msg.into());
        }
        // An operation on a value costs in proportion to its size, so while the run
        // holds a big one the clocks are compared at every operation (the coarse
        // clock: a few nanoseconds), not only at every 1,024th; else 1,024
        // operations on a value of max_memory_bytes would run far past the limit.
        // SAFETY: see `install`.
        let stop = unsafe { &*c.stop }.load(Ordering::Relaxed);
        let due = held > BIG_HELD && (stop || coarse_ns() >= c.check_at);
        if ops & 1023 == 0 || due {
            if stop {
                let msg =
                    "the daemon is stopping: the run was rolled back and stays queued".to_string();
                c.fatal = Some((Status::Interrupted, msg.clone()));
                return Some(msg.into());
            }
            let now = Instant::now();
            if c.yield_at.is_some_and(|y| now > y) {
                let msg = "the run gave way to waiting writes: it was rolled back and stays queued"
                    .to_string();
                c.fatal = Some((Status::Interrupted, msg.clone()));
                return Some(msg.into());
            }
            if now > c.deadline {
                let msg = format!(
                    "max_wall_ms ({}) reached: the run took too long",
                    c.max_wall_ms
                );
                c.fatal = Some((Status::Limit, msg.clone()));
                return Some(msg.into());
            }
        }
        None
    })
}

/// `import "name"`: the target's `modules/name.rhai`, else the shared library's;
/// `import "lib/name"` always the library's.
pub(super) struct Resolver {
    pub(super) cache: Arc<AstCache>,
    pub(super) library: Library,
}

impl rhai::ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> RhaiResult<rhai::Shared<Module>> {
        let not_found = || Box::new(EvalAltResult::ErrorModuleNotFound(path.to_string(), pos));
        check_module_name(path).map_err(|_| not_found())?;
        let source = with_ctx(|c| {
            check(c, Capability::Import, path)?;
            if let Some(lib) = path.strip_prefix("lib/") {
                return Ok(self.library.load(lib));
            }
            match store(c).module(path).map_err(storage_err)? {
                Some(bytes) => Ok(Some(String::from_utf8(bytes).map_err(
                    |_| -> Box<EvalAltResult> { format!("module {path} is not UTF-8 text").into() },
                )?)),
                None => Ok(self.library.load(path)),
            }
        })?;
        let source = source.ok_or_else(not_found)?;
        let ast = self.cache.compile(engine, &source).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                path.to_string(),
                e.into(),
                pos,
            ))
        })?;
        // Evaluated per import (top-level code sees the current state); the AST is cached.
        let m = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(path.to_string(), e, pos)))?;
        Ok(m.into())
    }
}

/// What a step that makes a value of a given size makes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Making {
    /// A string of that many characters.
    String,
    /// An array or BLOB of that many elements.
    Array,
}

/// Before a step makes a value of a size the script gave it (`pad`, `blob(n)`):
/// refused when `count` is over the limit for what it makes, or `bytes` more would
/// pass `max_memory_bytes`, so no such allocation is ever attempted.
pub(super) fn reserve(making: Making, count: u64, bytes: u64) -> RhaiResult<()> {
    CTX.with(|c| {
        let mut b = c.borrow_mut();
        let Some(c) = b.as_mut() else {
            return Ok(());
        };
        let (name, max, unit) = match making {
            Making::String => ("max_string_size", c.max_string, "characters"),
            Making::Array => ("max_array_size", c.max_array, "elements"),
        };
        if count > max as u64 {
            let msg = format!("{name} ({max}) reached: a step would make {count} {unit}");
            return Err(fatal(c, Status::Limit, msg));
        }
        let held = super::alloc::thread_held().wrapping_sub(c.mem_base);
        if held.saturating_add(bytes.min(i64::MAX as u64) as i64) > c.max_memory {
            let msg = format!(
                "max_memory_bytes ({}) reached: a step would allocate {bytes} bytes more than \
                 the {held} the run holds",
                c.max_memory
            );
            return Err(fatal(c, Status::Limit, msg));
        }
        Ok(())
    })
}
