//! `ringpost-bench`: load any SMTP server (`blast`), or receive load (`sink`).
//! Both run one monoio io_uring runtime per thread.
#![allow(clippy::disallowed_methods)] // reason: a load tool reads the clock and sleeps by design

mod blast;
mod compare;
mod inject;
mod lazyfs;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringpost-bench", version, about = "SMTP load harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages to an SMTP server over many connections.
    Blast(blast::Args),
    /// POST injection API requests with many personalised recipients each.
    Inject(inject::Args),
    /// The same load against several servers, interleaved, with ratios and a chart.
    Compare(compare::Args),
    /// A FUSE filesystem that loses unsynced writes on command (power cuts).
    Lazyfs(lazyfs::Args),
    /// Receive messages and count them (and their end-to-end latency).
    Sink {
        /// Address to listen on (repeat for several: one process plays many
        /// receivers).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Listeners that wait this long before every reply, as `ADDR=MS`
        /// (a slow receiver). Their messages are counted apart (`slow`).
        #[arg(long, value_parser = parse_slow)]
        slow: Vec<(SocketAddr, u64)>,
        /// Listeners that greet with `421 4.7.0` and hang up (a throttling
        /// receiver).
        #[arg(long)]
        throttle: Vec<SocketAddr>,
        /// Write a JSON summary here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Exit after this many messages.
        #[arg(long)]
        expect: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Keep the number of messages received so far in this file (for
        /// `compare --sink-count`).
        #[arg(long)]
        count_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Blast(args) => blast::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Inject(args) => inject::run(&args),
        Command::Lazyfs(args) => lazyfs::run(&args),
        Command::Sink { listen, slow, throttle, json, expect, timeout, count_file } => {
            let behaviour = sink::Behaviours {
                slow: slow.into_iter().collect(),
                throttle: throttle.into_iter().collect(),
            };
            sink::run(&listen, &behaviour, json, expect, timeout, count_file)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpost-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn parse_slow(s: &str) -> Result<(SocketAddr, u64), String> {
    let (addr, ms) = s.split_once('=').ok_or("expected ADDR=MS")?;
    Ok((addr.parse().map_err(|e| format!("{addr}: {e}"))?, ms.parse().map_err(|e| format!("{ms}: {e}"))?))
}

/// Percentiles of a latency histogram in microseconds, as JSON.
pub fn latency_json(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// A histogram of 1 us .. 1 h with 3 significant digits.
pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Worker threads to use: one per CPU.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
