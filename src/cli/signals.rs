//! Ctrl-C and SIGTERM while a command waits on something that can be
//! cancelled (a migration): the first asks for the cancel; the command
//! keeps waiting for the outcome, which it then reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vmig_backend::signals::Signal;

/// What the signals asked so far.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    /// Set by the first SIGINT or SIGTERM.
    pub cancel: Arc<AtomicBool>,
    /// How many arrived.
    pub count: Arc<AtomicUsize>,
}

/// From now on SIGINT and SIGTERM set `cancel` (and count) instead of
/// ending the process. Call it before any other thread is started.
pub fn catch() -> std::io::Result<Interrupts> {
    let interrupts = Interrupts::default();
    let seen = interrupts.clone();
    vmig_backend::signals::forward(&[Signal::SIGINT, Signal::SIGTERM], move |_| {
        seen.count.fetch_add(1, Ordering::SeqCst);
        seen.cancel.store(true, Ordering::SeqCst);
        true
    })?;
    Ok(interrupts)
}
