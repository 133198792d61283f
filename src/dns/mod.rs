//! The stub resolver: MX, A and AAAA over our own UDP sockets on the worker's
//! io_uring runtime (TCP when an answer is truncated), in front of one cache
//! shared by all workers.
//!
//! Each query uses a random id and a fresh socket on a kernel-chosen ephemeral
//! port; a datagram that does not match the question (id, name, type) is
//! dropped and we keep waiting. SERVFAIL, REFUSED and timeouts are temporary;
//! NXDOMAIN is an answer.

pub mod cache;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::udp::UdpSocket;
use monoio::net::TcpStream;

use cache::{Cache, Lookup, Probe};
use wire::{Response, Rtype, WireError};

/// Temporary failures are cached this long, so a dead name server is not
/// asked again for every message.
pub const TEMP_FAILURE_TTL: Duration = Duration::from_secs(5);

/// Reads `nameserver` lines from a resolv.conf file.
pub fn servers_from_resolv_conf(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Refreshes of just-expired answers running behind their askers, per
/// worker. Past this the asker refreshes before answering, as for a miss:
/// 10,000 answers expiring in the same second must not become 10,000
/// queries (and sockets) at once.
const BACKGROUND_REFRESHES: usize = 32;

/// A worker's resolver. Cheap to clone; the cache is shared by all workers.
#[derive(Debug, Clone)]
pub struct Resolver {
    cache: Arc<Cache>,
    servers: Arc<Vec<SocketAddr>>,
    /// Per query attempt.
    timeout: Duration,
    /// Rounds over all servers.
    rounds: usize,
    /// Background refreshes running (this worker's clones share it).
    refreshing: Arc<std::sync::atomic::AtomicUsize>,
}

impl Resolver {
    pub fn new(cache: Arc<Cache>, servers: Vec<SocketAddr>, timeout: Duration, rounds: usize) -> Resolver {
        Resolver {
            cache,
            servers: Arc::new(servers),
            timeout,
            rounds: rounds.max(1),
            refreshing: Arc::default(),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The (possibly cached) answer for `name`/`rtype`. An answer that
    /// expired moments ago comes back at once while a task on this worker
    /// asks again (RFC 8767): 10,000 domains whose answers expire during a
    /// run do not make 10,000 deliveries wait for the name server.
    pub async fn query(&self, name: &str, rtype: Rtype) -> Arc<Lookup> {
        let key = (name.to_lowercase(), rtype);
        loop {
            match self.cache.probe(key.clone(), crate::rt::clock::instant()) {
                Probe::Hit(v) => return v,
                Probe::Stale(v, fetch) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    if self.refreshing.fetch_add(1, Relaxed) >= BACKGROUND_REFRESHES {
                        self.refreshing.fetch_sub(1, Relaxed);
                        let (value, ttl) = self.ask(name, rtype).await;
                        return fetch.finish(value, crate::rt::clock::instant(), ttl);
                    }
                    // Counted down however the task ends.
                    struct Running(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Running {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Relaxed);
                        }
                    }
                    let running = Running(self.refreshing.clone());
                    let fetch = fetch.owned(self.cache.clone());
                    let (me, name) = (self.clone(), name.to_owned());
                    monoio::spawn(async move {
                        let _running = running;
                        let (value, ttl) = me.ask(&name, rtype).await;
                        fetch.finish(value, crate::rt::clock::instant(), ttl);
                    });
                    return v;
                }
                Probe::Wait(w) => {
                    if let Some(v) = w.await {
                        return v;
                    }
                    // The fetcher gave up: try again (perhaps as the fetcher).
                }
                Probe::Fetch(f) => {
                    let (value, ttl) = self.ask(name, rtype).await;
                    return f.finish(value, crate::rt::clock::instant(), ttl);
                }
            }
        }
    }

    /// Asks the servers in turn; returns the lookup and how long to cache it.
    async fn ask(&self, name: &str, rtype: Rtype) -> (Lookup, Duration) {
        if self.servers.is_empty() {
            return (Err("no DNS servers configured".into()), TEMP_FAILURE_TTL);
        }
        let mut last = String::new();
        for _ in 0..self.rounds {
            for &server in self.servers.iter() {
                match self.ask_one(server, name, rtype).await {
                    Ok(r) => {
                        let ttl = Duration::from_secs(r.ttl.into());
                        return (Ok(r), ttl);
                    }
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        (Err(last), TEMP_FAILURE_TTL)
    }

    async fn ask_one(&self, server: SocketAddr, name: &str, rtype: Rtype) -> Result<Response, String> {
        match monoio::time::timeout(self.timeout, udp_query(server, name, rtype)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(WireError::Truncated)) => {
                match monoio::time::timeout(self.timeout, tcp_query(server, name, rtype)).await {
                    Ok(r) => r.map_err(|e| format!("over TCP: {e}")),
                    Err(_) => Err("timed out over TCP".into()),
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// One UDP exchange. Datagrams that do not answer our question are ignored.
async fn udp_query(server: SocketAddr, name: &str, rtype: Rtype) -> Result<Response, WireError> {
    let id = fastrand::u16(..);
    let query = wire::build_query(id, name, rtype)?;
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let io = |e: std::io::Error| WireError::ServerFailure(e.to_string());
    let sock = UdpSocket::bind(local).map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    let (res, _) = sock.send(query).await;
    res.map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let (res, b) = sock.recv(buf).await;
        buf = b;
        let n = res.map_err(io)?;
        match wire::parse_response(&buf[..n], id, name, rtype) {
            Err(WireError::Mismatch) | Err(WireError::Malformed) => continue,
            other => return other,
        }
    }
}

/// One TCP exchange (RFC 1035 §4.2.2: two-byte length prefix).
async fn tcp_query(server: SocketAddr, name: &str, rtype: Rtype) -> Result<Response, WireError> {
    let id = fastrand::u16(..);
    let query = wire::build_query(id, name, rtype)?;
    let io = |e: std::io::Error| WireError::ServerFailure(e.to_string());
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let (res, _) = stream.write_all(framed).await;
    res.map_err(io)?;
    let (res, len) = stream.read_exact(vec![0u8; 2]).await;
    res.map_err(io)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (res, body) = stream.read_exact(vec![0u8; len]).await;
    res.map_err(io)?;
    wire::parse_response(&body, id, name, rtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "# c\nsearch x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n")
            .unwrap();
        assert_eq!(
            servers_from_resolv_conf(&p),
            vec!["10.0.0.1:53".parse().unwrap(), SocketAddr::new("fe80::1".parse().unwrap(), 53)]
        );
    }

    /// An answer that just expired comes back at once, and the next query
    /// (after the refresh a task made behind it) has the new one.
    #[test]
    #[allow(clippy::disallowed_methods)] // reason: a real name server, real time
    fn an_expired_answer_is_served_while_it_is_refreshed() {
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record};
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = udp.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // Each query gets the next address, with a TTL of one second.
            for last in 1..=2u8 {
                let (n, from) = udp.recv_from(&mut buf).unwrap();
                let rec = Record::from_rdata(
                    Name::from_ascii("h.test.").unwrap(),
                    1,
                    RData::A(A::new(127, 0, 0, last)),
                );
                udp.send_to(&wire::tests::respond(&buf[..n], ResponseCode::NoError, vec![rec], None), from)
                    .unwrap();
            }
        });
        let ip = |r: &Arc<Lookup>| match &(**r).as_ref().unwrap().answer {
            wire::Answer::Ips(ips) => ips[0],
            other => panic!("{other:?}"),
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap();
        let cache = Arc::new(Cache::new(16));
        let resolver = Resolver::new(cache.clone(), vec![server], Duration::from_secs(5), 1);
        let seen = rt.block_on(async {
            let first = ip(&resolver.query("h.test", Rtype::A).await);
            monoio::time::sleep(Duration::from_millis(1100)).await;
            let stale = ip(&resolver.query("h.test", Rtype::A).await);
            // The refresh runs on this runtime; meanwhile the old answer
            // is what everyone gets.
            let mut fresh = stale;
            for _ in 0..100 {
                monoio::time::sleep(Duration::from_millis(10)).await;
                fresh = ip(&resolver.query("h.test", Rtype::A).await);
                if fresh != stale {
                    break;
                }
            }
            [first, stale, fresh]
        });
        let [a, b, c]: [IpAddr; 3] = ["127.0.0.1", "127.0.0.1", "127.0.0.2"].map(|s| s.parse().unwrap());
        assert_eq!(seen, [a, b, c]);
        assert!(cache.stats.stale.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        assert_eq!(cache.stats.misses.load(std::sync::atomic::Ordering::Relaxed), 2, "two queries in all");
        fake.join().unwrap();
    }

    /// A fake name server on loopback: it first sends a spoofed datagram
    /// (wrong id) and then a truncated answer, each with an address of its
    /// own; only the answer over TCP has the right one. Taking either UDP
    /// datagram gives a wrong address.
    #[test]
    fn udp_query_ignores_spoofed_answers_and_uses_tcp_when_truncated() {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record};
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind(udp.local_addr().unwrap()).unwrap();
        let server = udp.local_addr().unwrap();
        let answer = |q: &[u8], truncate: bool, last: u8| {
            let rec = Record::from_rdata(
                Name::from_ascii("h.test.").unwrap(),
                60,
                RData::A(A::new(127, 0, 0, last)),
            );
            let bytes = wire::tests::respond(q, ResponseCode::NoError, vec![rec], None);
            let mut m = Message::from_vec(&bytes).unwrap();
            m.metadata.truncation = truncate;
            m.to_vec().unwrap()
        };
        let fake = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            let mut spoof = answer(&buf[..n], false, 66);
            spoof[0] ^= 0xff; // wrong id
            udp.send_to(&spoof, from).unwrap();
            udp.send_to(&answer(&buf[..n], true, 77), from).unwrap();
            let (mut s, _) = tcp.accept().unwrap();
            use std::io::{Read, Write};
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut q).unwrap();
            let a = answer(&q, false, 9);
            s.write_all(&(a.len() as u16).to_be_bytes()).unwrap();
            s.write_all(&a).unwrap();
            "answered over TCP"
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap();
        let r = rt.block_on(async {
            let resolver = Resolver::new(Arc::new(Cache::new(16)), vec![server], Duration::from_secs(5), 1);
            resolver.query("h.test", Rtype::A).await
        });
        let r = (*r).clone().unwrap();
        assert_eq!(
            r.answer,
            wire::Answer::Ips(vec!["127.0.0.9".parse().unwrap()]),
            "the TCP answer, not a datagram"
        );
        assert_eq!(fake.join().unwrap(), "answered over TCP");
    }
}
