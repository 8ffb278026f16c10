//! The project's own test guest, built from `testguest/` by this crate's build
//! script and embedded here, so every vmig binary can boot it without a path.
//!
//! It is a PVH kernel whose workload is set on its command line (fill memory,
//! dirty a working set at a rate, verify every page it wrote) and which prints
//! machine-readable heartbeat lines on COM1. See `testguest/README.md`.

/// The name operators use: `--kernel builtin:testguest`.
pub const NAME: &str = "testguest";

/// The guest's ELF image.
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmig-testguest"));
