//! [`Secret`]: a string that never prints itself, and the process-wide list of secret values
//! the log writer scrubs ([`redact`]).
//!
//! `Debug`/`Display` keep our own code from printing a token; they cannot stop a dependency
//! from logging a URL or a request that carries one (tungstenite logs the whole WebSocket
//! handshake request at TRACE, `?token=` included). So every secret value this process holds
//! is also registered here, and the host's log writer (`agentserver::logging`) replaces each
//! occurrence with `***` before a line reaches stderr, whatever crate wrote it and whatever
//! the filter. The host keeps `agentserver::secret` as a re-export of this module.
//!
//! This is also the opencode backend's server password (`--opencode-token`):
//! `agentserver_backend_opencode::Token` is this type under its old name.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Deserializer, Serialize};

/// A token or password. `Debug` and `Display` print `***`, so a secret cannot leak into a log
/// line or an error message by accident; [`Secret::expose`] is the one way to read it, and every
/// call site of it is a place that sends the secret somewhere on purpose. Creating one also
/// registers its value for redaction from logs ([`register_for_redaction`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register_for_redaction(&value);
        Self(value)
    }

    /// The secret value, for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

/// Secret values shorter than this are not scrubbed from logs: they would match ordinary text,
/// and no real token is that short.
pub const MIN_REDACTED_LEN: usize = 8;

/// Every secret value this process has held, and the forms it travels in (as is, and
/// percent-encoded as in a query string or a form body).
static REDACTED: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Registers `value` (a token, a password held outside a [`Secret`]) so that the log writer
/// never prints it. Idempotent; values shorter than [`MIN_REDACTED_LEN`] are ignored.
pub fn register_for_redaction(value: &str) {
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let known = REDACTED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(value);
    if known {
        return;
    }
    let mut set = REDACTED.write().unwrap_or_else(PoisonError::into_inner);
    set.insert(value.to_owned());
    if encoded != value {
        set.insert(encoded);
    }
}

/// `text` with every registered secret value replaced by `***`; `None` when it holds none
/// (the common case: no copy is made).
pub fn redact(text: &str) -> Option<String> {
    let set = REDACTED.read().unwrap_or_else(PoisonError::into_inner);
    let mut redacted: Option<String> = None;
    // Longest first, so a secret that contains another is replaced whole.
    let mut values: Vec<&String> = set.iter().collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        let current = redacted.as_deref().unwrap_or(text);
        if current.contains(value.as_str()) {
            redacted = Some(current.replace(value.as_str(), "***"));
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("tok-123");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "tok-123");
    }

    #[test]
    fn registered_values_are_redacted_as_is_and_percent_encoded() {
        let plain = Secret::new("tok-plain-0123456789");
        let _parsed: Secret = serde_json::from_str("\"tok+needs/encoding=\"").unwrap();
        register_for_redaction("password-held-elsewhere");
        let line = format!(
            "GET /api/tunnel/x?token={} auth=tok%2Bneeds%2Fencoding%3D pw=password-held-elsewhere",
            plain.expose()
        );
        assert_eq!(
            redact(&line).unwrap(),
            "GET /api/tunnel/x?token=*** auth=*** pw=***"
        );
        assert_eq!(redact("nothing secret here"), None);
        // Too short to be a token: left alone.
        let _short = Secret::new("abc");
        assert_eq!(redact("abc"), None);
    }

    #[test]
    fn serializes_as_plain_string() {
        let s = Secret::new("abc");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abc\"");
        let back: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(back, s);
    }
}
