//! Lua runbooks (`vmig run FILE.lua`): a Lua 5.4 state with the safe
//! standard libraries only (no io, os, package, debug; no load, loadfile or
//! dofile), the `vmig` module of small functions over the operator library,
//! and a runner that turns how the script ended into an operator code.
//! What a runbook can call is documented in docs/lua.md.
//!
//! Nothing here draws: progress and log lines go to the front end's [`Ui`].

mod check;
mod maintenance;
mod module;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use thiserror::Error;

pub use module::{FUNCTIONS, VALUES};

/// The reference of what a runbook can call (docs/lua.md; vmig-lua(7)).
pub const REFERENCE: &str = include_str!("../../docs/lua.md");

use crate::ops::code::Code;
use crate::ops::migrate::Plan;
use crate::ops::run::Run;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The front end a runbook reports to (bars and lines on a terminal, JSON
/// lines without one). Called from several threads at once when a runbook
/// runs migrations in parallel.
pub trait Ui: Send + Sync {
    fn log(&self, level: Level, text: &str);
    /// A migration starts (or, under a dry run, is planned).
    fn migration(&self, plan: &Plan, dry_run: bool) -> Box<dyn Progress>;
    /// Asks the operator; None when there is no one to ask.
    fn ask(&self, question: &str) -> Option<bool>;
}

pub use crate::ops::migrate::Progress;

/// The most memory a runbook's Lua state may use.
const MEMORY_LIMIT: usize = 256 << 20;
/// How often (in Lua instructions) a running script looks for Ctrl-C.
const INTERRUPT_EVERY: u32 = 1000;

#[derive(Debug, Error)]
pub enum RunbookError {
    #[error("cannot read the runbook {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not Lua (the message has its file and line).
    #[error("{0}")]
    Syntax(String),
    #[error("{file}:{line}: there is no {name} (docs/lua.md lists the module)")]
    UnknownName { file: String, line: usize, name: String },
    /// Setting the state up failed (a bug, or memory).
    #[error("cannot set up Lua: {0}")]
    Lua(String),
}

impl RunbookError {
    pub fn code(&self) -> Code {
        match self {
            RunbookError::Read { .. } | RunbookError::Syntax(_) | RunbookError::UnknownName { .. } => Code::Invalid,
            RunbookError::Lua(_) => Code::Failed,
        }
    }
}

#[expect(clippy::needless_pass_by_value, reason = "used as map_err(setup)")]
fn setup(error: mlua::Error) -> RunbookError {
    RunbookError::Lua(error.to_string())
}

/// A runbook, read and checked: its Lua compiles and every `vmig.NAME` it
/// writes exists.
#[derive(Debug)]
pub struct Runbook {
    /// The name its errors and tracebacks give it.
    name: String,
    source: String,
}

/// How a runbook that ran ended with an error it did not catch.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    /// `file:line` of the runbook where it was raised, when known.
    pub location: Option<String>,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub traceback: String,
}

impl Runbook {
    pub fn load(path: &Path) -> Result<Self, RunbookError> {
        let source = std::fs::read_to_string(path).map_err(|source| RunbookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_source(&path.display().to_string(), source)
    }

    /// A runbook that is not a file of its own (one built into vmig).
    pub fn from_source(name: &str, source: String) -> Result<Self, RunbookError> {
        let name = name.to_string();
        // A first line "#!..." lets a runbook be run as a program.
        let source = if source.starts_with("#!") {
            format!("--{source}")
        } else {
            source
        };
        let runbook = Self { name, source };
        runbook.check()?;
        Ok(runbook)
    }

    fn check(&self) -> Result<(), RunbookError> {
        let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(setup)?;
        lua.load(&self.source)
            .set_name(format!("@{}", self.name))
            .into_function()
            .map_err(|e| match e {
                mlua::Error::SyntaxError { message, .. } => RunbookError::Syntax(message),
                other => RunbookError::Syntax(other.to_string()),
            })?;
        let known: Vec<&str> = FUNCTIONS.iter().chain(VALUES).copied().collect();
        if let Some((line, name)) = check::unknown_name(&self.source, &known) {
            return Err(RunbookError::UnknownName {
                file: self.name.clone(),
                line,
                name: format!("vmig.{name}"),
            });
        }
        Ok(())
    }

    /// Runs the runbook to its end as part of `run`; its arguments are
    /// `...` and `vmig.args`.
    pub fn run(
        &self,
        run: &Arc<Run>,
        inventory: Option<PathBuf>,
        ui: Arc<dyn Ui>,
        args: &[String],
    ) -> Result<Result<(), Failure>, RunbookError> {
        let lua = sandbox().map_err(setup)?;
        let context = Arc::new(module::Context::new(Arc::clone(run), inventory, ui, args.to_vec()));
        // The runner's own xpcall, before the prelude makes the runbook's
        // pass interrupts on.
        let xpcall: Function = lua.globals().raw_get("xpcall").map_err(setup)?;
        let raw = module::raw(&lua, &context).map_err(setup)?;
        let names = lua.create_sequence_from(FUNCTIONS.iter().copied()).map_err(setup)?;
        let vmig: Table = lua
            .load(include_str!("prelude.lua"))
            .set_name("=vmig")
            .call((raw, names))
            .map_err(setup)?;
        lua.globals().raw_set("vmig", vmig).map_err(setup)?;
        let cancel = Arc::clone(run);
        // Global: coroutines the runbook makes are interrupted too.
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(INTERRUPT_EVERY),
            move |_, _| {
                if cancel.interrupted() {
                    return Err(mlua::Error::runtime("interrupted: Ctrl-C or SIGTERM"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(setup)?;
        let chunk = lua
            .load(&self.source)
            .set_name(format!("@{}", self.name))
            .into_function()
            .map_err(|e| RunbookError::Syntax(e.to_string()))?;
        let script = self.name.clone();
        let interrupted = Arc::clone(run);
        let handler = lua
            .create_function(move |lua, error: Value| describe(lua, &script, &error, interrupted.interrupted()))
            .map_err(setup)?;
        let mut call_args = MultiValue::from_iter([Value::Function(chunk), Value::Function(handler)]);
        for arg in args {
            call_args.push_back(Value::String(lua.create_string(arg).map_err(setup)?));
        }
        let ended: MultiValue = xpcall.call(call_args).map_err(setup)?;
        if matches!(ended.front(), Some(Value::Boolean(true))) {
            return Ok(Ok(()));
        }
        let failure = match ended.get(1) {
            Some(Value::Table(t)) => failure_of(t),
            other => Failure {
                code: Code::Script,
                message: other.map_or_else(|| "the runbook failed".to_string(), |v| format!("{v:?}")),
                location: None,
                vm: None,
                host: None,
                traceback: String::new(),
            },
        };
        Ok(Err(failure))
    }
}

/// A Lua state with the safe libraries only, a memory limit, and no way to
/// load code or native modules.
fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    for name in ["dofile", "loadfile", "load", "require", "collectgarbage"] {
        globals.raw_set(name, Value::Nil)?;
    }
    Ok(lua)
}

/// The message handler: what the error was, where the runbook raised it,
/// and the traceback, taken while the stack is still there.
fn describe(lua: &Lua, script: &str, error: &Value, interrupted: bool) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let (code, message) = match error {
        Value::Table(e) => match e.raw_get::<Option<String>>("code")? {
            Some(code) => (code, e.raw_get::<Option<String>>("message")?.unwrap_or_default()),
            None => ("script".to_string(), "an error table without a code".to_string()),
        },
        Value::String(s) => ("script".to_string(), s.to_string_lossy()),
        // Raised by Rust: the interrupt hook, or mlua itself.
        Value::Error(_) if interrupted => (
            Code::Interrupted.name().to_string(),
            "interrupted by Ctrl-C or SIGTERM".to_string(),
        ),
        Value::Error(e) => (Code::Script.name().to_string(), first_line(&e.to_string())),
        other => ("script".to_string(), format!("error({})", other.type_name())),
    };
    if let Value::Table(e) = error {
        table.raw_set("vm", e.raw_get::<Value>("vm")?)?;
        table.raw_set("host", e.raw_get::<Value>("host")?)?;
    }
    let location = location(lua, script);
    // Lua puts the position in front of a string error's message already.
    let message = match &location {
        Some(at) => message
            .strip_prefix(&format!("{at}: "))
            .map_or(message.clone(), str::to_string),
        None => message,
    };
    table.raw_set("code", code)?;
    table.raw_set("message", message)?;
    table.raw_set("location", location)?;
    table.raw_set("traceback", runbook_frames(&lua.traceback(None, 1)?.to_string_lossy()))?;
    Ok(table)
}

/// `file:line` of the innermost frame that is the runbook's own.
fn location(lua: &Lua, script: &str) -> Option<String> {
    (0..200).find_map(|level| {
        lua.inspect_stack(level, |debug| {
            let source = debug.source();
            let line = debug.current_line()?;
            (source.short_src.as_deref() == Some(script)).then(|| format!("{script}:{line}"))
        })
        .flatten()
    })
}

/// A traceback without the frames of vmig's own Lua and of C functions
/// (`error`, `xpcall`): what is left is the runbook's.
fn runbook_frames(traceback: &str) -> String {
    traceback
        .lines()
        .filter(|line| !line.starts_with("\t[C]:") && !line.starts_with("\tvmig:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn failure_of(table: &Table) -> Failure {
    let text = |key: &str| table.raw_get::<Option<String>>(key).ok().flatten();
    let code = text("code").unwrap_or_else(|| "script".to_string());
    Failure {
        code: Code::ALL.into_iter().find(|c| c.name() == code).unwrap_or(Code::Script),
        message: text("message").unwrap_or_default(),
        location: text("location"),
        vm: text("vm"),
        host: text("host"),
        traceback: text("traceback").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;

    /// The names docs/lua.md gives a heading (`### vmig.NAME...`).
    fn documented() -> Vec<String> {
        REFERENCE
            .lines()
            .filter_map(|line| line.strip_prefix("### vmig."))
            .map(|rest| rest.split(['(', ' ', '[']).next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn every_name_of_the_module_is_documented_and_nothing_else() {
        let mut documented = documented();
        documented.sort();
        let mut names: Vec<String> = FUNCTIONS.iter().chain(VALUES).map(|n| n.to_string()).collect();
        names.sort();
        assert_eq!(documented, names, "docs/lua.md and the module's names differ");
    }

    #[test]
    fn every_code_is_in_the_reference_with_its_exit_code() {
        for code in Code::ALL {
            let row = format!("| `{}` | {} |", code.name(), Exit::of(code) as u8);
            assert!(REFERENCE.contains(&row), "docs/lua.md lacks the row {row}");
        }
    }
}
