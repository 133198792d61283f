//! The configuration file (TOML). Plain data: every field has a default, unknown
//! keys are errors, durations are [`Duration`]s written with a unit (`"30s"`).
//! See `docs/config.md` for every key with its default and unit.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::smtp::address::Domain;

/// Largest `limits.message_size`: a spool record holds at most 1 GiB
/// (`spool::record::MAX_PAYLOAD`), and besides the content it holds our
/// Received header (under 2 KiB) and the envelope (under 40 MB with
/// [`MAX_RECIPIENTS`] recipients of at most 800 bytes each).
pub const MAX_MESSAGE_SIZE: u64 = crate::spool::record::MAX_PAYLOAD as u64 - (64 << 20);
/// Largest `limits.recipients`.
pub const MAX_RECIPIENTS: usize = 50_000;

/// A config problem, with the file, line and key where possible.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name in the greeting, EHLO and Received. Default: the system host name.
    #[serde(default)]
    pub hostname: Option<Spanned<String>>,
    /// Worker threads, one io_uring runtime each. 0 = one per CPU.
    #[serde(default)]
    pub threads: usize,
    /// Listening sockets. Default: one `mx` listener on 127.0.0.1:2525.
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// Certificate and key for STARTTLS and implicit TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    /// Static next hops (used by outbound delivery).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub local: LocalConfig,
    /// Local mailboxes and AUTH logins.
    #[serde(default, rename = "user")]
    pub users: Vec<Spanned<UserConfig>>,
    #[serde(default)]
    pub log: LogConfig,
    /// DKIM signatures for mail from our clients (one entry per signature).
    #[serde(default, rename = "dkim")]
    pub dkim: Vec<Spanned<DkimConfig>>,
    /// Egress sources: local addresses outbound connections are made from.
    #[serde(default, rename = "source")]
    pub sources: Vec<Spanned<SourceConfig>>,
    /// Sources used in turn.
    #[serde(default, rename = "pool")]
    pub pools: Vec<Spanned<PoolConfig>>,
    /// Who sends: each tenant's mail goes out through its pool.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<Spanned<TenantConfig>>,
    /// Shaping rules written in this file (those of `[delivery]
    /// shaping_files` follow them).
    #[serde(default)]
    pub shaping: Vec<Spanned<ShapingConfig>>,
    /// Delivery events: the JSON lines file and the webhook backlog.
    #[serde(default)]
    pub events: EventsConfig,
    /// Endpoints events are POSTed to.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Spanned<WebhookConfig>>,
    /// The `[delivery] bounce_rules` files, read by `load`: (name, text).
    #[serde(skip)]
    pub bounce_rule_files: Vec<(String, String)>,
    /// Complaint reports (ARF).
    #[serde(default)]
    pub feedback: Option<FeedbackConfig>,
    /// One-click unsubscribe for tenant mail.
    #[serde(default)]
    pub unsubscribe: Option<UnsubscribeConfig>,
    /// Shared limits and the shared suppression list.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Bearer tokens of the injection API (`kind = "http"` listeners).
    #[serde(default, rename = "http_token")]
    pub http_tokens: Vec<Spanned<HttpTokenConfig>>,
}

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`.
    pub url: String,
    /// Longest wait for Redis (connect, each read and write).
    #[serde(default = "default_redis_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Key prefix (several clusters on one Redis).
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// Nodes sharing the limits: while Redis is away each node keeps
    /// `1/nodes` of a shared rate and connection limit.
    #[serde(default = "default_redis_nodes")]
    pub nodes: u32,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_redis_prefix() -> String {
    "ringpost".into()
}

fn default_redis_nodes() -> u32 {
    1
}

/// One `[[http_token]]`: a bearer token of the injection API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTokenConfig {
    /// Who holds it (logs, the Received header).
    pub name: String,
    /// argon2 PHC string of the token (`ringpost hash-password`).
    pub hash: String,
    /// The tenant every message injected with this token belongs to; a
    /// request naming another is refused.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `[feedback]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Mail to these addresses is read as ARF reports, not delivered.
    pub addresses: Vec<String>,
    /// Key of the `X-Ringpost-Ref` header on outgoing mail; default: a
    /// random key kept in `<spool dir>/feedback.key`.
    #[serde(default)]
    pub secret: Option<String>,
}

/// `[unsubscribe]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// The public URL of a `kind = "http"` listener.
    pub base_url: String,
    /// Signs the per-recipient token.
    pub secret: String,
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// One JSON object per line; reopened on SIGHUP.
    pub file: Option<PathBuf>,
    /// Bytes of events kept for webhooks that are behind.
    pub max_backlog: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { file: None, max_backlog: 1 << 30 }
    }
}

/// One `[[webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`.
    pub url: String,
    /// Events per POST at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits for more events.
    #[serde(default = "default_batch_wait", deserialize_with = "de_duration")]
    pub batch_wait: Duration,
    /// Connect, send and answer timeout, each.
    #[serde(default = "default_webhook_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Extra trust anchors for an https URL (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_batch_size() -> usize {
    100
}
fn default_batch_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One `[[shaping]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    /// Recipient domain (exact).
    #[serde(default)]
    pub domain: Option<String>,
    /// Glob over the next hop's host names (`*.google.com`).
    #[serde(default)]
    pub mx: Option<String>,
    #[serde(default)]
    pub connections: Option<usize>,
    #[serde(default)]
    pub messages_per_connection: Option<usize>,
    /// `N/s`, `N/min`, `N/h`, `N/day`.
    #[serde(default)]
    pub rate: Option<String>,
    /// Enforced across nodes (needs `[redis]`).
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub automation: Vec<AutomationConfig>,
}

/// One `[[shaping.automation]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationConfig {
    /// Regex over the reply (code, enhanced code, text).
    pub reply: String,
    pub action: ActionConfig,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub duration: Option<Duration>,
    /// `N/<period>`: act after N matches within the period.
    #[serde(default)]
    pub threshold: Option<String>,
    /// What a suspension stops: `"destination"` (the source's budget for
    /// this destination, the default) or `"tenant"` (all of the tenant's mail).
    #[serde(default)]
    pub scope: Option<String>,
}

/// `"suspend"`, `"bounce"` or `{ rate = "10/min" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ActionConfig {
    Name(String),
    Rate { rate: String },
}

/// A file of `[[shaping]]` rules (`[delivery] shaping_files`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapingFile {
    #[serde(default)]
    shaping: Vec<Spanned<ShapingConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Mx,
    Submission,
    Pop3,
    /// HTTP: one-click unsubscribe (and, later, injection).
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port`; port 0 picks a free port (printed at start).
    pub address: SocketAddr,
    #[serde(default = "default_kind")]
    pub kind: ListenerKind,
    #[serde(default)]
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool directory. Default `./ringpost-spool`.
    pub dir: PathBuf,
    /// true: never reply 250 before the message is on stable storage.
    pub fsync: bool,
    /// A segment file is closed and a new one started past this size, in bytes.
    pub segment_size: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { dir: PathBuf::from("./ringpost-spool"), fsync: true, segment_size: 64 << 20 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes of content per message; advertised in EHLO SIZE.
    pub message_size: u64,
    /// Recipients per transaction.
    pub recipients: usize,
    /// Concurrent inbound sessions, whole server.
    pub connections: usize,
    /// Concurrent sessions per client IP (clients in relay_networks are exempt).
    pub connections_per_ip: usize,
    /// Longest command line in bytes, CRLF included.
    pub line_length: usize,
    /// A complete command must arrive within this after our previous reply.
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// Longest wait for more message content during DATA or BDAT.
    #[serde(deserialize_with = "de_duration")]
    pub data_timeout: Duration,
    /// Error replies in one session before it is closed with 421.
    pub errors: u32,
    /// On SIGTERM, how long sessions in a transaction may take to finish.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Bytes of message content all sessions together may hold in memory;
    /// past it, a message being received is dropped with 452 4.3.1.
    pub message_memory: u64,
    /// Failed logins (SMTP AUTH, POP3) per client address within 10
    /// minutes after which that address is refused; 0 = no limit.
    pub auth_failures_per_ip: u32,
    /// Bytes of one injection API request body.
    pub inject_size: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            message_size: 52_428_800,
            recipients: 1000,
            connections: 10_000,
            connections_per_ip: 50,
            line_length: 2048,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            errors: 20,
            shutdown_grace: Duration::from_secs(10),
            message_memory: 1 << 30,
            auth_failures_per_ip: 0,
            inject_size: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Domains whose mail is delivered here.
    pub local_domains: Vec<String>,
    /// Domains accepted from anyone and relayed onward.
    pub relay_domains: Vec<String>,
    /// Clients that may relay to any domain.
    pub relay_networks: Vec<IpNet>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let loopback = ["127.0.0.0/8", "::1/128"];
        RelayConfig {
            local_domains: Vec::new(),
            relay_domains: Vec::new(),
            relay_networks: loopback.iter().filter_map(|n| n.parse().ok()).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domain, or `*` for every domain.
    pub domain: String,
    /// Next hops `host:port` (or `[v6addr]:port`), tried in order.
    #[serde(deserialize_with = "de_targets")]
    pub to: Vec<RouteTarget>,
    /// `"smtp"`, or `"lmtp"` (RFC 2033: a final delivery agent such as
    /// Dovecot's LMTP).
    #[serde(default)]
    pub protocol: RouteProtocol,
}

/// What a `[[route]]` speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    #[default]
    Smtp,
    Lmtp,
}

/// One next hop of a `[[route]]`: a host name or address (lower case), and
/// a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub host: String,
    pub port: u16,
}

/// Parses `host:port` or `[v6addr]:port`.
pub fn parse_route_target(t: &str) -> Result<RouteTarget, String> {
    let bad = || format!("route target {t:?} must be host:port");
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(RouteTarget { host: host.to_lowercase(), port })
}

fn de_targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RouteTarget>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter().map(|t| parse_route_target(t)).collect::<Result<_, _>>().map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// TCP port for hosts found through MX.
    pub port: u16,
    /// DNS servers `ip:port`; empty = /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    /// Retry intervals; the last repeats.
    #[serde(deserialize_with = "de_durations")]
    pub retry: Vec<Duration>,
    /// Age after which an undeliverable message bounces.
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    /// Age after which a sender learns its message is delayed (a `delayed`
    /// DSN, once); zero: never.
    #[serde(deserialize_with = "de_duration")]
    pub delay_warning: Duration,
    /// TCP connect timeout per address.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Wait for the greeting and each command's reply (RFC 5321: 5 minutes).
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// Wait for 354 and for sending the content (RFC 5321: 2-3 minutes).
    #[serde(deserialize_with = "de_duration")]
    pub data_timeout: Duration,
    /// Wait for the reply after the final dot (RFC 5321: 10 minutes).
    #[serde(deserialize_with = "de_duration")]
    pub final_timeout: Duration,
    /// Concurrent connections to one destination (one MX host set).
    pub connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Messages per second to one destination; 0 = unlimited.
    pub rate_per_destination: f64,
    /// A destination that could not be reached at all is left alone this long.
    #[serde(deserialize_with = "de_duration")]
    pub destination_backoff: Duration,
    /// Use STARTTLS when offered (opportunistic, certificates not verified).
    pub starttls: bool,
    /// Follow recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Check MX hosts' TLSA records (DANE, RFC 7672); needs a validating
    /// resolver on this machine as `dns_servers`.
    pub dane: bool,
    /// How often TLS reports (RFC 8460) go out, when `mta_sts` or `dane`
    /// is on; 0 = never.
    #[serde(deserialize_with = "de_duration")]
    pub tls_report_interval: Duration,
    /// Extra trust anchors (PEM) for verified TLS (MTA-STS policies and
    /// the MX hosts they name), besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Per DNS query attempt.
    #[serde(deserialize_with = "de_duration")]
    pub dns_timeout: Duration,
    /// Answers kept in the shared DNS cache.
    pub dns_cache_size: usize,
    /// Accept and queue, but deliver nothing (maintenance, or measuring
    /// acceptance alone). Queued mail is delivered once this is off again.
    pub hold: bool,
    /// The pool for mail with no tenant, or a tenant without a pool. None:
    /// such mail goes out from the host's default address.
    pub pool: Option<String>,
    /// Files of `[[shaping]]` rules, read after this file's own (relative
    /// paths: from this file's directory).
    pub shaping_files: Vec<PathBuf>,
    /// Files of `[[bounce]]` classification rules, tried before the
    /// shipped ones.
    pub bounce_rules: Vec<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        DeliveryConfig {
            port: 25,
            dns_servers: Vec::new(),
            retry: vec![m(1), m(5), m(15), m(60), m(240)],
            max_age: Duration::from_secs(5 * 86_400),
            delay_warning: Duration::ZERO,
            connect_timeout: Duration::from_secs(30),
            command_timeout: m(5),
            data_timeout: m(3),
            final_timeout: m(10),
            connections_per_destination: 20,
            messages_per_connection: 100,
            rate_per_destination: 0.0,
            destination_backoff: Duration::from_secs(30),
            starttls: true,
            mta_sts: false,
            dane: false,
            tls_report_interval: Duration::from_secs(86_400),
            ca_file: None,
            dns_timeout: Duration::from_secs(5),
            dns_cache_size: 100_000,
            hold: false,
            pool: None,
            shaping_files: Vec::new(),
            bounce_rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP admin and metrics address.
    pub address: SocketAddr,
    /// argon2 PHC hash of the bearer token every admin request must carry.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { address: SocketAddr::from(([127, 0, 0, 1], 8025)), token: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Maildirs live at `<mail_dir>/<domain>/<local-part>/`.
    pub mail_dir: PathBuf,
    /// The system user that owns the Maildirs and their files (Dovecot
    /// reads them as that user; it refuses root).
    pub user: Option<String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { mail_dir: PathBuf::from("/var/mail"), user: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub address: String,
    /// argon2 PHC string (`ringpost hash-password`).
    pub password: String,
    /// The `[[tenant]]` this user's mail belongs to (overrides `X-Tenant`).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// One `[[source]]`: a local address outbound connections bind to, and the
/// name it says EHLO with (its PTR, ideally).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub address: std::net::IpAddr,
    /// EHLO name; default: `hostname`.
    #[serde(default)]
    pub ehlo: Option<String>,
    /// Warm-up: at most this many messages a day (UTC) through this
    /// source; past it, the pool's other sources take the mail.
    #[serde(default)]
    pub max_per_day: Option<u64>,
}

/// One `[[pool]]`: sources taken in turn, in proportion to their weights.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub sources: Vec<PoolMember>,
}

/// A pool's source: its name, or `{ name = "...", weight = N }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PoolMember {
    Name(String),
    Weighted { name: String, weight: u32 },
}

impl PoolMember {
    pub fn name(&self) -> &str {
        match self {
            PoolMember::Name(n) | PoolMember::Weighted { name: n, .. } => n,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            PoolMember::Name(_) => 1,
            PoolMember::Weighted { weight, .. } => *weight,
        }
    }
}

/// One `[[tenant]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The pool its mail goes out through; default: `[delivery] pool`.
    #[serde(default)]
    pub pool: Option<String>,
}

/// One `[[dkim]]` entry: mail whose From: domain is `domain` gets a
/// signature with this key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The `d=` domain; mail whose From: address is in it is signed.
    pub domain: String,
    /// The `s=` selector: the key is published at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (2048 bits or more; PKCS#1 or PKCS#8) or
    /// Ed25519 (PKCS#8).
    pub key: PathBuf,
    /// Header fields to sign instead of the default list (From is always
    /// signed, and over-signed).
    #[serde(default)]
    pub headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error | warn | info | debug | trace
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

fn default_kind() -> ListenerKind {
    ListenerKind::Mx
}

fn default_listeners() -> Vec<Spanned<ListenerConfig>> {
    let l = ListenerConfig {
        address: SocketAddr::from(([127, 0, 0, 1], 2525)),
        kind: ListenerKind::Mx,
        tls: TlsMode::None,
    };
    vec![Spanned::new(0..0, l)]
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"5d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. \"30s\", \"5m\""))?;
    let secs = match unit {
        "ms" if n <= MAX_DURATION_SECS * 1000 => return Ok(Duration::from_millis(n)),
        "ms" => return Err(format!("duration {s:?} is too large (at most 365d)")),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration {s:?}: unit must be ms, s, m, h or d")),
    };
    match n.checked_mul(secs) {
        Some(total) if total <= MAX_DURATION_SECS => Ok(Duration::from_secs(total)),
        _ => Err(format!("duration {s:?} is too large (at most 365d)")),
    }
}

/// No duration in the config is longer than a year.
const MAX_DURATION_SECS: u64 = 365 * 86_400;

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter().map(|s| parse_duration(s)).collect::<Result<_, _>>().map_err(serde::de::Error::custom)
}

impl Config {
    /// Built-in defaults (as if the file were empty).
    pub fn defaults() -> Config {
        // An empty document always deserializes: every field has a default.
        toml::from_str("").unwrap_or_else(|e| unreachable!("defaults must parse: {e}"))
    }

    /// Reads and checks a config file. Errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        for file in config.delivery.shaping_files.clone() {
            let file = base.join(file);
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError(format!("{}: delivery.shaping_files: {name}: cannot read: {e}", path.display()))
            })?;
            config.shaping.extend(parse_shaping(&text, &name)?);
        }
        config.check_shared(&path.display().to_string())?;
        for file in config.delivery.bounce_rules.clone() {
            let file = base.join(file);
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError(format!("{}: delivery.bounce_rules: {name}: cannot read: {e}", path.display()))
            })?;
            config.bounce_rule_files.push((name, text));
        }
        config
            .classifier()
            .map_err(|e| ConfigError(format!("{}: delivery.bounce_rules: {e}", path.display())))?;
        Ok(config)
    }

    /// `shared = true` rules need `[redis]`.
    fn check_shared(&self, name: &str) -> Result<(), ConfigError> {
        if self.redis.is_none() {
            if let Some(i) = self.shaping.iter().position(|r| r.get_ref().shared) {
                let msg = "shared = true needs a [redis] section (the limits are kept there, across nodes)";
                return Err(ConfigError(format!("{name}: shaping[{i}].shared: {msg}")));
            }
        }
        Ok(())
    }

    /// The bounce classifier: the `bounce_rules` files, then the shipped rules.
    pub fn classifier(&self) -> Result<crate::delivery::classify::Classifier, String> {
        crate::delivery::classify::Classifier::new(&self.bounce_rule_files)
    }

    /// `[events]` and `[[webhook]]` as the event log takes them.
    pub fn event_settings(&self) -> crate::events::log::Settings {
        let webhooks = self
            .webhooks
            .iter()
            .filter_map(|w| {
                let w = w.get_ref();
                // Checked when parsed: a bad URL never gets here.
                Some(crate::events::webhook::WebhookSettings {
                    url: crate::events::webhook::HttpUrl::parse(&w.url).ok()?,
                    batch_size: w.batch_size,
                    batch_wait: w.batch_wait,
                    timeout: w.timeout,
                    headers: w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    ca_file: w.ca_file.clone(),
                })
            })
            .collect();
        crate::events::log::Settings {
            file: self.events.file.clone(),
            max_backlog: self.events.max_backlog,
            webhooks,
        }
    }

    /// Every shaping rule compiled, in order (this file's, then the files').
    pub fn shaping_rules(&self) -> Vec<crate::delivery::shaping::Rule> {
        // Checked when parsed: a rule that does not compile never gets here.
        self.shaping
            .iter()
            .filter_map(|r| crate::delivery::shaping::Rule::compile(r.get_ref()).ok())
            .collect()
    }

    /// Parses and checks config text; `name` is used in messages.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError(format_toml_error(name, text, &e)))?;
        config.validate(text, name)?;
        config.check_shared(name)?;
        Ok(config)
    }

    fn validate(&self, text: &str, name: &str) -> Result<(), ConfigError> {
        let at = |span: Range<usize>, key: &str, msg: &str| {
            ConfigError(format!("{name}: line {}: {key}: {msg}", line_of(text, span.start)))
        };
        let host = self.hostname.as_ref().map_or_else(system_hostname, |h| h.get_ref().clone());
        if Domain::parse_host_name(&host).is_err() {
            let msg = format!(
                "{host:?} is not a valid host name (dot-separated labels of letters, digits and \
                 hyphens, no trailing dot, e.g. \"mx1.example.com\")"
            );
            return Err(match &self.hostname {
                Some(h) => at(h.span(), "hostname", &msg),
                None => ConfigError(format!("{name}: hostname: the system host name {msg}; set hostname")),
            });
        }
        if self.listeners.is_empty() {
            return Err(ConfigError(format!("{name}: at least one [[listener]] is needed")));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = format!("listener[{i}]");
            if l.get_ref().tls != TlsMode::None && self.tls.is_none() {
                return Err(at(l.span(), &format!("{key}.tls"), "needs a [tls] section with cert and key"));
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            let user = u.get_ref();
            if !user.address.contains('@') {
                return Err(at(u.span(), &format!("user[{i}].address"), "must be local-part@domain"));
            }
            if argon2::PasswordHash::new(&user.password).is_err() {
                let msg = "must be a PHC hash string (see `ringpost hash-password`), never plain text";
                return Err(at(u.span(), &format!("user[{i}].password"), msg));
            }
        }
        for (i, d) in self.dkim.iter().enumerate() {
            let entry = d.get_ref();
            if Domain::parse_host_name(&entry.domain).is_err() {
                return Err(at(d.span(), &format!("dkim[{i}].domain"), "must be a domain name"));
            }
            let selector_ok = !entry.selector.is_empty()
                && entry.selector.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !selector_ok {
                let msg =
                    "must be one or more DNS labels (letters, digits, hyphens, underscores), e.g. \"s2026\"";
                return Err(at(d.span(), &format!("dkim[{i}].selector"), msg));
            }
            if let Some(h) = entry
                .headers
                .iter()
                .find(|h| h.is_empty() || !h.bytes().all(|b| (33..=126).contains(&b) && b != b':'))
            {
                return Err(at(
                    d.span(),
                    &format!("dkim[{i}].headers"),
                    &format!("{h:?} is not a header field name"),
                ));
            }
            let dup = self.dkim[..i].iter().any(|o| {
                let o = o.get_ref();
                o.domain.eq_ignore_ascii_case(&entry.domain) && o.selector == entry.selector
            });
            if dup {
                return Err(at(
                    d.span(),
                    &format!("dkim[{i}]"),
                    "a second entry with the same domain and selector",
                ));
            }
        }
        if self.delivery.mta_sts || self.delivery.ca_file.is_some() {
            if let Err(e) = crate::rt::transport::verifying_client_config(self.delivery.ca_file.as_deref()) {
                return Err(ConfigError(format!("{name}: delivery.ca_file: {e}")));
            }
        }
        if let Some(u) = &self.local.user {
            if let Err(e) = crate::delivery::local::lookup_user(u) {
                return Err(ConfigError(format!("{name}: local.user: {e}")));
            }
        }
        if let Some(r) = &self.redis {
            if let Err(e) = crate::redis::Url::parse(&r.url) {
                return Err(ConfigError(format!("{name}: redis.url: {e}")));
            }
            if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&r.timeout) {
                return Err(ConfigError(format!("{name}: redis.timeout: must be between 10ms and 60s")));
            }
            if !(1..=1000).contains(&r.nodes) {
                return Err(ConfigError(format!("{name}: redis.nodes: must be between 1 and 1000")));
            }
            let prefix_ok = !r.prefix.is_empty()
                && r.prefix.len() <= 64
                && r.prefix.bytes().all(|b| b.is_ascii_graphic());
            if !prefix_ok {
                return Err(ConfigError(format!("{name}: redis.prefix: 1-64 printable ASCII characters")));
            }
        }
        for (i, t) in self.http_tokens.iter().enumerate() {
            let token = t.get_ref();
            if argon2::PasswordHash::new(&token.hash).is_err() {
                let msg = "must be a PHC hash string (see `ringpost hash-password`), never the token itself";
                return Err(at(t.span(), &format!("http_token[{i}].hash"), msg));
            }
            if token.name.is_empty() || !token.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(at(
                    t.span(),
                    &format!("http_token[{i}].name"),
                    "must be printable ASCII without spaces",
                ));
            }
            if self.http_tokens[..i].iter().any(|o| o.get_ref().name == token.name) {
                return Err(at(t.span(), &format!("http_token[{i}].name"), "a second token with this name"));
            }
        }
        if let Some(t) = &self.admin.token {
            if argon2::PasswordHash::new(t).is_err() {
                let msg = "must be a PHC hash string (see `ringpost hash-password`), never the token itself";
                return Err(ConfigError(format!("{name}: admin.token: {msg}")));
            }
        }
        if self.admin.token.is_none() && !self.admin.address.ip().is_loopback() {
            return Err(ConfigError(format!(
                "{name}: admin.address: {} is reachable from other machines: set admin.token (anyone \
                 who reaches the admin API can delete the queue)",
                self.admin.address
            )));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let hook = w.get_ref();
            if let Err(e) = crate::events::webhook::HttpUrl::parse(&hook.url) {
                return Err(at(w.span(), &format!("webhook[{i}].url"), &e));
            }
            if !(1..=10_000).contains(&hook.batch_size) {
                return Err(at(w.span(), &format!("webhook[{i}].batch_size"), "must be between 1 and 10000"));
            }
            if hook.batch_wait > Duration::from_secs(3600) {
                return Err(at(w.span(), &format!("webhook[{i}].batch_wait"), "must be at most 1h"));
            }
            if hook.timeout < Duration::from_millis(100) || hook.timeout > Duration::from_secs(3600) {
                return Err(at(w.span(), &format!("webhook[{i}].timeout"), "must be between 100ms and 1h"));
            }
            let bad_header = hook.headers.iter().find(|(k, v)| {
                k.is_empty()
                    || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || v.bytes().any(|b| b == b'\r' || b == b'\n')
            });
            if let Some((k, _)) = bad_header {
                return Err(at(
                    w.span(),
                    &format!("webhook[{i}].headers"),
                    &format!("{k:?}: bad name or value"),
                ));
            }
            if self.webhooks[..i].iter().any(|o| o.get_ref().url == hook.url) {
                return Err(at(w.span(), &format!("webhook[{i}].url"), "a second webhook with the same URL"));
            }
        }
        if let Some(f) = &self.feedback {
            if f.addresses.is_empty() {
                return Err(ConfigError(format!("{name}: feedback.addresses: name at least one address")));
            }
            if let Some(a) = f.addresses.iter().find(|a| crate::suppress::key(a, None).is_none()) {
                return Err(ConfigError(format!("{name}: feedback.addresses: {a:?} is not an address")));
            }
            if f.secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(ConfigError(format!("{name}: feedback.secret: at least 16 characters")));
            }
        }
        if let Some(u) = &self.unsubscribe {
            let ok = (u.base_url.starts_with("https://") || u.base_url.starts_with("http://"))
                && !u.base_url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'>')
                && u.base_url.len() <= 200;
            if !ok {
                return Err(ConfigError(format!(
                    "{name}: unsubscribe.base_url: {:?} is not an http(s) URL (at most 200 bytes)",
                    u.base_url
                )));
            }
            if u.secret.len() < 16 {
                return Err(ConfigError(format!("{name}: unsubscribe.secret: at least 16 characters")));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.get_ref().kind == ListenerKind::Http && l.get_ref().tls == TlsMode::Starttls {
                return Err(at(
                    l.span(),
                    &format!("listener[{i}].tls"),
                    "an http listener takes \"none\" or \"implicit\"",
                ));
            }
        }
        self.validate_egress(name, &at)?;
        check_shaping(&self.shaping, &at)?;
        if let Err((section, key, msg)) = self.check_bounds() {
            let full = if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") };
            return Err(match key_line(text, section, key) {
                Some(line) => ConfigError(format!("{name}: line {line}: {full}: {msg}")),
                None => ConfigError(format!("{name}: {full}: {msg}")),
            });
        }
        if let Some(r) = self.routes.iter().find(|r| r.to.is_empty()) {
            return Err(ConfigError(format!("{name}: [[route]]: the route for {} has no targets", r.domain)));
        }
        if self.delivery.retry.is_empty() {
            return Err(ConfigError(format!("{name}: delivery.retry needs at least one interval")));
        }
        Ok(())
    }

    /// Sources, pools and tenants name each other consistently.
    fn validate_egress(
        &self,
        name: &str,
        at: &dyn Fn(Range<usize>, &str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let src = s.get_ref();
            if src.name.is_empty() || !names.insert(src.name.as_str()) {
                return Err(at(s.span(), &format!("source[{i}].name"), "must be unique and not empty"));
            }
            if let Some(e) = &src.ehlo {
                if Domain::parse_host_name(e).is_err() {
                    return Err(at(
                        s.span(),
                        &format!("source[{i}].ehlo"),
                        &format!("{e:?} is not a host name"),
                    ));
                }
            }
            if src.address.is_unspecified() || src.address.is_multicast() {
                return Err(at(
                    s.span(),
                    &format!("source[{i}].address"),
                    "must be a unicast address of this host",
                ));
            }
            if src.max_per_day.is_some_and(|m| !(1..=1_000_000_000).contains(&m)) {
                return Err(at(
                    s.span(),
                    &format!("source[{i}].max_per_day"),
                    "must be between 1 and 1000000000",
                ));
            }
        }
        let mut pools = std::collections::HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let pool = p.get_ref();
            if pool.name.is_empty() || !pools.insert(pool.name.as_str()) {
                return Err(at(p.span(), &format!("pool[{i}].name"), "must be unique and not empty"));
            }
            if pool.sources.is_empty() {
                return Err(at(p.span(), &format!("pool[{i}].sources"), "needs at least one source"));
            }
            for m in &pool.sources {
                if !names.contains(m.name()) {
                    return Err(at(
                        p.span(),
                        &format!("pool[{i}].sources"),
                        &format!("no [[source]] named {:?}", m.name()),
                    ));
                }
                if !(1..=1000).contains(&m.weight()) {
                    return Err(at(
                        p.span(),
                        &format!("pool[{i}].sources"),
                        "weights must be between 1 and 1000",
                    ));
                }
            }
        }
        let mut tenants = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let tenant = t.get_ref();
            if tenant.name.is_empty()
                || tenant.name.len() > crate::mail::MAX_NAME
                || !tenants.insert(tenant.name.as_str())
            {
                return Err(at(
                    t.span(),
                    &format!("tenant[{i}].name"),
                    "must be unique, not empty, at most 200 bytes",
                ));
            }
            if let Some(p) = tenant.pool.as_deref().filter(|p| !pools.contains(p)) {
                return Err(at(t.span(), &format!("tenant[{i}].pool"), &format!("no [[pool]] named {p:?}")));
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            if let Some(t) = u.get_ref().tenant.as_deref().filter(|t| !tenants.contains(t)) {
                return Err(at(
                    u.span(),
                    &format!("user[{i}].tenant"),
                    &format!("no [[tenant]] named {t:?}"),
                ));
            }
        }
        if let Some(p) = self.delivery.pool.as_deref().filter(|p| !pools.contains(p)) {
            return Err(ConfigError(format!("{name}: delivery.pool: no [[pool]] named {p:?}")));
        }
        Ok(())
    }

    /// Every number and duration within the range the server can use:
    /// beyond it, deadlines overflow, buffers grow without need, or records
    /// outgrow the spool. Returns (section, key, what is wrong).
    fn check_bounds(&self) -> Result<(), (&'static str, &'static str, String)> {
        const MS: Duration = Duration::from_millis(1);
        const SEC: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let int = |section, key, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err((section, key, format!("must be between {min} and {max} (is {v})")))
            }
        };
        let dur = |section, key, v: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err((section, key, format!("must be between {} and {}", show(min), show(max))))
            }
        };
        let (l, d) = (&self.limits, &self.delivery);
        int("", "threads", self.threads as u64, 0, 255)?;
        if l.message_size > MAX_MESSAGE_SIZE {
            let msg =
                "must be at most 1006632960 (960 MiB: a spool record holds at most 1 GiB, envelope included)";
            return Err(("limits", "message_size", msg.to_owned()));
        }
        int("limits", "message_size", l.message_size, 1, MAX_MESSAGE_SIZE)?;
        int("limits", "recipients", l.recipients as u64, 1, MAX_RECIPIENTS as u64)?;
        int("limits", "connections", l.connections as u64, 1, 1_000_000)?;
        int("limits", "connections_per_ip", l.connections_per_ip as u64, 1, 1_000_000)?;
        // RFC 5321 §4.5.3.1.4: at least 512; more than 64 KiB only lets one
        // connection make the server hold that much per line.
        int("limits", "line_length", l.line_length as u64, 512, 65_536)?;
        int("limits", "errors", u64::from(l.errors), 1, 10_000)?;
        int("limits", "message_memory", l.message_memory, 1, 1 << 40)?;
        int("limits", "auth_failures_per_ip", u64::from(l.auth_failures_per_ip), 0, 1_000_000)?;
        int("limits", "inject_size", l.inject_size, 1 << 10, 1 << 30)?;
        dur("limits", "command_timeout", l.command_timeout, MS, DAY)?;
        dur("limits", "data_timeout", l.data_timeout, MS, DAY)?;
        dur("limits", "shutdown_grace", l.shutdown_grace, Duration::ZERO, HOUR)?;
        int("spool", "segment_size", self.spool.segment_size, 1 << 20, 1 << 34)?;
        int("events", "max_backlog", self.events.max_backlog, 1 << 20, 1 << 40)?;
        int("delivery", "port", u64::from(d.port), 1, 65_535)?;
        for &r in &d.retry {
            dur("delivery", "retry", r, SEC, 30 * DAY)?;
        }
        dur("delivery", "max_age", d.max_age, SEC, 365 * DAY)?;
        if !d.delay_warning.is_zero() {
            dur("delivery", "delay_warning", d.delay_warning, SEC, 365 * DAY)?;
        }
        dur("delivery", "connect_timeout", d.connect_timeout, MS, DAY)?;
        dur("delivery", "command_timeout", d.command_timeout, MS, DAY)?;
        dur("delivery", "data_timeout", d.data_timeout, MS, DAY)?;
        dur("delivery", "final_timeout", d.final_timeout, MS, DAY)?;
        dur("delivery", "destination_backoff", d.destination_backoff, Duration::ZERO, DAY)?;
        dur("delivery", "dns_timeout", d.dns_timeout, MS, 60 * SEC)?;
        int("delivery", "dns_cache_size", d.dns_cache_size as u64, 1, 10_000_000)?;
        int("delivery", "connections_per_destination", d.connections_per_destination as u64, 1, 10_000)?;
        int("delivery", "messages_per_connection", d.messages_per_connection as u64, 1, 1_000_000)?;
        let rate = d.rate_per_destination;
        if !(rate == 0.0 || (0.001..=1_000_000.0).contains(&rate)) {
            let msg = format!("must be 0 (unlimited) or between 0.001 and 1000000 messages/s (is {rate})");
            return Err(("delivery", "rate_per_destination", msg));
        }
        Ok(())
    }

    /// The host name to announce (checked by [`Config::parse`]; should it
    /// not be valid in a config that was not checked, `localhost`).
    pub fn hostname(&self) -> Domain {
        let host = self.hostname.as_ref().map_or_else(system_hostname, |h| h.get_ref().clone());
        Domain::parse_host_name(&host).unwrap_or_else(|_| Domain::localhost())
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Parses a shaping file: `[[shaping]]` tables only, each checked.
fn parse_shaping(text: &str, name: &str) -> Result<Vec<Spanned<ShapingConfig>>, ConfigError> {
    let file: ShapingFile =
        toml::from_str(text).map_err(|e| ConfigError(format_toml_error(name, text, &e)))?;
    let at = |span: Range<usize>, key: &str, msg: &str| {
        ConfigError(format!("{name}: line {}: {key}: {msg}", line_of(text, span.start)))
    };
    check_shaping(&file.shaping, &at)?;
    Ok(file.shaping)
}

fn check_shaping(
    rules: &[Spanned<ShapingConfig>],
    at: &dyn Fn(Range<usize>, &str, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    for (i, r) in rules.iter().enumerate() {
        if let Err(e) = crate::delivery::shaping::Rule::compile(r.get_ref()) {
            return Err(at(r.span(), &format!("shaping[{i}]"), &e));
        }
    }
    Ok(())
}

/// A duration as written in the config (`"250ms"`, `"30s"`, `"1d"`).
fn show(d: Duration) -> String {
    let s = d.as_secs();
    match (d.subsec_millis(), s) {
        (ms, _) if ms > 0 || s == 0 => format!("{}ms", d.as_millis()),
        (_, s) if s % 86_400 == 0 => format!("{}d", s / 86_400),
        (_, s) if s % 3600 == 0 => format!("{}h", s / 3600),
        (_, s) if s % 60 == 0 => format!("{}m", s / 60),
        (_, s) => format!("{s}s"),
    }
}

/// The line of `key` in table `section` ("" for the top level), if written.
fn key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = "";
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header.trim_start_matches('[').split(']').next().unwrap_or("").trim();
            continue;
        }
        let is_key = line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == section && is_key {
            return Some(n + 1);
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn format_toml_error(name: &str, text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{name}: line {line}: {message} (at `{snippet}`)")
        }
        None => format!("{name}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::defaults();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].get_ref().address, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.listeners[0].get_ref().kind, ListenerKind::Mx);
        assert_eq!(c.spool.dir, PathBuf::from("./ringpost-spool"));
        assert!(c.spool.fsync);
        assert_eq!(c.admin.address, "127.0.0.1:8025".parse().unwrap());
        assert_eq!(c.limits.message_size, 52_428_800);
        assert_eq!(c.delivery.port, 25);
        assert_eq!(c.delivery.max_age, Duration::from_secs(432_000));
        assert_eq!(c.relay.relay_networks.len(), 2);
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
hostname = "mx1.example.com"
threads  = 2
[[listener]]
address = "0.0.0.0:25"
kind    = "mx"
tls     = "starttls"
[[listener]]
address = "[::1]:587"
kind = "submission"
tls = "implicit"
[tls]
cert = "/etc/ringpost/cert.pem"
key  = "/etc/ringpost/key.pem"
[spool]
dir   = "/var/spool/ringpost"
fsync = true
[limits]
message_size = 1000
recipients   = 10
connections  = 100
command_timeout = "30s"
[relay]
local_domains  = ["example.test"]
relay_domains  = []
relay_networks = ["127.0.0.0/8", "::1/128"]
[[route]]
domain = "example.net"
to     = ["127.0.0.1:2526"]
[delivery]
port        = 2525
dns_servers = ["127.0.0.1:5353"]
retry       = ["1m", "5m"]
max_age     = "5d"
[admin]
address = "127.0.0.1:8025"
[local]
mail_dir = "/var/mail"
[[user]]
address  = "alice@example.test"
password = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$0E0vDCg7w9VvLP5uwjwbiCgUjw4bSE8kx+u6PzV5C0M"
"#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.hostname().as_str(), "mx1.example.com");
        assert_eq!(c.listeners[1].get_ref().tls, TlsMode::Implicit);
        assert_eq!(c.limits.command_timeout, Duration::from_secs(30));
        assert_eq!(c.delivery.retry, vec![Duration::from_secs(60), Duration::from_secs(300)]);
        assert_eq!(c.routes[0].to, vec![RouteTarget { host: "127.0.0.1".into(), port: 2526 }]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("threads = 1\nbogus = 2\n", "line 2", "bogus"),
            ("[limits]\nmessage_size = \"big\"\n", "line 2", "invalid type"),
            ("[limits]\ncommand_timeout = \"5 parsecs\"\n", "line 2", "unit must be"),
            ("[[listener]]\naddress = \"nope\"\n", "line 2", "address"),
            ("[[listener]]\naddress = \"127.0.0.1:25\"\nkind = \"imap\"\n", "line 3", "imap"),
            ("[[listener]]\naddress = \"127.0.0.1:25\"\ntls = \"starttls\"\n", "line 1", "listener[0].tls"),
            ("[[user]]\naddress = \"a@b.test\"\npassword = \"hunter2\"\n", "line 1", "user[0].password"),
            ("[relay]\nrelay_networks = [\"10.0.0.0/33\"]\n", "line 2", "relay_networks"),
            ("[spool]\nfsync = \"yes\"\n", "line 2", "fsync"),
            ("threads = 1\nhostname = \"mx.test.\"\n", "line 2", "hostname"),
            ("hostname = \"mx_test\"\n", "line 1", "not a valid host name"),
            ("hostname = \"\"\n", "line 1", "hostname"),
            ("hostname = \"mx.test\\r\\n250 injected\"\n", "line 1", "hostname"),
            ("hostname = \"[192.0.2.1]\"\n", "line 1", "hostname"),
        ];
        for (text, line, word) in cases {
            let err = Config::parse(text, "x.toml").unwrap_err().to_string();
            assert!(err.starts_with("x.toml: "), "{err}");
            assert!(err.contains(line), "{text:?}: {err}");
            assert!(err.contains(word), "{text:?}: {err}");
        }
    }

    #[test]
    fn sizes_fit_the_spool() {
        assert_eq!(MAX_MESSAGE_SIZE, 1_006_632_960);
        let ok = Config::parse("[limits]\nmessage_size = 1006632960\nrecipients = 50000\n", "x.toml");
        assert!(ok.is_ok(), "{ok:?}");
        for (text, key) in [
            ("[limits]\nmessage_size = 1073741824\n", "limits.message_size"),
            ("[limits]\nmessage_size = 1006632961\n", "limits.message_size"),
            ("[limits]\nrecipients = 50001\n", "limits.recipients"),
        ] {
            let err = Config::parse(text, "x.toml").unwrap_err().to_string();
            assert!(
                err.contains(key) && (err.contains("at most") || err.contains("between 1 and 50000")),
                "{err}"
            );
        }
    }

    /// Every duration and number is bounded: beyond these a deadline
    /// overflows (a worker panics) or one connection can make the server
    /// hold what it likes. The error names file, line and key.
    #[test]
    fn every_duration_and_number_is_bounded() {
        let huge = "\"18446744073709551615s\"";
        let mut cases: Vec<(String, &str)> = Vec::new();
        for key in ["command_timeout", "data_timeout", "shutdown_grace"] {
            cases.push((format!("[limits]\n{key} = {huge}\n"), key));
        }
        for key in [
            "max_age",
            "connect_timeout",
            "command_timeout",
            "data_timeout",
            "final_timeout",
            "destination_backoff",
            "dns_timeout",
        ] {
            cases.push((format!("[delivery]\n{key} = {huge}\n"), key));
        }
        cases.push((format!("[delivery]\nretry = [\"1m\", {huge}]\n"), "retry"));
        let table = [
            ("[limits]\ncommand_timeout = \"2d\"\n", "limits.command_timeout"),
            ("[limits]\ndata_timeout = \"0s\"\n", "limits.data_timeout"),
            ("[limits]\nshutdown_grace = \"2h\"\n", "limits.shutdown_grace"),
            ("[limits]\nline_length = 10000000\n", "limits.line_length"),
            ("[limits]\nline_length = 100\n", "limits.line_length"),
            ("[limits]\nconnections = 0\n", "limits.connections"),
            ("[limits]\nconnections_per_ip = 0\n", "limits.connections_per_ip"),
            ("[limits]\nerrors = 0\n", "limits.errors"),
            ("[limits]\nmessage_memory = 0\n", "limits.message_memory"),
            ("[spool]\nsegment_size = 1000\n", "spool.segment_size"),
            ("[delivery]\nport = 0\n", "delivery.port"),
            ("[delivery]\nretry = [\"0s\"]\n", "delivery.retry"),
            ("[delivery]\ndns_timeout = \"5m\"\n", "delivery.dns_timeout"),
            ("[delivery]\ndns_cache_size = 0\n", "delivery.dns_cache_size"),
            ("[delivery]\nconnections_per_destination = 0\n", "delivery.connections_per_destination"),
            ("[delivery]\nmessages_per_connection = 0\n", "delivery.messages_per_connection"),
            ("[delivery]\nrate_per_destination = 1e-300\n", "delivery.rate_per_destination"),
            ("[delivery]\nrate_per_destination = -1.0\n", "delivery.rate_per_destination"),
            ("threads = 300\n", "threads"),
        ];
        for (text, key) in table {
            cases.push((text.to_owned(), key));
        }
        for (text, key) in cases {
            let text = format!("# a comment\n{text}");
            let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
            let line = if text.contains("threads") { "line 2" } else { "line 3" };
            assert!(err.starts_with(&format!("x.toml: {line}: ")), "{text:?}: {err}");
            assert!(err.contains(key), "{text:?}: {err}");
        }
        // The edges themselves are fine.
        let ok = "threads = 255\n[limits]\ncommand_timeout = \"1d\"\nline_length = 65536\nshutdown_grace = \"0s\"\n\
                  [delivery]\nmax_age = \"365d\"\nretry = [\"30d\"]\nrate_per_destination = 0.001\n";
        assert!(Config::parse(ok, "x.toml").is_ok(), "{:?}", Config::parse(ok, "x.toml").err());
    }

    #[test]
    fn route_targets() {
        assert_eq!(
            parse_route_target("MX.Example.net:25"),
            Ok(RouteTarget { host: "mx.example.net".into(), port: 25 })
        );
        assert_eq!(parse_route_target("[::1]:2527"), Ok(RouteTarget { host: "::1".into(), port: 2527 }));
        for bad in ["nope", "h:0", ":25", "h:99999", "[]:25"] {
            assert!(parse_route_target(bad).is_err(), "{bad}");
        }
        let err =
            Config::parse("[[route]]\ndomain = \"*\"\nto = [\"nope\"]\n", "x.toml").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("host:port"), "{err}");
        let err = Config::parse("[[route]]\ndomain = \"*\"\nto = []\n", "x.toml").unwrap_err().to_string();
        assert!(err.contains("no targets"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_duration("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert!(parse_duration("366d").is_err());
        assert!(parse_duration("18446744073709551615ms").is_err());
    }
}
