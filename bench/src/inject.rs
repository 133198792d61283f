//! `inject`: POSTs injection API requests (`/api/inject/v1`) with many
//! personalised recipients each, one after another on one keep-alive
//! connection, and reports messages per second from the first byte sent
//! to the last answer (each answer comes once its messages are durable).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The `kind = "http"` listener, `ip:port`.
    #[arg(long)]
    pub target: SocketAddr,
    /// Bearer token (`[[http_token]]`).
    #[arg(long)]
    pub token: String,
    /// Recipients per request (one personalised message each).
    #[arg(long, default_value_t = 10_000)]
    pub recipients: usize,
    /// Requests, one after another.
    #[arg(long, default_value_t = 1)]
    pub requests: usize,
    /// Size of each built message in bytes (about: the text body is sized
    /// so that headers and body come near it).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value = "blast@bench.test")]
    pub from: String,
    /// Recipients are `r<N>@` this domain.
    #[arg(long, default_value = "example.test")]
    pub domain: String,
    /// Give up on one answer after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Write the JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The request body: structured content with placeholders, each
/// recipient with its own substitutions.
pub fn request(a: &Args, first: usize) -> String {
    // Headers the builder writes come to about 420 bytes with ours.
    let text_len = a.size.saturating_sub(420).max(16);
    let line = "Hello {{ name }}, this is line {{ n }} of your personal offer. ";
    let mut text = String::with_capacity(text_len + line.len());
    while text.len() < text_len {
        text.push_str(line);
        if text.len() % 76 < line.len() {
            text.push('\n');
        }
    }
    text.truncate(text_len);
    let recipients: Vec<serde_json::Value> = (first..first + a.recipients)
        .map(|i| {
            serde_json::json!({"email": format!("r{i}@{}", a.domain),
                               "substitutions": {"name": format!("Reader {i}"), "n": i}})
        })
        .collect();
    serde_json::json!({
        "envelope_sender": a.from,
        "campaign": "bench",
        "content": {"from": {"email": a.from, "name": "Bench"}, "subject": "Offer for {{ name }}",
                    "text_body": text},
        "recipients": recipients,
    })
    .to_string()
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let bodies: Vec<String> = (0..a.requests).map(|r| request(a, r * a.recipients)).collect();
    let mut s = TcpStream::connect(a.target).with_context(|| format!("connect {}", a.target))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(a.timeout)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut per_request = Vec::new();
    let started = Instant::now();
    for body in &bodies {
        let t = Instant::now();
        write!(
            s,
            "POST /api/inject/v1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            a.target,
            a.token,
            body.len()
        )?;
        s.write_all(body.as_bytes())?;
        let (status, answer) = read_response(&mut reader)?;
        if status != 200 {
            bail!("answer {status}: {answer}");
        }
        let v: serde_json::Value = serde_json::from_str(&answer).context("answer is not JSON")?;
        ok += v["success_count"].as_u64().unwrap_or(0);
        failed += v["fail_count"].as_u64().unwrap_or(0);
        per_request.push(t.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = ok as f64 / elapsed;
    println!(
        "inject: {ok} queued, {failed} failed in {} requests, {elapsed:.3} s, {rate:.0} msg/s",
        bodies.len()
    );
    if let Some(path) = &a.json {
        let body_bytes: usize = bodies.iter().map(String::len).sum();
        let summary = serde_json::json!({
            "accepted": ok, "failed": failed, "elapsed_s": elapsed, "rate": rate,
            "requests": bodies.len(), "recipients_per_request": a.recipients,
            "request_bytes": body_bytes, "request_s": per_request,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(())
}

/// One HTTP/1.1 answer with a Content-Length body.
fn read_response(r: &mut impl BufRead) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status line")?;
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed in the answer's head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().context("bad Content-Length")?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
