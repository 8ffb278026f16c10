//! virtio devices on the virtio-mmio transport: block devices (disks and
//! CD/DVD drives) over raw image files.

pub mod block;
pub mod mmio;
pub mod queue;

pub use block::{DiskConfig, DiskError, DiskKind};
pub use mmio::{DeviceState, DriveStats, MmioBus};
