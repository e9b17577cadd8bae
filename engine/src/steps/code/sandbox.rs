//! The JavaScript sandbox of the `code` step: one QuickJS runtime per script run, with nothing in
//! it but the language.
//!
//! Why QuickJS (through the `rquickjs` crate): it is a complete ES2023 engine in one C file that
//! the crate builds from its bundled source (no download, no system library, no clang), and its
//! runtime has the two controls a sandbox needs: an allocator of our own (which keeps the memory
//! limit) and an interrupt handler polled while code runs (which stops an endless loop).
//! `boa_engine` (pure Rust) has no memory limit, and V8-based crates download prebuilt binaries.
//!
//! Invariants:
//! - A script sees only the ECMAScript built-ins, its `input` and a `console` that records lines:
//!   no module loader is installed (so no `import`, no `require`), and the runtime has no `std`,
//!   `os`, `fetch`, timers, files, network or environment.
//! - Every run gets a fresh runtime: nothing a script leaves behind reaches another run.
//! - A run ends within its CPU-time limit (measured on the thread running it) and its wall-time
//!   limit, and never uses more than its memory limit; exceeding any is an error of the run, not
//!   of the process. The caller runs scripts on a blocking thread, never on an async worker.
//!   The memory limit is kept by [`Metered`], the runtime's allocator, which refuses what would
//!   pass it and remembers that it did (QuickJS may not manage to say why it failed then).
//! - Errors carry the script's own line and column (1-based), as the author wrote them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::context::EvalOptions;
use rquickjs::function::This;
use rquickjs::{Context, Ctx, Function, Runtime, Value as JsValue};
use serde_json::Value;

/// The script's name in stack traces, which locate its errors.
const SCRIPT_NAME: &str = "code.js";
/// The script runs as the body of this function; it shares the script's first line, so line
/// numbers match the source and only the first line's columns are shifted.
const PREFIX: &str = "(function (input) {";
/// Closes the function; on its own line so a trailing `//` comment cannot swallow it.
const SUFFIX: &str = "\n})";
/// Defines `console`: each call becomes one line (strings as they are, other values as JSON).
const CONSOLE: &str = r#"(function (emit) {
  const show = (v) => {
    if (typeof v === "string") return v;
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; }
    catch (e) { return String(v); }
  };
  const line = (...args) => emit(args.map(show).join(" "));
  globalThis.console = { log: line, info: line, warn: line, error: line, debug: line };
})"#;
/// The most console lines kept per run; later ones are counted, not kept.
const MAX_LOG_LINES: usize = 100;
/// The longest console line kept, in characters; longer ones are cut.
const MAX_LOG_LINE_CHARS: usize = 1000;
/// The largest result a script may return, as JSON text.
const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The longest a syntax check may take.
const CHECK_TIME: Duration = Duration::from_secs(1);
/// The native stack a script may use (deep recursion fails with a stack overflow error).
const MAX_STACK_BYTES: usize = 512 * 1024;

/// What a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time on the thread running the script.
    pub cpu_time: Duration,
    /// Wall-clock time, a backstop for a thread that gets no CPU.
    pub wall_time: Duration,
    /// Memory of the script's runtime, in bytes.
    pub memory_bytes: usize,
}

/// A place in the script: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

/// Why a script did not give a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    /// It does not parse.
    #[error("{message}")]
    Syntax {
        /// The parser's words (`SyntaxError: unexpected token in expression: ')'`).
        message: String,
        /// Where, when known.
        at: Option<Location>,
    },
    /// It threw (or a built-in threw on its behalf).
    #[error("{message}")]
    Thrown {
        /// The error as JavaScript prints it (`TypeError: cannot read property 'x' of undefined`).
        message: String,
        /// Where, when known.
        at: Option<Location>,
    },
    /// It ran past its CPU-time (or wall-time) limit and was stopped.
    #[error("the script ran longer than its limit of {} and was stopped", humantime::format_duration(*.0))]
    TimeLimit(Duration),
    /// It asked for more memory than its limit.
    #[error("the script used more than its memory limit of {} MB", .0 >> 20)]
    MemoryLimit(usize),
    /// It returned something JSON cannot hold (a function, a BigInt, a cycle) or too much.
    #[error("the script's result is not usable as the step's output: {0}")]
    Result(String),
    /// The engine itself failed (it could not start).
    #[error("the JavaScript engine failed: {0}")]
    Engine(String),
}

impl ScriptError {
    /// Where in the script the error happened, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Syntax { at, .. } | Self::Thrown { at, .. } => *at,
            _ => None,
        }
    }
}

/// What a run gave: its result or error, and what it logged either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The returned value (`undefined` becomes `null`), or why there is none.
    pub result: Result<Value, ScriptError>,
    /// The `console` lines, oldest first (at most 100, each at most 1000 characters; a last line
    /// says how many more were left out).
    pub logs: Vec<String>,
}

/// Checks that `source` parses as a script body, without running any of it.
pub fn check(source: &str, memory_bytes: usize) -> Result<(), ScriptError> {
    let (runtime, context) = start(memory_bytes, Arc::default())?;
    // Compiling runs no script code, unless the script closes its function early; bound that.
    let limits = Limits {
        cpu_time: CHECK_TIME,
        wall_time: CHECK_TIME * 5,
        memory_bytes,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    runtime.set_interrupt_handler(Some(interrupt_after(limits, interrupted.clone())));
    let result = context.with(|ctx| compile(&ctx, source).map(drop));
    drop(context);
    drop(runtime);
    if interrupted.load(Ordering::Relaxed) {
        return Err(closes_early());
    }
    result
}

/// The error for a script with an extra `}` that ends its function before its end.
fn closes_early() -> ScriptError {
    ScriptError::Syntax {
        message: "SyntaxError: the script closes its function early (an extra `}`)".into(),
        at: None,
    }
}

/// Runs `source` as the body of `function (input) { … }` with `input`, within `limits`.
/// Blocks until it ends: call it from a blocking thread.
pub fn run(source: &str, input: &Value, limits: Limits) -> Run {
    let logs = Rc::new(RefCell::new(Logs::default()));
    let stops = Stops::default();
    let (runtime, context) = match start(limits.memory_bytes, stops.memory.clone()) {
        Ok(started) => started,
        Err(e) => {
            return Run {
                result: Err(e),
                logs: Vec::new(),
            }
        }
    };
    runtime.set_interrupt_handler(Some(interrupt_after(limits, stops.time.clone())));
    let result = context.with(|ctx| {
        let outcome = call(&ctx, source, input, &logs);
        outcome.map_err(|e| classify(e, &stops, limits))
    });
    drop(context);
    drop(runtime);
    let logs = Rc::try_unwrap(logs)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| shared.borrow().clone());
    Run {
        result,
        logs: logs.into_lines(),
    }
}

/// What stopped a run, as its runtime's guards saw it.
#[derive(Default)]
struct Stops {
    /// The interrupt handler stopped it (time).
    time: Arc<AtomicBool>,
    /// The allocator refused memory.
    memory: Arc<AtomicBool>,
}

/// A fresh runtime whose allocator keeps `memory_bytes` (flagging `refused` when it refuses),
/// with the stack limit, and a context with the standard built-ins.
fn start(memory_bytes: usize, refused: Arc<AtomicBool>) -> Result<(Runtime, Context), ScriptError> {
    let allocator = Metered {
        used: 0,
        limit: memory_bytes,
        refused,
    };
    let runtime =
        Runtime::new_with_alloc(allocator).map_err(|e| ScriptError::Engine(e.to_string()))?;
    runtime.set_max_stack_size(MAX_STACK_BYTES);
    let context = Context::full(&runtime).map_err(|e| ScriptError::Engine(e.to_string()))?;
    Ok((runtime, context))
}

/// The runtime's allocator: Rust's, counting the bytes in use and refusing an allocation that
/// would take them past `limit`.
struct Metered {
    used: usize,
    limit: usize,
    refused: Arc<AtomicBool>,
}

impl Metered {
    /// Whether `more` bytes fit; flags the refusal when not.
    fn admits(&self, more: usize) -> bool {
        let fits = self.used.saturating_add(more) <= self.limit;
        if !fits {
            self.refused.store(true, Ordering::Relaxed);
        }
        fits
    }

    /// Counts a new allocation.
    fn took(&mut self, ptr: *mut u8) -> *mut u8 {
        if !ptr.is_null() {
            // SAFETY: `ptr` was just returned by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(ptr) };
        }
        ptr
    }
}

// SAFETY: every call is passed to `RustAllocator` unchanged or refused with a null pointer, which
// QuickJS handles as an allocation failure.
unsafe impl Allocator for Metered {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.admits(size) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.alloc(size);
        self.took(ptr)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        if !self.admits(count.saturating_mul(size)) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.calloc(count, size);
        self.took(ptr)
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.used -= RustAllocator::usable_size(ptr);
        RustAllocator.dealloc(ptr);
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        let old = RustAllocator::usable_size(ptr);
        if new_size > old && !self.admits(new_size - old) {
            return std::ptr::null_mut();
        }
        let moved = RustAllocator.realloc(ptr, new_size);
        if !moved.is_null() {
            self.used = self.used - old + RustAllocator::usable_size(moved);
        }
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        RustAllocator::usable_size(ptr)
    }
}

/// An interrupt handler that stops the script once the thread's CPU time or the wall time since
/// now passes its limit, and says so through `stopped`.
fn interrupt_after(limits: Limits, stopped: Arc<AtomicBool>) -> Box<dyn FnMut() -> bool + Send> {
    let started = Instant::now();
    let cpu_start = thread_cpu_time();
    Box::new(move || {
        let over = thread_cpu_time().saturating_sub(cpu_start) > limits.cpu_time
            || started.elapsed() > limits.wall_time;
        if over {
            stopped.store(true, Ordering::Relaxed);
        }
        over
    })
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the OS knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A script error before it is classified against the limits.
struct Raised {
    message: String,
    at: Option<Location>,
    kind: RaisedKind,
}

/// What went wrong, as far as the script can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RaisedKind {
    /// The source does not parse.
    Syntax,
    /// Something threw.
    Thrown,
    /// The returned value cannot be the step's output.
    Result,
}

/// Compiles the wrapped script into its function (no script code runs, unless it closes the
/// wrapper early, which is refused).
fn compile<'js>(ctx: &Ctx<'js>, source: &str) -> Result<Function<'js>, ScriptError> {
    let mut options = EvalOptions::default();
    options.filename = Some(SCRIPT_NAME.to_owned());
    let wrapped = format!("{PREFIX}{source}{SUFFIX}");
    let function = ctx
        .eval_with_options::<Function, _>(wrapped, options)
        .map_err(|e| {
            let raised = raised(ctx, e);
            ScriptError::Syntax {
                message: raised.message,
                at: raised.at,
            }
        })?;
    // A script that closes the wrapper early (`}); …; (function () {`) makes the text evaluate
    // to another function, after running its own top-level code: refuse it.
    let text: String = function
        .get::<_, Function>("toString")
        .and_then(|to_string| to_string.call((This(function.clone()),)))
        .unwrap_or_default();
    let expected = format!("{}{source}{}", &PREFIX[1..], &SUFFIX[..SUFFIX.len() - 1]);
    if text != expected {
        return Err(closes_early());
    }
    Ok(function)
}

/// Installs `console`, compiles the script and calls it with `input`; the result as JSON.
fn call<'js>(
    ctx: &Ctx<'js>,
    source: &str,
    input: &Value,
    logs: &Rc<RefCell<Logs>>,
) -> Result<Value, Raised> {
    let sink = logs.clone();
    let emit = Function::new(ctx.clone(), move |line: String| {
        sink.borrow_mut().push(line)
    })
    .map_err(|e| raised(ctx, e))?;
    let install: Function = ctx.eval(CONSOLE).map_err(|e| raised(ctx, e))?;
    install.call::<_, ()>((emit,)).map_err(|e| raised(ctx, e))?;

    let function = compile(ctx, source).map_err(|e| Raised {
        message: e.to_string(),
        at: e.location(),
        kind: RaisedKind::Syntax,
    })?;
    let text = serde_json::to_string(input).expect("a JSON value serializes");
    let input = ctx.json_parse(text).map_err(|e| raised(ctx, e))?;
    let returned: JsValue = function.call((input,)).map_err(|e| raised(ctx, e))?;
    if returned.is_promise() {
        return Err(not_json(
            "it returned a Promise (an `async` script): return the value itself",
        ));
    }
    if returned.is_function() {
        return Err(not_json("it returned a function"));
    }
    if returned.is_undefined() {
        return Ok(Value::Null);
    }
    let json = ctx
        .json_stringify(returned)
        .map_err(|e| not_json(&raised(ctx, e).message))?
        .map(|s| s.to_string())
        .transpose()
        .map_err(|e| raised(ctx, e))?
        .unwrap_or_else(|| "null".to_owned());
    if json.len() > MAX_RESULT_BYTES {
        return Err(not_json(&format!(
            "it is {} KiB as JSON; the most is {} KiB",
            json.len() >> 10,
            MAX_RESULT_BYTES >> 10
        )));
    }
    serde_json::from_str(&json).map_err(|e| not_json(&e.to_string()))
}

/// A result that cannot be the step's output, and why.
fn not_json(why: &str) -> Raised {
    Raised {
        message: why.to_owned(),
        at: None,
        kind: RaisedKind::Result,
    }
}

/// Turns an rquickjs error into a message and location, reading the pending exception.
fn raised(ctx: &Ctx<'_>, error: rquickjs::Error) -> Raised {
    if !matches!(error, rquickjs::Error::Exception) {
        return Raised {
            message: error.to_string(),
            at: None,
            kind: RaisedKind::Thrown,
        };
    }
    let thrown = ctx.catch();
    let Some(object) = thrown.as_object() else {
        let message = format!(
            "Uncaught {}",
            ctx.json_stringify(thrown.clone())
                .ok()
                .flatten()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_else(|| "exception".to_owned())
        );
        return Raised {
            message,
            at: None,
            kind: RaisedKind::Thrown,
        };
    };
    let name: Option<String> = object.get("name").ok();
    let text: Option<String> = object.get("message").ok();
    let stack: Option<String> = object.get("stack").ok();
    let message = match (name.as_deref(), text.as_deref()) {
        (Some(n), Some(m)) if !m.is_empty() => format!("{n}: {m}"),
        (Some(n), _) => n.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "Uncaught exception".to_owned(),
    };
    Raised {
        at: stack.as_deref().and_then(locate),
        kind: if name.as_deref() == Some("SyntaxError") {
            RaisedKind::Syntax
        } else {
            RaisedKind::Thrown
        },
        message,
    }
}

/// The first `code.js:LINE:COL` of a stack trace, in the script's own coordinates.
fn locate(stack: &str) -> Option<Location> {
    let marker = format!("{SCRIPT_NAME}:");
    let start = stack.find(&marker)? + marker.len();
    let mut numbers = stack[start..]
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(str::parse::<u32>);
    let line = numbers.next()?.ok()?;
    let column = numbers.next()?.ok()?;
    let column = if line == 1 {
        column.saturating_sub(PREFIX.len() as u32).max(1)
    } else {
        column
    };
    Some(Location { line, column })
}

/// Names what stopped a run: its limits first (an interrupted or starved engine reports them in
/// its own words, or throws `null`), then the script's own error.
fn classify(raised: Raised, stops: &Stops, limits: Limits) -> ScriptError {
    if stops.time.load(Ordering::Relaxed) {
        return ScriptError::TimeLimit(limits.cpu_time);
    }
    if stops.memory.load(Ordering::Relaxed) {
        return ScriptError::MemoryLimit(limits.memory_bytes);
    }
    let Raised { message, at, kind } = raised;
    match kind {
        RaisedKind::Syntax => ScriptError::Syntax { message, at },
        RaisedKind::Thrown => ScriptError::Thrown { message, at },
        RaisedKind::Result => ScriptError::Result(message),
    }
}

/// The console lines of one run, bounded.
#[derive(Debug, Default, Clone)]
struct Logs {
    lines: Vec<String>,
    dropped: usize,
}

impl Logs {
    fn push(&mut self, line: String) {
        if self.lines.len() == MAX_LOG_LINES {
            self.dropped += 1;
            return;
        }
        let line = match line.char_indices().nth(MAX_LOG_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line,
        };
        self.lines.push(line);
    }

    fn into_lines(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines
                .push(format!("… {} more line(s) not kept", self.dropped));
        }
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: Limits = Limits {
        cpu_time: Duration::from_millis(300),
        wall_time: Duration::from_secs(10),
        memory_bytes: 32 << 20,
    };

    fn run_err(source: &str) -> ScriptError {
        run(source, &json!(null), LIMITS).result.unwrap_err()
    }

    fn run_ok(source: &str, input: Value) -> Value {
        let run = run(source, &input, LIMITS);
        run.result.unwrap_or_else(|e| panic!("{source}: {e:?}"))
    }

    #[test]
    fn returns_a_value_computed_from_the_input() {
        let out = run_ok(
            "const total = input.items.reduce((s, i) => s + i.price * i.qty, 0);\nreturn { total, n: input.items.length };",
            json!({ "items": [{ "price": 2.5, "qty": 2 }, { "price": 1, "qty": 3 }] }),
        );
        assert_eq!(out, json!({ "total": 8, "n": 2 }));
        assert_eq!(
            run_ok("return [1, 'a', null, true]", json!(null)),
            json!([1, "a", null, true])
        );
        assert_eq!(run_ok("let x = 1;", json!(null)), Value::Null);
    }

    #[test]
    fn console_lines_are_kept_even_when_the_script_fails() {
        let run = run(
            "console.log('hello', 42, {a: 1});\nconsole.error([1, 2]);\nthrow new Error('boom');",
            &json!({}),
            LIMITS,
        );
        assert_eq!(run.logs, vec!["hello 42 {\"a\":1}", "[1,2]"]);
        assert!(matches!(run.result, Err(ScriptError::Thrown { .. })));

        let many = super::run(
            "for (let i = 0; i < 150; i++) console.log(i)",
            &json!({}),
            LIMITS,
        );
        assert_eq!(many.logs.len(), MAX_LOG_LINES + 1);
        assert_eq!(many.logs.last().unwrap(), "… 50 more line(s) not kept");
    }

    #[test]
    fn a_thrown_error_has_the_scripts_line_and_column() {
        let run = run(
            "const a = 1;\nconst b = input.missing;\n  throw new TypeError('bad ' + a);",
            &json!({}),
            LIMITS,
        );
        let err = run.result.unwrap_err();
        assert_eq!(err.to_string(), "TypeError: bad 1");
        // QuickJS places a `throw new E(…)` at the end of the constructor call.
        assert_eq!(
            err.location(),
            Some(Location {
                line: 3,
                column: 32
            }),
            "{err:?}"
        );

        // On the first line, columns do not count the wrapper around the script.
        let err = run_err("return input.a.b");
        assert!(err.to_string().starts_with("TypeError"), "{err}");
        assert_eq!(err.location().map(|l| l.line), Some(1), "{err:?}");
        assert!(err.location().unwrap().column <= 17, "{err:?}");
    }

    #[test]
    fn a_syntax_error_is_found_without_running_the_script() {
        check("console.log('fine'); return 1", 1 << 20).unwrap();
        let err = check("let x = 1;\nlet y = (2 + ;\n", 16 << 20).unwrap_err();
        assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
        assert_eq!(err.location().map(|l| l.line), Some(2), "{err:?}");
        // A stray closing brace must not close the wrapper function early, nor run code.
        for early in [
            "return 1; }); (function () {",
            "}); while (true) {}; (function () {",
        ] {
            let err = check(early, 16 << 20).unwrap_err();
            assert!(
                err.to_string().contains("closes its function early"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn an_endless_loop_is_stopped_at_the_cpu_limit() {
        let started = Instant::now();
        let err = run_err("while (true) {}");
        assert_eq!(err, ScriptError::TimeLimit(LIMITS.cpu_time));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Catching the interruption does not help.
        let err = run_err("for (;;) { try { while (true) {} } catch (e) {} }");
        assert_eq!(err, ScriptError::TimeLimit(LIMITS.cpu_time));
    }

    #[test]
    fn allocating_without_end_is_stopped_at_the_memory_limit() {
        let err = run_err("let a = []; while (true) a.push(new Array(1e6).fill(0));");
        assert_eq!(err, ScriptError::MemoryLimit(LIMITS.memory_bytes));
        // `new Array(1e6)` allocates no elements: many small arrays fill the memory first when
        // time allows.
        let roomy = Limits {
            cpu_time: Duration::from_secs(30),
            memory_bytes: 8 << 20,
            ..LIMITS
        };
        let run = run(
            "let a=[]; while(true) a.push(new Array(1e6))",
            &json!(null),
            roomy,
        );
        assert_eq!(run.result, Err(ScriptError::MemoryLimit(8 << 20)));
        // Catching the failure does not get around the limit.
        let err = run_err(
            "let a=[]; for(;;) { try { a.push('x'.repeat(1e6) + a.length) } catch (e) {} }",
        );
        assert!(
            matches!(err, ScriptError::MemoryLimit(_) | ScriptError::TimeLimit(_)),
            "{err:?}"
        );
    }

    #[test]
    fn deep_recursion_fails_cleanly() {
        let err = run_err("const f = (n) => f(n + 1) + 1; return f(0)");
        assert!(matches!(err, ScriptError::Thrown { .. }), "{err:?}");
    }

    #[test]
    fn nothing_outside_the_language_is_reachable() {
        for name in [
            "require",
            "fetch",
            "std",
            "os",
            "process",
            "setTimeout",
            "XMLHttpRequest",
            "Deno",
        ] {
            let out = run_ok(&format!("return typeof {name}"), json!(null));
            assert_eq!(out, json!("undefined"), "{name}");
        }
        let err = run("return import('std')", &json!(null), LIMITS).result;
        assert!(err.is_err(), "{err:?}");
        let err = check("import * as os from 'os';", 16 << 20);
        assert!(err.is_err(), "{err:?}");
    }

    #[test]
    fn results_json_cannot_hold_are_refused() {
        for source in [
            "return () => 1",
            "return 10n",
            "const a = {}; a.self = a; return a",
            "return (async () => 1)()",
            "return 'x'.repeat(2 * 1024 * 1024)",
        ] {
            let err = run(source, &json!(null), LIMITS).result.unwrap_err();
            assert!(matches!(err, ScriptError::Result(_)), "{source}: {err:?}");
        }
    }

    #[test]
    fn runs_share_nothing() {
        run_ok(
            "globalThis.leak = 1; Object.prototype.evil = 2",
            json!(null),
        );
        assert_eq!(
            run_ok("return [typeof leak, ({}).evil]", json!(null)),
            json!(["undefined", null])
        );
    }
}
