//! A migration stream as the engine uses it: a TCP connection, sealed with
//! TLS 1.3 ([`super::tls`]) or, where the agents were told the migration
//! network is trusted, plain. Its two halves are separate values, so that a
//! thread can send on a stream while another receives on it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, SystemTime};

use super::protocol::Token;
use super::tls::{self, Binding, ClientSide, Opener, Sealer, Session};
use super::transport::{self, Piece, TransportError};

/// Both halves of a stream.
#[derive(Debug)]
pub struct Link {
    pub reader: LinkReader,
    pub writer: LinkWriter,
    binding: Option<Binding>,
    suite: Option<&'static str>,
}

/// What a stream receives.
pub struct LinkReader {
    socket: TcpStream,
    opener: Option<Opener>,
}

/// What a stream sends.
pub struct LinkWriter {
    socket: TcpStream,
    sealer: Option<Sealer>,
}

impl std::fmt::Debug for LinkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReader")
            .field("socket", &self.socket)
            .field("sealed", &self.opener.is_some())
            .finish()
    }
}

impl std::fmt::Debug for LinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWriter")
            .field("socket", &self.socket)
            .field("sealed", &self.sealer.is_some())
            .finish()
    }
}

impl Link {
    /// A plaintext stream.
    pub fn plain(socket: TcpStream) -> io::Result<Self> {
        Ok(Self {
            writer: LinkWriter {
                socket: socket.try_clone()?,
                sealer: None,
            },
            reader: LinkReader { socket, opener: None },
            binding: None,
            suite: None,
        })
    }

    /// A stream sealed with `session`, made on `socket`.
    pub fn sealed(socket: TcpStream, session: Session) -> io::Result<Self> {
        Ok(Self {
            writer: LinkWriter {
                socket: socket.try_clone()?,
                sealer: Some(session.sealer),
            },
            reader: LinkReader {
                socket,
                opener: Some(session.opener),
            },
            binding: Some(session.binding),
            suite: Some(session.suite),
        })
    }

    /// Connects to `url` (from `local`, when given) and, with `tls`, makes
    /// the handshake within `timeout`: the target must be the host `tls`
    /// names.
    pub fn connect(
        url: &str,
        local: Option<IpAddr>,
        timeout: Duration,
        tls: Option<&ClientSide>,
    ) -> Result<Self, TransportError> {
        let mut socket = transport::connect_from(url, local, timeout)?;
        let io = |source| TransportError::Connect(url.to_string(), source);
        let Some(tls) = tls else {
            return Link::plain(socket).map_err(io);
        };
        socket.set_read_timeout(Some(timeout)).map_err(io)?;
        socket.set_write_timeout(Some(timeout)).map_err(io)?;
        let session = tls::connect(tls, &mut socket).map_err(|source| TransportError::Tls {
            url: url.to_string(),
            source: Box::new(source),
        })?;
        socket.set_read_timeout(None).map_err(io)?;
        socket.set_write_timeout(None).map_err(io)?;
        Link::sealed(socket, session).map_err(io)
    }

    pub fn socket(&self) -> &TcpStream {
        &self.reader.socket
    }

    /// What to present on this stream for `token`: bound to the session when
    /// it is sealed, the token itself when plain.
    pub fn present(&self, token: Token) -> Token {
        self.binding.map_or(token, |binding| binding.prove(&token))
    }

    /// The TLS suite, when sealed.
    pub fn suite(&self) -> Option<&'static str> {
        self.suite
    }

    pub fn split(self) -> (LinkReader, LinkWriter) {
        (self.reader, self.writer)
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.socket.set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.socket.set_write_timeout(timeout)
    }

    pub fn shutdown(&self) {
        let _ = self.reader.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl LinkReader {
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// When the next bytes to read reached this host
    /// ([`transport::next_arrival`]); None when they are here already,
    /// received with earlier ones.
    pub fn next_arrival(&self) -> Option<SystemTime> {
        match &self.opener {
            Some(opener) if !opener.is_empty() => None,
            _ => transport::next_arrival(&self.socket),
        }
    }

    /// Reads exactly `len` bytes into `dst`.
    ///
    /// # Safety
    /// As [`transport::read_into`]: `dst` must point at `len` writable bytes
    /// that nothing else accesses during the call.
    pub unsafe fn read_into(&mut self, dst: *mut u8, len: usize) -> io::Result<()> {
        let Some(opener) = &mut self.opener else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { transport::read_into(&self.socket, dst, len) };
        };
        // SAFETY: the caller's contract: `len` writable bytes at `dst`,
        // accessed by nothing else meanwhile.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        let mut done = 0;
        while done < len {
            match opener.read(&mut &self.socket, &mut dst[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for LinkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.opener {
            Some(opener) => opener.read(&mut &self.socket, buf),
            None => (&self.socket).read(buf),
        }
    }
}

impl LinkWriter {
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Sends all `pieces`, then flushes.
    ///
    /// # Safety
    /// As [`transport::write_pieces`]: every piece must point at `len`
    /// readable bytes that stay mapped for the call.
    pub unsafe fn write_pieces(&mut self, pieces: &[Piece]) -> io::Result<()> {
        let Some(sealer) = &mut self.sealer else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { transport::write_pieces(&self.socket, pieces) };
        };
        for piece in pieces.iter().filter(|p| p.len > 0) {
            // SAFETY: the caller's contract: `len` readable bytes at `ptr`,
            // mapped for the call (guest memory may change meanwhile; what
            // is sealed is what it held when copied).
            let bytes = unsafe { std::slice::from_raw_parts(piece.ptr, piece.len) };
            sealer.push(&self.socket, bytes)?;
        }
        sealer.flush(&self.socket)
    }
}

/// A sealed write is whole: the bytes are taken into records, which go out
/// at the latest on `flush` (as `protocol::write_frame` does after each
/// frame).
impl Write for LinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sealer {
            Some(sealer) => sealer.push(&self.socket, buf).map(|()| buf.len()),
            None => (&self.socket).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sealer {
            Some(sealer) => sealer.flush(&self.socket),
            None => Ok(()),
        }
    }
}
