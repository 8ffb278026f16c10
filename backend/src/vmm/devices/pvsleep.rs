//! A paravirtual "sleep" register: a guest with nothing to do writes how
//! long it may sleep, and its vCPU thread is parked off the host CPU for
//! that long (at most [`MAX_SLEEP`]), still answering pause and migration
//! requests, instead of spinning in a polling loop. A page in the MMIO gap:
//! offset 0 reads [`MAGIC`] (anything else reads all ones, so a guest can
//! probe for it), a 4-byte write at offset 8 asks for that many microseconds.

use std::time::Duration;

/// Where the register page is.
pub const BASE: u64 = 0xd0ff_0000;
/// "vmpv".
pub const MAGIC: u32 = 0x7670_6d76;
const SLEEP: u64 = 8;
/// The longest one write parks a vCPU.
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A read of the page: the magic at offset 0; `false` when `addr` is not ours.
pub fn read(addr: u64, data: &mut [u8]) -> bool {
    if !(BASE..BASE + 0x1000).contains(&addr) {
        return false;
    }
    data.fill(0);
    if addr == BASE && data.len() == 4 {
        data.copy_from_slice(&MAGIC.to_le_bytes());
    }
    true
}

/// How long a write at `addr` asks the vCPU to sleep, if it is one.
pub fn sleep_request(addr: u64, data: &[u8]) -> Option<Duration> {
    if addr != BASE + SLEEP {
        return None;
    }
    let micros = u32::from_le_bytes(data.try_into().ok()?);
    Some(Duration::from_micros(u64::from(micros)).min(MAX_SLEEP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_answers_its_magic_and_bounds_a_sleep() {
        let mut data = [0u8; 4];
        assert!(read(BASE, &mut data));
        assert_eq!(u32::from_le_bytes(data), MAGIC);
        assert!(!read(BASE + 0x1000, &mut data));
        assert_eq!(
            sleep_request(BASE + 8, &5000u32.to_le_bytes()),
            Some(Duration::from_millis(5))
        );
        assert_eq!(sleep_request(BASE + 8, &u32::MAX.to_le_bytes()), Some(MAX_SLEEP));
        assert_eq!(sleep_request(BASE + 8, &[1, 2]), None, "not a 4-byte write");
        assert_eq!(sleep_request(BASE + 4, &1u32.to_le_bytes()), None);
    }
}
