//! DKIM signing cost on one core: the crypto library's raw signature
//! (aws-lc-rs, which ringpost signs with, and ring beside it for the
//! record: RSA-2048 PKCS#1 v1.5 SHA-256, Ed25519), then ringpost's whole signer
//! (split the header block, canonicalize, hash, sign, fold) on 1 KiB and
//! 100 KiB messages. The raw rate is the physical limit the signed
//! throughput is measured against (tuning/results/*-dkim.md).
#![allow(clippy::unwrap_used)] // reason: benchmarks

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use ringpost::dkim::{Key, Signer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

const RSA: &[u8] = include_bytes!("../../src/dkim/testdata/rsa2048-pkcs8.pem");
const ED25519: &[u8] = include_bytes!("../../src/dkim/testdata/ed25519.pem");

fn pkcs8(pem: &[u8]) -> Vec<u8> {
    match PrivateKeyDer::from_pem_slice(pem).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => panic!("PKCS#8 expected"),
    }
}

/// A message of `size` bytes shaped like the load generator's.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"Received: from c.test by mx.test with ESMTP id 1; Mon, 30 Nov 2026 08:00:00 +0000\r\n\
From: <bench@example.com>\r\nTo: <r@y.test>\r\nSubject: bench 1-1\r\nMessage-ID: <1.1@bench.test>\r\n\r\n"
        .to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn raw(c: &mut Criterion) {
    let rsa = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&pkcs8(RSA)).unwrap();
    let ed = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8(ED25519)).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let data = [7u8; 400]; // about the canonical header data of a message
    let mut g = c.benchmark_group("raw signature (aws-lc-rs)");
    g.throughput(Throughput::Elements(1));
    g.bench_function("RSA-2048 SHA-256", |b| {
        let mut sig = vec![0; rsa.public_modulus_len()];
        b.iter(|| {
            rsa.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, black_box(&data), &mut sig).unwrap()
        })
    });
    g.bench_function("Ed25519 (of a SHA-256)", |b| {
        b.iter(|| ed.sign(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(&data)).as_ref()))
    });
    g.finish();
}

fn raw_ring(c: &mut Criterion) {
    let rsa = RsaKeyPair::from_pkcs8(&pkcs8(RSA)).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8(ED25519)).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let data = [7u8; 400]; // about the canonical header data of a message
    let mut g = c.benchmark_group("raw signature (ring)");
    g.throughput(Throughput::Elements(1));
    g.bench_function("RSA-2048 SHA-256", |b| {
        let mut sig = vec![0; rsa.public().modulus_len()];
        b.iter(|| rsa.sign(&RSA_PKCS1_SHA256, &rng, black_box(&data), &mut sig).unwrap())
    });
    g.bench_function("Ed25519 (of a SHA-256)", |b| {
        b.iter(|| ed.sign(ring::digest::digest(&ring::digest::SHA256, black_box(&data)).as_ref()))
    });
    g.finish();
}

fn signer(c: &mut Criterion) {
    let rsa = Signer::new("example.com", "s1", Key::from_pem(RSA).unwrap(), &[]);
    let ed = Signer::new("example.com", "s2", Key::from_pem(ED25519).unwrap(), &[]);
    let mut g = c.benchmark_group("ringpost DKIM signer");
    g.throughput(Throughput::Elements(1));
    for size in [1024, 100 * 1024] {
        let m = message(size);
        g.bench_function(format!("RSA-2048, {} KiB", size / 1024), |b| {
            b.iter(|| rsa.sign(black_box(&m), 0).unwrap())
        });
        g.bench_function(format!("Ed25519, {} KiB", size / 1024), |b| {
            b.iter(|| ed.sign(black_box(&m), 0).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, raw, raw_ring, signer);
criterion_main!(benches);
