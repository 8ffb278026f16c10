//! What a runbook shows: on a terminal, a bar per migration it runs (several
//! at once in a MultiProgress) with its log lines printed above them and a
//! line for each migration's end; otherwise, or with `--json`, one JSON line
//! per event on standard output, with the schema of `vmig migrate --json`
//! plus `log`, `run` and `ended` lines (docs/lua.md, "Output").

use std::io::{BufRead, Write};
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressDrawTarget};
use serde_json::{Value, json};

use super::progress::{Display, failed_line, failure_message, migrated_line};
use crate::exit::Exit;
use crate::lua::{Failure, Level, Progress, Ui};
use crate::ops::migrate::{Event, MigrateError, Outcome, Plan};
use crate::ops::run::Run;

#[derive(Debug)]
pub struct RunbookUi {
    /// The bars, on a terminal without `--json`.
    multi: Option<MultiProgress>,
    /// Someone at a terminal can answer questions.
    can_ask: bool,
}

impl RunbookUi {
    pub fn new(json: bool, can_ask: bool) -> Arc<Self> {
        let multi = (!json).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Arc::new(Self { multi, can_ask })
    }

    /// The bars, on a terminal without `--json`.
    pub fn multi(&self) -> Option<&MultiProgress> {
        self.multi.as_ref()
    }

    fn line(&self, value: &Value) {
        // A reader that went away (a closed pipe) just stops the lines.
        let _ = writeln!(std::io::stdout().lock(), "{value}");
    }

    /// The run begins.
    pub fn started(&self, run: &Run, runbook: &str) {
        if self.multi.is_none() {
            self.line(&json!({ "run": { "id": run.id, "runbook": runbook, "dry_run": run.dry_run } }));
        }
    }

    /// The run ended: under a dry run its plan, an error it did not catch
    /// (with where and the traceback), and its last line.
    pub fn ended(&self, run: &Run, ended: &Result<(), Failure>, exit: Exit) {
        let changes = run.changes();
        if let Err(failure) = ended {
            let at = failure
                .location
                .as_deref()
                .map_or_else(String::new, |l| format!("{l}: "));
            eprintln!("vmig: {at}{}: {}", failure.code, failure.message);
            if !failure.traceback.is_empty() {
                eprintln!("{}", failure.traceback);
            }
        }
        match &self.multi {
            Some(_) => {
                if run.dry_run {
                    println!("dry run {}: nothing was changed; the plan:", run.id);
                    if changes.is_empty() {
                        println!("  (no changes)");
                    }
                    for (n, change) in changes.iter().enumerate() {
                        println!("  {}. {change}", n + 1);
                    }
                }
            }
            None => {
                let failure = ended.as_ref().err().map(|f| {
                    json!({ "code": f.code, "message": f.message, "location": f.location, "vm": f.vm, "host": f.host })
                });
                let key = if run.dry_run { "plan" } else { "changes" };
                self.line(&json!({ "ended": {
                    "id": run.id,
                    "ok": ended.is_ok(),
                    "exit": exit as u8,
                    "error": failure,
                    key: changes,
                } }));
            }
        }
    }
}

impl Ui for RunbookUi {
    fn log(&self, level: Level, text: &str) {
        match &self.multi {
            Some(multi) => {
                let line = match level {
                    Level::Info => text.to_string(),
                    Level::Warn => format!("warning: {text}"),
                    Level::Error => format!("error: {text}"),
                };
                let _ = multi.println(line);
            }
            None => self.line(&json!({ "log": { "level": level.name(), "message": text } })),
        }
    }

    fn migration(&self, plan: &Plan, dry_run: bool) -> Box<dyn Progress> {
        let size = plan.info.as_ref().map_or(1, |info| info.memory_bytes);
        let display = if dry_run {
            None
        } else {
            let label = format!("{} → {}", plan.vm, plan.target.name);
            Some(
                Display::among(self.multi.as_ref(), &label)
                    .tagged(&plan.id, &plan.vm)
                    .sized(size),
            )
        };
        Box::new(MigrationView {
            multi: self.multi.clone(),
            plan: plan.clone(),
            display,
        })
    }

    fn ask(&self, question: &str) -> Option<bool> {
        if !self.can_ask {
            return None;
        }
        let ask = || {
            eprint!("{question} [y/N] ");
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer).ok()?;
            Some(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
        };
        match &self.multi {
            Some(multi) => multi.suspend(ask),
            None => ask(),
        }
    }
}

/// One migration of a runbook: its bar, then its line.
struct MigrationView {
    multi: Option<MultiProgress>,
    plan: Plan,
    display: Option<Display>,
}

impl Progress for MigrationView {
    fn event(&mut self, event: &Event) {
        if let Some(display) = &mut self.display {
            display.show(event);
        }
    }

    fn done(&mut self, outcome: &Result<Outcome, MigrateError>) {
        if let Some(display) = &mut self.display {
            if outcome.is_ok() {
                display.complete();
            }
            display.finish();
        }
        let plan = &self.plan;
        let (text, line) = match outcome {
            Ok(Outcome::Planned) => (
                format!(
                    "would migrate {} from {} to {}",
                    plan.vm, plan.source.name, plan.target.name
                ),
                json!({ "would_migrate": { "vm": plan.vm, "source": plan.source.name, "target": plan.target.name } }),
            ),
            Ok(Outcome::Moved(result)) => {
                let figures = result.report.as_ref().map_or_else(String::new, |r| {
                    format!(": downtime {:.1} ms, total {:.1} s", r.downtime_ms, r.total_ms / 1000.0)
                });
                (
                    format!(
                        "migrated {} from {} to {}{figures}",
                        plan.vm, plan.source.name, plan.target.name
                    ),
                    migrated_line(result),
                )
            }
            Err(error) => {
                let message = failure_message(plan, error);
                let line = failed_line(plan, error.code(), &message);
                (format!("{}: {message}", error.code()), line)
            }
        };
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => {
                let mut line = line;
                if let Value::Object(fields) = &mut line
                    && !matches!(outcome, Ok(Outcome::Planned))
                {
                    fields.entry("id").or_insert_with(|| plan.id.clone().into());
                    fields.entry("vm").or_insert_with(|| plan.vm.clone().into());
                }
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }
}
