//! Power cuts under load, briefly (the full run is `bench/powercut.py`,
//! issue 15): ringpost's spool on `ringpost-bench lazyfs`, four cuts at
//! random moments under SMTP load, and every acknowledged message must be
//! delivered in the end, once. Needs /dev/fuse and root (mount(2)).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: tests

mod common;

use std::path::Path;
use std::process::Command;

use common::{ringpost, BENCH};

#[test]
fn acknowledged_mail_survives_power_cuts() {
    assert!(Path::new("/dev/fuse").exists(), "this test needs FUSE (/dev/fuse)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("powercut.md");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("powercut.py");
    let run = Command::new("python3")
        .arg(&script)
        .args(["--cuts", "4", "--min-acked", "0", "--threads", "4", "--max-duplicate-rate", "1"])
        .arg("--ringpost")
        .arg(ringpost())
        .args(["--bench", BENCH, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "powercut.py failed:\n{stdout}\n{stderr}");
    let summary = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON summary");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(v["lost"], 0, "{summary}");
    // A delivery repeated after a cut finds its Maildir copy (named by
    // queue id and recipient) and writes no second one.
    assert_eq!(v["duplicates"], 0, "{summary}");
    assert_eq!(v["cuts"], 4, "{summary}");
    assert!(v["acked_messages"].as_u64().unwrap() > 100, "too little load to mean anything: {summary}");
    assert_eq!(v["queue_left"], 0.0, "{summary}");
}
