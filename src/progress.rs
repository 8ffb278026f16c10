//! Progress of a migration as the operator sees it: an indicatif bar on a
//! terminal, JSON lines otherwise; and the final report.

use std::io::Write;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use vmig_backend::migration::{Phase, Progress, Report};
use vmig_backend::size::format_size;

/// Progress: an indicatif bar on a terminal, JSON lines otherwise.
#[derive(Debug)]
pub struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    pub fn new(json: bool) -> Self {
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

    pub fn update(&mut self, progress: &Progress) {
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

    /// A phase before the engine reports (queued, prepared).
    pub fn note(&mut self, text: &str, json_line: &serde_json::Value) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(text.to_string());
                bar.tick();
            }
            None => {
                let _ = writeln!(std::io::stdout().lock(), "{json_line}");
            }
        }
    }

    /// Nothing new: keeps a terminal's spinner turning.
    pub fn tick(&mut self) {
        if let Some(bar) = &self.bar {
            bar.tick();
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub fn print_report(report: &Report, headline: &str, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "migrated": report }))?;
        return Ok(());
    }
    writeln!(out, "{headline}")?;
    writeln!(
        out,
        "  total {:.1} ms, downtime {:.2} ms (last pages {:.2}, state {:.2}, handoff {:.2})",
        report.total_ms, report.downtime_ms, report.final_pages_ms, report.state_ms, report.handoff_ms
    )?;
    writeln!(
        out,
        "  sent {} in {} rounds over {} streams ({}/s, full pass {}/s); {} zero pages skipped, {} untouched",
        format_size(report.bytes_sent),
        report.rounds,
        report.streams,
        format_size(report.throughput_bps as u64),
        format_size(report.full_pass_bps as u64),
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
        let at = report
            .forced_at_ms
            .map_or_else(String::new, |ms| format!(" at {:.1} s", ms / 1000.0));
        writeln!(
            out,
            "  the time limit forced the switchover{at}: the last {} were sent with the VM paused, hence the downtime",
            format_size(report.final_round_bytes)
        )?;
    }
    if let Some(hash) = report.memory_hash {
        writeln!(
            out,
            "  guest memory verified identical on both sides (hash {hash:#018x})"
        )?;
    }
    Ok(())
}
