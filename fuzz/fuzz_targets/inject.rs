//! Raw bytes as an injection API request and as `sendmail` input: never a
//! panic, never a message over the size limit, and every recipient either
//! gets a message or a reason. Also the maildrop file decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::envelope::QueueId;
use ringpost::inject::{self, Stamp};
use ringpost::maildrop;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = inject::parse(data) {
        if let Ok(plan) = inject::plan(&req, None) {
            let stamp = Stamp {
                id: QueueId(1),
                unix: 1_800_000_000,
                hostname: "mx.test",
                peer: std::net::Ipv4Addr::LOCALHOST.into(),
                tls: false,
                token: "fuzz",
            };
            for r in req.recipients.iter().take(8) {
                if let Ok(to) = inject::recipient(r) {
                    if let Ok(m) = plan.render(r, &to, stamp, 64 << 10) {
                        assert!(m.len() <= 64 << 10);
                    }
                }
            }
        }
    }
    let message = maildrop::read_message(data, true);
    let inv = maildrop::parse_args(&["-t".to_owned(), "-i".to_owned()]).unwrap_or_default();
    if let Ok(file) = maildrop::submission(&inv, message, "fuzz", "mx.test") {
        let (meta, body) = maildrop::decode(&file).expect("what we write reads back");
        let _ = maildrop::pickup(&meta, body, 0, QueueId(2), 0, "mx.test");
    }
    if let Ok((meta, body)) = maildrop::decode(data) {
        let _ = maildrop::pickup(&meta, body, 0, QueueId(3), 0, "mx.test");
    }
});
