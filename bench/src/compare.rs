//! `compare`: the same load against several SMTP servers, interleaved
//! (A B C A B C ...), with medians, ratios to the first target and an SVG
//! chart of throughput and latency.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets = args.targets.iter().map(|t| parse_target(t)).collect::<anyhow::Result<Vec<_>>>()?;
    if targets.len() < 2 {
        bail!("compare needs at least two --target NAME=ip:port");
    }
    let mut results: Vec<Vec<Summary>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        for (i, (name, addr)) in targets.iter().enumerate() {
            let s = blast::measure(*addr, &args.load, false)?;
            eprintln!("round {round} {name}: {}", s.line());
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
        })
        .collect();
    let base = rows[0].rate.max(f64::MIN_POSITIVE);
    println!("| target | msg/s (median) | vs {} | latency p50 us | p99 us | runs msg/s |", rows[0].name);
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let runs: Vec<String> = r.runs.iter().map(|x| format!("{x:.0}")).collect();
        println!(
            "| {} | {:.0} | {:.2}x | {:.0} | {:.0} | {} |",
            r.name,
            r.rate,
            r.rate / base,
            r.p50,
            r.p99,
            runs.join(" ")
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "load": format!("{:?}", args.load),
            "targets": rows.iter().zip(&results).map(|(r, runs)| serde_json::json!({
                "name": r.name, "rate_median": r.rate, "p50_us": r.p50, "p99_us": r.p99,
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
}
