//! Drives one POP3 session: bytes between the transport and the sans-IO
//! [`pop3::Session`]; password checks, Maildir reads and removals on the
//! blocking pool; the maildrop lock for the session's lifetime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use super::signal::DRAINING;
use super::transport::{ReadOutcome, Transport, READ_MIN};
use super::worker::{ListenerCtx, WorkerCtx};
use crate::metrics::inc;
use crate::policy::canonical;
use crate::pop3::maildrop::{self, Lock, MessageInfo};
use crate::pop3::session::{Event, LoginError, Session};

/// RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
const IDLE: Duration = Duration::from_secs(600);

/// Serves one accepted POP3 connection to the end.
pub async fn serve(stream: TcpStream, peer: SocketAddr, l: Arc<ListenerCtx>, w: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let config = l.session_config();
    let mut transport = Transport::Plain(stream);
    let mut tls = false;
    if l.implicit_tls {
        let Some(tls_config) = l.tls_config() else { return };
        if transport.accept_tls(tls_config, config.command_timeout, &w.metrics).await.is_none() {
            return;
        }
        tls = true;
    }
    let ip = canonical(peer.ip());
    let stls = config.starttls && l.tls_config().is_some();
    let mut d = Driver {
        session: Session::new(config.hostname.as_str(), stls, tls, ip.is_loopback()),
        transport,
        rbuf: Vec::with_capacity(READ_MIN),
        start: 0,
        wbuf: Vec::new(),
        lock: None,
        write_timeout: config.command_timeout,
        l,
        w,
    };
    let we_closed = d.run().await;
    drop(d.lock.take());
    if we_closed {
        d.transport.lingering_close(Duration::from_secs(2)).await;
    } else {
        d.transport.close().await;
    }
}

struct Driver {
    session: Session,
    transport: Transport,
    rbuf: Vec<u8>,
    start: usize,
    wbuf: Vec<u8>,
    /// Held from a successful login to the end of the session.
    lock: Option<Lock>,
    write_timeout: Duration,
    l: Arc<ListenerCtx>,
    w: Rc<WorkerCtx>,
}

impl Driver {
    /// Runs the session; true if it ended by our decision with the
    /// connection still up.
    async fn run(&mut self) -> bool {
        loop {
            if self.start < self.rbuf.len() {
                self.start += self.session.handle_input(&self.rbuf[self.start..]);
                if self.start == self.rbuf.len() {
                    self.rbuf.clear();
                    self.start = 0;
                }
            }
            let ok = match self.session.poll_event() {
                Some(Event::Login) => {
                    self.login().await;
                    true
                }
                Some(Event::Fetch) => {
                    self.fetch().await;
                    true
                }
                Some(Event::Commit) => {
                    self.commit().await;
                    true
                }
                Some(Event::StartTls) => self.flush().await && self.start_tls().await,
                Some(Event::Close) => return self.flush().await,
                None if self.session.is_done() => return self.flush().await,
                None => self.flush().await && self.fill().await,
            };
            if !ok {
                return false;
            }
        }
    }

    async fn flush(&mut self) -> bool {
        if self.session.output().is_empty() {
            return true;
        }
        let session = &mut self.session;
        self.transport.send_swapped(&mut self.wbuf, self.write_timeout, |b| session.swap_output(b)).await
    }

    /// Reads more input, until the idle timer or a shutdown. False if the
    /// connection is gone.
    async fn fill(&mut self) -> bool {
        if self.start > 0 {
            self.rbuf.drain(..self.start);
            self.start = 0;
        }
        if self.w.signal.stage() >= DRAINING {
            self.session.handle_shutdown();
            return true;
        }
        let buf = std::mem::take(&mut self.rbuf);
        let deadline = super::clock::instant() + IDLE;
        let stop = self.w.signal.changed(self.w.signal.stage());
        let (res, buf) = self.transport.read_until(buf, deadline, stop).await;
        self.rbuf = buf;
        match res {
            Ok(ReadOutcome::Data(_)) => true,
            Ok(ReadOutcome::Eof) => {
                self.session.handle_eof();
                false
            }
            Ok(ReadOutcome::Cancelled) => {
                if self.w.signal.stage() >= DRAINING {
                    self.session.handle_shutdown();
                } else {
                    self.session.handle_timeout();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Checks the password (slow on purpose, so off the worker), then takes
    /// the maildrop's lock and lists it.
    async fn login(&mut self) {
        let Some((user, pass)) = self.session.credentials() else { return };
        let (user, pass) = (user.to_owned(), pass.to_owned());
        let config = self.l.session_config();
        let hash = config.policy.password_hash(&user).map(str::to_owned);
        let dir = maildrop_dir(&self.l.mail_dir(), &user);
        let ok = monoio::spawn_blocking(move || crate::auth::verify(hash.as_deref(), &pass))
            .await
            .unwrap_or(false);
        inc(if ok { &self.w.metrics.auth_successes } else { &self.w.metrics.auth_failures });
        let result = match (ok, dir) {
            (false, _) | (true, None) => Err(LoginError::Credentials),
            (true, Some(dir)) => match Lock::acquire(&dir) {
                None => Err(LoginError::InUse),
                Some(lock) => {
                    let listed = monoio::spawn_blocking(move || maildrop::load(&dir)).await;
                    match listed {
                        Ok(Ok(messages)) => {
                            self.lock = Some(lock);
                            tracing::info!(user = %user, messages = messages.len(), "pop3 login");
                            Ok(messages)
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(user = %user, error = %e, "cannot list a maildrop");
                            Err(LoginError::Unavailable)
                        }
                        Err(_) => Err(LoginError::Unavailable),
                    }
                }
            },
        };
        self.session.handle_login(result);
    }

    async fn fetch(&mut self) {
        let Some((_, m)) = self.session.fetch() else { return };
        let path = m.path.clone();
        let content = monoio::spawn_blocking(move || maildrop::read(&path))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("blocking pool gone")));
        self.session.handle_content(content);
    }

    /// The UPDATE state: remove what was deleted.
    async fn commit(&mut self) {
        let deleted: Vec<MessageInfo> = self.session.deleted().cloned().collect();
        let count = deleted.len();
        let failed = monoio::spawn_blocking(move || maildrop::remove(deleted.iter())).await.unwrap_or(count);
        tracing::info!(removed = count - failed, failed, "pop3 update");
        self.session.handle_commit(failed);
    }

    /// RFC 2595 §4: after `+OK`, forget buffered plaintext, then handshake.
    async fn start_tls(&mut self) -> bool {
        self.rbuf.clear();
        self.start = 0;
        let Some(config) = self.l.tls_config() else { return false };
        if self.transport.accept_tls(config, self.write_timeout, &self.w.metrics).await.is_none() {
            return false;
        }
        self.session.handle_tls_established();
        true
    }
}

/// The Maildir of a login name (`local-part@domain`), if it names one.
fn maildrop_dir(mail_dir: &std::path::Path, user: &str) -> Option<PathBuf> {
    let (local, domain) = user.rsplit_once('@')?;
    crate::delivery::local::mailbox_dir(mail_dir, domain, local).ok()
}
