//! Webhooks: each `[[webhook]]` has a thread that reads the event journal
//! from its own cursor, POSTs the events as JSON arrays (batched by count
//! and by time) and moves the cursor (written durably) only once the
//! endpoint answered 2xx. An endpoint that fails or is down is retried with
//! backoff; events wait in the journal meanwhile. Order is the journal's, so
//! a message's events arrive in the order they happened; delivery is at
//! least once (a crash between a POST and the cursor's write repeats it).
//!
//! The HTTP client is small on purpose: one POST per connection
//! (`Connection: close`) over plain TCP, the response head parsed with
//! `httparse`. It runs on its own thread, never on a worker.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::log::{segment_path, segments, Wakeup};
use crate::metrics::{Metrics, WebhookCounts};

/// Largest batch body posted.
const MAX_BODY: usize = 8 << 20;
/// A kept connection idle this long is not used again (servers close idle
/// connections after a few seconds; a fresh one avoids the failed try).
const KEEP_IDLE: Duration = Duration::from_secs(4);
/// How much of the journal is read at a time while a batch is filled.
const READ_CHUNK: usize = 64 << 10;
/// Longest wait between two tries of a failing endpoint.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One `[[webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: HttpUrl,
    /// Events per POST at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more events.
    pub batch_wait: Duration,
    /// Connect, send and answer, each.
    pub timeout: Duration,
    /// Extra request headers (`Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// Trust anchors for https besides the system's (PEM).
    pub ca_file: Option<PathBuf>,
}

/// The TLS client for an https webhook: the system's roots plus
/// `ca_file`'s, certificates checked against the URL's host.
pub fn tls_config(s: &WebhookSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::rt::transport::verifying_client_config(s.ca_file.as_deref())
}

/// An `http://` or `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub text: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let (tls, rest) = match s.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(format!("{s:?}: expected http(s)://host[:port]/path")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{s:?}: expected http://host[:port]/path (no user info)"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(|| format!("{s:?}: bad IPv6 address"))?;
            (format!("[{h}]"), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("{s:?}: the path may not hold spaces or control characters"));
        }
        Ok(HttpUrl { text: s.to_owned(), tls, host, port, path: path.to_owned() })
    }

    /// A file name for this webhook's cursor, stable across restarts.
    fn cursor_name(&self) -> String {
        format!("cursor-{:08x}", crc32c::crc32c(self.text.as_bytes()))
    }
}

/// A running webhook thread.
#[derive(Debug)]
pub struct WebhookHandle {
    pub settings: WebhookSettings,
    stop: Arc<AtomicBool>,
    /// The journal segment its cursor is in (older ones it no longer needs).
    position: Arc<AtomicU64>,
}

impl WebhookHandle {
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Where a webhook is in the journal: segment and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    seq: u64,
    offset: u64,
}

/// Bytes of a cursor record: `seq offset crc` padded with spaces, then a
/// newline; always written whole at the start of the file.
const CURSOR_LEN: usize = 64;
/// A moved cursor is made durable at most this often (and when the
/// webhook stops): in between it is written to the page cache only, so
/// kill -9 loses nothing and a power cut posts at most this much again.
const CURSOR_SYNC: Duration = Duration::from_secs(1);

fn encode_cursor(c: Cursor) -> [u8; CURSOR_LEN] {
    let text = format!("{} {}", c.seq, c.offset);
    let line = format!("{text} {:08x}", crc32c::crc32c(text.as_bytes()));
    let mut out = [b' '; CURSOR_LEN];
    out[..line.len().min(CURSOR_LEN - 1)].copy_from_slice(&line.as_bytes()[..line.len().min(CURSOR_LEN - 1)]);
    out[CURSOR_LEN - 1] = b'\n';
    out
}

/// The cursor saved at `path`: `seq offset crc` (or `seq offset`, as
/// written before the checksum); None when absent or damaged.
fn read_cursor(path: &Path) -> Option<Cursor> {
    let text = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (seq, offset) = match fields[..] {
        [seq, offset] => (seq, offset),
        [seq, offset, crc] => {
            let want = u32::from_str_radix(crc, 16).ok()?;
            (crc32c::crc32c(format!("{seq} {offset}").as_bytes()) == want).then_some((seq, offset))?
        }
        _ => return None,
    };
    Some(Cursor { seq: seq.parse().ok()?, offset: offset.parse().ok()? })
}

/// tmp + fsync + rename + directory fsync: the file exists with this
/// cursor for sure (at start; later moves are written in place).
fn write_cursor(path: &Path, c: Cursor) -> std::io::Result<()> {
    crate::spool::recover::replace_file_durable(path, &encode_cursor(c))
}

/// The cursor file, kept open: each move is one write at offset 0 (a
/// record within one sector, checked by its CRC when read back), synced
/// at most every [`CURSOR_SYNC`].
struct CursorFile {
    file: std::fs::File,
    synced_at: Instant,
    dirty: bool,
}

impl CursorFile {
    fn open(path: &Path) -> std::io::Result<CursorFile> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(CursorFile { file, synced_at: crate::rt::clock::instant(), dirty: false })
    }

    fn store(&mut self, c: Cursor, sync: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&encode_cursor(c), 0)?;
        self.dirty = true;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes the last store durable if it is not, or only once
    /// [`CURSOR_SYNC`] has passed since the last sync unless `now`.
    fn sync_due(&mut self, now: bool) -> std::io::Result<()> {
        if self.dirty && (now || self.synced_at.elapsed() >= CURSOR_SYNC) {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.synced_at = crate::rt::clock::instant();
        self.dirty = false;
        Ok(())
    }
}

/// Starts the thread of one webhook.
pub fn start(
    settings: WebhookSettings,
    dir: PathBuf,
    wakeup: Arc<Wakeup>,
    metrics: Arc<Metrics>,
) -> Result<WebhookHandle, String> {
    let cursor_path = dir.join(settings.url.cursor_name());
    // A new webhook starts at the journal's end: it gets what happens from
    // now on, not what other webhooks were sent before it existed.
    let segs = segments(&dir);
    let cursor = match read_cursor(&cursor_path) {
        Some(c) => c,
        None if !cursor_path.exists() => {
            let (seq, size) = segs.last().copied().unwrap_or((1, 0));
            Cursor { seq, offset: size }
        }
        None => {
            // Damaged: post again from the oldest event kept (duplicates, not loss).
            tracing::error!(path = %cursor_path.display(), "webhook cursor unreadable; starting from the oldest event kept");
            Cursor { seq: segs.first().map_or(1, |s| s.0), offset: 0 }
        }
    };
    // Saved at once: after a crash, a webhook that never got anything
    // through resumes here, not at the journal's end.
    write_cursor(&cursor_path, cursor).map_err(|e| format!("{}: {e}", cursor_path.display()))?;
    let cursor_file =
        CursorFile::open(&cursor_path).map_err(|e| format!("{}: {e}", cursor_path.display()))?;
    let tls = if settings.url.tls { Some(tls_config(&settings)?) } else { None };
    let stop = Arc::new(AtomicBool::new(false));
    let position = Arc::new(AtomicU64::new(cursor.seq));
    let mut w = Sender {
        tls,
        settings: settings.clone(),
        dir,
        cursor_path,
        cursor_file,
        cursor,
        segment: None,
        conn: None,
        stop: stop.clone(),
        position: position.clone(),
        wakeup,
        metrics,
        backoff: Duration::ZERO,
        failing_since: None,
    };
    std::thread::Builder::new()
        .name("ringpost-webhook".into())
        .spawn(move || w.run())
        .map_err(|e| format!("cannot start a webhook thread: {e}"))?;
    Ok(WebhookHandle { settings, stop, position })
}

struct Sender {
    /// For an https URL.
    tls: Option<Arc<rustls::ClientConfig>>,
    settings: WebhookSettings,
    dir: PathBuf,
    cursor_path: PathBuf,
    cursor_file: CursorFile,
    cursor: Cursor,
    /// The journal segment the cursor is in, kept open: (seq, file).
    segment: Option<(u64, std::fs::File)>,
    /// The endpoint's connection, kept between POSTs (HTTP/1.1
    /// keep-alive), with when it was last used.
    conn: Option<(Box<dyn ReadWrite>, Instant)>,
    stop: Arc<AtomicBool>,
    position: Arc<AtomicU64>,
    wakeup: Arc<Wakeup>,
    metrics: Arc<Metrics>,
    backoff: Duration,
    failing_since: Option<Instant>,
}

/// Complete lines read from the cursor on, as the JSON array to post.
#[derive(Default)]
struct Batch {
    /// `[line,line,...` (the `]` is added when it is posted).
    body: Vec<u8>,
    lines: usize,
    /// Bytes they take in the journal.
    bytes: u64,
}

impl Sender {
    fn run(&mut self) {
        let mut waiting_since: Option<Instant> = None;
        let mut seen = self.wakeup.current();
        // Lines read while the batch waits to fill: each wake-up reads only
        // what was appended since.
        let mut batch = Batch::default();
        while !self.stop.load(Ordering::Acquire) {
            let res = self.cursor_file.sync_due(false);
            self.cursor_saved(res);
            let segs = segments(&self.dir);
            self.update_backlog(&segs);
            // Our segment was dropped (backlog limit): go on from the oldest left.
            if !segs.iter().any(|s| s.0 == self.cursor.seq) {
                batch = Batch::default();
                match segs.iter().find(|s| s.0 > self.cursor.seq) {
                    Some(&(seq, _)) => self.advance(Cursor { seq, offset: 0 }),
                    None => seen = self.wakeup.wait(seen, Duration::from_secs(1)),
                }
                continue;
            }
            let newer = segs.iter().find(|s| s.0 > self.cursor.seq).map(|s| s.0);
            self.read_more(&mut batch);
            if batch.lines == 0 {
                match newer {
                    // This segment is done (a torn last line, if any, is skipped).
                    Some(seq) => self.advance(Cursor { seq, offset: 0 }),
                    None => seen = self.wakeup.wait(seen, Duration::from_secs(1)),
                }
                continue;
            }
            let full = batch.lines >= self.settings.batch_size;
            let since = *waiting_since.get_or_insert_with(crate::rt::clock::instant);
            let left = self.settings.batch_wait.saturating_sub(since.elapsed());
            if !full && newer.is_none() && !left.is_zero() {
                seen = self.wakeup.wait(seen, left);
                continue;
            }
            waiting_since = None;
            self.deliver(std::mem::take(&mut batch));
        }
        let res = self.cursor_file.sync_due(true);
        self.cursor_saved(res);
    }

    /// Posts one batch until the endpoint takes it (or we are stopped).
    fn deliver(&mut self, mut batch: Batch) {
        batch.body.push(b']');
        while !self.stop.load(Ordering::Acquire) {
            match self.post(&batch.body) {
                Ok(()) => {
                    self.count(|c| {
                        c.posts += 1;
                        c.events += batch.lines as u64;
                    });
                    if let Some(since) = self.failing_since.take() {
                        tracing::info!(url = %self.settings.url.text, down_for_s = since.elapsed().as_secs(),
                            "webhook accepts events again");
                    }
                    self.backoff = Duration::ZERO;
                    let c = Cursor { seq: self.cursor.seq, offset: self.cursor.offset + batch.bytes };
                    self.advance(c);
                    return;
                }
                Err(e) => {
                    self.count(|c| c.failures += 1);
                    if self.failing_since.is_none() {
                        self.failing_since = Some(crate::rt::clock::instant());
                        tracing::warn!(url = %self.settings.url.text, error = %e,
                            "webhook failed; its events wait in the journal and are retried");
                    } else {
                        tracing::debug!(url = %self.settings.url.text, error = %e, "webhook failed again");
                    }
                    self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    let until = crate::rt::clock::instant() + self.backoff;
                    while crate::rt::clock::instant() < until && !self.stop.load(Ordering::Acquire) {
                        #[allow(clippy::disallowed_methods)]
                        // reason: not a worker: the main thread at exit / a webhook thread
                        std::thread::sleep(Duration::from_millis(50).min(self.backoff));
                    }
                }
            }
        }
    }

    /// One POST on the kept connection, or a new one. A kept connection
    /// that fails before any answer (the endpoint closed it while idle) is
    /// replaced at once, once; any other failure is the endpoint's.
    fn post(&mut self, body: &[u8]) -> Result<(), String> {
        let kept = self.conn.take().filter(|(_, used)| used.elapsed() < KEEP_IDLE);
        if let Some((mut stream, _)) = kept {
            match request(&mut stream, &self.settings, "application/json", body, true) {
                Ok(reusable) => {
                    if reusable {
                        self.conn = Some((stream, crate::rt::clock::instant()));
                    }
                    return Ok(());
                }
                Err(e) if e.unanswered => {}
                Err(e) => return Err(e.text),
            }
        }
        let mut stream = connect(&self.settings, self.tls.as_ref())?;
        let reusable =
            request(&mut stream, &self.settings, "application/json", body, true).map_err(|e| e.text)?;
        if reusable {
            self.conn = Some((stream, crate::rt::clock::instant()));
        }
        Ok(())
    }

    /// Moves the cursor: written at once, made durable at once when it
    /// moves to another segment (the event thread may then delete the old
    /// one), else within [`CURSOR_SYNC`].
    fn advance(&mut self, c: Cursor) {
        let new_segment = c.seq != self.cursor.seq;
        self.cursor = c;
        self.position.store(c.seq, Ordering::Release);
        let res = self.cursor_file.store(c, new_segment);
        self.cursor_saved(res);
    }

    fn cursor_saved(&self, res: std::io::Result<()>) {
        if let Err(e) = res {
            tracing::error!(error = %e, path = %self.cursor_path.display(),
                "cannot save the webhook cursor; events may be posted again after a restart");
        }
    }

    /// Adds to `batch` the complete lines after it (it starts at the
    /// cursor), up to the batch size and [`MAX_BODY`] bytes, read
    /// [`READ_CHUNK`] at a time: a batch costs what it holds, not the
    /// backlog behind it, and a wake-up reads only what is new.
    fn read_more(&mut self, batch: &mut Batch) {
        use std::os::unix::fs::FileExt;
        if batch.lines >= self.settings.batch_size || batch.bytes as usize >= MAX_BODY {
            return;
        }
        let seq = self.cursor.seq;
        if self.segment.as_ref().is_none_or(|(s, _)| *s != seq) {
            self.segment = std::fs::File::open(segment_path(&self.dir, seq)).ok().map(|f| (seq, f));
        }
        let Some((_, f)) = self.segment.as_ref() else { return };
        let mut at = self.cursor.offset + batch.bytes;
        let room = MAX_BODY - batch.bytes as usize;
        let mut buf = Vec::new();
        let mut start = 0;
        loop {
            while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
                let line = &buf[start..start + i];
                start += i + 1;
                if !line.is_empty() {
                    batch.body.push(if batch.lines == 0 { b'[' } else { b',' });
                    batch.body.extend_from_slice(line);
                    batch.lines += 1;
                }
                batch.bytes += (i + 1) as u64;
                if batch.lines >= self.settings.batch_size {
                    return;
                }
            }
            if buf.len() >= room {
                return;
            }
            let old = buf.len();
            buf.resize(old + READ_CHUNK.min(room - old), 0);
            match f.read_at(&mut buf[old..], at) {
                Ok(n) if n > 0 => {
                    buf.truncate(old + n);
                    at += n as u64;
                }
                _ => return,
            }
        }
    }

    fn update_backlog(&self, segs: &[(u64, u64)]) {
        let behind: u64 = segs.iter().filter(|s| s.0 >= self.cursor.seq).map(|s| s.1).sum();
        let backlog = behind.saturating_sub(self.cursor.offset);
        self.count(|c| {
            // Say so when the backlog crosses a power of ten (1 MB, 10 MB, ...).
            let order = |b: u64| if b < 1_000_000 { 0 } else { b.ilog10() };
            if order(backlog) > order(c.backlog_bytes) {
                tracing::warn!(url = %self.settings.url.text, backlog_bytes = backlog, "webhook backlog is growing");
            }
            c.backlog_bytes = backlog;
        });
    }

    fn count(&self, f: impl FnOnce(&mut WebhookCounts)) {
        let mut m = self.metrics.webhooks.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(self.settings.url.text.clone()).or_default());
    }
}

/// One POST of `body` as `content_type` on a connection of its own; Ok on
/// a 2xx answer. Blocking: for a thread of its own or the blocking pool.
pub fn post(
    s: &WebhookSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
    content_type: &str,
    body: &[u8],
) -> Result<(), String> {
    let mut stream = connect(s, tls)?;
    request(&mut stream, s, content_type, body, false).map(|_| ()).map_err(|e| e.text)
}

/// A connection to the webhook's host (TLS for https).
fn connect(
    s: &WebhookSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn ReadWrite>, String> {
    let url = &s.url;
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> =
        (host, url.port).to_socket_addrs().map_err(|e| format!("resolve {host}: {e}"))?.collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, s.timeout) {
            Ok(c) => {
                stream = Some(c);
                break;
            }
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    let tcp = stream.ok_or(last)?;
    tcp.set_read_timeout(Some(s.timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(s.timeout)).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    Ok(match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
            let conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("tls: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    })
}

/// Why a request failed, and whether it failed before any answer came
/// (on a reused connection: the server may have closed it meanwhile).
#[derive(Debug)]
struct RequestError {
    text: String,
    unanswered: bool,
}

/// Most bytes of an answer's body read to keep its connection (a larger
/// one closes it).
const MAX_ANSWER_BODY: usize = 1 << 20;

/// Sends one POST on `stream` and reads the answer. Returns whether the
/// connection can carry another request: asked with `keep_alive`, the
/// answer said nothing against it and had a `Content-Length` body (read
/// and dropped here).
fn request(
    stream: &mut Box<dyn ReadWrite>,
    s: &WebhookSettings,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Result<bool, RequestError> {
    let url = &s.url;
    let unanswered = |text: String| RequestError { text, unanswered: true };
    let answered = |text: String| RequestError { text, unanswered: false };
    let host_header = if url.port == if url.tls { 443 } else { 80 } {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: ringpost/{}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{}",
        url.path,
        env!("CARGO_PKG_VERSION"),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" }
    );
    for (k, v) in &s.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| unanswered(format!("send: {e}")))?;
    stream.write_all(body).map_err(|e| unanswered(format!("send: {e}")))?;
    stream.flush().map_err(|e| unanswered(format!("send: {e}")))?;
    // The status line and headers, then (to keep the connection) the body.
    let mut buf = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        let n = match stream.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if len == 0 => return Err(unanswered(format!("read: {e}"))),
            Err(e) => return Err(answered(format!("read: {e}"))),
        };
        if n == 0 {
            let text = "the endpoint closed the connection without an answer".to_owned();
            return Err(if len == 0 { unanswered(text) } else { answered(text) });
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let code = resp.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(answered(format!("HTTP {code} {}", resp.reason.unwrap_or(""))));
                }
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                };
                let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
                let reusable = keep_alive
                    && resp.version == Some(1)
                    && header("connection").is_none_or(|v| !v.split(',').any(|t| t.trim() == "close"))
                    && header("transfer-encoding").is_none()
                    && length.is_some_and(|l| l <= MAX_ANSWER_BODY);
                if !reusable {
                    return Ok(false);
                }
                // The body: what came with the head, then the rest.
                let mut left = length.unwrap_or(0).saturating_sub(len - head_len);
                while left > 0 {
                    let want = left.min(buf.len());
                    match stream.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => return Ok(false),
                        Ok(n) => left -= n,
                    }
                }
                return Ok(len - head_len <= length.unwrap_or(0));
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            Ok(httparse::Status::Partial) => return Err(answered("response head over 16 KiB".into())),
            Err(e) => return Err(answered(format!("bad response: {e}"))),
        }
    }
}

/// A plain or TLS stream.
trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/hooks/ringpost").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/hooks/ringpost"));
        let u = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("localhost", 80, "/"));
        let u = HttpUrl::parse("http://[::1]:9000/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 9000));
        let u = HttpUrl::parse("https://hooks.example.test/r").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        for bad in ["ftp://x/", "http://", "http://a:b/", "http://u@h/", "http://h/a b", "https://"] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cursor-x");
        assert_eq!(read_cursor(&p), None);
        write_cursor(&p, Cursor { seq: 7, offset: 1234 }).unwrap();
        assert_eq!(read_cursor(&p), Some(Cursor { seq: 7, offset: 1234 }));
        // Moves are written in place, whole records.
        let mut f = CursorFile::open(&p).unwrap();
        f.store(Cursor { seq: 8, offset: 5 }, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), CURSOR_LEN as u64);
        assert_eq!(read_cursor(&p), Some(Cursor { seq: 8, offset: 5 }));
        f.store(Cursor { seq: u64::MAX, offset: u64::MAX }, true).unwrap();
        assert_eq!(read_cursor(&p), Some(Cursor { seq: u64::MAX, offset: u64::MAX }));
        // The form written before the checksum still reads.
        std::fs::write(&p, "7 1234\n").unwrap();
        assert_eq!(read_cursor(&p), Some(Cursor { seq: 7, offset: 1234 }));
        // A damaged record is refused, not taken.
        for bad in ["garbage", "7 1235 00000000", "7 1234 zz", "", "1 2 3 4"] {
            std::fs::write(&p, bad).unwrap();
            assert_eq!(read_cursor(&p), None, "{bad:?}");
        }
        let mut rec = encode_cursor(Cursor { seq: 7, offset: 1234 });
        rec[2] = b'9';
        std::fs::write(&p, rec).unwrap();
        assert_eq!(read_cursor(&p), None, "a changed digit");
    }
}
