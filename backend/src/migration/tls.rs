//! TLS 1.3 on migration streams, mutually authenticated with the cluster's
//! host certificates.
//!
//! rustls makes the handshake: each side presents its host's certificate and
//! checks that the other's is the host it expects (the sender names the
//! target's host as the server name; the receiver compares the client
//! certificate's name with the source host it was told of). Then rustls
//! hands over the session's traffic secrets, as it does for kernel TLS, and
//! the record layer runs here: a [`Sealer`] for what a stream sends and an
//! [`Opener`] for what it receives, separate values, so that one thread
//! writes pages on a stream while another reads the control replies on it,
//! and each stream encrypts on its own thread. The records are TLS 1.3's
//! (RFC 8446 §5.2): `application_data` headers, the inner content type at the
//! end of the plaintext, a nonce of the static IV XOR the record's sequence
//! number, the header as additional data.
//!
//! So that no record rustls did not decrypt is lost at the handover, the
//! handshake reads the socket one whole record at a time, never beyond: the
//! first byte after the peer's last handshake record is the first byte the
//! [`Opener`] sees. No session tickets are sent or kept (a resumed session
//! would carry no certificate to check), and no key update ever happens: a
//! stream stops with an error before its key reaches AES-GCM's limit of
//! 2^24 records (256 GiB per stream).
//!
//! The migration token is bound to the session: instead of the token, a
//! sender presents HMAC-SHA256 keyed with 32 bytes exported from this
//! session's keys (RFC 8446 §7.5) over the token, so the token itself never
//! travels, and a proof seen on one connection is worth nothing on another.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ConnectionTrafficSecrets, ServerConfig, ServerConnection};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::protocol::{TOKEN_LEN, Token};
use crate::pki::{self, Identity, PkiError, Role};

/// Most plaintext in one record.
pub const MAX_PLAIN: usize = 1 << 14;
/// Most bytes after a record's header (TLS 1.3's limit on TLSCiphertext).
const MAX_CIPHER: usize = MAX_PLAIN + 256;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
/// Records one key may seal or open (rustls's confidentiality limit for
/// AES-GCM, applied to every suite).
const RECORD_LIMIT: u64 = 1 << 24;
/// Sealed records are written out once this much is waiting.
const FLUSH_AT: usize = 256 << 10;
/// The receive buffer: many records per read.
const READ_BUF: usize = 256 << 10;
const EXPORTER_LABEL: &[u8] = b"EXPORTER-vmig-migration-token";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS handshake failed")]
    Handshake(#[source] io::Error),
    #[error("{0}")]
    WrongPeer(String),
    #[error("TLS session: {0}")]
    Session(#[from] rustls::Error),
}

/// One side's TLS for a migration, as an agent hands it to its VMM: this
/// host's identity and the host expected at the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPeer {
    pub identity: Identity,
    /// The other side's host name, as its certificate must say.
    pub peer: String,
}

/// The sending side's TLS: connects to host `peer` only.
#[derive(Debug, Clone)]
pub struct ClientSide {
    config: Arc<ClientConfig>,
    peer: String,
}

/// The receiving side's TLS: takes a stream from host `peer` only.
#[derive(Debug, Clone)]
pub struct ServerSide {
    config: Arc<ServerConfig>,
    peer: String,
}

/// ring's TLS 1.3 suites, AES-128-GCM first: the cheapest per byte where
/// the CPU has AES instructions, and as strong as a migration needs.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

impl TlsPeer {
    pub fn client(&self) -> Result<ClientSide, TlsError> {
        let mut config = Arc::unwrap_or_clone(pki::client_config_with(&self.identity, provider())?);
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientSide {
            config: Arc::new(config),
            peer: self.peer.clone(),
        })
    }

    pub fn server(&self) -> Result<ServerSide, TlsError> {
        let mut config = Arc::unwrap_or_clone(pki::server_config_with(&self.identity, provider())?);
        config.ignore_client_order = true;
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerSide {
            config: Arc::new(config),
            peer: self.peer.clone(),
        })
    }
}

impl ServerSide {
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// An established session: the two halves of its record layer and what it
/// binds the token to.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
    pub binding: Binding,
    /// The negotiated suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub suite: &'static str,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// 32 bytes exported from a session's keys, for [`Binding::prove`].
#[derive(Clone, Copy)]
pub struct Binding([u8; 32]);

impl Binding {
    /// What a sender presents instead of `token` on this session.
    pub fn prove(&self, token: &Token) -> Token {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, &token.0);
        let mut proof = [0u8; TOKEN_LEN];
        proof.copy_from_slice(&tag.as_ref()[..TOKEN_LEN]);
        Token(proof)
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(..)")
    }
}

/// The sender's handshake on a connected, blocking socket (set its timeouts
/// first). Refused unless the server is host `side.peer`.
pub fn connect(side: &ClientSide, socket: &mut TcpStream) -> Result<Session, TlsError> {
    let name = ServerName::try_from(side.peer.clone()).map_err(|source| PkiError::ServerName {
        name: side.peer.clone(),
        source,
    })?;
    let conn = ClientConnection::new(side.config.clone(), name)?;
    let mut conn = Connection::Client(conn);
    let mut record = Vec::new();
    loop {
        match step(&mut conn, socket, &mut record) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(TlsError::Handshake(e)),
        }
    }
    establish(conn, &side.peer, "the target")
}

/// A receiver's handshake, driven by a non-blocking socket's readiness.
pub struct Accepting {
    conn: Connection,
    record: Vec<u8>,
    peer: String,
    /// The first byte was not a TLS handshake's.
    plaintext: bool,
    started: bool,
}

impl Accepting {
    pub fn new(side: &ServerSide) -> Result<Self, TlsError> {
        Ok(Self {
            conn: Connection::Server(ServerConnection::new(side.config.clone())?),
            record: Vec::new(),
            peer: side.peer.clone(),
            plaintext: false,
            started: false,
        })
    }

    /// The client spoke without TLS (a sender not told to use it).
    pub fn saw_plaintext(&self) -> bool {
        self.plaintext
    }

    /// Goes as far as the socket allows: true once the handshake is done.
    pub fn advance(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        if !self.started {
            let mut first = [0u8; 1];
            match socket.peek(&mut first) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            self.started = true;
            if first[0] != HANDSHAKE {
                self.plaintext = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not a TLS handshake"));
            }
        }
        loop {
            match step(&mut self.conn, socket, &mut self.record) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// The session, or why its client is not the host expected (the
    /// session is still made, so that the refusal can be said on it).
    pub fn finish(self) -> Result<(Session, Result<(), String>), TlsError> {
        let verdict = check_peer(&self.conn, &self.peer, "the source");
        let session = into_session(self.conn)?;
        Ok((session, verdict))
    }
}

/// One step of a handshake: writes what rustls has, then feeds it one whole
/// record. True once the handshake is complete.
fn step(conn: &mut Connection, socket: &mut TcpStream, record: &mut Vec<u8>) -> io::Result<bool> {
    while conn.wants_write() {
        conn.write_tls(socket)?;
    }
    if !conn.is_handshaking() {
        return Ok(true);
    }
    if !read_record_part(socket, record)? {
        return Ok(false);
    }
    // rustls takes a record in pieces as its buffer allows: feed it all.
    let fed = feed(conn, record);
    record.clear();
    if let Err(e) = fed {
        // Tell the peer why (an alert), then fail.
        while conn.wants_write() {
            if conn.write_tls(socket).is_err() {
                break;
            }
        }
        return Err(e);
    }
    Ok(false)
}

/// Gives rustls every byte of `record`, processing as it goes.
fn feed(conn: &mut Connection, record: &[u8]) -> io::Result<()> {
    let mut rest = record;
    while !rest.is_empty() {
        let taken = conn.read_tls(&mut rest)?;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if taken == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "rustls took no more of a record",
            ));
        }
    }
    Ok(())
}

/// Reads towards one whole record in `record`, never past it: true when it
/// is complete. A non-blocking socket's WouldBlock comes back as an error
/// with what was read kept.
fn read_record_part(socket: &mut TcpStream, record: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let want = if record.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
            if len > MAX_CIPHER {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS record too long"));
            }
            HEADER_LEN + len
        };
        if record.len() == want && want > HEADER_LEN {
            return Ok(true);
        }
        let have = record.len();
        record.resize(want, 0);
        match socket.read(&mut record[have..]) {
            Ok(0) => {
                record.truncate(have);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => record.truncate(have + n),
            Err(e) => {
                record.truncate(have);
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

fn check_peer(conn: &Connection, expected: &str, side: &str) -> Result<(), String> {
    match pki::peer_of(conn) {
        Ok(peer) if peer.role == Role::Host && peer.name == expected => Ok(()),
        Ok(peer) => {
            let role = match peer.role {
                Role::Host => "host",
                Role::Operator => "operator",
            };
            Err(format!(
                "{side} presented the certificate of {role} {}, not host {expected}'s",
                peer.name
            ))
        }
        Err(e) => Err(format!("{side}'s certificate: {e}")),
    }
}

fn establish(conn: Connection, expected: &str, side: &str) -> Result<Session, TlsError> {
    check_peer(&conn, expected, side).map_err(TlsError::WrongPeer)?;
    into_session(conn)
}

fn into_session(conn: Connection) -> Result<Session, TlsError> {
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("TLS13");
    let binding = conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)?;
    let secrets = conn.dangerous_extract_secrets()?;
    Ok(Session {
        sealer: Sealer {
            cipher: Cipher::new(secrets.tx)?,
            out: Vec::with_capacity(FLUSH_AT + MAX_CIPHER + HEADER_LEN),
            open: None,
        },
        opener: Opener {
            cipher: Cipher::new(secrets.rx)?,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            plain: 0..0,
        },
        binding: Binding(binding),
        suite,
    })
}

impl std::fmt::Debug for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepting")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.cipher.seq)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("seq", &self.cipher.seq)
            .finish_non_exhaustive()
    }
}

/// One direction's key and the next record's sequence number.
struct Cipher {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Cipher {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, TlsError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(rustls::Error::General("unsupported cipher suite".into()).into()),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| rustls::Error::General("bad traffic key".into()))?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| rustls::Error::General("bad traffic IV".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The next record's nonce: never the same twice.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= RECORD_LIMIT {
            return Err(io::Error::other(
                "the stream's TLS key reached its record limit (2^24 records)",
            ));
        }
        let mut nonce = self.iv;
        for (byte, seq) in nonce[aead::NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

fn record_header(len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (len as u16).to_be_bytes();
    [APPLICATION_DATA, 3, 3, hi, lo]
}

/// What a stream sends, sealed into records. Plaintext is copied once, into
/// the record it goes out in, and sealed in place there.
pub struct Sealer {
    cipher: Cipher,
    out: Vec<u8>,
    /// Where the record being filled starts in `out`.
    open: Option<usize>,
}

impl Sealer {
    /// Seals `bytes` into records and writes them out once enough wait; the
    /// last record stays open for more until [`Sealer::flush`].
    pub fn push(&mut self, socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let start = *self.open.get_or_insert_with(|| {
                let start = self.out.len();
                self.out.extend_from_slice(&[0; HEADER_LEN]);
                start
            });
            let room = MAX_PLAIN - (self.out.len() - start - HEADER_LEN);
            let take = room.min(bytes.len());
            self.out.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if take == room {
                self.seal_open()?;
                if self.out.len() >= FLUSH_AT {
                    self.write_out(socket)?;
                }
            }
        }
        Ok(())
    }

    /// Seals the open record and writes out everything sealed.
    pub fn flush(&mut self, socket: &TcpStream) -> io::Result<()> {
        self.seal_open()?;
        self.write_out(socket)
    }

    fn seal_open(&mut self) -> io::Result<()> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        self.out.push(APPLICATION_DATA);
        let header = record_header(self.out.len() - start - HEADER_LEN + TAG_LEN);
        self.out[start..start + HEADER_LEN].copy_from_slice(&header);
        let nonce = self.cipher.next_nonce()?;
        let tag = self
            .cipher
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut self.out[start + HEADER_LEN..])
            .map_err(|_| io::Error::other("cannot seal a TLS record"))?;
        self.out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    fn write_out(&mut self, mut socket: &TcpStream) -> io::Result<()> {
        let written = socket.write_all(&self.out);
        self.out.clear();
        written.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                "the target took no data within the stream timeout",
            ),
            _ => e,
        })
    }
}

/// What a stream receives, opened record by record. Reads the socket a
/// buffer at a time; a read that times out or would block keeps what it has,
/// so that the next read goes on from there.
pub struct Opener {
    cipher: Cipher,
    buf: Vec<u8>,
    /// Received bytes not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened plaintext not yet read.
    plain: std::ops::Range<usize>,
}

impl Opener {
    /// Nothing received is waiting here unread: the socket has whatever
    /// comes next.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.start == self.end
    }

    /// Reads into `dst` what is opened, opening the next record first when
    /// nothing is. Ok(0) at the peer's close_notify or the end of the stream.
    pub fn read(&mut self, socket: &mut impl Read, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        if self.plain.is_empty() && !self.open_next(socket)? {
            return Ok(0);
        }
        let n = self.plain.len().min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }

    /// Opens the next record with data; false at the end of the stream.
    fn open_next(&mut self, socket: &mut impl Read) -> io::Result<bool> {
        loop {
            if let Some(len) = self.whole_record()? {
                if let Some(plain) = self.open_record(len)? {
                    if plain.is_empty() {
                        continue;
                    }
                    self.plain = plain;
                    return Ok(true);
                }
                return Ok(false);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.buf.len() - self.start < HEADER_LEN + MAX_CIPHER {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match socket.read(&mut self.buf[self.end..]) {
                Ok(0) if self.start == self.end => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The length after the header of the record at `start`, once it is
    /// all here.
    fn whole_record(&self) -> io::Result<Option<usize>> {
        let have = &self.buf[self.start..self.end];
        if have.len() < HEADER_LEN {
            return Ok(None);
        }
        if have[0] != APPLICATION_DATA || have[1] != 3 || have[2] != 3 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a TLS 1.3 record"));
        }
        let len = usize::from(u16::from_be_bytes([have[3], have[4]]));
        if !(TAG_LEN + 1..=MAX_CIPHER).contains(&len) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad TLS record length"));
        }
        Ok((have.len() >= HEADER_LEN + len).then_some(len))
    }

    /// Opens the record at `start` in place: its data, or None for the
    /// peer's close_notify.
    fn open_record(&mut self, len: usize) -> io::Result<Option<std::ops::Range<usize>>> {
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("a whole header");
        let body = self.start + HEADER_LEN;
        self.start = body + len;
        let nonce = self.cipher.next_nonce()?;
        let opened = self
            .cipher
            .key
            .open_in_place(nonce, Aad::from(header), &mut self.buf[body..body + len])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a TLS record failed its authentication"))?;
        // The inner content type is the last byte that is not padding.
        let Some(kind_at) = opened.iter().rposition(|&b| b != 0) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS record without content type",
            ));
        };
        let kind = opened[kind_at];
        match kind {
            APPLICATION_DATA => Ok(Some(body..body + kind_at)),
            ALERT if kind_at == 2 && opened[1] == 0 => Ok(None),
            ALERT => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the peer sent TLS alert {}", opened.get(1).copied().unwrap_or(0)),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected TLS record of type {kind}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::path::Path;

    fn identities(dir: &Path) -> (Identity, Identity, Identity) {
        pki::init_ca(&dir.join("ca"), "test").unwrap();
        let issue = |role, name| pki::issue(&dir.join("ca"), role, name, &[], &dir.join("certs")).unwrap();
        (
            issue(Role::Host, "hostA"),
            issue(Role::Host, "hostB"),
            issue(Role::Operator, "alice"),
        )
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // A handshake that stalls fails the test instead of hanging it.
        for socket in [&client, &server] {
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
        }
        (client, server)
    }

    /// The receiver's side as the gate drives it, here on a blocking socket.
    fn accept(side: &ServerSide, socket: &mut TcpStream) -> Result<(Session, Result<(), String>), String> {
        let mut accepting = Accepting::new(side).map_err(|e| e.to_string())?;
        while !accepting.advance(socket).map_err(|e| e.to_string())? {}
        accepting.finish().map_err(|e| e.to_string())
    }

    fn sides(source: &Identity, target: &Identity) -> (ClientSide, ServerSide) {
        let client = TlsPeer {
            identity: source.clone(),
            peer: "hostB".into(),
        };
        let server = TlsPeer {
            identity: target.clone(),
            peer: "hostA".into(),
        };
        (client.client().unwrap(), server.server().unwrap())
    }

    #[test]
    fn both_halves_carry_data_and_the_binding_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _) = identities(dir.path());
        let (client, server) = sides(&a, &b);
        let (mut c, mut s) = pair();
        let serving = std::thread::spawn(move || {
            let (mut session, verdict) = accept(&server, &mut s).unwrap();
            verdict.unwrap();
            let mut got = vec![0u8; 100_000];
            let mut have = 0;
            while have < got.len() {
                have += session.opener.read(&mut s, &mut got[have..]).unwrap();
            }
            session.sealer.push(&s, &got).unwrap();
            session.sealer.flush(&s).unwrap();
            (session.binding.prove(&Token([5; TOKEN_LEN])), session.suite)
        });
        let mut session = connect(&client, &mut c).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        // Pieces of every size, as frames and pages come.
        for chunk in data.chunks(7000) {
            session.sealer.push(&c, chunk).unwrap();
        }
        session.sealer.flush(&c).unwrap();
        let mut echo = vec![0u8; data.len()];
        let mut have = 0;
        while have < echo.len() {
            have += session.opener.read(&mut c, &mut echo[have..]).unwrap();
        }
        assert_eq!(echo, data);
        assert!(session.opener.is_empty());
        let (proof, suite) = serving.join().unwrap();
        assert_eq!(suite, session.suite);
        assert_eq!(suite, "TLS13_AES_128_GCM_SHA256", "the cheapest suite first");
        let token = Token([5; TOKEN_LEN]);
        assert!(
            session.binding.prove(&token).matches(&proof),
            "both sides bind the token alike"
        );
        assert!(!proof.matches(&token), "the proof is not the token");
        // Nothing readable is left; the peer's end is the end.
        drop(c);
    }

    #[test]
    fn records_are_tls13_that_rustls_itself_opens() {
        // Our sealer against rustls's own record layer: a client that keeps
        // its rustls connection reads what the extracted half seals.
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _) = identities(dir.path());
        let (client, server) = sides(&a, &b);
        let (c, mut s) = pair();
        let serving = std::thread::spawn(move || {
            let (mut session, _) = accept(&server, &mut s).unwrap();
            session.sealer.push(&s, b"sealed here, opened by rustls").unwrap();
            session.sealer.flush(&s).unwrap();
            let mut got = [0u8; 24];
            let mut have = 0;
            while have < got.len() {
                have += session.opener.read(&mut s, &mut got[have..]).unwrap();
            }
            got
        });
        let name = ServerName::try_from("hostB").unwrap();
        let conn = ClientConnection::new(client.config.clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, c);
        tls.write_all(b"sealed by rustls, opened").unwrap();
        tls.flush().unwrap();
        let mut got = [0u8; 29];
        tls.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"sealed here, opened by rustls");
        assert_eq!(&serving.join().unwrap(), b"sealed by rustls, opened");
    }

    #[test]
    fn a_handshake_record_larger_than_rustls_reads_at_once_gets_through() {
        // A certificate of ~12 KiB: its handshake record is fed in pieces.
        let dir = tempfile::tempdir().unwrap();
        let (a, _, _) = identities(dir.path());
        let sans: Vec<String> = (0..400).map(|i| format!("alias-{i}.hostb.example")).collect();
        let big = pki::issue(
            &dir.path().join("ca"),
            Role::Host,
            "hostB",
            &sans,
            &dir.path().join("big"),
        )
        .unwrap();
        assert!(std::fs::metadata(&big.cert).unwrap().len() > 12_000);
        let (client, server) = sides(&a, &big);
        let (mut c, mut s) = pair();
        let serving = std::thread::spawn(move || accept(&server, &mut s).map(|(_, verdict)| verdict));
        connect(&client, &mut c).unwrap();
        serving.join().unwrap().unwrap().unwrap();
    }

    #[test]
    fn a_changed_byte_fails_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _) = identities(dir.path());
        let (client, server) = sides(&a, &b);
        let (mut c, mut s) = pair();
        let serving = std::thread::spawn(move || accept(&server, &mut s).map(|(session, _)| (session, s)));
        let mut sender = connect(&client, &mut c).unwrap();
        let (mut receiver, _s) = serving.join().unwrap().unwrap();
        // Seal into memory, flip one ciphertext bit, deliver.
        sender.sealer.push(&c, b"guest memory").unwrap();
        sender.sealer.seal_open().unwrap();
        let mut wire = std::mem::take(&mut sender.sealer.out);
        wire[HEADER_LEN + 3] ^= 1;
        let err = receiver.opener.read(&mut &wire[..], &mut [0u8; 64]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn each_side_refuses_a_host_it_does_not_expect() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, alice) = identities(dir.path());
        // The sender expects hostB, but hostA answers.
        let (client, _) = sides(&a, &b);
        let wrong_server = TlsPeer {
            identity: a.clone(),
            peer: "hostA".into(),
        }
        .server()
        .unwrap();
        let (mut c, mut s) = pair();
        let serving = std::thread::spawn(move || accept(&wrong_server, &mut s).map(|_| ()));
        let refused = connect(&client, &mut c).unwrap_err();
        assert!(matches!(refused, TlsError::Handshake(_)), "{refused}");
        drop(c);
        let _ = serving.join();

        // The receiver expects hostA; an operator's certificate is refused by name.
        let operator = TlsPeer {
            identity: alice,
            peer: "hostB".into(),
        }
        .client()
        .unwrap();
        let (_, server) = sides(&a, &b);
        let (mut c, mut s) = pair();
        let serving = std::thread::spawn(move || accept(&server, &mut s));
        let sent = connect(&operator, &mut c);
        assert!(sent.is_ok(), "the client's part ends before the server checks it");
        let (_, verdict) = serving.join().unwrap().unwrap();
        assert_eq!(
            verdict.unwrap_err(),
            "the source presented the certificate of operator alice, not host hostA's"
        );
    }

    /// An opener with a fixed key, for input that was never sealed with it.
    fn stray_opener() -> Opener {
        Opener {
            cipher: Cipher {
                key: LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &[7; 16]).unwrap()),
                iv: [0; aead::NONCE_LEN],
                seq: 0,
            },
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            plain: 0..0,
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever arrives, opening it ends in an error or the end of
            /// the stream, never a panic and never plaintext.
            #[test]
            fn opening_what_was_not_sealed_never_panics_nor_yields_data(
                header in any::<bool>(),
                len in 0u16..=(MAX_CIPHER as u16 + 8),
                body in proptest::collection::vec(any::<u8>(), 0..20_000),
            ) {
                let mut input = Vec::new();
                if header {
                    // A well-formed header in front of garbage.
                    input.extend_from_slice(&[APPLICATION_DATA, 3, 3]);
                    input.extend_from_slice(&len.to_be_bytes());
                }
                input.extend_from_slice(&body);
                let mut opener = stray_opener();
                let mut out = [0u8; 4096];
                let mut wire = &input[..];
                if let Ok(n) = opener.read(&mut wire, &mut out) {
                    prop_assert_eq!(n, 0, "no plaintext from bytes nobody sealed");
                }
            }
        }
    }
}
