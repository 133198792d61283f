//! One outbound SMTP connection: the sans-IO [`Client`] on the connection
//! driver (`rt::driver`). It tries the next hop's hosts and addresses in order, runs
//! opportunistic STARTTLS (falling back to plain text on the same address if
//! the handshake fails), then sends messages over the same connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::ClientConfig;

use super::egress::Source;
use super::route::NextHop;
use super::DeliveryConfig;
use super::{mta_sts, tlsrpt};
use crate::envelope::Envelope;
use crate::rt::clock::instant;
use crate::rt::driver::{Conn, Filled};
use crate::rt::transport::Transport;
use crate::smtp::client::{
    body, Client, ClientConfig as SmtpClientConfig, Event, Failure, OutRecipient, Outgoing, RcptResult,
};
use crate::smtp::session::TlsInfo;

/// Why no connection could be opened.
#[derive(Debug)]
pub struct OpenError {
    /// What went wrong at each address tried.
    pub text: String,
    /// Every attempt failed on the TLS a policy requires (no STARTTLS, a
    /// certificate that does not verify), none on the network.
    pub tls_only: bool,
}

/// How one connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// Connecting or greeting (network, timeouts, 421).
    Connect,
    /// The opportunistic TLS handshake (plain text may be tried).
    Handshake,
    /// The TLS a policy requires.
    Policy,
}

/// An open, greeted connection.
pub struct Outbound {
    conn: Conn,
    client: Client,
    /// Commands and content of a message's body, reused.
    body: Vec<u8>,
    pub host: String,
    pub addr: SocketAddr,
    pub tls: Option<TlsInfo>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("host", &self.host).field("addr", &self.addr).finish()
    }
}

fn client_config(
    cfg: &DeliveryConfig,
    source: Option<&Source>,
    starttls: bool,
    lmtp: bool,
) -> SmtpClientConfig {
    SmtpClientConfig {
        helo: source.map_or_else(|| cfg.hostname.clone(), |s| s.ehlo.clone()),
        starttls,
        command_timeout: cfg.command_timeout,
        data_timeout: cfg.data_timeout,
        final_timeout: cfg.final_timeout,
        lmtp,
    }
}

impl Outbound {
    /// Connects to the first host/address of `hop` that greets us, from
    /// `source` if given (bound to its address, EHLO with its name; the
    /// hop's addresses of the other IP family are skipped). The error lists
    /// what went wrong with each address tried. With TLS reporting on
    /// (`hop.report`), each TLS session tried is added to `sessions` with
    /// the policy it counts under.
    pub async fn open(
        hop: &NextHop,
        source: Option<&Source>,
        cfg: &DeliveryConfig,
        tls: &Arc<ClientConfig>,
        sessions: &mut Vec<(Arc<tlsrpt::Policy>, tlsrpt::Session)>,
    ) -> Result<Outbound, OpenError> {
        let mut errors = Vec::new();
        // Every attempt failed on the TLS a policy requires (not on the
        // network): for REQUIRETLS mail, a reason to bounce.
        let mut tls_only = true;
        let mut fail = |text: String, kind: Failed| {
            tls_only &= kind == Failed::Policy;
            errors.push(text);
        };
        let mut report = |policy: &Arc<tlsrpt::Policy>, mx: &str, addr: Option<SocketAddr>, result| {
            if hop.report.is_some() {
                let session = tlsrpt::Session {
                    mx: mx.to_string(),
                    sending_ip: source.map(|s| s.address),
                    receiving_ip: addr.map(|a| a.ip()),
                    result,
                };
                sessions.push((policy.clone(), session));
            }
        };
        let hop_policy = hop.report.clone().unwrap_or_else(|| Arc::new(tlsrpt::Policy::NONE));
        let failure = |e: &str| Err((tlsrpt::ResultType::of(e), e.to_string()));
        let required = if hop.requiretls { "REQUIRETLS" } else { "MTA-STS" };
        for host in &hop.hosts {
            for &addr in &host.addrs {
                if let Some(s) = source.filter(|s| s.address.is_ipv4() != addr.is_ipv4()) {
                    fail(
                        format!(
                            "{}[{addr}]: not reachable from source {} ({})",
                            host.name, s.name, s.address
                        ),
                        Failed::Connect,
                    );
                    continue;
                }
                // DANE: TLS checked against the host's TLSA records, or
                // nothing; then a policy's verified TLS, or nothing.
                let (client, policy, counted) = match &host.dane {
                    super::route::HostDane::Refuse(why) => {
                        let policy = Arc::new(tlsrpt::Policy {
                            kind: tlsrpt::PolicyType::Tlsa,
                            mx_hosts: vec![host.name.clone()],
                            ..tlsrpt::Policy::NONE
                        });
                        report(&policy, &host.name, None, failure(why));
                        fail(format!("{}: {why}", host.name), Failed::Connect);
                        break;
                    }
                    super::route::HostDane::Verify(dane, policy) => (dane, Some("DANE"), policy),
                    super::route::HostDane::None => match &hop.verify_tls {
                        Some(verify) => (verify, Some(required), &hop_policy),
                        None => (tls, None, &hop_policy),
                    },
                };
                if policy.is_some() {
                    match Outbound::open_one(&host.name, addr, source, cfg, client, true, hop.lmtp, policy)
                        .await
                    {
                        Ok(o) => {
                            report(counted, &host.name, Some(addr), Ok(()));
                            return Ok(o);
                        }
                        Err((e, kind)) => {
                            if kind == Failed::Policy {
                                report(counted, &host.name, Some(addr), failure(&e));
                            }
                            fail(format!("{}[{addr}]: {e}", host.name), kind)
                        }
                    }
                    continue;
                }
                // An MTA-STS policy in testing mode: what enforcing it would
                // do is tried first and reported; delivery goes on as without.
                if let Some((verify, sts)) = &hop.sts_testing {
                    if mta_sts::allowed(sts, &[host.name.as_str()]).is_err() {
                        let why = format!("MX host {} is not in the MTA-STS policy", host.name);
                        report(
                            &hop_policy,
                            &host.name,
                            Some(addr),
                            Err((tlsrpt::ResultType::ValidationFailure, why)),
                        );
                    } else {
                        match Outbound::open_one(
                            &host.name,
                            addr,
                            source,
                            cfg,
                            verify,
                            true,
                            hop.lmtp,
                            Some("MTA-STS"),
                        )
                        .await
                        {
                            Ok(o) => {
                                report(&hop_policy, &host.name, Some(addr), Ok(()));
                                return Ok(o);
                            }
                            Err((e, Failed::Policy)) => {
                                report(&hop_policy, &host.name, Some(addr), failure(&e))
                            }
                            Err((e, kind)) => {
                                fail(format!("{}[{addr}]: {e}", host.name), kind);
                                continue;
                            }
                        }
                    }
                }
                let testing = hop.sts_testing.is_some();
                match Outbound::open_one(&host.name, addr, source, cfg, tls, cfg.starttls, hop.lmtp, None)
                    .await
                {
                    Ok(o) => {
                        if !testing && cfg.starttls {
                            let result = match o.tls {
                                Some(_) => Ok(()),
                                None => Err((
                                    tlsrpt::ResultType::StarttlsNotSupported,
                                    "the server does not offer STARTTLS".to_string(),
                                )),
                            };
                            report(&hop_policy, &host.name, Some(addr), result);
                        }
                        return Ok(o);
                    }
                    Err((e, Failed::Handshake)) => {
                        if !testing {
                            report(&hop_policy, &host.name, Some(addr), failure(&e));
                        }
                        // TLS failed: opportunistic means plain text is still better than nothing.
                        match Outbound::open_one(&host.name, addr, source, cfg, tls, false, hop.lmtp, None)
                            .await
                        {
                            Ok(o) => return Ok(o),
                            Err((e2, kind)) => {
                                fail(format!("{}[{addr}]: {e}; without TLS: {e2}", host.name), kind)
                            }
                        }
                    }
                    Err((e, kind)) => fail(format!("{}[{addr}]: {e}", host.name), kind),
                }
            }
        }
        if errors.is_empty() {
            return Err(OpenError { text: "no address to connect to".into(), tls_only: false });
        }
        Err(OpenError { text: errors.join("; "), tls_only })
    }

    /// One address; the error says what failed. With `require` (the
    /// policy's name, for errors), a server that does not take STARTTLS, or
    /// whose certificate the TLS client refuses, is an error (`Policy`).
    #[allow(clippy::too_many_arguments)] // reason: one connection attempt's facts, each distinct
    async fn open_one(
        host: &str,
        addr: SocketAddr,
        source: Option<&Source>,
        cfg: &DeliveryConfig,
        tls: &Arc<ClientConfig>,
        starttls: bool,
        lmtp: bool,
        require: Option<&'static str>,
    ) -> Result<Outbound, (String, Failed)> {
        let connect = async {
            match source {
                None => TcpStream::connect_addr(addr).await,
                Some(s) => connect_from(s.address, addr).await,
            }
        };
        let stream = match monoio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err((format!("connect: {e}"), Failed::Connect)),
            Err(_) => return Err(("connect: timed out".into(), Failed::Connect)),
        };
        let _ = stream.set_nodelay(true);
        let mut o = Outbound {
            conn: Conn::new(Transport::Plain(stream), cfg.data_timeout),
            client: Client::new(client_config(cfg, source, starttls, lmtp), instant()),
            body: Vec::new(),
            host: host.to_owned(),
            addr,
            tls: None,
        };
        loop {
            match o.pump().await {
                Event::Ready if o.tls.is_none() && require.is_some() => {
                    let policy = require.unwrap_or_default();
                    let text = format!("{policy}: the server does not take STARTTLS (a policy requires TLS)");
                    return Err((text, Failed::Policy));
                }
                Event::Ready => return Ok(o),
                Event::StartTls => {
                    o.conn.discard_input();
                    let handshake = o.conn.transport.upgrade_tls_client(tls.clone(), host);
                    match monoio::time::timeout(cfg.command_timeout, handshake).await {
                        Ok(Ok(info)) => {
                            o.tls = Some(info);
                            o.client.handle_tls_established(instant());
                        }
                        Ok(Err(e)) if require == Some("DANE") => {
                            let text = format!(
                                "DANE: TLS with a certificate matching the TLSA records of {host}: {e}"
                            );
                            return Err((text, Failed::Policy));
                        }
                        Ok(Err(e)) if require.is_some() => {
                            let policy = require.unwrap_or_default();
                            let text = format!("{policy}: TLS with a certificate valid for {host}: {e}");
                            return Err((text, Failed::Policy));
                        }
                        Ok(Err(e)) => return Err((format!("TLS handshake: {e}"), Failed::Handshake)),
                        Err(_) => return Err(("TLS handshake: timed out".into(), Failed::Handshake)),
                    }
                }
                Event::Failed(f) => return Err((f.to_string(), Failed::Connect)),
                other => return Err((format!("unexpected {other:?} while connecting"), Failed::Connect)),
            }
        }
    }

    /// Whether the server advertised DSN.
    pub fn remote_dsn(&self) -> bool {
        self.client.capabilities().dsn
    }

    /// Sends one message; returns one result per recipient of `msg`.
    /// Sends one message: `prefix` (header fields of our own, CRLF-ended,
    /// ASCII) goes before `content`.
    pub async fn send(
        &mut self,
        mut msg: Outgoing,
        prefix: &[u8],
        content: &[u8],
    ) -> Result<Vec<RcptResult>, Failure> {
        msg.size += prefix.len() as u64;
        self.client.send_message(msg, instant());
        loop {
            match self.pump().await {
                Event::SendBody => {
                    let mut out = std::mem::take(&mut self.body);
                    out.clear();
                    // Commands still buffered (none with PIPELINING) go first.
                    out.extend_from_slice(self.client.output());
                    let mut none = Vec::new();
                    self.client.swap_output(&mut none);
                    out.extend_from_slice(prefix);
                    body::encode(content, &mut out);
                    let (res, out) = self.conn.transport.write_all(out).await;
                    self.body = out;
                    if res.is_err() {
                        return Err(Failure::Closed);
                    }
                    self.client.handle_body_sent(instant());
                }
                Event::MessageDone(results) => return Ok(results),
                Event::Failed(f) => return Err(f),
                other => return Err(Failure::Tls(format!("unexpected {other:?}"))),
            }
        }
    }

    /// QUIT and close (bounded by the command timeout).
    pub async fn quit(mut self) {
        self.client.quit(instant());
        let _ = monoio::time::timeout(std::time::Duration::from_secs(10), self.pump()).await;
        self.conn.close(false).await;
    }

    /// Moves bytes until the client has an event.
    async fn pump(&mut self) -> Event {
        loop {
            self.conn.feed(&mut self.client);
            if let Some(ev) = self.client.poll_event() {
                return ev;
            }
            if !self.conn.flush(&mut self.client).await {
                self.client.handle_eof();
                continue;
            }
            if self.conn.fill(&mut self.client, std::future::pending::<()>()).await == Filled::Gone {
                self.client.handle_eof();
            }
        }
    }
}

/// The outgoing envelope for some recipients of a message.
pub fn outgoing(env: &Envelope, rcpts: &[u32], content: &[u8]) -> Outgoing {
    let recipients: Vec<OutRecipient> = rcpts
        .iter()
        .filter_map(|&i| env.recipients.get(i as usize))
        .map(|r| OutRecipient { address: r.address.to_string(), notify: r.notify, orcpt: r.orcpt.clone() })
        .collect();
    let non_ascii =
        !env.reverse_path.to_string().is_ascii() || recipients.iter().any(|r| !r.address.is_ascii());
    Outgoing {
        reverse_path: env.reverse_path.to_string(),
        recipients,
        size: content.len() as u64,
        body_type: env.body_type,
        eight_bit: body::has_8bit(content),
        smtputf8: env.smtputf8 || non_ascii,
        ret: env.ret,
        envid: env.envid.clone(),
        requiretls: env.requiretls,
    }
}

/// A TCP connection to `to` from the local address `from`: bound first
/// (with IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect time
/// for the 4-tuple and many connections can share one source address),
/// then a non-blocking connect completed through io_uring.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = if to.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
    set_bind_no_port(&sock);
    sock.bind(&SocketAddr::new(from, 0).into())?;
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    stream.writable(false).await?;
    // SAFETY: the descriptor is owned by `stream`, alive for this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&stream)) };
    if let Some(e) = socket2::SockRef::from(&fd).take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT (Linux 4.2+); without it, binding works all the
/// same, with ports reserved at bind time.
fn set_bind_no_port(sock: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the
    // size given, read by the kernel during the call only.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
