//! TCP for migration streams: addresses, socket options, and moving pages
//! between guest memory and a socket without intermediate copies.

use nix::sys::socket::{setsockopt, sockopt};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    #[error("no secure stream to {url}")]
    Tls {
        url: String,
        #[source]
        source: Box<super::tls::TlsError>,
    },
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
    let _ = setsockopt(stream, sockopt::SndBuf, &(4 << 20));
    let _ = setsockopt(stream, sockopt::RcvBuf, &(4 << 20));
    // A peer that vanishes without a FIN must not hang the handoff forever.
    let _ = setsockopt(stream, sockopt::TcpUserTimeout, &30_000);
}

/// A stream on which nothing moves for `silence` fails: a write that makes no
/// progress returns an error after it (SO_SNDTIMEO), and TCP gives up on data
/// the peer does not acknowledge after as long (TCP_USER_TIMEOUT). Reads set
/// their own timeouts.
pub fn limit_silence(stream: &TcpStream, silence: Duration) {
    let _ = stream.set_write_timeout(Some(silence));
    let millis = u32::try_from(silence.as_millis()).unwrap_or(u32::MAX);
    let _ = setsockopt(stream, sockopt::TcpUserTimeout, &millis);
}

pub fn connect(url: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    connect_from(url, None, timeout)
}

/// Connects to `url`, from the address `local` when given (a host's own,
/// so that its traffic leaves on the network that address is on).
pub fn connect_from(
    url: &str,
    local: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let addrs = parse_url(url)?;
    let mut last = None;
    for addr in &addrs {
        match crate::net::connect(addr, local, timeout) {
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

/// Writes all `pieces` with writev(2), resuming after partial writes. A
/// write that makes no progress within the socket's write timeout fails with
/// `TimedOut`.
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
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the target took no data within the stream timeout",
                    ));
                }
                _ => return Err(err),
            }
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

/// Has the kernel timestamp the data arriving on `stream`, for
/// [`next_arrival`]. False when it will not. The kernel turns timestamping on
/// for the host a moment later (deferred work), so call it well before the
/// data that matters: when the connection is made.
pub fn timestamp_arrivals(stream: &TcpStream) -> bool {
    setsockopt(stream, sockopt::ReceiveTimestampns, &true).is_ok()
}

/// When the next bytes to read on `stream` reached this host: the kernel's
/// receive timestamp of that data, peeked so that it stays for the reader.
/// Waits like a read (the socket's read timeout applies). `None` when the
/// read fails or the data came before [`timestamp_arrivals`]; the reader
/// then sees why.
///
/// The handoff ends when the target's `Running` arrives, not when the
/// source's thread gets a CPU to read it: on a host whose cores the VM's
/// vCPUs have just taken, that can be a scheduler tick later.
pub fn next_arrival(stream: &TcpStream) -> Option<SystemTime> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use nix::sys::time::TimeSpec;
    let mut byte = [0u8; 1];
    let mut control = nix::cmsg_space!(TimeSpec);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::MSG_PEEK) {
            Ok(received) if received.bytes > 0 => {
                return received.cmsgs().ok()?.find_map(|message| match message {
                    ControlMessageOwned::ScmTimestampns(ts) => {
                        Some(UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
                    }
                    _ => None,
                });
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return None,
        }
    }
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
    fn the_arrival_of_data_is_timestamped_and_the_data_stays() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        assert!(timestamp_arrivals(&receiver));
        // The kernel enables timestamps a moment after they are asked for:
        // wait for the first timestamped byte, reading the ones before it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let before = SystemTime::now();
            io::Write::write_all(&mut sender, b"hi").unwrap();
            let arrived = next_arrival(&receiver);
            let after = SystemTime::now();
            let mut data = [0u8; 2];
            io::Read::read_exact(&mut &receiver, &mut data).unwrap();
            assert_eq!(&data, b"hi", "peeking left the data for the reader");
            if let Some(arrived) = arrived {
                assert!(
                    arrived + Duration::from_millis(1) >= before && arrived <= after,
                    "{arrived:?}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no receive timestamp within 5 s");
        }
        drop(sender);
        assert_eq!(next_arrival(&receiver), None, "no timestamp at the end of the stream");
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("tcp:127.0.0.1:4444").unwrap()[0].port(), 4444);
        assert!(parse_url("tcp:[::1]:80").unwrap()[0].is_ipv6());
        assert!(matches!(parse_url("udp:1.2.3.4:5"), Err(TransportError::BadUrl(_))));
        assert!(matches!(parse_url("tcp:localhost"), Err(TransportError::BadUrl(_))));
    }
}
