//! Raw bytes as a complaint report (ARF), a signed token and an unsubscribe
//! request: never a panic; what we seal opens to what was sealed (and not
//! for another purpose); arbitrary targets and bodies never unsubscribe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::feedback::token::{Purpose, Ref, Signer};
use ringpost::feedback::unsubscribe::{handle, Request, Unsubscribe};
use ringpost::feedback::{arf, read_complaint, Feedback};

fuzz_target!(|data: &[u8]| {
    let _ = arf::parse(data);
    let f = Feedback::new(&["fbl@example.test".into()], b"0123456789abcdef0123456789abcdef");
    let _ = read_complaint(&f, data);

    let text = String::from_utf8_lossy(data);
    let signer = Signer::new(b"fuzz key");
    assert!(signer.open(Purpose::Reference, &text).is_none() || text.starts_with("v1."));
    // Fields as long as they get: an address of 320 bytes, tenant and
    // campaign names of 200 (what the envelope takes).
    let cut = |s: &str, n: usize| {
        s.chars()
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= n).then_some(c)
            })
            .collect::<String>()
    };
    let mid = (0..=text.len() / 2).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let (a, b) = text.split_at(mid);
    let r = Ref {
        id: cut(a, 16),
        recipient: Some(cut(b, 320)),
        tenant: Some(cut(a, 200)),
        campaign: Some(cut(&text, 200)),
    };
    let sealed = signer.seal(Purpose::Reference, &r);
    assert_eq!(signer.open(Purpose::Reference, &sealed), Some(r.clone()));
    assert_eq!(signer.open(Purpose::Unsubscribe, &sealed), None);

    let u = Unsubscribe::new("https://u.example.test", "a long enough secret");
    let answer = handle(Some(&u), Request { method: "POST", target: &text, body: data });
    // A valid token needs our HMAC: arbitrary bytes never unsubscribe anyone.
    assert!(answer.unsubscribe.is_none());
});
