//! The VMM process: one VM, its control socket, its console, and a loop that
//! reacts to the guest, the operator and signals until the VM ends.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::control::{self, ControlError, MAX_MEMORY_READ, Reply, Request, Response, VmStatus};
use super::event::{StopReason, VmmEvent};
use super::snapshot::{self, SnapshotError};
use super::{MachineConfig, RunState, Start, Vm, VmError};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Stdout,
    File(PathBuf),
    Discard,
}

/// Everything the VMM process needs to run one VM.
#[derive(Debug)]
pub struct VmmOptions {
    pub machine: MachineConfig,
    pub start: Start,
    pub console: Console,
    pub control: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot open console file {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket")]
    Control(#[from] ControlError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot run the VM")]
    Vm(#[from] VmError),
}

fn console_sink(console: &Console) -> Result<Box<dyn Write + Send>, ProcessError> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Discard => Box::new(std::io::sink()),
        Console::File(path) => Box::new(File::create(path).map_err(|source| ProcessError::Console {
            path: path.clone(),
            source,
        })?),
    })
}

/// Blocks SIGINT/SIGTERM in this thread (and so in every thread it starts) and
/// turns them into events on a dedicated thread.
fn forward_signals(events: Sender<VmmEvent>) -> Result<(), ProcessError> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: changes only this thread's mask, with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(ProcessError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if events.send(VmmEvent::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(ProcessError::Signals)?;
    Ok(())
}

/// Runs a VM until it stops; returns why it stopped.
///
/// `on_ready` is called once the VM runs and its control socket answers.
pub fn run(options: VmmOptions, on_ready: impl FnOnce(&Vm)) -> Result<StopReason, ProcessError> {
    let (events, inbox) = channel();
    forward_signals(events.clone())?;
    let listener = options.control.as_deref().map(control::bind).transpose()?;
    let sink = console_sink(&options.console)?;
    let mut vm = Vm::create(options.machine, sink, events.clone(), options.start)?;
    if let Some(listener) = listener {
        control::serve(listener, events);
    }
    vm.resume()?;
    on_ready(&vm);

    let mut stop_reason = None;
    while let Ok(event) = inbox.recv() {
        match event {
            VmmEvent::Stopped(reason) => {
                vm.mark_stopped();
                stop_reason = Some(reason);
                break;
            }
            VmmEvent::Signal(_) => {
                stop_reason = Some(StopReason::Requested);
                break;
            }
            VmmEvent::Control(Request::Shutdown, reply) => {
                let _ = vm.pause();
                let _ = reply.send(Response::Ok(Reply::Done));
                stop_reason = Some(StopReason::Requested);
                break;
            }
            VmmEvent::Control(request, reply) => {
                let _ = reply.send(handle(&mut vm, request, stop_reason.as_ref()));
            }
        }
    }
    if let Some(path) = &options.control {
        let _ = std::fs::remove_file(path);
    }
    drop(vm);
    Ok(stop_reason.unwrap_or(StopReason::Requested))
}

fn handle(vm: &mut Vm, request: Request, stop_reason: Option<&StopReason>) -> Response {
    let result: Result<Reply, String> = match request {
        Request::Status => Ok(Reply::Status(VmStatus {
            state: vm.state(),
            pid: std::process::id(),
            vcpus: vm.machine().vcpus,
            memory_bytes: vm.machine().memory_bytes,
            stop_reason: stop_reason.cloned(),
        })),
        Request::Stats => Ok(Reply::Stats(vm.stats())),
        Request::Pause => vm.pause().map(|()| Reply::Done).map_err(|e| chain(&e)),
        Request::Resume => vm.resume().map(|()| Reply::Done).map_err(|e| chain(&e)),
        Request::Save { dir } => snapshot::save(vm, &dir)
            .map(Reply::Saved)
            .map_err(|e: SnapshotError| chain(&e)),
        Request::ReadMemory { gpa, len } => {
            if len > MAX_MEMORY_READ {
                Err(format!("at most {MAX_MEMORY_READ} bytes can be read at once"))
            } else {
                let mut bytes = vec![0u8; len as usize];
                vm.memory()
                    .read_slice(&mut bytes, GuestAddress(gpa))
                    .map(|()| Reply::Memory { hex: to_hex(&bytes) })
                    .map_err(|_| format!("{len} bytes at {gpa:#x} are not all guest memory"))
            }
        }
        Request::WriteMemory { gpa, hex } => {
            if vm.state() != RunState::Paused {
                Err(format!("the VM is {}; pause it before writing its memory", vm.state()))
            } else {
                match from_hex(&hex) {
                    None => Err("hex must be an even number of hex digits".to_string()),
                    Some(bytes) => vm
                        .memory()
                        .write_slice(&bytes, GuestAddress(gpa))
                        .map(|()| Reply::Done)
                        .map_err(|_| format!("{} bytes at {gpa:#x} are not all guest memory", bytes.len())),
                }
            }
        }
        Request::Shutdown => Ok(Reply::Done),
    };
    match result {
        Ok(reply) => Response::Ok(reply),
        Err(message) => Response::Error(message),
    }
}

/// An error and its sources on one line, as the operator should see it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Loads a saved machine for [`Start::Restore`].
pub fn restore_from(dir: &std::path::Path) -> Result<(MachineConfig, Start), SnapshotError> {
    let (state, image) = snapshot::load(dir)?;
    Ok((
        state.machine.clone(),
        Start::Restore {
            state: Box::new(state),
            memory_image: image,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }
}
