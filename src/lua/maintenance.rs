//! `vmig.plan`, `vmig.evacuate` and `vmig.rollback`: host maintenance from
//! a runbook, on the operator library's evacuation and rollback. An
//! evacuation in a runbook is a run of its own (nested in the runbook's),
//! so that a runbook can roll back one host's evacuation alone; rolling the
//! runbook's run back undoes all of them.

use std::sync::Arc;

use mlua::{Lua, MultiValue, Value};
use serde::Deserialize;

use super::module::{Context, Fail, MigrateOptions, invalid, options_arg, string_arg, to_lua};
use super::{Level, Ui};
use crate::ops::code::describe;
use crate::ops::evacuate::{self, Note, Observer, OnError, Settings};
use crate::ops::migrate::{Plan, Progress};
use crate::ops::rollback as ops_rollback;

/// `evacuate`'s and `plan`'s options, as `vmig evacuate`'s flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvacuateOptions {
    to: Option<Vec<String>>,
    parallel: Option<usize>,
    /// "continue" or "stop".
    on_error: Option<String>,
    /// Seconds.
    deadline: Option<u64>,
    force: Option<bool>,
    skip: Option<Vec<String>>,
    /// Each migration's options, as for `migrate`.
    options: Option<MigrateOptions>,
}

impl EvacuateOptions {
    fn settings(&self, function: &str) -> Result<Settings, Fail> {
        let defaults = Settings::default();
        let settings = Settings {
            to: self.to.clone().unwrap_or_default(),
            parallel: self.parallel.unwrap_or(defaults.parallel),
            on_error: match self.on_error.as_deref() {
                None => OnError::Continue,
                Some(text) => OnError::parse(text).map_err(|e| invalid(function, format!("on_error: {e}")))?,
            },
            deadline_s: self.deadline.unwrap_or(defaults.deadline_s),
            force: self.force.unwrap_or(false),
            skip: self.skip.clone().unwrap_or_default(),
            migration: self.options.clone().unwrap_or_default().engine(function)?,
        };
        settings.validate().map_err(|e| invalid(function, describe(&e)))?;
        Ok(settings)
    }
}

/// The runbook's front end as an evacuation's observer: each move draws as
/// the runbook's migrations do, the notes are log lines.
struct RunbookObserver<'a> {
    ui: &'a Arc<dyn Ui>,
}

impl Observer for RunbookObserver<'_> {
    fn migration(&self, plan: &Plan, dry_run: bool) -> Box<dyn Progress> {
        self.ui.migration(plan, dry_run)
    }

    fn note(&self, note: &Note) {
        let level = match note {
            Note::Result(result) if !result.ok() => Level::Warn,
            _ => Level::Info,
        };
        self.ui.log(level, &note.to_string());
    }
}

/// `vmig.plan(host[, options])`: the evacuation's plan; changes nothing.
pub fn plan(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let host = string_arg(args, 1, "plan", "host")?;
    let options: EvacuateOptions = options_arg(lua, args, 2, "plan")?;
    let settings = options.settings("plan")?;
    let cluster = context.cluster()?;
    let plan = evacuate::plan(
        &cluster,
        &host,
        &settings,
        &crate::ops::run::new_id(),
        Some(&context.run.id),
    )
    .map_err(|e| Fail::new(e.code(), describe(&e)).host(&host))?;
    to_lua(lua, &plan)
}

/// `vmig.evacuate(host[, options])`: empties `host`; returns the report.
pub fn evacuate(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let host = string_arg(args, 1, "evacuate", "host")?;
    let options: EvacuateOptions = options_arg(lua, args, 2, "evacuate")?;
    let settings = options.settings("evacuate")?;
    let cluster = context.cluster()?;
    let observer = RunbookObserver { ui: &context.ui };
    let report = evacuate::execute::evacuate(&context.run, &cluster, &host, &settings, true, &observer)
        .map_err(|e| Fail::new(e.code(), describe(&e)).host(&host))?;
    to_lua(lua, &report)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackOptions {
    parallel: Option<usize>,
    /// Seconds.
    deadline: Option<u64>,
}

/// `vmig.rollback(run[, options])`: undoes run `run` (an id, or "last").
pub fn rollback(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let of = string_arg(args, 1, "rollback", "run")?;
    let options: RollbackOptions = options_arg(lua, args, 2, "rollback")?;
    let defaults = Settings::default();
    let settings = Settings {
        parallel: options.parallel.unwrap_or(defaults.parallel),
        deadline_s: options.deadline.unwrap_or(defaults.deadline_s),
        ..defaults
    };
    settings.validate().map_err(|e| invalid("rollback", describe(&e)))?;
    let cluster = context.cluster()?;
    let fail = |e: ops_rollback::RollbackError| Fail::new(e.code(), describe(&e));
    let of = if of == "last" {
        ops_rollback::last(&cluster).map_err(fail)?
    } else {
        of
    };
    let plan = ops_rollback::plan(&cluster, &of).map_err(fail)?;
    let observer = RunbookObserver { ui: &context.ui };
    let report = ops_rollback::execute(&context.run, &cluster, &plan, &settings, &observer).map_err(fail)?;
    to_lua(lua, &report)
}
