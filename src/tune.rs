//! `ringpost tune check`: compares the running kernel and process limits with
//! what a runtime profile expects, and says how to fix each difference.
//! The profiles' config presets and the sysctl file live in `tuning/`.

use std::fmt::Write as _;
use std::path::Path;

/// What a profile wants from one sysctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A single number at least this.
    AtLeast(u64),
    /// Exactly this (e.g. `0` for io_uring_disabled).
    Exactly(u64),
    /// A range `low high`: low at most the first, high at least the second.
    Range(u64, u64),
    /// A triple `min default max`: max at least this.
    MaxAtLeast(u64),
}

/// A runtime profile: a config preset plus the kernel and limits it needs.
#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    pub about: &'static str,
    pub sysctls: &'static [(&'static str, Want, &'static str)],
    /// Open files (RLIMIT_NOFILE, soft).
    pub nofile: u64,
    /// The preset config (tuning/profiles/NAME.toml).
    pub preset: &'static str,
}

const COMMON: &[(&str, Want, &str)] = &[
    ("kernel/io_uring_disabled", Want::Exactly(0), "ringpost needs io_uring"),
    ("fs/file-max", Want::AtLeast(2_097_152), "room for every socket and segment file"),
    ("fs/nr_open", Want::AtLeast(1_048_576), "lets LimitNOFILE go this high"),
];

const THROUGHPUT: &[(&str, Want, &str)] = &[
    ("net/core/somaxconn", Want::AtLeast(65_535), "accept queue per listener: bursts of connections"),
    ("net/ipv4/tcp_max_syn_backlog", Want::AtLeast(65_535), "half-open connections waiting for accept"),
    ("net/ipv4/ip_local_port_range", Want::Range(1024, 65_535), "source ports for many outbound connections"),
    ("net/ipv4/tcp_tw_reuse", Want::Exactly(1), "reuse TIME_WAIT sockets for new outbound connections"),
    ("net/core/netdev_max_backlog", Want::AtLeast(16_384), "packets queued before the stack drops them"),
    ("net/core/rmem_max", Want::AtLeast(16_777_216), "large receive buffers for 100 KiB+ messages"),
    ("net/core/wmem_max", Want::AtLeast(16_777_216), "large send buffers"),
    ("net/ipv4/tcp_rmem", Want::MaxAtLeast(16_777_216), "autotuning may grow receive buffers this far"),
    ("net/ipv4/tcp_wmem", Want::MaxAtLeast(16_777_216), "autotuning may grow send buffers this far"),
];

const LATENCY: &[(&str, Want, &str)] = &[
    ("net/core/somaxconn", Want::AtLeast(8192), "accept queue per listener"),
    ("net/ipv4/tcp_max_syn_backlog", Want::AtLeast(8192), "half-open connections waiting for accept"),
    ("net/ipv4/ip_local_port_range", Want::Range(1024, 65_535), "source ports for outbound connections"),
    ("net/ipv4/tcp_tw_reuse", Want::Exactly(1), "reuse TIME_WAIT sockets"),
];

const LOW_MEMORY: &[(&str, Want, &str)] = &[
    ("net/core/somaxconn", Want::AtLeast(4096), "accept queue per listener"),
    ("net/ipv4/ip_local_port_range", Want::Range(1024, 65_535), "source ports for outbound connections"),
];

/// The built-in profiles.
pub fn profiles() -> [Profile; 3] {
    [
        Profile {
            name: "throughput",
            about: "bulk sending: many connections, group commit with many messages per fdatasync",
            sysctls: THROUGHPUT,
            nofile: 1_048_576,
            preset: include_str!("../tuning/profiles/throughput.toml"),
        },
        Profile {
            name: "latency",
            about: "interactive submission: short waits, fewer connections",
            sysctls: LATENCY,
            nofile: 65_536,
            preset: include_str!("../tuning/profiles/latency.toml"),
        },
        Profile {
            name: "low-memory",
            about: "small machines: bounded buffers and caches",
            sysctls: LOW_MEMORY,
            nofile: 16_384,
            preset: include_str!("../tuning/profiles/low-memory.toml"),
        },
    ]
}

/// Whether `current` (the text of a /proc/sys file) satisfies `want`.
pub fn satisfies(current: &str, want: Want) -> bool {
    let nums: Vec<u64> = current.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    match (want, nums.as_slice()) {
        (Want::AtLeast(n), [v, ..]) => *v >= n,
        (Want::Exactly(n), [v, ..]) => *v == n,
        (Want::Range(lo, hi), [a, b, ..]) => *a <= lo && *b >= hi,
        (Want::MaxAtLeast(n), [_, _, max, ..]) => *max >= n,
        _ => false,
    }
}

fn wanted_value(current: &str, want: Want) -> String {
    match want {
        Want::AtLeast(n) | Want::Exactly(n) => n.to_string(),
        Want::Range(lo, hi) => format!("{lo} {hi}"),
        Want::MaxAtLeast(n) => {
            let nums: Vec<&str> = current.split_whitespace().collect();
            format!("{} {} {n}", nums.first().unwrap_or(&"4096"), nums.get(1).unwrap_or(&"87380"))
        }
    }
}

/// The open-files limit (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Checks the running system against `profile` (reading under `proc_sys`,
/// normally `/proc/sys`). Returns the report and whether anything differs.
/// `connections`: the config's connection limit, if known, to check open files.
pub fn check(
    profile: &Profile,
    proc_sys: &Path,
    nofile: (u64, u64),
    connections: Option<u64>,
) -> (String, bool) {
    let mut out = format!("profile {}: {}\n", profile.name, profile.about);
    let mut differs = false;
    for (key, want, why) in COMMON.iter().chain(profile.sysctls) {
        let name = key.replace('/', ".");
        let Ok(current) = std::fs::read_to_string(proc_sys.join(key)) else {
            if *key != "kernel/io_uring_disabled" {
                let _ = writeln!(out, "  ?  {name}: not readable here");
            }
            continue;
        };
        let current = current.split_whitespace().collect::<Vec<_>>().join(" ");
        if satisfies(&current, *want) {
            let _ = writeln!(out, "  ok {name} = {current}");
        } else {
            differs = true;
            let value = wanted_value(&current, *want);
            let _ = writeln!(out, "  !! {name} = {current}; want {value} ({why})\n     fix: sysctl -w {name}=\"{value}\"  (persist: tuning/sysctl.d/90-ringpost.conf)");
        }
    }
    let need = profile.nofile.max(connections.map_or(0, |c| 2 * c + 1024));
    if nofile.0 >= need {
        let _ = writeln!(out, "  ok open files (RLIMIT_NOFILE) = {}", nofile.0);
    } else {
        differs = true;
        let _ = writeln!(
            out,
            "  !! open files (RLIMIT_NOFILE) = {} (hard {}); want {need}: every connection is a descriptor, \
             inbound and outbound\n     fix: LimitNOFILE={need} in the systemd unit (tuning/ringpost.service), or ulimit -n {need}",
            nofile.0, nofile.1
        );
    }
    (out, differs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants() {
        assert!(satisfies("65535", Want::AtLeast(4096)));
        assert!(!satisfies("128", Want::AtLeast(4096)));
        assert!(satisfies("0", Want::Exactly(0)));
        assert!(satisfies("1024\t65535", Want::Range(1024, 65535)));
        assert!(!satisfies("32768 60999", Want::Range(1024, 65535)));
        assert!(satisfies("4096 131072 16777216", Want::MaxAtLeast(16_777_216)));
        assert!(!satisfies("4096 131072 6291456", Want::MaxAtLeast(16_777_216)));
        assert!(!satisfies("", Want::AtLeast(1)));
    }

    #[test]
    fn check_reports_differences_and_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |k: &str, v: &str| {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        write("net/core/somaxconn", "4096\n");
        write("net/ipv4/ip_local_port_range", "32768\t60999\n");
        write("fs/file-max", "9223372036854775807\n");
        write("fs/nr_open", "1048576\n");
        write("kernel/io_uring_disabled", "0\n");
        let low = &profiles()[2];
        let (report, differs) = check(low, dir.path(), (20_000, 20_000), None);
        assert!(differs, "{report}");
        assert!(report.contains("ok net.core.somaxconn = 4096"), "{report}");
        assert!(
            report.contains("!! net.ipv4.ip_local_port_range = 32768 60999; want 1024 65535"),
            "{report}"
        );
        assert!(report.contains("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""), "{report}");
        assert!(report.contains("ok open files"), "{report}");
        write("net/ipv4/ip_local_port_range", "1024 65535\n");
        let (report, differs) = check(low, dir.path(), (20_000, 20_000), None);
        assert!(!differs, "{report}");
        let (report, differs) = check(low, dir.path(), (20_000, 20_000), Some(10_000));
        assert!(differs && report.contains("want 21024"), "{report}");
    }

    #[test]
    fn presets_are_valid_configs() {
        for p in profiles() {
            crate::config::Config::parse(p.preset, p.name).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
    }
}
