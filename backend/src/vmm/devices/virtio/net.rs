//! A virtio-net device (virtio 1.x, section 5.1) on a TAP device: queue 0
//! receives, queue 1 transmits; only `VIRTIO_NET_F_MAC` is offered, so every
//! frame carries the 12-byte `virtio_net_hdr_v1` with nothing in it and a
//! receive buffer holds one whole frame.
//!
//! Transmit is served on the vCPU thread that notified. Receive has its own
//! thread ([`super::mmio::MmioBus`] runs it), which reads the TAP and puts
//! frames into the guest's buffers under the device's lock. What it does
//! with a frame depends on where the VM is in its life ([`RxMode`]): a
//! running VM gets it; a paused one does not (no device may write guest
//! memory while a migration copies the last pages), and the frame is held,
//! in order, for whichever copy continues: the held frames travel with the
//! migration ([`Net::take_held`] / [`Net::put_held`]), so a frame that
//! reached the source during the switchover reaches the guest on the target.
//! A migration's target discards what its TAP hears before the switchover
//! (floods meant for the copy still running) and holds what comes after.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::queue::{Chain, Queue, QueueError};
use super::tap::{Tap, TapError};
use crate::vmm::memory::GuestMemory;

/// `VIRTIO_NET_F_MAC`: the device has a MAC address in its config space.
pub const F_MAC: u64 = 1 << 5;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HEADER_LEN: usize = 12;
/// The largest frame without offloads: a 1500-byte MTU, its Ethernet header
/// and a VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// Frames held while the guest may not have them (paused, or out of
/// buffers); more are left in the TAP's own queue, which drops beyond its
/// length as a link does.
pub const MAX_HELD: usize = 512;

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast address derived from `seed` (the VM's
    /// name and the card's slot), stable for the VM's life.
    pub fn derived(seed: &str) -> Mac {
        // FNV-1a: stable across releases, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = hash.to_le_bytes();
        Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!("{s} is a multicast address, not a card's"));
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One network card as the machine has it: which network, which address.
/// The bridge that network is on is the host's business ([`Bridges`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub network: String,
    pub mac: Mac,
}

/// The host's bridge for each network it reaches (the agent's `[bridges]`).
pub type Bridges = BTreeMap<String, String>;

/// Counters of one card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the TAP brought that no copy of the guest will see: beyond
    /// [`MAX_HELD`], or too large for a buffer, or heard before this
    /// target's switchover.
    pub rx_dropped: u64,
    /// Frames the guest sent that did not leave (malformed or refused).
    pub tx_errors: u64,
    /// Announcements of the card's MAC sent from here.
    pub announcements: u64,
}

/// What the receive thread does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// A migration's target before the switchover: the frames are another
    /// copy's.
    Discard,
    /// Paused: keep them, in order, for the guest.
    Hold,
    /// Running: into the guest's buffers.
    Deliver,
}

/// The host side of one card.
#[derive(Debug)]
pub struct Net {
    pub config: NicConfig,
    tap: Tap,
    pub mode: RxMode,
    held: VecDeque<Vec<u8>>,
    pub counters: NetCounters,
}

/// What one pass of delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub frames: usize,
    pub interrupt: bool,
}

impl Net {
    /// Opens the card's TAP (`tap_name`) on the bridge of its network.
    pub fn open(config: NicConfig, bridges: &Bridges, tap_name: &str, mode: RxMode) -> Result<Self, NetError> {
        let bridge = bridges.get(&config.network).ok_or_else(|| NetError::NoNetwork {
            network: config.network.clone(),
        })?;
        let tap = Tap::open(tap_name, bridge).map_err(|source| NetError::Tap {
            network: config.network.clone(),
            source,
        })?;
        Ok(Net {
            config,
            tap,
            mode,
            held: VecDeque::new(),
            counters: NetCounters::default(),
        })
    }

    pub fn features(&self) -> u64 {
        F_MAC
    }

    /// The config space: the MAC, then fields not offered.
    pub fn config_space(&self) -> [u8; 8] {
        let mut space = [0u8; 8];
        space[..6].copy_from_slice(&self.config.mac.0);
        space
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Whether the receive thread should read more from the TAP now.
    pub fn wants_frames(&self) -> bool {
        self.held.len() < MAX_HELD
    }

    /// Takes one frame the TAP brought, as the mode says; a running guest
    /// whose driver is not ready does not get it (its link is down).
    pub fn arrived(&mut self, frame: &[u8], driver_ready: bool) {
        let unheard = match self.mode {
            RxMode::Discard => true,
            RxMode::Hold => false,
            RxMode::Deliver => !driver_ready,
        };
        if unheard || frame.len() > MAX_FRAME || self.held.len() >= MAX_HELD {
            self.counters.rx_dropped += 1;
            return;
        }
        self.held.push_back(frame.to_vec());
    }

    /// Puts held frames into the guest's receive buffers while it has some.
    pub fn deliver(&mut self, memory: &GuestMemory, rx: &mut Queue) -> Result<Delivered, QueueError> {
        let mut done = Delivered::default();
        if self.mode != RxMode::Deliver {
            return Ok(done);
        }
        while let Some(frame) = self.held.front() {
            let Some(chain) = rx.pop(memory)? else { break };
            let written = write_frame(memory, &chain, frame);
            let frame = self.held.pop_front().expect("a frame is in front");
            match written {
                Some(len) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += frame.len() as u64;
                    done.frames += 1;
                    done.interrupt |= rx.push_used(memory, chain.head, len)?;
                }
                None => {
                    // A buffer too small for it: the frame is lost, the buffer
                    // goes back unused.
                    self.counters.rx_dropped += 1;
                    done.interrupt |= rx.push_used(memory, chain.head, 0)?;
                }
            }
        }
        Ok(done)
    }

    /// Sends what the guest made available on the transmit queue.
    pub fn transmit(&mut self, memory: &GuestMemory, tx: &mut Queue) -> Result<bool, QueueError> {
        let mut interrupt = false;
        let mut frame = Vec::with_capacity(HEADER_LEN + MAX_FRAME);
        while let Some(chain) = tx.pop(memory)? {
            frame.clear();
            let mut ok = true;
            for segment in chain.segments.iter().filter(|s| !s.write) {
                let len = segment.len as usize;
                if frame.len() + len > HEADER_LEN + MAX_FRAME + 4 {
                    ok = false;
                    break;
                }
                let at = frame.len();
                frame.resize(at + len, 0);
                if memory.read_slice(&mut frame[at..], GuestAddress(segment.addr)).is_err() {
                    ok = false;
                    break;
                }
            }
            if ok && frame.len() > HEADER_LEN + 14 && self.tap.write(&frame[HEADER_LEN..]).is_ok() {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (frame.len() - HEADER_LEN) as u64;
            } else {
                self.counters.tx_errors += 1;
            }
            interrupt |= tx.push_used(memory, chain.head, 0)?;
        }
        Ok(interrupt)
    }

    /// Tells the network the card is here: one RARP from its MAC.
    pub fn announce(&mut self) {
        if self.tap.write(&super::tap::rarp(self.config.mac.0)).is_ok() {
            self.counters.announcements += 1;
        }
    }

    /// The frames held for the guest, in order, to carry to another copy.
    pub fn take_held(&mut self) -> Vec<Vec<u8>> {
        self.held.drain(..).collect()
    }

    /// Frames another copy held: they come before anything heard here.
    pub fn put_held(&mut self, frames: Vec<Vec<u8>>) {
        for frame in frames.into_iter().rev() {
            if frame.len() <= MAX_FRAME {
                self.held.push_front(frame);
            }
        }
        while self.held.len() > MAX_HELD {
            self.held.pop_back();
            self.counters.rx_dropped += 1;
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// Writes the empty header and `frame` across the chain's device-writable
/// buffers; the used length, or `None` when they are too small.
fn write_frame(memory: &GuestMemory, chain: &Chain, frame: &[u8]) -> Option<u32> {
    let mut packet = Vec::with_capacity(HEADER_LEN + frame.len());
    packet.extend_from_slice(&[0u8; HEADER_LEN]);
    packet[10] = 1; // num_buffers
    packet.extend_from_slice(frame);
    let room: usize = chain.segments.iter().filter(|s| s.write).map(|s| s.len as usize).sum();
    if room < packet.len() {
        return None;
    }
    let mut rest = &packet[..];
    for segment in chain.segments.iter().filter(|s| s.write) {
        if rest.is_empty() {
            break;
        }
        let n = (segment.len as usize).min(rest.len());
        memory.write_slice(&rest[..n], GuestAddress(segment.addr)).ok()?;
        rest = &rest[n..];
    }
    u32::try_from(packet.len()).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {network} has no bridge on this host (the agent's [bridges] names none)")]
    NoNetwork { network: String },
    #[error("network {network}")]
    Tap {
        network: String,
        #[source]
        source: TapError,
    },
}

impl NetError {
    /// A stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            NetError::NoNetwork { .. } => "network.missing",
            NetError::Tap { .. } => "network.tap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_derive() {
        let mac: Mac = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:ef");
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:ef:01".parse::<Mac>().is_err());
        assert!("01:00:5e:00:00:01".parse::<Mac>().is_err(), "multicast");
        assert!("52:54:00:ab:cd:zz".parse::<Mac>().is_err());
        let a = Mac::derived("vm1/0");
        assert_eq!(a, Mac::derived("vm1/0"), "stable");
        assert_ne!(a, Mac::derived("vm2/0"));
        assert_eq!(a.0[0] & 3, 2, "locally administered unicast");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), a);
    }
}
