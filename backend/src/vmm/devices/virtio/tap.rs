//! A TAP device on a host bridge: the host's end of a VM's network card.
//!
//! The VMM process opens it (`/dev/net/tun`, no packet information, no
//! offloads), enslaves it to the bridge its agent named for the network and
//! brings it up. It is not persistent: it disappears with the last file
//! descriptor, so a VMM that ends, however it ends, leaves no interface
//! behind. Each VMM names its own (`vmig<pid>n<slot>`), so a migration's
//! source and target can share one host's bridge.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

const TUN_DEVICE: &str = "/dev/net/tun";
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_UP: i16 = 0x1;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// Longest interface name, the terminating NUL included.
const IFNAMSIZ: usize = 16;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open {TUN_DEVICE} (load the tun module; the VMM needs CAP_NET_ADMIN)")]
    Open(#[source] io::Error),
    #[error("cannot create TAP device {name}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bridge {bridge} does not exist on this host")]
    NoBridge { bridge: String },
    #[error("cannot add {tap} to bridge {bridge}")]
    Enslave {
        tap: String,
        bridge: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot bring {name} up")]
    Up {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("interface name {0:?} is not 1 to 15 bytes")]
    Name(String),
}

/// `struct ifreq`: a name and a 24-byte union (flags, index, ...).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.to_string()));
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }

    fn set_short(&mut self, value: i16) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }
}

/// One TAP device; reads and writes are whole Ethernet frames.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates `name`, adds it to `bridge` and brings it up.
    pub fn open(name: &str, bridge: &str) -> Result<Self, TapError> {
        interface_index(bridge).ok_or_else(|| TapError::NoBridge {
            bridge: bridge.to_string(),
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::Open)?;
        let mut req = IfReq::new(name)?;
        req.set_short(IFF_TAP | IFF_NO_PI);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::Create {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let index = interface_index(name).ok_or_else(|| TapError::Create {
            name: name.to_string(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        let socket = control_socket().map_err(|source| TapError::Up {
            name: name.to_string(),
            source,
        })?;
        let mut enslave = IfReq::new(bridge)?;
        enslave.set_int(index as i32);
        // SAFETY: SIOCBRADDIF reads one `struct ifreq` naming the bridge and
        // the port's index.
        if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRADDIF, &mut enslave) } < 0 {
            return Err(TapError::Enslave {
                tap: name.to_string(),
                bridge: bridge.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        set_up(&socket, name).map_err(|source| TapError::Up {
            name: name.to_string(),
            source,
        })?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Reads one frame; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one frame; a full queue drops it, as a link would.
    pub fn write(&self, frame: &[u8]) -> io::Result<()> {
        match io::Write::write(&mut &self.file, frame) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Another handle on the same device (for the announcer).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

/// The kernel's index of interface `name`, if it exists here.
pub fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|index| *index != 0)
}

fn control_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    Ok(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn set_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = IfReq::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: SIOCGIFFLAGS fills the flags of one `struct ifreq`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = req.short() | IFF_UP;
    req.set_short(flags);
    // SAFETY: SIOCSIFFLAGS reads the flags of one `struct ifreq`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The frame that tells switches where `mac` is now: a broadcast RARP
/// request from it (what QEMU's announce-self sends), padded to the
/// Ethernet minimum.
pub fn rarp(mac: [u8; 6]) -> [u8; 60] {
    let mut frame = [0u8; 60];
    frame[0..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    frame[22..28].copy_from_slice(&mac);
    frame[32..38].copy_from_slice(&mac);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rarp_names_the_mac_as_sender_and_target() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let frame = rarp(mac);
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), 0x8035);
        assert_eq!(u16::from_be_bytes([frame[20], frame[21]]), 3);
        assert_eq!(&frame[22..28], &mac);
        assert_eq!(&frame[32..38], &mac);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a-name-too-long-x").is_err());
        assert!(IfReq::new("vmig123n0").is_ok());
        assert!(interface_index("lo").is_some());
        assert!(interface_index("no-such-if0").is_none());
    }

    #[test]
    fn a_missing_bridge_is_named() {
        match Tap::open("vmigtest0", "no-such-br0") {
            Err(TapError::NoBridge { bridge }) => assert_eq!(bridge, "no-such-br0"),
            other => panic!("{other:?}"),
        }
    }
}
