//! DNS answers from the network: parsing never panics, and an accepted
//! answer matches the question: its id and name, the type asked for, TTLs
//! within bounds. The first two bytes are set to the query id, so the
//! fuzzer reaches past the id check. TLSA answers go on through DANE's
//! decision, and the bytes, taken as a server's certificate, through its
//! check against them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::delivery::dane;
use ringpost::dns::wire::{parse_response, Answer, Rtype, WireError, MAX_TTL};

const ID: u16 = 0x1234;

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    if data.len() >= 2 {
        data[..2].copy_from_slice(&ID.to_be_bytes());
    }
    for rtype in [Rtype::Mx, Rtype::A, Rtype::Aaaa, Rtype::Txt, Rtype::Tlsa] {
        let Ok(r) = parse_response(&data, ID, "example.test", rtype) else { continue };
        assert!(r.ttl <= MAX_TTL, "{r:?}");
        match (&r.answer, rtype) {
            (Answer::Mx(mx), Rtype::Mx) => {
                assert!(!mx.is_empty());
                for m in mx {
                    assert!(!m.exchange.ends_with('.') && m.exchange == m.exchange.to_lowercase(), "{m:?}");
                }
            }
            (Answer::Ips(ips), Rtype::A) => assert!(!ips.is_empty() && ips.iter().all(|ip| ip.is_ipv4())),
            (Answer::Ips(ips), Rtype::Aaaa) => assert!(!ips.is_empty() && ips.iter().all(|ip| ip.is_ipv6())),
            (Answer::Txt(t), Rtype::Txt) => assert!(!t.is_empty()),
            (Answer::Tlsa(t), Rtype::Tlsa) => {
                assert!(!t.is_empty());
                let lookup = Ok(r.clone());
                if let dane::Decision::Verify(records) = dane::decide("mx.example.test", &lookup) {
                    assert!(records.iter().all(dane::usable));
                    let cert = rustls_pki_types::CertificateDer::from(data.clone());
                    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
                    let now = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1 << 31));
                    let _ = dane::verify(&records, &[cert.clone(), cert], &["mx.example.test"], now, algs);
                }
            }
            (Answer::NoData | Answer::NxDomain, _) => {}
            (other, rtype) => panic!("{other:?} for a {rtype:?} question"),
        }
        // The same bytes answer no other question.
        assert_eq!(parse_response(&data, ID ^ 1, "example.test", rtype), Err(WireError::Mismatch));
        assert_eq!(parse_response(&data, ID, "other.test", rtype), Err(WireError::Mismatch));
    }
});
