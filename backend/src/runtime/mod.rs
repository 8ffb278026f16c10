//! One VMM process: its main loop, control socket, events and the record
//! it keeps for its agent, and how an outgoing or incoming migration runs
//! inside it. It sits above both the VM ([`crate::vmm`]) and the migration
//! engine ([`crate::migration`]), which know nothing of each other's
//! process: the engine works on the VM through its `SourceVm` and
//! `TargetVm` traits, implemented here.

pub mod control;
pub mod event;
mod incoming;
pub mod launch;
mod outgoing;
pub mod process;
pub mod record;
