//! The null copy: the limit a live migration on one machine cannot beat.
//! The same number of bytes a full pass moves, from one filled mapping in
//! one process through loopback TCP into fresh memory in another, over the
//! same number of streams, while a spinning thread in the sending process
//! stands in for each of the guest's vCPUs. No pages are looked at, no
//! dirty log is read, nothing is framed or encrypted. The copying threads
//! run at the priority a VMM gives its own threads ([`COPY_NICE`]), the
//! spinners at the vCPUs' (0), as in a migration.
//!
//! The receiving process is this benchmark again, started with
//! [`RECEIVER`] set: [`serve_if_asked`] at the top of `main` makes it one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use vmig_backend::migration::cpu::set_thread_nice as nice;

/// Set to `BYTES,STREAMS` in the receiving process.
const RECEIVER: &str = "VMIG_BENCH_NULL_RECEIVER";
/// Each write and read, as large as vmig's batches.
const CHUNK: usize = 4 << 20;
/// The niceness of the copying threads: a VMM's own threads' (the vCPUs
/// run at 0).
const COPY_NICE: i32 = -5;

/// A private anonymous mapping, unmapped when dropped.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; threads are given
// disjoint slices of it.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access is through `&[u8]` only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes of fresh memory (no page is touched yet).
    pub fn new(len: usize) -> Self {
        // SAFETY: a new private anonymous mapping; it aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes failed");
        Self { ptr: ptr.cast(), len }
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` readable and writable bytes, borrowed
        // mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn as_ref(&self) -> &[u8] {
        // SAFETY: as above, borrowed shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`; no slice of it outlives
        // `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Bytes per second of a null copy of `bytes` over `streams` connections
/// with `spinners` spinning threads beside the senders.
pub fn bps(bytes: usize, streams: usize, spinners: usize) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut receiver = Command::new(exe)
        .env(RECEIVER, format!("{bytes},{streams}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the receiving process: {e}"))?;
    let mut lines = BufReader::new(receiver.stdout.take().ok_or("no stdout")?).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    let port: u16 = next()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or("the receiving process named no port")?;
    // Every page of the source filled, as a guest's memory that was written.
    let mut source = Mapping::new(bytes);
    for (i, page) in source.as_mut().chunks_mut(4096).enumerate() {
        page.fill(i as u8 | 1);
    }
    let share = bytes.div_ceil(streams);
    let stop = AtomicBool::new(false);
    let elapsed = thread::scope(|scope| {
        for _ in 0..spinners {
            scope.spawn(|| {
                nice(0);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let start = Instant::now();
        let senders: Vec<_> = source
            .as_ref()
            .chunks(share)
            .enumerate()
            .map(|(index, part)| {
                scope.spawn(move || -> std::io::Result<()> {
                    nice(COPY_NICE);
                    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                    stream.set_nodelay(true)?;
                    stream.write_all(&((index * share) as u64).to_le_bytes())?;
                    for chunk in part.chunks(CHUNK) {
                        stream.write_all(chunk)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let sent: Result<(), String> = senders.into_iter().try_for_each(|s| {
            s.join()
                .map_err(|_| "a sender panicked".to_string())?
                .map_err(|e| e.to_string())
        });
        let done = next();
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        sent?;
        if done != format!("done {bytes}") {
            return Err(format!("the receiving process said {done:?}"));
        }
        Ok(elapsed)
    })?;
    let _ = receiver.wait();
    Ok(bytes as f64 / elapsed.as_secs_f64())
}

/// In the receiving process (the benchmark started by [`bps`]): receives
/// into fresh memory and exits. Returns where it is not that process.
pub fn serve_if_asked() {
    let Ok(spec) = std::env::var(RECEIVER) else {
        return;
    };
    let (bytes, streams) = spec
        .split_once(',')
        .and_then(|(b, s)| Some((b.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
        .expect("BYTES,STREAMS");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    println!("port {}", listener.local_addr().expect("bound").port());
    let _ = std::io::stdout().flush();
    let mut memory = Mapping::new(bytes);
    let share = bytes.div_ceil(streams);
    let received: usize = thread::scope(|scope| {
        let mut parts: Vec<Option<&mut [u8]>> = memory.as_mut().chunks_mut(share).map(Some).collect();
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut offset = [0u8; 8];
                stream.read_exact(&mut offset).expect("the stream's offset");
                let index = u64::from_le_bytes(offset) as usize / share;
                let part = parts[index].take().expect("one stream per part");
                scope.spawn(move || {
                    nice(COPY_NICE);
                    let mut filled = 0;
                    while filled < part.len() {
                        let end = (filled + CHUNK).min(part.len());
                        match stream.read(&mut part[filled..end]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => panic!("null copy read: {e}"),
                        }
                    }
                    filled
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().expect("a reader")).sum()
    });
    println!("done {received}");
    std::process::exit(0);
}
