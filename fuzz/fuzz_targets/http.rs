//! Raw bytes as the start of an HTTP request on a `kind = "http"`
//! listener: never a panic; a head that is accepted lies inside the bytes
//! and its body within the limit that applies to its path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::httpreq::{parse_head, INJECT, MAX_BODY, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let inject_size = 4096;
    match parse_head(data, inject_size) {
        Ok(Some(h)) => {
            assert!(h.head_len <= data.len() && h.head_len <= MAX_HEAD);
            let limit = if h.path() == INJECT { inject_size } else { MAX_BODY };
            assert!(h.body_len <= limit);
        }
        Ok(None) => assert!(data.len() < MAX_HEAD),
        Err(r) => assert!((400..=431).contains(&r.status), "{r:?}"),
    }
});
