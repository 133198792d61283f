//! The outbound client core against arbitrary server bytes. Bytes pick reply
//! tokens (so transactions, STARTTLS and DATA are reached) or pass through raw.
//! Invariants: no panic, commands well formed, input consumed or an event.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringpost::envelope::{BodyType, Notify};
use ringpost::smtp::client::{Client, ClientConfig, Event, OutRecipient, Outgoing};

const TOKENS: &[&[u8]] = &[
    b"220 mx ESMTP\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 100\r\n250-DSN\r\n250 STARTTLS\r\n",
    b"250 ok\r\n",
    b"250-",
    b"354 go\r\n",
    b"451 4.7.1 later\r\n",
    b"550 5.1.1 no\r\n",
    b"421 bye\r\n",
    b"220 go ahead\r\n",
    b"221 bye\r\n",
    b"\r\n",
    b"\n",
    b"5",
];

fn message() -> Outgoing {
    Outgoing {
        reverse_path: "s@x.test".into(),
        recipients: vec![
            OutRecipient {
                address: "a@y.test".into(),
                notify: Notify::parse("SUCCESS").unwrap(),
                orcpt: None,
            },
            OutRecipient {
                address: "b@y.test".into(),
                notify: Notify::default(),
                orcpt: Some("rfc822;b@y.test".into()),
            },
        ],
        size: 50,
        body_type: BodyType::SevenBit,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: Some("E".into()),
        requiretls: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let t = Instant::now();
    let cfg = ClientConfig {
        helo: "h.test".into(),
        starttls: data.first().is_some_and(|b| b & 1 == 1),
        command_timeout: Duration::from_secs(1),
        data_timeout: Duration::from_secs(1),
        final_timeout: Duration::from_secs(1),
        // LMTP too: its replies after the content come one per recipient.
        lmtp: data.first().is_some_and(|b| b & 2 == 2),
    };
    let mut c = Client::new(cfg, t);
    let mut wire = Vec::new();
    let mut it = data.iter();
    while let Some(&b) = it.next() {
        if b < 200 {
            wire.extend_from_slice(TOKENS[usize::from(b) % TOKENS.len()]);
        } else if let Some(&raw) = it.next() {
            wire.push(raw);
        }
    }
    let mut pos = 0;
    let mut sent_messages = 0;
    for _ in 0..10_000 {
        let used = c.handle_input(&wire[pos..], t);
        pos += used;
        match c.poll_event() {
            Some(Event::Ready) | Some(Event::MessageDone(_)) if sent_messages < 3 => {
                sent_messages += 1;
                c.send_message(message(), t);
            }
            Some(Event::SendBody) => c.handle_body_sent(t),
            Some(Event::StartTls) => c.handle_tls_established(t),
            Some(Event::Failed(_)) | Some(Event::Closed) => break,
            Some(_) => {}
            None if used == 0 => break,
            None => {}
        }
        let out = std::str::from_utf8(c.output()).expect("commands are UTF-8");
        for line in out.split_inclusive("\r\n") {
            assert!(line.ends_with("\r\n") && !line[..line.len() - 2].contains(['\r', '\n']), "{line:?}");
        }
        let mut none = Vec::new();
        c.swap_output(&mut none);
    }
    c.handle_eof();
    c.handle_timeout(t + Duration::from_secs(5));
});
