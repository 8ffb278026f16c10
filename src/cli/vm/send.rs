//! `vmig vm send`: live-migrate the VM of a running VMM to another VMM that
//! waits with `vmig vm run --incoming`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::runtime::control::{ControlClient, ControlError, Failure, Reply, Request};

use crate::cli::options::{MigrationArgs, StreamTlsArgs};
use crate::exit::Exit;
use crate::render::progress::{Display, print_report};

#[derive(Debug, Args)]
#[command(
    after_help = "The exit code says where the VM runs: 0 on the target; 1 still on the source \
    (the migration failed and was rolled back); 6 in doubt (the source stays paused).\n\n\
    Example:\n  vmig vm send --control /run/vm1.sock tcp:10.0.0.2:7000 --downtime-ms 20"
)]
pub struct SendArgs {
    /// The source VMM's control socket.
    #[arg(long, value_name = "SOCKET")]
    control: PathBuf,
    /// Where the target VMM listens (`vmig vm run --incoming tcp:HOST:PORT`).
    #[arg(value_name = "tcp:HOST:PORT")]
    target: String,
    #[command(flatten)]
    limits: MigrationArgs,
    /// The target's migration token (when it runs with `--token-file`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: StreamTlsArgs,
    /// Print progress and the final report as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &SendArgs) -> Result<Exit> {
    let mut options = args.limits.options()?;
    if let Some(path) = &args.token_file {
        options.token = super::run::read_token(path)?;
    }
    let json = args.json || !std::io::stderr().is_terminal();
    let mut client = ControlClient::connect(&args.control)?;
    let mut display = Display::new(json);
    let request = Request::Migrate {
        url: args.target.clone(),
        options,
        tls: args.tls.peer().map(Box::new),
    };
    let result = client.request_with_progress(&request, &mut |p| display.update(p));
    display.finish();
    match result {
        Ok(Reply::Migrated(report)) => {
            print_report(
                &report,
                &format!("migrated to {}: the VM runs there now", args.target),
                json,
            )?;
            Ok(Exit::Ok)
        }
        Ok(other) => anyhow::bail!("unexpected reply {other:?}"),
        Err(ControlError::Refused(failure)) if failure.code == "in_doubt" => {
            print_failure(&failure, json)?;
            eprintln!("vmig: {}", failure.message);
            Ok(Exit::InDoubt)
        }
        Err(ControlError::Refused(failure)) => {
            print_failure(&failure, json)?;
            Err(ControlError::Refused(failure))
                .with_context(|| format!("migration to {} failed; the VM stays on the source", args.target))
        }
        Err(e) => Err(e).with_context(|| format!("migration to {} failed; the VM stays on the source", args.target)),
    }
}

/// With `--json`, the failure's stable code on stdout for scripts, after the
/// progress lines: `{"failed": {"code": ..., "message": ...}}`.
fn print_failure(failure: &Failure, json: bool) -> Result<()> {
    if json {
        let line = serde_json::json!({ "failed": { "code": failure.code, "message": failure.message } });
        writeln!(std::io::stdout().lock(), "{line}")?;
    }
    Ok(())
}
