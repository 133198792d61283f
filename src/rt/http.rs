//! Serves one connection of a `kind = "http"` listener: HTTP/1.1 with
//! keep-alive, request heads parsed by `httparse`, bodies by
//! `Content-Length` only and bounded (`[limits] inject_size` for the
//! injection API, [`MAX_BODY`] otherwise, and charged to the message memory
//! budget while held). What to answer is decided by the pure cores
//! (`inject`, `feedback::unsubscribe`); this file reads, hands injection
//! requests to `rt::inject`, applies what the unsubscribe core decides (a
//! suppression, an event) and writes.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use super::clock::{instant, unix_secs};
use super::ctx::{ListenerCtx, WorkerCtx};
use super::inject;
use super::stage::Stage;
use super::transport::{ReadOutcome, Transport};
use crate::feedback::unsubscribe::{self, Answer, Request};
use crate::metrics::inc;
use crate::suppress::Reason;

use crate::httpreq::{INJECT, MAX_BODY, MAX_HEAD};
/// Requests served on one connection before it is closed.
const MAX_REQUESTS: usize = 1000;

/// Serves one accepted connection to the end.
pub async fn serve(stream: TcpStream, peer: SocketAddr, listener: Arc<ListenerCtx>, worker: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let timeout = listener.session_config().command_timeout;
    let mut transport = Transport::Plain(stream);
    if listener.implicit_tls {
        let Some(tls) = listener.tls_config() else { return };
        if transport.accept_tls(tls, timeout, &worker.metrics).await.is_none() {
            return;
        }
    }
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..MAX_REQUESTS {
        let inject_size = usize::try_from(listener.live.get().inject_size).unwrap_or(usize::MAX);
        let Some(req) = read_request(&mut transport, &mut buf, timeout, &worker, inject_size).await else {
            break;
        };
        let mut head_only = false;
        let (answer, close) = match req {
            Ok(Head { head: r, charged }) => {
                head_only = r.method == "HEAD";
                let body = &buf[r.head_len..r.head_len + r.body_len];
                let path = r.path();
                let answer = if path == INJECT && r.method == "POST" {
                    let req = inject::Request {
                        authorization: r.authorization.as_deref(),
                        body,
                        peer: crate::policy::canonical(peer.ip()),
                        tls: listener.implicit_tls,
                    };
                    inject::handle(req, &listener, &worker).await
                } else if path == INJECT {
                    inject::text(405, "use POST")
                } else {
                    let snapshot = listener.live.get();
                    let answer = unsubscribe::handle(
                        snapshot.unsubscribe.as_deref(),
                        Request { method: &r.method, target: &r.target, body },
                    );
                    apply(answer, &worker).await
                };
                buf.drain(..r.head_len + r.body_len);
                worker.memory.release(charged);
                // Give back a large body's buffer.
                if buf.capacity() > MAX_HEAD + MAX_BODY {
                    buf.shrink_to(MAX_HEAD);
                }
                (answer, r.close)
            }
            Err(a) => (a, true),
        };
        let draining = worker.signal.stage() > Stage::Running;
        let close = close || draining;
        let mut out = response(&answer, close);
        if head_only {
            out.truncate(out.len() - answer.body.len());
        }
        let written = monoio::time::timeout(timeout, transport.write_all(out)).await;
        if !matches!(written, Ok((Ok(()), _))) || close {
            break;
        }
    }
    transport.lingering_close(Duration::from_secs(2)).await;
}

/// A request head (`httpreq`) and what the connection holds for it.
struct Head {
    head: crate::httpreq::Head,
    /// Bytes of the memory budget the body holds.
    charged: usize,
}

/// The next request (its body in `buf` after the head), an error answer to
/// send before closing, or None when the peer is gone, idle too long, or
/// the server is shutting down between requests.
async fn read_request(
    transport: &mut Transport,
    buf: &mut Vec<u8>,
    timeout: Duration,
    worker: &WorkerCtx,
    inject_size: usize,
) -> Option<Result<Head, Answer>> {
    let deadline = instant() + timeout;
    let head = loop {
        match crate::httpreq::parse_head(buf, inject_size) {
            Ok(Some(head)) => {
                // A large body is held in memory: charged to the budget SMTP
                // content shares, or refused for now.
                let charged = if head.body_len > MAX_BODY { head.body_len } else { 0 };
                if charged > 0 && !worker.memory.try_charge(charged) {
                    tracing::warn!("message memory budget spent; an injection request gets 503");
                    return Some(Err(text(503, "server busy, try again")));
                }
                break Head { head, charged };
            }
            Ok(None) => {}
            Err(r) => {
                if r.inject {
                    inc(&worker.metrics.inject_refused);
                }
                return Some(Err(text(r.status, &r.text)));
            }
        }
        // Between requests, a shutdown ends the wait; within one it does not.
        let idle = buf.is_empty();
        if !fill(transport, buf, deadline, worker, idle).await {
            return None;
        }
    };
    let total = head.head.head_len + head.head.body_len;
    buf.reserve(total.saturating_sub(buf.len()));
    if head.head.expect_continue && buf.len() < total {
        let sent =
            monoio::time::timeout(timeout, transport.write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()))
                .await;
        if !matches!(sent, Ok((Ok(()), _))) {
            worker.memory.release(head.charged);
            return None;
        }
    }
    while buf.len() < total {
        if !fill(transport, buf, deadline, worker, false).await {
            worker.memory.release(head.charged);
            return None;
        }
    }
    Some(Ok(head))
}

/// Reads more into `buf`; false on EOF, error, the deadline, or (when
/// `stoppable`) a shutdown.
async fn fill(
    transport: &mut Transport,
    buf: &mut Vec<u8>,
    deadline: std::time::Instant,
    worker: &WorkerCtx,
    stoppable: bool,
) -> bool {
    let stop = async {
        if stoppable {
            worker.signal.changed(Stage::Running).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let (res, b) = transport.read_until(std::mem::take(buf), deadline, stop).await;
    *buf = b;
    matches!(res, Ok(ReadOutcome::Data(_)))
}

/// Carries out what the answer asks: the suppression first (durably), then
/// the event; only then is the answer sent.
async fn apply(mut answer: Answer, worker: &WorkerCtx) -> Answer {
    let Some(r) = answer.unsubscribe.take() else { return answer };
    let Some(address) = r.recipient.clone() else { return answer };
    match worker.owner.suppression().add(&address, r.tenant.as_deref(), Reason::Unsubscribe, unix_secs()) {
        Ok(durable) => durable.await,
        Err(e) => {
            tracing::warn!(error = %e, "unsubscribe: the address in a valid token is not one");
            return text(400, "this unsubscribe link is not valid");
        }
    }
    worker.metrics.unsubscribes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(recipient = %address, tenant = ?r.tenant, campaign = ?r.campaign, id = %r.id, "one-click unsubscribe");
    let events = worker.owner.events();
    if events.enabled() {
        let e = crate::delivery::owner::feedback_event(&r, "unsubscribe", None);
        events.emit_durable(vec![e]).await;
    }
    answer
}

fn text(status: u16, body: &str) -> Answer {
    Answer { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n"), unsubscribe: None }
}

fn response(a: &Answer, close: bool) -> Vec<u8> {
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        401 => "Unauthorized",
        411 => "Length Required",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let challenge = if a.status == 401 { "WWW-Authenticate: Bearer realm=\"ringpost\"\r\n" } else { "" };
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\
         {challenge}Cache-Control: no-store\r\n\r\n{}",
        a.status,
        a.content_type,
        a.body.len(),
        a.body
    )
    .into_bytes()
}
