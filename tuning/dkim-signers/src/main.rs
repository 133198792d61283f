//! ringpost's DKIM signer against mail-auth 0.13.3 (Stalwart; newer releases need
//! a newer rustc) on its ring backend: same keys, same header list, relaxed/
//! relaxed, 1 KiB and 100 KiB messages, interleaved. Not part of the workspace
//! (mail-auth brings hickory-resolver and tokio).
//!
//! usage: cd tuning/dkim-signers && cargo build --release && taskset -c 0 target/release/dkim-signers
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use ringpost::dkim::{Key, Signer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::time::Instant;

const RSA: &[u8] = include_bytes!("../../../src/dkim/testdata/rsa2048-pkcs8.pem");
const ED: &[u8] = include_bytes!("../../../src/dkim/testdata/ed25519.pem");

fn der(pem: &[u8]) -> Vec<u8> {
    match PrivateKeyDer::from_pem_slice(pem).unwrap() { PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(), _ => panic!() }
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"Received: from c.test by mx.test with ESMTP id 1; Mon, 30 Nov 2026 08:00:00 +0000\r\nFrom: <bench@example.com>\r\nTo: <r@y.test>\r\nSubject: bench 1-1\r\nMessage-ID: <1.1@bench.test>\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n";
    while m.len() + line.len() <= size { m.extend_from_slice(line); }
    m
}

fn time(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n { f(); }
    t.elapsed().as_secs_f64() / n as f64 * 1e6
}

fn main() {
    let headers = ["From", "Reply-To", "Sender", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID"];
    let ma_rsa = DkimSigner::from_key(RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(RSA).unwrap()).unwrap()).domain("example.com").selector("s").headers(headers).header_canonicalization(Canonicalization::Relaxed).body_canonicalization(Canonicalization::Relaxed);
    let ma_ed = DkimSigner::from_key(Ed25519Key::from_pkcs8_maybe_unchecked_der(&der(ED)).unwrap()).domain("example.com").selector("s").headers(headers).header_canonicalization(Canonicalization::Relaxed).body_canonicalization(Canonicalization::Relaxed);
    let rp_rsa = Signer::new("example.com", "s", Key::from_pem(RSA).unwrap(), &[]);
    let rp_ed = Signer::new("example.com", "s", Key::from_pem(ED).unwrap(), &[]);
    for size in [1024usize, 100 * 1024] {
        let m = message(size);
        for round in 0..3 {
            let a = time(300, || { std::hint::black_box(ma_rsa.sign(&m).unwrap().to_header()); });
            let b = time(300, || { std::hint::black_box(rp_rsa.sign(&m, 0).unwrap()); });
            let c = time(5000, || { std::hint::black_box(ma_ed.sign(&m).unwrap().to_header()); });
            let d = time(5000, || { std::hint::black_box(rp_ed.sign(&m, 0).unwrap()); });
            println!("{size} B round {round}: RSA mail-auth {a:.1} us, ringpost {b:.1} us | Ed25519 mail-auth {c:.1} us, ringpost {d:.1} us");
        }
    }
}
