//! The `vmig` module's functions, over the operator library. Each is small:
//! it checks its arguments, calls `ops`, and turns the answer into plain
//! Lua data (names and ids, never Rust objects). None raises for an
//! operator error: it returns nil and an error table, which the prelude
//! raises as an error value.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use vmig_backend::api::MigrateResult;
use vmig_backend::migration::{MigrationOptions, TimeoutAction};
use vmig_backend::size::parse_size;

use super::{Level, Ui};
use crate::ops::audit as ops_audit;
use crate::ops::cluster::{Cluster, ClusterError};
use crate::ops::code::{Code, describe as chain};
use crate::ops::history as ops_history;
use crate::ops::migrate::{self as flow, MigrateError, Outcome, Plan};
use crate::ops::run::{Change, Consent, Go, Run};

/// The functions of the module, as a runbook calls them (`vmig.NAME`);
/// `log.*`, `try` and `is_error` are the prelude's. docs/lua.md documents
/// each of these and of [`VALUES`]; a test holds them to it.
pub const FUNCTIONS: &[&str] = &[
    "hosts",
    "host",
    "vms",
    "vm",
    "migrate",
    "parallel",
    "precheck",
    "cordon",
    "uncordon",
    "plan",
    "evacuate",
    "rollback",
    "history",
    "audit",
    "confirm",
    "sleep",
    "exec",
    "read_file",
];

/// The prelude's functions and the module's values.
pub const VALUES: &[&str] = &[
    "log.info",
    "log.warn",
    "log.error",
    "try",
    "is_error",
    "args",
    "run_id",
    "dry_run",
];

/// How many migrations `parallel` runs at once unless told.
const PARALLEL_DEFAULT: usize = 2;
/// The most it runs at once (the agents' limits queue the excess anyway).
const PARALLEL_MAX: usize = 16;

/// An operator error as a runbook sees it.
#[derive(Debug, Clone)]
pub struct Fail {
    pub code: Code,
    pub message: String,
    pub vm: Option<String>,
    pub host: Option<String>,
}

impl Fail {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            vm: None,
            host: None,
        }
    }

    fn vm(mut self, vm: &str) -> Self {
        self.vm.get_or_insert_with(|| vm.to_string());
        self
    }

    pub(super) fn host(mut self, host: &str) -> Self {
        self.host.get_or_insert_with(|| host.to_string());
        self
    }

    pub(super) fn of_cluster(error: &ClusterError) -> Self {
        let fail = Fail::new(error.code(), chain(error));
        match error.host() {
            Some(host) => fail.host(host),
            None => fail,
        }
    }

    fn of_migrate(error: &MigrateError, vm: &str, host: &str) -> Self {
        Fail::new(error.code(), chain(error)).vm(vm).host(host)
    }

    fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let table = lua.create_table()?;
        table.set("code", self.code.name())?;
        table.set("message", self.message.as_str())?;
        table.set("vm", self.vm.as_deref())?;
        table.set("host", self.host.as_deref())?;
        table.set("retryable", self.code.retryable())?;
        Ok(table)
    }
}

/// What the functions share: the run, the cluster (opened at the first
/// call that needs it), and the front end.
pub struct Context {
    pub run: Arc<Run>,
    pub inventory: Option<PathBuf>,
    pub ui: Arc<dyn Ui>,
    pub args: Vec<String>,
    cluster: Mutex<Option<Arc<Cluster>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("run", &self.run.id)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(run: Arc<Run>, inventory: Option<PathBuf>, ui: Arc<dyn Ui>, args: Vec<String>) -> Self {
        Self {
            run,
            inventory,
            ui,
            args,
            cluster: Mutex::new(None),
        }
    }

    pub(super) fn cluster(&self) -> Result<Arc<Cluster>, Fail> {
        let mut cluster = self.cluster.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cluster) = &*cluster {
            return Ok(Arc::clone(cluster));
        }
        let opened = Arc::new(Cluster::open(self.inventory.as_deref()).map_err(|e| Fail::of_cluster(&e))?);
        *cluster = Some(Arc::clone(&opened));
        Ok(opened)
    }
}

/// The table of raw functions the prelude wraps, and the names to wrap.
pub fn raw(lua: &Lua, context: &Arc<Context>) -> mlua::Result<Table> {
    let raw = lua.create_table()?;
    add(lua, &raw, context, "hosts", hosts)?;
    add(lua, &raw, context, "host", host)?;
    add(lua, &raw, context, "vms", vms)?;
    add(lua, &raw, context, "vm", vm)?;
    add(lua, &raw, context, "migrate", migrate)?;
    add(lua, &raw, context, "parallel", parallel)?;
    add(lua, &raw, context, "precheck", precheck)?;
    add(lua, &raw, context, "cordon", cordon)?;
    add(lua, &raw, context, "uncordon", uncordon)?;
    add(lua, &raw, context, "plan", super::maintenance::plan)?;
    add(lua, &raw, context, "evacuate", super::maintenance::evacuate)?;
    add(lua, &raw, context, "rollback", super::maintenance::rollback)?;
    add(lua, &raw, context, "history", history)?;
    add(lua, &raw, context, "audit", audit)?;
    add(lua, &raw, context, "confirm", confirm)?;
    add(lua, &raw, context, "sleep", sleep)?;
    add(lua, &raw, context, "exec", exec)?;
    add(lua, &raw, context, "read_file", read_file)?;
    add(lua, &raw, context, "log_info", |lua, c, a| log(lua, c, a, Level::Info))?;
    add(lua, &raw, context, "log_warn", |lua, c, a| log(lua, c, a, Level::Warn))?;
    add(lua, &raw, context, "log_error", |lua, c, a| {
        log(lua, c, a, Level::Error)
    })?;
    let run = Arc::clone(&context.run);
    raw.set("interrupted", lua.create_function(move |_, ()| Ok(run.interrupted()))?)?;
    raw.set(
        "args",
        lua.create_sequence_from(context.args.iter().map(String::as_str))?,
    )?;
    raw.set("run_id", context.run.id.as_str())?;
    raw.set("dry_run", context.run.dry_run)?;
    Ok(raw)
}

type Op = fn(&Lua, &Context, &MultiValue) -> Result<Value, Fail>;

/// Registers `op` as `raw[name]`: its value, or nil and its error table.
fn add(lua: &Lua, raw: &Table, context: &Arc<Context>, name: &'static str, op: Op) -> mlua::Result<()> {
    let context = Arc::clone(context);
    let function = lua.create_function(move |lua, args: MultiValue| match op(lua, &context, &args) {
        Ok(value) => Ok(MultiValue::from_iter([value])),
        Err(fail) => Ok(MultiValue::from_iter([Value::Nil, Value::Table(fail.to_lua(lua)?)])),
    })?;
    raw.set(name, function)
}

pub(super) fn invalid(function: &str, detail: impl std::fmt::Display) -> Fail {
    Fail::new(Code::Invalid, format!("vmig.{function}: {detail}"))
}

/// Argument `index` (from 1) as a string.
pub(super) fn string_arg(args: &MultiValue, index: usize, function: &str, what: &str) -> Result<String, Fail> {
    match args.get(index - 1) {
        Some(Value::String(s)) => Ok(s
            .to_str()
            .map_err(|_| invalid(function, format!("{what} is not UTF-8")))?
            .to_string()),
        Some(other) => Err(invalid(
            function,
            format!("argument {index} ({what}) must be a string, not {}", other.type_name()),
        )),
        None => Err(invalid(function, format!("argument {index} ({what}) is missing"))),
    }
}

/// Argument `index` as a table of options, checked by serde: an unknown
/// field is an error that names it.
pub(super) fn options_arg<T: DeserializeOwned + Default>(
    lua: &Lua,
    args: &MultiValue,
    index: usize,
    function: &str,
) -> Result<T, Fail> {
    match args.get(index - 1) {
        None | Some(Value::Nil) => Ok(T::default()),
        Some(value @ Value::Table(_)) => from_lua(lua, value.clone(), function),
        Some(other) => Err(invalid(
            function,
            format!("argument {index} (options) must be a table, not {}", other.type_name()),
        )),
    }
}

fn from_lua<T: DeserializeOwned>(lua: &Lua, value: Value, function: &str) -> Result<T, Fail> {
    lua.from_value(value).map_err(|e| invalid(function, strip_lua(&e)))
}

/// An mlua conversion error's own words.
fn strip_lua(error: &mlua::Error) -> String {
    match error {
        mlua::Error::DeserializeError(text) => text.clone(),
        other => other.to_string(),
    }
}

pub(super) fn to_lua<T: serde::Serialize>(lua: &Lua, value: &T) -> Result<Value, Fail> {
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(value, options)
        .map_err(|e| Fail::new(Code::Failed, format!("cannot hand a value to Lua: {e}")))
}

fn no_args(args: &MultiValue, function: &str) -> Result<(), Fail> {
    if args.iter().any(|v| !v.is_nil()) {
        return Err(invalid(function, "takes no arguments"));
    }
    Ok(())
}

fn hosts(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    no_args(args, "hosts")?;
    let cluster = context.cluster()?;
    let list: Vec<serde_json::Value> = cluster
        .hosts()
        .into_iter()
        .map(|answer| match answer.facts {
            Ok(facts) => {
                let mut value = serde_json::to_value(&facts).unwrap_or_default();
                value["address"] = answer.host.address.into();
                value["reachable"] = true.into();
                value
            }
            Err(e) => serde_json::json!({
                "name": answer.host.name,
                "address": answer.host.address,
                "reachable": false,
                "code": Code::of_client(&e).name(),
                "error": e.to_string(),
            }),
        })
        .collect();
    to_lua(lua, &list)
}

fn host(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let name = string_arg(args, 1, "host", "name")?;
    let cluster = context.cluster()?;
    let facts = cluster.facts(&name).map_err(|e| Fail::of_cluster(&e).host(&name))?;
    let mut value = serde_json::to_value(&facts).unwrap_or_default();
    value["address"] = cluster
        .host(&name)
        .map_or_else(|_| "".into(), |h| h.address.clone().into());
    value["reachable"] = true.into();
    to_lua(lua, &value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmsArgs {
    /// Only the VMs of this host.
    host: Option<String>,
    /// Only the VMs in this state.
    state: Option<String>,
}

fn vms(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let filter: VmsArgs = options_arg(lua, args, 1, "vms")?;
    let cluster = context.cluster()?;
    if let Some(host) = &filter.host {
        cluster.host(host).map_err(|e| Fail::of_cluster(&e))?;
    }
    let (list, failed) = cluster.vms();
    // A host that did not answer may hold VMs: a runbook that acted on a
    // partial list would act on a wrong picture.
    if let Some((host, error)) = failed
        .into_iter()
        .find(|(host, _)| filter.host.as_ref().is_none_or(|h| *h == host.name))
    {
        return Err(Fail::new(
            Code::of_client(&error),
            format!("cannot list the VMs of {}: {error}", host.name),
        )
        .host(&host.name));
    }
    let list: Vec<_> = list
        .into_iter()
        .filter(|vm| filter.host.as_ref().is_none_or(|h| *h == vm.host))
        .filter(|vm| filter.state.as_ref().is_none_or(|s| *s == vm.state.to_string()))
        .collect();
    to_lua(lua, &list)
}

fn vm(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let name = string_arg(args, 1, "vm", "name")?;
    let located = context
        .cluster()?
        .locate(&name)
        .map_err(|e| Fail::of_cluster(&e).vm(&name))?;
    to_lua(lua, &located.info)
}

/// `migrate`'s options, as in `vmig migrate`'s flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateOptions {
    downtime_ms: Option<u64>,
    /// Bytes per second: a number, or a string with a K/M/G suffix.
    bandwidth: Option<Bandwidth>,
    /// A number, or "auto".
    streams: Option<Streams>,
    /// Percent of its vCPUs' time the guest keeps during pre-copy.
    guest_share: Option<u8>,
    /// Seconds.
    timeout: Option<u64>,
    /// "cancel" or "force".
    timeout_action: Option<String>,
    auto_converge: Option<bool>,
    verify_memory: Option<bool>,
    /// Move despite the prechecks' warnings (never despite an error).
    force: Option<bool>,
    /// Precheck rules not to check.
    skip: Option<Vec<String>>,
    /// The VM's IPv4 address, probed with ICMP echo during the move.
    ping: Option<String>,
    /// Milliseconds between probes (default 10).
    ping_interval_ms: Option<u64>,
    announce_rounds: Option<u32>,
    announce_initial_ms: Option<u64>,
    announce_step_ms: Option<u64>,
    announce_max_ms: Option<u64>,
}

/// How a migration's prechecks are taken (forced past warnings, rules
/// skipped), and whether the VM's address is probed meanwhile.
#[derive(Debug, Clone, Default)]
struct Checks {
    force: bool,
    skip: crate::ops::precheck::Skip,
    ping: Option<(std::net::IpAddr, Duration)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Streams {
    Count(u32),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Bandwidth {
    Bytes(u64),
    Text(String),
}

impl MigrateOptions {
    fn checks(&self, function: &str) -> Result<Checks, Fail> {
        let skip = crate::ops::precheck::Skip::parse(self.skip.as_deref().unwrap_or_default())
            .map_err(|e| invalid(function, format!("skip: {e}")))?;
        let ping = match &self.ping {
            None => None,
            Some(address) => {
                let address = address
                    .parse()
                    .map_err(|_| invalid(function, format!("ping: {address:?} is not an IP address")))?;
                let interval = self.ping_interval_ms.unwrap_or(10);
                if interval == 0 {
                    return Err(invalid(function, "ping_interval_ms: must be at least 1"));
                }
                Some((address, Duration::from_millis(interval)))
            }
        };
        Ok(Checks {
            force: self.force.unwrap_or(false),
            skip,
            ping,
        })
    }

    pub(super) fn engine(&self, function: &str) -> Result<MigrationOptions, Fail> {
        let mut options = MigrationOptions::default();
        if let Some(ms) = self.downtime_ms {
            options.downtime_limit_ms = ms;
        }
        options.bandwidth_limit = match &self.bandwidth {
            None => None,
            Some(Bandwidth::Bytes(bytes)) => Some(*bytes),
            Some(Bandwidth::Text(text)) => {
                Some(parse_size(text).map_err(|e| invalid(function, format!("bandwidth: {e}")))?)
            }
        };
        let streams = match &self.streams {
            None => Ok(options.streams),
            Some(Streams::Text(text)) => vmig_backend::migration::parse_streams(text),
            Some(Streams::Count(n)) => vmig_backend::migration::parse_streams(&n.to_string()),
        };
        options.streams = streams.map_err(|e| invalid(function, format!("streams: {e}")))?;
        if let Some(share) = self.guest_share {
            options.guest_share = share;
        }
        if let Some(timeout) = self.timeout {
            options.timeout_s = timeout;
        }
        options.timeout_action = match self.timeout_action.as_deref() {
            None | Some("cancel") => TimeoutAction::Cancel,
            Some("force") => TimeoutAction::Force,
            Some(other) => {
                return Err(invalid(
                    function,
                    format!("timeout_action: {other:?} is neither \"cancel\" nor \"force\""),
                ));
            }
        };
        if let Some(on) = self.auto_converge {
            options.auto_converge = on;
        }
        if let Some(on) = self.verify_memory {
            options.verify_memory = on;
        }
        let a = &mut options.announce;
        a.rounds = self.announce_rounds.unwrap_or(a.rounds);
        a.initial_ms = self.announce_initial_ms.unwrap_or(a.initial_ms);
        a.step_ms = self.announce_step_ms.unwrap_or(a.step_ms);
        a.max_ms = self.announce_max_ms.unwrap_or(a.max_ms);
        options.validate().map_err(|e| invalid(function, e))?;
        Ok(options)
    }
}

fn migrate(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let vm = string_arg(args, 1, "migrate", "vm")?;
    let host = string_arg(args, 2, "migrate", "host")?;
    let options: MigrateOptions = options_arg(lua, args, 3, "migrate")?;
    let checks = options.checks("migrate")?;
    let options = options.engine("migrate")?;
    let cluster = context.cluster()?;
    let outcome = run_one(context, &cluster, &vm, &host, options, checks)?;
    to_lua(lua, &outcome)
}

/// What a migration gives a runbook.
#[derive(Debug, serde::Serialize)]
struct Migrated {
    ok: bool,
    vm: String,
    source: String,
    target: String,
    /// The migration's id (none under a dry run: nothing was started).
    id: Option<String>,
    dry_run: bool,
    downtime_ms: Option<f64>,
    /// How long the guest stood still (the source's first vCPU out to the
    /// target's last in).
    blackout_ms: Option<f64>,
    total_ms: Option<f64>,
    bytes_sent: Option<u64>,
    rounds: Option<u32>,
    queued_ms: Option<u64>,
    note: Option<String>,
    /// The probes of the VM's address (`ping`): sent, lost, longest gap.
    probe: Option<vmig_backend::api::ProbeReport>,
}

impl Migrated {
    fn of(plan: &Plan, outcome: &Outcome) -> Self {
        let planned = Migrated {
            ok: true,
            vm: plan.vm.clone(),
            source: plan.source.name.clone(),
            target: plan.target.name.clone(),
            id: None,
            dry_run: true,
            downtime_ms: None,
            blackout_ms: None,
            total_ms: None,
            bytes_sent: None,
            rounds: None,
            queued_ms: None,
            note: None,
            probe: None,
        };
        match outcome {
            Outcome::Planned => planned,
            Outcome::Moved(result) => Self::moved(planned, result),
        }
    }

    fn moved(planned: Migrated, result: &MigrateResult) -> Self {
        let report = result.report.as_ref();
        Migrated {
            id: Some(result.id.clone()),
            dry_run: false,
            downtime_ms: report.map(|r| r.downtime_ms),
            blackout_ms: report.and_then(|r| r.blackout_ms),
            total_ms: report.map(|r| r.total_ms),
            bytes_sent: report.map(|r| r.bytes_sent),
            rounds: report.map(|r| r.rounds),
            queued_ms: Some(result.queued_ms),
            note: result.note.clone(),
            probe: result.probe.clone(),
            ..planned
        }
    }
}

/// Plans, runs and reports one migration through the front end.
fn run_one(
    context: &Context,
    cluster: &Cluster,
    vm: &str,
    host: &str,
    options: MigrationOptions,
    checks: Checks,
) -> Result<Migrated, Fail> {
    let mut plan = flow::plan(cluster, vm, host, options).map_err(|e| Fail::of_migrate(&e, vm, host))?;
    plan.force = checks.force;
    plan.skip = checks.skip;
    plan.ping = checks.ping;
    let mut progress = context.ui.migration(&plan, context.run.dry_run);
    let outcome = flow::migrate(&context.run, cluster, &plan, &mut |event| progress.event(event));
    progress.done(&outcome);
    let outcome = outcome.map_err(|e| Fail::of_migrate(&e, vm, host))?;
    Ok(Migrated::of(&plan, &outcome))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParallelItem {
    vm: String,
    host: String,
    #[serde(default)]
    options: MigrateOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParallelArgs {
    /// At most this many at once.
    max: Option<usize>,
}

fn parallel(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let items = match args.front() {
        Some(value @ Value::Table(_)) => from_lua::<Vec<ParallelItem>>(lua, value.clone(), "parallel")?,
        Some(other) => {
            return Err(invalid(
                "parallel",
                format!(
                    "argument 1 (migrations) must be a list of {{vm=, host=}}, not {}",
                    other.type_name()
                ),
            ));
        }
        None => return Err(invalid("parallel", "argument 1 (migrations) is missing")),
    };
    let limits: ParallelArgs = options_arg(lua, args, 2, "parallel")?;
    let max = limits.max.unwrap_or(PARALLEL_DEFAULT);
    if !(1..=PARALLEL_MAX).contains(&max) {
        return Err(invalid(
            "parallel",
            format!("max: {max} is not between 1 and {PARALLEL_MAX}"),
        ));
    }
    // Every item's options are checked before the first migration starts.
    let mut work = Vec::with_capacity(items.len());
    for item in &items {
        work.push((item, item.options.engine("parallel")?, item.options.checks("parallel")?));
    }
    let cluster = context.cluster()?;
    let next = Mutex::new(0usize);
    let results: Vec<Mutex<Option<Result<Migrated, Fail>>>> = work.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..max.min(work.len()) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut next = next.lock().unwrap_or_else(PoisonError::into_inner);
                        let index = *next;
                        *next += 1;
                        index
                    };
                    let Some((item, options, checks)) = work.get(index) else {
                        break;
                    };
                    let result = run_one(context, &cluster, &item.vm, &item.host, options.clone(), checks.clone());
                    *results[index].lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                }
            });
        }
    });
    let list = lua.create_table().map_err(|e| Fail::new(Code::Failed, e.to_string()))?;
    for (index, (slot, (item, ..))) in results.into_iter().zip(&work).enumerate() {
        let result = slot
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(|| Err(Fail::new(Code::Failed, "the migration's thread ended without a result")));
        let entry = match result {
            Ok(migrated) => to_lua(lua, &migrated)?,
            Err(fail) => {
                let entry = lua.create_table().map_err(|e| Fail::new(Code::Failed, e.to_string()))?;
                let fail = fail.vm(&item.vm).host(&item.host);
                let error = fail.to_lua(lua).map_err(|e| Fail::new(Code::Failed, e.to_string()))?;
                (|| -> mlua::Result<()> {
                    entry.set("ok", false)?;
                    entry.set("vm", item.vm.as_str())?;
                    entry.set("target", item.host.as_str())?;
                    entry.set("error", error)
                })()
                .map_err(|e| Fail::new(Code::Failed, e.to_string()))?;
                Value::Table(entry)
            }
        };
        list.set(index + 1, entry)
            .map_err(|e| Fail::new(Code::Failed, e.to_string()))?;
    }
    Ok(Value::Table(list))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CordonOptions {
    reason: Option<String>,
}

fn cordon(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let host = string_arg(args, 1, "cordon", "host")?;
    let options: CordonOptions = options_arg(lua, args, 2, "cordon")?;
    let cluster = context.cluster()?;
    let cordon = crate::ops::cordon::cordon(&context.run, &cluster, &host, options.reason.as_deref())
        .map_err(|e| Fail::new(e.code(), chain(&e)).host(&host))?;
    to_lua(
        lua,
        &serde_json::json!({ "host": host, "cordon": cordon, "dry_run": context.run.dry_run }),
    )
}

fn uncordon(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let host = string_arg(args, 1, "uncordon", "host")?;
    if args.len() > 1 {
        return Err(invalid("uncordon", "takes one argument (the host)"));
    }
    let cluster = context.cluster()?;
    let was = crate::ops::cordon::uncordon(&context.run, &cluster, &host)
        .map_err(|e| Fail::new(e.code(), chain(&e)).host(&host))?;
    to_lua(
        lua,
        &serde_json::json!({ "host": host, "was_cordoned": was, "dry_run": context.run.dry_run }),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrecheckOptions {
    /// Rules not to check.
    skip: Option<Vec<String>>,
}

fn precheck(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let vm = string_arg(args, 1, "precheck", "vm")?;
    let host = string_arg(args, 2, "precheck", "host")?;
    let options: PrecheckOptions = options_arg(lua, args, 3, "precheck")?;
    let skip = crate::ops::precheck::Skip::parse(options.skip.as_deref().unwrap_or_default())
        .map_err(|e| invalid("precheck", format!("skip: {e}")))?;
    let cluster = context.cluster()?;
    let checks = crate::ops::precheck::Checks {
        skip,
        options: MigrationOptions::default(),
    };
    let verdict = crate::ops::precheck::precheck(&cluster, &vm, &host, &checks)
        .map_err(|e| Fail::new(e.code(), chain(&e)).vm(&vm).host(&host))?;
    to_lua(lua, &verdict)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryArgs {
    vm: Option<String>,
    host: Option<String>,
    run: Option<String>,
    /// Seconds ago (a number), or as `vmig history --since` ("2h").
    since: Option<Since>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Since {
    SecondsAgo(f64),
    Text(String),
}

impl Since {
    /// Milliseconds since the epoch; `function` names the caller in errors.
    fn ms(since: Option<&Since>, function: &str) -> Result<Option<u64>, Fail> {
        Ok(match since {
            None => None,
            Some(Since::SecondsAgo(seconds)) => {
                if seconds.is_nan() || *seconds < 0.0 {
                    return Err(invalid(
                        function,
                        format!("since: {seconds} is not a number of seconds ago"),
                    ));
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                // Longer ago than the epoch (1e300, math.huge): everything.
                let ago = Duration::try_from_secs_f64(*seconds).unwrap_or(Duration::MAX);
                Some(now.saturating_sub(ago).as_millis() as u64)
            }
            Some(Since::Text(text)) => {
                Some(ops_history::since(text).map_err(|e| invalid(function, format!("since: {e}")))?)
            }
        })
    }
}

fn history(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let filter: HistoryArgs = options_arg(lua, args, 1, "history")?;
    let since_ms = Since::ms(filter.since.as_ref(), "history")?;
    let cluster = context.cluster()?;
    if let Some(host) = &filter.host {
        cluster.host(host).map_err(|e| Fail::of_cluster(&e))?;
    }
    let query = ops_history::Query {
        vm: filter.vm,
        host: filter.host,
        run: filter.run,
        since_ms,
        nested: Vec::new(),
    };
    let (records, failed) = ops_history::history(&cluster, &query);
    if let Some((host, error)) = failed.into_iter().next() {
        return Err(Fail::new(
            Code::of_client(&error),
            format!("cannot read the journal of {}: {error}", host.name),
        )
        .host(&host.name));
    }
    to_lua(lua, &records)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditArgs {
    host: Option<String>,
    by: Option<String>,
    vm: Option<String>,
    run: Option<String>,
    /// As for `history`.
    since: Option<Since>,
}

fn audit(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let filter: AuditArgs = options_arg(lua, args, 1, "audit")?;
    let query = ops_audit::Query {
        since_ms: Since::ms(filter.since.as_ref(), "audit")?,
        host: filter.host,
        by: filter.by,
        vm: filter.vm,
        run: filter.run,
    };
    let cluster = context.cluster()?;
    let trail = ops_audit::audit(&cluster, &query).map_err(|e| Fail::of_cluster(&e))?;
    if let Some((host, error)) = trail.missing.into_iter().next() {
        return Err(Fail::new(
            Code::of_client(&error),
            format!("cannot read the audit trail of {}: {error}", host.name),
        )
        .host(&host.name));
    }
    to_lua(lua, &trail.records)
}

fn log(_lua: &Lua, context: &Context, args: &MultiValue, level: Level) -> Result<Value, Fail> {
    let text: Vec<String> = args
        .iter()
        .map(|v| match v {
            Value::String(s) => s.to_string_lossy(),
            other => other.to_string().unwrap_or_else(|_| other.type_name().to_string()),
        })
        .collect();
    context.ui.log(level, &text.join(" "));
    Ok(Value::Nil)
}

fn confirm(_lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let question = string_arg(args, 1, "confirm", "question")?;
    match context.run.consent() {
        Consent::Given => Ok(Value::Boolean(true)),
        Consent::Missing => Err(invalid(
            "confirm",
            format!("cannot ask {question:?}: there is no terminal (pass --yes to answer yes)"),
        )),
        Consent::Ask(_) => match context.ui.ask(&question) {
            Some(answer) => Ok(Value::Boolean(answer)),
            None => Err(invalid(
                "confirm",
                format!("cannot ask {question:?}: there is no terminal"),
            )),
        },
    }
}

/// How often a sleep looks at the run's cancel.
const SLEEP_STEP: Duration = Duration::from_millis(50);

fn sleep(_lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let seconds = match args.front() {
        Some(Value::Integer(n)) => *n as f64,
        Some(Value::Number(n)) => *n,
        _ => return Err(invalid("sleep", "argument 1 (seconds) must be a number")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(invalid("sleep", format!("{seconds} s is not between 0 and 86400")));
    }
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        if context.run.interrupted() {
            return Err(Fail::new(
                Code::Interrupted,
                "interrupted while sleeping (Ctrl-C or SIGTERM)",
            ));
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Value::Nil);
        }
        std::thread::sleep(left.min(SLEEP_STEP));
    }
}

fn exec(lua: &Lua, context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    let command: Vec<String> = match args.front() {
        Some(value @ Value::Table(_)) => from_lua(lua, value.clone(), "exec")?,
        _ => {
            return Err(invalid(
                "exec",
                "argument 1 must be a list: {\"program\", \"arg\", ...}",
            ));
        }
    };
    if command.is_empty() {
        return Err(invalid("exec", "the list is empty: name the program first"));
    }
    let go = context
        .run
        .change(Change::Exec {
            command: command.clone(),
        })
        .map_err(|e| Fail::new(e.code(), e.to_string()))?;
    if go == Go::DryRun {
        return to_lua(lua, &serde_json::json!({ "dry_run": true, "command": command }));
    }
    let output = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Fail::new(Code::Failed, format!("cannot run {}: {e}", command[0])))?;
    to_lua(
        lua,
        &serde_json::json!({
            "dry_run": false,
            "ok": output.status.success(),
            "status": output.status.code(),
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        }),
    )
}

/// The most `read_file` reads.
const READ_MAX: u64 = 16 << 20;

fn read_file(lua: &Lua, _context: &Context, args: &MultiValue) -> Result<Value, Fail> {
    use std::io::Read;
    let path = string_arg(args, 1, "read_file", "path")?;
    let file = std::fs::File::open(&path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            Code::NotFound
        } else {
            Code::Failed
        };
        Fail::new(code, format!("cannot read {path}: {e}"))
    })?;
    let mut text = String::new();
    file.take(READ_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| Fail::new(Code::Failed, format!("cannot read {path}: {e}")))?;
    if text.len() as u64 > READ_MAX {
        return Err(Fail::new(Code::Invalid, format!("{path} is larger than 16 MiB")));
    }
    Ok(Value::String(
        lua.create_string(&text)
            .map_err(|e| Fail::new(Code::Failed, e.to_string()))?,
    ))
}
