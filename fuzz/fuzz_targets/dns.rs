//! DNS answers from the network: parsing never panics, and an accepted answer
//! matches the question.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::dns::wire::{parse_response, Rtype};

fuzz_target!(|data: &[u8]| {
    for rtype in [Rtype::Mx, Rtype::A, Rtype::Aaaa] {
        let _ = parse_response(data, 0x1234, "example.test", rtype);
    }
});
