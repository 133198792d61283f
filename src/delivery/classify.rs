//! Bounce classification: every failed attempt (temporary or permanent)
//! gets a class from rules over the reply. The class names follow KumoMTA's
//! (themselves PowerMTA's categories, condensed), so an operator's
//! dashboards and suppression logic carry over.
//!
//! A rule is a regex over the reply written as `CODE ENHANCED TEXT`
//! (`550 5.1.1 The email account that you tried to reach does not exist`);
//! ringpost's own failures (no next hop, connection refused, expiry) have no
//! reply code and read `ENHANCED TEXT` (`4.4.1 connection refused`). Rules
//! are tried in order, the first match wins; the user's files come first,
//! then the defaults shipped in `tuning/bounce_rules.toml`; what nothing
//! matches is `Uncategorized`. Matching ignores case.
//!
//! Pure: rules are compiled from text, classification takes the reply.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// What a failure was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub enum Class {
    InvalidRecipient,
    QuotaIssues,
    SpamBlock,
    SpamContent,
    PolicyRelated,
    AuthenticationFailed,
    RateLimited,
    DNSFailure,
    BadConnection,
    ProtocolErrors,
    MessageExpired,
    Uncategorized,
}

impl Class {
    pub const ALL: [Class; 12] = [
        Class::InvalidRecipient,
        Class::QuotaIssues,
        Class::SpamBlock,
        Class::SpamContent,
        Class::PolicyRelated,
        Class::AuthenticationFailed,
        Class::RateLimited,
        Class::DNSFailure,
        Class::BadConnection,
        Class::ProtocolErrors,
        Class::MessageExpired,
        Class::Uncategorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::InvalidRecipient => "InvalidRecipient",
            Class::QuotaIssues => "QuotaIssues",
            Class::SpamBlock => "SpamBlock",
            Class::SpamContent => "SpamContent",
            Class::PolicyRelated => "PolicyRelated",
            Class::AuthenticationFailed => "AuthenticationFailed",
            Class::RateLimited => "RateLimited",
            Class::DNSFailure => "DNSFailure",
            Class::BadConnection => "BadConnection",
            Class::ProtocolErrors => "ProtocolErrors",
            Class::MessageExpired => "MessageExpired",
            Class::Uncategorized => "Uncategorized",
        }
    }

    /// Its place in [`Class::ALL`] (for counters).
    pub fn index(self) -> usize {
        Class::ALL.iter().position(|c| *c == self).unwrap_or(Class::ALL.len() - 1)
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rules ringpost ships (`tuning/bounce_rules.toml`).
pub const DEFAULT_RULES: &str = include_str!("../../tuning/bounce_rules.toml");

/// One rule: a regex over the reply and the class it gives.
#[derive(Debug, Clone)]
struct Rule {
    reply: Regex,
    class: Class,
}

/// A rules file: `[[bounce]] class = "..." reply = '...'`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    bounce: Vec<RuleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    class: String,
    reply: String,
}

/// The compiled rules, in order.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// The shipped defaults alone.
    pub fn defaults() -> Classifier {
        // The shipped file is checked by a test; should it ever fail to
        // compile, classification falls back to `Uncategorized`.
        Classifier { rules: parse_rules(DEFAULT_RULES).unwrap_or_default() }
    }

    /// `files` (name, text) in order, then the defaults. Errors name the
    /// file and the rule.
    pub fn new(files: &[(String, String)]) -> Result<Classifier, String> {
        let mut rules = Vec::new();
        for (name, text) in files {
            rules.extend(parse_rules(text).map_err(|e| format!("{name}: {e}"))?);
        }
        rules.extend(Classifier::defaults().rules);
        Ok(Classifier { rules })
    }

    /// The class of a reply: `code` is the SMTP reply code when a server
    /// answered (then `text` is its one-line reply, code first), None for
    /// ringpost's own failures.
    pub fn classify(&self, code: Option<u16>, enhanced: &str, text: &str) -> Class {
        let subject = subject(code, enhanced, text);
        self.rules.iter().find(|r| r.reply.is_match(&subject)).map_or(Class::Uncategorized, |r| r.class)
    }
}

/// The text rules match: `CODE ENHANCED TEXT` (the reply's own code and
/// enhanced code are not repeated), or `ENHANCED TEXT` for our own failures.
pub fn subject(code: Option<u16>, enhanced: &str, text: &str) -> String {
    let mut rest = text.trim();
    if let Some(code) = code {
        let c = code.to_string();
        rest = rest.strip_prefix(c.as_str()).map_or(rest, |r| r.trim_start_matches(['-', ' ']));
        rest = rest.strip_prefix(enhanced).map_or(rest, str::trim_start);
        format!("{code} {enhanced} {rest}")
    } else {
        rest = rest.strip_prefix(enhanced).map_or(rest, str::trim_start);
        format!("{enhanced} {rest}")
    }
}

fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.bounce
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let class = Class::parse(&r.class).ok_or_else(|| {
                let names: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
                format!("bounce[{i}].class: {:?} is not one of {}", r.class, names.join(", "))
            })?;
            // Bounded: every failed attempt runs these.
            let reply = RegexBuilder::new(&r.reply)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("bounce[{i}].reply: {e}"))?;
            Ok(Rule { reply, class })
        })
        .collect()
}

#[cfg(test)]
mod tests;
