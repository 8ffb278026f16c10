//! Ctrl-C and SIGTERM while a command waits on something that can be
//! cancelled (a migration): the first asks for the cancel; the command
//! keeps waiting for the outcome, which it then reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What the signals asked so far.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    /// Set by the first SIGINT or SIGTERM.
    pub cancel: Arc<AtomicBool>,
    /// How many arrived.
    pub count: Arc<AtomicUsize>,
}

/// From now on SIGINT and SIGTERM set `cancel` (and count) instead of
/// ending the process. Call it before any other thread is started: threads
/// inherit the blocked mask, and the signals reach only the waiting thread.
pub fn catch() -> std::io::Result<Interrupts> {
    let interrupts = Interrupts::default();
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
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let seen = interrupts.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            seen.count.fetch_add(1, Ordering::SeqCst);
            seen.cancel.store(true, Ordering::SeqCst);
        }
    })?;
    Ok(interrupts)
}
