//! The workload parameters, from `key=value` tokens on the kernel command line.
//!
//! `fill=SIZE|all` `dirty=SIZE` `rate=MBPS|max` `idle` `hb=MS` `exit=N` `verify=0|1`
//! `disk=SIZE|all` `disk_rate=MBPS|max` `sleep=0|1` `prompt=0|1` `ip=A.B.C.D/LEN` `gw=A.B.C.D`,
//! `note=TEXT` (ignored: text a test wants in guest memory, where the command line
//! stays), and the VMM's `virtio_mmio.device=SIZE@0xADDR:IRQ` device announcements;
//! SIZE is bytes with an optional K/M/G/T suffix (powers of 1024), MBPS is 10^6 bytes
//! per second and may have a fraction (`rate=2.5`). Without `ip=` a network device
//! is left alone; `gw=` adds a default route.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Bytes(u64),
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Bytes per second, over all CPUs.
    BytesPerSec(u64),
    Max,
}

/// An IPv4 address and its prefix length (`ip=10.77.0.10/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: [u8; 4],
    pub prefix_len: u8,
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub fill: Fill,
    pub dirty_bytes: u64,
    pub rate: Rate,
    pub hb_ms: u64,
    pub exit_after: Option<u64>,
    pub verify: bool,
    /// virtio-mmio device windows, in announcement order.
    pub virtio: [u64; crate::virtio::MAX_DEVICES],
    pub virtio_count: usize,
    /// The disk workload's extent (`u64::MAX`: the whole disk).
    pub disk: Option<u64>,
    /// The disk workload's rate in bytes per second (None: as fast as it goes).
    pub disk_rate: Option<u64>,
    /// With nothing to do, park the CPU through the VMM's sleep register.
    pub sleep: bool,
    /// The network interface's address (None: no network).
    pub ip: Option<Ipv4Cidr>,
    /// The default route's gateway.
    pub gw: Option<[u8; 4]>,
    /// A login-like console on COM1 (`tty.rs`).
    pub prompt: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fill: Fill::Bytes(0),
            dirty_bytes: 0,
            rate: Rate::Max,
            hb_ms: 100,
            exit_after: None,
            verify: true,
            virtio: [0; crate::virtio::MAX_DEVICES],
            virtio_count: 0,
            disk: None,
            disk_rate: None,
            sleep: false,
            ip: None,
            gw: None,
            prompt: false,
        }
    }
}

/// Parse the command line; `Err` carries the offending token.
pub fn parse(cmdline: &[u8]) -> Result<Config, &[u8]> {
    let mut config = Config::default();
    for token in cmdline
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .filter(|t| !t.is_empty())
    {
        let (key, value) = match token.iter().position(|&b| b == b'=') {
            Some(eq) => (&token[..eq], Some(&token[eq + 1..])),
            None => (token, None),
        };
        let ok = match (key, value) {
            (b"note", Some(_)) => true,
            (b"idle", None) => {
                config.dirty_bytes = 0;
                true
            }
            (b"fill", Some(b"all")) => {
                config.fill = Fill::All;
                true
            }
            (b"fill", Some(v)) => parse_size(v).map(|n| config.fill = Fill::Bytes(n)).is_some(),
            (b"dirty", Some(v)) => parse_size(v).map(|n| config.dirty_bytes = n).is_some(),
            (b"rate", Some(b"max")) => {
                config.rate = Rate::Max;
                true
            }
            (b"rate", Some(v)) => parse_mbps(v).map(|r| config.rate = Rate::BytesPerSec(r)).is_some(),
            (b"hb", Some(v)) => parse_u64(v)
                .filter(|&ms| (1..=3_600_000).contains(&ms))
                .map(|ms| config.hb_ms = ms)
                .is_some(),
            (b"exit", Some(v)) => parse_u64(v).map(|n| config.exit_after = Some(n)).is_some(),
            (b"verify", Some(b"0")) => {
                config.verify = false;
                true
            }
            (b"verify", Some(b"1")) => {
                config.verify = true;
                true
            }
            (b"sleep", Some(b"1")) => {
                config.sleep = true;
                true
            }
            (b"sleep", Some(b"0")) => {
                config.sleep = false;
                true
            }
            (b"prompt", Some(v @ (b"0" | b"1"))) => {
                config.prompt = v == b"1";
                true
            }
            (b"disk", Some(b"all")) => {
                config.disk = Some(u64::MAX);
                true
            }
            (b"disk", Some(v)) => parse_size(v).map(|n| config.disk = Some(n)).is_some(),
            (b"disk_rate", Some(b"max")) => {
                config.disk_rate = None;
                true
            }
            (b"disk_rate", Some(v)) => parse_mbps(v).map(|r| config.disk_rate = Some(r)).is_some(),
            (b"ip", Some(v)) => parse_cidr(v).map(|cidr| config.ip = Some(cidr)).is_some(),
            (b"gw", Some(v)) => parse_ipv4(v).map(|addr| config.gw = Some(addr)).is_some(),
            (b"virtio_mmio.device", Some(v)) => match parse_virtio(v) {
                Some(base) if config.virtio_count < config.virtio.len() => {
                    config.virtio[config.virtio_count] = base;
                    config.virtio_count += 1;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return Err(token);
        }
    }
    Ok(config)
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// `4K@0xd0000000:5` (the vmig VMM's) or `512@0xfeb02e00:28` (QEMU
/// microvm's) → the window's base: at least 512 bytes (registers and a
/// configuration space), 512-aligned, in the 32-bit MMIO gap. The IRQ is
/// not used: the guest polls.
fn parse_virtio(s: &[u8]) -> Option<u64> {
    const WINDOW_ALIGN: u64 = 0x200;
    let at = s.iter().position(|&b| b == b'@')?;
    let size = parse_size(&s[..at])?;
    let rest = &s[at + 1..];
    let colon = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
    let hex = rest[..colon].strip_prefix(b"0x")?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    let mut base = 0u64;
    for &d in hex {
        let digit = (d as char).to_digit(16)?;
        base = (base << 4) | u64::from(digit);
    }
    let gap = 0xc000_0000..=0x1_0000_0000;
    (size >= WINDOW_ALIGN
        && base.is_multiple_of(WINDOW_ALIGN)
        && gap.contains(&base)
        && base.checked_add(size).is_some_and(|end| gap.contains(&end)))
    .then_some(base)
}

/// `10.77.0.10`: four decimal octets.
fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut addr = [0u8; 4];
    let mut octets = s.split(|&b| b == b'.');
    for octet in &mut addr {
        let digits = octets.next()?;
        *octet = u8::try_from(parse_u64(digits).filter(|_| digits.len() <= 3)?).ok()?;
    }
    octets.next().is_none().then_some(addr)
}

/// `10.77.0.10/24`: a unicast address and a prefix length of 1 to 32.
fn parse_cidr(s: &[u8]) -> Option<Ipv4Cidr> {
    let slash = s.iter().position(|&b| b == b'/')?;
    let addr = parse_ipv4(&s[..slash]).filter(|a| a[0] != 0 && a[0] < 224)?;
    let prefix_len = parse_u64(&s[slash + 1..]).filter(|len| (1..=32).contains(len))? as u8;
    Some(Ipv4Cidr { addr, prefix_len })
}

fn parse_size(s: &[u8]) -> Option<u64> {
    let (digits, shift) = match s.last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n = parse_u64(digits)?;
    n.checked_mul(1 << shift)
}

/// "12" or "12.5" MB/s → bytes per second.
fn parse_mbps(s: &[u8]) -> Option<u64> {
    let (whole, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => (&s[..dot], &s[dot + 1..]),
        None => (s, &b""[..]),
    };
    if frac.len() > 6 || (!frac.is_empty() && parse_u64(frac).is_none()) {
        return None;
    }
    let mut bytes = parse_u64(whole)?.checked_mul(1_000_000)?;
    let mut scale = 100_000;
    for &d in frac {
        bytes += u64::from(d - b'0') * scale;
        scale /= 10;
    }
    Some(bytes)
}
