//! `vmig cancel VM`: cancel a VM's running migration from anywhere.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::migration::MigrationOptions;

use crate::cli::Conflict;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::migrate::{self as flow, Plan};
use crate::render::progress::Display;

#[derive(Debug, Args)]
#[command(
    after_help = "The migration stops and the VM stays on its source, unless its switchover \
    has begun: then it ends as its handoff decides. Either way vmig waits for the outcome and \
    reports it, with the exit codes of `vmig migrate`.\n\nExample:\n  vmig cancel vm1"
)]
pub struct CancelArgs {
    /// The VM whose migration to cancel.
    vm: String,
    /// Print the outcome as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &CancelArgs, inventory: Option<&Path>) -> Result<Exit> {
    let cluster = Cluster::open(inventory)?;
    let located = cluster.locate(&args.vm)?;
    let target_name = located
        .info
        .migrating_to
        .clone()
        .ok_or_else(|| Conflict(format!("{} is not migrating", args.vm)))?;
    let target = cluster.host(&target_name)?.clone();
    let answer = flow::cancel(&cluster, &located.host, &args.vm)
        .with_context(|| format!("cannot cancel the migration of {}", args.vm))?;
    let json = args.json || !std::io::stderr().is_terminal();
    let mut display = Display::new(json);
    let text = if answer.accepted {
        format!("cancelling migration {} of {} to {target_name}", answer.id, args.vm)
    } else {
        format!(
            "too late to cancel migration {} of {}: its switchover has begun; waiting for its outcome",
            answer.id, args.vm
        )
    };
    display.note(
        &text,
        &serde_json::json!({ "cancel": { "id": answer.id, "accepted": answer.accepted } }),
    );
    if !json {
        eprintln!("vmig: {text}");
    }
    let plan = Plan {
        id: answer.id,
        vm: args.vm.clone(),
        source: located.host,
        target,
        options: MigrationOptions::default(),
        info: Some(located.info),
        force: false,
        skip: crate::ops::precheck::Skip::default(),
        run_id: None,
        ping: None,
    };
    let result = flow::watch(&cluster, &plan, &mut |event| display.show(event));
    display.finish();
    super::migrate::report(&plan, result, json)
}
