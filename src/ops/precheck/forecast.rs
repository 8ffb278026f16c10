//! The convergence forecast: from how fast the VM dirties its memory
//! (sampled by its VMM with the dirty log for a short window, nothing
//! sent), how much it holds, and the link's bandwidth (the last migration's
//! measured throughput to the target, else the declared link speed, capped
//! by `--bandwidth`), what pre-copy will do: its rounds, total time,
//! downtime, and whether auto-converge must throttle the guest.

use serde::Serialize;

use super::rules::{Facts, Finding, Origin, error, fact, warning};

/// How long the VM's dirty rate is sampled.
pub const WINDOW_MS: u32 = 100;
const PAGE: u64 = 4096;
/// Capturing and restoring vCPU and device state, as the engine expects it.
const STATE_MS: f64 = 2.0;
/// Most live rounds the forecast follows.
const MAX_ROUNDS: u32 = 30;
/// Auto-converge's throttle: where it starts, its steps, its ceiling.
const THROTTLE_START: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;
/// The dirty rate the engine can outrun comfortably: half the bandwidth.
const COMFORT: f64 = 0.5;

/// What the forecast expects of the move.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub window_ms: u32,
    /// Bytes per second the guest dirtied in the window (measured).
    pub dirty_rate_bps: f64,
    /// Guest memory the source holds: the first pass (measured).
    pub resident_bytes: u64,
    pub bandwidth_bps: f64,
    pub bandwidth_origin: Origin,
    /// Live rounds before the switchover.
    pub rounds: u32,
    pub expected_total_ms: f64,
    pub expected_downtime_ms: f64,
    /// The share of time auto-converge will hold the vCPUs (0: none).
    pub throttle_pct: u8,
    /// False when the guest outruns the link and nothing may slow it.
    pub converges: bool,
}

/// Pre-copy over `bandwidth` bytes/s of `resident` bytes dirtied at `dirty`
/// bytes/s, switching over once the rest fits `downtime_ms`.
pub fn model(resident: u64, dirty: f64, bandwidth: f64, downtime_ms: u64, auto_converge: bool) -> Model {
    let limit_s = downtime_ms as f64 / 1000.0;
    let bandwidth = bandwidth.max(1.0);
    let run = |rate: f64| {
        // Round k sends what the guest dirtied while round k-1 was sent.
        let mut left = resident as f64;
        let mut total = 0.0;
        for round in 1..=MAX_ROUNDS {
            let time = left / bandwidth;
            if time <= limit_s {
                return Some((round, total, time));
            }
            total += time;
            left = (rate * time).min(resident as f64);
        }
        None
    };
    if let Some((rounds, total, paused)) = run(dirty) {
        return Model {
            rounds,
            total_s: total + paused,
            downtime_s: paused,
            throttle_pct: 0,
            converges: true,
        };
    }
    if !auto_converge {
        return Model {
            rounds: MAX_ROUNDS,
            total_s: f64::INFINITY,
            downtime_s: f64::INFINITY,
            throttle_pct: 0,
            converges: false,
        };
    }
    // The throttle auto-converge reaches: its first step at which the guest
    // dirties at most half of what the link sends.
    let mut throttle = THROTTLE_START;
    while throttle < THROTTLE_MAX && dirty * (1.0 - f64::from(throttle) / 100.0) > COMFORT * bandwidth {
        throttle = (throttle + THROTTLE_STEP).min(THROTTLE_MAX);
    }
    let slowed = dirty * (1.0 - f64::from(throttle) / 100.0);
    match run(slowed) {
        Some((rounds, total, paused)) => Model {
            rounds,
            total_s: total + paused,
            downtime_s: paused,
            throttle_pct: throttle,
            converges: true,
        },
        None => Model {
            rounds: MAX_ROUNDS,
            total_s: f64::INFINITY,
            downtime_s: f64::INFINITY,
            throttle_pct: THROTTLE_MAX,
            converges: false,
        },
    }
}

/// The model's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub rounds: u32,
    pub total_s: f64,
    pub downtime_s: f64,
    pub throttle_pct: u8,
    pub converges: bool,
}

/// The link's bandwidth for this move, and where it comes from.
fn bandwidth(f: &Facts) -> (f64, Origin) {
    let declared_link = f.source.link_speed_mbps.min(f.target.link_speed_mbps) as f64 * 1e6 / 8.0;
    let (link, origin) = match f.source.throughput_to.get(&f.target.name) {
        Some(&measured) if measured > 0.0 => (measured, Origin::Measured),
        _ => (declared_link, Origin::Declared),
    };
    match f.options.bandwidth_limit {
        Some(cap) if (cap as f64) < link => (cap as f64, Origin::Declared),
        _ => (link, origin),
    }
}

/// The forecast for `f`, when the VM's dirty rate was sampled.
pub fn forecast(f: &Facts) -> Option<Forecast> {
    let sample = f.sample.as_ref()?.as_ref().ok()?;
    let window_s = f64::from(sample.window_ms.max(1)) / 1000.0;
    let dirty = (sample.dirty_pages * PAGE) as f64 / window_s;
    let resident = sample.resident_pages * PAGE;
    let (bandwidth_bps, bandwidth_origin) = bandwidth(f);
    let m = model(
        resident,
        dirty,
        bandwidth_bps,
        f.options.downtime_limit_ms,
        f.options.auto_converge,
    );
    let ms = |s: f64| if s.is_finite() { s * 1000.0 } else { f64::INFINITY };
    Some(Forecast {
        window_ms: sample.window_ms,
        dirty_rate_bps: dirty,
        resident_bytes: resident,
        bandwidth_bps,
        bandwidth_origin,
        rounds: m.rounds,
        expected_total_ms: ms(m.total_s),
        expected_downtime_ms: ms(m.downtime_s) + STATE_MS,
        throttle_pct: m.throttle_pct,
        converges: m.converges,
    })
}

fn mb(bps: f64) -> String {
    format!("{:.0} MB/s", bps / 1e6)
}

/// `migration.convergence`: warns when auto-converge will have to throttle
/// the guest, errors when the move cannot converge within its limits.
pub fn convergence(f: &Facts) -> Option<Finding> {
    let sample = f.sample.as_ref()?;
    let vm = &f.vm.name;
    let sample = match sample {
        Ok(sample) => sample,
        Err(why) => {
            return error(
                "migration.convergence",
                format!(
                    "{} could not sample {vm}'s dirty rate ({why}): the move is refused until it can",
                    f.source.name
                ),
                vec![fact(format!("{}.dirty_sample", f.source.name), why, Origin::Measured)],
            );
        }
    };
    let forecast = forecast(f)?;
    let facts = vec![
        fact("vm.dirty_rate_bps", forecast.dirty_rate_bps, Origin::Measured),
        fact("vm.dirty_sample_window_ms", sample.window_ms, Origin::Measured),
        fact("vm.resident_bytes", forecast.resident_bytes, Origin::Measured),
        fact("link.bandwidth_bps", forecast.bandwidth_bps, forecast.bandwidth_origin),
        fact(
            "options.downtime_limit_ms",
            f.options.downtime_limit_ms,
            Origin::Declared,
        ),
        fact("options.auto_converge", f.options.auto_converge, Origin::Declared),
    ];
    if !forecast.converges {
        let fix = if f.options.auto_converge {
            "even at auto-converge's ceiling; raise the bandwidth, or move it when it is quieter"
        } else {
            "and auto-converge is off: allow it, raise the bandwidth or the downtime limit"
        };
        return error(
            "migration.convergence",
            format!(
                "{vm} dirties {} and the link sends {}: pre-copy cannot converge to a {} ms downtime, {fix}",
                mb(forecast.dirty_rate_bps),
                mb(forecast.bandwidth_bps),
                f.options.downtime_limit_ms
            ),
            facts,
        );
    }
    let limit_ms = f.options.timeout_s as f64 * 1000.0;
    if forecast.expected_total_ms > limit_ms {
        let (total, limit) = (forecast.expected_total_ms / 1000.0, f.options.timeout_s);
        let mut facts = facts;
        facts.push(fact("options.timeout_s", limit, Origin::Declared));
        return match f.options.timeout_action {
            vmig_backend::migration::TimeoutAction::Cancel => error(
                "migration.convergence",
                format!(
                    "{vm} is expected to take about {total:.1} s to move, past its {limit} s time limit, which would \
                     cancel it: raise --timeout or the bandwidth, or let the limit force the switchover \
                     (--timeout-action force)"
                ),
                facts,
            ),
            vmig_backend::migration::TimeoutAction::Force => warning(
                "migration.convergence",
                format!(
                    "{vm} is expected to take about {total:.1} s to move, past its {limit} s time limit: the \
                     switchover would be forced then, with what is left sent while the VM is paused"
                ),
                facts,
            ),
        };
    }
    if forecast.throttle_pct == 0 {
        return None;
    }
    warning(
        "migration.convergence",
        format!(
            "{vm} dirties {} against a link of {}: auto-converge will hold its vCPUs about {}% of the time; \
             expected total {:.1} s, downtime {:.0} ms",
            mb(forecast.dirty_rate_bps),
            mb(forecast.bandwidth_bps),
            forecast.throttle_pct,
            forecast.expected_total_ms / 1000.0,
            forecast.expected_downtime_ms
        ),
        facts,
    )
}

#[cfg(test)]
mod tests {
    use super::super::rules::tests::facts;
    use super::super::rules::{Severity, check};
    use super::*;
    use vmig_backend::runtime::control::DirtySample;

    const GIB: u64 = 1 << 30;

    #[test]
    fn an_idle_guest_moves_in_one_pass_and_a_busy_one_in_more() {
        let idle = model(GIB, 0.0, 1e9, 50, true);
        assert_eq!((idle.rounds, idle.throttle_pct, idle.converges), (2, 0, true));
        assert!((idle.total_s - 1.074).abs() < 0.01, "{idle:?}");
        let busy = model(GIB, 1e8, 1e9, 50, true);
        assert!(busy.rounds > idle.rounds && busy.total_s > idle.total_s, "{busy:?}");
        assert_eq!(busy.throttle_pct, 0);
        assert!(busy.downtime_s <= 0.05);
    }

    #[test]
    fn a_guest_faster_than_the_link_needs_the_throttle_or_cannot_converge() {
        let fast = model(GIB, 2e9, 1e9, 50, true);
        assert!(fast.converges);
        // 2 GB/s slowed to at most half of 1 GB/s: a 80% throttle.
        assert_eq!(fast.throttle_pct, 80, "{fast:?}");
        let stuck = model(GIB, 2e9, 1e9, 50, false);
        assert!(!stuck.converges);
    }

    fn with_sample(dirty_pages: u64) -> Facts {
        let mut f = facts();
        f.sample = Some(Ok(DirtySample {
            window_ms: 100,
            dirty_pages,
            resident_pages: (1 << 30) / PAGE,
        }));
        f
    }

    #[test]
    fn the_rule_warns_on_a_throttle_and_errors_when_nothing_can_slow_the_guest() {
        // 10 GbE declared: 1.25 GB/s. 100 ms of 2.5 GB/s: 61035 pages.
        let mut f = with_sample(61_035);
        let found = check(&f);
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("migration.convergence", Severity::Warning)
        );
        assert!(found[0].message.contains("auto-converge"), "{}", found[0].message);
        f.options.auto_converge = false;
        assert_eq!(check(&f)[0].severity, Severity::Error);
        // A quiet guest: no finding, a forecast all the same.
        let quiet = with_sample(100);
        assert!(check(&quiet).is_empty());
        let forecast = forecast(&quiet).unwrap();
        assert_eq!(forecast.bandwidth_origin, Origin::Declared);
        assert!(
            forecast.expected_total_ms > 800.0 && forecast.expected_total_ms < 1000.0,
            "{forecast:?}"
        );
        // What the last migration to the target measured wins over the declared link.
        let mut measured = with_sample(100);
        measured.source.throughput_to.insert("hostB".into(), 5e8);
        let forecast = super::forecast(&measured).unwrap();
        assert_eq!(
            (forecast.bandwidth_bps, forecast.bandwidth_origin),
            (5e8, Origin::Measured)
        );
        // A move expected to outlast its time limit.
        let mut slow = with_sample(100);
        slow.options.timeout_s = 0;
        let found = check(&slow);
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("migration.convergence", Severity::Error)
        );
        assert!(found[0].message.contains("time limit"), "{}", found[0].message);
        slow.options.timeout_action = vmig_backend::migration::TimeoutAction::Force;
        assert_eq!(check(&slow)[0].severity, Severity::Warning);
        // A sample that failed fails the move closed.
        let mut failed = facts();
        failed.sample = Some(Err("the VMM did not answer".into()));
        assert_eq!(check(&failed)[0].severity, Severity::Error);
    }
}
