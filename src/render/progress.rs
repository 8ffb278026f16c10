//! Progress of a migration as the operator sees it: an indicatif bar on a
//! terminal (one of several in a runbook), JSON lines otherwise; and the
//! final report.

use std::io::Write;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use vmig_backend::api::{MigrateProgress, MigrateResult};
use vmig_backend::migration::{Phase, Progress, Report};

use crate::ops::code::{Code, describe};
use crate::ops::migrate::{Event, MigrateError, Plan};
use vmig_backend::size::format_size;

/// One migration's progress: an indicatif bar on a terminal, JSON lines
/// otherwise (tagged with the migration's id and VM when it has them, so
/// that the lines of migrations running at once can be told apart).
#[derive(Debug)]
pub struct Display {
    bar: Option<ProgressBar>,
    /// The keys every JSON line carries beside its own.
    tag: serde_json::Map<String, Value>,
}

impl Display {
    pub fn new(json: bool) -> Self {
        Self {
            bar: (!json).then(|| styled(ProgressBar::new(1))),
            tag: serde_json::Map::new(),
        }
    }

    /// A bar among others (`multi`), or JSON lines when there is none.
    pub fn among(multi: Option<&MultiProgress>, label: &str) -> Self {
        let bar = multi.map(|multi| {
            let bar = multi.add(styled(ProgressBar::new(1)));
            bar.set_message(label.to_string());
            bar
        });
        Self {
            bar,
            tag: serde_json::Map::new(),
        }
    }

    /// Every JSON line gets `"id"` and `"vm"` (of a migration).
    pub fn tagged(mut self, id: &str, vm: &str) -> Self {
        self.tag.insert("id".into(), Value::from(id));
        self.tag.insert("vm".into(), Value::from(vm));
        self
    }

    /// The VM's size: the bar's length until the engine says more.
    pub fn sized(self, bytes: u64) -> Self {
        if let Some(bar) = &self.bar {
            bar.set_length(bytes.max(1));
        }
        self
    }

    fn print(&self, mut line: Value) {
        if let Value::Object(fields) = &mut line {
            for (key, value) in &self.tag {
                fields.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        // A reader that went away (a closed pipe) just stops the updates.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    pub fn update(&mut self, progress: &Progress) {
        let Some(bar) = &self.bar else {
            self.print(serde_json::json!({ "progress": progress }));
            return;
        };
        // One total through the rounds, the VM's memory: the bar shows how
        // much of it the target holds as it is now, so each later round
        // starts near the end and the switchover fills it.
        let total = progress.memory_bytes.max(1);
        bar.set_length(total);
        bar.set_position(total - progress.bytes_remaining.min(total));
        let phase = match progress.phase {
            Phase::Connecting => "connecting".to_string(),
            Phase::Precopy => format!("round {}", progress.round),
        };
        bar.set_message(phase);
        let mut detail = format!(
            "sent {} at {}/s  dirty {}/s  expected downtime {:.1} ms",
            format_size(progress.bytes_sent),
            format_size(progress.throughput_bps as u64),
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
    pub fn note(&mut self, text: &str, json_line: &Value) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(text.to_string());
                bar.tick();
            }
            None => self.print(json_line.clone()),
        }
    }

    /// Nothing new: keeps a terminal's spinner turning.
    pub fn tick(&mut self) {
        if let Some(bar) = &self.bar {
            bar.tick();
        }
    }

    /// Draws one event of a migration.
    pub fn show(&mut self, event: &Event) {
        match event {
            Event::Progress(MigrateProgress::Engine(p)) => self.update(p),
            Event::Progress(MigrateProgress::Started { id }) => self.note(
                &format!("migration {id}"),
                &serde_json::json!({ "started": { "id": id } }),
            ),
            Event::Progress(MigrateProgress::Queued { host, position }) => self.note(
                &format!("queued on {host} (#{position})"),
                &serde_json::json!({ "queued": { "host": host, "position": position } }),
            ),
            Event::Progress(MigrateProgress::Prepared { target }) => self.note(
                &format!("{target} ready"),
                &serde_json::json!({ "prepared": { "target": target } }),
            ),
            Event::Progress(MigrateProgress::Waiting { .. }) => self.tick(),
            Event::Progress(MigrateProgress::Cancelling { accepted }) | Event::Cancel { accepted } => {
                let text = if *accepted {
                    "cancelling"
                } else {
                    "too late to cancel: the switchover has begun; waiting for its outcome"
                };
                self.note(text, &serde_json::json!({ "cancel": { "accepted": accepted } }));
            }
            Event::Checked(verdict) => {
                let warnings: Vec<String> = verdict
                    .warnings
                    .iter()
                    .map(|f| format!("{}: {}", f.rule, f.message))
                    .collect();
                let text = if warnings.is_empty() {
                    "prechecks passed".to_string()
                } else {
                    format!("forced past: {}", warnings.join("; "))
                };
                self.note(&text, &serde_json::json!({ "precheck": verdict }));
            }
            Event::Asking { host, why } => self.note(
                &format!("asking {host} ({why})"),
                &serde_json::json!({ "asking": { "host": host, "why": why } }),
            ),
        }
    }

    /// The VM moved: its bar is full.
    pub fn complete(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_position(bar.length().unwrap_or(1));
            bar.set_message("moved");
            bar.tick();
        }
    }

    /// The migration ended: its bar goes (a runbook prints a line for it).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn styled(bar: ProgressBar) -> ProgressBar {
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:30}] {percent:>3}% of {total_bytes}  {prefix}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// The JSON line that ends a migration that moved its VM.
pub fn migrated_line(result: &MigrateResult) -> Value {
    serde_json::json!({ "migrated": result })
}

/// What a failed migration's outcome says: its id, VM, target and why.
pub fn failure_message(plan: &Plan, error: &MigrateError) -> String {
    format!(
        "migration {} of {} to {}: {}",
        plan.id,
        plan.vm,
        plan.target.name,
        describe(error)
    )
}

/// The JSON line that ends a migration that did not move its VM.
pub fn failed_line(plan: &Plan, code: Code, message: &str) -> Value {
    serde_json::json!({ "failed": { "id": plan.id, "vm": plan.vm, "code": code, "message": message } })
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
    if let (Some(blackout), Some(resume)) = (report.blackout_ms, report.resume_ms) {
        writeln!(
            out,
            "  the guest stood still {blackout:.2} ms: the downtime less {:.2} ms to stop its vCPUs, \
             plus {resume:.2} ms for the target to start them after Running, less Running's way back",
            report.stop_ms
        )?;
    }
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
    if let Some(wait) = report.vcpu_wait_ms {
        writeln!(
            out,
            "  the guest's vCPUs waited {wait:.1} ms each for a CPU while it ran live ({:.1}% of {:.0} ms; \
             pre-copy kept it {}% of a contended core)",
            wait / report.live_ms.max(1e-3) * 100.0,
            report.live_ms,
            report.guest_share
        )?;
    }
    if let Some(release) = &report.share_released {
        let why = match release.why {
            vmig_backend::migration::Release::Converge => "to converge before the guest would be throttled",
            vmig_backend::migration::Release::TimeLimit => "to finish within its time limit",
            vmig_backend::migration::Release::Starved => "as no core was free for it",
        };
        writeln!(
            out,
            "  pre-copy took the CPU the guest kept after {:.0} ms, {why}",
            release.at_ms
        )?;
    }
    match &report.encryption {
        Some(suite) => writeln!(out, "  streams encrypted: TLS 1.3, {suite}")?,
        None => writeln!(out, "  streams in plaintext (no TLS)")?,
    }
    if let Some(a) = &report.announce {
        writeln!(
            out,
            "  network: the target announced the VM's cards at the pause and {} times after it \
             ({} ms, then +{} ms, at most {} ms apart); {} frames that reached the source meanwhile went along",
            a.rounds, a.initial_ms, a.step_ms, a.max_ms, report.frames_carried
        )?;
    }
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
