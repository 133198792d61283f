//! Request heads of a `kind = "http"` listener: what `httparse` found,
//! checked against our limits. Pure: bytes in, a head or the refusal to
//! send out; the connection (`rt::http`) reads, charges memory and writes.

/// Largest request head.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body, but for the injection API.
pub const MAX_BODY: usize = 64 << 10;
/// The injection API's path.
pub const INJECT: &str = "/api/inject/v1";
/// Header fields looked at in one head.
const MAX_HEADERS: usize = 64;

/// What a request head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// Bytes of the head, its blank line included.
    pub head_len: usize,
    pub body_len: usize,
    /// `Connection: close` or HTTP/1.0.
    pub close: bool,
    pub authorization: Option<String>,
    /// The client waits for `100 Continue` before sending the body (curl
    /// does for large bodies).
    pub expect_continue: bool,
}

impl Head {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A request refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub text: String,
    /// It was meant for the injection API (counted there).
    pub inject: bool,
}

fn refuse(status: u16, text: impl Into<String>, inject: bool) -> Refusal {
    Refusal { status, text: text.into(), inject }
}

/// The head at the start of `buf`: `Ok(None)` while it is incomplete (and
/// under [`MAX_HEAD`]). Bodies come by `Content-Length` only, at most
/// `inject_size` bytes for the injection API and [`MAX_BODY`] otherwise.
pub fn parse_head(buf: &[u8], inject_size: usize) -> Result<Option<Head>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(refuse(431, "request head too large", false)),
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many header fields", false)),
        Err(_) => return Err(refuse(400, "bad request", false)),
    };
    if n > MAX_HEAD {
        return Err(refuse(431, "request head too large", false));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let target = req.path.unwrap_or("/");
    let inject = target.split('?').next() == Some(INJECT);
    if header("Transfer-Encoding").is_some() {
        return Err(refuse(411, "send the body with Content-Length", inject));
    }
    let limit = if inject { inject_size } else { MAX_BODY };
    let body_len = match header("Content-Length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(len)) if len <= limit => len,
        Some(Ok(_)) => {
            return Err(refuse(413, format!("request body too large (at most {limit} bytes)"), inject))
        }
        Some(Err(_)) => return Err(refuse(400, "bad Content-Length", inject)),
    };
    let close =
        req.version == Some(0) || header("Connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    Ok(Some(Head {
        method: req.method.unwrap_or("").to_owned(),
        target: target.to_owned(),
        head_len: n,
        body_len,
        close,
        authorization: header("Authorization").map(str::to_owned),
        expect_continue: req.version == Some(1)
            && header("Expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn heads_and_refusals() {
        let h = parse_head(
            b"POST /api/inject/v1?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t \r\n\
              Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
            10,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.method.as_str(), h.path(), h.body_len), ("POST", INJECT, 5));
        assert_eq!(h.authorization.as_deref(), Some("Bearer t"));
        assert!(h.expect_continue && !h.close);
        assert_eq!(h.head_len, 112, "everything but the body");
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n", 10).unwrap().unwrap();
        assert!(h.close && !h.expect_continue && h.body_len == 0);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", 10), Ok(None));
        let cases: [(&[u8], u16, bool); 6] = [
            (b"POST /api/inject/v1 HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413, true),
            (b"POST /unsubscribe/x HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413, false),
            (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, false),
            (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, false),
            (b"\x00\x01 nonsense\r\n\r\n", 400, false),
            (b"GET / HTTP/1.1\r\n", 0, false),
        ];
        for (req, status, inject) in cases {
            match parse_head(req, 10) {
                Err(r) => assert_eq!((r.status, r.inject), (status, inject), "{req:?}"),
                Ok(None) => assert_eq!(status, 0, "{req:?}"),
                Ok(Some(h)) => panic!("{req:?}: {h:?}"),
            }
        }
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes(), 10).unwrap_err().status, 431);
        let long = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert_eq!(parse_head(long.as_bytes(), 10).unwrap_err().status, 431);
    }
}
