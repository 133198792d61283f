//! The envelope of an accepted message: what the spool stores beside the body.

use std::fmt;
use std::net::IpAddr;

use crate::smtp::address::{Mailbox, ReversePath};

/// BODY= of MAIL FROM (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RET= of MAIL FROM (RFC 3461 §4.3): what a DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1). Default (not given) means "failure and
/// delay at the MTA's discretion".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify(u8);

impl Notify {
    const GIVEN: u8 = 0x01;
    const NEVER: u8 = 0x02;
    const SUCCESS: u8 = 0x04;
    const FAILURE: u8 = 0x08;
    const DELAY: u8 = 0x10;

    /// Parses `NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    pub fn parse(v: &str) -> Option<Notify> {
        if v.eq_ignore_ascii_case("NEVER") {
            return Some(Notify(Self::GIVEN | Self::NEVER));
        }
        let mut bits = Self::GIVEN;
        for item in v.split(',') {
            let bit = match item.to_ascii_uppercase().as_str() {
                "SUCCESS" => Self::SUCCESS,
                "FAILURE" => Self::FAILURE,
                "DELAY" => Self::DELAY,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        Some(Notify(bits))
    }

    pub fn from_bits(bits: u8) -> Notify {
        Notify(bits & 0x1f)
    }
    pub fn bits(self) -> u8 {
        self.0
    }
    pub fn given(self) -> bool {
        self.0 & Self::GIVEN != 0
    }
    pub fn never(self) -> bool {
        self.0 & Self::NEVER != 0
    }
    pub fn success(self) -> bool {
        self.0 & Self::SUCCESS != 0
    }
    /// A failure DSN is wanted: explicitly, or by default when NOTIFY was not given.
    pub fn failure(self) -> bool {
        !self.given() || self.0 & Self::FAILURE != 0
    }
    pub fn delay(self) -> bool {
        !self.given() || self.0 & Self::DELAY != 0
    }
}

/// A queue id: unique per spool, ordered by acceptance time. Printed as 16 hex digits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    /// Parses the 16-hex-digit form.
    pub fn parse(s: &str) -> Option<QueueId> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(QueueId)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Makes queue ids: 32 bits of Unix seconds, 8 bits of worker, 24 bits of counter.
/// Ids from one generator strictly increase; generators of different workers never
/// collide. Seeded after recovery so ids stay unique when the clock steps back.
#[derive(Debug)]
pub struct QueueIdGen {
    worker: u8,
    secs: u32,
    counter: u32,
}

impl QueueIdGen {
    pub fn new(worker: u8, floor: QueueId) -> QueueIdGen {
        QueueIdGen { worker, secs: (floor.0 >> 32) as u32, counter: 1 << 24 }
    }

    /// The next id, given the current Unix time in seconds.
    pub fn next(&mut self, unix_secs: u64) -> QueueId {
        let now = unix_secs.min(u64::from(u32::MAX)) as u32;
        if now > self.secs {
            self.secs = now;
            self.counter = 0;
        } else if self.counter >= 1 << 24 {
            // More than 16M ids in one second: borrow the next second.
            self.secs = self.secs.saturating_add(1);
            self.counter = 0;
        }
        let id = (u64::from(self.secs) << 32) | (u64::from(self.worker) << 24) | u64::from(self.counter);
        self.counter += 1;
        QueueId(id)
    }
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Mailbox,
    pub notify: Notify,
    /// ORCPT as received (`addr-type;xtext`).
    pub orcpt: Option<String>,
}

/// Everything about a message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds at acceptance.
    pub received_at: u64,
    pub reverse_path: ReversePath,
    pub recipients: Vec<Recipient>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID as received (xtext).
    pub envid: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub helo: String,
    /// The authenticated user, if the client used AUTH.
    pub auth_user: Option<String>,
    /// Who is sending (`[[tenant]]`): from the `X-Tenant` header, the AUTH
    /// user's `tenant`, or the injection API. Picks the egress pool.
    pub tenant: Option<String>,
    /// The campaign, from `X-Campaign` or the injection API (for events).
    pub campaign: Option<String>,
    /// REQUIRETLS (RFC 8689): onward only over TLS with a verified
    /// certificate, to next hops that take REQUIRETLS.
    pub requiretls: bool,
    /// The message says `TLS-Required: No` (RFC 8689 §5): the recipient
    /// domain's TLS policies (MTA-STS, DANE) are not enforced for it, unless
    /// it also has REQUIRETLS.
    pub tls_not_required: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_encode_worker() {
        let mut g = QueueIdGen::new(3, QueueId(0));
        let a = g.next(1_000);
        let b = g.next(1_000);
        let c = g.next(999); // clock stepped back: still increasing
        assert!(a < b && b < c);
        assert_eq!((a.0 >> 24) & 0xff, 3);
        assert_eq!(QueueId::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn ids_respect_recovery_floor() {
        let floor = QueueIdGen::new(0, QueueId(0)).next(5_000);
        let mut g = QueueIdGen::new(0, floor);
        assert!(g.next(10) > floor);
    }

    #[test]
    fn notify_flags() {
        let n = Notify::parse("success,DELAY").unwrap();
        assert!(n.success() && n.delay() && !n.failure() && !n.never());
        assert!(Notify::default().failure());
        assert!(Notify::parse("SUCCESS,SUCCESS").is_none());
        assert_eq!(Notify::from_bits(n.bits()), n);
    }
}
