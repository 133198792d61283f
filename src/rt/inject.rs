//! Applies an injection API request (`POST /api/inject/v1`): the token,
//! then for each recipient what `inject` renders, signed, spooled and
//! queued like a message received over SMTP. The answer goes back once
//! every message it counts is durable (the spool's group commit), so a
//! `success_count` means what SMTP's `250` means.
//!
//! Recipients are handled in chunks ([`CHUNK`] messages, a
//! `store::Batch` each): a chunk is rendered and signed, handed to the
//! spool, and the previous chunk's commit is awaited before the next one is
//! rendered, so rendering and the disk overlap and a request holds at most
//! two chunks of messages in memory (charged to `[limits] message_memory`).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::clock::{instant, unix_secs};
use super::conn::suppressed_event;
use super::ctx::{ListenerCtx, WorkerCtx};
use super::store::Batch;
use crate::auth::Token;
use crate::envelope::{BodyType, Envelope, Notify, Recipient};
use crate::feedback::unsubscribe::Answer;
use crate::inject::{self, Stamp};
use crate::metrics::inc;
use crate::policy::RcptVerdict;

/// Messages rendered, signed and spooled together.
const CHUNK: usize = 256;

/// What the connection knows about one request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
    pub peer: IpAddr,
    pub tls: bool,
}

/// Serves one request to the end.
pub async fn handle(req: Request<'_>, listener: &ListenerCtx, worker: &WorkerCtx) -> Answer {
    let answer = run(req, listener, worker).await;
    let m = &worker.metrics;
    inc(if answer.status == 200 { &m.inject_requests } else { &m.inject_refused });
    answer
}

async fn run(req: Request<'_>, listener: &ListenerCtx, worker: &WorkerCtx) -> Answer {
    let snapshot = listener.live.get();
    let Some(token) = authorize(&snapshot.http_tokens, req.authorization, req.peer, worker).await else {
        return text(401, "a valid bearer token is required ([[http_token]])");
    };
    let parsed = match inject::parse(req.body) {
        Ok(p) => p,
        Err(e) => return text(400, &e),
    };
    let plan = match inject::plan(&parsed, token.tenant.as_deref()) {
        Ok(p) => p,
        Err(e) => return text(400, &e),
    };
    let started = instant();
    let session = listener.session_config();
    let hostname = session.hostname.as_str();
    let mut out = inject::Answer::default();
    let mut previous: Option<Batch<String>> = None;
    for recipients in parsed.recipients.chunks(CHUNK) {
        let mut chunk = Batch::default();
        let mut suppressed = Vec::new();
        let unix = unix_secs();
        for r in recipients {
            let to = match inject::recipient(r) {
                Ok(to) => to,
                Err(e) => {
                    out.fail(&r.email, &e);
                    continue;
                }
            };
            if session.policy.check_recipient(&to, true) == RcptVerdict::UnknownUser {
                out.fail(&r.email, "unknown user (550 5.1.1)");
                continue;
            }
            let address = to.to_string();
            if let Some(e) =
                session.suppression.as_ref().and_then(|s| s.check(&address, plan.tenant.as_deref()))
            {
                out.fail(&r.email, &format!("suppressed ({}) (550 5.7.1)", e.reason));
                suppressed.push(suppressed_event(crate::smtp::session::SuppressedRcpt {
                    sender: plan.sender.to_string(),
                    recipient: address,
                    tenant: e.tenant,
                    reason: e.reason,
                }));
                continue;
            }
            let id = worker.ids.borrow_mut().next(unix);
            let stamp = Stamp { id, unix, hostname, peer: req.peer, tls: req.tls, token: &token.name };
            let body = match plan.render(r, &to, stamp, session.max_message_size) {
                Ok(b) => b,
                Err(e) => {
                    out.fail(&r.email, &e);
                    continue;
                }
            };
            let envelope = Envelope {
                id,
                received_at: unix,
                reverse_path: plan.sender.clone(),
                smtputf8: !to.is_ascii() || plan.sender.mailbox().is_some_and(|m| !m.is_ascii()),
                recipients: vec![Recipient { address: to, notify: Notify::default(), orcpt: None }],
                body_type: if body.is_ascii() { BodyType::SevenBit } else { BodyType::EightBitMime },
                ret: None,
                envid: None,
                client_ip: Some(req.peer),
                helo: String::from("api"),
                auth_user: Some(token.name.clone()),
                tenant: plan.tenant.clone(),
                campaign: plan.campaign.clone(),
                requiretls: false,
                tls_not_required: crate::mail::tls_not_required(&body),
            };
            // RFC 8058 headers, before signing, as for SMTP.
            let body = match &snapshot.unsubscribe {
                Some(u) => {
                    let r = crate::feedback::token::Ref {
                        id: id.to_string(),
                        recipient: Some(address),
                        tenant: envelope.tenant.clone(),
                        campaign: envelope.campaign.clone(),
                    };
                    crate::feedback::unsubscribe::add_headers(u, &body, &r).unwrap_or(body)
                }
                None => body,
            };
            chunk.push(r.email.clone(), envelope, body);
        }
        if !suppressed.is_empty() {
            worker.owner.events().emit(suppressed);
        }
        chunk.spool(&snapshot.dkim, worker, |rcpt, why| out.fail(&rcpt, why)).await;
        if let Some(p) = previous.take() {
            p.settle(worker, |rcpt, r| settled(&mut out, &rcpt, r)).await;
        }
        previous = Some(chunk);
    }
    if let Some(p) = previous {
        p.settle(worker, |rcpt, r| settled(&mut out, &rcpt, r)).await;
    }
    let m = &worker.metrics;
    m.injected.fetch_add(out.success_count as u64, Ordering::Relaxed);
    m.inject_failed_recipients.fetch_add(out.fail_count as u64, Ordering::Relaxed);
    tracing::info!(token = %token.name, tenant = ?plan.tenant, campaign = ?plan.campaign, queued = out.success_count,
        failed = out.fail_count, ms = started.elapsed().as_millis() as u64, "injection request");
    Answer {
        status: 200,
        content_type: "application/json",
        body: serde_json::to_string(&out).unwrap_or_default(),
        unsubscribe: None,
    }
}

/// The token a request's `Authorization: Bearer` names, if it is one.
/// An unknown token costs an argon2 check per configured token, on the
/// blocking pool; failures count toward `[limits] auth_failures_per_ip`.
async fn authorize(
    tokens: &Arc<crate::auth::Tokens>,
    authorization: Option<&str>,
    peer: IpAddr,
    worker: &WorkerCtx,
) -> Option<Token> {
    let presented = authorization?.strip_prefix("Bearer ")?.trim();
    if presented.is_empty() || tokens.is_empty() {
        return None;
    }
    if let Some(t) = tokens.known(presented) {
        return Some(t.clone());
    }
    if worker.auth_blocked(peer) {
        return None;
    }
    let (all, owned) = (tokens.clone(), presented.to_owned());
    let found = monoio::spawn_blocking(move || all.verify(&owned).cloned()).await.ok().flatten();
    inc(if found.is_some() { &worker.metrics.auth_successes } else { &worker.metrics.auth_failures });
    if found.is_none() {
        tracing::warn!(client = %peer, "injection request with an unknown token");
        worker.auth_failed(peer);
    }
    found
}

fn settled(out: &mut inject::Answer, rcpt: &str, r: Result<(), &str>) {
    match r {
        Ok(()) => out.success_count += 1,
        Err(why) => out.fail(rcpt, why),
    }
}

pub fn text(status: u16, body: &str) -> Answer {
    Answer { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n"), unsubscribe: None }
}
