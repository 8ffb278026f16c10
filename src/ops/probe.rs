//! Watching a VM's address while it moves: ICMP echo requests from the
//! operator's side every few milliseconds, the way an operator would run
//! `ping -i 0.01` beside the migration, counted into lost probes and the
//! longest gap between two answers ([`vmig_backend::api::ProbeReport`]).
//!
//! A raw ICMP socket (root, or CAP_NET_RAW) is tried first, then the
//! kernel's unprivileged "ping" socket (`net.ipv4.ping_group_range`).
//! IPv4 only: the guests on the lab's network are.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use vmig_backend::api::ProbeReport;

/// The shortest interval between probes.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// How long, after the last probe, answers still count.
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("--ping: {0} is not an IPv4 address (only IPv4 guests are probed)")]
    NotIpv4(IpAddr),
    #[error("--ping: cannot open an ICMP socket (needs root, CAP_NET_RAW or net.ipv4.ping_group_range)")]
    Socket(#[source] io::Error),
    #[error("--ping: cannot start the prober")]
    Thread(#[source] io::Error),
}

/// Probes that run until [`Prober::finish`].
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<Instant>>>,
    receiver: Option<JoinHandle<BTreeMap<u16, Instant>>>,
    target: Ipv4Addr,
    interval: Duration,
}

impl Prober {
    /// Starts probing `target` every `interval`.
    pub fn start(target: IpAddr, interval: Duration) -> Result<Prober, ProbeError> {
        let IpAddr::V4(target) = target else {
            return Err(ProbeError::NotIpv4(target));
        };
        let interval = interval.max(MIN_INTERVAL);
        let (socket, raw) = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(socket) => (socket, true),
            Err(_) => (
                Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)).map_err(ProbeError::Socket)?,
                false,
            ),
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(ProbeError::Socket)?;
        let socket = Arc::new(socket);
        let id = (std::process::id() as u16) ^ 0x5a5a;
        let stop = Arc::new(AtomicBool::new(false));
        let address: socket2::SockAddr = SocketAddr::new(IpAddr::V4(target), 0).into();
        let sending = {
            let (socket, stop) = (Arc::clone(&socket), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("probe-tx".into())
                .spawn(move || {
                    let mut sent = Vec::new();
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let seq = sent.len() as u16;
                        sent.push(Instant::now());
                        let _ = socket.send_to(&echo_request(id, seq), &address);
                        // Paced from the start, so a slow send does not stretch the series.
                        let next = start + interval * sent.len() as u32;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    sent
                })
                .map_err(ProbeError::Thread)?
        };
        let receiving = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("probe-rx".into())
                .spawn(move || receive(&socket, raw, id, target, &stop))
                .map_err(ProbeError::Thread)?
        };
        Ok(Prober {
            stop,
            sender: Some(sending),
            receiver: Some(receiving),
            target,
            interval,
        })
    }

    /// Stops probing, waits a moment for late answers, and counts.
    pub fn finish(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let answered = self
            .receiver
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        report(self.target, self.interval, &sent, &answered)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads answers until a while after the sender stopped: the arrival time
/// of each sequence number answered.
fn receive(socket: &Socket, raw: bool, id: u16, target: Ipv4Addr, stop: &AtomicBool) -> BTreeMap<u16, Instant> {
    let mut answered = BTreeMap::new();
    let mut stopped_at = None;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        if stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() > LINGER {
                return answered;
            }
        }
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let at = Instant::now();
        if from.as_socket().map(|a| a.ip()) != Some(IpAddr::V4(target)) {
            continue;
        }
        // SAFETY: recv_from initialised the first `n` bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        if let Some(seq) = echo_reply(&bytes, raw, id) {
            answered.entry(seq).or_insert(at);
        }
    }
}

/// An ICMP echo request: type 8, code 0, checksum, id, sequence, a payload.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![0u8; 8 + 32];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, byte) in packet[8..].iter_mut().enumerate() {
        *byte = i as u8;
    }
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The sequence number of an echo reply to us; a raw socket's packets
/// start with the IP header. A ping socket rewrites the id itself, so it
/// is not compared there.
fn echo_reply(bytes: &[u8], raw: bool, id: u16) -> Option<u16> {
    let icmp = if raw {
        let header = usize::from(bytes.first()? & 0x0f) * 4;
        bytes.get(header..)?
    } else {
        bytes
    };
    if icmp.len() < 8 || icmp[0] != 0 || icmp[1] != 0 {
        return None;
    }
    if raw && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Counts what was sent and answered: lost probes, and the longest time
/// between two answers in a row (what a user of the VM would call the gap).
fn report(target: Ipv4Addr, interval: Duration, sent: &[Instant], answered: &BTreeMap<u16, Instant>) -> ProbeReport {
    let mut arrivals: Vec<Instant> = answered
        .iter()
        .filter(|(seq, _)| usize::from(**seq) < sent.len())
        .map(|(_, at)| *at)
        .collect();
    arrivals.sort();
    let longest_gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let mut rtts: Vec<f64> = answered
        .iter()
        .filter_map(|(seq, at)| {
            let sent_at = sent.get(usize::from(*seq))?;
            Some((*at - *sent_at).as_secs_f64() * 1000.0)
        })
        .collect();
    rtts.sort_by(f64::total_cmp);
    let received = arrivals.len() as u64;
    ProbeReport {
        address: target.to_string(),
        interval_ms: interval.as_secs_f64() * 1000.0,
        sent: sent.len() as u64,
        received,
        lost: sent.len() as u64 - received,
        longest_gap_ms: longest_gap.as_secs_f64() * 1000.0,
        rtt_median_ms: rtts.get(rtts.len() / 2).copied().unwrap_or_default(),
        rtt_max_ms: rtts.last().copied().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_valid_echo_and_its_reply_is_recognised() {
        let request = echo_request(0x1234, 7);
        assert_eq!(checksum(&request), 0, "the checksum covers the packet");
        let mut reply = request.clone();
        reply[0] = 0;
        assert_eq!(echo_reply(&reply, false, 0), Some(7));
        let mut with_ip = vec![0x45u8; 20];
        with_ip.extend_from_slice(&reply);
        assert_eq!(echo_reply(&with_ip, true, 0x1234), Some(7));
        assert_eq!(echo_reply(&with_ip, true, 0x9999), None, "someone else's ping");
        assert_eq!(echo_reply(&request, false, 0), None, "a request is no reply");
    }

    #[test]
    fn losses_and_the_longest_gap_are_counted() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let sent: Vec<Instant> = (0..5).map(|i| ms(i * 10)).collect();
        // Probe 2 lost; 3 answered late.
        let answered: BTreeMap<u16, Instant> = [(0, ms(1)), (1, ms(11)), (3, ms(45)), (4, ms(46))].into();
        let r = report(Ipv4Addr::LOCALHOST, Duration::from_millis(10), &sent, &answered);
        assert_eq!((r.sent, r.received, r.lost), (5, 4, 1));
        assert!((r.longest_gap_ms - 34.0).abs() < 0.01, "{}", r.longest_gap_ms);
        assert!((r.rtt_max_ms - 15.0).abs() < 0.01, "{}", r.rtt_max_ms);
    }
}
