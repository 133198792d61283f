//! Bytes per queued message with 10 million deferred messages: the spool
//! index entry, its delivery progress after one failed attempt, and the
//! timer-wheel entry, measured with a counting allocator.
//! Prints one line per structure; `cargo bench -p ringpost-bench --bench queue_memory`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a benchmark

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ringpost::delivery::wheel::Wheel;
use ringpost::envelope::{BodyType, Envelope, Notify, QueueId, Recipient};
use ringpost::smtp::address::{Mailbox, ReversePath};
use ringpost::spool::index::{Index, Location};
use ringpost::spool::record::ProgressRecord;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const QUEUED: u64 = 10_000_000;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us as a smoke test.
    let n = if std::env::args().any(|a| a == "--bench") { QUEUED } else { 100_000 };
    let domains: Vec<String> = (0..1000).map(|i| format!("domain{i}.example")).collect();
    let mut env = Envelope {
        id: QueueId(0),
        received_at: 1_800_000_000,
        reverse_path: ReversePath::Mailbox(Mailbox::parse("sender@example.com").unwrap()),
        recipients: vec![Recipient {
            address: Mailbox::parse("user@domain0.example").unwrap(),
            notify: Notify::default(),
            orcpt: None,
        }],
        body_type: BodyType::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
        client_ip: None,
        helo: "client".into(),
        auth_user: None,
        tenant: None,
        campaign: None,
        requiretls: false,
        tls_not_required: false,
    };
    let per_domain: Vec<Mailbox> =
        domains.iter().map(|d| Mailbox::parse(&format!("user@{d}")).unwrap()).collect();

    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut index = Index::default();
    for i in 0..n {
        env.id = QueueId(i);
        env.recipients[0].address = per_domain[(i % 1000) as usize].clone();
        index.insert(&env, Location { seq: i / 50_000, offset: (i % 50_000) * 1200, len: 1200, tag: 0 });
    }
    let index_bytes = LIVE.load(Ordering::Relaxed) - before;
    let index_time = t.elapsed();

    // One failed attempt each (what a deferred message carries): the
    // reason is the destination's, shared by its messages.
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let record = ProgressRecord {
            id: QueueId(i),
            attempts: 1,
            next_attempt: 1_800_003_600,
            last_error: format!("mx.domain{}.example[192.0.2.1]:25: connect: Connection refused", i % 1000),
            done: Vec::new(),
            delay_notified: false,
        };
        index.apply_progress(&record, i / 50_000);
    }
    let progress_bytes = LIVE.load(Ordering::Relaxed) - before;

    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut wheel: Wheel<QueueId> = Wheel::new(1_800_000_000);
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        wheel.insert(1_800_000_060 + rng.u64(0..5 * 86_400), QueueId(i));
    }
    let wheel_bytes = LIVE.load(Ordering::Relaxed) - before;
    let wheel_time = t.elapsed();

    println!("queued messages: {n} (one recipient each, 1000 domains)");
    println!(
        "spool index: {:.1} bytes/message, {:.0} ns/insert",
        index_bytes as f64 / n as f64,
        index_time.as_nanos() as f64 / n as f64
    );
    println!(
        "timer wheel: {:.1} bytes/message, {:.0} ns/insert",
        wheel_bytes as f64 / n as f64,
        wheel_time.as_nanos() as f64 / n as f64
    );
    println!("after one failed attempt: {:.1} bytes/message more", progress_bytes as f64 / n as f64);
    println!(
        "total: {:.1} bytes/queued message ({:.1} with the attempt)",
        (index_bytes + wheel_bytes) as f64 / n as f64,
        (index_bytes + wheel_bytes + progress_bytes) as f64 / n as f64
    );
    let t = Instant::now();
    let popped = wheel.poll(u64::MAX / 2).len();
    println!(
        "timer wheel: drained {popped} in {:.2} s ({:.0} ns/item)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_nanos() as f64 / popped.max(1) as f64
    );
    assert_eq!(index.len() as u64, n);
}
