//! `vmig vm status|stats|pause|resume|save|shutdown`: requests to a running
//! VMM over its control socket.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::runtime::control::{ControlClient, Reply, Request};
use vmig_backend::size::format_size;

use crate::exit::Exit;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The VMM's control socket (as given to `vmig vm run --control`).
    #[arg(long, value_name = "SOCKET")]
    control: PathBuf,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Directory to write `state.bin` and `memory.img` into (created if needed).
    dir: PathBuf,
}

pub fn exec(args: &ControlArgs, request: &Request) -> Result<Exit> {
    let mut client = ControlClient::connect(&args.control)?;
    client.set_timeout(Some(Duration::from_secs(args.timeout.max(1))))?;
    let reply = client
        .request(request)
        .with_context(|| format!("VMM at {} refused the request", args.control.display()))?;
    print_reply(&reply, args.json)?;
    Ok(Exit::Ok)
}

pub fn exec_save(args: &SaveArgs) -> Result<Exit> {
    // The VMM resolves the path in its own working directory: make it absolute.
    let dir = std::path::absolute(&args.dir).with_context(|| format!("invalid path {}", args.dir.display()))?;
    exec(&args.control, &Request::Save { dir })
}

fn print_reply(reply: &Reply, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(reply)?)?;
        return Ok(());
    }
    match reply {
        Reply::Done => writeln!(out, "ok")?,
        Reply::DirtySample(sample) => writeln!(
            out,
            "{} pages dirtied in {} ms; {} resident",
            sample.dirty_pages, sample.window_ms, sample.resident_pages
        )?,
        Reply::Status(status) => {
            match status.state {
                Some(state) => writeln!(out, "state:   {state}")?,
                None => writeln!(out, "state:   waiting for an incoming migration")?,
            }
            if let Some(target) = &status.migrating_to {
                writeln!(out, "migrating to: {target}")?;
            }
            if let Some(doubt) = &status.in_doubt {
                writeln!(out, "IN DOUBT: {doubt}")?;
            }
            writeln!(out, "pid:     {}", status.pid)?;
            writeln!(out, "vcpus:   {}", status.vcpus)?;
            writeln!(out, "memory:  {}", format_size(status.memory_bytes))?;
            if let Some(incoming) = &status.incoming {
                writeln!(out, "incoming: {:?}", incoming.phase)?;
            }
            if let Some(end) = &status.last_migration {
                writeln!(out, "last migration: {} ({})", end.failure.message, end.failure.code)?;
            }
        }
        Reply::Stats(stats) => {
            writeln!(out, "state:           {}", stats.state)?;
            writeln!(out, "uptime:          {:.1} s", stats.uptime_ms as f64 / 1000.0)?;
            writeln!(out, "vcpus:           {}", stats.vcpus)?;
            writeln!(
                out,
                "memory:          {} ({} resident)",
                format_size(stats.memory_bytes),
                format_size(stats.memory_resident_bytes)
            )?;
            writeln!(
                out,
                "exits:           {} ({} port I/O, {} MMIO)",
                stats.exits, stats.io_exits, stats.mmio_exits
            )?;
            writeln!(out, "console bytes:   {}", stats.console_bytes)?;
        }
        Reply::Saved(info) => writeln!(
            out,
            "saved to {} (state {} bytes, memory {} written)",
            info.dir.display(),
            info.state_bytes,
            format_size(info.memory_bytes_written)
        )?,
        Reply::Memory { hex } => writeln!(out, "{hex}")?,
        Reply::ConsoleInput { accepted } => writeln!(out, "{accepted} bytes of console input taken")?,
        Reply::Migrated(report) => writeln!(out, "{}", serde_json::to_string(report)?)?,
    }
    Ok(())
}
