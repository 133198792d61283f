//! The byte stream under a session: plain TCP, or TLS through our own small
//! adapter over `rustls::ServerConnection` (so the Received header can name the
//! negotiated version and cipher, which monoio-rustls hides).
//!
//! Reads append to the caller's buffer and can be cancelled through a
//! [`CancelHandle`]: a cancelled read still returns the buffer and any bytes
//! that made it, so a timeout or shutdown never loses input.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig, ServerConnection,
    SignatureScheme,
};

use crate::smtp::session::TlsInfo;

/// Most free space a socket read asks for: the size reads grow to while a
/// peer streams message content.
pub const READ_CHUNK: usize = 16 * 1024;

/// Least free space a socket read asks for, and what a session starts with:
/// commands are short, and an idle session should cost little memory.
pub const READ_MIN: usize = 1024;

/// What one read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were appended.
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// The read was cancelled before any byte arrived.
    Cancelled,
}

/// Loads the certificate chain and key of `[tls]`.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unusable: {e}"))?;
    Ok(Arc::new(config))
}

/// Outbound TLS with a certificate check of our own: none (opportunistic
/// STARTTLS, RFC 7435, which protects against passive eavesdroppers only,
/// as Postfix's default `smtp_tls_security_level = may`), or DANE (the
/// chain must match the host's TLSA records, `delivery::dane`). Handshake
/// signatures are checked either way, so the peer must hold the key of the
/// certificate it shows.
#[derive(Debug)]
struct OurCheck {
    provider: Arc<rustls::crypto::CryptoProvider>,
    check: CertCheck,
}

#[derive(Debug)]
enum CertCheck {
    None,
    Dane {
        records: Vec<crate::dns::wire::Tlsa>,
        /// Reference identities for DANE-TA: the MX host, the next-hop domain.
        names: Vec<String>,
    },
}

impl ServerCertVerifier for OurCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let CertCheck::Dane { records, names } = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let algs = self.provider.signature_verification_algorithms.all;
        crate::delivery::dane::verify(records, &chain, &names, now, algs)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn our_check_config(check: CertCheck) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OurCheck { provider, check }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client configuration for one host with TLSA records (usable ones;
/// none: any certificate, but TLS all the same).
pub fn dane_client_config(
    records: Vec<crate::dns::wire::Tlsa>,
    names: Vec<String>,
) -> Result<Arc<ClientConfig>, String> {
    our_check_config(CertCheck::Dane { records, names })
}

/// The client configuration for opportunistic outbound STARTTLS.
pub fn opportunistic_client_config() -> Result<Arc<ClientConfig>, String> {
    our_check_config(CertCheck::None)
}

/// The system's trust anchors (Debian's bundle).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS client that checks certificates: the system's roots plus
/// `ca_file`'s (PEM; a file without a certificate is an error).
pub fn verifying_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut files = vec![std::path::PathBuf::from(SYSTEM_ROOTS)];
    files.extend(ca_file.map(Path::to_path_buf));
    for (i, f) in files.iter().enumerate() {
        let certs = match rustls_pki_types::CertificateDer::pem_file_iter(f) {
            Ok(it) => it.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{}: {e}", f.display()))?,
            // No system bundle is fine when a ca_file is given.
            Err(_) if i == 0 => continue,
            Err(e) => return Err(format!("{}: {e}", f.display())),
        };
        if certs.is_empty() && i > 0 {
            return Err(format!("{}: no PEM certificate in it", f.display()));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(format!("no trust anchors ({SYSTEM_ROOTS} is missing and no ca_file is set)"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS state over a TCP stream.
pub struct TlsConn {
    tcp: TcpStream,
    conn: Connection,
    /// Ciphertext in, reused.
    cin: Vec<u8>,
    /// Ciphertext out, reused.
    cout: Vec<u8>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("handshaking", &self.conn.is_handshaking()).finish()
    }
}

/// A session's stream.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
    /// After a failed TLS upgrade: every operation fails.
    Closed,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain(_) => "Transport::Plain",
            Transport::Tls(_) => "Transport::Tls",
            Transport::Closed => "Transport::Closed",
        })
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// One cancellable socket read appending into `buf`.
async fn read_tcp(
    tcp: &mut TcpStream,
    mut buf: Vec<u8>,
    cancel: CancelHandle,
) -> (io::Result<ReadOutcome>, Vec<u8>) {
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_MIN);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let slice: SliceMut<Vec<u8>> = buf.slice_mut(len..cap);
    let (res, slice) = tcp.cancelable_read(slice, cancel).await;
    let mut buf = slice.into_inner();
    // The read filled all the space it had: the peer is streaming, so offer
    // more next time (doubling, up to READ_CHUNK of free space).
    if matches!(res, Ok(n) if n == cap - len) && cap - len < READ_CHUNK {
        buf.reserve((cap - len) * 2);
    }
    let outcome = match res {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => Ok(ReadOutcome::Data(n)),
        Err(e) if is_cancelled(&e) => Ok(ReadOutcome::Cancelled),
        Err(e) => Err(e),
    };
    (outcome, buf)
}

impl Transport {
    /// Reads whatever arrives next and appends it to `buf`.
    pub async fn read(&mut self, buf: Vec<u8>, cancel: CancelHandle) -> (io::Result<ReadOutcome>, Vec<u8>) {
        match self {
            Transport::Plain(tcp) => read_tcp(tcp, buf, cancel).await,
            Transport::Tls(tls) => tls.read(buf, cancel).await,
            Transport::Closed => (Err(closed()), buf),
        }
    }

    /// Sends a session's pending output within `limit`: `swap` trades it for
    /// `spare` (an empty buffer), which gets the written buffer back, emptied.
    /// False if the peer is gone or too slow to take it.
    pub async fn send_swapped(
        &mut self,
        spare: &mut Vec<u8>,
        limit: std::time::Duration,
        swap: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        swap(spare);
        match monoio::time::timeout(limit, self.write_all(std::mem::take(spare))).await {
            Ok((Ok(()), mut buf)) => {
                buf.clear();
                *spare = buf;
                true
            }
            _ => false,
        }
    }

    /// Reads whatever arrives next into `buf`, unless `deadline` passes or
    /// `stop` resolves first: then the read is cancelled, and the outcome is
    /// [`ReadOutcome::Cancelled`] (or data that won the race).
    pub async fn read_until(
        &mut self,
        buf: Vec<u8>,
        deadline: std::time::Instant,
        stop: impl std::future::Future,
    ) -> (io::Result<ReadOutcome>, Vec<u8>) {
        let canceller = monoio::io::Canceller::new();
        let mut read = std::pin::pin!(self.read(buf, canceller.handle()));
        let early = monoio::select! {
            r = &mut read => Some(r),
            _ = monoio::time::sleep_until(deadline.into()) => None,
            _ = stop => None,
        };
        match early {
            Some(r) => r,
            None => {
                let _ = canceller.cancel();
                read.await
            }
        }
    }

    /// The server side of a TLS handshake within `limit`, counted in
    /// `metrics`. `None` if it failed (the transport is then closed).
    pub async fn accept_tls(
        &mut self,
        config: Arc<ServerConfig>,
        limit: std::time::Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Option<TlsInfo> {
        match monoio::time::timeout(limit, self.upgrade_tls(config)).await {
            Ok(Ok(info)) => {
                crate::metrics::inc(&metrics.tls_handshakes);
                Some(info)
            }
            _ => {
                crate::metrics::inc(&metrics.tls_failures);
                None
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Transport::Plain(tcp) => {
                let (res, data) = tcp.write_all(data).await;
                (res.map(|_| ()), data)
            }
            Transport::Tls(tls) => {
                let res = tls.write_plain(&data).await;
                (res, data)
            }
            Transport::Closed => (Err(closed()), data),
        }
    }

    /// Runs the server side of a TLS handshake over a plain stream, in place.
    /// On failure the transport is left [`Transport::Closed`].
    pub async fn upgrade_tls(&mut self, config: Arc<ServerConfig>) -> io::Result<TlsInfo> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Closed) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let conn = Connection::Server(ServerConnection::new(config).map_err(io::Error::other)?);
        self.handshake_with(tcp, conn).await
    }

    /// Runs the client side of a TLS handshake (outbound STARTTLS), in place.
    /// On failure the transport is left [`Transport::Closed`].
    pub async fn upgrade_tls_client(&mut self, config: Arc<ClientConfig>, host: &str) -> io::Result<TlsInfo> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Closed) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let conn = Connection::Client(ClientConnection::new(config, name).map_err(io::Error::other)?);
        self.handshake_with(tcp, conn).await
    }

    async fn handshake_with(&mut self, tcp: TcpStream, conn: Connection) -> io::Result<TlsInfo> {
        let mut tls = Box::new(TlsConn { tcp, conn, cin: Vec::with_capacity(READ_CHUNK), cout: Vec::new() });
        tls.handshake().await?;
        let info = tls.info();
        *self = Transport::Tls(tls);
        Ok(info)
    }

    /// Sends a TLS close_notify if TLS is active; best effort.
    pub async fn close(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.conn.send_close_notify();
            let _ = tls.flush().await;
        }
    }

    /// Closes after our last reply so that the peer reads it: a close with
    /// unread input makes the kernel send RST, which can destroy the reply in
    /// flight. So: end our side (FIN, or close_notify), then read and drop
    /// what the peer still sends, for at most `linger` or 256 KiB.
    pub async fn lingering_close(&mut self, linger: std::time::Duration) {
        self.close().await;
        let tcp = match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &mut tls.tcp,
            Transport::Closed => return,
        };
        let _ = monoio::io::AsyncWriteRent::shutdown(tcp).await;
        let drain = async {
            let mut buf = Vec::with_capacity(READ_CHUNK);
            let mut total = 0;
            while total < 256 * 1024 {
                buf.clear();
                let (res, b) = read_tcp(tcp, buf, monoio::io::Canceller::new().handle()).await;
                buf = b;
                match res {
                    Ok(ReadOutcome::Data(n)) => total += n,
                    _ => return,
                }
            }
        };
        let _ = monoio::time::timeout(linger, drain).await;
    }
}

impl TlsConn {
    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            if self.conn.wants_write() {
                self.flush().await?;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.conn.wants_read() {
                let cin = std::mem::take(&mut self.cin);
                let (res, cin) = read_tcp(&mut self.tcp, cin, monoio::io::Canceller::new().handle()).await;
                self.cin = cin;
                match res? {
                    ReadOutcome::Data(_) => self.absorb().await?,
                    ReadOutcome::Eof | ReadOutcome::Cancelled => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed during TLS handshake",
                        ));
                    }
                }
            }
        }
    }

    /// Feeds buffered ciphertext to rustls; on a protocol error, sends the alert.
    async fn absorb(&mut self) -> io::Result<()> {
        let mut pos = 0;
        while pos < self.cin.len() {
            let mut rd = &self.cin[pos..];
            let n = self.conn.read_tls(&mut rd)?;
            pos += n;
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if n == 0 {
                break;
            }
        }
        self.cin.clear();
        Ok(())
    }

    /// Sends every TLS record rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.cout);
            out.clear();
            self.conn.write_tls(&mut out)?;
            let (res, out) = self.tcp.write_all(out).await;
            self.cout = out;
            res?;
        }
        Ok(())
    }

    async fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)?;
        self.flush().await
    }

    async fn read(&mut self, mut buf: Vec<u8>, cancel: CancelHandle) -> (io::Result<ReadOutcome>, Vec<u8>) {
        loop {
            let old = buf.len();
            buf.resize(old + READ_CHUNK, 0);
            let got = self.conn.reader().read(&mut buf[old..]);
            buf.truncate(old + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return (Ok(ReadOutcome::Eof), buf),
                Ok(n) => return (Ok(ReadOutcome::Data(n)), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(ReadOutcome::Eof), buf),
                Err(e) => return (Err(e), buf),
            }
            let cin = std::mem::take(&mut self.cin);
            let (res, cin) = read_tcp(&mut self.tcp, cin, cancel.clone()).await;
            self.cin = cin;
            match res {
                Ok(ReadOutcome::Data(_)) => {}
                other => return (other, buf),
            }
            if let Err(e) = self.absorb().await {
                return (Err(e), buf);
            }
            if self.conn.wants_write() {
                if let Err(e) = self.flush().await {
                    return (Err(e), buf);
                }
            }
        }
    }

    fn info(&self) -> TlsInfo {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_owned(),
        };
        let cipher = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map_or_else(|| "unknown".to_owned(), str::to_owned);
        TlsInfo { version, cipher }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests
    use super::*;
    use monoio::io::Canceller;

    #[test]
    fn read_space_starts_small_and_grows_while_the_peer_streams() {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let sender = monoio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let (res, _) = s.write_all(b"EHLO x\r\n".to_vec()).await;
                res.unwrap();
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
                let (res, _) = s.write_all(vec![b'a'; 256 * 1024]).await;
                res.unwrap();
            });
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::with_capacity(READ_MIN);
            let (res, b) = read_tcp(&mut tcp, buf, Canceller::new().handle()).await;
            buf = b;
            assert!(matches!(res.unwrap(), ReadOutcome::Data(8)));
            assert!(buf.capacity() < 2 * READ_MIN, "a command leaves the buffer small: {}", buf.capacity());
            let mut total = 0;
            let mut reads = 0;
            while total < 256 * 1024 {
                buf.clear();
                let (res, b) = read_tcp(&mut tcp, buf, Canceller::new().handle()).await;
                buf = b;
                let ReadOutcome::Data(n) = res.unwrap() else { panic!("eof") };
                total += n;
                reads += 1;
            }
            assert!(buf.capacity() >= READ_CHUNK, "streaming grows the buffer: {}", buf.capacity());
            assert!(reads < 256 * 1024 / READ_MIN / 2, "{reads} reads for 256 KiB");
            sender.await;
        });
    }
}
