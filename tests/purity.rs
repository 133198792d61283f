//! The protocol cores and the decisions stay pure by a check, not by hope:
//! their code (tests aside) names no runtime, no file system, no socket and
//! no clock. Time and bytes come in as parameters; the shell (`rt`, the
//! delivery owner and destinations, the spool writer) does the I/O.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use std::path::{Path, PathBuf};

/// Files and directories (all `.rs` below them) that must stay pure.
const PURE: &[&str] = &[
    "src/smtp",
    "src/pop3/session.rs",
    "src/dns/wire.rs",
    "src/dns/cache.rs",
    "src/delivery/decide.rs",
    "src/delivery/classify.rs",
    "src/delivery/mta_sts.rs",
    "src/delivery/dane.rs",
    "src/delivery/tlsrpt.rs",
    "src/delivery/holds.rs",
    "src/events/mod.rs",
    "src/suppress/mod.rs",
    "src/feedback",
    "src/inject",
    "src/httpreq.rs",
    "src/maildrop",
    "src/redis/mod.rs",
    "src/delivery/egress.rs",
    "src/delivery/shaping.rs",
    "src/dkim",
    "src/mail.rs",
    "src/delivery/dsn.rs",
    "src/delivery/wheel.rs",
    "src/spool/record.rs",
    "src/spool/index.rs",
    "src/spool/segment.rs",
    "src/envelope.rs",
    "src/policy.rs",
];

/// What I/O or the clock looks like in code.
const FORBIDDEN: &[&str] = &[
    "monoio",
    "std::fs",
    "fs::",
    "File::",
    "OpenOptions",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::net::Tcp",
    "Instant::now",
    "SystemTime::now",
    "rt::clock",
    "clock::",
    "spawn_blocking",
    "std::thread",
    "libc::",
    "tokio",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            rust_files(&e.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The code of a file before its test module, without comments.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn protocol_cores_and_decisions_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for p in PURE {
        let path = root.join(p);
        assert!(path.exists(), "{p} is listed but missing");
        rust_files(&path, &mut files);
    }
    assert!(files.len() > 15, "{files:?}");
    let mut found = Vec::new();
    for f in files.iter().filter(|f| f.file_name().is_some_and(|n| n != "tests.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in code(&text).lines().enumerate() {
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    found.push(format!(
                        "{}:{}: {bad}: {}",
                        f.strip_prefix(root).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "I/O or clock in a pure module:\n{}", found.join("\n"));
}

/// The check itself finds what it looks for.
#[test]
fn the_check_sees_io() {
    let sample = "use monoio::fs::File;\nlet t = std::time::Instant::now(); // clock\n#[cfg(test)]\nmod tests { use std::fs; }";
    let c = code(sample);
    assert!(c.contains("monoio") && c.contains("Instant::now"));
    assert!(!c.contains("// clock") && !c.contains("use std::fs"), "comments and tests are left out");
}

/// The durability order is written twice (the spool module's doc and
/// ARCHITECTURE.md); the two must say the same thing.
#[test]
fn the_durability_order_is_the_same_in_both_places() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = |text: &str, start: &str, end: &str| -> String {
        let from = text.find(start).unwrap_or_else(|| panic!("no {start:?}"));
        let to = from + text[from..].find(end).unwrap_or_else(|| panic!("no {end:?}"));
        text[from..to].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let module = std::fs::read_to_string(root.join("src/spool/mod.rs")).unwrap();
    let module: String =
        module.lines().map(|l| l.strip_prefix("//!").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let a = list(&module, "1. The session receives", "Recovery scans");
    let b = list(&arch, "1. The session receives", "Recovery scans");
    assert!(a.contains("10. Compaction"), "{a}");
    assert_eq!(a, b);
}
