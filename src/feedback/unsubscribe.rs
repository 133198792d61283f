//! RFC 8058 one-click unsubscribe: the two header fields added to tenant
//! mail that has none, and the answer to a request on a `kind = "http"`
//! listener. The URL is `<base_url>/unsubscribe/<token>`; the token names
//! the message, recipient, tenant and campaign, signed with `[unsubscribe]
//! secret` (see [`super::token`]).
//!
//! Pure: a request in, an answer and the unsubscribe to carry out (if any)
//! out; the shell suppresses the address and emits the event.

use super::token::{Purpose, Ref, Signer};

/// `[unsubscribe]` as the server uses it.
#[derive(Debug, Clone)]
pub struct Unsubscribe {
    pub base_url: String,
    pub signer: Signer,
}

impl Unsubscribe {
    pub fn new(base_url: &str, secret: &str) -> Unsubscribe {
        Unsubscribe {
            base_url: base_url.trim_end_matches('/').to_owned(),
            signer: Signer::new(secret.as_bytes()),
        }
    }

    /// The URL for one recipient of one message.
    pub fn url(&self, r: &Ref) -> String {
        format!("{}/unsubscribe/{}", self.base_url, self.signer.seal(Purpose::Unsubscribe, r))
    }

    /// `List-Unsubscribe` and `List-Unsubscribe-Post` (CRLF-terminated,
    /// folded before the URL so no line passes 998 octets).
    pub fn headers(&self, r: &Ref) -> Vec<u8> {
        format!(
            "List-Unsubscribe:\r\n <{}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            self.url(r)
        )
        .into_bytes()
    }
}

/// `message` with the two header fields added after its first field (our
/// Received), if it is tenant mail to exactly one recipient without a
/// `List-Unsubscribe` of its own; None otherwise (then it is left as it is).
pub fn add_headers(u: &Unsubscribe, message: &[u8], r: &Ref) -> Option<Vec<u8>> {
    r.recipient.as_ref()?;
    r.tenant.as_ref()?;
    let (fields, _) = crate::mail::fields(message);
    if fields.iter().any(|f| f.is(message, "List-Unsubscribe")) {
        return None;
    }
    let at = fields.first().map_or(0, |f| f.raw.end);
    let headers = u.headers(r);
    let mut out = Vec::with_capacity(message.len() + headers.len());
    out.extend_from_slice(&message[..at]);
    out.extend_from_slice(&headers);
    out.extend_from_slice(&message[at..]);
    Some(out)
}

/// An HTTP request as the core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query.
    pub target: &'a str,
    pub body: &'a [u8],
}

/// What to answer, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Suppress this recipient (for its tenant) and say so in a `Feedback` event.
    pub unsubscribe: Option<Ref>,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            unsubscribe: None,
        }
    }
}

/// The token of an unsubscribe URL's path (`.../unsubscribe/<token>`).
fn token_of(target: &str) -> Option<&str> {
    let path = target.split('?').next().unwrap_or(target);
    let (head, token) = path.trim_end_matches('/').rsplit_once('/')?;
    head.ends_with("/unsubscribe").then_some(token)
}

/// Whether `body` (application/x-www-form-urlencoded) holds
/// `List-Unsubscribe=One-Click` (RFC 8058 §3.1).
fn one_click(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else { return false };
    text.trim().split('&').any(|kv| kv == "List-Unsubscribe=One-Click")
}

/// Answers one request.
pub fn handle(u: Option<&Unsubscribe>, req: Request<'_>) -> Answer {
    let Some(token) = token_of(req.target) else { return Answer::text(404, "not found") };
    let Some(u) = u else { return Answer::text(404, "one-click unsubscribe is not configured here") };
    let Some(r) = u.signer.open(Purpose::Unsubscribe, token).filter(|r| r.recipient.is_some()) else {
        return Answer::text(400, "this unsubscribe link is not valid");
    };
    match req.method {
        "POST" if one_click(req.body) => Answer { unsubscribe: Some(r), ..Answer::text(200, "unsubscribed") },
        "POST" => Answer::text(400, "expected the body List-Unsubscribe=One-Click (RFC 8058)"),
        // A person who follows the link gets a button; link scanners that
        // fetch every URL unsubscribe nobody.
        "GET" | "HEAD" => Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: format!(
                "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
                 <form method=post><input type=hidden name=List-Unsubscribe value=One-Click>\
                 <p>Stop mail to {}?</p><button>Unsubscribe</button></form>\n",
                html_escape(r.recipient.as_deref().unwrap_or(""))
            ),
            unsubscribe: None,
        },
        _ => Answer::text(405, "method not allowed"),
    }
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    fn u() -> Unsubscribe {
        Unsubscribe::new("https://unsub.example.test/", "a secret of some length")
    }

    fn r() -> Ref {
        Ref {
            id: "6B0D3FF001000000".into(),
            recipient: Some("r@example.test".into()),
            tenant: Some("acme".into()),
            campaign: Some("spring".into()),
        }
    }

    fn path(url: &str) -> &str {
        url.strip_prefix("https://unsub.example.test").unwrap()
    }

    #[test]
    fn headers_are_folded_and_signed_urls() {
        let h = String::from_utf8(u().headers(&r())).unwrap();
        assert!(h.starts_with("List-Unsubscribe:\r\n <https://unsub.example.test/unsubscribe/v1."), "{h}");
        assert!(h.ends_with(">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(h.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn headers_go_after_our_received_for_single_recipient_tenant_mail() {
        let msg = b"Received: from c.test\r\n\tby mx.test; now\r\nFrom: a@b.test\r\n\r\nbody\r\n";
        let out = String::from_utf8(add_headers(&u(), msg, &r()).unwrap()).unwrap();
        assert!(
            out.starts_with("Received: from c.test\r\n\tby mx.test; now\r\nList-Unsubscribe:\r\n <https://"),
            "{out}"
        );
        assert!(out.ends_with("List-Unsubscribe=One-Click\r\nFrom: a@b.test\r\n\r\nbody\r\n"), "{out}");
        let own = b"Received: x\r\nlist-unsubscribe: <mailto:u@b.test>\r\n\r\nbody\r\n";
        assert_eq!(add_headers(&u(), own, &r()), None, "theirs is kept");
        assert_eq!(add_headers(&u(), msg, &Ref { tenant: None, ..r() }), None, "not tenant mail");
        assert_eq!(add_headers(&u(), msg, &Ref { recipient: None, ..r() }), None, "several recipients");
    }

    #[test]
    fn requests() {
        let u = u();
        let url = u.url(&r());
        let p = path(&url);
        let body = b"List-Unsubscribe=One-Click";
        let table: &[(&str, &str, &[u8], u16, bool)] = &[
            ("POST", p, body, 200, true),
            ("POST", &format!("{p}?x=1"), b"List-Unsubscribe=One-Click\r\n", 200, true),
            ("POST", p, b"", 400, false),
            ("POST", p, b"List-Unsubscribe=Other", 400, false),
            ("GET", p, b"", 200, false),
            ("PUT", p, body, 405, false),
            ("POST", "/unsubscribe/v1.forged.token", body, 400, false),
            ("POST", "/elsewhere", body, 404, false),
            ("POST", "/unsubscribe/", body, 404, false),
        ];
        for (method, target, body, status, unsub) in table {
            let a = handle(Some(&u), Request { method, target, body });
            assert_eq!(a.status, *status, "{method} {target}");
            assert_eq!(a.unsubscribe.is_some(), *unsub, "{method} {target}");
        }
        let a = handle(Some(&u), Request { method: "POST", target: p, body });
        assert_eq!(a.unsubscribe, Some(r()));
        // An altered token changes nothing.
        let i = p.len() - 3;
        let swap = if &p[i..i + 1] == "A" { "B" } else { "A" };
        let altered = format!("{}{swap}{}", &p[..i], &p[i + 1..]);
        assert_eq!(handle(Some(&u), Request { method: "POST", target: &altered, body }).status, 400);
        // Another secret's token.
        let other = Unsubscribe::new("https://unsub.example.test", "another secret, also long");
        assert_eq!(handle(Some(&other), Request { method: "POST", target: p, body }).status, 400);
        assert_eq!(handle(None, Request { method: "POST", target: p, body }).status, 404);
        // The page names the recipient, escaped.
        let page = handle(Some(&u), Request { method: "GET", target: p, body: b"" }).body;
        assert!(page.contains("r@example.test") && page.contains("method=post"));
    }
}
