//! TCP connections that leave from a chosen address: a host talks to the
//! others from its own address, so that its traffic goes out on the network
//! that address is on (and a multi-homed host's migration and management
//! traffic stay apart).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Connects to `addr` within `timeout`, from `local` when given.
pub fn connect(addr: &SocketAddr, local: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect_timeout(addr, timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&(*addr).into(), timeout)?;
    Ok(socket.into())
}
