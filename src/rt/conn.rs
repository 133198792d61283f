//! Serves one inbound SMTP session: the connection driver (`driver`) moves
//! the bytes; this file acts on the session's events (store a message,
//! check a password, start TLS) and the shutdown stage. No protocol
//! decisions are made here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use monoio::net::TcpStream;

use super::clock::{instant, now, unix_millis, unix_secs};
use super::ctx::{ListenerCtx, WorkerCtx};
use super::driver::{Conn, Filled};
use super::stage::Stage;
use super::transport::Transport;
use crate::dkim::{Algorithm, SignError, Signer, Signers};
use crate::events::{self, EventType};
use crate::metrics::inc;
use crate::policy::canonical;
use crate::smtp::session::{ConnInfo, Event, Session, StoreError};
use crate::spool::AppendError;

/// Serves one accepted connection to the end.
pub async fn serve(stream: TcpStream, peer: SocketAddr, listener: Arc<ListenerCtx>, worker: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let config = listener.session_config();
    let mut transport = Transport::Plain(stream);
    let mut tls = None;
    if listener.implicit_tls {
        let Some(tls_config) = listener.tls_config() else { return };
        match transport.accept_tls(tls_config, config.command_timeout, &worker.metrics).await {
            Some(info) => tls = Some(info),
            None => return,
        }
    }
    let ip = canonical(peer.ip());
    let trusted = config.policy.is_trusted(ip);
    let write_timeout = config.command_timeout;
    let session = Session::new(config, ConnInfo { peer: ip, trusted, tls }, worker.ids.clone(), now());
    let mut d = Driver {
        conn: Conn::new(transport, write_timeout),
        session,
        seen_stage: Stage::Running,
        charged: 0,
        eof: false,
        peer: ip,
        listener,
        worker,
    };
    let ours = d.run().await;
    d.worker.memory.release(d.charged);
    d.conn.close(ours).await;
}

struct Driver {
    conn: Conn,
    session: Session,
    seen_stage: Stage,
    /// Bytes of the memory budget this session holds.
    charged: usize,
    /// The peer closed its side.
    eof: bool,
    /// The client's address.
    peer: std::net::IpAddr,
    listener: Arc<ListenerCtx>,
    worker: Rc<WorkerCtx>,
}

impl Driver {
    /// Runs the session. True if it ended by our decision (QUIT, errors,
    /// timeout, shutdown) with the connection still up.
    async fn run(&mut self) -> bool {
        loop {
            self.conn.feed(&mut self.session);
            self.bookkeeping();
            let ok = match self.session.poll_event() {
                Some(Event::Store) => {
                    self.store().await;
                    true
                }
                Some(Event::Authenticate) => {
                    self.authenticate().await;
                    true
                }
                Some(Event::StartTls) => self.conn.flush(&mut self.session).await && self.start_tls().await,
                Some(Event::Close) => return self.conn.flush(&mut self.session).await && !self.eof,
                None => self.conn.flush(&mut self.session).await && self.fill().await,
            };
            if !ok {
                return false;
            }
        }
    }

    /// After the session moved: memory accounting and refusal counters.
    fn bookkeeping(&mut self) {
        self.account_memory();
        for s in self.session.take_suppressed() {
            let log = self.worker.owner.events();
            if log.enabled() {
                log.emit(vec![suppressed_event(s)]);
            }
        }
        let (messages, recipients) = self.session.take_refusals();
        if messages + recipients > 0 {
            let m = &self.worker.metrics;
            m.messages_rejected.fetch_add(u64::from(messages), Ordering::Relaxed);
            m.recipients_rejected.fetch_add(u64::from(recipients), Ordering::Relaxed);
        }
    }

    /// Charges what the session's message content takes to the server's
    /// memory budget; when it is spent, the message is dropped (452).
    fn account_memory(&mut self) {
        let held = self.session.content_memory();
        let memory = &self.worker.memory;
        if held > self.charged {
            if memory.try_charge(held - self.charged) {
                self.charged = held;
            } else {
                tracing::warn!("message memory budget spent; dropping a message in progress (452)");
                self.session.handle_memory_pressure();
                memory.release(self.charged);
                self.charged = 0;
            }
        } else if held < self.charged {
            memory.release(self.charged - held);
            self.charged = held;
        }
    }

    /// Reads more input, until the session's deadline or a shutdown stage.
    /// False if the connection is gone.
    async fn fill(&mut self) -> bool {
        let stop = self.worker.signal.changed(self.seen_stage);
        let filled = self.conn.fill(&mut self.session, stop).await;
        self.apply_stage();
        match filled {
            Filled::Data | Filled::Cancelled => true,
            Filled::Eof => {
                self.eof = true;
                true
            }
            Filled::Gone => false,
        }
    }

    /// Tells the session about shutdown stages it has not seen.
    fn apply_stage(&mut self) {
        let stage = self.worker.signal.stage();
        if stage > self.seen_stage {
            self.seen_stage = stage;
            if stage >= Stage::Draining {
                self.session.handle_shutdown();
            }
            if stage >= Stage::Closing {
                self.session.handle_shutdown_deadline();
            }
        }
    }

    async fn store(&mut self) {
        let Some(msg) = self.session.message() else { return };
        let started = instant();
        let snapshot = self.listener.live.get();
        // Our mail to several recipients that gets RFC 8058 headers: one
        // copy per recipient, as each token names one recipient.
        if let Some(u) =
            snapshot.unsubscribe.as_deref().filter(|_| msg.ours && msg.envelope.recipients.len() > 1)
        {
            let copies = unsubscribe_copies(u, msg, &mut self.worker.ids.borrow_mut(), unix_secs());
            if let Some(copies) = copies {
                let result = store_copies(&self.worker, &snapshot.dkim, copies, started).await;
                self.session.handle_stored(result, now());
                self.bookkeeping();
                return;
            }
        }
        // RFC 8058 headers for tenant mail that has none: before signing,
        // so they are signed.
        let with_unsubscribe = match (&snapshot.unsubscribe, msg.ours, msg.envelope.recipients.as_slice()) {
            (Some(u), true, [one]) => {
                let r = crate::feedback::token::Ref {
                    id: msg.envelope.id.to_string(),
                    recipient: Some(one.address.to_string()),
                    tenant: msg.envelope.tenant.clone(),
                    campaign: msg.envelope.campaign.clone(),
                };
                crate::feedback::unsubscribe::add_headers(u, &msg.body, &r)
            }
            _ => None,
        };
        let body = with_unsubscribe.as_deref().unwrap_or(&msg.body);
        let signatures = match sign(&snapshot.dkim, msg.ours, body).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, id = %msg.envelope.id, "message not stored; replied 451");
                self.session.handle_stored(Err(StoreError::Local), now());
                self.bookkeeping();
                return;
            }
        };
        let size = (signatures.len() + body.len()) as u64;
        let ticket = self.worker.spool.append_message(&msg.envelope, &signatures, body);
        let result = match ticket.await {
            Ok(Ok(committed)) => {
                let id = committed.id;
                let m = &self.worker.metrics;
                inc(&m.messages_accepted);
                m.bytes_accepted.fetch_add(size, Ordering::Relaxed);
                m.store_latency.observe_us(started.elapsed().as_micros() as u64);
                tracing::info!(id = %id, from = %msg.envelope.reverse_path, rcpts = msg.envelope.recipients.len(),
                    size, client = %msg.envelope.client_ip.map(|i| i.to_string()).unwrap_or_default(), "queued");
                let log = self.worker.owner.events();
                if log.enabled() {
                    let mut e =
                        events::Event::about(EventType::Reception, &msg.envelope, size, unix_millis());
                    e.recipients = msg.envelope.recipients.iter().map(|r| r.address.to_string()).collect();
                    log.emit(vec![e]);
                }
                self.worker.owner.enqueue_new(&msg.envelope);
                Ok(())
            }
            Ok(Err(AppendError::Unstorable(_))) => Err(StoreError::Local),
            Ok(Err(AppendError::TooBig)) => Err(StoreError::TooBig),
            Ok(Err(e)) => {
                inc(&self.worker.metrics.spool_failures);
                tracing::warn!(error = %e, "message not stored; replied 452");
                Err(StoreError::Temporary)
            }
            Err(_) => Err(StoreError::Temporary),
        };
        self.session.handle_stored(result, now());
        self.bookkeeping();
    }

    async fn authenticate(&mut self) {
        let ip = self.peer;
        if self.worker.auth_blocked(ip) {
            tracing::warn!(client = %ip, "AUTH refused: too many failures from this address");
            self.session.handle_auth_throttled(now());
            return;
        }
        let Some((user, pass)) = self.session.credentials() else { return };
        let hash = self.listener.session_config().policy.password_hash(user).map(str::to_owned);
        let pass = pass.to_owned();
        let ok = monoio::spawn_blocking(move || crate::auth::verify(hash.as_deref(), &pass))
            .await
            .unwrap_or(false);
        inc(if ok { &self.worker.metrics.auth_successes } else { &self.worker.metrics.auth_failures });
        if !ok {
            self.worker.auth_failed(ip);
        }
        self.session.handle_auth_result(ok, now());
    }

    /// RFC 3207: after `220`, forget buffered plaintext, then handshake.
    async fn start_tls(&mut self) -> bool {
        self.conn.discard_input();
        let Some(config) = self.listener.tls_config() else { return false };
        let limit = self.listener.session_config().command_timeout;
        match self.conn.transport.accept_tls(config, limit, &self.worker.metrics).await {
            Some(info) => {
                self.session.handle_tls_established(info, now());
                true
            }
            None => false,
        }
    }
}

/// Most bytes the copies of one message may take together; past it the
/// message is stored once, without `List-Unsubscribe` (a copy per
/// recipient would never fit the memory budget, and mail must still go).
const MAX_COPIES_BYTES: usize = 64 << 20;

/// One copy of `msg` per recipient, each with `List-Unsubscribe` naming
/// that recipient; the first keeps the message's queue id (the one the
/// `250` names), the others get new ones. None if the message has a
/// `List-Unsubscribe` of its own, or the copies would pass
/// [`MAX_COPIES_BYTES`] (it is stored as it is).
pub(super) fn unsubscribe_copies(
    u: &crate::feedback::unsubscribe::Unsubscribe,
    msg: &crate::smtp::session::Message,
    ids: &mut crate::envelope::QueueIdGen,
    unix: u64,
) -> Option<Vec<(crate::envelope::Envelope, Vec<u8>)>> {
    let env = &msg.envelope;
    // Only tenant mail gets the header (`add_headers`).
    env.tenant.as_ref()?;
    if (msg.body.len() + 512).saturating_mul(env.recipients.len()) > MAX_COPIES_BYTES {
        tracing::warn!(id = %env.id, recipients = env.recipients.len(), size = msg.body.len(),
            "too big to store a copy per recipient: stored once, without List-Unsubscribe");
        return None;
    }
    let mut copies = Vec::with_capacity(env.recipients.len());
    for (i, rcpt) in env.recipients.iter().enumerate() {
        let id = if i == 0 { env.id } else { ids.next(unix) };
        let r = crate::feedback::token::Ref {
            id: id.to_string(),
            recipient: Some(rcpt.address.to_string()),
            tenant: env.tenant.clone(),
            campaign: env.campaign.clone(),
        };
        let body = crate::feedback::unsubscribe::add_headers(u, &msg.body, &r)?;
        let copy = crate::envelope::Envelope { id, recipients: vec![rcpt.clone()], ..env.clone() };
        copies.push((copy, body));
    }
    Some(copies)
}

/// Stores the copies [`unsubscribe_copies`] made, all or none: each signed
/// and appended, then, once every one is durable, queued with its
/// `Reception` event. If any cannot be stored, those that were are removed
/// again (a Done record) and the client gets the failure, so a retry does
/// not send anyone a second copy.
pub(super) async fn store_copies(
    worker: &WorkerCtx,
    dkim: &Arc<Signers>,
    copies: Vec<(crate::envelope::Envelope, Vec<u8>)>,
    started: std::time::Instant,
) -> Result<(), StoreError> {
    // The copies and their signatures, beyond the content the session holds.
    let charge: usize = copies.iter().map(|(_, b)| b.len() + 1024).sum();
    if !worker.memory.try_charge(charge) {
        tracing::warn!(copies = copies.len(), "message memory budget spent; message refused for now");
        return Err(StoreError::Temporary);
    }
    let result = store_copies_charged(worker, dkim, copies, started).await;
    worker.memory.release(charge);
    result
}

async fn store_copies_charged(
    worker: &WorkerCtx,
    dkim: &Arc<Signers>,
    copies: Vec<(crate::envelope::Envelope, Vec<u8>)>,
    started: std::time::Instant,
) -> Result<(), StoreError> {
    let n = copies.len();
    let (copies, signatures) = sign_each(dkim, copies).await;
    if copies.len() != n || signatures.iter().any(Result::is_err) {
        tracing::error!(copies = n, "DKIM signing failed; message not stored; replied 451");
        return Err(StoreError::Local);
    }
    let mut tickets = Vec::with_capacity(n);
    for ((env, body), sig) in copies.into_iter().zip(signatures) {
        let sig = sig.unwrap_or_default();
        let size = (sig.len() + body.len()) as u64;
        let ticket = worker.spool.append_message(&env, &sig, &body);
        tickets.push((env, size, ticket));
    }
    let mut stored = Vec::with_capacity(n);
    let mut failure = None;
    for (env, size, ticket) in tickets {
        match ticket.await {
            Ok(Ok(_)) => stored.push((env, size)),
            Ok(Err(AppendError::Unstorable(_))) => failure = failure.or(Some(StoreError::Local)),
            Ok(Err(AppendError::TooBig)) => failure = failure.or(Some(StoreError::TooBig)),
            Ok(Err(e)) => {
                inc(&worker.metrics.spool_failures);
                tracing::warn!(error = %e, "message copy not stored");
                failure = failure.or(Some(StoreError::Temporary));
            }
            Err(_) => failure = failure.or(Some(StoreError::Temporary)),
        }
    }
    if let Some(e) = failure {
        for (env, _) in &stored {
            // Not queued yet: no delivery can have started.
            let _ = worker.spool.finish(env.id).await;
        }
        tracing::warn!(
            copies = n,
            stored = stored.len(),
            "not every copy of a message was stored; none kept"
        );
        return Err(e);
    }
    let m = &worker.metrics;
    let log = worker.owner.events();
    let mut received = Vec::new();
    for (env, size) in &stored {
        inc(&m.messages_accepted);
        m.bytes_accepted.fetch_add(*size, Ordering::Relaxed);
        m.store_latency.observe_us(started.elapsed().as_micros() as u64);
        tracing::info!(id = %env.id, from = %env.reverse_path, rcpts = 1, size,
            client = %env.client_ip.map(|i| i.to_string()).unwrap_or_default(), "queued (one copy per recipient)");
        if log.enabled() {
            let mut e = events::Event::about(EventType::Reception, env, *size, unix_millis());
            e.recipients = env.recipients.iter().map(|r| r.address.to_string()).collect();
            received.push(e);
        }
        worker.owner.enqueue_new(env);
    }
    log.emit(received);
    Ok(())
}

/// The DKIM-Signature fields for `msg`, one per `[[dkim]]` entry of its
/// From: domain, in the configured order; none for a stranger's mail or a
/// domain without keys.
///
/// Cheap signatures (Ed25519 on a message of at most [`INLINE_SIGN_MAX`]
/// bytes: some 8 us) are made here, on the worker: handing them to
/// another thread and back costs about as much as the signature. Others
/// (RSA-2048: about 220 us of CPU each) run on the blocking pool,
/// so the worker's other sessions do not wait for them.
async fn sign(dkim: &Arc<Signers>, ours: bool, body: &[u8]) -> Result<Vec<u8>, SignError> {
    if !ours || dkim.is_empty() {
        return Ok(Vec::new());
    }
    let signers = dkim.for_message(body);
    if signers.is_empty() {
        return Ok(Vec::new());
    }
    let at = unix_secs();
    let cheap = body.len() <= INLINE_SIGN_MAX
        && signers.iter().all(|s| s.key.algorithm() == Algorithm::Ed25519Sha256);
    if cheap {
        return sign_all(signers, body, at);
    }
    let signers = signers.to_vec();
    let body: Arc<[u8]> = Arc::from(body);
    monoio::spawn_blocking(move || sign_all(&signers, &body, at)).await.unwrap_or(Err(SignError))
}

/// The DKIM-Signature fields of each of our messages (as [`sign`] makes
/// them), for a batch (the injection API): signed on the worker when every
/// signature is cheap, else all on one blocking-pool task. The messages
/// come back in order beside their signatures (none at all if the
/// blocking task died).
pub(super) async fn sign_each<T: Send + 'static>(
    dkim: &Arc<Signers>,
    messages: Vec<(T, Vec<u8>)>,
) -> (Vec<(T, Vec<u8>)>, Vec<Result<Vec<u8>, SignError>>) {
    fn all(dkim: &Signers, messages: &[(impl Sized, Vec<u8>)], at: u64) -> Vec<Result<Vec<u8>, SignError>> {
        messages.iter().map(|(_, body)| sign_all(dkim.for_message(body), body, at)).collect()
    }
    if dkim.is_empty() {
        let none = messages.iter().map(|_| Ok(Vec::new())).collect();
        return (messages, none);
    }
    let at = unix_secs();
    let cheap = messages.iter().all(|(_, body)| {
        let signers = dkim.for_message(body);
        signers.is_empty()
            || (body.len() <= INLINE_SIGN_MAX
                && signers.iter().all(|s| s.key.algorithm() == Algorithm::Ed25519Sha256))
    });
    if cheap {
        let sigs = all(dkim, &messages, at);
        return (messages, sigs);
    }
    let dkim = dkim.clone();
    let done = monoio::spawn_blocking(move || {
        let sigs = all(&dkim, &messages, at);
        (messages, sigs)
    })
    .await;
    // The blocking task died: the messages went with it (the caller
    // answers their recipients as failed; nothing was stored).
    done.unwrap_or_default()
}

/// Largest message signed on the worker itself (Ed25519 only).
const INLINE_SIGN_MAX: usize = 16 << 10;

fn sign_all(signers: &[Arc<Signer>], body: &[u8], at: u64) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::with_capacity(512 * signers.len());
    for s in signers {
        out.extend_from_slice(&s.sign(body, at)?);
    }
    Ok(out)
}

/// The `Suppressed` event of a recipient refused at RCPT (no queue id yet).
pub(super) fn suppressed_event(s: crate::smtp::session::SuppressedRcpt) -> events::Event {
    events::Event {
        kind: EventType::Suppressed,
        id: None,
        timestamp: events::Timestamp(unix_millis()),
        sender: s.sender,
        recipient: Some(s.recipient),
        recipients: Vec::new(),
        tenant: s.tenant,
        campaign: None,
        source: None,
        class: None,
        response: Some(events::Response {
            code: Some(550),
            enhanced: "5.7.1".into(),
            text: crate::smtp::reply::canned::SUPPRESSED.to_string(),
        }),
        size: 0,
        attempt: 0,
        next_hop: None,
        tls: None,
        peer: None,
        feedback_type: None,
        reason: Some(s.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Notify, QueueId, QueueIdGen, Recipient};
    use crate::smtp::address::Mailbox;

    fn message(recipients: usize, size: usize, own_header: bool) -> crate::smtp::session::Message {
        let mut envelope = crate::spool::record::tests::sample_envelope(7);
        envelope.tenant = Some("acme".into());
        envelope.recipients = (0..recipients)
            .map(|i| Recipient {
                address: Mailbox::parse(&format!("r{i}@example.test")).unwrap(),
                notify: Notify::default(),
                orcpt: None,
            })
            .collect();
        let mut body = b"Received: by mx.test\r\n".to_vec();
        if own_header {
            body.extend_from_slice(b"List-Unsubscribe: <mailto:u@example.test>\r\n");
        }
        body.extend_from_slice(b"Subject: s\r\n\r\n");
        body.resize(body.len() + size, b'a');
        crate::smtp::session::Message { envelope, body, ours: true }
    }

    #[test]
    fn copies_per_recipient_within_bounds() {
        let u = crate::feedback::unsubscribe::Unsubscribe::new("https://u.test", "a long enough secret here");
        let mut ids = QueueIdGen::new(0, QueueId(0));
        // (recipients, body bytes, has its own List-Unsubscribe) -> copies made
        let cases = [
            (3, 100, false, Some(3)),
            (3, 100, true, None),
            (2, MAX_COPIES_BYTES / 4, false, Some(2)),
            (1000, MAX_COPIES_BYTES / 500, false, None),
        ];
        for (rcpts, size, own, want) in cases {
            let mut msg = message(rcpts, size, own);
            msg.envelope.tenant = None;
            assert!(unsubscribe_copies(&u, &msg, &mut ids, 1_800_000_000).is_none(), "no tenant, no copies");
            msg.envelope.tenant = Some("acme".into());
            let copies = unsubscribe_copies(&u, &msg, &mut ids, 1_800_000_000);
            assert_eq!(copies.as_ref().map(Vec::len), want, "{rcpts} x {size}, own header {own}");
            let Some(copies) = copies else { continue };
            assert_eq!(copies[0].0.id, msg.envelope.id, "the first keeps the id the 250 names");
            let mut seen = std::collections::HashSet::new();
            for (i, (env, body)) in copies.iter().enumerate() {
                assert!(seen.insert(env.id), "ids differ");
                assert_eq!(env.recipients, vec![msg.envelope.recipients[i].clone()]);
                assert!(body.windows(17).any(|w| w == b"List-Unsubscribe:"));
            }
        }
    }
}
