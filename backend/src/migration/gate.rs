//! The receiver's door: every connection to a receiving VMM's port comes in
//! here, is handled concurrently with the others, and must say who it is
//! within [`AUTH_TIMEOUT`] or is dropped.
//!
//! A connection's first frame decides what it is: `Hello` (the sender, once),
//! `Join` (one of the sender's extra streams), `Query` (what became of a
//! session), `Keepalive` (the sender's agent: the sender is still coming).
//! `Hello`, `Join` and `Keepalive` must carry the migration token when the
//! receiver has one (bound to the TLS session: [`super::tls`]). With TLS,
//! every connection first makes its handshake, in the same table, and must
//! present the certificate of the source host the receiver was told of, or
//! its first frame is answered with an Abort saying whose it was. One thread polls every connection that has not said
//! its first frame yet, so an idle, slow or hostile connection costs a slot
//! in a bounded table, never a thread, and never delays another: at most
//! [`MAX_PENDING`] such connections are kept, and when a new one comes while
//! the table is full, the oldest is dropped (a real sender's first frame is
//! one write, read within microseconds of its arrival).
//!
//! The gate also keeps the receiver's decisions about each session (its
//! [`Outcome`]) and the accept deadline: a receiving VMM that no sender has
//! reached within [`super::Timeouts::accept_s`] of its start or of the last
//! keepalive gives up.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::link::Link;
use super::protocol::{self, HEADER_LEN, Header, Hello, Kind, Outcome, TOKEN_LEN, Token};
use super::tls::{Accepting, ClientSide, ServerSide};
use super::transport;

/// How long a new connection has to deliver its whole first frame.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Most connections waiting to say their first frame.
pub const MAX_PENDING: usize = 64;
/// How often the gate looks at its deadlines when nothing happens.
const TICK: Duration = Duration::from_millis(50);

const NOT_AUTHENTICATED: &[u8] = b"not authenticated: the migration token is missing or wrong";
const TAKEN: &[u8] = b"this receiver has its sender already; start another with --incoming";
const TLS_ONLY: &[u8] = b"this receiver takes TLS streams only (its agent does not allow plaintext migration)";

/// Where a receiver is in taking its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No sender yet.
    Waiting,
    /// A sender said Hello; memory and state are arriving.
    Receiving,
    /// The complete state is here; waiting for Go.
    Ready,
    /// Committed: the VM runs here (or is about to).
    Running,
    /// Given up: nothing runs here, and nothing will.
    Discarded,
}

/// An authenticated connection for the receiver.
#[derive(Debug)]
pub enum Arrival {
    /// The sender's control stream and its Hello.
    Hello { stream: Link, hello: Box<Hello> },
    /// Extra stream `index` of the accepted session.
    Join { stream: Link, index: u32 },
}

#[derive(Debug)]
struct State {
    outcomes: Vec<(u64, Outcome)>,
    /// The session of the sender taken, once one said Hello.
    session: Option<u64>,
    phase: Phase,
    /// Until when a receiver without a sender waits; None once one came.
    accept_until: Option<Instant>,
    /// The process is ending: nothing may commit any more.
    terminating: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    token: Option<Token>,
    accept: Duration,
    tls: Option<ServerSide>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outcome(&self, session: u64) -> Outcome {
        self.lock()
            .outcomes
            .iter()
            .find(|(s, _)| *s == session)
            .map_or(Outcome::Discarded, |(_, o)| *o)
    }

    /// Whether `presented` on `link` proves the token.
    fn authentic(&self, link: &Link, presented: &Token) -> bool {
        self.token.is_none_or(|t| link.present(t).matches(presented))
    }
}

/// Why no sender was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSender {
    /// Nobody said Hello within the accept time (keepalives included).
    Expired(Duration),
    /// The process is ending.
    Terminating,
}

/// The receiver's side of the gate.
#[derive(Debug)]
pub struct Gate {
    shared: Arc<Shared>,
    arrivals: Receiver<Arrival>,
}

/// A handle on the gate's decisions, for the VMM process (status, abort).
#[derive(Debug, Clone)]
pub struct GateHandle {
    shared: Arc<Shared>,
}

impl Gate {
    /// Opens the gate on `listener`, taking TLS streams only with `tls`; a
    /// thread serves it for the rest of the process's life.
    pub fn open(
        listener: TcpListener,
        token: Option<Token>,
        accept: Duration,
        tls: Option<ServerSide>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                outcomes: Vec::new(),
                session: None,
                phase: Phase::Waiting,
                accept_until: Some(Instant::now() + accept),
                terminating: false,
            }),
            token,
            accept,
            tls,
        });
        // Arrivals are few (a Hello, up to MAX_STREAMS Joins); more than that
        // waiting means a receiver that is not reading, and they are dropped.
        let (to_receiver, arrivals) = sync_channel(usize::try_from(super::MAX_STREAMS).unwrap_or(16) + 1);
        let door = Door {
            listener,
            pending: Vec::new(),
            shared: Arc::clone(&shared),
            to_receiver,
        };
        std::thread::Builder::new()
            .name("migrate-gate".into())
            .spawn(move || door.run())?;
        Ok(Self { shared, arrivals })
    }

    pub fn handle(&self) -> GateHandle {
        GateHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits for the sender's Hello until the accept deadline (which
    /// keepalives push back).
    pub fn wait_hello(&self) -> Result<(Link, Hello), NoSender> {
        loop {
            match self.arrivals.recv_timeout(TICK) {
                Ok(Arrival::Hello { stream, hello }) => return Ok((stream, *hello)),
                Ok(Arrival::Join { .. }) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(NoSender::Terminating),
            }
            let mut state = self.shared.lock();
            if state.terminating {
                return Err(NoSender::Terminating);
            }
            // Decided under the lock, so a Hello the door takes at this
            // moment is either before (and in the channel) or refused.
            if state.session.is_none() && state.accept_until.is_some_and(|t| Instant::now() >= t) {
                state.accept_until = None;
                state.phase = Phase::Discarded;
                return Err(NoSender::Expired(self.shared.accept));
            }
        }
    }

    /// The next extra stream of the accepted session, waiting until `deadline`.
    pub fn next_join(&self, deadline: Instant) -> Option<(Link, u32)> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.arrivals.recv_timeout(left.min(TICK)) {
                Ok(Arrival::Join { stream, index }) => return Some((stream, index)),
                Ok(Arrival::Hello { .. }) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl GateHandle {
    pub fn phase(&self) -> Phase {
        self.shared.lock().phase
    }

    pub fn set_phase(&self, phase: Phase) {
        self.shared.lock().phase = phase;
    }

    pub fn outcome(&self, session: u64) -> Outcome {
        self.shared.outcome(session)
    }

    /// Records a decision other than the commit (see [`GateHandle::commit`]).
    pub fn set_outcome(&self, session: u64, outcome: Outcome) {
        let mut state = self.shared.lock();
        set(&mut state, session, outcome);
        state.phase = match outcome {
            Outcome::Discarded => Phase::Discarded,
            Outcome::Pending => Phase::Ready,
            Outcome::Running => Phase::Running,
        };
    }

    /// The commit: records `Running` for `session` after `durable` (which
    /// writes it where the VMM's agent will find it) succeeded, unless the
    /// process is ending. Exclusive with [`GateHandle::terminate`].
    pub fn commit(&self, session: u64, durable: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let mut state = self.shared.lock();
        if state.terminating {
            return Err("the VMM is ending".into());
        }
        durable()?;
        set(&mut state, session, Outcome::Running);
        state.phase = Phase::Running;
        Ok(())
    }

    /// The process is ending: from now on nothing commits. Returns false when
    /// a session committed already (the VM is this receiver's to run or stop).
    pub fn terminate(&self) -> bool {
        let mut state = self.shared.lock();
        if state.outcomes.iter().any(|(_, o)| *o == Outcome::Running) {
            return false;
        }
        state.terminating = true;
        true
    }
}

fn set(state: &mut State, session: u64, outcome: Outcome) {
    match state.outcomes.iter_mut().find(|(s, _)| *s == session) {
        Some(entry) => entry.1 = outcome,
        None => state.outcomes.push((session, outcome)),
    }
}

/// A connection that has not said its first frame yet.
struct Pending {
    /// What the door polls.
    socket: TcpStream,
    /// The TLS handshake, until it is done.
    handshake: Option<Accepting>,
    /// The stream, once it can carry frames.
    link: Option<Link>,
    /// Why its TLS peer is not the source expected.
    refused: Option<String>,
    since: Instant,
    buf: Vec<u8>,
    /// Header and payload length, once the header is in.
    want: usize,
}

/// The gate's thread: accepts and reads first frames without blocking.
struct Door {
    listener: TcpListener,
    pending: Vec<Pending>,
    shared: Arc<Shared>,
    to_receiver: SyncSender<Arrival>,
}

impl Door {
    fn run(mut self) {
        loop {
            self.wait();
            self.accept_new();
            let now = Instant::now();
            let mut i = 0;
            while i < self.pending.len() {
                match read_some(&mut self.pending[i]) {
                    Step::More if now.duration_since(self.pending[i].since) < AUTH_TIMEOUT => i += 1,
                    Step::More | Step::Drop => {
                        self.pending.swap_remove(i);
                    }
                    Step::Frame => {
                        let conn = self.pending.swap_remove(i);
                        self.dispatch(conn);
                    }
                }
            }
        }
    }

    /// Sleeps until the listener or a pending connection can be read, or a tick.
    fn wait(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds: Vec<PollFd<'_>> = std::iter::once(self.listener.as_fd())
            .chain(self.pending.iter().map(|p| p.socket.as_fd()))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, tick);
    }

    fn accept_new(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((socket, _)) => {
                    if socket.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let (handshake, link) = match &self.shared.tls {
                        Some(tls) => match Accepting::new(tls) {
                            Ok(handshake) => (Some(handshake), None),
                            Err(_) => continue,
                        },
                        None => match socket.try_clone().and_then(Link::plain) {
                            Ok(link) => (None, Some(link)),
                            Err(_) => continue,
                        },
                    };
                    if self.pending.len() >= MAX_PENDING
                        && let Some(oldest) = (0..self.pending.len()).min_by_key(|i| self.pending[*i].since)
                    {
                        self.pending.swap_remove(oldest);
                    }
                    self.pending.push(Pending {
                        socket,
                        handshake,
                        link,
                        refused: None,
                        since: Instant::now(),
                        buf: Vec::with_capacity(HEADER_LEN),
                        want: HEADER_LEN,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: none left. Anything else (out of descriptors)
                // is retried on the next tick.
                Err(_) => return,
            }
        }
    }

    fn dispatch(&self, conn: Pending) {
        let Pending { link, buf, refused, .. } = conn;
        let Some(mut stream) = link else { return };
        let header = match <&[u8; HEADER_LEN]>::try_from(&buf[..HEADER_LEN]).map(Header::decode) {
            Ok(Ok(header)) => header,
            _ => return,
        };
        let payload = &buf[HEADER_LEN..];
        if stream.socket().set_nonblocking(false).is_err() {
            return;
        }
        let _ = stream.set_write_timeout(Some(AUTH_TIMEOUT));
        if let Some(reason) = refused {
            let reason = format!("not authenticated: {reason}");
            let _ = protocol::write_frame(&mut stream, Kind::Abort, 0, reason.as_bytes());
            return;
        }
        match header.kind {
            Kind::Query => {
                let outcome = self.shared.outcome(header.arg);
                let _ = protocol::write_frame(&mut stream, Kind::Outcome, outcome as u64, &[]);
            }
            Kind::Keepalive => {
                let Some(token) = token_at(payload, 0) else { return };
                if !self.shared.authentic(&stream, &token) {
                    return;
                }
                let mut state = self.shared.lock();
                let waiting = state.session.is_none() && state.accept_until.is_some();
                if waiting {
                    state.accept_until = Some(Instant::now() + self.shared.accept);
                }
                drop(state);
                if waiting {
                    let _ = protocol::write_frame(&mut stream, Kind::Keepalive, 0, &[]);
                } else {
                    let _ = protocol::write_frame(&mut stream, Kind::Abort, 0, TAKEN);
                }
            }
            Kind::Hello => self.hello(stream, payload),
            Kind::Join => {
                let (Some(index), Some(token)) = (
                    payload.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes),
                    token_at(payload, 4),
                ) else {
                    return;
                };
                let session = self.shared.lock().session;
                if session == Some(header.arg) && self.shared.authentic(&stream, &token) {
                    self.deliver(Arrival::Join { stream, index });
                }
            }
            _ => {}
        }
    }

    fn hello(&self, mut stream: Link, payload: &[u8]) {
        let hello = match protocol::decode::<Hello>(Kind::Hello, payload) {
            Ok(hello) => hello,
            Err(e) => {
                let _ = protocol::write_frame(&mut stream, Kind::Abort, 0, e.to_string().as_bytes());
                return;
            }
        };
        if !self.shared.authentic(&stream, &hello.token) {
            let _ = protocol::write_frame(&mut stream, Kind::Abort, 0, NOT_AUTHENTICATED);
            return;
        }
        let mut state = self.shared.lock();
        let open = state.session.is_none() && state.accept_until.is_some() && !state.terminating;
        if !open {
            drop(state);
            let _ = protocol::write_frame(&mut stream, Kind::Abort, 0, TAKEN);
            return;
        }
        state.session = Some(hello.session);
        state.accept_until = None;
        state.phase = Phase::Receiving;
        drop(state);
        let _ = stream.set_write_timeout(None);
        transport::tune(stream.socket());
        self.deliver(Arrival::Hello {
            stream,
            hello: Box::new(hello),
        });
    }

    fn deliver(&self, arrival: Arrival) {
        match self.to_receiver.try_send(arrival) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn token_at(payload: &[u8], offset: usize) -> Option<Token> {
    let bytes: [u8; TOKEN_LEN] = payload.get(offset..offset + TOKEN_LEN)?.try_into().ok()?;
    Some(Token(bytes))
}

enum Step {
    /// Not complete yet.
    More,
    /// The whole first frame is in.
    Frame,
    /// Closed, failed, or not a first frame the gate takes.
    Drop,
}

/// Reads what a pending connection has sent, without blocking: its TLS
/// handshake first, when it makes one.
fn read_some(conn: &mut Pending) -> Step {
    if let Some(handshake) = &mut conn.handshake {
        match handshake.advance(&mut conn.socket) {
            Ok(false) => return Step::More,
            Ok(true) => {}
            Err(_) => {
                if handshake.saw_plaintext() {
                    // A sender not told to use TLS: say why, in its terms.
                    let _ = conn.socket.set_nonblocking(false);
                    let _ = conn.socket.set_write_timeout(Some(AUTH_TIMEOUT));
                    let _ = protocol::write_frame(&mut &conn.socket, Kind::Abort, 0, TLS_ONLY);
                }
                return Step::Drop;
            }
        }
        let Some(handshake) = conn.handshake.take() else {
            return Step::Drop;
        };
        let Ok((session, verdict)) = handshake.finish() else {
            return Step::Drop;
        };
        conn.refused = verdict.err();
        match conn.socket.try_clone().and_then(|socket| Link::sealed(socket, session)) {
            Ok(link) => conn.link = Some(link),
            Err(_) => return Step::Drop,
        }
    }
    let Some(link) = &mut conn.link else {
        return Step::Drop;
    };
    loop {
        let have = conn.buf.len();
        if have == conn.want {
            if have > HEADER_LEN {
                return Step::Frame;
            }
            let header: &[u8; HEADER_LEN] = conn.buf[..HEADER_LEN].try_into().expect("a whole header");
            let Ok(header) = Header::decode(header) else {
                return Step::Drop;
            };
            if !matches!(header.kind, Kind::Hello | Kind::Join | Kind::Query | Kind::Keepalive) {
                return Step::Drop;
            }
            if header.len == 0 {
                return Step::Frame;
            }
            // Bounded by the header's checks: at most MAX_HELLO_PAYLOAD.
            conn.want = HEADER_LEN + header.len as usize;
            conn.buf.reserve(header.len as usize);
            continue;
        }
        let mut chunk = [0u8; 4096];
        let room = (conn.want - have).min(chunk.len());
        match link.read(&mut chunk[..room]) {
            Ok(0) => return Step::Drop,
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Drop,
        }
    }
}

/// The sender's agent tells the receiver at `url` that its sender is still
/// coming; true when the receiver is there, still waiting, and took it.
pub fn keepalive(url: &str, token: Token, timeout: Duration) -> bool {
    keepalive_from(url, None, None, token, timeout)
}

/// [`keepalive`] from the address `local`, over TLS with `tls`.
pub fn keepalive_from(
    url: &str,
    local: Option<std::net::IpAddr>,
    tls: Option<&ClientSide>,
    token: Token,
    timeout: Duration,
) -> bool {
    let Ok(mut stream) = Link::connect(url, local, timeout, tls) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let proof = stream.present(token);
    if protocol::write_frame(&mut stream, Kind::Keepalive, 0, &proof.0).is_err() {
        return false;
    }
    protocol::expect(&mut stream, Kind::Keepalive).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::tls::TlsPeer;
    use crate::pki::{self, Identity, Role};
    use std::io::Write;

    fn gate(token: Option<Token>, accept: Duration) -> (Gate, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp:{}", listener.local_addr().unwrap());
        (Gate::open(listener, token, accept, None).unwrap(), url)
    }

    fn hello(token: Token) -> Vec<u8> {
        let hello = Hello {
            version: protocol::PROTOCOL_VERSION,
            session: 42,
            vm_name: "vm".into(),
            machine: crate::vmm::MachineConfig {
                memory_bytes: 64 << 20,
                vcpus: 1,
                cpuid_masks: Vec::new(),
                disks: Vec::new(),
                nics: Vec::new(),
            },
            cpuid: Vec::new(),
            xsave_size: 0,
            streams: 2,
            streams_auto: false,
            boot_id: String::new(),
            guest_share: 95,
            token,
            announce: Default::default(),
        };
        let payload = protocol::encode(&hello);
        let mut frame = Header::new(Kind::Hello, payload.len() as u32, 0).encode().to_vec();
        frame.extend_from_slice(&payload);
        frame
    }

    #[test]
    fn idle_and_slow_connections_do_not_hold_up_the_sender() {
        let token = Token([7; TOKEN_LEN]);
        let (gate, url) = gate(Some(token), Duration::from_secs(30));
        let addr = url.strip_prefix("tcp:").unwrap().to_string();
        // Idle connections, and one that sends a header byte by byte.
        let idle: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(&[1]).unwrap();
        let mut sender = TcpStream::connect(&addr).unwrap();
        sender.write_all(&hello(token)).unwrap();
        let (_, taken) = gate.wait_hello().expect("the real sender is taken at once");
        assert_eq!(taken.session, 42);
        // The idle ones are dropped once their time to speak is up.
        let mut buf = [0u8; 1];
        for mut stream in idle {
            stream.set_read_timeout(Some(AUTH_TIMEOUT * 3)).unwrap();
            assert_eq!(stream.read(&mut buf).unwrap(), 0, "an idle connection is closed");
        }
        slow.set_read_timeout(Some(AUTH_TIMEOUT * 3)).unwrap();
        assert!(matches!(slow.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn a_full_table_drops_its_oldest_connection() {
        let (gate, url) = gate(None, Duration::from_secs(30));
        let addr = url.strip_prefix("tcp:").unwrap().to_string();
        let mut first = TcpStream::connect(&addr).unwrap();
        // Let the door take the first before the crowd.
        std::thread::sleep(TICK * 2);
        let crowd: Vec<TcpStream> = (0..MAX_PENDING).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        first.set_read_timeout(Some(AUTH_TIMEOUT / 2)).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(first.read(&mut buf).unwrap(), 0, "the oldest made room");
        let mut sender = TcpStream::connect(&addr).unwrap();
        sender.write_all(&hello(Token::default())).unwrap();
        assert!(gate.wait_hello().is_ok(), "a sender still gets in");
        drop(crowd);
    }

    #[test]
    fn a_wrong_token_is_refused_and_the_wait_goes_on() {
        let (gate, url) = gate(Some(Token([1; TOKEN_LEN])), Duration::from_secs(30));
        let addr = url.strip_prefix("tcp:").unwrap().to_string();
        let mut impostor = TcpStream::connect(&addr).unwrap();
        impostor.write_all(&hello(Token([2; TOKEN_LEN]))).unwrap();
        let refused = protocol::expect(&mut impostor, Kind::Accept).unwrap_err();
        assert!(refused.to_string().contains("not authenticated"), "{refused}");
        let mut sender = TcpStream::connect(&addr).unwrap();
        sender.write_all(&hello(Token([1; TOKEN_LEN]))).unwrap();
        assert!(gate.wait_hello().is_ok());
    }

    #[test]
    fn without_a_sender_the_wait_ends_unless_kept_alive() {
        let token = Token([3; TOKEN_LEN]);
        let accept = Duration::from_millis(600);
        let (gate, url) = gate(Some(token), accept);
        let started = Instant::now();
        // Kept alive for a while, by the token holder only.
        assert!(!keepalive(&url, Token([4; TOKEN_LEN]), Duration::from_secs(1)));
        let keeper = {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    assert!(keepalive(&url, token, Duration::from_secs(1)), "the receiver waits");
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        };
        let waited = gate.wait_hello().map(drop).unwrap_err();
        keeper.join().unwrap();
        assert_eq!(waited, NoSender::Expired(accept));
        assert!(
            started.elapsed() >= Duration::from_millis(1200),
            "keepalives pushed the end back"
        );
        assert_eq!(gate.handle().phase(), Phase::Discarded);
        assert!(
            !keepalive(&url, token, Duration::from_secs(1)),
            "an ended wait takes no keepalive"
        );
    }

    #[test]
    fn queries_are_answered_while_the_receiver_works() {
        let (gate, url) = gate(None, Duration::from_secs(30));
        let handle = gate.handle();
        handle.set_outcome(9, Outcome::Pending);
        let ask = |session| {
            let mut stream = transport::connect(&url, Duration::from_secs(1)).unwrap();
            protocol::write_frame(&mut stream, Kind::Query, session, &[]).unwrap();
            let (header, _) = protocol::expect(&mut stream, Kind::Outcome).unwrap();
            Outcome::from_u64(header.arg).unwrap()
        };
        assert_eq!(ask(9), Outcome::Pending);
        assert_eq!(ask(10), Outcome::Discarded, "an unknown session was never run");
        handle.commit(9, || Ok(())).unwrap();
        assert_eq!(ask(9), Outcome::Running);
        assert!(!handle.terminate(), "a committed session is not aborted");
    }

    #[test]
    fn a_terminating_receiver_cannot_commit() {
        let (gate, _) = gate(None, Duration::from_secs(30));
        let handle = gate.handle();
        assert!(handle.terminate());
        assert!(handle.commit(1, || Ok(())).is_err());
        assert_eq!(handle.outcome(1), Outcome::Discarded);
        // Nor can one whose decision cannot be written down first.
        let (other, _) = self::gate(None, Duration::from_secs(30));
        assert!(other.handle().commit(2, || Err("disk full".into())).is_err());
        assert_eq!(other.handle().outcome(2), Outcome::Discarded);
        drop(gate);
    }

    /// hostA's and hostC's identities, and a gate on hostB that takes
    /// streams from hostA only.
    fn tls_gate(dir: &std::path::Path, token: Token) -> (Gate, String, Identity, Identity) {
        pki::init_ca(&dir.join("ca"), "test").unwrap();
        let issue = |name| pki::issue(&dir.join("ca"), Role::Host, name, &[], &dir.join("certs")).unwrap();
        let (a, b, c) = (issue("hostA"), issue("hostB"), issue("hostC"));
        let side = TlsPeer {
            identity: b,
            peer: "hostA".into(),
        }
        .server()
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp:{}", listener.local_addr().unwrap());
        let gate = Gate::open(listener, Some(token), Duration::from_secs(30), Some(side)).unwrap();
        (gate, url, a, c)
    }

    fn to_hostb(identity: &Identity) -> ClientSide {
        TlsPeer {
            identity: identity.clone(),
            peer: "hostB".into(),
        }
        .client()
        .unwrap()
    }

    #[test]
    fn over_tls_only_the_expected_host_with_a_bound_token_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token([9; TOKEN_LEN]);
        let (gate, url, a, c) = tls_gate(dir.path(), token);
        let timeout = Duration::from_secs(5);
        let addr = url.strip_prefix("tcp:").unwrap().to_string();

        // A plaintext sender is told why.
        let mut plain = TcpStream::connect(&addr).unwrap();
        plain.write_all(&hello(token)).unwrap();
        let refused = protocol::expect(&mut plain, Kind::Accept).unwrap_err();
        assert!(refused.to_string().contains("TLS streams only"), "{refused}");

        // Another host of the cluster, token and all, is refused by name.
        let mut other = Link::connect(&url, None, timeout, Some(&to_hostb(&c))).unwrap();
        let proof = other.present(token);
        other.write_all(&hello(proof)).unwrap();
        other.flush().unwrap();
        let refused = protocol::expect(&mut other, Kind::Accept).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("the source presented the certificate of host hostC, not host hostA's"),
            "{refused}"
        );

        // The right host presenting the raw token, not its proof, is refused:
        // a token seen elsewhere is worth nothing on this session.
        let mut replay = Link::connect(&url, None, timeout, Some(&to_hostb(&a))).unwrap();
        replay.write_all(&hello(token)).unwrap();
        replay.flush().unwrap();
        let refused = protocol::expect(&mut replay, Kind::Accept).unwrap_err();
        assert!(refused.to_string().contains("not authenticated"), "{refused}");

        // hostA with the proof gets in; its keepalives too.
        assert!(keepalive_from(&url, None, Some(&to_hostb(&a)), token, timeout));
        assert!(!keepalive_from(&url, None, Some(&to_hostb(&c)), token, timeout));
        let mut sender = Link::connect(&url, None, timeout, Some(&to_hostb(&a))).unwrap();
        let proof = sender.present(token);
        sender.write_all(&hello(proof)).unwrap();
        sender.flush().unwrap();
        let (mut taken, hello) = gate.wait_hello().expect("hostA is taken");
        assert_eq!(hello.session, 42);
        assert_eq!(taken.suite(), sender.suite());
        // The stream carries frames both ways, sealed.
        protocol::write_frame(&mut taken, Kind::Accept, 2, &[]).unwrap();
        let (header, _) = protocol::expect(&mut sender, Kind::Accept).unwrap();
        assert_eq!(header.arg, 2);
    }
}
