//! The `ringpost` command: `serve`, `hash-password`, `queue`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringpost::config::Config;
use ringpost::rt::{self, ServeError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringpost", version, about = "A durable, thread-per-core mail transfer agent on io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA until SIGTERM/SIGINT (SIGHUP reloads the config).
    Serve {
        /// Config file; default ./ringpost.toml if present, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a password on stdin, print its argon2id PHC hash for [[user]].
    HashPassword,
    /// Kernel and runtime tuning.
    Tune {
        #[command(subcommand)]
        action: TuneAction,
    },
    /// Inspect and manage the queue of a running server (admin API).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// Admin API address.
        #[arg(long, global = true, default_value = "127.0.0.1:8025")]
        admin: SocketAddr,
        /// Bearer token for the admin API (or RINGPOST_ADMIN_TOKEN).
        #[arg(long, global = true, env = "RINGPOST_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Local mailbox users ([[user]]).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// The suppression list of a running server (admin API).
    Suppress {
        #[command(subcommand)]
        action: SuppressAction,
        /// Admin API address.
        #[arg(long, global = true, default_value = "127.0.0.1:8025")]
        admin: SocketAddr,
        /// Bearer token for the admin API (or RINGPOST_ADMIN_TOKEN).
        #[arg(long, global = true, env = "RINGPOST_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Print the [[user]] entries for another program.
    Export {
        /// As a Dovecot passwd-file (`passdb { driver = passwd-file }`):
        /// `address:{ARGON2ID}<hash>` lines, so Dovecot serves IMAP on
        /// ringpost's Maildirs with the same passwords.
        #[arg(long)]
        dovecot: bool,
        /// Config file; default ./ringpost.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SuppressAction {
    /// One line per entry: address, tenant (or *), reason, since (UTC).
    List {
        /// Only this address (every tenant scope).
        address: Option<String>,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Suppress an address (for every tenant, or one).
    Add {
        address: String,
        #[arg(long)]
        tenant: Option<String>,
        /// manual | complaint | unsubscribe | bounce:<Class>
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Take an address off the list (its global entry, or one tenant's).
    Remove {
        address: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum TuneAction {
    /// Compare the running kernel and limits with a profile; exit 1 if they differ.
    Check {
        /// throughput | latency | low-memory
        #[arg(long, default_value = "throughput")]
        profile: String,
        /// Also check what this config needs (open files for its connections).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a profile's config preset (every knob explained).
    Show { profile: String },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Totals and per-domain counts (JSON).
    Stats,
    /// One line per queued message: ID, age, sender, recipients, last error.
    List {
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// At most this many messages.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Retry every deferred message now.
    Flush,
    /// Give up on a message now: its sender gets a DSN.
    Bounce { id: String },
    /// Remove one message from the queue without delivering it or telling anyone.
    Delete { id: String },
    /// Hold mail for a domain, tenant or campaign: it stays queued, is not
    /// tried and does not expire until resumed (or `--for` ends).
    Suspend {
        #[command(flatten)]
        scope: ScopeArgs,
        /// End by itself after this long (e.g. 30m, 1h, 2d).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// End a suspension: its mail is tried at once.
    Resume {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Exactly one of domain, tenant, campaign.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ScopeArgs {
    #[arg(long)]
    domain: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    campaign: Option<String>,
}

impl ScopeArgs {
    /// The request body's selector: `"domain": "..."` and the like.
    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (k, v) in [("domain", &self.domain), ("tenant", &self.tenant), ("campaign", &self.campaign)] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone().into());
            }
        }
        m
    }
}

fn main() -> ExitCode {
    // A panic anywhere (a worker thread included) takes the whole process
    // down, so a service manager restarts it, rather than leaving it half
    // alive: /health answering while a worker no longer serves.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    // `sendmail` takes Postfix's flags, which clap cannot parse (`-oi`),
    // also when this binary is called through a link named sendmail.
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let called = argv.first().and_then(|a| std::path::Path::new(a).file_name()).and_then(|n| n.to_str());
    if called == Some("sendmail") {
        return sendmail(&argv[1..]);
    }
    if argv.get(1).map(String::as_str) == Some("sendmail") {
        return sendmail(&argv[2..]);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::HashPassword => hash_password(),
        Command::Queue { action, admin, token } => queue(action, admin, token.as_deref()),
        Command::Suppress { action, admin, token } => suppress(action, admin, token.as_deref()),
        Command::Tune { action } => tune(action),
        Command::Users { action: UsersAction::Export { dovecot, config } } => users_export(dovecot, config),
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let path = path.or_else(|| {
        let default = PathBuf::from("ringpost.toml");
        default.exists().then_some(default)
    });
    let config = match &path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringpost: {e}");
                return ExitCode::from(2);
            }
        },
        None => match Config::parse("", "built-in defaults") {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringpost: {e}");
                return ExitCode::from(2);
            }
        },
    };
    init_logging(&config.log.level);
    let notify = SdNotify::from_env();
    match rt::serve(config, path, &notify) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Config(e)) => {
            eprintln!("ringpost: {e}");
            ExitCode::from(2)
        }
        Err(ServeError::Runtime(e)) => {
            eprintln!("ringpost: {e}");
            ExitCode::from(1)
        }
    }
}

/// systemd's notification socket (`Type=notify`), if we run under it.
struct SdNotify {
    socket: Option<std::os::unix::net::UnixDatagram>,
    path: Option<PathBuf>,
}

impl SdNotify {
    fn from_env() -> SdNotify {
        let path = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let socket = path.as_ref().and_then(|_| std::os::unix::net::UnixDatagram::unbound().ok());
        SdNotify { socket, path }
    }
}

impl rt::Notify for SdNotify {
    fn notify(&self, state: &str) {
        let (Some(socket), Some(path)) = (&self.socket, &self.path) else { return };
        let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
            // An abstract socket name.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
            None => socket.send_to(state.as_bytes(), path),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}

fn init_logging(level: &str) {
    // The library never reads the environment; the binary lets RUST_LOG override the config.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

/// `ringpost sendmail`: the message on stdin into the maildrop, durably,
/// whether or not the server runs. Exit codes from sysexits.h.
fn sendmail(args: &[String]) -> ExitCode {
    use ringpost::maildrop::{self, exit};
    let fail = |code: u8, msg: &str| {
        eprintln!("sendmail: {msg}");
        ExitCode::from(code)
    };
    let inv = match maildrop::parse_args(args) {
        Ok(i) => i,
        Err(e) => {
            return fail(
                exit::USAGE,
                &format!(
                    "{e}\nusage: sendmail [-C CONFIG] [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RECIPIENT...]"
                ),
            )
        }
    };
    let path = inv
        .config
        .clone()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("RINGPOST_CONFIG").map(PathBuf::from))
        .or_else(|| {
            ["/etc/ringpost/ringpost.toml", "ringpost.toml"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        });
    let config = match &path {
        Some(p) => Config::load(p),
        None => Config::parse("", "built-in defaults"),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(exit::CONFIG, &e.to_string()),
    };
    let max = config.limits.message_size;
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(max + 1).read_to_end(&mut input) {
        return fail(exit::TEMPFAIL, &format!("cannot read the message: {e}"));
    }
    let message = maildrop::read_message(&input, inv.dot_ends);
    if input.len() as u64 > max || message.len() as u64 > max {
        return fail(
            exit::DATAERR,
            &format!("message too big (the limit is {max} bytes, [limits] message_size)"),
        );
    }
    let hostname = config.hostname();
    let file = match maildrop::submission(&inv, message, &login_name(), hostname.as_str()) {
        Ok(f) => f,
        Err((code, e)) => return fail(code, &e),
    };
    match write_drop(&config.spool.dir.join("maildrop"), &file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            exit::TEMPFAIL,
            &format!("cannot write to the maildrop in {}: {e}", config.spool.dir.display()),
        ),
    }
}

/// Writes a drop file: a hidden temporary name, fsync, rename to its final
/// name (which the server picks up), then the directory made durable (its
/// fsync; where this user may not open the directory, syncfs).
fn write_drop(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    use std::os::unix::io::AsRawFd as _;
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1733));
    }
    let mut rnd = [0u8; 8];
    getrandom::getrandom(&mut rnd).map_err(std::io::Error::other)?;
    // Names sort by time: the server picks up the oldest first.
    let millis = ringpost::rt::clock::unix_millis();
    let name = format!("{millis:016}.{}.{:016x}", std::process::id(), u64::from_le_bytes(rnd));
    let tmp = dir.join(format!(".{name}"));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
    let written = (|| {
        // Readable by the server whatever the umask (the directory is not listable).
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    match std::fs::File::open(dir) {
        Ok(d) => d.sync_all(),
        // SAFETY: syncfs on a file descriptor we own, open for this call.
        Err(_) if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The invoking user's login name: the sender when `-f` is not given.
fn login_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers
    // we pass, and pw_name points into `buf`, read before it is dropped.
    unsafe {
        let uid = libc::getuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
            && !pwd.pw_name.is_null()
        {
            return std::ffi::CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
        }
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| format!("uid{uid}"))
    }
}

fn users_export(dovecot: bool, config: Option<PathBuf>) -> ExitCode {
    if !dovecot {
        eprintln!("ringpost: users export: name the format (--dovecot)");
        return ExitCode::from(2);
    }
    let path = config.unwrap_or_else(|| PathBuf::from("ringpost.toml"));
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringpost: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = String::new();
    for u in &config.users {
        let u = u.get_ref();
        match ringpost::auth::dovecot_line(&u.address, &u.password) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => {
                eprintln!("ringpost: {e}");
                return ExitCode::from(1);
            }
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("ringpost: cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    let password = input.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&input);
    if password.is_empty() {
        eprintln!("ringpost: empty password");
        return ExitCode::from(2);
    }
    match ringpost::auth::hash(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: {e}");
            ExitCode::from(1)
        }
    }
}

fn tune(action: TuneAction) -> ExitCode {
    let profiles = ringpost::tune::profiles();
    let find = |name: &str| profiles.iter().find(|p| p.name == name);
    let names = || profiles.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
    match action {
        TuneAction::Show { profile } => match find(&profile) {
            Some(p) => {
                print!("{}", p.preset);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("ringpost: no profile {profile:?} (profiles: {})", names());
                ExitCode::from(2)
            }
        },
        TuneAction::Check { profile, config } => {
            let Some(p) = find(&profile) else {
                eprintln!("ringpost: no profile {profile:?} (profiles: {})", names());
                return ExitCode::from(2);
            };
            let connections = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => Some(c.limits.connections as u64),
                Some(Err(e)) => {
                    eprintln!("ringpost: {e}");
                    return ExitCode::from(2);
                }
                None => None,
            };
            let (report, differs) = ringpost::tune::check(
                p,
                std::path::Path::new("/proc/sys"),
                ringpost::tune::nofile_limit(),
                connections,
            );
            print!("{report}");
            if differs {
                ExitCode::from(1)
            } else {
                println!("everything matches profile {}", p.name);
                ExitCode::SUCCESS
            }
        }
    }
}

fn queue(action: QueueAction, admin: SocketAddr, token: Option<&str>) -> ExitCode {
    let (method, path) = match &action {
        QueueAction::Stats => ("GET", "/queue".to_owned()),
        QueueAction::List { limit, .. } => ("GET", format!("/queue/messages?limit={limit}")),
        QueueAction::Flush => ("POST", "/queue/flush".to_owned()),
        QueueAction::Bounce { id } => ("POST", format!("/queue/{id}/bounce")),
        QueueAction::Delete { id } => ("DELETE", format!("/queue/{id}")),
        QueueAction::Suspend { .. } => ("POST", "/suspend".to_owned()),
        QueueAction::Resume { .. } => ("POST", "/resume".to_owned()),
    };
    let body = match &action {
        QueueAction::Suspend { scope, duration } => {
            let mut m = scope.json();
            if let Some(d) = duration {
                m.insert("for".into(), d.clone().into());
            }
            serde_json::Value::Object(m).to_string()
        }
        QueueAction::Resume { scope } => serde_json::Value::Object(scope.json()).to_string(),
        _ => String::new(),
    };
    let lines = matches!(action, QueueAction::List { json: false, .. });
    admin_call(
        admin,
        method,
        &path,
        token,
        &body,
        |body| if lines { list_lines(body) } else { body.to_owned() },
    )
}

/// One admin API request: prints the answer (through `show` when it is a
/// 200) and exits 0 on a 2xx, 1 otherwise.
fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    show: impl Fn(&str) -> String,
) -> ExitCode {
    match http_with(admin, method, path, token, body) {
        Ok((status, text)) => {
            if status == 200 {
                print!("{}", show(&text));
            } else {
                print!("{text}");
            }
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("ringpost: admin API at {admin}: {e}");
            ExitCode::from(1)
        }
    }
}

fn suppress(action: SuppressAction, admin: SocketAddr, token: Option<&str>) -> ExitCode {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'+' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let (method, path, body) = match &action {
        SuppressAction::List { address, limit, .. } => {
            let filter = address.as_deref().map(|a| format!("&address={}", enc(a))).unwrap_or_default();
            ("GET", format!("/suppression?limit={limit}{filter}"), String::new())
        }
        SuppressAction::Add { address, tenant, reason } => (
            "POST",
            "/suppression".to_owned(),
            serde_json::json!({"address": address, "tenant": tenant, "reason": reason}).to_string(),
        ),
        SuppressAction::Remove { address, tenant } => {
            let t = tenant.as_deref().map(|t| format!("?tenant={}", enc(t))).unwrap_or_default();
            ("DELETE", format!("/suppression/{}{t}", enc(address)), String::new())
        }
    };
    let lines = matches!(action, SuppressAction::List { json: false, .. });
    admin_call(admin, method, &path, token, &body, |text| {
        if lines {
            suppression_lines(text)
        } else {
            text.to_owned()
        }
    })
}

/// `suppress list` lines: address, tenant (`*`: all), reason, since.
fn suppression_lines(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return body.to_owned() };
    let mut out = String::new();
    for e in v["entries"].as_array().into_iter().flatten() {
        let since = ringpost::events::rfc3339_ms(e["since"].as_u64().unwrap_or(0) * 1000);
        out += &format!(
            "{} {} {} {}\n",
            e["address"].as_str().unwrap_or("?"),
            e["tenant"].as_str().unwrap_or("*"),
            e["reason"].as_str().unwrap_or("?"),
            since.split('.').next().unwrap_or("")
        );
    }
    out
}

/// `queue list` lines: ID, age, sender, recipients, last error.
fn list_lines(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return body.to_owned() };
    let mut out = String::new();
    for m in v["messages"].as_array().into_iter().flatten() {
        let age = m["age"].as_u64().unwrap_or(0);
        let age = match age {
            a if a < 120 => format!("{a}s"),
            a if a < 7200 => format!("{}m", a / 60),
            a if a < 172_800 => format!("{}h", a / 3600),
            a => format!("{}d", a / 86_400),
        };
        let sender = m["sender"].as_str().filter(|s| !s.is_empty()).unwrap_or("<>");
        let rcpts: Vec<&str> =
            m["recipients"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
        let error = m["last_error"].as_str().unwrap_or("-");
        out += &format!("{} {age} {sender} {} {error}\n", m["id"].as_str().unwrap_or("?"), rcpts.join(","));
    }
    out
}

/// A minimal HTTP/1.1 client for the admin API.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n{body}")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}
