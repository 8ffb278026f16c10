//! A packet capture on this namespace's loopback, as tcpdump makes one (an
//! AF_PACKET socket; root), with each TCP connection's bytes put back in
//! order: what anyone on the migration link could read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

const ETH_P_ALL: u16 = 0x0003;
const ETH_HEADER: usize = 14;

/// A capture running on `lo`.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Segment>, u32)>,
}

struct Segment {
    flow: (u16, u16),
    seq: u32,
    syn: bool,
    payload: Vec<u8>,
}

/// The bytes of every TCP connection seen, by (source port, destination
/// port), in sequence order.
pub struct Flows {
    pub flows: HashMap<(u16, u16), Vec<u8>>,
    /// Bytes missing between captured ones: a clean capture has none.
    pub missing: u64,
    /// Packets the kernel dropped from the capture (its buffer was full).
    pub dropped: u32,
}

impl Capture {
    /// Starts capturing every packet on `lo`.
    pub fn start() -> Self {
        use nix::sys::socket::{self, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, sockopt};
        use std::os::fd::AsRawFd;
        let socket = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .unwrap_or_else(|e| panic!("AF_PACKET socket: {e} (root needed)"));
        let index = nix::net::if_::if_nametoindex("lo").expect("no lo");
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: binds our socket to a valid sockaddr_ll of the size given
        // (nix builds a link address only from a raw one).
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(bound, 0, "bind to lo: {}", std::io::Error::last_os_error());
        socket::setsockopt(&socket, sockopt::RcvBufForce, &(512 << 20)).expect("SO_RCVBUFFORCE");
        let timeout = nix::sys::time::TimeVal::new(0, 100_000);
        socket::setsockopt(&socket, sockopt::ReceiveTimeout, &timeout).expect("SO_RCVTIMEO");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut segments = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            loop {
                // Once told to stop, what is queued still counts: read
                // until nothing comes for a read timeout.
                let stop = stopping.load(Ordering::SeqCst);
                let (got, from) = match socket::recvfrom::<LinkAddr>(socket.as_raw_fd(), &mut buf) {
                    Ok((got, from)) if got > 0 => (got, from),
                    _ if stop => break,
                    _ => continue,
                };
                // Loopback shows each packet leaving and arriving: keep one.
                if from.is_some_and(|from| from.pkttype() == libc::PACKET_OUTGOING) {
                    continue;
                }
                if let Some(segment) = parse(&buf[..got]) {
                    segments.push(segment);
                }
            }
            // SAFETY: an all-zero tpacket_stats is valid for the kernel to fill.
            let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: getsockopt (PACKET_STATISTICS, which nix lacks) on our
            // socket into a buffer of the size given.
            unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    (&raw mut stats).cast(),
                    &raw mut len,
                )
            };
            drop(socket);
            (segments, stats.tp_drops)
        });
        Self { stop, thread }
    }

    /// Stops the capture and puts each connection's bytes in order.
    pub fn stop(self) -> Flows {
        self.stop.store(true, Ordering::SeqCst);
        let (segments, dropped) = self.thread.join().expect("the capture thread");
        // Each connection's segments by offset from its first byte (the
        // capture may see them out of order, and retransmitted).
        let mut by_flow: HashMap<(u16, u16), (Option<u32>, Vec<Segment>)> = HashMap::new();
        for segment in segments {
            let entry = by_flow.entry(segment.flow).or_default();
            if segment.syn {
                entry.0 = Some(segment.seq.wrapping_add(1));
            } else if !segment.payload.is_empty() {
                entry.1.push(segment);
            }
        }
        let mut flows = HashMap::new();
        let mut missing = 0u64;
        for (flow, (start, mut segments)) in by_flow {
            let Some(base) = start.or_else(|| segments.iter().map(|s| s.seq).min()) else {
                continue;
            };
            segments.sort_by_key(|s| s.seq.wrapping_sub(base));
            let mut bytes: Vec<u8> = Vec::new();
            for segment in segments {
                let offset = segment.seq.wrapping_sub(base) as usize;
                if offset > bytes.len() {
                    missing += (offset - bytes.len()) as u64;
                    bytes.resize(offset, 0);
                }
                let skip = bytes.len() - offset;
                if skip < segment.payload.len() {
                    bytes.extend_from_slice(&segment.payload[skip..]);
                }
            }
            flows.insert(flow, bytes);
        }
        Flows {
            flows,
            missing,
            dropped,
        }
    }
}

/// An IPv4 TCP segment of an Ethernet frame (what lo carries).
fn parse(frame: &[u8]) -> Option<Segment> {
    let ip = frame.get(ETH_HEADER..)?;
    if u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 || ip.len() < 20 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = ip.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let offset = usize::from(tcp[12] >> 4) * 4;
    Some(Segment {
        flow: (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        ),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        syn: tcp[13] & 0x02 != 0,
        payload: tcp.get(offset..)?.to_vec(),
    })
}

impl Flows {
    /// The connections to `port`, each as the bytes its client sent.
    pub fn to_port(&self, port: u16) -> Vec<&[u8]> {
        self.flows
            .iter()
            .filter(|((_, dst), _)| *dst == port)
            .map(|(_, bytes)| bytes.as_slice())
            .collect()
    }

    /// Whether any connection's bytes hold `needle`.
    pub fn contain(&self, needle: &[u8]) -> bool {
        self.flows
            .values()
            .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    }

    pub fn bytes(&self) -> usize {
        self.flows.values().map(Vec::len).sum()
    }
}
