//! The host side of vmig: the KVM virtual machine monitor that runs one VM per
//! process, the built-in test guest, and (later) the migration engine and agent.
//!
//! Nothing here knows about the command line, Lua or progress bars: the operator
//! side in the `vmig` crate is a thin adapter over these calls.

pub mod agent;
pub mod api;
pub mod client;
pub mod hex;
pub mod lockfile;
pub mod log;
pub mod migration;
pub mod net;
pub mod pki;
pub mod random;
pub mod runtime;
pub mod signals;
pub mod size;
pub mod testguest;
pub mod vmm;
