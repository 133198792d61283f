//! Raw bytes into the command parser and the address/parameter parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::address::{parse_forward_path, parse_reverse_path, Domain, Mailbox};
use ringpost::smtp::command::{parse, Command};
use ringpost::smtp::params::{decode_xtext, MailParams, RcptParams};

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = parse(data) {
        match cmd {
            Command::Mail(arg) => {
                if let Ok((_, params)) = parse_reverse_path(arg) {
                    let _ = MailParams::parse(params);
                }
            }
            Command::Rcpt(arg) => {
                let host = Domain::parse_host_name("mx.test").expect("a host name");
                if let Ok((m, params)) = parse_forward_path(arg, &host) {
                    // A parsed mailbox (<postmaster> included) prints back to
                    // the same mailbox: what the spool stores reads back.
                    assert_eq!(Mailbox::parse(&m.to_string()).as_ref(), Ok(&m), "{m} reparses");
                    let _ = RcptParams::parse(params);
                }
            }
            _ => {}
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Domain::parse(s);
        let _ = decode_xtext(s);
    }
});
