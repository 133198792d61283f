//! Admin HTTP (loopback by default): `/health`, `/metrics`, `/queue`.
//! Runs on its own thread with its own io_uring runtime, off the hot path; it
//! asks workers for queue data through their inboxes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use serde_json::json;

use crate::envelope::QueueId;
use crate::rt::ctx::{Control, Shared};
use crate::rt::inbox::Inbox;

/// Longest request head we read.
const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves the admin API on a new thread. Returns the bound
/// address (port 0 picks one).
pub fn start(
    addr: SocketAddr,
    token: Option<String>,
    shared: Arc<Shared>,
    serving: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    let bound = std_listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("ringpost-admin".into()).spawn(move || {
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build();
        let mut rt = match rt {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            let admin = Arc::new(Admin { shared, serving, token, verified: Default::default() });
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        monoio::spawn(admin.clone().handle(stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        monoio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    })?;
    rx.recv().map_err(|_| std::io::Error::other("admin thread died"))??;
    Ok(bound)
}

struct Admin {
    shared: Arc<Shared>,
    serving: Arc<AtomicBool>,
    /// `[admin] token`: the PHC hash every request's bearer token must match.
    token: Option<String>,
    /// SHA-256 of tokens that matched (an argon2 check costs tens of
    /// milliseconds; a known token, a hash lookup). Bounded.
    verified: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// Most distinct good tokens remembered.
const VERIFIED_MAX: usize = 16;

impl Admin {
    /// Whether the request may go on: no token configured, or its bearer
    /// token matches.
    fn authorized(&self, req: &Request) -> bool {
        let Some(hash) = &self.token else { return true };
        let Some(token) = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref().to_vec();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains(&digest) {
            return true;
        }
        if !crate::auth::verify(Some(hash), token.trim()) {
            return false;
        }
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(digest);
        true
    }
}

/// The selector of a suspend or resume body, and its other fields.
fn scope_of(
    body: &[u8],
) -> Result<(crate::delivery::holds::Scope, serde_json::Map<String, serde_json::Value>), String> {
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("expected a JSON object: {e}"))?;
    let mut found = None;
    for kind in ["domain", "tenant", "campaign"] {
        if let Some(v) = m.remove(kind) {
            if found.is_some() {
                return Err("only one of domain, tenant, campaign".into());
            }
            let v = v.as_str().ok_or(format!("{kind} must be a string"))?.to_owned();
            found = Some(crate::delivery::holds::Scope::parse(kind, &v)?);
        }
    }
    let scope = found.ok_or("one of domain, tenant, campaign is needed")?;
    if let Some(k) = m.keys().find(|k| *k != "for") {
        return Err(format!("unknown field {k}"));
    }
    Ok((scope, m))
}

/// Writes the suspensions durably: a temporary file, fsync, rename, the
/// directory fsynced.
pub fn save_holds(spool: &std::path::Path, holds: &crate::delivery::holds::Holds) -> std::io::Result<()> {
    crate::spool::recover::replace_file_durable(&spool.join("holds.json"), holds.to_json().as_bytes())
}

/// The suspensions saved by [`save_holds`]; none if there is no file.
pub fn load_holds(spool: &std::path::Path) -> Result<crate::delivery::holds::Holds, String> {
    let path = spool.join("holds.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => crate::delivery::holds::Holds::from_json(&text)
            .map_err(|e| format!("{}: {e} (fix it, or remove it to lift every suspension)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(status: u16, v: serde_json::Value) -> Response {
        Response { status, content_type: "application/json", body: format!("{v}\n") }
    }
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

impl Admin {
    async fn handle(self: Arc<Self>, mut stream: TcpStream) {
        let head = match monoio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
            Ok(Some(head)) => head,
            _ => return,
        };
        let resp = match parse_request(&head) {
            Some(req) if !self.authorized(&req) => {
                tracing::warn!(method = %req.method, path = %req.path, "admin request without a valid token");
                Response::text(401, "a valid bearer token is required ([admin] token)\n")
            }
            Some(req) => match check_origin(&req, &self.names()) {
                Ok(()) => match read_body(&mut stream, &head, &req).await {
                    Ok(body) => self.route(&req.method, &req.path, &body).await,
                    Err(resp) => resp,
                },
                Err(why) => {
                    tracing::warn!(method = %req.method, path = %req.path, why, "admin request refused");
                    Response::text(403, format!("forbidden: {why}\n"))
                }
            },
            None => Response::text(400, "bad request\n"),
        };
        let reason = match resp.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let challenge = if resp.status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" };
        let out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n{}",
            resp.status,
            resp.content_type,
            resp.body.len(),
            resp.body
        );
        let (written, _) = match monoio::time::timeout(IO_TIMEOUT, stream.write_all(out.into_bytes())).await {
            Ok(r) => r,
            Err(_) => return,
        };
        if written.is_ok() {
            linger(&mut stream).await;
        }
    }

    /// The names a request may give in `Host` besides `localhost` and IP
    /// literals: the configured host name (as reloaded) and the system's.
    fn names(&self) -> Vec<String> {
        let mut names = vec![self.shared.live.delivery().hostname.clone()];
        if let Ok(system) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(system.trim().to_owned());
        }
        names
    }

    async fn route(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let full_path = path;
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["health"]) => {
                if self.serving.load(Ordering::Acquire) {
                    // Degraded is still serving: detail lines, status 200.
                    let detail = match &self.shared.redis {
                        Some(r) if r.client.up() => "redis: up\n",
                        Some(_) => "redis: down (local limits; suppressions wait to be shared)\n",
                        None => "",
                    };
                    Response::text(200, format!("ok\n{detail}"))
                } else {
                    Response::text(503, "starting\n")
                }
            }
            ("GET", ["metrics"]) => {
                Response { status: 200, content_type: "text/plain; version=0.0.4", body: self.metrics() }
            }
            ("GET", ["queue"]) => self.queue().await,
            ("DELETE", ["queue", id]) => self.delete(id).await,
            ("GET", ["queue", "messages"]) => self.list(query_limit(full_path)).await,
            ("GET", ["queue", id]) => self.show(id).await,
            ("POST", ["queue", "flush"]) => self.flush().await,
            ("POST", ["suspend"]) => self.suspend(body),
            ("POST", ["resume"]) => self.resume(body).await,
            ("POST", ["queue", id, "bounce"]) => self.bounce(id).await,
            ("GET", ["suppression"]) => self.suppression_list(full_path),
            ("POST", ["suppression"]) => self.suppression_add(body).await,
            ("DELETE", ["suppression", address]) => self.suppression_remove(address, full_path).await,
            (_, ["health" | "metrics" | "queue" | "suppression" | "suspend" | "resume"])
            | (_, ["queue" | "suppression", _]) => Response::text(405, "method not allowed\n"),
            _ => Response::text(404, "not found\n"),
        }
    }

    /// `GET /suppression[?address=A][&limit=N]`: entries sorted by address.
    fn suppression_list(&self, full_path: &str) -> Response {
        let store = &self.shared.suppression;
        let address = query_param(full_path, "address");
        let limit = query_param(full_path, "limit").and_then(|l| l.parse().ok()).unwrap_or(1000usize);
        let entries = store.list(address.as_deref(), limit.min(1_000_000));
        Response::json(200, json!({"count": store.len(), "entries": entries}))
    }

    /// `POST /suppression` with `{"address", "tenant"?, "reason"?}`; answers
    /// once the entry is on disk.
    async fn suppression_add(&self, body: &[u8]) -> Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Add {
            address: String,
            #[serde(default)]
            tenant: Option<String>,
            #[serde(default)]
            reason: Option<String>,
        }
        let add: Add = match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => {
                return Response::text(
                    400,
                    format!("bad request: expected {{\"address\", \"tenant\", \"reason\"}}: {e}\n"),
                )
            }
        };
        let reason = match add.reason.as_deref() {
            None => crate::suppress::Reason::Manual,
            Some(r) => match crate::suppress::Reason::parse(r) {
                Some(r) => r,
                None => {
                    return Response::text(
                        400,
                        "bad request: reason is one of manual, complaint, unsubscribe, bounce:<Class>\n",
                    )
                }
            },
        };
        let now = crate::rt::clock::unix_secs();
        match self.shared.suppression.add(&add.address, add.tenant.as_deref(), reason, now) {
            Ok(durable) => {
                durable.await;
                tracing::info!(address = %add.address, tenant = ?add.tenant, reason = %reason.as_string(), "suppression added");
                Response::json(
                    200,
                    json!({"added": add.address, "tenant": add.tenant, "reason": reason.as_string()}),
                )
            }
            Err(e) => Response::text(400, format!("bad request: {e}\n")),
        }
    }

    /// `DELETE /suppression/{address}[?tenant=T]`.
    async fn suppression_remove(&self, address: &str, full_path: &str) -> Response {
        let address = percent_decode(address);
        let tenant = query_param(full_path, "tenant");
        let (removed, durable) = self.shared.suppression.remove(&address, tenant.as_deref());
        durable.await;
        if removed {
            tracing::info!(%address, ?tenant, "suppression removed");
            Response::json(200, json!({"removed": address, "tenant": tenant}))
        } else {
            Response::text(404, "not on the suppression list\n")
        }
    }

    /// Sends one request to every worker and waits for all answers (bounded).
    async fn ask<T>(&self, request: impl Fn(Arc<Inbox<T>>) -> Control) -> Option<Vec<T>> {
        let reply = Arc::new(Inbox::new());
        for inbox in &self.shared.inboxes {
            inbox.send(request(reply.clone()));
        }
        let mut answers = Vec::with_capacity(self.shared.inboxes.len());
        for _ in 0..self.shared.inboxes.len() {
            answers.push(monoio::time::timeout(IO_TIMEOUT, reply.recv()).await.ok()?);
        }
        Some(answers)
    }

    async fn queue(&self) -> Response {
        let Some(parts) = self.ask(Control::Queue).await else {
            return no_answer();
        };
        #[derive(Default)]
        struct Row {
            messages: u64,
            recipients: u64,
            next_attempt: Option<u64>,
            last_error: Option<String>,
        }
        let mut domains = std::collections::BTreeMap::<String, Row>::new();
        for p in &parts {
            for (d, c) in &p.domains {
                let e = domains.entry(d.clone()).or_default();
                e.messages += c.messages;
                e.recipients += c.recipients;
            }
        }
        // Retry state is known by the owners of the messages.
        for p in &parts {
            for (d, st) in &p.status {
                if let Some(e) = domains.get_mut(d) {
                    if let Some(t) = st.next_attempt {
                        e.next_attempt = Some(e.next_attempt.map_or(t, |x| x.min(t)));
                    }
                    if e.last_error.is_none() {
                        e.last_error.clone_from(&st.last_error);
                    }
                }
            }
        }
        let domains: Vec<_> = domains
            .into_iter()
            .map(|(d, r)| {
                json!({"domain": d, "messages": r.messages, "recipients": r.recipients,
                    "next_attempt": r.next_attempt, "last_error": r.last_error})
            })
            .collect();
        Response::json(
            200,
            json!({
                "messages": parts.iter().map(|p| p.messages).sum::<usize>(),
                "recipients": parts.iter().map(|p| p.recipients).sum::<u64>(),
                "deferred": parts.iter().map(|p| p.deferred).sum::<usize>(),
                "in_flight": parts.iter().map(|p| p.in_flight).sum::<usize>(),
                "outbound_connections": parts.iter().map(|p| p.outbound_connections).sum::<usize>(),
                "domains": domains,
                "suspensions": self.suspensions().into_iter().map(|((source, destination), (until, reason))| {
                    json!({"source": source, "destination": destination, "until": until, "reason": reason})
                }).collect::<Vec<_>>(),
                "tenant_suspensions": self.shared.metrics.tenant_holds.all(crate::rt::clock::unix_secs())
                    .into_iter()
                    .map(|(tenant, until, reason)| json!({"tenant": tenant, "until": until, "reason": reason}))
                    .collect::<Vec<_>>(),
                "sources": self.sources_today(),
                "queue_suspensions": self.shared.metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner())
                    .active(crate::rt::clock::unix_secs()).cloned().collect::<Vec<_>>(),
                "held_messages": self.shared.metrics.held_messages.load(Ordering::Relaxed),
                "parked_messages": self.shared.metrics.parked_messages.load(Ordering::Relaxed),
            }),
        )
    }

    /// Shaping suspensions in force: (source, budget) -> (until, why).
    fn suspensions(&self) -> Vec<((String, String), (u64, String))> {
        let now = crate::rt::clock::unix_secs();
        let s = self.shared.metrics.suspensions.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().filter(|(_, (until, _))| *until > now).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Each egress source with what it took today.
    fn sources_today(&self) -> Vec<serde_json::Value> {
        let egress = self.shared.live.delivery().egress.clone();
        let day = crate::delivery::egress::day_of(crate::rt::clock::unix_secs());
        let daily = self.shared.metrics.egress_daily.lock().unwrap_or_else(|p| p.into_inner());
        egress
            .sources
            .iter()
            .map(|s| {
                json!({"name": s.name, "address": s.address.to_string(), "ehlo": s.ehlo,
                    "today": daily.get(day, &s.name), "max_per_day": s.max_per_day})
            })
            .collect()
    }

    /// `POST /suspend {"domain"|"tenant"|"campaign": "...", "for": "1h"}`:
    /// saved to `<spool>/holds.json` before it is answered.
    fn suspend(&self, body: &[u8]) -> Response {
        let (scope, rest) = match scope_of(body) {
            Ok(x) => x,
            Err(e) => return Response::text(400, format!("bad request: {e}\n")),
        };
        let now = crate::rt::clock::unix_secs();
        let until = match rest.get("for").map(|v| v.as_str().map(crate::config::parse_duration)) {
            None => None,
            Some(Some(Ok(d))) if d.as_secs() >= 1 => Some(now + d.as_secs()),
            _ => {
                return Response::text(400, "bad request: \"for\" is a duration such as \"30m\" or \"2h\"\n")
            }
        };
        let mut holds = self.shared.metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = holds.clone();
        if let Err(e) = next.suspend(scope.clone(), now, until) {
            return Response::text(409, format!("{e}\n"));
        }
        if let Err(e) = save_holds(&self.shared.spool_dir, &next) {
            tracing::error!(error = %e, "cannot save the queue suspensions");
            return Response::json(503, json!({"error": format!("cannot save the suspension: {e}")}));
        }
        *holds = next;
        tracing::warn!(scope = %scope.describe(), until = ?until, "queue suspended by the administrator");
        Response::json(200, json!({"suspended": scope, "until": until}))
    }

    /// `POST /resume {"domain"|"tenant"|"campaign": "..."}`: its mail is
    /// planned again at once.
    async fn resume(&self, body: &[u8]) -> Response {
        let (scope, rest) = match scope_of(body) {
            Ok(x) => x,
            Err(e) => return Response::text(400, format!("bad request: {e}\n")),
        };
        if !rest.is_empty() {
            return Response::text(400, "bad request: only one of domain, tenant, campaign\n");
        }
        let was = {
            let mut holds = self.shared.metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = holds.clone();
            let was = next.resume(&scope);
            if was {
                if let Err(e) = save_holds(&self.shared.spool_dir, &next) {
                    tracing::error!(error = %e, "cannot save the queue suspensions");
                    return Response::json(503, json!({"error": format!("cannot save: {e}")}));
                }
                *holds = next;
            }
            was
        };
        if !was {
            return Response::json(404, json!({"error": format!("no suspension of {}", scope.describe())}));
        }
        tracing::warn!(scope = %scope.describe(), "queue resumed by the administrator");
        let released = self.ask(Control::Release).await.map(|c| c.iter().sum::<usize>());
        Response::json(200, json!({"resumed": scope, "released": released}))
    }

    /// An operator's "go now": also to destinations that failed moments
    /// ago, so their backoffs are cleared everywhere first.
    async fn flush(&self) -> Response {
        if self.ask(Control::ClearBackoff).await.is_none() {
            return no_answer();
        }
        match self.ask(Control::Flush).await {
            Some(counts) => Response::json(200, json!({"flushed": counts.iter().sum::<usize>()})),
            None => no_answer(),
        }
    }

    async fn bounce(&self, id: &str) -> Response {
        let id = match parse_id(id) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let Some(answers) = self.ask(|reply| Control::Bounce(id, reply)).await else {
            return no_answer();
        };
        if let Some(Err(e)) = answers.iter().find(|a| a.is_err()) {
            return Response::json(503, json!({"error": e}));
        }
        if answers.contains(&Ok(true)) {
            Response::json(200, json!({"bounced": id.to_string()}))
        } else {
            Response::json(404, json!({"error": "no such message"}))
        }
    }

    async fn list(&self, limit: usize) -> Response {
        let Some(parts) = self.ask(|reply| Control::List(limit, reply)).await else {
            return no_answer();
        };
        let mut all: Vec<_> = parts.into_iter().flatten().collect();
        all.sort_by_key(|m| m.id);
        all.truncate(limit);
        let now = crate::rt::clock::unix_secs();
        let rows: Vec<_> = all
            .iter()
            .map(|m| {
                json!({"id": m.id.to_string(), "age": now.saturating_sub(m.received_at), "received_at": m.received_at,
                    "sender": m.sender, "recipients": m.recipients, "attempts": m.attempts,
                    "next_attempt": m.next_attempt, "last_error": m.last_error})
            })
            .collect();
        Response::json(200, json!({"messages": rows}))
    }

    async fn show(&self, id: &str) -> Response {
        let id = match parse_id(id) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let Some(answers) = self.ask(|reply| Control::Show(id, reply)).await else {
            return no_answer();
        };
        match answers.into_iter().flatten().next() {
            Some(m) => Response::json(
                200,
                json!({"id": id.to_string(), "received_at": m.received_at, "recipients": m.recipients, "size": m.size}),
            ),
            None => Response::json(404, json!({"error": "no such message"})),
        }
    }

    async fn delete(&self, id: &str) -> Response {
        let id = match parse_id(id) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let Some(answers) = self.ask(|reply| Control::Delete(id, reply)).await else {
            return no_answer();
        };
        if let Some(Err(e)) = answers.iter().find(|a| a.is_err()) {
            return Response::json(503, json!({"error": e}));
        }
        if answers.contains(&Ok(true)) {
            Response::json(200, json!({"deleted": id.to_string()}))
        } else {
            Response::json(404, json!({"error": "no such message"}))
        }
    }

    fn metrics(&self) -> String {
        let m = &self.shared.metrics;
        let s = &self.shared.spool_stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let counters = [
            (
                "ringpost_connections_accepted_total",
                "Inbound connections accepted",
                load(&m.connections_accepted),
            ),
            (
                "ringpost_connections_refused_total",
                "Inbound connections refused by limits",
                load(&m.connections_refused),
            ),
            (
                "ringpost_messages_accepted_total",
                "Messages accepted (durable, 250 sent)",
                load(&m.messages_accepted),
            ),
            (
                "ringpost_messages_rejected_total",
                "Messages refused at end of data",
                load(&m.messages_rejected),
            ),
            ("ringpost_recipients_rejected_total", "RCPT commands refused", load(&m.recipients_rejected)),
            ("ringpost_bytes_accepted_total", "Bytes of accepted messages", load(&m.bytes_accepted)),
            (
                "ringpost_spool_failures_total",
                "Messages answered 452 because the spool failed",
                load(&m.spool_failures),
            ),
            ("ringpost_spool_commits_total", "Group commits (write + fdatasync)", load(&s.commits)),
            ("ringpost_spool_records_total", "Records made durable", load(&s.committed_records)),
            (
                "ringpost_spool_commits_overlapped_total",
                "Group commits written while the previous one's fdatasync was still running",
                load(&s.commits_overlapped),
            ),
            (
                "ringpost_spool_segments_created_total",
                "Spool segment files created",
                load(&s.segments_created),
            ),
            (
                "ringpost_spool_segments_recycled_total",
                "Dead spool segment files reused as new segments (renamed and overwritten)",
                load(&s.segments_recycled),
            ),
            (
                "ringpost_spool_segments_deleted_total",
                "Spool segment files deleted",
                load(&s.segments_deleted),
            ),
            (
                "ringpost_spool_recovery_corrupt_total",
                "Damaged regions of committed spool records skipped at startup (their records are lost)",
                load(&s.recovery_corrupt),
            ),
            (
                "ringpost_spool_recovery_undecodable_total",
                "Whole spool records that could not be decoded at startup (skipped)",
                load(&s.recovery_undecodable),
            ),
            ("ringpost_tls_handshakes_total", "Successful inbound TLS handshakes", load(&m.tls_handshakes)),
            ("ringpost_tls_failures_total", "Failed inbound TLS handshakes", load(&m.tls_failures)),
            ("ringpost_auth_successes_total", "Successful AUTH", load(&m.auth_successes)),
            ("ringpost_auth_failures_total", "Failed AUTH", load(&m.auth_failures)),
            (
                "ringpost_auth_throttled_total",
                "Logins refused because their address failed too often (limits.auth_failures_per_ip)",
                load(&m.auth_throttled),
            ),
            ("ringpost_delivered_total", "Recipients delivered", load(&m.delivered)),
            (
                "ringpost_local_already_delivered_total",
                "Local deliveries that found their copy in the Maildir from before a crash and wrote no second one",
                load(&m.local_found),
            ),
            (
                "ringpost_deferred_total",
                "Recipient delivery attempts that failed temporarily",
                load(&m.deferred),
            ),
            ("ringpost_bounced_total", "Recipients that failed permanently", load(&m.bounced)),
            (
                "ringpost_expired_total",
                "Of the bounced, recipients given up on after max_age",
                load(&m.expired),
            ),
            ("ringpost_dsn_total", "Delivery status notifications queued", load(&m.dsns)),
            ("ringpost_config_reloads_total", "SIGHUP reloads put in force", load(&m.config_reloads)),
            (
                "ringpost_config_reload_failures_total",
                "SIGHUP reloads refused (the running configuration stayed)",
                load(&m.config_reload_failures),
            ),
            ("ringpost_dns_cache_hits_total", "DNS cache hits", load(&self.shared.dns_cache.stats.hits)),
            (
                "ringpost_dns_cache_misses_total",
                "DNS queries sent",
                load(&self.shared.dns_cache.stats.misses),
            ),
            (
                "ringpost_dns_cache_coalesced_total",
                "DNS lookups that waited for a query already in flight",
                load(&self.shared.dns_cache.stats.coalesced),
            ),
            (
                "ringpost_dns_cache_stale_total",
                "DNS lookups answered with an expired answer while another refreshed it",
                load(&self.shared.dns_cache.stats.stale),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            ("ringpost_connections", "Inbound connections open now", self.shared.limits.current() as u64),
            (
                "ringpost_message_memory_bytes",
                "Memory taken by message content now (counted against limits.message_memory)",
                self.shared.memory.used() as u64,
            ),
            ("ringpost_queue_messages", "Messages in the queue", load(&s.messages)),
            ("ringpost_queue_recipients", "Recipients in the queue", load(&s.recipients)),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.egress_metrics(&mut out);
        self.feedback_metrics(&mut out);
        m.store_latency.render(
            &mut out,
            "ringpost_store_latency_seconds",
            "End of data to durable (group commit wait)",
        );
        s.write_latency.render(
            &mut out,
            "ringpost_spool_write_seconds",
            "Group commit write of one batch (new segment included)",
        );
        s.sync_latency.render(
            &mut out,
            "ringpost_spool_fdatasync_seconds",
            "Group commit fdatasync of one batch",
        );
        out
    }
}

impl Admin {
    /// Events by type, failures by bounce class, webhooks.
    fn feedback_metrics(&self, out: &mut String) {
        use crate::delivery::classify::Class;
        use crate::events::EventType;
        let m = &self.shared.metrics;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let name = "ringpost_events_total";
        let _ = writeln!(out, "# HELP {name} Events emitted, by type\n# TYPE {name} counter");
        for t in EventType::ALL {
            let _ = writeln!(out, "{name}{{type=\"{}\"}} {}", t.as_str(), load(&m.events[t.index()]));
        }
        for (name, help, counts) in [
            ("ringpost_bounces_total", "Permanent recipient failures, by bounce class", &m.bounces_by_class),
            (
                "ringpost_deferrals_total",
                "Temporary recipient failures, by bounce class",
                &m.deferrals_by_class,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for c in Class::ALL {
                let _ = writeln!(out, "{name}{{class=\"{}\"}} {}", c.as_str(), load(&counts[c.index()]));
            }
        }
        let name = "ringpost_feedback_reports_total";
        let _ = writeln!(
            out,
            "# HELP {name} Complaint reports read (accepted: tied back to a message we sent; rejected: kept aside)\n\
             # TYPE {name} counter\n{name}{{result=\"accepted\"}} {}\n{name}{{result=\"rejected\"}} {}",
            load(&m.feedback_accepted),
            load(&m.feedback_rejected)
        );
        let name = "ringpost_tls_reports_total";
        let _ = writeln!(
            out,
            "# HELP {name} TLS reports (RFC 8460) sent to the domains that ask for them (queued as mail, or posted), and those that failed\n\
             # TYPE {name} counter\n{name}{{result=\"sent\"}} {}\n{name}{{result=\"failed\"}} {}",
            load(&m.tls_reports_sent),
            load(&m.tls_reports_failed)
        );
        let (domains, dropped) = {
            let agg = m.tls_report.lock().unwrap_or_else(|p| p.into_inner());
            (agg.domains.len(), agg.dropped)
        };
        let name = "ringpost_tls_report_domains";
        let _ = writeln!(out, "# HELP {name} Domains with TLS sessions counted for the next reports\n# TYPE {name} gauge\n{name} {domains}");
        let name = "ringpost_tls_report_dropped";
        let _ = writeln!(out, "# HELP {name} TLS sessions not counted in this period (too many domains or policies)\n# TYPE {name} gauge\n{name} {dropped}");
        for (name, help, v) in [
            ("ringpost_unsubscribes_total", "One-click unsubscribes carried out", &m.unsubscribes),
            ("ringpost_inject_requests_total", "Injection API requests answered 200", &m.inject_requests),
            ("ringpost_mta_sts_fetches_total", "MTA-STS policies fetched", &m.mta_sts_fetches),
            (
                "ringpost_mta_sts_fetch_failures_total",
                "MTA-STS policy fetches that failed",
                &m.mta_sts_fetch_failures,
            ),
            (
                "ringpost_mta_sts_enforced_total",
                "Recipient groups sent under an enforced MTA-STS policy (verified TLS only)",
                &m.mta_sts_enforced,
            ),
            (
                "ringpost_mta_sts_refused_total",
                "Recipient groups deferred because no MX host matched an enforced MTA-STS policy",
                &m.mta_sts_refused,
            ),
            (
                "ringpost_dane_groups_total",
                "Recipient groups sent to MX hosts with validated TLSA records (DANE: matching certificates only)",
                &m.dane_groups,
            ),
            (
                "ringpost_dane_refused_hosts_total",
                "MX hosts not tried because their TLSA lookup failed (DANE)",
                &m.dane_refused_hosts,
            ),
            (
                "ringpost_inject_refused_total",
                "Injection API requests refused (400, 401, 413, 503)",
                &m.inject_refused,
            ),
            ("ringpost_injected_total", "Messages queued through the injection API", &m.injected),
            (
                "ringpost_inject_failed_recipients_total",
                "Injection API recipients that got no message",
                &m.inject_failed_recipients,
            ),
            (
                "ringpost_events_write_failures_total",
                "Failed writes of the events file or journal",
                &m.events_write_failures,
            ),
            (
                "ringpost_events_dropped_bytes_total",
                "Journal bytes dropped unsent past [events] max_backlog",
                &m.events_dropped_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", load(v));
        }
        {
            let now = crate::rt::clock::unix_secs();
            let active =
                self.shared.metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner()).active(now).count();
            for (name, help, v) in [
                ("ringpost_queue_suspensions", "Queue suspensions in force (queue suspend)", active as u64),
                (
                    "ringpost_queue_held_messages",
                    "Messages a queue suspension holds",
                    load(&self.shared.metrics.held_messages),
                ),
                (
                    "ringpost_queue_parked_messages",
                    "Messages waiting without an attempt until their domain's destination, found down, is probed again",
                    load(&self.shared.metrics.parked_messages),
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        if let Some(r) = &self.shared.redis {
            let c = &r.client;
            for (name, kind, help, v) in [
                ("ringpost_redis_up", "gauge", "1 while the [redis] connection is up", u64::from(c.up())),
                (
                    "ringpost_redis_requests_total",
                    "counter",
                    "Requests made to Redis",
                    load(&c.stats.requests),
                ),
                (
                    "ringpost_redis_failures_total",
                    "counter",
                    "Requests to Redis that failed (local state used instead)",
                    load(&c.stats.failures),
                ),
                (
                    "ringpost_redis_connects_total",
                    "counter",
                    "Connections made to Redis",
                    load(&c.stats.connects),
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            }
        }
        if let Some(s) = &self.shared.shared_suppression {
            for (name, help, v) in [
                ("ringpost_suppression_pending", "Suppression changes waiting for Redis", s.pending() as u64),
                (
                    "ringpost_suppression_synced",
                    "1 while the suppression list is in step with Redis",
                    u64::from(s.synced()),
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        let hooks = m.webhooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, kind, help) in [
            ("ringpost_webhook_posts_total", "counter", "Batches a webhook accepted"),
            ("ringpost_webhook_events_total", "counter", "Events a webhook accepted"),
            ("ringpost_webhook_failures_total", "counter", "Failed webhook POSTs"),
            ("ringpost_webhook_backlog_bytes", "gauge", "Journal bytes a webhook has not accepted yet"),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (url, c) in &hooks {
                let v = match name {
                    "ringpost_webhook_posts_total" => c.posts,
                    "ringpost_webhook_events_total" => c.events,
                    "ringpost_webhook_failures_total" => c.failures,
                    _ => c.backlog_bytes,
                };
                let _ = writeln!(out, "{name}{{url=\"{}\"}} {v}", label(url));
            }
        }
    }

    /// Per (source, shaping budget) outcomes, the suspensions in force, and
    /// each source's count today. Budgets of no `[[shaping]]` rule are
    /// summed as destination="other", so the label set stays bounded.
    fn egress_metrics(&self, out: &mut String) {
        let name = "ringpost_egress_recipients_total";
        let _ = writeln!(out, "# HELP {name} Recipient outcomes per egress source and shaping destination");
        let _ = writeln!(out, "# TYPE {name} counter");
        let egress = self.shared.metrics.egress.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((source, dest), c) in &egress {
            for (outcome, v) in [("delivered", c.delivered), ("deferred", c.deferred), ("bounced", c.bounced)]
            {
                let _ = writeln!(
                    out,
                    "{name}{{source=\"{}\",destination=\"{}\",outcome=\"{outcome}\"}} {v}",
                    label(source),
                    label(dest)
                );
            }
        }
        let name = "ringpost_egress_suspended";
        let _ = writeln!(out, "# HELP {name} Shaping suspensions in force (1), per source and destination");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for ((source, dest), _) in self.suspensions() {
            let _ =
                writeln!(out, "{name}{{source=\"{}\",destination=\"{}\"}} 1", label(&source), label(&dest));
        }
        let name = "ringpost_tenant_suspended";
        let _ = writeln!(out, "# HELP {name} Tenants held by shaping automation (1)");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (tenant, _, _) in self.shared.metrics.tenant_holds.all(crate::rt::clock::unix_secs()) {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} 1", label(&tenant));
        }
        let name = "ringpost_source_messages_today";
        let _ = writeln!(out, "# HELP {name} Messages handed to each egress source this UTC day");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for s in self.sources_today() {
            let _ = writeln!(
                out,
                "{name}{{source=\"{}\"}} {}",
                label(s["name"].as_str().unwrap_or("")),
                s["today"]
            );
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `limit=N` from a query string; default 100, at most 10,000.
fn query_limit(path: &str) -> usize {
    path.split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
        .min(10_000)
}

fn parse_id(id: &str) -> Result<QueueId, Response> {
    QueueId::parse(id).ok_or_else(|| Response::json(400, json!({"error": "a queue id is 16 hex digits"})))
}

fn no_answer() -> Response {
    Response::json(503, json!({"error": "workers did not answer"}))
}

/// Reads up to the blank line ending the request head.
/// Closes our side and reads what the client still sends (at most 64 KiB,
/// 2 s) before the socket goes: closing with unread bytes makes the kernel
/// send a reset, which can destroy the answer before the client reads it
/// (a client that sent a stray CRLF after its body, or pipelined more).
async fn linger(stream: &mut TcpStream) {
    let _ = monoio::io::AsyncWriteRent::shutdown(stream).await;
    let drain = async {
        let mut buf = vec![0u8; 8192];
        let mut total = 0;
        while total < 64 * 1024 {
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => total += n,
                _ => return,
            }
        }
    };
    let _ = monoio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    loop {
        let buf = Vec::with_capacity(2048);
        let (res, buf) = stream.read(buf).await;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.extend_from_slice(&buf),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(head);
        }
        if head.len() > MAX_REQUEST {
            return None;
        }
    }
}

/// Largest request body (a suppression entry is a few hundred bytes).
const MAX_BODY: usize = 64 << 10;

/// The request's body: what came with the head, then the rest of
/// `Content-Length` (bounded).
async fn read_body(stream: &mut TcpStream, head: &[u8], req: &Request) -> Result<Vec<u8>, Response> {
    let want = req.content_length.unwrap_or(0);
    if want > MAX_BODY {
        return Err(Response::text(413, "request body too large\n"));
    }
    let mut body = head.get(req.head_len..).unwrap_or_default().to_vec();
    body.truncate(want);
    while body.len() < want {
        let buf = Vec::with_capacity(want - body.len());
        let (res, buf) = match monoio::time::timeout(IO_TIMEOUT, stream.read(buf)).await {
            Ok(r) => r,
            Err(_) => return Err(Response::text(400, "request body timed out\n")),
        };
        match res {
            Ok(0) | Err(_) => return Err(Response::text(400, "request body cut short\n")),
            Ok(_) => body.extend_from_slice(&buf),
        }
    }
    body.truncate(want);
    Ok(body)
}

/// A query parameter's value, percent-decoded.
fn query_param(full_path: &str, name: &str) -> Option<String> {
    let query = full_path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// `%40` -> `@`, `+` stays (addresses may hold it).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the admin API needs of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    host: Option<String>,
    origin: Option<String>,
    authorization: Option<String>,
    /// Where the head ends in the bytes read.
    head_len: usize,
    /// `Content-Length`, if given (and a number).
    content_length: Option<usize>,
}

/// Parses a request head (httparse); `None` if it is not HTTP/1.x with an
/// absolute path.
fn parse_request(head: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let path = req.path?;
    if !path.starts_with('/') {
        return None;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_owned())
    };
    Some(Request {
        method: req.method?.to_owned(),
        path: path.to_owned(),
        host: header("Host"),
        origin: header("Origin"),
        authorization: header("Authorization"),
        head_len,
        content_length: header("Content-Length").and_then(|v| v.parse().ok()),
    })
}

/// Refuses what a web page could make a browser on this machine send: a
/// `Host` that is not this machine (DNS rebinding: a page's own name made
/// to resolve to us), and an `Origin` of another site (a cross-site form or
/// fetch). Tools (curl, Prometheus, the CLI) send a local or own `Host` and
/// no `Origin`.
fn check_origin(req: &Request, names: &[String]) -> Result<(), &'static str> {
    let host = req.host.as_deref().ok_or("a Host header is required")?;
    if !is_local_host(host, names) {
        return Err("Host is not this server (use an IP address, localhost or the server's host name)");
    }
    match req.origin.as_deref() {
        None => Ok(()),
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            if origin_host.eq_ignore_ascii_case(host) || is_loopback_host(origin_host) {
                Ok(())
            } else {
                Err("requests from other sites (Origin) are refused")
            }
        }
    }
}

/// `host[:port]` without the port; an IPv6 literal keeps its brackets off.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `localhost` or a loopback address literal.
fn is_loopback_host(authority: &str) -> bool {
    let h = strip_port(authority);
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A name for this machine: `localhost`, any IP literal (a browser sends
/// one only for a page loaded from that very address), or one of `names`.
fn is_local_host(authority: &str, names: &[String]) -> bool {
    let h = strip_port(authority);
    is_loopback_host(authority)
        || h.parse::<std::net::IpAddr>().is_ok()
        || names.iter().any(|n| n.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_and_percent_decoding() {
        assert_eq!(query_param("/suppression?address=a%40b.test&limit=5", "address").unwrap(), "a@b.test");
        assert_eq!(query_param("/suppression?address=a%40b.test&limit=5", "limit").unwrap(), "5");
        assert_eq!(query_param("/suppression", "address"), None);
        assert_eq!(percent_decode("a+b%2Bc%4"), "a+b+c%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn request_heads() {
        let r = parse_request(b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1:8025\r\norigin: http://x\r\n\r\n")
            .unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/queue".into(),
                host: Some("127.0.0.1:8025".into()),
                origin: Some("http://x".into()),
                authorization: None,
                head_len: 63,
                content_length: None,
            }
        );
        assert_eq!(parse_request(b"GET queue HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request(b"EHLO x\r\n\r\n"), None);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost"), None, "incomplete");
    }

    #[test]
    fn only_local_hosts_and_origins() {
        let names = vec!["mx1.example.com".to_owned()];
        let req = |host: Option<&str>, origin: Option<&str>| Request {
            method: "POST".into(),
            path: "/queue/flush".into(),
            host: host.map(str::to_owned),
            origin: origin.map(str::to_owned),
            authorization: None,
            head_len: 0,
            content_length: None,
        };
        let ok = [
            (Some("127.0.0.1:8025"), None),
            (Some("localhost:8025"), None),
            (Some("LOCALHOST"), None),
            (Some("[::1]:8025"), None),
            (Some("10.0.0.5:8025"), None),
            (Some("mx1.example.com:8025"), None),
            (Some("127.0.0.1:8025"), Some("http://127.0.0.1:8025")),
            (Some("127.0.0.1:8025"), Some("http://localhost:3000")),
            (Some("mx1.example.com:8025"), Some("https://mx1.example.com:8025")),
        ];
        for (host, origin) in ok {
            assert_eq!(check_origin(&req(host, origin), &names), Ok(()), "{host:?} {origin:?}");
        }
        let refused = [
            (None, None),
            (Some("attacker.example:8025"), None),
            (Some("127.0.0.1.attacker.example"), None),
            (Some("localhost.attacker.example"), None),
            (Some("127.0.0.1:8025"), Some("http://attacker.example")),
            (Some("127.0.0.1:8025"), Some("null")),
            (Some("mx1.example.com:8025"), Some("http://mx1.example.com.attacker.example")),
        ];
        for (host, origin) in refused {
            assert!(check_origin(&req(host, origin), &names).is_err(), "{host:?} {origin:?}");
        }
    }
}
