//! Fetches an MTA-STS policy (RFC 8461 §3.3): `GET
//! https://mta-sts.<domain>/.well-known/mta-sts.txt` on the worker's
//! io_uring runtime, the host's address from our own resolver (the DNS
//! servers delivery uses), the certificate checked for `mta-sts.<domain>`
//! against the system's roots and `[delivery] ca_file`. No redirects; a 200
//! with `text/plain` only; at most 64 KiB; every step bounded by `timeout`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use super::mta_sts::MAX_POLICY;
use crate::dns::wire::{Answer, Rtype};
use crate::dns::Resolver;
use crate::rt::clock::instant;
use crate::rt::transport::{ReadOutcome, Transport};

/// The policy text of `domain`, or why there is none to be had.
pub async fn fetch(
    resolver: &Resolver,
    domain: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let mut ip = None;
    for rtype in [Rtype::A, Rtype::Aaaa] {
        if let Ok(r) = &*resolver.query(&host, rtype).await {
            if let Answer::Ips(ips) = &r.answer {
                ip = ips.first().copied();
                break;
            }
        }
    }
    let ip: IpAddr = ip.ok_or_else(|| format!("{host} has no address"))?;
    let deadline = instant() + timeout;
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(SocketAddr::new(ip, 443))).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("{host}[{ip}]:443: {e}")),
        Err(_) => return Err(format!("{host}[{ip}]:443: connect timed out")),
    };
    let mut t = Transport::Plain(stream);
    match monoio::time::timeout(timeout, t.upgrade_tls_client(tls, &host)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("{host}: TLS: {e}")),
        Err(_) => return Err(format!("{host}: TLS handshake timed out")),
    }
    // HTTP/1.0: the answer ends with the connection, never chunked.
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ringpost\r\nAccept: text/plain\r\n\r\n"
    );
    match monoio::time::timeout(timeout, t.write_all(request.into_bytes())).await {
        Ok((Ok(()), _)) => {}
        _ => return Err(format!("{host}: could not send the request")),
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() > MAX_POLICY + (16 << 10) {
            return Err(format!("{host}: answer larger than 64 KiB"));
        }
        let (r, b) = t.read_until(buf, deadline, std::future::pending::<()>()).await;
        buf = b;
        match r {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::Eof) => break,
            Ok(ReadOutcome::Cancelled) => return Err(format!("{host}: timed out reading the policy")),
            Err(e) => return Err(format!("{host}: {e}")),
        }
    }
    t.close().await;
    body(&buf).map_err(|e| format!("{host}: {e}"))
}

/// The body of a complete HTTP answer, if it is a 200 with `text/plain`.
pub fn body(answer: &[u8]) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("not an HTTP answer".into()),
    };
    match resp.code {
        Some(200) => {}
        Some(code) => return Err(format!("HTTP {code} (redirects are not followed)")),
        None => return Err("no status".into()),
    }
    let content_type = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .unwrap_or("");
    if !content_type.trim().to_ascii_lowercase().starts_with("text/plain") {
        return Err(format!("content type {content_type:?}, not text/plain"));
    }
    let mut body = &answer[n..];
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(len) = length {
        body = body.get(..len).ok_or("answer shorter than its Content-Length")?;
    }
    String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn answers() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello trailing";
        assert_eq!(body(ok).unwrap(), "hello");
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\ncontent-type: TEXT/PLAIN\r\n\r\nall of it").unwrap(),
            "all of it"
        );
        for (bad, why) in [
            (&b"HTTP/1.0 301 Moved\r\nLocation: https://x/\r\n\r\n"[..], "redirects"),
            (b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nx", "text/plain"),
            (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nx", "shorter"),
            (b"garbage", "not an HTTP answer"),
            (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n\xff", "UTF-8"),
        ] {
            assert!(body(bad).unwrap_err().contains(why), "{bad:?}");
        }
    }
}
