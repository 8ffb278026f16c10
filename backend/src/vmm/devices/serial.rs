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

/// Where console output goes: the bytes of one guest burst (one port
/// write, a `rep outsb` of up to 16 bytes) are written out together as the
/// burst ends ([`ConsoleOutput::drain`]), never held back for a newline, so
/// a prompt shows at once. `position` is the console's absolute offset: the
/// bytes the VM has written over its whole life, on every host it ran on
/// (it travels in [`SerialState::console_offset`]). Only bytes the sink
/// took are counted, so a console file always holds exactly the bytes
/// `[start, position)`; a console write error drops bytes and never fails
/// the guest.
pub struct ConsoleOutput {
    sink: Box<dyn Write + Send>,
    burst: Vec<u8>,
    /// Where this process's console output began.
    start: u64,
    position: u64,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput")
            .field("start", &self.start)
            .field("position", &self.position)
            .finish()
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.burst.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// vm-superio flushes after every byte; the burst goes out once it ends.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleOutput {
    /// Writes out the burst: one `write` when the sink takes it all.
    fn drain(&mut self) {
        let mut rest = &self.burst[..];
        while !rest.is_empty() {
            match self.sink.write(rest) {
                Ok(0) => break,
                Ok(n) => {
                    self.position += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = self.sink.flush();
        self.burst.clear();
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        self.drain();
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
    /// The console's absolute offset: bytes the VM has written to it so
    /// far, on every host (state format 3; format 2 had the unfinished
    /// line's bytes here instead, held back until its newline).
    pub console_offset: u64,
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
            console_offset: 0,
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
            burst: Vec::new(),
            start: 0,
            position: 0,
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

    /// A guest write of one byte to register `offset`; output is written
    /// out by the [`SerialConsole::end_burst`] that follows.
    pub fn write(&mut self, offset: u8, value: u8) {
        // Only the interrupt eventfd can fail, and a lost interrupt is not worth
        // stopping the guest for.
        let _ = self.uart().write(offset, value);
    }

    /// Ends a guest burst: its output goes to the sink now.
    pub fn end_burst(&mut self) {
        self.uart().writer_mut().drain();
    }

    /// Puts `input` into the receive FIFO, as far as it has room; returns
    /// how many bytes it took (the rest is the caller's to offer again).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let uart = self.uart();
        let taken = uart.fifo_capacity().min(input.len());
        // A full FIFO takes nothing; an error of the interrupt eventfd comes
        // after the bytes were queued, and the guest polls or gets the next.
        let _ = uart.enqueue_raw_bytes(&input[..taken]);
        taken
    }

    pub fn save(&self) -> SerialState {
        let Some(uart) = self.uart.as_ref() else {
            return SerialState::default();
        };
        let mut state: SerialState = uart.state().into();
        state.console_offset = uart.writer().position;
        state
    }

    /// Replaces the UART's registers, keeping its interrupt and output.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialStateError::FifoOverflow(state.in_buffer.len()));
        }
        let interrupt = self
            .uart()
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(SerialStateError::Interrupt)?;
        let old = self.uart.take().expect("the UART is only taken inside restore()");
        let mut output = old.into_writer();
        output.drain();
        // The VM's console goes on from where it was saved; this process's
        // output starts there (see `VmmRecord::console_start`).
        output.start = state.console_offset;
        output.position = state.console_offset;
        let uart = Serial::from_state(&state.into(), IrqTrigger(interrupt), NoEvents, output)
            .map_err(|_| SerialStateError::FifoOverflow(state.in_buffer.len()))?;
        self.uart = Some(uart);
        Ok(())
    }

    /// Bytes the guest has written to the console in this process.
    pub fn bytes_out(&self) -> u64 {
        self.uart.as_ref().map_or(0, |u| u.writer().position - u.writer().start)
    }

    /// The console's absolute offsets in this process: where its output
    /// began (0 at boot; a restored or migrated VM's saved offset) and where
    /// it is now.
    pub fn offsets(&self) -> (u64, u64) {
        self.uart
            .as_ref()
            .map_or((0, 0), |u| (u.writer().start, u.writer().position))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A sink that keeps each `write` it gets, and can be made to fail.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::other("disk full"));
            }
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> Vec<u8> {
            self.writes.lock().unwrap().concat()
        }
    }

    fn console() -> (SerialConsole, Recorder) {
        let sink = Recorder::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (SerialConsole::new(irq, Box::new(sink.clone())), sink)
    }

    /// What `rep outsb` of `bytes` to the data register does.
    fn burst(serial: &mut SerialConsole, bytes: &[u8]) {
        for byte in bytes {
            serial.write(0, *byte);
        }
        serial.end_burst();
    }

    #[test]
    fn a_burst_goes_out_at_once_in_one_write_without_waiting_for_a_newline() {
        let (mut serial, sink) = console();
        burst(&mut serial, b"vmig login: ");
        assert_eq!(sink.text(), b"vmig login: ", "a prompt is not held back");
        assert_eq!(sink.writes.lock().unwrap().len(), 1, "one write per burst");
        burst(&mut serial, b"root\n");
        assert_eq!(sink.text(), b"vmig login: root\n");
        assert_eq!(serial.offsets(), (0, 17));
        assert_eq!(serial.bytes_out(), 17);
    }

    #[test]
    fn the_console_offset_travels_and_the_restored_console_goes_on_from_it() {
        let (mut serial, _sink) = console();
        burst(&mut serial, b"HB seq=1 t_");
        let state = serial.save();
        assert_eq!(state.console_offset, 11);
        let encoded = bincode::serialize(&state).unwrap();
        let decoded: SerialState = bincode::deserialize(&encoded).unwrap();
        assert_eq!(decoded, state, "the state round-trips");

        let (mut target, sink) = console();
        target.restore(&decoded).unwrap();
        assert_eq!(target.offsets(), (11, 11), "its output starts at the saved offset");
        burst(&mut target, b"ms=5\n");
        assert_eq!(sink.text(), b"ms=5\n", "only what the guest writes here");
        assert_eq!(target.offsets(), (11, 16));
        assert_eq!(target.bytes_out(), 5);
    }

    #[test]
    fn bytes_the_sink_refused_are_not_counted() {
        let (mut serial, sink) = console();
        burst(&mut serial, b"one\n");
        sink.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        burst(&mut serial, b"lost\n");
        sink.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        burst(&mut serial, b"two\n");
        // The file holds [0, position) exactly: offsets still name its bytes.
        assert_eq!(sink.text(), b"one\ntwo\n");
        assert_eq!(serial.offsets(), (0, 8));
    }

    #[test]
    fn input_fills_the_receive_fifo_as_far_as_it_has_room() {
        let (mut serial, _sink) = console();
        assert_eq!(serial.enqueue_input(b"hello\r"), 6);
        const LSR: u8 = 5;
        assert_eq!(serial.read(LSR) & 1, 1, "data ready");
        let read: Vec<u8> = (0..6).map(|_| serial.read(0)).collect();
        assert_eq!(read, b"hello\r");
        assert_eq!(serial.read(LSR) & 1, 0, "drained");
        let many = [b'x'; 100];
        assert_eq!(serial.enqueue_input(&many), FIFO_SIZE, "a 16550A holds 64");
        assert_eq!(serial.enqueue_input(b"y"), 0, "a full FIFO takes nothing");
        let state = serial.save();
        assert_eq!(state.in_buffer.len(), FIFO_SIZE, "queued input travels with the state");
    }
}
