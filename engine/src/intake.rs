//! What a catch hook decides about a request before any run exists: its signature (`verify:`),
//! then, for each event it carries (a HubSpot batch carries several), whether the flow takes its
//! type (`events:`) and the key that makes a repeat a duplicate (`dedupe:`, or the provider's
//! event id). The server's catch hook and flow tests (`hookflow test`) both decide with these
//! functions, so a test checks exactly what the server does.
//!
//! Invariant: nothing here touches the store. Whether a key was already seen is the store's
//! answer on the server (`Engine::ingest`), and the case's memory in a flow test.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use tracing::warn;

use crate::flow::{Flow, Trigger, Verify};
use crate::model::Timestamp;
use crate::store::DedupeKey;
use crate::verify::SignedRequest;

/// Why a catch hook refuses a request (answered 401 by the server): a `code` and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `signature_not_configured` or `invalid_signature`.
    pub code: &'static str,
    /// What failed, never the expected signature.
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Checks a request against the flow's signature check, at `now`.
pub fn check_signature(
    verify: &Verify,
    request: &SignedRequest<'_>,
    now: Timestamp,
) -> Result<(), Refusal> {
    if verify.secrets.is_empty() {
        return Err(Refusal {
            code: "signature_not_configured",
            detail: format!(
                "this flow checks {} signatures but has no signing secret yet: set the variable \
                 its `verify.secret` names and restart",
                verify.provider
            ),
        });
    }
    verify
        .verifier
        .verify(request, &verify.secrets, now, verify.tolerance)
        .map_err(|why| Refusal {
            code: "invalid_signature",
            detail: format!("the {} signature check failed: {why}", verify.provider),
        })
}

/// What a catch hook does with one event of a request it took.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Not for this flow (its type is not in `events:`): answered `ignored`, nothing stored.
    Ignored(String),
    /// Stored with its run, unless its key (if any) was seen within the flow's window: then it is
    /// a duplicate, answered with the original run.
    Run(Option<DedupeKey>),
}

/// The events of a request's `trigger` (each element of a batch, else the request itself), each
/// with what the hook does with it.
pub fn screen(flow: &Flow, trigger: Value, now: Timestamp) -> Vec<(Value, Verdict)> {
    flow.split_batch(trigger)
        .into_iter()
        .map(|event| {
            let verdict = match flow.ignores(&event) {
                Some(why) => Verdict::Ignored(why),
                None => Verdict::Run(dedupe_key(flow, &event, now)),
            };
            (event, verdict)
        })
        .collect()
}

/// The longest dedupe key kept as it is; longer keys are kept as their SHA-256.
const MAX_DEDUPE_KEY: usize = 200;

/// How long a provider's event id counts as a dedupe key when the flow names no rule.
pub const PROVIDER_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The dedupe key of an event for `flow`: the flow's `dedupe` rule rendered, else the provider's
/// event id (for a verified provider that has one); `None` when there is no key or it is empty.
pub fn dedupe_key(flow: &Flow, trigger: &Value, now: Timestamp) -> Option<DedupeKey> {
    let Trigger::Webhook { dedupe, verify, .. } = &flow.trigger else {
        return None;
    };
    let (key, window) = match (dedupe, verify) {
        (Some(rule), _) => {
            let ctx = Value::Object(serde_json::Map::from_iter([(
                "trigger".to_owned(),
                trigger.clone(),
            )]));
            match rule.key.render(&flow.templates, &ctx) {
                Ok(key) => (key.trim().to_owned(), rule.window),
                Err(e) => {
                    warn!(flow = %flow.id, error = %e, "the dedupe key could not be rendered; the event is not deduplicated");
                    return None;
                }
            }
        }
        (None, Some(v)) => (v.verifier.event_id(trigger)?, PROVIDER_DEDUPE_WINDOW),
        (None, None) => return None,
    };
    if key.is_empty() {
        return None;
    }
    let key = if key.len() > MAX_DEDUPE_KEY {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        format!(
            "sha256:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    } else {
        key
    };
    Some(DedupeKey {
        key,
        expires_at: now.plus(window),
    })
}
