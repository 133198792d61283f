//! The injection API (`POST /api/inject/v1` on `kind = "http"` listeners):
//! what a request says and the message each recipient gets. The request
//! and answer keep KumoMTA's shapes, so a client written for its
//! `/api/inject/v1` works here.
//!
//! Pure: the request bytes, the queue id, the time and the host name come
//! in; a message per recipient (or the reason that recipient fails) comes
//! out. Templates are minijinja (what KumoMTA uses), with a fuel limit so a
//! template cannot loop for long; structured content is built into MIME by
//! `mail-builder`. The shell (`rt::inject`) does the rest: the token, the
//! spool, events.

use std::collections::BTreeMap;

use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::envelope::QueueId;
use crate::smtp::address::{Mailbox, ReversePath};

/// Template instructions one render may run (minijinja fuel): plenty for
/// substitutions, conditionals and modest loops; a runaway loop stops.
const FUEL: u64 = 200_000;

/// Header fields `content.headers` may not set: the builder writes them.
const BUILT: [&str; 10] = [
    "from",
    "to",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "received",
];

/// A request, as the client sent it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub envelope_sender: String,
    /// A whole RFC 5322 message (a string) or what to build one from.
    pub content: Json,
    pub recipients: Vec<RecipientIn>,
    /// Substitutions for every recipient (a recipient's own win).
    #[serde(default)]
    pub substitutions: Map<String, Json>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    /// `"Jinja"` (the default) or `"Static"` (no templating).
    #[serde(default)]
    pub template_dialect: Option<String>,
}

/// One recipient of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientIn {
    pub email: String,
    /// The display name in the built message's `To:`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub substitutions: Map<String, Json>,
}

/// Structured content: what to build a MIME message from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    from: Party,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    reply_to: Option<Party>,
    #[serde(default)]
    text_body: Option<String>,
    #[serde(default)]
    html_body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Party {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attachment {
    data: String,
    /// `data` is base64 (else it is the content itself).
    #[serde(default)]
    base64: bool,
    #[serde(default = "octet_stream")]
    content_type: String,
    #[serde(default)]
    file_name: Option<String>,
    /// Makes it an inline part (`Content-ID`), for HTML to refer to.
    #[serde(default)]
    content_id: Option<String>,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

/// The answer, once every message counted in `success_count` is durable.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Answer {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

impl Answer {
    /// Counts a recipient that gets no message, and why.
    pub fn fail(&mut self, recipient: &str, why: &str) {
        self.fail_count += 1;
        self.failed_recipients.push(recipient.to_owned());
        // One line per distinct reason would hide which recipient it was;
        // one per recipient is what KumoMTA does too. Bounded by the request.
        self.errors.push(format!("{recipient}: {why}"));
    }
}

/// Parses a request body; Err is the reason for a `400`.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let req: Request = serde_json::from_slice(body).map_err(|e| format!("invalid request: {e}"))?;
    if req.recipients.is_empty() {
        return Err("invalid request: recipients is empty".into());
    }
    Ok(req)
}

/// A request ready to render: its templates compiled once.
#[derive(Debug)]
pub struct Plan<'r> {
    pub sender: ReversePath,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    env: minijinja::Environment<'r>,
    /// Whether content goes through templates (`template_dialect`).
    templated: bool,
    content: PlanContent<'r>,
    shared: minijinja::Value,
}

#[derive(Debug)]
enum PlanContent<'r> {
    Raw(&'r str),
    Build(Box<BuildPlan>),
}

/// Structured content, checked; its strings are templates in `env`.
#[derive(Debug)]
struct BuildPlan {
    from: (Option<String>, String),
    reply_to: Option<(Option<String>, String)>,
    /// The templates (their sources; compiled in the plan's environment
    /// under the same names).
    subject: Option<String>,
    text_body: Option<String>,
    html_body: Option<String>,
    headers: Vec<(String, String)>,
    attachments: Vec<ReadyAttachment>,
}

#[derive(Debug)]
struct ReadyAttachment {
    content_type: String,
    file_name: Option<String>,
    content_id: Option<String>,
    data: Vec<u8>,
}

/// Checks a parsed request and compiles its templates. Err is the reason
/// for a `400`: nothing of the request is sent.
///
/// `token_tenant` is the tenant of the token the request came with: it is
/// the tenant of every message, and a request naming another is refused.
pub fn plan<'r>(req: &'r Request, token_tenant: Option<&str>) -> Result<Plan<'r>, String> {
    let sender = match req.envelope_sender.trim() {
        "" | "<>" => ReversePath::Null,
        s => ReversePath::Mailbox(
            Mailbox::parse(s.trim_start_matches('<').trim_end_matches('>'))
                .map_err(|e| format!("envelope_sender: {e}"))?,
        ),
    };
    let name = |field: &str, v: &Option<String>| -> Result<Option<String>, String> {
        match v {
            None => Ok(None),
            Some(v) if crate::mail::is_name(v) => Ok(Some(v.clone())),
            Some(_) => {
                Err(format!("{field}: must be 1-{} printable ASCII characters", crate::mail::MAX_NAME))
            }
        }
    };
    let mut tenant = name("tenant", &req.tenant)?;
    let campaign = name("campaign", &req.campaign)?;
    if let Some(t) = token_tenant {
        match tenant.as_deref() {
            Some(asked) if asked != t => {
                return Err(format!("tenant: this token sends for tenant {t:?} only"));
            }
            _ => tenant = Some(t.to_owned()),
        }
    }
    let templated = match req.template_dialect.as_deref() {
        None | Some("Jinja") => true,
        Some("Static") => false,
        Some(other) => return Err(format!("template_dialect: {other:?} is not \"Jinja\" or \"Static\"")),
    };
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    let mut syntax = minijinja::syntax::SyntaxConfig::builder();
    syntax.keep_trailing_newline(true);
    env.set_syntax(syntax.build().map_err(|e| e.to_string())?);
    let content = match &req.content {
        Json::String(raw) => {
            if templated {
                env.add_template("message", raw).map_err(|e| format!("content: template error: {e}"))?;
            }
            PlanContent::Raw(raw)
        }
        Json::Object(_) => {
            let b = Build::deserialize(&req.content).map_err(|e| format!("content: {e}"))?;
            PlanContent::Build(Box::new(build_plan(b, templated, &mut env)?))
        }
        _ => return Err("content: must be a string (a whole message) or an object".into()),
    };
    let shared = minijinja::Value::from(minijinja::value::Serde(&req.substitutions));
    Ok(Plan { sender, tenant, campaign, env, templated, content, shared })
}

/// Checks structured content; its templated strings go into `env` under
/// fixed names (owned: the `Build` is taken apart here).
fn build_plan(b: Build, templated: bool, env: &mut minijinja::Environment<'_>) -> Result<BuildPlan, String> {
    let party = |field: &str, p: Party| -> Result<(Option<String>, String), String> {
        Mailbox::parse(p.email.trim()).map_err(|e| format!("content.{field}.email: {e}"))?;
        if p.name.as_deref().is_some_and(has_control) {
            return Err(format!("content.{field}.name: has a control character"));
        }
        Ok((p.name, p.email.trim().to_owned()))
    };
    let from = party("from", b.from)?;
    let reply_to = b.reply_to.map(|r| party("reply_to", r)).transpose()?;
    if b.text_body.is_none() && b.html_body.is_none() {
        return Err("content: needs text_body or html_body".into());
    }
    let mut add = |name: String, src: &str| -> Result<(), String> {
        if templated {
            env.add_template_owned(name.clone(), src.to_owned())
                .map_err(|e| format!("content: template error in {name}: {e}"))?;
        }
        Ok(())
    };
    if let Some(s) = &b.subject {
        add("subject".into(), s)?;
    }
    if let Some(t) = &b.text_body {
        add("text_body".into(), t)?;
    }
    if let Some(h) = &b.html_body {
        add("html_body".into(), h)?;
    }
    let mut headers = Vec::with_capacity(b.headers.len());
    for (name, value) in b.headers {
        if name.is_empty() || !name.bytes().all(|c| (33..=126).contains(&c) && c != b':') {
            return Err(format!("content.headers: {name:?} is not a header field name"));
        }
        if BUILT.iter().any(|b| b.eq_ignore_ascii_case(&name)) {
            return Err(format!("content.headers: {name} is written from the other content fields"));
        }
        add(format!("header:{name}"), &value)?;
        headers.push((name, value));
    }
    let mut attachments = Vec::with_capacity(b.attachments.len());
    for (i, a) in b.attachments.into_iter().enumerate() {
        let data = if a.base64 {
            use base64::Engine as _;
            let compact: String = a.data.split_ascii_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("content.attachments[{i}].data: not base64: {e}"))?
        } else {
            a.data.into_bytes()
        };
        let token = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic() && c != b'"');
        let ok_type = a.content_type.split_once('/').is_some_and(|(t, s)| token(t) && token(s));
        if !ok_type {
            return Err(format!(
                "content.attachments[{i}].content_type: {:?} is not a MIME type",
                a.content_type
            ));
        }
        let bad = |s: &Option<String>| s.as_deref().is_some_and(|v| v.is_empty() || has_control(v));
        if bad(&a.file_name) || bad(&a.content_id) {
            return Err(format!("content.attachments[{i}]: file_name and content_id must be printable"));
        }
        attachments.push(ReadyAttachment {
            content_type: a.content_type,
            file_name: a.file_name,
            content_id: a.content_id,
            data,
        });
    }
    Ok(BuildPlan {
        from,
        reply_to,
        subject: b.subject,
        text_body: b.text_body,
        html_body: b.html_body,
        headers,
        attachments,
    })
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// What the shell knows about where a message came from and when.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub id: QueueId,
    pub unix: u64,
    /// Our host name (Message-ID, Received).
    pub hostname: &'a str,
    /// The client's address.
    pub peer: std::net::IpAddr,
    /// The request came over TLS.
    pub tls: bool,
    /// The token's name.
    pub token: &'a str,
}

/// A recipient's address; Err says why it is not one.
pub fn recipient(r: &RecipientIn) -> Result<Mailbox, String> {
    let email = r.email.trim();
    Mailbox::parse(email.trim_start_matches('<').trim_end_matches('>'))
        .map_err(|e| format!("invalid address: {e}"))
}

impl Plan<'_> {
    /// The message `rcpt` gets: our Received field, then the content with
    /// its substitutions. Err says why this recipient gets none (a template
    /// error, a header with a line break, over `max_size`).
    pub fn render(
        &self,
        rcpt: &RecipientIn,
        to: &Mailbox,
        stamp: Stamp<'_>,
        max_size: u64,
    ) -> Result<Vec<u8>, String> {
        // Later maps win: the recipient's own substitutions over the shared ones.
        let ctx = minijinja::value::merge_maps([
            self.shared.clone(),
            minijinja::Value::from(minijinja::value::Serde(&rcpt.substitutions)),
        ]);
        let mut out = Vec::with_capacity(1024);
        received(&mut out, to, stamp);
        match &self.content {
            PlanContent::Raw(raw) => {
                let text = self.fill("message", raw, &ctx)?;
                raw_message(&mut out, text.as_bytes(), stamp)?;
            }
            PlanContent::Build(b) => self.build(&mut out, b, rcpt, to, &ctx, stamp)?,
        }
        if out.len() as u64 > max_size {
            return Err(format!("message too big ({} bytes; the limit is {max_size})", out.len()));
        }
        Ok(out)
    }

    /// The template `name` (whose source is `src`) filled in.
    fn fill(&self, name: &str, src: &str, ctx: &minijinja::Value) -> Result<String, String> {
        if !self.templated {
            return Ok(src.to_owned());
        }
        let t = self.env.get_template(name).map_err(|e| e.to_string())?;
        t.render(ctx).map_err(|e| format!("template error in {name}: {e}"))
    }

    /// A header value: filled, and one line.
    fn field(&self, name: &str, src: &str, ctx: &minijinja::Value) -> Result<String, String> {
        let v = self.fill(name, src, ctx)?;
        if v.contains(['\r', '\n']) {
            return Err(format!("{name} has a line break after substitution"));
        }
        Ok(v)
    }

    fn build(
        &self,
        out: &mut Vec<u8>,
        b: &BuildPlan,
        rcpt: &RecipientIn,
        to: &Mailbox,
        ctx: &minijinja::Value,
        stamp: Stamp<'_>,
    ) -> Result<(), String> {
        let to_name = rcpt.name.as_deref().filter(|n| !n.trim().is_empty());
        if to_name.is_some_and(has_control) {
            return Err("the recipient's name has a control character".into());
        }
        let mut m = MessageBuilder::new()
            .from(Address::new_address(b.from.0.clone(), b.from.1.clone()))
            .to(Address::new_address(to_name.map(str::to_owned), to.to_string()))
            .message_id(format!("{}@{}", stamp.id, stamp.hostname))
            .date(stamp.unix as i64);
        if let Some((name, email)) = &b.reply_to {
            m = m.reply_to(Address::new_address(name.clone(), email.clone()));
        }
        if let Some(s) = &b.subject {
            m = m.subject(self.field("subject", s, ctx)?);
        }
        for (name, src) in &b.headers {
            let value = self.field(&format!("header:{name}"), src, ctx)?;
            m = m.header(name.clone(), Text::new(value));
        }
        if let Some(t) = &b.text_body {
            m = m.text_body(self.fill("text_body", t, ctx)?);
        }
        if let Some(h) = &b.html_body {
            m = m.html_body(self.fill("html_body", h, ctx)?);
        }
        for a in &b.attachments {
            let data = a.data.clone();
            m = match (&a.content_id, &a.file_name) {
                (Some(cid), _) => m.inline(a.content_type.clone(), cid.clone(), data),
                (None, name) => m.attachment(a.content_type.clone(), name.clone().unwrap_or_default(), data),
            };
        }
        m.write_to(&mut *out).map_err(|e| e.to_string())
    }
}

/// Our `Received:` field for an injected message.
fn received(out: &mut Vec<u8>, to: &Mailbox, s: Stamp<'_>) {
    use std::io::Write as _;
    let ip = match s.peer {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let with = if s.tls { "HTTPS" } else { "HTTP" };
    let _ = write!(
        out,
        "Received: from [{ip}] (token {})\r\n\tby {} (ringpost) with {with} id {}\r\n\tfor <{to}>;\r\n\t{}\r\n",
        s.token,
        s.hostname,
        s.id,
        crate::smtp::session::format_rfc5322_date(s.unix)
    );
}

/// A whole message from the client, after substitution: line ends made
/// CRLF; `Date:` and `Message-ID:` added when missing (as Postfix's
/// cleanup does). It must have a `From:` (DKIM signs by it; receivers
/// refuse mail without one).
fn raw_message(out: &mut Vec<u8>, text: &[u8], stamp: Stamp<'_>) -> Result<(), String> {
    let start = out.len();
    let mut prev = 0u8;
    for &b in text {
        match b {
            b'\n' if prev != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\n' => out.push(b'\n'),
            b'\r' => out.push(b'\r'),
            _ if prev == b'\r' => {
                out.push(b'\n');
                out.push(b);
            }
            _ => out.push(b),
        }
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    } else if prev != b'\n' {
        out.extend_from_slice(b"\r\n");
    }
    let message = &out[start..];
    let (fields, _) = crate::mail::fields(message);
    let has = |name: &str| fields.iter().any(|f| f.is(message, name));
    if !has("from") {
        return Err("the message has no From: header field".into());
    }
    let mut add = Vec::new();
    if !has("date") {
        add.extend_from_slice(b"Date: ");
        add.extend_from_slice(crate::smtp::session::format_rfc5322_date(stamp.unix).as_bytes());
        add.extend_from_slice(b"\r\n");
    }
    if !has("message-id") {
        add.extend_from_slice(format!("Message-ID: <{}@{}>\r\n", stamp.id, stamp.hostname).as_bytes());
    }
    if !add.is_empty() {
        out.splice(start..start, add);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
