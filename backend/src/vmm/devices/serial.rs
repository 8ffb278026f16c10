//! COM1: a 16550A UART (vm-superio) whose output goes to a file or the
//! terminal, and whose interrupt is an irqfd on IRQ 4.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::{Serial, Trigger, serial::NoEvents};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial IRQ through an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Longest console line buffered before it is written out regardless.
const MAX_LINE: usize = 4096;

/// Where console output goes; counts bytes and never fails the guest.
pub struct ConsoleOutput {
    sink: Box<dyn Write + Send>,
    line: Vec<u8>,
    bytes: u64,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").field("bytes", &self.bytes).finish()
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        // Whole lines go out at once so readers of a console file never see
        // half a heartbeat; a console write error must not stop the guest.
        for byte in buf {
            self.line.push(*byte);
            if *byte == b'\n' || self.line.len() >= MAX_LINE {
                let _ = self.sink.write_all(&self.line);
                let _ = self.sink.flush();
                self.line.clear();
            }
        }
        Ok(buf.len())
    }

    /// vm-superio flushes after every byte; an unfinished line stays here, so
    /// that it is part of the device state and comes out whole wherever the
    /// VM continues (see [`SerialState::pending_output`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleOutput {
    /// Writes out an unfinished line (when the VMM ends with the VM here).
    fn write_pending(&mut self) {
        let _ = self.sink.write_all(&self.line);
        let _ = self.sink.flush();
        self.line.clear();
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        self.write_pending();
    }
}

/// The saved state of the UART's registers and receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
    /// Console output of a line the guest has not finished yet: it travels
    /// with the VM so the line comes out whole where the VM continues.
    #[serde(default)]
    pub pending_output: Vec<u8>,
}

impl Default for SerialState {
    fn default() -> Self {
        vm_superio::serial::SerialState::default().into()
    }
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
            pending_output: Vec::new(),
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Largest receive FIFO a 16550A has; a saved state claiming more is corrupt.
const FIFO_SIZE: usize = 64;

/// A saved serial state that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    #[error("serial state holds {0} buffered input bytes; a 16550A holds at most 64")]
    FifoOverflow(usize),
    #[error("serial state holds a {0}-byte unfinished line; at most 4096 are kept")]
    PendingOutput(usize),
    #[error("cannot duplicate the serial interrupt eventfd")]
    Interrupt(#[source] io::Error),
}

/// The console UART.
pub struct SerialConsole {
    uart: Option<Serial<IrqTrigger, NoEvents, ConsoleOutput>>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").finish_non_exhaustive()
    }
}

impl SerialConsole {
    pub fn new(interrupt: EventFd, sink: Box<dyn Write + Send>) -> Self {
        let output = ConsoleOutput {
            sink,
            line: Vec::new(),
            bytes: 0,
        };
        Self {
            uart: Some(Serial::new(IrqTrigger(interrupt), output)),
        }
    }

    fn uart(&mut self) -> &mut Serial<IrqTrigger, NoEvents, ConsoleOutput> {
        self.uart.as_mut().expect("the UART is only taken inside restore()")
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart().read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // Only the interrupt eventfd can fail, and a lost interrupt is not worth
        // stopping the guest for.
        let _ = self.uart().write(offset, value);
    }

    pub fn save(&self) -> SerialState {
        let Some(uart) = self.uart.as_ref() else {
            return SerialState::default();
        };
        let mut state: SerialState = uart.state().into();
        state.pending_output.clone_from(&uart.writer().line);
        state
    }

    /// Replaces the UART's registers, keeping its interrupt and output.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialStateError::FifoOverflow(state.in_buffer.len()));
        }
        if state.pending_output.len() > MAX_LINE {
            return Err(SerialStateError::PendingOutput(state.pending_output.len()));
        }
        let interrupt = self
            .uart()
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(SerialStateError::Interrupt)?;
        let old = self.uart.take().expect("the UART is only taken inside restore()");
        let mut output = old.into_writer();
        output.line.clone_from(&state.pending_output);
        let uart = Serial::from_state(&state.into(), IrqTrigger(interrupt), NoEvents, output)
            .map_err(|_| SerialStateError::FifoOverflow(state.in_buffer.len()))?;
        self.uart = Some(uart);
        Ok(())
    }

    /// Forgets an unfinished line: the VM moved on and prints it elsewhere.
    pub fn discard_pending(&mut self) {
        self.uart().writer_mut().line.clear();
    }

    pub fn bytes_out(&self) -> u64 {
        self.uart.as_ref().map_or(0, |u| u.writer().bytes)
    }
}
