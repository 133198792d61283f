//! `compare`: the same load against several SMTP servers, interleaved
//! (A B C A B C ...), with medians, ratios to the first target and an SVG
//! chart of throughput and latency.
//!
//! With `--sink-count` (the count file of the `sink` the targets relay to),
//! each run starts only when the sink has been quiet for a second, so one
//! target's delivery backlog never loads the next target's run; and for the
//! targets named with `--delivers`, the run also waits until the sink has all
//! its messages, which gives the end-to-end rate (accepted, stored and
//! delivered).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::blast::{self, Load, Summary};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `NAME=ip:port`, two or more; ratios are against the first.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Runs per target (interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub load: Load,
    /// Write all runs and medians as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The count file of the sink the targets relay to (`sink --count-file`).
    #[arg(long)]
    pub sink_count: Option<PathBuf>,
    /// A target whose accepted messages all reach that sink: measure its
    /// end-to-end rate too. Repeatable.
    #[arg(long = "delivers")]
    pub delivers: Vec<String>,
}

/// How long the sink must see nothing before a run starts.
const QUIET: Duration = Duration::from_secs(1);
/// Longest wait for a backlog to drain before a run starts anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// Longest wait for a run's messages to reach the sink.
const DELIVERY_LIMIT: Duration = Duration::from_secs(600);

/// Waits until the sink's count has not moved for [`QUIET`]; returns it.
fn settle(path: &Path) -> u64 {
    let started = Instant::now();
    let mut last = crate::sink::read_count(path).unwrap_or(0);
    let mut since = Instant::now();
    while since.elapsed() < QUIET {
        if started.elapsed() > SETTLE_LIMIT {
            eprintln!("compare: the sink is still receiving after {SETTLE_LIMIT:?}; starting anyway");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        let n = crate::sink::read_count(path).unwrap_or(last);
        if n != last {
            last = n;
            since = Instant::now();
        }
    }
    last
}

/// Waits until the sink has counted `want`; returns when it got there
/// (`None` if it never did within [`DELIVERY_LIMIT`] of `started`).
fn delivered_by(path: &Path, want: u64, started: Instant) -> Option<Instant> {
    loop {
        if crate::sink::read_count(path).is_some_and(|n| n >= want) {
            return Some(Instant::now());
        }
        if started.elapsed() > DELIVERY_LIMIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parse_target(t: &str) -> anyhow::Result<(String, SocketAddr)> {
    let (name, addr) = t.split_once('=').with_context(|| format!("target {t:?} must be NAME=ip:port"))?;
    Ok((name.to_owned(), addr.parse().with_context(|| format!("target {t:?}: bad address"))?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians of one target's runs.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    rate: f64,
    p50: f64,
    p99: f64,
    runs: Vec<f64>,
    /// Median end-to-end rate, for targets that deliver to the sink.
    e2e: Option<f64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets = args.targets.iter().map(|t| parse_target(t)).collect::<anyhow::Result<Vec<_>>>()?;
    if targets.len() < 2 {
        bail!("compare needs at least two --target NAME=ip:port");
    }
    for d in &args.delivers {
        if !targets.iter().any(|(name, _)| name == d) {
            bail!("--delivers {d}: no such target");
        }
    }
    if !args.delivers.is_empty() && args.sink_count.is_none() {
        bail!("--delivers needs --sink-count");
    }
    let mut results: Vec<Vec<Summary>> = vec![Vec::new(); targets.len()];
    let mut e2e: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        // Each round starts with the next target: whoever goes first in a
        // round meets a quieter machine (a fresh sink, settled page cache),
        // and that must not always be the same one.
        let n = targets.len();
        for i in (0..n).map(|k| (k + round - 1) % n) {
            let (name, addr) = &targets[i];
            let before = args.sink_count.as_deref().map(settle);
            let started = Instant::now();
            let s = blast::measure(*addr, &args.load, false)?;
            eprintln!("round {round} {name}: {}", s.line());
            if let (Some(path), Some(before), true) = (&args.sink_count, before, args.delivers.contains(name))
            {
                match delivered_by(path, before + s.accepted, started) {
                    Some(done) => {
                        let rate = s.accepted as f64 / done.duration_since(started).as_secs_f64();
                        eprintln!("round {round} {name}: end to end {rate:.0} msg/s");
                        e2e[i].push(rate);
                    }
                    None => eprintln!("round {round} {name}: not all messages reached the sink"),
                }
            }
            results[i].push(s);
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(&results)
        .map(|((name, _), runs)| Row {
            name: name.clone(),
            rate: median(runs.iter().map(|s| s.rate).collect()),
            p50: median(runs.iter().map(|s| s.latency.value_at_quantile(0.5) as f64).collect()),
            p99: median(runs.iter().map(|s| s.latency.value_at_quantile(0.99) as f64).collect()),
            runs: runs.iter().map(|s| s.rate).collect(),
            e2e: None,
        })
        .collect();
    let mut rows = rows;
    for (row, rates) in rows.iter_mut().zip(&e2e) {
        if !rates.is_empty() {
            row.e2e = Some(median(rates.clone()));
        }
    }
    print!("{}", table(&rows));
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "load": format!("{:?}", args.load),
            "targets": rows.iter().zip(&results).map(|(r, runs)| serde_json::json!({
                "name": r.name, "rate_median": r.rate, "p50_us": r.p50, "p99_us": r.p99,
                "end_to_end_rate_median": r.e2e,
                "runs": runs.iter().map(Summary::json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, format!("{json:#}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        chart(path, &rows, &args.load).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The Markdown table of the medians; ratios are against the first row. The
/// end-to-end columns appear when some target has an end-to-end rate.
fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let base = rows[0].rate.max(f64::MIN_POSITIVE);
    let e2e_base = rows[0].e2e.unwrap_or(0.0).max(f64::MIN_POSITIVE);
    let with_e2e = rows.iter().any(|r| r.e2e.is_some());
    let (h, d) = if with_e2e { (" end to end msg/s | vs first |", " --- | --- |") } else { ("", "") };
    let _ = writeln!(
        out,
        "| target | msg/s (median) | vs {} | latency p50 us | p99 us |{h} runs msg/s |",
        rows[0].name
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |{d} --- |");
    for r in rows {
        let runs: Vec<String> = r.runs.iter().map(|x| format!("{x:.0}")).collect();
        let e2e = match (with_e2e, r.e2e) {
            (false, _) => String::new(),
            (true, Some(e)) => format!(" {e:.0} | {:.2}x |", e / e2e_base),
            (true, None) => " - | - |".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2}x | {:.0} | {:.0} |{e2e} {} |",
            r.name,
            r.rate,
            r.rate / base,
            r.p50,
            r.p99,
            runs.join(" ")
        );
    }
    out
}

/// One bar: (target index, height, opacity, inset from the slot's edges).
type Bar = (usize, f64, f64, u32);

/// A bar chart of one value per target on `area`.
fn bars<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    rows: &[Row],
    bars: &[Bar],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.15;
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d((0u32..rows.len() as u32).into_segmented(), 0f64..max.max(1.0))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows.get(*i as usize).map(|r| r.name.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    c.draw_series(bars.iter().map(|&(i, h, opacity, inset)| {
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(i as u32), 0.0), (SegmentValue::Exact(i as u32 + 1), h)],
            Palette99::pick(i).mix(opacity).filled(),
        );
        bar.set_margin(0, 0, inset, inset);
        bar
    }))?;
    Ok(())
}

/// Two bar charts side by side: median throughput, and p50/p99 latency.
fn chart(path: &PathBuf, rows: &[Row], load: &Load) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} connections, {} B messages{}",
        load.connections,
        load.size,
        if load.pipelining { ", pipelining" } else { "" }
    );
    let root = root.titled(&title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(450);
    let rate: Vec<Bar> = rows.iter().enumerate().map(|(i, r)| (i, r.rate, 1.0, 8)).collect();
    bars(&left, "throughput (msg/s, median)", rows, &rate)?;
    let mut latency: Vec<Bar> = rows.iter().enumerate().map(|(i, r)| (i, r.p99, 0.35, 8)).collect();
    latency.extend(rows.iter().enumerate().map(|(i, r)| (i, r.p50, 1.0, 16)));
    bars(&right, "latency MAIL..250 (us): p50 solid, p99 light", rows, &latency)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(parse_target("rp=127.0.0.1:25").unwrap().0, "rp");
        assert!(parse_target("nope").is_err());
    }

    fn row(name: &str, rate: f64, e2e: Option<f64>) -> Row {
        Row { name: name.into(), rate, p50: 10.0, p99: 20.0, runs: vec![rate], e2e }
    }

    #[test]
    fn table_has_ratios_and_end_to_end_only_when_measured() {
        let t = table(&[row("postfix", 100.0, None), row("ringpost", 1000.0, None)]);
        assert!(t.contains("| ringpost | 1000 | 10.00x |"), "{t}");
        assert!(!t.contains("end to end"));
        let t = table(&[
            row("postfix", 100.0, Some(50.0)),
            row("rp", 1000.0, Some(600.0)),
            row("sink", 5.0, None),
        ]);
        assert!(t.contains("| 600 | 12.00x |"), "{t}");
        assert!(t.contains("| sink | 5 | 0.05x | 10 | 20 | - | - | 5 |"), "{t}");
    }

    #[test]
    fn settle_returns_the_quiet_count_and_delivery_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("count");
        std::fs::write(&path, "42\n").unwrap();
        assert_eq!(settle(&path), 42);
        let started = Instant::now();
        assert!(delivered_by(&path, 42, started).is_some());
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&path, "50\n").unwrap();
            })
        };
        let done = delivered_by(&path, 50, started).unwrap();
        assert!(done.duration_since(started) >= Duration::from_millis(200));
        writer.join().unwrap();
    }
}
