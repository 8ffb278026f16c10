//! The operator side of vmig: the command line and the library calls behind it.
//! The host side (VMM, migration, agent) lives in the `vmig-backend` crate.

pub mod cli;
pub mod exit;
pub mod inventory;
pub mod lab;
pub mod lua;
pub mod ops;
pub mod render;
