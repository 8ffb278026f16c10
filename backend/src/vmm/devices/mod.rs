//! The legacy PC devices a guest reaches through port I/O: the COM1 serial
//! console, the debug-exit port (power off with a code), the i8042 reset line,
//! and ports that are accepted and ignored; and the virtio devices on MMIO
//! ([`virtio`]).

pub mod pvsleep;
pub mod serial;
pub mod virtio;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::stop::{StopReason, Stops};
pub use serial::{SerialConsole, SerialState};

/// COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// isa-debug-exit compatible port: a write powers the guest off with that code.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
const I8042_DATA: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

/// State of every device, for save/restore and migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialState,
    /// The virtio devices, by slot.
    pub virtio: Vec<virtio::DeviceState>,
}

/// Port I/O dispatch for one VM; shared by its vCPU threads.
#[derive(Debug)]
pub struct PortIoBus {
    serial: Mutex<SerialConsole>,
    stops: Stops,
}

impl PortIoBus {
    pub fn new(serial: SerialConsole, stops: Stops) -> Self {
        Self {
            serial: Mutex::new(serial),
            stops,
        }
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, SerialConsole> {
        self.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles a guest `in`: fills `data` (all ones where nothing answers).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            // The UART's registers are bytes; a longer access is string I/O
            // (`rep insb`), one byte after another from the same register.
            SERIAL_PORT_BASE..=0x3ff => {
                let mut serial = self.serial();
                for byte in data.iter_mut() {
                    *byte = serial.read((port - SERIAL_PORT_BASE) as u8);
                }
            }
            // The i8042 status: output buffer empty, ready for commands.
            I8042_COMMAND | I8042_DATA => data.fill(0),
            _ => {}
        }
    }

    /// Handles a guest `out`.
    pub fn write(&self, port: u16, data: &[u8]) {
        match port {
            SERIAL_PORT_BASE..=0x3ff => {
                let mut serial = self.serial();
                for byte in data {
                    serial.write((port - SERIAL_PORT_BASE) as u8, *byte);
                }
                serial.end_burst();
            }
            DEBUG_EXIT_PORT if !data.is_empty() => {
                self.stops.report(StopReason::PowerOff { code: data[0] });
            }
            I8042_COMMAND if data.first() == Some(&I8042_RESET) => {
                self.stops.report(StopReason::Reset);
            }
            _ => {}
        }
    }

    pub fn save(&self) -> SerialState {
        self.serial().save()
    }

    pub fn restore(&self, state: &SerialState) -> Result<(), serial::SerialStateError> {
        self.serial().restore(state)
    }

    /// Bytes the guest has written to its console in this process.
    pub fn console_bytes(&self) -> u64 {
        self.serial().bytes_out()
    }

    /// The console's absolute offsets here: (where this process's output
    /// began, where it is now).
    pub fn console_offsets(&self) -> (u64, u64) {
        self.serial().offsets()
    }

    /// Offers console input to the UART's receive FIFO; returns how many
    /// bytes it took.
    pub fn console_input(&self, input: &[u8]) -> usize {
        self.serial().enqueue_input(input)
    }
}
