//! Signals as messages: blocked in the process's threads and taken by one
//! thread with sigwait(2), so that a handler never runs in the middle of
//! something, and the process decides what a signal means.

/// Blocks `signals` in the calling thread (and so in every thread it starts
/// from now on) and hands each that arrives to `on`, on a thread of its own,
/// until `on` returns false. Call it before any other thread is started.
pub fn forward(signals: &[i32], mut on: impl FnMut(i32) -> bool + Send + 'static) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in signals {
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigaddset(&mut set, *signal) };
    }
    // SAFETY: changes only this thread's mask, with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            if !on(signal) {
                return;
            }
        }
    })?;
    Ok(())
}
