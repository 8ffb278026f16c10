//! `vmig run FILE.lua [ARGS...]`: run a Lua runbook against the cluster.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::signals;
use crate::exit::Exit;
use crate::lua::{Runbook, Ui};
use crate::ops::run::{Consent, Run};
use crate::render::runbook::RunbookUi;

#[derive(Debug, Args)]
#[command(after_help = "The runbook gets ARGS as `...` and `vmig.args`; what it can call is \
    in docs/lua.md (and vmig-lua(7)). It is checked before it runs: a syntax error or a name \
    vmig does not have is exit 2, and nothing runs.\n\n\
    On a terminal each migration draws a bar and the operator is asked once, at the first \
    change, unless --yes. Without a terminal (cron), or with --json, every event is a JSON line \
    on standard output, and a runbook that would change something is refused (exit 2, nothing \
    changed) unless --yes. --dry-run changes nothing: every change is planned, and the plan is \
    printed at the end.\n\n\
    Ctrl-C or SIGTERM cancels the migrations in flight (each VM stays on its source unless its \
    switchover had begun), stops the runbook and exits 12. Otherwise the exit code is 0 when the \
    runbook ended, or that of the error it did not catch (see the table below).\n\n\
    Examples:\n  vmig run runbooks/evacuate.lua hostA\n  vmig run runbooks/rebalance.lua --dry-run\n  \
    vmig run runbooks/evacuate.lua hostA --yes --json   # from cron")]
pub struct RunArgs {
    /// The runbook (a Lua 5.4 file).
    file: PathBuf,
    /// Its arguments (after `--` when one starts with `-`).
    args: Vec<String>,
    /// Change nothing: every change the runbook asks for is planned, and the plan printed.
    #[arg(long)]
    dry_run: bool,
    /// Make the changes without asking (needed without a terminal).
    #[arg(long)]
    yes: bool,
    /// Print every event as a JSON line (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &RunArgs, inventory: Option<&Path>) -> Result<Exit> {
    let runbook = Runbook::load(&args.file)?;
    let how = How {
        json: args.json,
        yes: args.yes,
        dry_run: args.dry_run,
    };
    run(&runbook, &args.file.display().to_string(), &args.args, inventory, &how)
}

/// How a runbook is run: `vmig run`'s flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct How {
    pub json: bool,
    pub yes: bool,
    pub dry_run: bool,
}

/// Runs `runbook` (called `name`) with `args`: bars or JSON lines, consent,
/// Ctrl-C; returns its exit code.
pub fn run(runbook: &Runbook, name: &str, args: &[String], inventory: Option<&Path>, how: &How) -> Result<Exit> {
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    let on_terminal = std::io::stderr().is_terminal();
    let can_ask = on_terminal && std::io::stdin().is_terminal();
    let ui = RunbookUi::new(how.json || !on_terminal, can_ask);
    let consent = if how.yes {
        Consent::Given
    } else if can_ask {
        let asker = Arc::clone(&ui);
        let name = name.to_string();
        Consent::Ask(Box::new(move |change| {
            asker
                .ask(&format!("{name} wants to {change} (and may make more changes); go on?"))
                .unwrap_or(false)
        }))
    } else {
        Consent::Missing
    };
    let run = Arc::new(Run::new(how.dry_run, consent, Arc::clone(&interrupts.cancel)));
    ui.started(&run, name);
    let dyn_ui: Arc<dyn Ui> = ui.clone();
    let ended = runbook.run(&run, inventory.map(Path::to_path_buf), dyn_ui, args)?;
    let exit = if run.interrupted() {
        Exit::Interrupted
    } else {
        match &ended {
            Ok(()) => Exit::Ok,
            Err(failure) => Exit::of(failure.code),
        }
    };
    ui.ended(&run, &ended, exit);
    Ok(exit)
}
