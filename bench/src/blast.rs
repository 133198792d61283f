//! `blast`: N connections, M messages, measured from MAIL FROM to the final 250.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Timestamp header the sink reads for end-to-end latency (Unix microseconds).
pub const SENT_HEADER: &str = "X-Ringpost-Bench-Sent";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// SMTP server `ip:port`.
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per connection before QUIT and reconnect (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pipelining: bool,
    #[arg(long, default_value = "blast@bench.test")]
    from: String,
    #[arg(long, default_value = "sink@example.test")]
    to: String,
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// A connection slot gives up after this many failed connections in a row.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

#[derive(Default)]
struct Totals {
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 || args.messages == 0 {
        bail!("--connections and --messages must be above 0");
    }
    let threads = crate::threads().min(args.connections);
    let left = Arc::new(AtomicU64::new(args.messages));
    let totals = Arc::new(Totals::default());
    let hist = Arc::new(Mutex::new(crate::new_histogram()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let conns = args.connections / threads + usize::from(t < args.connections % threads);
            let (args, left, totals, hist) = (args.clone(), left.clone(), totals.clone(), hist.clone());
            std::thread::spawn(move || thread_main(t, conns, args, left, totals, hist, deadline))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hist = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let accepted = totals.accepted.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "accepted": accepted,
        "rejected": totals.rejected.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "elapsed_s": elapsed,
        "rate": accepted as f64 / elapsed,
        "latency_us": crate::latency_json(&hist),
    });
    println!(
        "{accepted} accepted, {} rejected, {} errors in {elapsed:.2} s: {:.0} msg/s; latency p50 {} us, p99 {} us, max {} us",
        summary["rejected"],
        summary["errors"],
        accepted as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{summary:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn thread_main(
    thread: usize,
    conns: usize,
    args: Args,
    left: Arc<AtomicU64>,
    totals: Arc<Totals>,
    hist: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .context("io_uring runtime")?;
    let local = rt.block_on(async move {
        let local = Rc::new(std::cell::RefCell::new(crate::new_histogram()));
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let (args, left, totals, local) = (args.clone(), left.clone(), totals.clone(), local.clone());
                monoio::spawn(async move {
                    let id = thread * 100_000 + c;
                    let mut failures = 0;
                    while left.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                        let r = monoio::time::timeout_at(
                            deadline.into(),
                            connection(id, &args, &left, &totals, &local),
                        )
                        .await;
                        if matches!(r, Ok(Ok(()))) {
                            failures = 0;
                            continue;
                        }
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        failures += 1;
                        if failures >= MAX_CONSECUTIVE_FAILURES {
                            break; // the target is down or refusing us: stop this connection
                        }
                        monoio::time::sleep(Duration::from_millis(10 << failures)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        Rc::try_unwrap(local).map(|c| c.into_inner()).unwrap_or_else(|rc| rc.borrow().clone())
    });
    hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(&local).context("merge histograms")?;
    Ok(())
}

/// Claims one message from the shared budget.
fn claim(left: &AtomicU64) -> bool {
    left.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}

/// A client connection: greeting, EHLO, messages, QUIT.
async fn connection(
    id: usize,
    args: &Args,
    left: &AtomicU64,
    totals: &Totals,
    hist: &std::cell::RefCell<hdrhistogram::Histogram<u64>>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(args.target).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut c = Conn { stream, buf: Vec::with_capacity(4096), pos: 0 };
    c.expect(220).await?;
    c.send(b"EHLO bench.test\r\n".to_vec()).await?;
    c.expect(250).await?;
    let mut sent = 0u64;
    while args.per_connection == 0 || sent < args.per_connection {
        if !claim(left) {
            break;
        }
        sent += 1;
        let t0 = Instant::now();
        match c.transaction(args, id, sent).await? {
            true => {
                totals.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = hist.borrow_mut().record(t0.elapsed().as_micros().max(1) as u64);
            }
            false => {
                totals.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    c.send(b"QUIT\r\n".to_vec()).await?;
    let _ = c.reply().await;
    Ok(())
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    async fn send(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        let (res, _) = self.stream.write_all(data).await;
        res.context("write")?;
        Ok(())
    }

    /// Reads one whole reply; returns its code.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            // Complete lines in the buffer: find the last line of a reply.
            while let Some(nl) = memchr::memchr(b'\n', &self.buf[self.pos..]) {
                let line = &self.buf[self.pos..self.pos + nl + 1];
                self.pos += nl + 1;
                if line.len() < 4 {
                    bail!("short reply line");
                }
                if line[3] != b'-' {
                    let code = std::str::from_utf8(&line[..3])?.parse()?;
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    return Ok(code);
                }
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = std::mem::take(&mut self.buf);
            chunk.reserve(4096);
            let len = chunk.len();
            let cap = chunk.capacity();
            let (res, slice) = self.stream.read(monoio::buf::IoBufMut::slice_mut(chunk, len..cap)).await;
            self.buf = slice.into_inner();
            if res.context("read")? == 0 {
                bail!("server closed the connection");
            }
        }
    }

    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        let got = self.reply().await?;
        if got != code {
            bail!("expected {code}, got {got}");
        }
        Ok(())
    }

    /// One message. Ok(true): accepted; Ok(false): refused somewhere.
    async fn transaction(&mut self, args: &Args, id: usize, n: u64) -> anyhow::Result<bool> {
        let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", args.from, args.to);
        if args.pipelining {
            self.send(envelope.into_bytes()).await?;
            let codes = [self.reply().await?, self.reply().await?, self.reply().await?];
            if codes != [250, 250, 354] {
                if codes[2] == 354 {
                    self.send(b".\r\n".to_vec()).await?;
                    self.reply().await?;
                }
                self.send(b"RSET\r\n".to_vec()).await?;
                self.reply().await?;
                return Ok(false);
            }
        } else {
            for (line, want) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
                self.send(line.as_bytes().to_vec()).await?;
                if self.reply().await? != want {
                    self.send(b"RSET\r\n".to_vec()).await?;
                    self.reply().await?;
                    return Ok(false);
                }
            }
        }
        self.send(message(args, id, n)).await?;
        Ok(self.reply().await? == 250)
    }
}

/// A message of about `args.size` bytes, ending with the `.` line.
fn message(args: &Args, id: usize, n: u64) -> Vec<u8> {
    let sent_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: bench {id}-{n}\r\nMessage-ID: <{id}.{n}.{sent_us}@bench.test>\r\n{SENT_HEADER}: {sent_us}\r\n\r\n",
        args.from, args.to
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n";
    while m.len() + line.len() <= args.size {
        m.extend_from_slice(line);
    }
    let rest = args.size.saturating_sub(m.len() + 2);
    m.extend_from_slice(&line[..rest.min(line.len() - 2)]);
    m.extend_from_slice(b"\r\n.\r\n");
    m
}
