//! `sink`: a fast SMTP receiver that stores nothing. Counts messages and, when
//! the blaster's timestamp header is present, end-to-end latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::blast::SENT_HEADER;

type Hist = Arc<Mutex<hdrhistogram::Histogram<u64>>>;

/// How some listeners misbehave (the rest answer at once).
#[derive(Debug, Default)]
pub struct Behaviours {
    /// Delay before every reply, in milliseconds.
    pub slow: std::collections::HashMap<SocketAddr, u64>,
    /// Greet with 421 and hang up.
    pub throttle: std::collections::HashSet<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Normal,
    Slow(Duration),
    Throttle,
}

pub fn run(
    listen: &[SocketAddr],
    behaviours: &Behaviours,
    json: Option<PathBuf>,
    expect: Option<u64>,
    timeout: u64,
    count_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Messages taken by normal listeners (what --expect and --count-file
    // count), and by slow ones.
    let count = Arc::new(AtomicU64::new(0));
    let slow_count = Arc::new(AtomicU64::new(0));
    let threads = crate::threads();
    let mut hists = Vec::new();
    for _ in 0..threads {
        let mut listeners = Vec::new();
        for &addr in listen {
            let mode = match (behaviours.slow.get(&addr), behaviours.throttle.contains(&addr)) {
                (_, true) => Mode::Throttle,
                (Some(&ms), false) => Mode::Slow(Duration::from_millis(ms)),
                (None, false) => Mode::Normal,
            };
            listeners.push((bind(addr).with_context(|| format!("listen on {addr}"))?, mode));
        }
        let hist: Hist = Arc::new(Mutex::new(crate::new_histogram()));
        hists.push(hist.clone());
        let (count, slow_count) = (count.clone(), slow_count.clone());
        std::thread::spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build();
            let Ok(mut rt) = rt else {
                eprintln!("ringpost-bench sink: no io_uring runtime");
                std::process::exit(1);
            };
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (std_listener, mode) in listeners {
                    let Ok(listener) = TcpListener::from_std(std_listener) else { return };
                    let count =
                        if matches!(mode, Mode::Slow(_)) { slow_count.clone() } else { count.clone() };
                    let hist = hist.clone();
                    tasks.push(monoio::spawn(async move {
                        while let Ok((stream, _)) = listener.accept().await {
                            monoio::spawn(serve(stream, count.clone(), hist.clone(), mode));
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            });
        });
    }
    match listen {
        [one] => println!("ringpost-bench sink: listening on {one}"),
        many => println!("ringpost-bench sink: listening on {} addresses", many.len()),
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout);
    let mut published = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let n = count.load(Ordering::Relaxed);
        if let Some(path) = &count_file {
            if published != Some(n) {
                publish_count(path, n).with_context(|| format!("writing {}", path.display()))?;
                published = Some(n);
            }
        }
        if expect.is_some_and(|e| n >= e) || Instant::now() >= deadline {
            break;
        }
    }
    let mut all = crate::new_histogram();
    for h in &hists {
        if let Ok(h) = h.lock() {
            let _ = all.add(&*h);
        }
    }
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "received": n,
        "received_slow": slow_count.load(Ordering::Relaxed),
        "elapsed_s": elapsed,
        "rate": n as f64 / elapsed,
        "end_to_end_us": crate::latency_json(&all),
    });
    println!(
        "received {n} messages in {elapsed:.2} s; end-to-end p50 {} us, p99 {} us",
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99)
    );
    if let Some(path) = json {
        std::fs::write(&path, format!("{summary:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Serving threads are still blocked in accept; the summary is out, so end here.
    std::process::exit(0);
}

/// Replaces the count file atomically (a reader never sees a partial number).
fn publish_count(path: &std::path::Path, n: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{n}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Reads a count file written by a sink (`None` until there is one).
pub fn read_count(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One listening socket per thread on the same port (SO_REUSEPORT), so each
/// thread has its own accept queue.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

async fn serve(mut stream: TcpStream, count: Arc<AtomicU64>, hist: Hist, mode: Mode) {
    let _ = stream.set_nodelay(true);
    let delay = match mode {
        Mode::Throttle => {
            let _ = write(&mut stream, b"421 4.7.0 sink.test Too many connections, slow down\r\n").await;
            return;
        }
        Mode::Slow(d) => Some(d),
        Mode::Normal => None,
    };
    if let Some(d) = delay {
        monoio::time::sleep(d).await;
    }
    if write(&mut stream, b"220 sink.test ESMTP ringpost-bench\r\n").await.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    // In command mode: start of unparsed input. In data mode: how far the
    // end marker has been searched (the data starts at 0 with the DATA line's CRLF).
    let mut pos: usize = 0;
    let mut in_data = false;
    let mut out = Vec::with_capacity(256);
    loop {
        // Handle everything complete in the buffer.
        loop {
            if in_data {
                let from = pos.saturating_sub(4);
                let Some(i) = memchr::memmem::find(&buf[from..], b"\r\n.\r\n") else {
                    pos = buf.len();
                    break;
                };
                let end = from + i + 5;
                record_latency(&buf[..end], &hist);
                count.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                buf.drain(..end);
                pos = 0;
                in_data = false;
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else { break };
            let line = buf[pos..pos + nl + 1].to_ascii_uppercase();
            pos += nl + 1;
            if line.starts_with(b"EHLO") {
                out.extend_from_slice(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
            } else if line.starts_with(b"DATA") {
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                // The data starts after the DATA line; keep its CRLF for the end match.
                buf.drain(..pos - 2);
                pos = 0;
                in_data = true;
            } else if line.starts_with(b"QUIT") {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                let _ = write(&mut stream, &out).await;
                return;
            } else {
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
        }
        if !in_data && pos > 0 {
            buf.drain(..pos);
            pos = 0;
        }
        if !out.is_empty() {
            if let Some(d) = delay {
                monoio::time::sleep(d).await;
            }
            if write(&mut stream, &out).await.is_err() {
                return;
            }
            out.clear();
        }
        let mut chunk = std::mem::take(&mut buf);
        chunk.reserve(16 * 1024);
        let (len, cap) = (chunk.len(), chunk.capacity());
        let (res, slice) = stream.read(monoio::buf::IoBufMut::slice_mut(chunk, len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let (res, _) = stream.write_all(data.to_vec()).await;
    res.map(|_| ())
}

fn record_latency(message: &[u8], hist: &Hist) {
    let Some(at) = memchr::memmem::find(message, SENT_HEADER.as_bytes()) else { return };
    let rest = &message[at + SENT_HEADER.len()..];
    let digits: Vec<u8> = rest
        .iter()
        .skip_while(|b| **b == b':' || **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let Some(sent) = std::str::from_utf8(&digits).ok().and_then(|d| d.parse::<u128>().ok()) else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    if let (Some(us), Ok(mut h)) = (now.checked_sub(sent), hist.lock()) {
        let _ = h.record(us.max(1) as u64);
    }
}
