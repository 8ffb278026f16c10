//! The guest on the network: with `ip=`, the first virtio-net device carries
//! a smoltcp interface that answers ARP and ICMP echo itself and runs the
//! echo services (`echo.rs`). Everything runs on the BSP, one poll per
//! main-loop iteration: a load of the receive ring's used index unless
//! smoltcp's own deadline (TCP timers, pending output) has come.
//!
//! smoltcp's clock is the guest's own (`clock.rs`, in µs), kept monotonic.
//! A migration's pause makes it jump forward, which TCP sees as delay: no
//! socket has a timeout or keep-alive, so nothing is aborted, and the
//! retransmission timer just fires.

mod echo;
mod phy;
mod virtio_net;

use core::sync::atomic::{AtomicBool, Ordering};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

use self::echo::{Echo, EchoMem, EchoSlots};
use self::virtio_net::{NetMem, VirtioNet};
pub use self::virtio_net::{RX_FRAMES, TX_FRAMES};
use crate::cmdline::Ipv4Cidr;
use crate::serial::Line;
use crate::virtio::Found;

/// The queues and every buffer: all zero, so the static stays out of the
/// image file (the socket slots, which are not, have their own).
struct Mem {
    device: NetMem,
    echo: EchoMem,
}

static mut MEM: Mem = Mem {
    device: NetMem::new(),
    echo: EchoMem::new(),
};
static mut SLOTS: EchoSlots = EchoSlots::new();
static MEM_TAKEN: AtomicBool = AtomicBool::new(false);

/// Hands the statics out once.
fn take_mem() -> Option<(&'static mut Mem, &'static mut EchoSlots)> {
    if MEM_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (mem, slots) = (&raw mut MEM, &raw mut SLOTS);
    // SAFETY: `mem` is the static above, and MEM_TAKEN lets exactly one
    // caller ever have it: the reference is unique for the program's life.
    let mem = unsafe { &mut *mem };
    // SAFETY: as above, for `slots`.
    let slots = unsafe { &mut *slots };
    Some((mem, slots))
}

/// The network, if the command line asked for one and a device was found.
pub struct Net {
    stack: Option<Stack>,
}

impl core::fmt::Debug for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Net").field("up", &self.up()).finish()
    }
}

struct Stack {
    device: VirtioNet,
    iface: Interface,
    sockets: SocketSet<'static>,
    echo: Echo,
    /// smoltcp's next deadline, in clock ns (u64::MAX: none).
    due_ns: u64,
    /// The latest time handed to smoltcp, which must never go back.
    now: Instant,
}

impl Net {
    /// With `ip`, brings up the first device of `devices` at that address
    /// (and `gw` as the default route) and prints `NET mac=.. ip=..`.
    pub fn start(
        mut devices: impl Iterator<Item = Found>,
        ip: Option<Ipv4Cidr>,
        gw: Option<[u8; 4]>,
        seed: u64,
        now_ns: u64,
    ) -> Net {
        let stack = ip.and_then(|ip| {
            let Some(device) = devices.next() else {
                Line::new().str("ERR net no device").emit();
                return None;
            };
            let stack = Stack::start(&device, ip, gw, seed, now_ns);
            if stack.is_none() {
                Line::new()
                    .str("ERR net slot=")
                    .dec(device.slot as u64)
                    .str(" addr=")
                    .hex(device.transport.base())
                    .emit();
            }
            stack
        });
        Net { stack }
    }

    pub fn up(&self) -> bool {
        self.stack.is_some()
    }

    /// Runs the stack if a frame arrived or a deadline of its own has come.
    #[inline]
    pub fn poll(&mut self, now_ns: u64) {
        if let Some(stack) = &mut self.stack
            && (stack.device.rx.pending() || now_ns >= stack.due_ns)
        {
            stack.poll(now_ns);
        }
    }

    /// How long the guest may sleep before the stack needs a poll (0: now).
    pub fn wait_ns(&self, now_ns: u64) -> u64 {
        match &self.stack {
            Some(stack) if stack.device.rx.pending() => 0,
            Some(stack) => stack.due_ns.saturating_sub(now_ns),
            None => u64::MAX,
        }
    }
}

impl Stack {
    fn start(device: &Found, ip: Ipv4Cidr, gw: Option<[u8; 4]>, seed: u64, now_ns: u64) -> Option<Stack> {
        let (mem, slots) = take_mem()?;
        let mut device = VirtioNet::init(device, &mut mem.device)?;
        let mut config = Config::new(EthernetAddress(device.mac).into());
        config.random_seed = seed;
        let now = instant(now_ns);
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(Ipv4Address::from(ip.addr).into(), ip.prefix_len))
                .expect("an interface holds one address");
        });
        if let Some(gw) = gw {
            iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::from(gw))
                .expect("an empty route table takes a default route");
        }
        let (sockets, echo) = Echo::open(&mut mem.echo, slots);
        announce(&device.mac, ip, gw);
        let mut stack = Stack {
            device,
            iface,
            sockets,
            echo,
            due_ns: 0,
            now,
        };
        stack.poll(now_ns);
        Some(stack)
    }

    #[inline(never)]
    fn poll(&mut self, now_ns: u64) {
        self.now = self.now.max(instant(now_ns));
        let now = self.now;
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.echo.serve(&mut self.sockets);
        // What the echo just queued goes out now, not at the next poll.
        self.iface.poll_egress(now, &mut self.device, &mut self.sockets);
        self.device.flush();
        self.due_ns = match self.iface.poll_delay(now, &self.sockets) {
            Some(delay) => now_ns.saturating_add(delay.total_micros().saturating_mul(1000)),
            None => u64::MAX,
        };
    }
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

/// `NET mac=52:54:00:12:34:56 ip=10.77.0.10/24[ gw=10.77.0.1]`
fn announce(mac: &[u8; 6], ip: Ipv4Cidr, gw: Option<[u8; 4]>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = Line::new();
    line.str("NET mac=");
    for (i, &b) in mac.iter().enumerate() {
        if i > 0 {
            line.str(":");
        }
        line.bytes(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
    line.str(" ip=");
    dotted(&mut line, ip.addr).str("/").dec(u64::from(ip.prefix_len));
    if let Some(gw) = gw {
        dotted(line.str(" gw="), gw);
    }
    line.emit();
}

fn dotted(line: &mut Line, addr: [u8; 4]) -> &mut Line {
    for (i, &octet) in addr.iter().enumerate() {
        if i > 0 {
            line.str(".");
        }
        line.dec(u64::from(octet));
    }
    line
}
