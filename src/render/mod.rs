//! Drawing for the front ends: progress bars on a terminal, JSON lines
//! without one. Nothing here decides anything.

pub mod console;
pub mod evacuation;
pub mod progress;
pub mod roff;
pub mod runbook;

/// Milliseconds since the epoch as a UTC time, `2026-12-01 11:30:02`.
pub fn utc(ms: u64) -> String {
    let time = vmig_backend::log::rfc3339(ms);
    format!("{} {}", &time[..10], &time[11..19])
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_796_126_402_000), "2026-12-01 12:00:02");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
