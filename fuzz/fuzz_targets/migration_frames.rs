//! What a receiver reads from a migration stream before it trusts anything:
//! a frame header, then a Hello, a machine state, or a memory batch's range
//! table. None may panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmig_backend::migration::protocol::{self, HEADER_LEN, Header, Hello, Kind};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..HEADER_LEN) {
        let header: &[u8; HEADER_LEN] = header.try_into().expect("a header's length");
        let _ = Header::decode(header);
    }
    let payload = data.get(HEADER_LEN..).unwrap_or_default();
    let _ = protocol::decode::<Hello>(Kind::Hello, payload);
    let _ = vmig_backend::vmm::VmState::decode(payload);
    let _ = protocol::decode_ranges(payload, payload.len() as u64 + (1 << 20), |gpa, len| {
        gpa.checked_add(len).is_some_and(|end| end <= 1 << 32)
    });
});
