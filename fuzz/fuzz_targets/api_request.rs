//! An agent's API request line, as any client of the cluster may send it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = vmig_backend::api::Envelope::decode(line);
    }
});
