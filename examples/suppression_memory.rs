//! Memory and lookup cost of the suppression list: inserts N entries of
//! realistic addresses (global and tenant-scoped), reads the process's RSS
//! before and after from /proc/self/statm, and times lookups (hits and
//! misses). Prints one JSON object. Used by bench/suppression.sh.
//!
//! usage: cargo run --release --example suppression_memory -- N
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a measurement tool, not the server

use std::time::Instant;

use ringpost::suppress::{List, Reason};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn address(i: u64) -> String {
    // About 26 bytes, like real addresses: a local part and one of 5,000 domains.
    format!("user.{i:08}@domain{:04}.example", i % 5000)
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let before = rss_bytes();
    let mut list = List::default();
    let start = Instant::now();
    for i in 0..n {
        let tenant = (i % 10 == 0).then_some("tenant-a");
        list.add(&address(i), tenant, Reason::Unsubscribe, 1_796_000_000);
    }
    let insert_s = start.elapsed().as_secs_f64();
    let after = rss_bytes();
    let probes = 1_000_000u64.min(n.max(1));
    let start = Instant::now();
    let mut hits = 0u64;
    for i in 0..probes {
        let a = address((i * 7_919) % n);
        hits += u64::from(list.check(&a, Some("tenant-a")).is_some());
    }
    let hit_ns = start.elapsed().as_nanos() as f64 / probes as f64;
    let start = Instant::now();
    for i in 0..probes {
        let a = format!("nobody.{i:08}@domain{:04}.example", i % 5000);
        hits += u64::from(list.check(&a, Some("tenant-a")).is_some());
    }
    let miss_ns = start.elapsed().as_nanos() as f64 / probes as f64;
    println!(
        "{{\"entries\": {}, \"rss_before\": {before}, \"rss_after\": {after}, \"bytes_per_entry\": {:.1}, \
         \"insert_s\": {insert_s:.3}, \"lookup_hit_ns\": {hit_ns:.0}, \"lookup_miss_ns\": {miss_ns:.0}, \"hits\": {hits}}}",
        list.len(),
        (after - before) as f64 / n as f64
    );
}
