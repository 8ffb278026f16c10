//! `vmig rollback RUN` / `vmig rollback --last`: undo a run.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::UsageError;
use crate::cli::evacuate::{duration, finish};
use crate::cli::signals;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::evacuate::{self, Settings};
use crate::ops::rollback;
use crate::ops::run::{Consent, Run};
use crate::render::evacuation::EvacuationUi;

#[derive(Debug, Args)]
#[command(after_help = "Every VM the run moved goes back to the host it came from, the last \
    moved first, each with its prechecks; VMs it stopped (maintenance = \"stop\") are started; \
    a cordon it set is lifted. All of it is read from the agents' journals. A VM moved again or \
    deleted since is skipped and reported. The rollback is a run of its own: rolling it back \
    moves the VMs again.\n\n\
    Exit code: 0 when every VM that could go back did (skipped ones are reported); 13 when some \
    did not (each named, with why); 7 when the journals know no such run.\n\n\
    Examples:\n  vmig rollback --last\n  vmig rollback r-3f9a0c21d4b7e650 --dry-run")]
pub struct RollbackArgs {
    /// The run to roll back (its id: `vmig history` shows them).
    #[arg(required_unless_present = "last", conflicts_with = "last")]
    run: Option<String>,
    /// Roll back this operator's latest run.
    #[arg(long)]
    last: bool,
    /// Say what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Moves at once.
    #[arg(long, value_name = "N", default_value_t = evacuate::PARALLEL)]
    parallel: usize,
    /// The most the rollback may take (`90s`, `30m`, `2h`).
    #[arg(long, value_name = "TIME", default_value = "1h")]
    deadline: String,
    /// Print events and the report as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &RollbackArgs, inventory: Option<&Path>) -> Result<Exit> {
    let settings = Settings {
        parallel: args.parallel,
        deadline_s: duration(&args.deadline, "--deadline")?,
        ..Settings::default()
    };
    settings
        .validate()
        .map_err(|e| UsageError(format!("--{}", crate::ops::code::describe(&e))))?;
    let cluster = Cluster::open(inventory)?;
    let of = match &args.run {
        Some(run) => run.clone(),
        None => rollback::last(&cluster)?,
    };
    let plan = rollback::plan(&cluster, &of)?;
    let json = args.json || !std::io::stderr().is_terminal();
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    let run = Run::new(args.dry_run, Consent::Given, Arc::clone(&interrupts.cancel));
    let ui = EvacuationUi::new(json);
    let report = rollback::execute(&run, &cluster, &plan, &settings, &ui);
    match report {
        Ok(report) => finish(&run, &ui, Ok(report)),
        Err(e) => Err(e.into()),
    }
}
