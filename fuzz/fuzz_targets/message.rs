//! Raw bytes as a message's content: the header-block splitter, the From:
//! domain, and DKIM signing never panic; the fields found are in bounds and
//! in order; a signature is one well-formed field in front of the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::dkim::{self, Key, Signer};
use ringpost::mail;

fuzz_target!(|data: &[u8]| {
    let (fields, body) = mail::fields(data);
    let mut at = 0;
    for f in &fields {
        assert!(f.raw.start >= at && f.name.start == f.raw.start && f.name.end <= f.raw.end);
        assert!(f.raw.end <= data.len());
        let _ = f.value(data);
        at = f.raw.end;
    }
    assert!(body >= at && body <= data.len());
    assert_eq!(mail::without(data, &fields, |_| true).len(), data.len() - fields.iter().map(|f| f.raw.len()).sum::<usize>());
    let _ = dkim::from_domain(data);

    let key = Key::from_pem(include_bytes!("../../src/dkim/testdata/ed25519.pem")).expect("the test key");
    let signer = Signer::new("example.com", "s", key, &[]);
    let sig = signer.sign(data, 1_795_000_000).expect("ed25519 signs");
    let mut signed = sig.clone();
    signed.extend_from_slice(data);
    // A content whose first line is a continuation would continue the
    // signature field instead (ours always starts with our Received field).
    if data.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return;
    }
    let (again, _) = mail::fields(&signed);
    assert!(again.first().is_some_and(|f| f.is(&signed, "dkim-signature") && f.raw.end == sig.len()));
});
