//! `vmig precheck VM [HOST]`: whether a VM can move, rule by rule.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::precheck::{self, Finding, Verdict};

/// The help's epilogue: every rule with what it checks and its fix, from
/// the rules themselves (so the man page cannot miss one).
fn after_help() -> String {
    let rules: String = precheck::rules::RULES
        .iter()
        .map(|r| format!("  {}: {}\n", r.id, r.doc))
        .collect();
    format!(
        "Each finding has a stable rule id, a severity and a message that names the fix, with the \
         facts it used (measured by an agent, or declared in a config). An error blocks the move; a \
         warning only says it may go badly (a move then needs --force). Rules:\n{rules}\n\
         Exit code: 0 the move can start (with HOST: no errors; without: some host has none); 1 it \
         cannot; 2 bad arguments (an unknown --skip rule); 7 unknown VM or host; 5 a host could not be asked.\n\n\
         Examples:\n  vmig precheck vm1 hostB\n  vmig precheck vm1          # every other host, a table\n  \
         vmig precheck vm1 hostB --json\n  vmig precheck vm1 hostB --skip concurrency.budget"
    )
}

#[derive(Debug, Args)]
#[command(after_help = after_help())]
pub struct PrecheckArgs {
    /// The VM to move.
    vm: String,
    /// The host to check (default: every other host).
    host: Option<String>,
    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,
    /// Do not check this rule (repeatable).
    #[arg(long, value_name = "RULE")]
    skip: Vec<String>,
    /// The move's limits, as `vmig migrate` takes them (the convergence forecast uses them).
    #[command(flatten)]
    limits: super::options::MigrationArgs,
}

pub fn exec(args: &PrecheckArgs, inventory: Option<&Path>) -> Result<Exit> {
    let skip = precheck::Skip::parse(&args.skip).map_err(|e| crate::cli::UsageError(format!("--skip: {e}")))?;
    let checks = precheck::Checks {
        skip,
        options: args.limits.options()?,
    };
    let cluster = Cluster::open(inventory)?;
    let mut out = std::io::stdout().lock();
    if let Some(host) = &args.host {
        let verdict = precheck::precheck(&cluster, &args.vm, host, &checks)?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&verdict)?)?;
        } else {
            print_verdict(&mut out, &verdict)?;
        }
        return Ok(if verdict.ok { Exit::Ok } else { Exit::Failure });
    }
    let all = precheck::precheck_all(&cluster, &args.vm, &checks)?;
    let mut exit = Exit::Failure;
    let mut json = Vec::new();
    if !args.json {
        writeln!(out, "{:<10} {:<8} DETAIL", "HOST", "VERDICT")?;
    }
    for (host, verdict) in all {
        match verdict {
            Ok(verdict) => {
                if verdict.ok {
                    exit = Exit::Ok;
                }
                if args.json {
                    json.push(serde_json::to_value(&verdict)?);
                    continue;
                }
                let (word, detail) = match (verdict.errors.first(), verdict.warnings.len()) {
                    (Some(first), _) => ("blocked", format!("{}: {}", first.rule, first.message)),
                    (None, 0) => ("ok", String::new()),
                    (None, n) => ("warnings", format!("{n}: {}", verdict.warnings[0].rule)),
                };
                writeln!(out, "{host:<10} {word:<8} {detail}")?;
            }
            Err(error) => {
                let message = crate::ops::code::describe(&error);
                if args.json {
                    json.push(serde_json::json!({ "target": host, "code": error.code(), "error": message }));
                } else {
                    writeln!(out, "{host:<10} {:<8} {message}", error.code())?;
                }
            }
        }
    }
    if args.json {
        writeln!(out, "{}", serde_json::Value::Array(json))?;
    }
    Ok(exit)
}

fn print_verdict(out: &mut impl Write, verdict: &Verdict) -> Result<()> {
    let line = |out: &mut dyn Write, finding: &Finding, word: &str| {
        writeln!(out, "{word:<8} {:<19} {}", finding.rule, finding.message)
    };
    for finding in &verdict.errors {
        line(out, finding, "error")?;
    }
    for finding in &verdict.warnings {
        line(out, finding, "warning")?;
    }
    let summary = match (verdict.errors.len(), verdict.warnings.len()) {
        (0, 0) => "can move: every check passed".to_string(),
        (0, w) => format!("can move, with {w} warning(s)"),
        (e, w) => format!("cannot move: {e} error(s), {w} warning(s)"),
    };
    writeln!(
        out,
        "{} from {} to {}: {summary}",
        verdict.vm, verdict.source, verdict.target
    )?;
    if let Some(f) = &verdict.forecast {
        let origin = match f.bandwidth_origin {
            precheck::rules::Origin::Measured => "measured",
            precheck::rules::Origin::Declared => "declared",
        };
        let expect = if f.converges {
            format!(
                "about {:.1} s in {} rounds, downtime {:.0} ms{}",
                f.expected_total_ms / 1000.0,
                f.rounds,
                f.expected_downtime_ms,
                if f.throttle_pct > 0 {
                    format!(", throttled {}%", f.throttle_pct)
                } else {
                    String::new()
                }
            )
        } else {
            "no convergence".to_string()
        };
        writeln!(
            out,
            "forecast: {expect} (dirties {:.1} MB/s over {} ms, {} resident, link {:.0} MB/s {origin})",
            f.dirty_rate_bps / 1e6,
            f.window_ms,
            vmig_backend::size::format_size(f.resident_bytes),
            f.bandwidth_bps / 1e6
        )?;
    }
    Ok(())
}
