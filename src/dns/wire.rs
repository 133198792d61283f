//! DNS messages for the questions an MTA asks (MX, A, AAAA; TXT for MTA-STS,
//! TLSA for DANE), built and parsed with hickory-proto. Pure: no sockets, no
//! clock.
//!
//! Every query sets the AD bit (RFC 6840 §5.7): a validating resolver then
//! says in its answer whether it validated it (AD), without our asking for
//! the signatures (DO). Whether an answer is "secure" is only as true as the
//! path to that resolver: DANE needs it on the same machine (docs/tls-policy.md).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::smtp::address::Domain;

/// The record types we ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rtype {
    Mx,
    A,
    Aaaa,
    /// For MTA-STS (`_mta-sts.<domain>`).
    Txt,
    /// For DANE (`_25._tcp.<mx host>`).
    Tlsa,
}

impl Rtype {
    fn record_type(self) -> RecordType {
        match self {
            Rtype::Mx => RecordType::MX,
            Rtype::A => RecordType::A,
            Rtype::Aaaa => RecordType::AAAA,
            Rtype::Txt => RecordType::TXT,
            Rtype::Tlsa => RecordType::TLSA,
        }
    }
}

/// One MX record: preference and exchange host (lower case, no trailing dot;
/// empty for the root, as in a null MX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

/// What a name server said about a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Mx(Vec<Mx>),
    Ips(Vec<IpAddr>),
    /// Each TXT record's strings joined (RFC 7208 §3.3), lossy UTF-8.
    Txt(Vec<String>),
    Tlsa(Vec<Tlsa>),
    /// The name exists but has no record of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// One TLSA record (RFC 6698 §2.1), as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// An answer and how long it may be cached, in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub answer: Answer,
    pub ttl: u32,
    /// The resolver validated it (the AD bit of its answer).
    pub secure: bool,
}

/// Why a datagram is not a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a DNS message")]
    Malformed,
    /// Not the answer to our question (wrong id, name or type): drop it.
    #[error("answer does not match the question")]
    Mismatch,
    /// The answer did not fit in UDP: ask again over TCP.
    #[error("truncated")]
    Truncated,
    /// SERVFAIL, REFUSED and the like: temporary.
    #[error("server answered {0}")]
    ServerFailure(String),
}

/// Negative answers without an SOA are cached this long (seconds).
pub const DEFAULT_NEGATIVE_TTL: u32 = 60;
/// No answer is cached longer than this (seconds).
pub const MAX_TTL: u32 = 86_400;
/// Negative answers are cached at most this long (RFC 2308 §5 suggests 1-3 hours).
pub const MAX_NEGATIVE_TTL: u32 = 3 * 3600;

/// Builds a recursive query for `name`.
pub fn build_query(id: u16, name: &str, rtype: Rtype) -> Result<Vec<u8>, WireError> {
    let mut qname = Name::from_utf8(name).map_err(|_| WireError::Malformed)?;
    qname.set_fqdn(true);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.authentic_data = true;
    m.add_query(Query::query(qname, rtype.record_type()));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m.to_vec().map_err(|_| WireError::Malformed)
}

fn same_name(a: &Name, b: &str) -> bool {
    let mut b = match Name::from_utf8(b) {
        Ok(n) => n,
        Err(_) => return false,
    };
    b.set_fqdn(true);
    let mut a = a.clone();
    a.set_fqdn(true);
    a == b // Name equality ignores ASCII case
}

/// Parses the answer to the query `id` for `name`/`rtype`.
pub fn parse_response(bytes: &[u8], id: u16, name: &str, rtype: Rtype) -> Result<Response, WireError> {
    let m = Message::from_vec(bytes).map_err(|_| WireError::Malformed)?;
    let q = m.queries.first().ok_or(WireError::Mismatch)?;
    let matches = m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && q.query_type() == rtype.record_type()
        && same_name(q.name(), name);
    if !matches {
        return Err(WireError::Mismatch);
    }
    if m.metadata.truncation {
        return Err(WireError::Truncated);
    }
    let secure = m.metadata.authentic_data;
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Response { answer: Answer::NxDomain, ttl: negative_ttl(&m), secure })
        }
        other => return Err(WireError::ServerFailure(format!("{other:?}"))),
    }
    let mut ttl = MAX_TTL;
    let mut invalid = 0;
    let mut mx = Vec::new();
    let mut ips = Vec::new();
    let mut txt = Vec::new();
    let mut tlsa = Vec::new();
    for r in &m.answers {
        match &r.data {
            RData::MX(rec) if rtype == Rtype::Mx => {
                let mut exchange = rec.exchange.to_utf8().to_lowercase();
                if exchange.ends_with('.') {
                    exchange.pop();
                }
                // A host name, or the root of a null MX (RFC 7505); anything
                // else (binary labels, escaped dots) names no host we could
                // connect to, and is skipped, as Postfix does.
                if !exchange.is_empty() && Domain::parse_host_name(&exchange).is_err() {
                    invalid += 1;
                    continue;
                }
                mx.push(Mx { preference: rec.preference, exchange });
            }
            RData::A(a) if rtype == Rtype::A => ips.push(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == Rtype::Aaaa => ips.push(IpAddr::V6(a.0)),
            RData::TXT(t) if rtype == Rtype::Txt => {
                let joined: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                txt.push(String::from_utf8_lossy(&joined).into_owned());
            }
            RData::TLSA(t) if rtype == Rtype::Tlsa => tlsa.push(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            // CNAMEs on the way to the answer also bound its lifetime.
            RData::CNAME(_) => {}
            _ => continue,
        }
        ttl = ttl.min(r.ttl);
    }
    if mx.is_empty() && invalid > 0 {
        // MX records, none usable: not "no MX" (which would mean implicit
        // MX), but a broken answer; try again later.
        return Err(WireError::ServerFailure("no MX record names a valid host".into()));
    }
    let answer = match rtype {
        Rtype::Mx if !mx.is_empty() => Answer::Mx(mx),
        Rtype::A | Rtype::Aaaa if !ips.is_empty() => Answer::Ips(ips),
        Rtype::Txt if !txt.is_empty() => Answer::Txt(txt),
        Rtype::Tlsa if !tlsa.is_empty() => Answer::Tlsa(tlsa),
        _ => return Ok(Response { answer: Answer::NoData, ttl: negative_ttl(&m), secure }),
    };
    Ok(Response { answer, ttl, secure })
}

/// RFC 2308 §5: the negative TTL is the smaller of the SOA's TTL and its MINIMUM.
fn negative_ttl(m: &Message) -> u32 {
    m.authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(DEFAULT_NEGATIVE_TTL)
        .min(MAX_NEGATIVE_TTL)
}

/// The query id of a datagram, if it is long enough to have one.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
    use hickory_proto::rr::Record;

    /// A response to `query` with the given answers and authorities.
    pub(crate) fn respond(
        query: &[u8],
        rcode: ResponseCode,
        answers: Vec<Record>,
        soa: Option<(u32, u32)>,
    ) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.response_code = rcode;
        r.add_queries(q.queries.clone());
        r.add_answers(answers);
        if let Some((ttl, minimum)) = soa {
            let zone = Name::from_ascii("test.").unwrap();
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, minimum);
            r.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        }
        r.to_vec().unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn mx_answer() {
        let q = build_query(7, "mx-dom.test", Rtype::Mx).unwrap();
        let answers = vec![
            Record::from_rdata(name("mx-dom.test."), 300, RData::MX(MX::new(20, name("MX2.mx-dom.test.")))),
            Record::from_rdata(name("mx-dom.test."), 100, RData::MX(MX::new(10, name("mx1.mx-dom.test.")))),
        ];
        let r =
            parse_response(&respond(&q, ResponseCode::NoError, answers, None), 7, "mx-dom.test", Rtype::Mx)
                .unwrap();
        assert_eq!(r.ttl, 100);
        assert_eq!(
            r.answer,
            Answer::Mx(vec![
                Mx { preference: 20, exchange: "mx2.mx-dom.test".into() },
                Mx { preference: 10, exchange: "mx1.mx-dom.test".into() },
            ])
        );
    }

    #[test]
    fn null_mx_is_an_empty_exchange() {
        let q = build_query(1, "nullmx.test", Rtype::Mx).unwrap();
        let answers = vec![Record::from_rdata(name("nullmx.test."), 60, RData::MX(MX::new(0, Name::root())))];
        let r =
            parse_response(&respond(&q, ResponseCode::NoError, answers, None), 1, "nullmx.test", Rtype::Mx)
                .unwrap();
        assert_eq!(r.answer, Answer::Mx(vec![Mx { preference: 0, exchange: String::new() }]));
    }

    #[test]
    fn tlsa_answers_and_the_ad_bit() {
        use hickory_proto::rr::rdata::TLSA;
        let q = build_query(9, "_25._tcp.mx.test", Rtype::Tlsa).unwrap();
        assert!(Message::from_vec(&q).unwrap().metadata.authentic_data, "queries ask for AD");
        let rec = TLSA::new(3.into(), 1.into(), 1.into(), vec![0xab; 32]);
        let answers = vec![Record::from_rdata(name("_25._tcp.mx.test."), 60, RData::TLSA(rec))];
        let mut bytes = respond(&q, ResponseCode::NoError, answers, None);
        let r = parse_response(&bytes, 9, "_25._tcp.mx.test", Rtype::Tlsa).unwrap();
        assert_eq!(
            r.answer,
            Answer::Tlsa(vec![Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0xab; 32] }])
        );
        assert!(!r.secure);
        bytes[3] |= 0x20; // AD
        assert!(parse_response(&bytes, 9, "_25._tcp.mx.test", Rtype::Tlsa).unwrap().secure);
    }

    #[test]
    fn addresses_and_negative_answers() {
        let q = build_query(2, "h.test", Rtype::A).unwrap();
        let answers = vec![Record::from_rdata(name("h.test."), 30, RData::A(A::new(127, 0, 0, 3)))];
        let r = parse_response(&respond(&q, ResponseCode::NoError, answers, None), 2, "h.test", Rtype::A)
            .unwrap();
        assert_eq!(r.answer, Answer::Ips(vec!["127.0.0.3".parse().unwrap()]));
        let q6 = build_query(3, "h.test", Rtype::Aaaa).unwrap();
        let answers =
            vec![Record::from_rdata(name("h.test."), 30, RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 1)))];
        let r = parse_response(&respond(&q6, ResponseCode::NoError, answers, None), 3, "h.test", Rtype::Aaaa)
            .unwrap();
        assert_eq!(r.answer, Answer::Ips(vec!["::1".parse().unwrap()]));
        // NODATA with an SOA: TTL = min(SOA TTL, MINIMUM).
        let r = parse_response(
            &respond(&q, ResponseCode::NoError, vec![], Some((900, 120))),
            2,
            "h.test",
            Rtype::A,
        )
        .unwrap();
        assert_eq!(r, Response { answer: Answer::NoData, ttl: 120, secure: false });
        let r = parse_response(
            &respond(&q, ResponseCode::NXDomain, vec![], Some((30, 600))),
            2,
            "h.test",
            Rtype::A,
        )
        .unwrap();
        assert_eq!(r, Response { answer: Answer::NxDomain, ttl: 30, secure: false });
        let r = parse_response(&respond(&q, ResponseCode::NXDomain, vec![], None), 2, "h.test", Rtype::A)
            .unwrap();
        assert_eq!(r.ttl, DEFAULT_NEGATIVE_TTL);
    }

    #[test]
    fn mismatches_and_failures() {
        let q = build_query(9, "a.test", Rtype::Mx).unwrap();
        let ok = respond(&q, ResponseCode::NoError, vec![], None);
        assert_eq!(parse_response(&ok, 10, "a.test", Rtype::Mx), Err(WireError::Mismatch), "wrong id");
        assert_eq!(parse_response(&ok, 9, "b.test", Rtype::Mx), Err(WireError::Mismatch), "wrong name");
        assert_eq!(parse_response(&ok, 9, "a.test", Rtype::A), Err(WireError::Mismatch), "wrong type");
        assert!(parse_response(&ok, 9, "A.TEST", Rtype::Mx).is_ok(), "names compare without case");
        assert_eq!(
            parse_response(&q, 9, "a.test", Rtype::Mx),
            Err(WireError::Mismatch),
            "a query is not an answer"
        );
        let fail = respond(&q, ResponseCode::ServFail, vec![], None);
        assert!(matches!(parse_response(&fail, 9, "a.test", Rtype::Mx), Err(WireError::ServerFailure(_))));
        assert_eq!(parse_response(b"\x00\x09garbage", 9, "a.test", Rtype::Mx), Err(WireError::Malformed));
        let mut m = Message::from_vec(&ok).unwrap();
        m.metadata.truncation = true;
        assert_eq!(parse_response(&m.to_vec().unwrap(), 9, "a.test", Rtype::Mx), Err(WireError::Truncated));
    }

    #[test]
    fn garbage_never_panics() {
        let q = build_query(5, "x.test", Rtype::Mx).unwrap();
        let answers = vec![Record::from_rdata(name("x.test."), 60, RData::MX(MX::new(1, name("m.x.test."))))];
        let good = respond(&q, ResponseCode::NoError, answers, Some((60, 60)));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            let _ = parse_response(&b, 5, "x.test", Rtype::Mx);
        }
    }

    /// Found by the `dns` fuzz target: MX records whose exchange has
    /// binary labels and an escaped dot. Such a host is skipped; with no
    /// usable host left the answer is a temporary failure, not "no MX".
    #[test]
    fn mx_exchanges_that_are_not_host_names_are_skipped() {
        let crash = [
            18u8, 52, 129, 128, 0, 1, 0, 2, 0, 0, 0, 0, 7, 101, 120, 97, 109, 112, 108, 101, 4, 116, 101,
            115, 116, 0, 0, 15, 0, 1, 192, 12, 0, 15, 0, 255, 255, 254, 1, 44, 0, 20, 0, 10, 3, 109, 120, 33,
            7, 101, 120, 97, 109, 112, 108, 101, 4, 116, 158, 115, 94, 0, 192, 12, 0, 15, 0, 1, 0, 0, 1, 44,
            0, 20, 0, 20, 3, 77, 88, 50, 7, 69, 120, 97, 109, 112, 108, 182, 4, 84, 101, 115, 46, 0,
        ];
        assert!(matches!(
            parse_response(&crash, 0x1234, "example.test", Rtype::Mx),
            Err(WireError::ServerFailure(_))
        ));
        let q = build_query(7, "mx-dom.test", Rtype::Mx).unwrap();
        let answers = vec![
            Record::from_rdata(
                name("mx-dom.test."),
                300,
                RData::MX(MX::new(5, name("bad_host.mx-dom.test."))),
            ),
            Record::from_rdata(name("mx-dom.test."), 300, RData::MX(MX::new(10, name("mx1.mx-dom.test.")))),
        ];
        let r =
            parse_response(&respond(&q, ResponseCode::NoError, answers, None), 7, "mx-dom.test", Rtype::Mx);
        assert_eq!(
            r.unwrap().answer,
            Answer::Mx(vec![Mx { preference: 10, exchange: "mx1.mx-dom.test".into() }])
        );
    }

    /// The seed corpus of the `dns` fuzz target (fuzz/seeds/dns) holds real
    /// answers to its question, so the fuzzer starts from inputs that get
    /// past the parser's checks.
    #[test]
    fn fuzz_seeds_are_answers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/dns");
        let expect = [
            ("mx", Rtype::Mx, "Mx"),
            ("nullmx", Rtype::Mx, "Mx"),
            ("a", Rtype::A, "Ips"),
            ("aaaa", Rtype::Aaaa, "Ips"),
            ("cname", Rtype::A, "Ips"),
            ("nxdomain", Rtype::Mx, "NxDomain"),
            ("nodata", Rtype::Mx, "NoData"),
        ];
        for (file, rtype, kind) in expect {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let r = parse_response(&bytes, 0x1234, "example.test", rtype)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(format!("{:?}", r.answer).starts_with(kind), "{file}: {r:?}");
        }
    }
}
