//! Inbound webhook verification: what a provider's signature check (Stripe, GitHub, …) is given and
//! answers, and what hookflow knows of the provider's events (their type, their id, batches). The
//! checks themselves live in the connectors crate and are registered by name; a flow names one with
//! `trigger.webhook.verify.provider`.

use std::time::Duration;

use serde_json::Value;

use crate::model::Timestamp;

/// A catch-hook request as the sender made it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `POST`, `GET`, …
    pub method: &'a str,
    /// The full URL the sender called (the server's public URL, path and query).
    pub url: &'a str,
    /// Headers, names in lower case.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    /// A header's value (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One provider's signature check.
pub trait Verifier: Send + Sync {
    /// Checks `request` against each secret (several during a rotation): `Ok` when one matches,
    /// else a sentence saying what failed (never the expected signature). Timestamps older or newer
    /// than `tolerance` around `now` are refused, for providers that sign one.
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        now: Timestamp,
        tolerance: Duration,
    ) -> Result<(), String>;

    /// The type of one event (`customer.subscription.updated`, GitHub's `push`), for a flow's
    /// `events:` filter, from the run's `trigger`. Default: `body.type`.
    fn event_type(&self, trigger: &Value) -> Option<String> {
        trigger["body"]["type"].as_str().map(str::to_owned)
    }

    /// The provider's id of one event: the flow's dedupe key unless it names another. Default: none.
    fn event_id(&self, _trigger: &Value) -> Option<String> {
        None
    }

    /// Whether a JSON array body is a batch of events, each its own run (HubSpot).
    fn batches(&self) -> bool {
        false
    }

    /// The headers a sender signing `request` (its `headers` are those it has already) with
    /// `secret` at `now` would add, so flow tests can sign their events with the flow's own
    /// scheme. `None` for a provider whose signing is not offered.
    fn sign(
        &self,
        _request: &SignedRequest<'_>,
        _secret: &str,
        _now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        None
    }
}

/// The Standard Webhooks signature (`v1,…`) of a message: HMAC-SHA256, keyed by the base64 after
/// the secret's `whsec_` prefix, of `{id}.{timestamp}.{body}`, in base64. Used to check inbound
/// webhooks and to sign what HTTP actions send.
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::Mac;
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret).trim())
        .unwrap_or_default();
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    for part in [
        id.as_bytes(),
        b".",
        timestamp.to_string().as_bytes(),
        b".",
        body,
    ] {
        mac.update(part);
    }
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// A header of a run's `trigger` (names are stored in lower case).
pub fn trigger_header<'a>(trigger: &'a Value, name: &str) -> Option<&'a str> {
    trigger["headers"][name].as_str()
}

/// A string or number at a JSON pointer in a run's `trigger`, as text.
pub fn trigger_text(trigger: &Value, pointer: &str) -> Option<String> {
    match trigger.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
