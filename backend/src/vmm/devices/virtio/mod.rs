//! virtio devices on the virtio-mmio transport: block devices (disks and
//! CD/DVD drives) over raw image files, and network cards on TAP devices.

pub mod block;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod tap;

pub use block::{DiskConfig, DiskError, DiskKind};
pub use mmio::{DeviceState, DriveStats, HeldFrames, MmioBus, NicStats};
pub use net::{Bridges, Mac, NetError, NicConfig};
