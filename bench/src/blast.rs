//! `blast`: N connections, M messages, measured from MAIL FROM to the final 250
//! (and, separately, from the end of the content to that 250: the server's
//! store latency as the client sees it). With `--rate`, messages start on a
//! fixed schedule instead of as fast as the server answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use monoio::net::TcpStream;
use ringpost::rt::transport::{ReadOutcome, Transport};

/// Timestamp header the sink reads for end-to-end latency (Unix microseconds).
pub const SENT_HEADER: &str = "X-Ringpost-Bench-Sent";

/// The load: the same for `blast` and `compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per connection before QUIT and reconnect (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub per_connection: u64,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pub pipelining: bool,
    /// STARTTLS before sending (certificates are not verified).
    #[arg(long)]
    pub starttls: bool,
    #[arg(long, default_value = "blast@bench.test")]
    pub from: String,
    #[arg(long, default_value = "sink@example.test")]
    pub to: String,
    /// Spread recipients over this many domains: message n goes to
    /// `<local>@d<n mod N>.<domain of --to>` (0: always --to).
    #[arg(long, default_value_t = 0)]
    pub domains: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Start messages at this many per second in total (0 = as fast as the
    /// server answers). Needs enough connections to carry the rate.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// SMTP server `ip:port`.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub load: Load,
    /// Write the JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    /// Accepted messages per second.
    pub rate: f64,
    /// MAIL FROM to the final 250, microseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// End of the content (the `.` line sent) to the final 250, microseconds.
    pub data_latency: hdrhistogram::Histogram<u64>,
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted,
            "rejected": self.rejected,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
            "rate": self.rate,
            "latency_us": crate::latency_json(&self.latency),
            "data_to_250_us": crate::latency_json(&self.data_latency),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{} accepted, {} rejected, {} errors in {:.2} s: {:.0} msg/s; latency p50 {} us, p99 {} us, max {} us; \
             end of data to 250 p50 {} us, p99 {} us",
            self.accepted,
            self.rejected,
            self.errors,
            self.elapsed_s,
            self.rate,
            self.latency.value_at_quantile(0.5),
            self.latency.value_at_quantile(0.99),
            self.latency.max(),
            self.data_latency.value_at_quantile(0.5),
            self.data_latency.value_at_quantile(0.99),
        )
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = measure(args.target, &args.load, progress)?;
    println!("{}", summary.line());
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{:#}\n", summary.json()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    /// When the last message got its answer, in nanoseconds from the start:
    /// the end of the measured interval.
    last_answer_ns: AtomicU64,
}

/// A connection slot gives up after this many failed connections in a row.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// Runs the load against `target`; a progress bar on stderr if `progress`.
pub fn measure(target: SocketAddr, load: &Load, progress: bool) -> anyhow::Result<Summary> {
    if load.connections == 0 || load.messages == 0 {
        bail!("--connections and --messages must be above 0");
    }
    if !load.rate.is_finite() || load.rate < 0.0 {
        bail!("--rate must be 0 (unpaced) or a positive number of messages per second");
    }
    let threads = crate::threads().min(load.connections);
    let left = Arc::new(AtomicU64::new(load.messages));
    let totals = Arc::new(Totals::default());
    let hist = Arc::new(Mutex::new(Hists::default()));
    let tls = ringpost::rt::transport::opportunistic_client_config().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(load.timeout);
    let pace = Arc::new(Pace { start: started, rate: load.rate, issued: AtomicU64::new(0) });
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let conns = load.connections / threads + usize::from(t < load.connections % threads);
            let shared = Shared {
                target,
                load: load.clone(),
                left: left.clone(),
                totals: totals.clone(),
                hist: hist.clone(),
                tls: tls.clone(),
                pace: pace.clone(),
                deadline,
            };
            std::thread::spawn(move || thread_main(t, conns, shared))
        })
        .collect();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(load.messages);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    while handles.iter().any(|h| !h.is_finished()) {
        if let Some(bar) = &bar {
            let done = totals.accepted.load(Ordering::Relaxed) + totals.rejected.load(Ordering::Relaxed);
            bar.set_position(done);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    let last = totals.last_answer_ns.load(Ordering::Relaxed);
    let elapsed_s = if last > 0 { last as f64 / 1e9 } else { started.elapsed().as_secs_f64() };
    let hists = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let accepted = totals.accepted.load(Ordering::Relaxed);
    Ok(Summary {
        accepted,
        rejected: totals.rejected.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
        elapsed_s,
        rate: accepted as f64 / elapsed_s,
        latency: hists.whole,
        data_latency: hists.data,
    })
}

/// The two latency histograms of a run.
#[derive(Clone)]
struct Hists {
    whole: hdrhistogram::Histogram<u64>,
    data: hdrhistogram::Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Hists {
        Hists { whole: crate::new_histogram(), data: crate::new_histogram() }
    }
}

impl Hists {
    fn add(&mut self, other: &Hists) -> anyhow::Result<()> {
        self.whole.add(&other.whole).context("merge histograms")?;
        self.data.add(&other.data).context("merge histograms")
    }
}

/// The start schedule of `--rate`: message k starts at `start + k / rate`.
struct Pace {
    start: Instant,
    rate: f64,
    issued: AtomicU64,
}

impl Pace {
    /// Waits for the next free start slot (at once when unpaced).
    async fn wait_turn(&self) {
        if self.rate > 0.0 {
            let k = self.issued.fetch_add(1, Ordering::Relaxed);
            let due = self.start + Duration::from_secs_f64(k as f64 / self.rate);
            monoio::time::sleep_until(due.into()).await;
        }
    }
}

/// What every load thread shares.
struct Shared {
    target: SocketAddr,
    load: Load,
    left: Arc<AtomicU64>,
    totals: Arc<Totals>,
    hist: Arc<Mutex<Hists>>,
    tls: Arc<rustls::ClientConfig>,
    pace: Arc<Pace>,
    deadline: Instant,
}

fn thread_main(thread: usize, conns: usize, shared: Shared) -> anyhow::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .context("io_uring runtime")?;
    let shared = Rc::new(shared);
    let hist = shared.hist.clone();
    let local = rt.block_on(async move {
        let local = Rc::new(std::cell::RefCell::new(Hists::default()));
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let (shared, local) = (shared.clone(), local.clone());
                monoio::spawn(async move {
                    let id = thread * 100_000 + c;
                    let mut failures = 0;
                    let deadline = shared.deadline;
                    while shared.left.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                        let r =
                            monoio::time::timeout_at(deadline.into(), connection(id, &shared, &local)).await;
                        if matches!(r, Ok(Ok(()))) {
                            failures = 0;
                            continue;
                        }
                        shared.totals.errors.fetch_add(1, Ordering::Relaxed);
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
    hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(&local)?;
    Ok(())
}

/// Claims one message from the shared budget: its number in the whole run
/// (0, 1, ...), so `--domains` spreads the run, not each connection, over
/// the domains.
fn claim(left: &AtomicU64, total: u64) -> Option<u64> {
    left.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
        .ok()
        .map(|before| total - before)
}

/// A client connection: greeting, EHLO, (STARTTLS, EHLO), messages, QUIT.
async fn connection(id: usize, shared: &Shared, hists: &std::cell::RefCell<Hists>) -> anyhow::Result<()> {
    let (target, load, totals) = (shared.target, &shared.load, &shared.totals);
    let stream = TcpStream::connect(target).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut c =
        Conn { transport: Transport::Plain(stream), buf: Vec::with_capacity(4096), pos: 0, size_ok: false };
    c.expect(220).await?;
    c.send(b"EHLO bench.test\r\n".to_vec()).await?;
    c.expect(250).await?;
    if load.starttls {
        c.send(b"STARTTLS\r\n".to_vec()).await?;
        c.expect(220).await?;
        c.buf.clear();
        c.pos = 0;
        c.transport
            .upgrade_tls_client(shared.tls.clone(), &target.ip().to_string())
            .await
            .context("TLS handshake")?;
        c.send(b"EHLO bench.test\r\n".to_vec()).await?;
        c.expect(250).await?;
    }
    let mut sent = 0u64;
    while load.per_connection == 0 || sent < load.per_connection {
        let Some(n) = claim(&shared.left, load.messages) else { break };
        shared.pace.wait_turn().await;
        sent += 1;
        let t0 = Instant::now();
        if let Some(data_sent) = c.transaction(load, id, n).await? {
            totals.accepted.fetch_add(1, Ordering::Relaxed);
            let mut h = hists.borrow_mut();
            let _ = h.whole.record(t0.elapsed().as_micros().max(1) as u64);
            let _ = h.data.record(data_sent.elapsed().as_micros().max(1) as u64);
        } else {
            totals.rejected.fetch_add(1, Ordering::Relaxed);
        }
        let at = shared.pace.start.elapsed().as_nanos() as u64;
        totals.last_answer_ns.fetch_max(at, Ordering::Relaxed);
    }
    c.send(b"QUIT\r\n".to_vec()).await?;
    let _ = c.reply().await;
    c.transport.close().await;
    Ok(())
}

struct Conn {
    transport: Transport,
    buf: Vec<u8>,
    pos: usize,
    /// The server advertised SIZE (RFC 1870): declare each message's size.
    size_ok: bool,
}

impl Conn {
    async fn send(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        let (res, _) = self.transport.write_all(data).await;
        res.context("write")?;
        Ok(())
    }

    /// Reads one whole reply; returns its code.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            while let Some(nl) = memchr::memchr(b'\n', &self.buf[self.pos..]) {
                let line = &self.buf[self.pos..self.pos + nl + 1];
                self.pos += nl + 1;
                if line.len() < 4 {
                    bail!("short reply line");
                }
                if line[4..].len() >= 4 && line[4..8].eq_ignore_ascii_case(b"SIZE") {
                    self.size_ok = true;
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
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = self.transport.read(buf, monoio::io::Canceller::new().handle()).await;
            self.buf = buf;
            match res.context("read")? {
                ReadOutcome::Data(_) => {}
                _ => bail!("server closed the connection"),
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

    /// One message. Ok(Some(when the content was sent)): accepted;
    /// Ok(None): refused somewhere.
    async fn transaction(&mut self, load: &Load, id: usize, n: u64) -> anyhow::Result<Option<Instant>> {
        let content = message(load, id, n);
        let size = if self.size_ok { format!(" SIZE={}", content.len() - 3) } else { String::new() };
        let to = recipient(load, n);
        let envelope = format!("MAIL FROM:<{}>{size}\r\nRCPT TO:<{to}>\r\nDATA\r\n", load.from);
        if load.pipelining {
            self.send(envelope.into_bytes()).await?;
            let codes = [self.reply().await?, self.reply().await?, self.reply().await?];
            if codes != [250, 250, 354] {
                if codes[2] == 354 {
                    self.send(b".\r\n".to_vec()).await?;
                    self.reply().await?;
                }
                self.send(b"RSET\r\n".to_vec()).await?;
                self.reply().await?;
                return Ok(None);
            }
        } else {
            for (line, want) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
                self.send(line.as_bytes().to_vec()).await?;
                if self.reply().await? != want {
                    self.send(b"RSET\r\n".to_vec()).await?;
                    self.reply().await?;
                    return Ok(None);
                }
            }
        }
        self.send(content).await?;
        let sent = Instant::now();
        Ok((self.reply().await? == 250).then_some(sent))
    }
}

/// The recipient of message `n` (see `--domains`).
fn recipient(load: &Load, n: u64) -> String {
    match (load.domains, load.to.split_once('@')) {
        (0, _) | (_, None) => load.to.clone(),
        (d, Some((local, domain))) => format!("{local}@d{}.{domain}", n % d),
    }
}

/// A message of about `load.size` bytes, ending with the `.` line.
fn message(load: &Load, id: usize, n: u64) -> Vec<u8> {
    let sent_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: bench {id}-{n}\r\nMessage-ID: <{id}.{n}.{sent_us}@bench.test>\r\n{SENT_HEADER}: {sent_us}\r\n\r\n",
        load.from,
        recipient(load, n)
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n";
    while m.len() + line.len() <= load.size {
        m.extend_from_slice(line);
    }
    let rest = load.size.saturating_sub(m.len() + 2);
    m.extend_from_slice(&line[..rest.min(line.len() - 2)]);
    m.extend_from_slice(b"\r\n.\r\n");
    m
}
