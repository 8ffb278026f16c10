//! The whole fault matrix (see `tests/common/faults.rs`): every cell, each
//! trial on one lab of two agents with a guest that dirties memory and checks
//! it. Prints a line per trial and the table, and writes the table into
//! `docs/reliability.md` when the whole matrix ran.
//!
//! Run with `cargo bench --bench faults`. `VMIG_FAULT_TRIALS` (default 3)
//! sets the trials per cell; `VMIG_FAULT_CELLS=TEXT` runs only the cells
//! whose name contains TEXT (then nothing is written).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use common::faults::{self, Cell, PHASES};

struct Row {
    cell: Cell,
    trials: usize,
    passes: usize,
    /// How the passing trials ended: "exit N: state on host" → count.
    outcomes: BTreeMap<String, usize>,
    failures: Vec<String>,
    seconds: f64,
}

fn main() {
    let trials: usize = std::env::var("VMIG_FAULT_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("VMIG_FAULT_CELLS").ok();
    let cells: Vec<Cell> = faults::cells()
        .into_iter()
        .filter(|cell| only.as_deref().is_none_or(|text| cell.to_string().contains(text)))
        .collect();
    let started = Instant::now();
    let mut lab = faults::lab();
    let mut rows = Vec::new();
    for (index, cell) in cells.iter().enumerate() {
        let mut row = Row {
            cell: *cell,
            trials,
            passes: 0,
            outcomes: BTreeMap::new(),
            failures: Vec::new(),
            seconds: 0.0,
        };
        for trial in 0..trials {
            let began = Instant::now();
            match faults::trial(&lab, *cell) {
                Ok(seen) => {
                    row.passes += 1;
                    let exit = seen.exit.map_or("killed".to_string(), |code| format!("exit {code}"));
                    *row.outcomes
                        .entry(format!("{exit}: {} on {}", seen.state, seen.host))
                        .or_default() += 1;
                    eprintln!(
                        "[{}/{}] {cell} #{}: ok, {exit}, vm1 {} on {} ({:.1} s)",
                        index + 1,
                        cells.len(),
                        trial + 1,
                        seen.state,
                        seen.host,
                        seen.seconds
                    );
                }
                Err(why) => {
                    eprintln!("[{}/{}] {cell} #{}: FAILED: {why}", index + 1, cells.len(), trial + 1);
                    row.failures.push(why);
                    // A trial that broke may leave the lab in a state the
                    // next would inherit: start the next on a fresh one.
                    drop(lab);
                    lab = faults::lab();
                }
            }
            row.seconds += began.elapsed().as_secs_f64();
        }
        rows.push(row);
    }
    drop(lab);
    let table = render(&rows, trials, started.elapsed().as_secs_f64());
    println!("{table}");
    if only.is_none() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reliability.md");
        std::fs::write(path, &table).expect("cannot write docs/reliability.md");
        eprintln!("wrote {path}");
    }
    let failed: usize = rows.iter().map(|r| r.failures.len()).sum();
    if failed > 0 {
        eprintln!("{failed} trials failed");
        std::process::exit(1);
    }
}

fn render(rows: &[Row], trials: usize, seconds: f64) -> String {
    let cells = rows.len();
    let passed_cells = rows.iter().filter(|r| r.passes == r.trials).count();
    let passes: usize = rows.iter().map(|r| r.passes).sum();
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability: the fault matrix");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Written by `cargo bench --bench faults` (the cells and their checks are in \
         `tests/common/faults.rs`; a subset runs in CI as `tests/faults.rs`). Each trial \
         migrates a 256 MiB test guest that has filled 96 MiB and dirties 32 MiB at 40 MB/s, \
         from hostA to hostB of a lab on this machine (`--bandwidth 64M`, so that each phase \
         lasts), holds the migration at the phase, strikes, lets it go on, and lifts the fault: \
         a killed agent is restarted at once, a stopped process is continued and a cut link \
         healed after {} s, longer than every timeout (the lab's agents run with \
         `accept_s = {}`, `stream_s = {}`, `handoff_s = {}`). Then it checks that at most one copy \
         runs (none only where a VMM was killed, reported lost, or stopped on request), that the \
         running copy's heartbeats go on in sequence with no integrity error, that `vmig migrate` \
         ended within 120 s with an exit code and message that say where the VM is (and no \
         library's URL), and that no receiving VMM, token, VM directory or zombie is left.",
        faults::FAULT_FOR.as_secs(),
        faults::ACCEPT_S,
        faults::STREAM_S,
        faults::HANDOFF_S
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "**{cells} cells, {trials} trials each: {passes} of {} trials passed; {passed_cells} of {cells} cells passed every trial** ({:.0} min).",
        cells * trials,
        seconds / 60.0
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Links: a *cut* drops every packet of the link both ways (nftables), as a pulled cable does: \
         the `vmig client` row cuts the client's links to both agents, an agent's row its API and \
         its links to the other agent, and `VMM link` the migration streams."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| phase | fault | struck | trials | passed | how the trials ended |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for phase in PHASES {
        for row in rows.iter().filter(|r| r.cell.phase == phase) {
            let how: Vec<String> = row
                .outcomes
                .iter()
                .map(|(outcome, count)| format!("{count}× {outcome}"))
                .collect();
            let _ = writeln!(
                out,
                "| {phase} | {} | {} | {} | {} | {} |",
                row.cell.fault.name(),
                row.cell.struck.name(),
                row.trials,
                row.passes,
                how.join("; ")
            );
        }
    }
    let failures: Vec<&Row> = rows.iter().filter(|r| !r.failures.is_empty()).collect();
    if !failures.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "## Failures");
        let _ = writeln!(out);
        for row in failures {
            for why in &row.failures {
                let _ = writeln!(out, "- {}: {why}", row.cell);
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Outcomes read: `exit 0: running on hostB` moved; `exit 1: running on hostA` did not move and runs on its source; `exit 11: lost on …` the VM's only VMM was killed; `killed` the client itself was killed."
    );
    out
}
