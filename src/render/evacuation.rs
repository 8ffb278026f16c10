//! What an evacuation or rollback shows: on a terminal, an overall bar
//! (VMs done of the plan's) under each move's own bar, in one
//! MultiProgress, with a line per VM as it is done with; otherwise one JSON
//! line per event (the migrations' lines as `vmig migrate --json` has
//! them, `note` lines, and the `report` at the end).

use std::io::Write;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::runbook::RunbookUi;
use crate::lua::Ui;
use crate::ops::evacuate::{Note, Observer, Report};
use crate::ops::migrate::{Plan, Progress};

#[derive(Debug)]
pub struct EvacuationUi {
    base: Arc<RunbookUi>,
    overall: Option<ProgressBar>,
}

impl EvacuationUi {
    pub fn new(json: bool) -> Self {
        let base = RunbookUi::new(json, false);
        let overall = base.multi().map(|multi| {
            let bar = multi.add(ProgressBar::new(1));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg:12} [{bar:30}] {pos}/{len} VMs  {elapsed}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_message("planning");
            // Its clock and spinner turn while the moves' own bars report.
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
            bar
        });
        Self { base, overall }
    }

    fn line(&self, text: &str) {
        if let Some(multi) = self.base.multi() {
            let _ = multi.println(text);
        }
    }

    fn json(&self, value: &serde_json::Value) {
        if self.base.multi().is_none() {
            let _ = writeln!(std::io::stdout().lock(), "{value}");
        }
    }

    /// The end: the bars go, and the report is printed (a table, or one
    /// JSON line).
    pub fn report(&self, report: &Report) {
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
        if self.base.multi().is_none() {
            let key = if report.kind == "rollback" {
                "rollback"
            } else {
                "evacuation"
            };
            self.json(&json!({ key: report }));
            return;
        }
        let mut out = std::io::stdout().lock();
        let what = if report.kind == "rollback" {
            format!("rollback of run {}", report.of)
        } else {
            format!("evacuation of {}", report.of)
        };
        let _ = writeln!(
            out,
            "{}{what} (run {}) {} in {:.1} s",
            if report.dry_run { "dry run: " } else { "" },
            report.run,
            match (report.dry_run, report.complete) {
                (true, true) => "would be complete",
                (true, false) => "would be partial",
                (false, true) => "complete",
                (false, false) => "partial",
            },
            report.elapsed_ms as f64 / 1000.0
        );
        for vm in &report.vms {
            let _ = writeln!(out, "  {vm}");
        }
        let not_ok: Vec<&str> = report.not_ok().map(|v| v.vm.as_str()).collect();
        if !report.complete && !not_ok.is_empty() {
            let _ = writeln!(out, "left where they were: {}", not_ok.join(", "));
        }
    }
}

impl Observer for EvacuationUi {
    fn migration(&self, plan: &Plan, dry_run: bool) -> Box<dyn Progress> {
        self.base.migration(plan, dry_run)
    }

    fn note(&self, note: &Note) {
        self.json(&json!({ "note": note }));
        match note {
            Note::Planned {
                kind,
                steps,
                stopped,
                left,
                ..
            } => {
                if let Some(bar) = &self.overall {
                    bar.set_length((steps + stopped + left).max(1) as u64);
                    bar.set_message(if *kind == "rollback" {
                        "rolling back"
                    } else {
                        "evacuating"
                    });
                }
                self.line(&note.to_string());
            }
            Note::Result(result) => {
                if let Some(bar) = &self.overall {
                    bar.inc(1);
                }
                // A moved VM has its own line already (its migration's).
                if result.status != crate::ops::evacuate::Status::Moved {
                    self.line(&result.to_string());
                }
            }
            Note::Resuming { .. } | Note::Host { .. } => self.line(&note.to_string()),
        }
    }
}
