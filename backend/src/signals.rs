//! Signals as messages: blocked in the process's threads and taken by one
//! thread with sigwait(2), so that a handler never runs in the middle of
//! something, and the process decides what a signal means.

use nix::sys::signal::SigSet;
pub use nix::sys::signal::Signal;

/// Blocks `signals` in the calling thread (and so in every thread it starts
/// from now on) and hands each that arrives to `on`, on a thread of its own,
/// until `on` returns false. Call it before any other thread is started.
pub fn forward(signals: &[Signal], mut on: impl FnMut(Signal) -> bool + Send + 'static) -> std::io::Result<()> {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set.thread_block()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let Ok(signal) = set.wait() else {
                continue;
            };
            if !on(signal) {
                return;
            }
        }
    })?;
    Ok(())
}
