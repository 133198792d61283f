//! Shared state on Redis (`[redis]`): what is said to Redis and what its
//! answers mean. Pure: commands are RESP frames (`redis-protocol`), the
//! scripts are text, answers are decoded here; the connection is
//! `redis::client`'s, the suppression sync `suppress::shared`'s.
//!
//! - Rates (`[[shaping]] shared = true`): GCRA, as a Lua script run with
//!   Redis's own clock (so nodes need no synchronised clocks), or
//!   redis-cell's `CL.THROTTLE` when the module is loaded.
//! - Connections: leases in a sorted set scored by their expiry; a lease is
//!   renewed while its connection lives, removed when it closes, and
//!   expires on its own after a crash.
//! - The suppression list: a hash (field = the list's key, value = reason
//!   and since) and a channel announcing each change.

use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;

pub mod client;

/// `[redis] url`, parsed: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` (the host may be a name; resolved when connecting).
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = match s.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => {
                return Err(
                    "rediss:// (TLS) is not supported; use redis:// on a private network or loopback".into()
                )
            }
            _ => return Err("must start with redis://".into()),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (h, d.parse().map_err(|_| format!("database {d:?} is not a number"))?),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            return Err("no host".into());
        }
        let addr = if hostport.starts_with('[') {
            if hostport.ends_with(']') {
                format!("{hostport}:6379")
            } else {
                hostport.to_owned()
            }
        } else if hostport.contains(':') {
            let (_, port) = hostport.rsplit_once(':').unwrap_or_default();
            port.parse::<u16>().map_err(|_| format!("port {port:?} is not a number"))?;
            hostport.to_owned()
        } else {
            format!("{hostport}:6379")
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some(("", p)) => (None, Some(p.to_owned())),
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(a.to_owned()), None),
            },
        };
        Ok(Url { addr, user, password, db })
    }
}

/// A command as a RESP array of bulk strings.
pub fn cmd<A: AsRef<[u8]>>(args: &[A]) -> OwnedFrame {
    OwnedFrame::Array(args.iter().map(|a| OwnedFrame::BulkString(a.as_ref().to_vec())).collect())
}

/// The commands that open a connection: AUTH, SELECT.
pub fn hello(url: &Url) -> Vec<OwnedFrame> {
    let mut out = Vec::new();
    match (&url.user, &url.password) {
        (Some(u), Some(p)) => out.push(cmd(&["AUTH", u, p])),
        (None, Some(p)) => out.push(cmd(&["AUTH", p])),
        _ => {}
    }
    if url.db != 0 {
        out.push(cmd(&["SELECT".to_owned(), url.db.to_string()]));
    }
    out
}

/// GCRA over Redis's clock. KEYS[1]: the limit's key. ARGV[1]: the
/// emission interval (microseconds per message); ARGV[2]: the burst
/// tolerance (microseconds). Returns 0 when a message may go now (and
/// counts it), else the microseconds to wait before asking again.
pub const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - burst - now
if wait > 0 then return wait end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return 0
"#;

/// Connection leases. KEYS[1]: the sorted set. ARGV[1]: the limit;
/// ARGV[2]: this lease's name; ARGV[3]: its lifetime (ms). Returns 1 if
/// the lease is held (taken or renewed), 0 if the limit is reached.
pub const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if held or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"#;

/// The key of a shared limit: `<prefix>:<kind>:<budget>`.
pub fn key(prefix: &str, kind: &str, budget: &str) -> String {
    format!("{prefix}:{kind}:{budget}")
}

/// A throttle question: by the script (EVALSHA, with EVAL's text when the
/// script is not cached) or by redis-cell.
pub fn throttle(key: &str, interval: Duration, burst: Duration, cell: bool, sha: &str) -> OwnedFrame {
    if cell {
        // CL.THROTTLE key max_burst count period [quantity]: `count` per
        // `period` seconds; periods under a second become a rate per second.
        let (count, period) = cell_rate(interval);
        let max_burst = (burst.as_micros() / interval.as_micros().max(1)) as u64;
        return cmd(&[
            "CL.THROTTLE".to_owned(),
            key.to_owned(),
            max_burst.to_string(),
            count.to_string(),
            period.to_string(),
            "1".to_owned(),
        ]);
    }
    cmd(&[
        "EVALSHA".to_owned(),
        sha.to_owned(),
        "1".to_owned(),
        key.to_owned(),
        interval.as_micros().to_string(),
        burst.as_micros().to_string(),
    ])
}

/// A rate for redis-cell: `count` per `period` whole seconds.
fn cell_rate(interval: Duration) -> (u64, u64) {
    let us = interval.as_micros().max(1) as u64;
    if us >= 1_000_000 {
        (1, us.div_ceil(1_000_000))
    } else {
        (1_000_000 / us, 1)
    }
}

/// What a throttle answer says: `Ok(None)` go now, `Ok(Some(wait))` wait.
pub fn throttle_answer(f: &OwnedFrame, cell: bool) -> Result<Option<Duration>, String> {
    match (f, cell) {
        (OwnedFrame::Integer(0), false) => Ok(None),
        (OwnedFrame::Integer(us), false) if *us > 0 => Ok(Some(Duration::from_micros(*us as u64))),
        // [limited, limit, remaining, retry_after (s, -1 if allowed), reset_after]
        (OwnedFrame::Array(a), true) if a.len() == 5 => match (&a[0], &a[3]) {
            (OwnedFrame::Integer(0), _) => Ok(None),
            (OwnedFrame::Integer(1), OwnedFrame::Integer(s)) => {
                Ok(Some(Duration::from_secs((*s).max(1) as u64)))
            }
            _ => Err(format!("unexpected CL.THROTTLE answer {f:?}")),
        },
        (OwnedFrame::Error(e), _) => Err(e.clone()),
        _ => Err(format!("unexpected throttle answer {f:?}")),
    }
}

/// A lease question.
pub fn lease(key: &str, limit: usize, name: &str, ttl: Duration, sha: &str) -> OwnedFrame {
    cmd(&[
        "EVALSHA".to_owned(),
        sha.to_owned(),
        "1".to_owned(),
        key.to_owned(),
        limit.to_string(),
        name.to_owned(),
        ttl.as_millis().to_string(),
    ])
}

/// Whether a lease answer grants the lease.
pub fn lease_answer(f: &OwnedFrame) -> Result<bool, String> {
    match f {
        OwnedFrame::Integer(1) => Ok(true),
        OwnedFrame::Integer(0) => Ok(false),
        OwnedFrame::Error(e) => Err(e.clone()),
        _ => Err(format!("unexpected lease answer {f:?}")),
    }
}

/// SHA-1 of a script, as Redis names it (EVALSHA).
pub fn sha1_hex(script: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, script.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One change of the shared suppression list, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The list's key (`suppress::key`), reason, since.
    Add(String, String, u64),
    /// The list's key, and when (Unix seconds): kept as a tombstone so a
    /// node that was away does not bring the entry back.
    Remove(String, u64),
}

impl Change {
    /// `+key\treason\tsince` or `-key\tat`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Change::Add(k, r, s) => format!("+{k}\t{r}\t{s}").into_bytes(),
            Change::Remove(k, at) => format!("-{k}\t{at}").into_bytes(),
        }
    }

    pub fn decode(b: &[u8]) -> Option<Change> {
        let s = std::str::from_utf8(b).ok()?;
        if let Some(rest) = s.strip_prefix('+') {
            let mut parts = rest.splitn(3, '\t');
            let (k, r, since) = (parts.next()?, parts.next()?, parts.next()?);
            return Some(Change::Add(k.to_owned(), r.to_owned(), since.parse().ok()?));
        }
        let (k, at) = s.strip_prefix('-')?.rsplit_once('\t')?;
        Some(Change::Remove(k.to_owned(), at.parse().ok()?))
    }

    /// The list's key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Change::Add(k, _, _) | Change::Remove(k, _) => k,
        }
    }

    /// The commands that apply it to the hash (and the tombstones) and
    /// announce it. An add clears the key's tombstone.
    pub fn commands(&self, hash: &str, removed: &str, channel: &str) -> Vec<OwnedFrame> {
        let k = self.key().as_bytes();
        let mut out = match self {
            Change::Add(_, r, s) => vec![
                cmd(&[b"HSET".as_slice(), hash.as_bytes(), k, format!("{r}\t{s}").as_bytes()]),
                cmd(&[b"ZREM".as_slice(), removed.as_bytes(), k]),
            ],
            Change::Remove(_, at) => vec![
                cmd(&[b"HDEL".as_slice(), hash.as_bytes(), k]),
                cmd(&[b"ZADD".as_slice(), removed.as_bytes(), at.to_string().as_bytes(), k]),
            ],
        };
        out.push(cmd(&[b"PUBLISH".as_slice(), channel.as_bytes(), &self.encode()]));
        out
    }
}

/// What a full sync does with one key, from what Redis and this node hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// Nothing to do.
    Keep,
    /// Take Redis's entry.
    TakeRemote,
    /// Redis lacks our entry (it was added while we were away from it, or
    /// Redis lost its data): write ours to Redis.
    PushLocal,
    /// Removed elsewhere after we added it: remove ours.
    RemoveLocal,
}

/// Decides a full sync for one key. `local` and `remote` are the entries'
/// `since` (None: absent); `removed` is the tombstone's time. An entry
/// wins over a tombstone that is not newer: when in doubt, suppress.
pub fn sync(local: Option<u64>, remote: Option<u64>, removed: Option<u64>) -> SyncStep {
    match (local, remote) {
        (None, Some(_)) => SyncStep::TakeRemote,
        (Some(l), Some(r)) if r != l => SyncStep::TakeRemote,
        (Some(_), Some(_)) | (None, None) => SyncStep::Keep,
        (Some(l), None) => match removed {
            Some(at) if at > l => SyncStep::RemoveLocal,
            _ => SyncStep::PushLocal,
        },
    }
}

/// A hash value (`reason\tsince`) read back.
pub fn hash_value(v: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (r, since) = s.split_once('\t')?;
    Some((r.to_owned(), since.parse().ok()?))
}

/// A pub/sub push: `["message", channel, payload]`.
pub fn message_payload(f: &OwnedFrame) -> Option<&[u8]> {
    match f {
        OwnedFrame::Array(a) if a.len() == 3 => match (&a[0], &a[2]) {
            (OwnedFrame::BulkString(kind), OwnedFrame::BulkString(p)) if kind == b"message" => Some(p),
            _ => None,
        },
        _ => None,
    }
}

/// How long to wait before connecting again after `failures` failures in
/// a row: 100 ms doubling, at most 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)).min(5_000))
}

#[cfg(test)]
mod tests;
