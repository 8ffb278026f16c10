//! TCP for migration streams: addresses, socket options, and moving pages
//! between guest memory and a socket without intermediate copies.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("invalid migration address {0:?}: expected tcp:HOST:PORT")]
    BadUrl(String),
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] io::Error),
    #[error("cannot connect to {0}")]
    Connect(String, #[source] io::Error),
    #[error("cannot listen on {0}")]
    Listen(String, #[source] io::Error),
}

/// Parses `tcp:HOST:PORT` (HOST may be `[v6]`).
pub fn parse_url(url: &str) -> Result<Vec<SocketAddr>, TransportError> {
    let rest = url
        .strip_prefix("tcp:")
        .ok_or_else(|| TransportError::BadUrl(url.to_string()))?;
    if !rest.contains(':') {
        return Err(TransportError::BadUrl(url.to_string()));
    }
    let addrs: Vec<SocketAddr> = rest
        .to_socket_addrs()
        .map_err(|e| TransportError::Resolve(rest.to_string(), e))?
        .collect();
    if addrs.is_empty() {
        return Err(TransportError::BadUrl(url.to_string()));
    }
    Ok(addrs)
}

/// Low latency matters more than coalescing: every handoff message waits on
/// the previous one, so Nagle's algorithm would add its delay to the downtime.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    for (option, value) in [(libc::SO_SNDBUF, 4 << 20), (libc::SO_RCVBUF, 4 << 20)] {
        // SAFETY: setsockopt on a socket we own, with a valid int-sized value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    // A peer that vanishes without a FIN must not hang the handoff forever.
    let user_timeout: libc::c_int = 30_000;
    // SAFETY: as above.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&raw const user_timeout).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn connect(url: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let addrs = parse_url(url)?;
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                tune(&stream);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(TransportError::Connect(
        url.to_string(),
        last.unwrap_or_else(|| io::Error::other("no address")),
    ))
}

pub fn listen(url: &str) -> Result<TcpListener, TransportError> {
    let addrs = parse_url(url)?;
    TcpListener::bind(&addrs[..]).map_err(|e| TransportError::Listen(url.to_string(), e))
}

/// A piece of a frame: bytes we own, or guest memory at a host address.
#[derive(Debug, Clone, Copy)]
pub struct Piece {
    pub ptr: *const u8,
    pub len: usize,
}

/// Writes all `pieces` with writev(2), resuming after partial writes.
///
/// # Safety
/// Every piece must point at `len` readable bytes that stay mapped for the call
/// (guest memory may change under it; the bytes sent are whatever it held).
pub unsafe fn write_pieces(stream: &TcpStream, pieces: &[Piece]) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = pieces
        .iter()
        .filter(|p| p.len > 0)
        .map(|p| libc::iovec {
            iov_base: p.ptr as *mut libc::c_void,
            iov_len: p.len,
        })
        .collect();
    let mut start = 0;
    while start < iov.len() {
        let count = (iov.len() - start).min(1024);
        // SAFETY: the iovecs describe readable memory per the caller's contract.
        let written = unsafe { libc::writev(stream.as_raw_fd(), iov[start..].as_ptr(), count as libc::c_int) };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut left = written as usize;
        while left > 0 && start < iov.len() {
            if left >= iov[start].iov_len {
                left -= iov[start].iov_len;
                start += 1;
            } else {
                // SAFETY: advancing within the same buffer by fewer than its length.
                iov[start].iov_base = unsafe { iov[start].iov_base.cast::<u8>().add(left) }.cast();
                iov[start].iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes from the socket into `dst`.
///
/// # Safety
/// `dst` must point at `len` writable bytes that nothing else accesses during
/// the call (the target's guest memory before it runs).
pub unsafe fn read_into(stream: &TcpStream, dst: *mut u8, len: usize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        // SAFETY: the destination range is writable per the caller's contract.
        let read = unsafe { libc::read(stream.as_raw_fd(), dst.wrapping_add(done).cast(), len - done) };
        if read < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += read as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("tcp:127.0.0.1:4444").unwrap()[0].port(), 4444);
        assert!(parse_url("tcp:[::1]:80").unwrap()[0].is_ipv6());
        assert!(matches!(parse_url("udp:1.2.3.4:5"), Err(TransportError::BadUrl(_))));
        assert!(matches!(parse_url("tcp:localhost"), Err(TransportError::BadUrl(_))));
    }
}
