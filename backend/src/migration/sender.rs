//! The source side: pre-copy rounds, auto-converge, switchover and handoff.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::cpu::{self, Crew};
use super::dirty::{self, DirtyError, PageSet};
use super::fault::{self, Hold};
use super::link::{Link, LinkReader, LinkWriter};
use super::protocol::{
    self, CpuidLeaf, HEADER_LEN, Header, Hello, Kind, MAX_BATCH_RANGES, Outcome, PAGE_SIZE, PROTOCOL_VERSION,
    ProtocolError, Range, Resumed,
};
use super::stats::{Phase, Progress, Release, Report, ShareRelease};
use super::tls::ClientSide;
use super::transport::{self, Piece, TransportError};
use super::{MigrationOptions, TimeoutAction, VmSideError};
use crate::vmm::devices::virtio::HeldFrames;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{MachineConfig, VmState};

/// Pages per memory batch (1 MiB): small enough to spread over streams.
const BATCH_PAGES: u32 = 256;
/// Batches queued per stream before the producer waits.
const QUEUE_DEPTH: usize = 4;
/// Expected cost of capturing, sending and restoring vCPU and device state.
const STATE_ESTIMATE_MS: f64 = 2.0;
/// Once the last pages would fit the downtime limit, one more live round is
/// still worth its time while the dirty set shrinks to at most this share of
/// the round that produced it, and while those pages would take longer than
/// `SETTLED_MS` to send paused; at most `EXTRA_ROUNDS` such rounds.
const SHRINKING: f64 = 0.75;
const SETTLED_MS: f64 = 0.5;
const EXTRA_ROUNDS: u32 = 5;
/// How much longer than its CPU time pre-copy's work may take, waiting for
/// a CPU, with the guest keeping its share (see `Engine::copy_stretch`):
/// beyond it no core is free, and the share holds the copy to a small part
/// of its pace. The guest then pays the copy's CPU all the same, later and
/// over a migration many times longer, with the host's own overhead
/// running all that while: measured with 2 vCPUs spinning on 2 cores, a
/// filled 1 GiB guest lost 4.3 s of its time over 60 s keeping the share,
/// 1.1 s over 1.6 s without it. Measured stretches: 2.7-4.3 with one free
/// core for both ends, 33 with none.
const STARVED: f64 = 10.0;
/// How long the stream threads run before [`STARVED`] is judged: long
/// enough for the scheduler's turns to show (milliseconds each), short
/// beside the dirtying a second held back costs the copy (2 vCPUs on 2
/// cores dirtying 100 MB/s: 2.6 s in all and 484 MiB sent when judged after
/// a second, 0.72-0.86 s judged at this, 0.3 s with no share at all).
const STARVED_AFTER: Duration = Duration::from_millis(250);
/// Auto-converge: first throttle, step, ceiling (percent of time paused).
const THROTTLE_START: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;
const THROTTLE_PERIOD: Duration = Duration::from_millis(10);
/// How long the source waits after `Running` for the target's `Resumed`
/// (its part of the guest's standstill, for the report only). Shorter than
/// anything that waits on the handoff: the target answered Running before
/// it started the vCPUs so that nothing has to wait for them.
const RESUMED_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Error)]
pub enum MigrationError {
    #[error("migration address")]
    Transport(#[from] TransportError),
    #[error("migration stream")]
    Protocol(#[from] ProtocolError),
    #[error("the target refused the VM: {0}")]
    Refused(String),
    #[error("dirty page tracking")]
    Dirty(#[from] DirtyError),
    #[error("the source VM could not {action}")]
    Vm {
        action: &'static str,
        #[source]
        source: VmSideError,
    },
    #[error("stream {index} failed: {detail}")]
    Stream { index: u32, detail: String },
    #[error("did not converge within the {0} s time limit")]
    TimedOut(u64),
    #[error("invalid option: {0}")]
    Options(String),
    #[error("cancelled")]
    Cancelled,
    #[error(
        "the outcome is in doubt: the target at {target} may or may not have resumed the VM ({detail}); \
         the source stays paused"
    )]
    InDoubt { target: String, detail: String },
    /// The migration failed and resuming the source failed too.
    #[error("{failure}; then resuming the VM here failed")]
    NotResumed {
        failure: Box<MigrationError>,
        #[source]
        source: VmSideError,
    },
}

impl MigrationError {
    /// True when the source's VM was not resumed because the target may run it.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, MigrationError::InDoubt { .. })
    }

    /// A stable name for the outcome, for whoever decides on it (the VMM's
    /// control socket carries it beside the message).
    pub fn code(&self) -> &'static str {
        match self {
            MigrationError::InDoubt { .. } => "in_doubt",
            MigrationError::Cancelled => "cancelled",
            MigrationError::TimedOut(_) => "timed_out",
            MigrationError::Refused(_) => "refused",
            MigrationError::Options(_) => "invalid",
            MigrationError::NotResumed { .. } => "not_resumed",
            _ => "rolled_back",
        }
    }
}

/// What the engine needs from the VMM that runs the source VM.
pub trait SourceVm: Sync {
    /// Records, where the VMM's agent finds it even if this process dies the
    /// next instant, that `Go` for `session` is about to be sent: from then
    /// on the VM may run on the target, and this copy must never resume
    /// unless the target says it discarded its own.
    fn handoff(&self, session: u64) -> Result<(), VmSideError>;
    /// Returns when the first vCPU left the guest.
    fn pause(&self) -> Result<Instant, VmSideError>;
    fn resume(&self) -> Result<(), VmSideError>;
    /// Keeps the vCPUs off the CPU for `duration` (returns at once).
    fn hold(&self, duration: Duration) -> Result<(), VmSideError>;
    fn save_state(&self) -> Result<VmState, VmSideError>;
    /// The frames the paused VM's network cards received since the pause,
    /// taken (the target's guest gets them).
    fn take_frames(&self) -> Result<HeldFrames, VmSideError>;
}

/// The source VM's identity and memory.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub vm_name: String,
    pub memory: GuestMemory,
    pub vm_fd: Arc<VmFd>,
    pub machine: MachineConfig,
    pub cpuid: Vec<CpuidLeaf>,
    pub xsave_size: u32,
    /// The operator's switch to stop the migration; the VM keeps running here.
    pub cancel: Arc<Cancel>,
    /// The vCPU threads, whose wait for a CPU the report gives.
    pub vcpu_tids: Vec<i32>,
}

/// A migration's cancel switch. It works until the switchover begins (the
/// source pauses for the last time): from then on only the handoff decides.
/// A cancel also shuts the migration's sockets, so that a writer stuck on a
/// stalled link notices at once.
#[derive(Debug, Default)]
pub struct Cancel {
    state: Mutex<CancelState>,
}

#[derive(Debug, Default)]
struct CancelState {
    requested: bool,
    switching: bool,
    sockets: Vec<TcpStream>,
}

impl Cancel {
    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cancels the migration unless its switchover has begun; true when it
    /// will be cancelled (the VM stays where it is).
    pub fn request(&self) -> bool {
        let mut state = self.lock();
        if state.switching {
            return false;
        }
        state.requested = true;
        for socket in &state.sockets {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        true
    }

    pub fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Marks the start of the switchover; false when a cancel came first.
    fn begin_switchover(&self) -> bool {
        let mut state = self.lock();
        if state.requested {
            return false;
        }
        state.switching = true;
        true
    }

    fn watch(&self, socket: &TcpStream) {
        if let Ok(clone) = socket.try_clone() {
            self.lock().sockets.push(clone);
        }
    }
}

enum Job {
    Pages { ranges: Vec<Range>, skip_zero: bool },
    RoundEnd(u64),
    Frame { kind: Kind, arg: u64, payload: Vec<u8> },
}

struct Shared {
    bytes_sent: AtomicU64,
    pages_sent: AtomicU64,
    zero_pages: AtomicU64,
    failed: Mutex<Option<(u32, String)>>,
    limiter: Option<RateLimiter>,
    /// The stream threads' ids, each added as it starts.
    copiers: Mutex<Vec<i32>>,
}

struct RateLimiter {
    bytes_per_sec: u64,
    start: Instant,
    sent: AtomicU64,
}

impl RateLimiter {
    fn wait_for(&self, bytes: u64) {
        let total = self.sent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

struct Stream {
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
}

/// The moment the target's `Running` arrived, from the kernel's timestamp,
/// or now without one. A timestamp outside the wait for it (a clock that
/// stepped) is not believed.
fn arrival_instant(arrived: Option<SystemTime>, go_at: Instant) -> Instant {
    let now = Instant::now();
    let lag = arrived.and_then(|at| SystemTime::now().duration_since(at).ok());
    match lag {
        Some(lag) if lag <= now - go_at => now - lag,
        _ => now,
    }
}

fn random_session() -> u64 {
    let mut bytes = [0u8; 8];
    if crate::random::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_le_bytes(bytes)
}

/// Writes one memory batch: header, range table, then the pages from guest memory.
fn write_pages(
    stream: &mut LinkWriter,
    memory: &GuestMemory,
    ranges: &[Range],
    skip_zero: bool,
    shared: &Shared,
) -> Result<(), String> {
    // In the first round, resident pages that hold only zeros are skipped: the
    // target's fresh memory is zero already.
    let mut send: Vec<Range> = Vec::with_capacity(ranges.len());
    let mut skipped = 0u64;
    for range in ranges {
        let host = memory
            .get_host_address(GuestAddress(range.gpa))
            .map_err(|_| format!("{:#x} is not guest memory", range.gpa))?;
        if !skip_zero {
            send.push(*range);
            continue;
        }
        let mut run: Option<Range> = None;
        for page in 0..range.pages {
            let offset = u64::from(page) * PAGE_SIZE;
            // SAFETY: `host + offset` is a page of this range, inside the mapping.
            let zero = unsafe { dirty::is_zero_page(host.wrapping_add(offset as usize)) };
            if zero {
                skipped += 1;
                if let Some(r) = run.take() {
                    send.push(r);
                }
            } else {
                match &mut run {
                    Some(r) => r.pages += 1,
                    None => {
                        run = Some(Range {
                            gpa: range.gpa + offset,
                            pages: 1,
                            flags: 0,
                        });
                    }
                }
            }
        }
        send.extend(run);
    }
    shared.zero_pages.fetch_add(skipped, Ordering::Relaxed);
    if send.is_empty() {
        return Ok(());
    }
    let table = protocol::encode_ranges(&send);
    let data: u64 = send.iter().map(Range::data_bytes).sum();
    let header = Header::new(Kind::Memory, (table.len() as u64 + data) as u32, 0).encode();
    let mut pieces = Vec::with_capacity(send.len() + 2);
    pieces.push(Piece {
        ptr: header.as_ptr(),
        len: HEADER_LEN,
    });
    pieces.push(Piece {
        ptr: table.as_ptr(),
        len: table.len(),
    });
    for range in &send {
        let host = memory
            .get_host_address(GuestAddress(range.gpa))
            .map_err(|_| format!("{:#x} is not guest memory", range.gpa))?;
        pieces.push(Piece {
            ptr: host,
            len: range.bytes() as usize,
        });
    }
    if let Some(limiter) = &shared.limiter {
        limiter.wait_for(data);
    }
    // SAFETY: the header and table live until the call returns; guest ranges were
    // checked above and stay mapped while `memory` (held by this thread) lives.
    unsafe { stream.write_pieces(&pieces) }.map_err(|e| e.to_string())?;
    let frame = HEADER_LEN as u64 + table.len() as u64 + data;
    shared.bytes_sent.fetch_add(frame, Ordering::Relaxed);
    shared
        .pages_sent
        .fetch_add(send.iter().map(|r| u64::from(r.pages)).sum(), Ordering::Relaxed);
    Ok(())
}

fn stream_worker(index: u32, mut stream: LinkWriter, memory: &GuestMemory, jobs: Receiver<Job>, shared: &Shared) {
    for job in jobs {
        let result = match job {
            Job::Pages { ranges, skip_zero } => write_pages(&mut stream, memory, &ranges, skip_zero, shared),
            Job::RoundEnd(round) => {
                protocol::write_frame(&mut stream, Kind::RoundEnd, round, &[]).map_err(|e| e.to_string())
            }
            Job::Frame { kind, arg, payload } => {
                let sent = protocol::write_frame(&mut stream, kind, arg, &payload).map_err(|e| e.to_string());
                shared
                    .bytes_sent
                    .fetch_add((HEADER_LEN + payload.len()) as u64, Ordering::Relaxed);
                sent
            }
        };
        if let Err(detail) = result {
            let mut failed = shared.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            failed.get_or_insert((index, detail));
            return;
        }
    }
}

/// Runs a migration to `url`, over TLS with `tls` (the target must be the
/// host it names), else in plaintext. On success the VM runs on the target and the
/// caller must destroy the source; on error the source VM has been resumed,
/// except for [`MigrationError::InDoubt`], where it stays paused.
pub fn migrate(
    ctx: &SourceContext,
    vm: &dyn SourceVm,
    url: &str,
    options: &MigrationOptions,
    tls: Option<&ClientSide>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, MigrationError> {
    options.validate().map_err(MigrationError::Options)?;
    let started = Instant::now();
    let waited_at_start = cpu::waited_ns(&ctx.vcpu_tids);
    let session = random_session();
    let timeout = Duration::from_secs(options.timeout_s);
    let memory_bytes = ctx.machine.memory_bytes;
    progress(&Progress {
        phase: Phase::Connecting,
        round: 0,
        elapsed_ms: 0,
        bytes_sent: 0,
        bytes_remaining: memory_bytes,
        memory_bytes,
        dirty_rate_bps: 0.0,
        throughput_bps: 0.0,
        expected_downtime_ms: 0.0,
        throttle_pct: 0,
    });

    // Stage 1: handshake. Nothing has moved yet, so a refusal changes nothing.
    let connect_timeout = Duration::from_secs(10);
    let silence = options.timeouts.stream();
    let mut control = Link::connect(url, None, connect_timeout, tls)?;
    transport::limit_silence(control.socket(), silence);
    // Early, so that the kernel stamps the target's Running when it comes.
    transport::timestamp_arrivals(control.socket());
    let encryption = control.suite().map(str::to_string);
    // Pre-copy runs below the guest from here (see `cpu`); the crew is
    // raised at the pause.
    let crew = Arc::new(Crew::new(cpu::precopy_nice(options.guest_share)));
    crew.join();
    let streams_auto = options.streams == 0;
    let offered = if streams_auto {
        cpu::offered_streams()
    } else {
        options.streams
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        session,
        vm_name: ctx.vm_name.clone(),
        machine: ctx.machine.clone(),
        cpuid: ctx.cpuid.clone(),
        xsave_size: ctx.xsave_size,
        streams: offered,
        streams_auto,
        boot_id: cpu::boot_id(),
        guest_share: options.guest_share,
        token: control.present(options.token),
        announce: options.announce,
    };
    protocol::write_frame(&mut control, Kind::Hello, 0, &protocol::encode(&hello))?;
    let taken = match protocol::expect(&mut control, Kind::Accept) {
        Ok((header, _)) if (1..=u64::from(offered)).contains(&header.arg) => header.arg as u32,
        Ok((header, _)) => {
            return Err(ProtocolError::Streams {
                taken: header.arg,
                offered,
            }
            .into());
        }
        Err(ProtocolError::PeerAborted(reason)) => return Err(MigrationError::Refused(reason)),
        Err(e) => return Err(e.into()),
    };
    let mut handles = vec![control.socket().try_clone().map_err(ProtocolError::Io)?];
    let (control, control_writer) = control.split();
    let mut writers = vec![control_writer];
    for index in 1..taken {
        let mut stream = Link::connect(url, None, connect_timeout, tls)?;
        transport::limit_silence(stream.socket(), silence);
        let mut join = index.to_le_bytes().to_vec();
        join.extend_from_slice(&stream.present(options.token).0);
        protocol::write_frame(&mut stream, Kind::Join, session, &join)?;
        handles.push(stream.socket().try_clone().map_err(ProtocolError::Io)?);
        writers.push(stream.split().1);
    }

    for handle in &handles {
        ctx.cancel.watch(handle);
    }
    if ctx.cancel.requested() {
        return Err(MigrationError::Cancelled);
    }
    let shared = Arc::new(Shared {
        bytes_sent: AtomicU64::new(0),
        pages_sent: AtomicU64::new(0),
        zero_pages: AtomicU64::new(0),
        failed: Mutex::new(None),
        copiers: Mutex::new(Vec::new()),
        limiter: options.bandwidth_limit.map(|bytes_per_sec| RateLimiter {
            bytes_per_sec,
            start: Instant::now(),
            sent: AtomicU64::new(0),
        }),
    });
    let streams: Vec<Stream> = writers
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let (jobs, inbox) = sync_channel(QUEUE_DEPTH);
            let memory = ctx.memory.clone();
            let shared = Arc::clone(&shared);
            let crew = Arc::clone(&crew);
            let thread = std::thread::Builder::new()
                .name(format!("migrate-tx{index}"))
                .spawn(move || {
                    crew.join();
                    shared
                        .copiers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(nix::unistd::gettid().as_raw());
                    stream_worker(index as u32, socket, &memory, inbox, &shared);
                })
                .expect("cannot start a migration stream thread");
            Stream { jobs, thread }
        })
        .collect();

    let mut engine = Engine {
        ctx,
        vm,
        options,
        control,
        streams,
        shared,
        started,
        deadline: started + timeout,
        url: url.to_string(),
        tls,
        encryption,
        session,
        handles,
        throttle: Arc::new(ThrottleControl::default()),
        max_throttle: 0,
        paused: false,
        frames_carried: 0,
        go_sent: None,
        resumed: None,
        early_dirty: None,
        sent_at_release: 0,
        live: None,
        forced_at: None,
        crew,
        streams_taken: taken,
        waited_at_start,
        released: None,
    };
    dirty::set_logging(&ctx.vm_fd, &ctx.memory, true)?;
    dirty::reset_vmm_bitmap(&ctx.memory);
    let result = std::thread::scope(|scope| {
        let throttle = Arc::clone(&engine.throttle);
        let vm = engine.vm;
        let thread = scope.spawn(move || throttle.run(vm));
        let result = engine.run(progress);
        engine.throttle.stop();
        let _ = thread.join();
        result
    });
    match result {
        // The source copy is about to be destroyed: switching logging off
        // (tens of milliseconds with much memory touched) would only delay that.
        Ok(report) => {
            engine.finish_streams();
            Ok(report)
        }
        Err(error) => {
            // Closing the sockets unblocks the writers and tells the target to
            // discard what it received.
            for handle in &engine.handles {
                let _ = handle.shutdown(std::net::Shutdown::Both);
            }
            engine.finish_streams();
            let _ = dirty::set_logging(&ctx.vm_fd, &ctx.memory, false);
            if error.is_in_doubt() {
                return Err(error);
            }
            // A cancel shuts the sockets, so what failed next is the cancel
            // (it is only taken before the switchover: nothing was handed over).
            let error = if ctx.cancel.requested() {
                MigrationError::Cancelled
            } else {
                error
            };
            // Rollback: the target never resumed, so the VM continues here.
            if engine.paused
                && let Err(source) = vm.resume()
            {
                return Err(MigrationError::NotResumed {
                    failure: Box::new(error),
                    source,
                });
            }
            Err(error)
        }
    }
}

/// Auto-converge: holds the vCPUs paused for a share of every period while
/// the guest dirties memory faster than it can be sent.
///
/// Every period the vCPUs are told to stay out of the guest for the throttle's
/// share of it; they keep answering requests meanwhile, and a pause ends the
/// hold, so stopping the throttle never delays the switchover.
#[derive(Debug, Default)]
struct ThrottleControl {
    pct: AtomicU8,
    stopped: AtomicBool,
}

impl ThrottleControl {
    fn run(&self, vm: &dyn SourceVm) {
        while !self.stopped.load(Ordering::SeqCst) {
            let share = self.pct.load(Ordering::SeqCst);
            if share == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if vm.hold(THROTTLE_PERIOD.mul_f64(f64::from(share) / 100.0)).is_err() {
                return;
            }
            std::thread::sleep(THROTTLE_PERIOD);
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

struct Engine<'a> {
    ctx: &'a SourceContext,
    vm: &'a dyn SourceVm,
    options: &'a MigrationOptions,
    control: LinkReader,
    streams: Vec<Stream>,
    shared: Arc<Shared>,
    started: Instant,
    /// When the time limit expires.
    deadline: Instant,
    url: String,
    tls: Option<&'a ClientSide>,
    /// The TLS suite of the streams; None in plaintext.
    encryption: Option<String>,
    session: u64,
    /// Clones of every stream's socket, to shut them down on failure.
    handles: Vec<TcpStream>,
    throttle: Arc<ThrottleControl>,
    max_throttle: u8,
    /// This side's threads, reniced as the phase changes.
    crew: Arc<Crew>,
    /// The streams the receiver took.
    streams_taken: u32,
    /// The vCPUs' wait for a CPU when the migration began.
    waited_at_start: Option<u64>,
    /// When and why pre-copy gave up the guest's share.
    released: Option<(Duration, Release)>,
    /// Frames the source's cards held through the switchover, sent along.
    frames_carried: u64,
    /// When Go was handed to its stream.
    go_sent: Option<Instant>,
    /// The target's word on how it resumed the VM.
    resumed: Option<Resumed>,
    /// Pages the guest dirtied early in the full pass, looked at to judge
    /// its pace; they go to round 1.
    early_dirty: Option<PageSet>,
    /// Bytes sent when the share was given up.
    sent_at_release: u64,
    paused: bool,
    live: Option<LiveProgress>,
    /// When the time limit forced the switchover.
    forced_at: Option<Instant>,
}

/// Progress within the round being sent.
struct LiveProgress {
    snapshot: Progress,
    round_bytes: u64,
    sent_at_start: u64,
    started: Instant,
    last: Instant,
}

/// How often a long round reports progress.
const LIVE_PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Engine<'_> {
    fn check_streams(&self) -> Result<(), MigrationError> {
        let failed = self
            .shared
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*failed {
            Some((index, detail)) => Err(MigrationError::Stream {
                index: *index,
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    fn submit(&self, stream: usize, job: Job) -> Result<(), MigrationError> {
        self.streams[stream].jobs.send(job).map_err(|_| {
            self.check_streams().err().unwrap_or(MigrationError::Stream {
                index: stream as u32,
                detail: "writer stopped".into(),
            })
        })
    }

    /// The guest keeps its share only while the full pass keeps pace; after
    /// a second, at the rate so far: a pass forecast to outlast half the
    /// time limit takes the CPU it needs, and so does one that the guest
    /// outruns (it dirtied more than half of what the pass sent meanwhile:
    /// at that rate the copy could not converge, and holding the guest
    /// still would cost it more than the CPU the copy takes), and so does
    /// one the share starves, looked at sooner (its threads waited for a
    /// CPU many times longer than they ran: no core is free, see
    /// [`STARVED`]; what the guest would gain from a second of it is less
    /// than the second's dirtying costs the copy). The dirty pages looked
    /// at go to the next round.
    fn keep_pace(&mut self, queued_pages: u64, total_pages: u64) -> Result<(), MigrationError> {
        if !self.keeps_share() || queued_pages == 0 {
            return Ok(());
        }
        let elapsed = self.started.elapsed();
        if elapsed < STARVED_AFTER {
            return Ok(());
        }
        if let Some(stretch) = self.copy_stretch() {
            tracing::debug!(stretch, "pre-copy's threads against their CPU time");
            if stretch > STARVED {
                self.release_share(Release::Starved);
                return Ok(());
            }
        }
        if elapsed < Duration::from_secs(1) {
            return Ok(());
        }
        let forecast = elapsed.mul_f64(total_pages as f64 / queued_pages as f64);
        if forecast > Duration::from_secs(self.options.timeout_s) / 2 {
            self.release_share(Release::TimeLimit);
        } else if self.early_dirty.is_none() {
            let dirtied = dirty::collect(&self.ctx.vm_fd, &self.ctx.memory)?;
            let sent = self.shared.bytes_sent.load(Ordering::Relaxed);
            if dirtied.bytes() as f64 > 0.5 * sent as f64 {
                self.release_share(Release::Converge);
            }
            self.early_dirty = Some(dirtied);
        }
        Ok(())
    }

    /// How many times longer the stream threads took for their work than
    /// the CPU it needed, since they started: (ran + waited for a CPU) /
    /// ran. About 1 with a core to themselves; 2-4 where they take turns
    /// with each other (both ends on one machine, one free core); 30 where
    /// every core runs a vCPU (their weight beside one, at the default
    /// share). None before they ran, or where the kernel keeps no figure.
    fn copy_stretch(&self) -> Option<f64> {
        let times = cpu::times(
            &self
                .shared
                .copiers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )?;
        (times.ran_ns > 0).then(|| (times.ran_ns + times.waited_ns) as f64 / times.ran_ns as f64)
    }

    /// The full pass's rate while the guest's share did not hold it back,
    /// called as the pass ends: all of it at share 0, the part after the
    /// share was given up within it, none if the share held it throughout.
    fn full_speed_bps(&self, full_pass_bps: f64) -> Option<f64> {
        if self.options.guest_share == 0 {
            return Some(full_pass_bps);
        }
        let (at, _) = self.released?;
        let free_for = self.started.elapsed().checked_sub(at)?;
        let moved = self.shared.bytes_sent.load(Ordering::Relaxed) - self.sent_at_release;
        (moved >= 1 << 20).then(|| moved as f64 / free_for.as_secs_f64().max(1e-6))
    }

    /// Whether pre-copy still keeps the guest a share it could give up.
    fn keeps_share(&self) -> bool {
        self.options.guest_share > 0 && self.released.is_none()
    }

    /// Pre-copy gives up the guest's share: its threads, and the
    /// receiver's, go to the VMM's priority for the rest of the migration.
    fn release_share(&mut self, why: Release) {
        self.crew.set(cpu::VMM_NICE);
        self.sent_at_release = self.shared.bytes_sent.load(Ordering::Relaxed);
        // Behind the pages already queued on the control stream; a stream
        // that failed shows at the next submit.
        let _ = self.submit(
            0,
            Job::Frame {
                kind: Kind::Release,
                arg: 0,
                payload: Vec::new(),
            },
        );
        self.released = Some((self.started.elapsed(), why));
        tracing::info!(reason = ?why, "pre-copy takes the CPU the guest kept");
    }

    /// Stops the migration for a cancel or an expired time limit that
    /// cancels; true when the time limit forces the switchover now.
    fn limit_reached(&mut self) -> Result<bool, MigrationError> {
        if self.ctx.cancel.requested() {
            return Err(MigrationError::Cancelled);
        }
        if self.forced_at.is_some() {
            return Ok(true);
        }
        if Instant::now() < self.deadline {
            return Ok(false);
        }
        match self.options.timeout_action {
            TimeoutAction::Cancel => Err(MigrationError::TimedOut(self.options.timeout_s)),
            TimeoutAction::Force => {
                self.forced_at = Some(Instant::now());
                Ok(true)
            }
        }
    }

    /// Sends one round of pages over all streams and waits until the receiver
    /// has every one of them. Returns the pages it did not send when the time
    /// limit forced the switchover in the middle of it.
    fn send_round(
        &mut self,
        round: u64,
        pages: &PageSet,
        skip_zero: bool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Option<PageSet>, MigrationError> {
        let rest = self.queue_round(round, pages, skip_zero, progress)?;
        self.wait_for(Kind::RoundDone, round, progress)?;
        Ok(rest)
    }

    /// Queues one round of pages and its end markers on all streams. While
    /// the VM runs, the cancel switch and the time limit are looked at after
    /// every batch: a forced switchover ends the round where it is, and the
    /// pages not queued are returned, to go with the last ones.
    fn queue_round(
        &mut self,
        round: u64,
        pages: &PageSet,
        skip_zero: bool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Option<PageSet>, MigrationError> {
        let mut batch: Vec<Range> = Vec::new();
        let mut batch_pages = 0u32;
        let mut next = 0usize;
        let mut rest: Option<PageSet> = None;
        let mut first = true;
        let (mut queued, total) = (0u64, pages.count());
        for (gpa, count) in pages.runs(BATCH_PAGES) {
            if let Some(rest) = &mut rest {
                rest.insert(gpa, count);
                continue;
            }
            batch.push(Range {
                gpa,
                pages: count,
                flags: 0,
            });
            batch_pages += count;
            queued += u64::from(count);
            if batch_pages >= BATCH_PAGES || batch.len() as u32 >= MAX_BATCH_RANGES {
                self.submit(
                    next,
                    Job::Pages {
                        ranges: std::mem::take(&mut batch),
                        skip_zero,
                    },
                )?;
                batch_pages = 0;
                next = (next + 1) % self.streams.len();
                if first && round == 0 {
                    fault::hold(Hold::FirstPass);
                }
                first = false;
                // Queuing waits for the writers, so this is where a long round
                // spends its time.
                self.report_live(progress);
                if round == 0 && !self.paused {
                    self.keep_pace(queued, total)?;
                }
                if !self.paused && self.limit_reached()? {
                    rest = Some(pages.cleared());
                }
            }
        }
        if !batch.is_empty() {
            self.submit(
                next,
                Job::Pages {
                    ranges: batch,
                    skip_zero,
                },
            )?;
        }
        for stream in 0..self.streams.len() {
            self.submit(stream, Job::RoundEnd(round))?;
        }
        Ok(rest)
    }

    /// Waits for a control frame, watching the writers, the cancel switch,
    /// the time limit and silence: while the VM runs, nothing sent nor
    /// received for the stream timeout fails the migration; once paused, the
    /// handoff timeout does.
    fn wait_for(&mut self, kind: Kind, arg: u64, progress: &mut dyn FnMut(&Progress)) -> Result<(), MigrationError> {
        self.control
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(ProtocolError::Io)?;
        let silence = if self.paused {
            self.options.timeouts.handoff()
        } else {
            self.options.timeouts.stream()
        };
        let mut header = [0u8; HEADER_LEN];
        let mut have = 0;
        let mut sent = self.shared.bytes_sent.load(Ordering::Relaxed);
        let mut active = Instant::now();
        loop {
            self.check_streams()?;
            self.report_live(progress);
            if !self.paused {
                // A forced switchover waits for the round to drain.
                self.limit_reached()?;
            }
            let now_sent = self.shared.bytes_sent.load(Ordering::Relaxed);
            if now_sent != sent {
                sent = now_sent;
                active = Instant::now();
            }
            if active.elapsed() > silence {
                return Err(MigrationError::Stream {
                    index: 0,
                    detail: format!(
                        "the target sent no {kind:?} and took no data for {} s",
                        silence.as_secs()
                    ),
                });
            }
            match std::io::Read::read(&mut self.control, &mut header[have..]) {
                Ok(0) => return Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(n) => {
                    have += n;
                    active = Instant::now();
                    if have == HEADER_LEN {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::Io(e).into()),
            }
        }
        self.control
            .set_read_timeout(Some(silence))
            .map_err(ProtocolError::Io)?;
        let header = Header::decode(&header)?;
        let payload = protocol::read_payload(&mut self.control, &header)?;
        if header.kind == Kind::Abort {
            return Err(ProtocolError::PeerAborted(String::from_utf8_lossy(&payload).into_owned()).into());
        }
        if header.kind != kind || header.arg != arg {
            return Err(ProtocolError::Unexpected {
                expected: kind,
                got: header.kind,
            }
            .into());
        }
        Ok(())
    }

    fn progress(
        &self,
        phase: Phase,
        round: u32,
        remaining: u64,
        dirty_rate: f64,
        throughput: f64,
        expected: f64,
    ) -> Progress {
        Progress {
            phase,
            round,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
            bytes_remaining: remaining,
            memory_bytes: self.ctx.machine.memory_bytes,
            dirty_rate_bps: dirty_rate,
            throughput_bps: throughput,
            expected_downtime_ms: expected,
            throttle_pct: self.throttle.pct.load(Ordering::Relaxed),
        }
    }

    /// Reports a round as it starts (while its pages are on their way, so that
    /// whoever reads progress has done so long before any pause), and again
    /// within it if it runs long.
    fn start_live(
        &mut self,
        round: u32,
        bytes: u64,
        dirty_rate: f64,
        bandwidth: f64,
        expected: f64,
        progress: &mut dyn FnMut(&Progress),
    ) {
        let snapshot = self.progress(Phase::Precopy, round, bytes, dirty_rate, bandwidth, expected);
        progress(&snapshot);
        self.live = Some(LiveProgress {
            snapshot,
            round_bytes: bytes,
            sent_at_start: self.shared.bytes_sent.load(Ordering::Relaxed),
            started: Instant::now(),
            last: Instant::now(),
        });
    }

    /// Emits progress within a long round, a few times a second.
    fn report_live(&mut self, progress: &mut dyn FnMut(&Progress)) {
        let Some(live) = &mut self.live else { return };
        if live.last.elapsed() < LIVE_PROGRESS_EVERY {
            return;
        }
        live.last = Instant::now();
        let sent = self.shared.bytes_sent.load(Ordering::Relaxed);
        let moved = sent.saturating_sub(live.sent_at_start);
        let mut update = live.snapshot.clone();
        update.elapsed_ms = self.started.elapsed().as_millis() as u64;
        update.bytes_sent = sent;
        update.bytes_remaining = live.round_bytes.saturating_sub(moved);
        update.throughput_bps = moved as f64 / live.started.elapsed().as_secs_f64().max(1e-6);
        update.throttle_pct = self.throttle.pct.load(Ordering::Relaxed);
        progress(&update);
    }

    fn run(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<Report, MigrationError> {
        // Stage 2: copy while the guest runs. Round 0 sends every page the host
        // holds (untouched pages are zero on both sides and never read).
        let resident = dirty::resident_pages(&self.ctx.memory);
        let total_pages = self.ctx.machine.memory_bytes / PAGE_SIZE;
        let untouched = total_pages - resident.count();
        let mut round = 0u32;
        let mut round_start = Instant::now();
        let sent_before = self.shared.bytes_sent.load(Ordering::Relaxed);
        self.start_live(0, resident.bytes(), 0.0, 0.0, 0.0, progress);
        // Pages a forced switchover left unsent in the round it ended.
        let mut unsent = self.send_round(0, &resident, true, progress)?;
        let mut round_time = round_start.elapsed().as_secs_f64().max(1e-6);
        let mut bandwidth = (self.shared.bytes_sent.load(Ordering::Relaxed) - sent_before) as f64 / round_time;
        let full_pass_bps = bandwidth;
        let full_speed_bps = self.full_speed_bps(full_pass_bps);
        let mut dirty = dirty::collect(&self.ctx.vm_fd, &self.ctx.memory)?;
        if let Some(early) = self.early_dirty.take() {
            dirty.merge(&early);
        }
        let mut hot_rounds = 0;
        let mut round_bytes = resident.bytes();
        let mut extra_rounds = 0;
        while unsent.is_none() {
            let dirty_bytes = dirty.bytes();
            let dirty_rate = dirty_bytes as f64 / round_time;
            // A tiny round measures latency, not bandwidth: never assume less
            // than what the link has shown.
            let pages_ms = dirty_bytes as f64 / bandwidth.max(1.0) * 1000.0;
            let expected_ms = if dirty_bytes == 0 {
                0.0
            } else {
                pages_ms + STATE_ESTIMATE_MS
            };
            let fits = expected_ms <= self.options.downtime_limit_ms as f64;
            if fits {
                // Under the limit. A set that still shrinks fast (pages the
                // guest touched once, such as a freshly arrived VM's first
                // mappings) is cheaper to send live once more than paused.
                let shrinking = (dirty_bytes as f64) <= SHRINKING * round_bytes as f64;
                if !(shrinking && pages_ms > SETTLED_MS && extra_rounds < EXTRA_ROUNDS) {
                    break;
                }
                extra_rounds += 1;
            }
            if self.limit_reached()? {
                break;
            }
            if self.options.auto_converge && round > 0 && !fits {
                // The guest dirtied more than half of what the link moved in
                // the same time, twice in a row: slow it down.
                let sent = bandwidth * round_time;
                hot_rounds = if (dirty_bytes as f64) > 0.5 * sent {
                    hot_rounds + 1
                } else {
                    0
                };
                if hot_rounds >= 2 && self.keeps_share() {
                    // Giving the copy the CPU costs the guest less than
                    // holding its vCPUs still: that comes first.
                    self.release_share(Release::Converge);
                    hot_rounds = 0;
                } else if hot_rounds >= 2 {
                    let current = self.throttle.pct.load(Ordering::SeqCst);
                    let next = if current == 0 {
                        THROTTLE_START
                    } else {
                        current.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX)
                    };
                    self.throttle.pct.store(next, Ordering::SeqCst);
                    self.max_throttle = self.max_throttle.max(next);
                    hot_rounds = 0;
                }
            }
            round += 1;
            if round == 1 {
                fault::hold(Hold::LaterRound);
            }
            round_start = Instant::now();
            let before = self.shared.bytes_sent.load(Ordering::Relaxed);
            self.start_live(round, dirty_bytes, dirty_rate, bandwidth, expected_ms, progress);
            unsent = self.send_round(u64::from(round), &dirty, false, progress)?;
            round_bytes = dirty_bytes;
            round_time = round_start.elapsed().as_secs_f64().max(1e-6);
            let moved = (self.shared.bytes_sent.load(Ordering::Relaxed) - before) as f64;
            if moved >= f64::from(1 << 20) {
                bandwidth = moved / round_time;
            }
            dirty = dirty::collect(&self.ctx.vm_fd, &self.ctx.memory)?;
        }

        // Stage 3: switch over. Stop throttling, pause, send the rest and the
        // state. No progress goes out from here until the report: whoever
        // reads it (the CLI, an agent relaying to its client) must not be
        // competing for the CPU while the guest is stopped.
        self.live = None;
        self.throttle.stop();
        if !self.ctx.cancel.begin_switchover() {
            return Err(MigrationError::Cancelled);
        }
        let pause_at = Instant::now();
        let vcpu_wait_ms = cpu::waited_ns(&self.ctx.vcpu_tids)
            .zip(self.waited_at_start)
            .filter(|_| !self.ctx.vcpu_tids.is_empty())
            .map(|(now, start)| now.saturating_sub(start) as f64 / 1e6 / self.ctx.vcpu_tids.len() as f64);
        // The guest stops: nothing it would run is taken any more, and
        // everything until it runs again is downtime.
        self.crew.set(cpu::VMM_NICE);
        let left = self.vm.pause().map_err(|source| MigrationError::Vm {
            action: "pause",
            source,
        })?;
        self.paused = true;
        // The target tells the network the VM is there from now on, so what
        // is sent to the VM queues there while it is stopped.
        self.submit(
            0,
            Job::Frame {
                kind: Kind::Paused,
                arg: 0,
                payload: Vec::new(),
            },
        )?;
        round += 1;
        let mut last = dirty::collect(&self.ctx.vm_fd, &self.ctx.memory)?;
        last.merge(&dirty);
        if let Some(unsent) = &unsent {
            last.merge(unsent);
        }
        let final_bytes = last.bytes();
        // The state follows the last pages without waiting for their
        // acknowledgement: the receiver applies it only once every stream has
        // ended this round, and acknowledges the round before it says Ready.
        self.queue_round(u64::from(round), &last, false, progress)?;
        let memory_hash = self
            .options
            .verify_memory
            .then(|| dirty::content_hash(&self.ctx.memory));
        let state = self.vm.save_state().map_err(|source| MigrationError::Vm {
            action: "save its state",
            source,
        })?;
        let encoded = state.encode().map_err(|e| MigrationError::Vm {
            action: "encode its state",
            source: Box::new(e),
        })?;
        self.submit(
            0,
            Job::Frame {
                kind: Kind::State,
                arg: memory_hash.unwrap_or(0),
                payload: encoded,
            },
        )?;
        fault::hold(Hold::FinalState);
        self.wait_for(Kind::RoundDone, u64::from(round), progress)?;
        let pages_done = Instant::now();
        self.wait_for(Kind::Ready, 0, progress)?;
        let state_done = Instant::now();

        // Stage 4: handoff. From the moment Go may have left, only the target's
        // answer decides: never resume here on a guess.
        let go_at = Instant::now();
        let arrived = self.commit()?;
        let running_at = arrival_instant(arrived, go_at);
        let total = self.started.elapsed().as_secs_f64();
        let entered = self.entered_at(running_at);
        let bytes_sent = self.shared.bytes_sent.load(Ordering::Relaxed);
        Ok(Report {
            total_ms: total * 1000.0,
            downtime_ms: (running_at - pause_at).as_secs_f64() * 1000.0,
            stop_ms: ms(left.saturating_duration_since(pause_at)),
            resume_ms: self.resumed.map(|r| ms(Duration::from_nanos(r.start_ns))),
            blackout_ms: entered.map(|entered| ms(entered.saturating_duration_since(left))),
            final_pages_ms: (pages_done - pause_at).as_secs_f64() * 1000.0,
            state_ms: (state_done - pages_done).as_secs_f64() * 1000.0,
            handoff_ms: (running_at - state_done).as_secs_f64() * 1000.0,
            bytes_sent,
            pages_sent: self.shared.pages_sent.load(Ordering::Relaxed),
            zero_pages_skipped: self.shared.zero_pages.load(Ordering::Relaxed),
            untouched_pages: untouched,
            rounds: round + 1,
            final_round_bytes: final_bytes,
            streams: self.streams_taken,
            max_throttle_pct: self.max_throttle,
            throughput_bps: bytes_sent as f64 / total.max(1e-9),
            full_pass_bps,
            full_speed_bps,
            forced: self.forced_at.is_some(),
            forced_at_ms: self.forced_at.map(|at| (at - self.started).as_secs_f64() * 1000.0),
            memory_hash,
            announce: (!self.ctx.machine.nics.is_empty()).then_some(self.options.announce),
            frames_carried: self.frames_carried,
            encryption: self.encryption.clone(),
            guest_share: self.options.guest_share,
            share_released: self.released.map(|(at, why)| ShareRelease {
                at_ms: at.as_secs_f64() * 1000.0,
                why,
            }),
            live_ms: (pause_at - self.started).as_secs_f64() * 1000.0,
            vcpu_wait_ms,
        })
    }

    /// When the target's last vCPU entered the guest, in this host's clock:
    /// its `Resumed` counts from `Running` written, which took half the
    /// round trip from Go to `Running` (less the target's own part of it)
    /// to arrive here.
    fn entered_at(&self, running_at: Instant) -> Option<Instant> {
        let (resumed, go_sent) = (self.resumed?, self.go_sent?);
        let round_trip = running_at.saturating_duration_since(go_sent);
        let transit = round_trip.saturating_sub(Duration::from_nanos(resumed.commit_ns)) / 2;
        Some(running_at - transit + Duration::from_nanos(resumed.start_ns))
    }

    /// Sends Go and obtains the target's word that it runs the VM, with the
    /// time that word reached this host when the kernel says.
    fn commit(&mut self) -> Result<Option<SystemTime>, MigrationError> {
        // Written down before Go can leave: should this process die from
        // here on, its agent knows the target may run the VM.
        self.vm.handoff(self.session).map_err(|source| MigrationError::Vm {
            action: "record the handoff",
            source,
        })?;
        let handoff = self.options.timeouts.handoff();
        // What reached the source's cards since the pause goes along; a
        // card's frames are no reason to keep the VM here.
        let frames = self.vm.take_frames().unwrap_or_default();
        self.frames_carried = frames.iter().map(|(_, f)| f.len() as u64).sum();
        let carried = if frames.is_empty() {
            Ok(())
        } else {
            self.submit(
                0,
                Job::Frame {
                    kind: Kind::Frames,
                    arg: 0,
                    payload: protocol::encode(&frames),
                },
            )
        };
        let sent = carried.and_then(|()| {
            self.submit(
                0,
                Job::Frame {
                    kind: Kind::Go,
                    arg: 0,
                    payload: Vec::new(),
                },
            )
        });
        self.go_sent = Some(Instant::now());
        let confirmed = sent.and_then(|()| {
            self.control
                .set_read_timeout(Some(handoff))
                .map_err(ProtocolError::Io)?;
            let arrived = self.control.next_arrival();
            protocol::expect(&mut self.control, Kind::Running)
                .map(|_| arrived)
                .map_err(MigrationError::from)
        });
        let first = match confirmed {
            Ok(arrived) => {
                fault::hold(Hold::AfterRunning);
                self.resumed = self.hear_resumed();
                return Ok(arrived);
            }
            Err(first) => first,
        };
        // The link failed around Go: ask the target what it did.
        match query_outcome(&self.url, self.tls, self.session, handoff) {
            Some(Outcome::Running) => Ok(None),
            Some(Outcome::Discarded) => Err(MigrationError::Vm {
                action: "hand over",
                source: format!("the target discarded the VM ({first})").into(),
            }),
            _ => Err(MigrationError::InDoubt {
                target: self.url.clone(),
                detail: first.to_string(),
            }),
        }
    }

    /// The target's `Resumed`, if it comes soon; the VM runs there either way.
    fn hear_resumed(&mut self) -> Option<Resumed> {
        self.control.set_read_timeout(Some(RESUMED_WAIT)).ok()?;
        let (_, payload) = protocol::expect(&mut self.control, Kind::Resumed).ok()?;
        protocol::decode(Kind::Resumed, &payload).ok()
    }

    fn finish_streams(&mut self) {
        for stream in self.streams.drain(..) {
            drop(stream.jobs);
            let _ = stream.thread.join();
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Asks the receiver at `url` what became of `session`, retrying until it has
/// decided (a receiver waiting for Go decides within `handoff`).
pub fn query_outcome(url: &str, tls: Option<&ClientSide>, session: u64, handoff: Duration) -> Option<Outcome> {
    let deadline = Instant::now() + handoff + Duration::from_secs(5);
    loop {
        let answer = (|| -> Result<Outcome, MigrationError> {
            let mut stream = Link::connect(url, None, Duration::from_secs(2), tls)?;
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(ProtocolError::Io)?;
            protocol::write_frame(&mut stream, Kind::Query, session, &[])?;
            let (header, _) = protocol::expect(&mut stream, Kind::Outcome)?;
            Outcome::from_u64(header.arg).ok_or_else(|| ProtocolError::BadHeader.into())
        })();
        match answer {
            Ok(Outcome::Pending) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(outcome) => return Some(outcome),
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_arrives_when_the_kernel_says_if_that_is_believable() {
        let go_at = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        // No timestamp: now.
        assert!(arrival_instant(None, go_at) >= before);
        // 10 ms ago, after Go: that moment.
        let at = arrival_instant(Some(SystemTime::now() - Duration::from_millis(10)), go_at);
        assert!(at >= go_at && at < before, "{:?}", before - at);
        // Before Go, or in the future (a clock that stepped): not believed.
        assert!(arrival_instant(Some(SystemTime::now() - Duration::from_secs(60)), go_at) >= before);
        assert!(arrival_instant(Some(SystemTime::now() + Duration::from_secs(60)), go_at) >= before);
    }
}
