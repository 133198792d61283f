//! Serves one POP3 session: the connection driver (`driver`) moves the
//! bytes; this file acts on the session's events: password checks, Maildir
//! reads and removals on the blocking pool, the maildrop lock for the
//! session's lifetime, STLS, and the shutdown stage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;

use super::clock::instant;
use super::ctx::{ListenerCtx, WorkerCtx};
use super::driver::{Conn, Filled};
use super::stage::Stage;
use super::transport::Transport;
use crate::metrics::inc;
use crate::policy::canonical;
use crate::pop3::maildrop::{self, Lock};
use crate::pop3::session::{Event, LoginError, Session};
use crate::pop3::MessageInfo;

/// Serves one accepted POP3 connection to the end.
pub async fn serve(stream: TcpStream, peer: SocketAddr, listener: Arc<ListenerCtx>, worker: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let config = listener.session_config();
    let mut transport = Transport::Plain(stream);
    let mut tls = false;
    if listener.implicit_tls {
        let Some(tls_config) = listener.tls_config() else { return };
        if transport.accept_tls(tls_config, config.command_timeout, &worker.metrics).await.is_none() {
            return;
        }
        tls = true;
    }
    let ip = canonical(peer.ip());
    let stls = config.starttls && listener.tls_config().is_some();
    let mut d = Driver {
        session: Session::new(config.hostname.as_str(), stls, tls, ip.is_loopback(), instant()),
        conn: Conn::new(transport, config.command_timeout),
        lock: None,
        peer: ip,
        listener,
        worker,
    };
    let ours = d.run().await;
    drop(d.lock.take());
    d.conn.close(ours).await;
}

struct Driver {
    session: Session,
    conn: Conn,
    /// Held from a successful login to the end of the session.
    lock: Option<Lock>,
    /// The client's address (failed logins are counted per address).
    peer: std::net::IpAddr,
    listener: Arc<ListenerCtx>,
    worker: Rc<WorkerCtx>,
}

impl Driver {
    /// Runs the session; true if it ended by our decision with the
    /// connection still up.
    async fn run(&mut self) -> bool {
        loop {
            self.conn.feed(&mut self.session);
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
                Some(Event::StartTls) => self.conn.flush(&mut self.session).await && self.start_tls().await,
                Some(Event::Close) => return self.conn.flush(&mut self.session).await,
                None if self.session.is_done() => return self.conn.flush(&mut self.session).await,
                None => self.conn.flush(&mut self.session).await && self.fill().await,
            };
            if !ok {
                return false;
            }
        }
    }

    /// Reads more input, until the inactivity timer or a shutdown. False if
    /// the connection is gone.
    async fn fill(&mut self) -> bool {
        let signal = &self.worker.signal;
        if signal.stage() >= Stage::Draining {
            self.session.handle_shutdown();
            return true;
        }
        match self.conn.fill(&mut self.session, signal.changed(signal.stage())).await {
            Filled::Data => true,
            Filled::Cancelled => {
                if signal.stage() >= Stage::Draining {
                    self.session.handle_shutdown();
                }
                true
            }
            Filled::Eof | Filled::Gone => false,
        }
    }

    /// Checks the password (slow on purpose, so off the worker), then takes
    /// the maildrop's lock and lists it.
    async fn login(&mut self) {
        let Some((user, pass)) = self.session.credentials() else { return };
        let (user, pass) = (user.to_owned(), pass.to_owned());
        let ip = self.peer;
        if self.worker.auth_blocked(ip) {
            tracing::warn!(client = %ip, user = %user, "pop3 login refused: too many failures from this address");
            self.session.handle_login(Err(LoginError::Throttled));
            return;
        }
        let config = self.listener.session_config();
        let hash = config.policy.password_hash(&user).map(str::to_owned);
        let dir = maildrop_dir(&self.listener.mail_dir(), &user);
        let ok = monoio::spawn_blocking(move || crate::auth::verify(hash.as_deref(), &pass))
            .await
            .unwrap_or(false);
        inc(if ok { &self.worker.metrics.auth_successes } else { &self.worker.metrics.auth_failures });
        if !ok {
            self.worker.auth_failed(ip);
        }
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
        self.conn.discard_input();
        let Some(config) = self.listener.tls_config() else { return false };
        let limit = self.listener.session_config().command_timeout;
        if self.conn.transport.accept_tls(config, limit, &self.worker.metrics).await.is_none() {
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
