//! Spool records from an untrusted disk: decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::spool::record::{decode_done, decode_message, decode_progress, Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let payload = &data[HEADER_LEN.min(data.len())..];
        let _ = h.fits(data.len() as u32);
        let _ = h.verify(payload, data.len() as u32);
    }
    if let Ok((env, body_at)) = decode_message(data) {
        assert!(body_at <= data.len());
        let _ = env.recipients.len();
    }
    let _ = decode_progress(data);
    let _ = decode_done(data);
});
