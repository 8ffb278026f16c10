//! The echo services on port 7 (RFC 862): UDP answers each datagram with
//! itself; TCP sends back every byte in order, on up to `TCP_SOCKETS`
//! connections at once, each socket listening again once its connection is
//! over. The peer closes first: its FIN is answered once all it sent has
//! been echoed.

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{tcp, udp};

const PORT: u16 = 7;
const TCP_SOCKETS: usize = 4;
const TCP_BUF: usize = 16 << 10;
const UDP_PACKETS: usize = 8;
const UDP_BUF: usize = 8 << 10;
/// The largest datagram a 1500-byte IP packet carries (no fragmentation).
const UDP_MAX_PAYLOAD: usize = 1500 - 20 - 8;
/// Bytes moved from a TCP socket's receive buffer to its send buffer at once.
const TCP_CHUNK: usize = 2048;

/// The sockets' buffers: all zero, so a static of them stays out of the
/// image file (the slots, which are not, are kept apart in [`EchoSlots`]).
pub struct EchoMem {
    tcp_rx: [[u8; TCP_BUF]; TCP_SOCKETS],
    tcp_tx: [[u8; TCP_BUF]; TCP_SOCKETS],
    udp_rx: [u8; UDP_BUF],
    udp_tx: [u8; UDP_BUF],
}

impl EchoMem {
    pub const fn new() -> Self {
        EchoMem {
            tcp_rx: [[0; TCP_BUF]; TCP_SOCKETS],
            tcp_tx: [[0; TCP_BUF]; TCP_SOCKETS],
            udp_rx: [0; UDP_BUF],
            udp_tx: [0; UDP_BUF],
        }
    }
}

/// The socket set's slots and the UDP socket's datagram records.
pub struct EchoSlots {
    sockets: [SocketStorage<'static>; TCP_SOCKETS + 1],
    udp_rx_meta: [udp::PacketMetadata; UDP_PACKETS],
    udp_tx_meta: [udp::PacketMetadata; UDP_PACKETS],
}

impl EchoSlots {
    pub const fn new() -> Self {
        EchoSlots {
            sockets: [SocketStorage::EMPTY; TCP_SOCKETS + 1],
            udp_rx_meta: [udp::PacketMetadata::EMPTY; UDP_PACKETS],
            udp_tx_meta: [udp::PacketMetadata::EMPTY; UDP_PACKETS],
        }
    }
}

/// The echo sockets in their set.
#[derive(Debug)]
pub struct Echo {
    tcp: [SocketHandle; TCP_SOCKETS],
    udp: SocketHandle,
}

impl Echo {
    /// Opens the services over `mem` and `slots`; the returned set holds their sockets.
    pub fn open(mem: &'static mut EchoMem, slots: &'static mut EchoSlots) -> (SocketSet<'static>, Echo) {
        let EchoMem {
            tcp_rx,
            tcp_tx,
            udp_rx,
            udp_tx,
        } = mem;
        let EchoSlots {
            sockets,
            udp_rx_meta,
            udp_tx_meta,
        } = slots;
        let mut set = SocketSet::new(&mut sockets[..]);
        let mut buffers = tcp_rx.iter_mut().zip(tcp_tx.iter_mut());
        let tcp = core::array::from_fn(|_| {
            let (rx, tx) = buffers.next().expect("one buffer pair per socket");
            let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(&mut rx[..]), tcp::SocketBuffer::new(&mut tx[..]));
            // An echo answers what it got at once, however small.
            socket.set_nagle_enabled(false);
            set.add(socket)
        });
        let mut udp = udp::Socket::new(
            udp::PacketBuffer::new(&mut udp_rx_meta[..], &mut udp_rx[..]),
            udp::PacketBuffer::new(&mut udp_tx_meta[..], &mut udp_tx[..]),
        );
        udp.bind(PORT).expect("port 7 is a valid port");
        let udp = set.add(udp);
        let echo = Echo { tcp, udp };
        echo.serve(&mut set);
        (set, echo)
    }

    /// Echoes what arrived since the last call, and listens again on every
    /// TCP socket whose connection is over.
    pub fn serve(&self, sockets: &mut SocketSet<'_>) {
        for &handle in &self.tcp {
            serve_tcp(sockets.get_mut::<tcp::Socket>(handle));
        }
        serve_udp(sockets.get_mut::<udp::Socket>(self.udp));
    }
}

fn serve_tcp(socket: &mut tcp::Socket<'_>) {
    if !socket.is_open() {
        socket.listen(PORT).expect("a closed socket listens on port 7");
        return;
    }
    let mut chunk = [0u8; TCP_CHUNK];
    while socket.can_recv() && socket.can_send() {
        let room = socket.send_capacity() - socket.send_queue();
        let Ok(n) = socket.recv_slice(&mut chunk[..room.min(TCP_CHUNK)]) else {
            break;
        };
        // Never more than the send buffer has room for: all of it is queued.
        if n == 0 || socket.send_slice(&chunk[..n]) != Ok(n) {
            break;
        }
    }
    if socket.state() == tcp::State::CloseWait && socket.recv_queue() == 0 {
        // The FIN goes out behind the last echoed byte.
        socket.close();
    }
}

fn serve_udp(socket: &mut udp::Socket<'_>) {
    let mut datagram = [0u8; UDP_MAX_PAYLOAD];
    loop {
        match socket.recv_slice(&mut datagram) {
            // A full send buffer drops the answer, as a network may.
            Ok((n, meta)) => _ = socket.send_slice(&datagram[..n], meta),
            Err(udp::RecvError::Truncated) => {}
            Err(udp::RecvError::Exhausted) => break,
        }
    }
}
