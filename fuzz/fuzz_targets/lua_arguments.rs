//! What a runbook passes to the `vmig` functions: any Lua value, nested
//! tables with any keys, in any position. Each call runs in a real runbook
//! (vmig's sandbox, prelude and functions) against an inventory that does
//! not exist, so nothing is asked of any host. Whatever the arguments, no
//! panic, and every failure a runbook sees is a vmig error value with a
//! code (`vmig.is_error`), never a bare Lua error.
#![no_main]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmig::lua::{Level, Progress, Runbook, Ui};
use vmig::ops::migrate::{Event, MigrateError, Outcome, Plan};
use vmig::ops::run::{Consent, Run};

/// The functions whose arguments are converted (not those that run
/// commands, read files, wait or ask).
const FUNCTIONS: &[&str] = &[
    "hosts", "host", "vms", "vm", "migrate", "parallel", "precheck", "cordon", "uncordon", "plan", "evacuate",
    "rollback", "history", "audit",
];

/// Option names the functions know, so the fuzzer reaches past the first
/// unknown field.
const NAMES: &[&str] = &[
    "vm", "host", "to", "options", "streams", "downtime_ms", "bandwidth", "timeout", "timeout_action",
    "auto_converge", "verify_memory", "force", "skip", "ping", "ping_interval_ms", "announce_rounds",
    "announce_initial_ms", "announce_step_ms", "announce_max_ms", "parallel", "max", "on_error", "deadline",
    "run", "by", "since", "reason", "state", "dry_run",
];

#[derive(Debug, Arbitrary)]
enum Arg {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Table(Vec<(Key, Arg)>),
}

#[derive(Debug, Arbitrary)]
enum Key {
    Index(u8),
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Call {
    function: u8,
    args: Vec<Arg>,
}

/// `text` as a Lua string literal: every byte escaped.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    for byte in text.bytes() {
        let _ = write!(out, "\\{byte}");
    }
    out.push('"');
}

fn lua(out: &mut String, arg: &Arg, depth: usize) {
    match arg {
        Arg::Nil => out.push_str("nil"),
        Arg::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Arg::Int(i) => {
            let _ = write!(out, "({i})");
        }
        Arg::Num(n) if n.is_nan() => out.push_str("(0/0)"),
        Arg::Num(n) if n.is_infinite() => out.push_str(if *n > 0.0 { "(1/0)" } else { "(-1/0)" }),
        Arg::Num(n) => {
            let _ = write!(out, "({n:?})");
        }
        Arg::Str(s) => quoted(out, s),
        // Deeper tables are cut short: the conversion's depth is not what
        // is tried here.
        Arg::Table(_) if depth > 8 => out.push_str("{}"),
        Arg::Table(entries) => {
            out.push('{');
            for (key, value) in entries {
                match key {
                    Key::Index(i) => {
                        let _ = write!(out, "[{i}]=");
                    }
                    Key::Known(k) => {
                        out.push('[');
                        quoted(out, NAMES[*k as usize % NAMES.len()]);
                        out.push_str("]=");
                    }
                    Key::Other(name) => {
                        out.push('[');
                        quoted(out, name);
                        out.push_str("]=");
                    }
                }
                lua(out, value, depth + 1);
                out.push(',');
            }
            out.push('}');
        }
    }
}

/// A front end that shows nothing and has no one to ask.
struct Quiet;

struct NoBar;

impl Progress for NoBar {
    fn event(&mut self, _: &Event) {}
    fn done(&mut self, _: &Result<Outcome, MigrateError>) {}
}

impl Ui for Quiet {
    fn log(&self, _: Level, _: &str) {}
    fn migration(&self, _: &Plan, _: bool) -> Box<dyn Progress> {
        Box::new(NoBar)
    }
    fn ask(&self, _: &str) -> Option<bool> {
        None
    }
}

fuzz_target!(|call: Call| {
    let name = FUNCTIONS[call.function as usize % FUNCTIONS.len()];
    let mut args = String::new();
    for arg in call.args.iter().take(4) {
        args.push(',');
        lua(&mut args, arg, 0);
    }
    let source = format!(
        "local ok, e = pcall(vmig.{name}{args})\n\
         assert(ok or vmig.is_error(e), 'not a vmig error: ' .. tostring(e))\n"
    );
    let runbook = Runbook::from_source("fuzz.lua", source).expect("the harness's Lua compiles");
    let run = Arc::new(Run::new(false, Consent::Missing, Arc::new(AtomicBool::new(false))));
    let nowhere = PathBuf::from("/nonexistent/vmig-fuzz/vmig.toml");
    let ended = runbook
        .run(&run, Some(nowhere), Arc::new(Quiet), &[])
        .expect("the runbook starts");
    if let Err(failure) = ended {
        panic!("vmig.{name}({args}): {failure:?}");
    }
});
