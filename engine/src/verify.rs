//! Inbound webhook verification: what a provider's signature check (Stripe, GitHub, …) is given and
//! answers. The checks themselves live in the connectors crate and are registered by name; a flow
//! names one with `trigger.webhook.verify.provider`.

use std::time::Duration;

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
}
