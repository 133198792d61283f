//! Delivery events across kill -9, briefly (the full run is
//! `bench/events_kill9.py`): two kills while mail flows in and out, and
//! every acknowledged message must have its Delivery event in the end.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: tests

mod common;

use std::path::Path;
use std::process::Command;

use common::{ringpost, BENCH};

#[test]
fn every_acknowledged_message_has_its_delivery_event_across_kill9() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("events_kill9.py");
    let run = Command::new("python3")
        .arg(&script)
        .args(["--rounds", "2", "--threads", "4", "--ringpost"])
        .arg(ringpost())
        .args(["--bench", BENCH])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.contains("acknowledged without a Delivery event: 0"), "{out}");
    let acked: u64 = out
        .split("kills; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(acked > 100, "mail flowed before the kills: {out}");
}
