//! Micro-benchmarks of the hot paths that do not touch the network or disk:
//! command parsing, DATA dot-unstuffing, the retry timer wheel with 10 million
//! queued messages, and a DNS cache hit.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: benchmarks

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringpost::delivery::wheel::Wheel;
use ringpost::dns::cache::{Cache, Probe};
use ringpost::dns::wire::{Answer, Response, Rtype};
use ringpost::envelope::QueueId;
use ringpost::smtp::command;
use ringpost::smtp::data::DotReceiver;

fn parse(c: &mut Criterion) {
    let line = b"MAIL FROM:<sender.name@example.com> SIZE=10240 BODY=8BITMIME";
    c.bench_function("command parse (MAIL FROM with params)", |b| b.iter(|| command::parse(black_box(line))));
    // A 1 MiB body of 76-character lines, some starting with a dot.
    let mut body = Vec::new();
    while body.len() < 1 << 20 {
        body.extend_from_slice(
            b".abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijk\r\n",
        );
        body.extend_from_slice(
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijkl\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let mut g = c.benchmark_group("DATA dot-unstuffing");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1 MiB", |b| {
        let mut out = Vec::with_capacity(body.len());
        b.iter(|| {
            out.clear();
            let mut rx = DotReceiver::new(u64::MAX);
            black_box(rx.feed(&body, &mut out));
        })
    });
    g.finish();
}

/// 10M under `cargo bench`; small when CI smoke-runs the benches as tests.
fn queued() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        10_000_000
    } else {
        10_000
    }
}

fn wheel(c: &mut Criterion) {
    let queued = queued();
    let now = 1_800_000_000u64;
    let mut w: Wheel<QueueId> = Wheel::new(now);
    let mut rng = fastrand::Rng::with_seed(1);
    // Retry times spread over five days, as a real deferred queue would be.
    for i in 0..queued {
        w.insert(now + 60 + rng.u64(0..5 * 86_400), QueueId(i));
    }
    let mut g = c.benchmark_group("timer wheel, 10M queued");
    let mut next = queued;
    g.bench_function("insert", |b| {
        b.iter(|| {
            next += 1;
            w.insert(now + 60 + rng.u64(0..5 * 86_400), QueueId(next));
        })
    });
    // Pop cost: advance second by second through the queue; each poll returns
    // the messages due in that second (about 23 at 10M over 5 days).
    let mut t = now + 60;
    let mut popped = 0usize;
    let started = Instant::now();
    g.bench_function("poll one second", |b| {
        b.iter(|| {
            t += 1;
            popped += black_box(w.poll(t)).len();
        })
    });
    g.finish();
    let per_item = started.elapsed().as_nanos() as f64 / popped.max(1) as f64;
    println!("timer wheel: {popped} items popped, about {per_item:.0} ns per popped item including criterion overhead");
    assert!(w.len() as u64 > queued * 9 / 10 || queued < 1_000_000);
}

fn dns_cache(c: &mut Criterion) {
    let cache = Cache::new(100_000);
    let t0 = Instant::now();
    for i in 0..50_000 {
        if let Probe::Fetch(f) = cache.probe((format!("mx{i}.example.test"), Rtype::Mx), t0) {
            f.finish(
                Ok(Response { answer: Answer::NoData, ttl: 300, secure: false }),
                t0,
                Duration::from_secs(300),
            );
        }
    }
    let key = ("mx4242.example.test".to_owned(), Rtype::Mx);
    c.bench_function("DNS cache hit (50k entries)", |b| {
        b.iter_batched(|| key.clone(), |k| matches!(cache.probe(k, t0), Probe::Hit(_)), BatchSize::SmallInput)
    });
}

criterion_group!(benches, parse, wheel, dns_cache);
criterion_main!(benches);
