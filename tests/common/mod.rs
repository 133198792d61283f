//! Shared test harness: runs the real `ringpost` binary on loopback with a
//! temporary spool, and speaks SMTP and HTTP to it byte for byte.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringpost");

/// A running server.
pub struct Server {
    pub child: Child,
    pub smtp: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
}

/// Config text for a test server: loopback, port 0, spool in `dir/spool`,
/// plus `extra`. Top-level keys in `extra` (before its first table) override
/// ours; its tables are appended, and a `[spool]` table gets our `dir` unless
/// it sets one.
pub fn config_text(dir: &Path, extra: &str) -> String {
    let split = if extra.starts_with('[') { 0 } else { extra.find("\n[").map_or(extra.len(), |i| i + 1) };
    let (top, tables) = extra.split_at(split);
    let mut text = String::new();
    if !top.contains("hostname") {
        text += "hostname = \"mx.test\"\n";
    }
    if !top.contains("threads") {
        text += "threads = 2\n";
    }
    text += top;
    if !tables.contains("[admin]") {
        text += "\n[admin]\naddress = \"127.0.0.1:0\"\n";
    }
    if !tables.contains("[log]") {
        text += "[log]\nlevel = \"warn\"\n";
    }
    if !tables.contains("[[listener]]") {
        text += "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n";
    }
    // Never the system resolver: tests only talk to loopback. Port 9 is
    // closed, so lookups fail at once and mail stays queued (deferred).
    if !tables.contains("[delivery]") {
        text += "[delivery]\ndns_servers = [\"127.0.0.1:9\"]\n";
    }
    if !tables.contains("[local]") {
        text += &format!("[local]\nmail_dir = \"{}\"\n", dir.join("mail").display());
    }
    let spool_dir = format!("dir = \"{}\"\n", dir.join("spool").display());
    if tables.contains("[spool]") {
        if tables.contains("\ndir =") {
            text += tables;
        } else {
            text += &tables.replacen("[spool]\n", &format!("[spool]\n{spool_dir}"), 1);
        }
    } else {
        text += &format!("[spool]\n{spool_dir}");
        text += tables;
    }
    text
}

impl Server {
    /// Starts a server in a fresh temporary directory.
    pub fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        Server::start_in(&dir, extra)
    }

    /// Starts (or restarts) a server whose files live in `dir`.
    pub fn start_in(dir: &Path, extra: &str) -> Server {
        let config_path = dir.join("ringpost.toml");
        std::fs::write(&config_path, config_text(dir, extra)).expect("write config");
        Server::start_with_config(dir, &config_path)
    }

    pub fn start_with_config(dir: &Path, config_path: &Path) -> Server {
        let stderr_path = dir.join(format!("stderr-{}.log", unique()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config_path)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringpost");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut smtp = Vec::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                if let Ok(Some(status)) = child.try_wait() {
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("ringpost exited during startup ({status}): {err}");
                }
                continue;
            };
            if let Some(rest) = line.strip_prefix("ringpost: listening ") {
                let addr = rest.split(' ').nth(1).expect("address");
                smtp.push(addr.parse().expect("listener address"));
            } else if let Some(rest) = line.strip_prefix("ringpost: admin http://") {
                admin = Some(rest.parse().expect("admin address"));
            } else if line.contains(" workers, io_uring driver") {
                break;
            }
        }
        let admin = admin.expect("admin address printed");
        Server {
            child,
            smtp,
            admin,
            dir: dir.to_path_buf(),
            config_path: config_path.to_path_buf(),
            stderr_path,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.smtp[0]
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then wait for the exit (bounded).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(30))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ringpost did not exit within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(self.admin, method, path)
    }

    pub fn queue(&self) -> serde_json::Value {
        let (status, body) = self.http("GET", "/queue");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("queue JSON")
    }

    pub fn queued_messages(&self) -> u64 {
        self.queue()["messages"].as_u64().expect("messages")
    }

    /// The value of a metric without labels in /metrics; fails the test if
    /// there is no such metric.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in /metrics:\n{text}"))
    }

    /// Rewrites the config file with `extra` (see [`config_text`]), sends
    /// SIGHUP, and waits until the reload is done: put in force, or refused
    /// if `refused`. Fails the test if neither happens.
    pub fn reload(&self, extra: &str, refused: bool) {
        std::fs::write(&self.config_path, config_text(&self.dir, extra)).expect("write config");
        self.reload_file(refused);
    }

    /// Sends SIGHUP for the config file as it is now; see [`Server::reload`].
    pub fn reload_file(&self, refused: bool) {
        let name =
            if refused { "ringpost_config_reload_failures_total" } else { "ringpost_config_reloads_total" };
        let before = self.metric(name);
        self.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || self.metric(name) > before),
            "reload {}: {}",
            if refused { "not refused" } else { "not done" },
            self.stderr()
        );
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &format!("Host: {addr}\r\n"))
}

/// One HTTP/1.1 request with the given header lines (each ending in CRLF).
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    http_body(addr, method, path, headers, "")
}

/// One HTTP/1.1 request with header lines (each ending in CRLF) and a body
/// sent as given (the caller writes its Content-Length); returns (status, body).
pub fn http_body(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\n{headers}\r\n{body}").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// A byte-exact SMTP client.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_str(&mut self, s: &str) {
        self.send(s.as_bytes());
    }

    /// Reads one (possibly multi-line) reply; returns its lines with CRLF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            assert!(line.ends_with("\r\n"), "reply line ends with CRLF: {line:?}");
            all += &line;
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Reads one line, CRLF included.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read line");
        assert!(n > 0, "connection closed");
        line
    }

    /// Reads a reply and checks its code.
    pub fn expect(&mut self, code: &str) -> String {
        let r = self.reply();
        assert!(r.starts_with(code), "expected {code}, got {r:?}");
        r
    }

    /// Sends a command line and expects a code.
    pub fn cmd(&mut self, line: &str, code: &str) -> String {
        self.send_str(&format!("{line}\r\n"));
        self.expect(code)
    }

    /// True if the server closed the connection (EOF, or a reset because it
    /// closed with our input unread) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// Greeting, EHLO, MAIL, RCPT, DATA: ready for content.
    pub fn open_data(&mut self, from: &str, to: &str) {
        self.expect("220");
        self.cmd("EHLO c.test", "250");
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        self.cmd(&format!("RCPT TO:<{to}>"), "250");
        self.cmd("DATA", "354");
    }

    /// A whole transaction; returns the queue id from the final 250.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        self.cmd("DATA", "354");
        self.send_str(body);
        self.send_str(".\r\n");
        let r = self.expect("250");
        queue_id(&r).expect("queue id in reply").to_owned()
    }
}

/// The id in `250 2.0.0 Ok: queued as ID`.
pub fn queue_id(reply: &str) -> Option<&str> {
    reply.trim_end().rsplit(' ').next().filter(|id| id.len() == 16)
}

/// Self-signed certificate and key (PEM files) for `localhost`.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "mx.test".into()]).expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A private CA and the certificates it signs (TLS policy tests).
#[allow(dead_code)] // reason: each test binary uses part of the harness
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM and DER.
    pub pem: String,
    pub der: Vec<u8>,
}

/// A certificate the [`Ca`] signed: its file (the certificate, then the
/// CA's: the chain a server sends), its key file, and the SHA-256 of its
/// public key (SubjectPublicKeyInfo) in hex, for TLSA records.
#[allow(dead_code)] // reason: each test binary uses part of the harness
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub spki_sha256: String,
}

#[allow(dead_code)] // reason: each test binary uses part of the harness
impl Leaf {
    /// The certificate and key files.
    pub fn files(self) -> (PathBuf, PathBuf) {
        (self.cert, self.key)
    }

    /// The certificate and key files as strings (arguments of a peer).
    pub fn paths(&self) -> [String; 2] {
        [self.cert.display().to_string(), self.key.display().to_string()]
    }
}

#[allow(dead_code)] // reason: each test binary uses part of the harness
impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ringpost test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), der: cert.der().to_vec(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// The CA certificate as a file in `dir` (for `ca_file`).
    pub fn file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A certificate for `names`, files `<file>.crt` and `<file>.key` in `dir`.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        std::fs::write(&c, format!("{}{}", cert.pem(), self.pem)).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let spki_sha256 = ring::digest::digest(&ring::digest::SHA256, &spki)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        Leaf { cert: c, key: k, spki_sha256 }
    }
}

/// tests/peers/sts_server.py: MTA-STS policies from `dir` over HTTPS on
/// `ip`:443 with a [`Ca`] certificate; stopped when dropped.
#[allow(dead_code)] // reason: each test binary uses part of the harness
pub struct StsServer(Child);

#[allow(dead_code)] // reason: each test binary uses part of the harness
impl StsServer {
    pub fn start(ip: &str, cert: &Path, key: &Path, dir: &Path) -> StsServer {
        let mut child = Command::new("python3")
            .arg(test_file("peers/sts_server.py"))
            .args([ip, "443"])
            .args([cert, key, dir])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "policy server on {ip}:443");
        StsServer(child)
    }
}

impl Drop for StsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a program, failing the test with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is the Debian package installed? see .ci/run)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}): {text}", out.status);
    text
}

/// Runs a command that should end by itself within 10 s (a server that
/// should refuse to start); kills it and fails the test if it does not.
pub fn run_briefly(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("{cmd:?} still runs after 10 s: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// Path of a file under tests/.
pub fn test_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel)
}

/// A TCP port free on 127.0.0.1 now (the same number is then used on other
/// 127.x addresses, and by dnsmasq for UDP and TCP).
/// `ringpost suppress ARGS --admin <srv's>`: (success, stdout).
pub fn suppress_cli(srv: &Server, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("suppress")
        .args(args)
        .args(["--admin", &srv.admin.to_string()])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ringpost hash-password` of `secret`.
pub fn hash_password(secret: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A private redis-server on a loopback port: no persistence, its own
/// directory, stopped by PID when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let mut r = Redis { child: None, port: free_port(), dir };
        r.restart();
        r
    }

    /// Starts it again (on the same port, empty) after [`Redis::kill`].
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// kill -9 (a crash, an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// redis-cli's answer to a command.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// dnsmasq answering for a private `.test` zone on a loopback port.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    /// The zone of PEERS.md, plus `two-mx.test` (MX 10 dead, MX 20 live),
    /// `alias.test` (the same MX as mx-dom.test) and `hosted-a.test`,
    /// `hosted-b.test` (MX hosts `mx-a.provider.test`, `mx-b.provider.test`).
    pub fn start() -> Dnsmasq {
        Dnsmasq::start_with(&[])
    }

    /// The same zone plus `extra` dnsmasq options (records of one test).
    pub fn start_with(extra: &[&str]) -> Dnsmasq {
        let port = free_port();
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file",
                "--local=/test/",
                "--local-ttl=30",
                "--mx-host=mx-dom.test,mx1.mx-dom.test,10",
                "--mx-host=alias.test,mx1.mx-dom.test,10",
                "--host-record=mx1.mx-dom.test,127.0.0.2",
                "--host-record=amx.test,127.0.0.3",
                "--mx-host=nullmx.test,.,0",
                "--mx-host=two-mx.test,dead.two-mx.test,10",
                "--mx-host=two-mx.test,mx1.mx-dom.test,20",
                "--host-record=dead.two-mx.test,127.0.0.4",
                "--mx-host=v6.test,mx.v6.test,10",
                // Two domains hosted by one provider, on different MX hosts.
                "--mx-host=hosted-a.test,mx-a.provider.test,10",
                "--mx-host=hosted-b.test,mx-b.provider.test,10",
                "--host-record=mx-a.provider.test,127.0.0.2",
                "--host-record=mx-b.provider.test,127.0.0.2",
                "--host-record=mx.v6.test,::1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Dnsmasq { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tests/peers/receiver.py on `ip:port`, saving what it accepts.
pub struct Receiver {
    child: Child,
    pub dir: PathBuf,
}

impl Receiver {
    pub fn start(ip: &str, port: u16, args: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut child = Command::new("python3")
            .arg(test_file("peers/receiver.py"))
            .args([ip, &port.to_string()])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "receiver on {ip}:{port} started");
        Receiver { child, dir }
    }

    /// Accepted messages so far, in order.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let p = e.path();
                        let n = p.file_name()?.to_str()?.strip_suffix(".eml")?.parse().ok()?;
                        Some((n, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| std::fs::read_to_string(p).unwrap_or_default()).collect()
    }

    /// (connections so far, most open at once, most messages accepted on
    /// one connection that has closed).
    pub fn connections(&self) -> (u32, u32, u32) {
        let text = std::fs::read_to_string(self.dir.join("connections")).unwrap_or_default();
        let mut it = text.split_whitespace().filter_map(|n| n.parse().ok());
        (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    /// When each accepted message arrived (its file's modification time), in
    /// order.
    pub fn arrivals(&self) -> Vec<std::time::SystemTime> {
        let mut files: Vec<(u64, std::time::SystemTime)> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_str()?.strip_suffix(".eml")?.parse().ok()?;
                        Some((n, e.metadata().ok()?.modified().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, t)| t).collect()
    }

    /// Waits until `n` messages arrived (bounded); returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds (bounded), polling.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The JSON lines of an events file (none if it does not exist yet); a
/// line that is not JSON fails the test.
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

/// swaks submits the file `data` to `server` as an AUTH PLAIN user.
pub fn swaks_auth(server: SocketAddr, user: &str, password: &str, to: &str, data: &Path) -> String {
    run(Command::new("swaks").args([
        "--server",
        &server.to_string(),
        "--from",
        user,
        "--to",
        to,
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--data",
        data.to_str().expect("utf-8 path"),
    ]))
}
