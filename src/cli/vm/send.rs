//! `vmig vm send`: live-migrate the VM of a running VMM to another VMM that
//! waits with `vmig vm run --incoming`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vmig_backend::migration::{MigrationOptions, Phase, Progress, Report, TimeoutAction};
use vmig_backend::size::{format_size, parse_size};
use vmig_backend::vmm::control::{ControlClient, ControlError, Reply, Request};

use super::super::UsageError;
use crate::exit::Exit;

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
    /// Switch over once the expected downtime is below this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = MigrationOptions::default().downtime_limit_ms)]
    downtime_ms: u64,
    /// Parallel TCP streams.
    #[arg(long, value_name = "N", default_value_t = MigrationOptions::default().streams)]
    streams: u32,
    /// Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M.
    #[arg(long, value_name = "RATE")]
    bandwidth: Option<String>,
    /// Time limit in seconds for the whole migration.
    #[arg(long, value_name = "S", default_value_t = MigrationOptions::default().timeout_s)]
    timeout: u64,
    /// What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now).
    #[arg(long, value_name = "ACTION", default_value = "cancel", value_parser = ["cancel", "force"])]
    timeout_action: String,
    /// Do not throttle the vCPUs of a guest that dirties memory faster than the link sends.
    #[arg(long)]
    no_auto_converge: bool,
    /// Hash guest memory on both sides at switchover and refuse the handoff if
    /// they differ (for testing; adds the hashing time to the downtime).
    #[arg(long)]
    verify_memory: bool,
    /// Print progress and the final report as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

fn usage(message: String) -> anyhow::Error {
    UsageError(message).into()
}

pub fn exec(args: &SendArgs) -> Result<Exit> {
    let bandwidth_limit = args
        .bandwidth
        .as_deref()
        .map(|b| parse_size(b).map_err(|e| usage(format!("--bandwidth: {e}"))))
        .transpose()?;
    if bandwidth_limit == Some(0) {
        return Err(usage("--bandwidth: must be more than 0".into()));
    }
    let options = MigrationOptions {
        downtime_limit_ms: args.downtime_ms,
        bandwidth_limit,
        timeout_s: args.timeout,
        timeout_action: if args.timeout_action == "force" {
            TimeoutAction::Force
        } else {
            TimeoutAction::Cancel
        },
        streams: args.streams,
        auto_converge: !args.no_auto_converge,
        verify_memory: args.verify_memory,
    };
    let json = args.json || !std::io::stderr().is_terminal();
    let mut client = ControlClient::connect(&args.control)?;
    let mut display = Display::new(json);
    let request = Request::Migrate {
        url: args.target.clone(),
        options,
    };
    let result = client.request_with_progress(&request, &mut |p| display.update(p));
    display.finish();
    match result {
        Ok(Reply::Migrated(report)) => {
            print_report(&report, &args.target, json)?;
            Ok(Exit::Ok)
        }
        Ok(other) => anyhow::bail!("unexpected reply {other:?}"),
        Err(ControlError::Refused(message)) if message.contains("in doubt") => {
            eprintln!("vmig: {message}");
            Ok(Exit::InDoubt)
        }
        Err(e) => Err(e).with_context(|| format!("migration to {} failed; the VM stays on the source", args.target)),
    }
}

/// Progress: an indicatif bar on a terminal, JSON lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    fn new(json: bool) -> Self {
        let bar = (!json).then(|| {
            let bar = ProgressBar::new(1);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}  {prefix}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar }
    }

    fn update(&mut self, progress: &Progress) {
        let Some(bar) = &self.bar else {
            // A reader that went away (a closed pipe) just stops the updates.
            let _ = writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::json!({ "progress": progress })
            );
            return;
        };
        // The bar's length is what has been and still is to be sent, so it
        // never runs backwards when the guest dirties pages again.
        bar.set_length((progress.bytes_sent + progress.bytes_remaining).max(1));
        bar.set_position(progress.bytes_sent);
        let phase = match progress.phase {
            Phase::Connecting => "connecting".to_string(),
            Phase::Precopy => format!("round {}", progress.round),
            Phase::Switchover => "switchover".to_string(),
            Phase::Handoff => "handoff".to_string(),
        };
        bar.set_message(phase);
        let mut detail = format!(
            "dirty {}/s  expected downtime {:.1} ms",
            format_size(progress.dirty_rate_bps as u64),
            progress.expected_downtime_ms
        );
        if progress.throttle_pct > 0 {
            detail.push_str(&format!("  throttle {}%", progress.throttle_pct));
        }
        bar.set_prefix(detail);
        bar.tick();
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn print_report(report: &Report, target: &str, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "migrated": report }))?;
        return Ok(());
    }
    writeln!(out, "migrated to {target}: the VM runs there now")?;
    writeln!(
        out,
        "  total {:.1} ms, downtime {:.2} ms (last pages {:.2}, state {:.2}, handoff {:.2})",
        report.total_ms, report.downtime_ms, report.final_pages_ms, report.state_ms, report.handoff_ms
    )?;
    writeln!(
        out,
        "  sent {} in {} rounds over {} streams ({}/s); {} zero pages skipped, {} untouched",
        format_size(report.bytes_sent),
        report.rounds,
        report.streams,
        format_size(report.throughput_bps as u64),
        report.zero_pages_skipped,
        report.untouched_pages
    )?;
    if report.max_throttle_pct > 0 {
        writeln!(
            out,
            "  auto-converge throttled the vCPUs up to {}%",
            report.max_throttle_pct
        )?;
    }
    if report.forced {
        writeln!(out, "  the time limit forced the switchover")?;
    }
    if let Some(hash) = report.memory_hash {
        writeln!(
            out,
            "  guest memory verified identical on both sides (hash {hash:#018x})"
        )?;
    }
    Ok(())
}
