//! Drives one inbound session: bytes between the transport and the sans-IO
//! [`Session`], events to the spool, the TLS layer and the password checker.
//! No protocol decisions are made here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use monoio::net::TcpStream;

use super::clock::{instant, now};
use super::signal::{CLOSING, DRAINING};
use super::transport::{ReadOutcome, Transport, READ_MIN};
use super::worker::{ListenerCtx, WorkerCtx};
use crate::metrics::inc;
use crate::policy::canonical;
use crate::smtp::session::{ConnInfo, Event, Session, StoreError};
use crate::spool::AppendError;

/// Serves one accepted connection to the end.
pub async fn serve(stream: TcpStream, peer: SocketAddr, l: Arc<ListenerCtx>, w: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let config = l.session_config();
    let mut transport = Transport::Plain(stream);
    let mut tls = None;
    if l.implicit_tls {
        let Some(tls_config) = l.tls_config() else { return };
        match transport.accept_tls(tls_config, config.command_timeout, &w.metrics).await {
            Some(info) => tls = Some(info),
            None => return,
        }
    }
    let ip = canonical(peer.ip());
    let trusted = config.policy.is_trusted(ip);
    let write_timeout = config.command_timeout;
    let session = Session::new(config, ConnInfo { peer: ip, trusted, tls }, w.ids.clone(), now());
    let mut d = Driver {
        transport,
        session,
        rbuf: Vec::with_capacity(READ_MIN),
        start: 0,
        wbuf: Vec::new(),
        seen_stage: 0,
        charged: 0,
        eof: false,
        write_timeout,
        l,
        w,
    };
    let we_closed = d.run().await;
    d.w.memory.release(d.charged);
    if we_closed {
        d.transport.lingering_close(std::time::Duration::from_secs(2)).await;
    } else {
        d.transport.close().await;
    }
}

struct Driver {
    transport: Transport,
    session: Session,
    /// Input; bytes before `start` have been consumed by the session.
    rbuf: Vec<u8>,
    start: usize,
    wbuf: Vec<u8>,
    seen_stage: u8,
    /// Bytes of the memory budget this session holds.
    charged: usize,
    /// The peer closed its side.
    eof: bool,
    write_timeout: std::time::Duration,
    l: Arc<ListenerCtx>,
    w: Rc<WorkerCtx>,
}

impl Driver {
    /// Runs the session. True if it ended by our decision (QUIT, errors,
    /// timeout, shutdown) with the connection still up.
    async fn run(&mut self) -> bool {
        loop {
            self.feed();
            let ok = match self.session.poll_event() {
                Some(Event::Store) => {
                    self.store().await;
                    true
                }
                Some(Event::Authenticate) => {
                    self.authenticate().await;
                    true
                }
                Some(Event::StartTls) => self.flush().await && self.start_tls().await,
                Some(Event::Close) => return self.flush().await && !self.eof,
                None => self.flush().await && self.fill().await,
            };
            if !ok {
                return false;
            }
        }
    }

    /// Offers unconsumed input to the session.
    fn feed(&mut self) {
        if self.start < self.rbuf.len() {
            self.start += self.session.handle_input(&self.rbuf[self.start..], now());
            if self.start == self.rbuf.len() {
                self.rbuf.clear();
                self.start = 0;
            }
        }
        self.bookkeeping();
    }

    /// After the session moved: memory accounting and refusal counters.
    fn bookkeeping(&mut self) {
        self.account_memory();
        let (messages, recipients) = self.session.take_refusals();
        if messages + recipients > 0 {
            let m = &self.w.metrics;
            m.messages_rejected.fetch_add(u64::from(messages), Ordering::Relaxed);
            m.recipients_rejected.fetch_add(u64::from(recipients), Ordering::Relaxed);
        }
    }

    /// Charges the growth of the session's message content to the server's
    /// memory budget; when it is spent, the message is dropped (452).
    fn account_memory(&mut self) {
        let held = self.session.content_memory();
        if held > self.charged {
            if self.w.memory.try_charge(held - self.charged) {
                self.charged = held;
            } else {
                tracing::warn!("message memory budget spent; dropping a message in progress (452)");
                self.session.handle_memory_pressure();
                self.w.memory.release(self.charged);
                self.charged = 0;
            }
        } else if held < self.charged {
            self.w.memory.release(self.charged - held);
            self.charged = held;
        }
    }

    /// Writes pending replies. False if the connection is gone.
    async fn flush(&mut self) -> bool {
        if self.session.output().is_empty() {
            return true;
        }
        let session = &mut self.session;
        self.transport.send_swapped(&mut self.wbuf, self.write_timeout, |b| session.swap_output(b)).await
    }

    /// Reads more input, until the session's deadline or a shutdown stage.
    /// False if the connection is gone.
    async fn fill(&mut self) -> bool {
        if self.start > 0 {
            self.rbuf.drain(..self.start);
            self.start = 0;
        }
        let deadline = self.session.poll_timeout();
        let buf = std::mem::take(&mut self.rbuf);
        let (res, buf) =
            self.transport.read_until(buf, deadline, self.w.signal.changed(self.seen_stage)).await;
        self.rbuf = buf;
        self.apply_stage();
        match res {
            Ok(ReadOutcome::Data(_)) => true,
            Ok(ReadOutcome::Eof) => {
                self.eof = true;
                self.session.handle_eof();
                true
            }
            Ok(ReadOutcome::Cancelled) => {
                self.session.handle_timeout(now());
                true
            }
            Err(_) => false,
        }
    }

    /// Tells the session about shutdown stages it has not seen.
    fn apply_stage(&mut self) {
        let stage = self.w.signal.stage();
        if stage > self.seen_stage {
            self.seen_stage = stage;
            if stage >= DRAINING {
                self.session.handle_shutdown();
            }
            if stage >= CLOSING {
                self.session.handle_shutdown_deadline();
            }
        }
    }

    async fn store(&mut self) {
        let Some(msg) = self.session.message() else { return };
        let started = instant();
        let size = msg.body.len() as u64;
        let ticket = self.w.spool.append_message(&msg.envelope, &msg.body);
        let result = match ticket.await {
            Ok(Ok(committed)) => {
                let id = committed.id;
                let m = &self.w.metrics;
                inc(&m.messages_accepted);
                m.bytes_accepted.fetch_add(size, Ordering::Relaxed);
                m.store_latency.observe_us(started.elapsed().as_micros() as u64);
                tracing::info!(id = %id, from = %msg.envelope.reverse_path, rcpts = msg.envelope.recipients.len(),
                    size, client = %msg.envelope.client_ip.map(|i| i.to_string()).unwrap_or_default(), "queued");
                self.w.owner.enqueue_new(&msg.envelope);
                Ok(())
            }
            Ok(Err(AppendError::Unstorable(_))) => Err(StoreError::Local),
            Ok(Err(AppendError::TooBig)) => Err(StoreError::TooBig),
            Ok(Err(e)) => {
                inc(&self.w.metrics.spool_failures);
                tracing::warn!(error = %e, "message not stored; replied 452");
                Err(StoreError::Temporary)
            }
            Err(_) => Err(StoreError::Temporary),
        };
        self.session.handle_stored(result, now());
        self.bookkeeping();
    }

    async fn authenticate(&mut self) {
        let Some((user, pass)) = self.session.credentials() else { return };
        let hash = self.session_policy_hash(user);
        let pass = pass.to_owned();
        let ok = monoio::spawn_blocking(move || crate::auth::verify(hash.as_deref(), &pass))
            .await
            .unwrap_or(false);
        inc(if ok { &self.w.metrics.auth_successes } else { &self.w.metrics.auth_failures });
        self.session.handle_auth_result(ok, now());
    }

    fn session_policy_hash(&self, user: &str) -> Option<String> {
        self.l.session_config().policy.password_hash(user).map(str::to_owned)
    }

    /// RFC 3207: after `220`, forget buffered plaintext, then handshake.
    async fn start_tls(&mut self) -> bool {
        self.rbuf.clear();
        self.start = 0;
        let Some(config) = self.l.tls_config() else { return false };
        match self.transport.accept_tls(config, self.write_timeout, &self.w.metrics).await {
            Some(info) => {
                self.session.handle_tls_established(info, now());
                true
            }
            None => false,
        }
    }
}
