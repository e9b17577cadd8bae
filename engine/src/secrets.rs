//! A flow's secrets and their redaction. The secrets are the values its file took from the
//! environment or the secrets file (`${env:NAME}`) and the credentials its connector steps use;
//! besides them, the values *derived* from a secret while the flow runs: whatever one of our
//! template helpers computed from an argument that held a secret (`{{upper "${env:TOKEN}"}}`,
//! `{{base64_encode (join (split …))}}`). Both are replaced by [`REDACTED`] wherever a run is
//! recorded, answered, logged, previewed or shown by the request inspector.
//!
//! # Invariants
//!
//! - A derived value is remembered while the expression renders, so before the attempt that
//!   rendered it is recorded (and before an HTTP action sends it to the inspector).
//! - Derivation is transitive: a helper's argument holding a derived value derives again.
//! - Derived values shorter than [`MIN_DERIVED`] characters are not remembered (they would redact
//!   ordinary words), and at most [`MAX_DERIVED`] are kept per flow, the oldest forgotten first.
//! - The values are never printed: `Debug` shows how many there are.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_json::{json, Value};

/// What replaces a secret in recorded data.
pub const REDACTED: &str = "[redacted]";

/// The shortest derived value remembered, in characters.
pub const MIN_DERIVED: usize = 4;

/// The most derived values a flow remembers.
pub const MAX_DERIVED: usize = 1024;

/// Keys whose values are credentials wherever they appear (compared case-insensitively).
const SENSITIVE_KEYS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api_key",
    "password",
    "bearer",
    "secret",
    "token",
];

/// A flow's secret values and those derived from them; cheap to clone (clones share).
#[derive(Clone, Default)]
pub struct Secrets(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Set once, when the flow is built.
    values: OnceLock<Box<[String]>>,
    derived: Mutex<VecDeque<String>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("values", &self.values().len())
            .field("derived", &self.derived().len())
            .finish()
    }
}

impl Secrets {
    /// Secrets with these values (empty ones are ignored).
    pub fn new(values: Vec<String>) -> Self {
        let secrets = Self::default();
        secrets.set_values(values);
        secrets
    }

    /// Sets the values, once: the flow's build knows them only after compiling its expressions.
    pub(crate) fn set_values(&self, mut values: Vec<String>) {
        values.retain(|v| !v.is_empty());
        let _ = self.0.values.set(values.into_boxed_slice());
    }

    /// The values as set.
    pub fn values(&self) -> &[String] {
        self.0.values.get().map_or(&[], |v| v)
    }

    fn derived(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.0
            .derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `result` (its text, and every string inside it) as derived when one of `args`
    /// holds a secret or a derived value.
    pub(crate) fn note(&self, args: &[&Value], result: &Value) {
        if self.values().is_empty() || result.is_null() {
            return;
        }
        let known = self.all();
        let holds_secret = args.iter().any(|arg| {
            let text = text_of(arg);
            known.iter().any(|s| text.contains(s.as_str()))
        });
        if !holds_secret {
            return;
        }
        let mut found = vec![text_of(result)];
        strings_in(result, &mut found);
        let mut derived = self.derived();
        for text in found {
            if text.chars().count() >= MIN_DERIVED
                && !self.values().contains(&text)
                && !derived.contains(&text)
            {
                if derived.len() == MAX_DERIVED {
                    derived.pop_front();
                }
                derived.push_back(text);
            }
        }
    }

    /// The values and the derived ones, longest first (so a longer value is replaced before a
    /// shorter one inside it).
    fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = self.values().to_vec();
        all.extend(self.derived().iter().cloned());
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all
    }

    /// Replaces secrets and derived values (whole or inside longer strings) and the values of
    /// credential keys.
    pub fn redact(&self, value: &mut Value) {
        redact_with(value, &self.all());
    }

    /// Replaces secrets and derived values in a text.
    pub fn redact_text(&self, text: &str) -> String {
        self.all()
            .iter()
            .fold(text.to_owned(), |t, s| t.replace(s.as_str(), REDACTED))
    }
}

fn redact_with(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), REDACTED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_with(v, secrets)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SENSITIVE_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) && !v.is_null() {
                    *v = json!(REDACTED);
                } else {
                    redact_with(v, secrets);
                }
            }
        }
        _ => {}
    }
}

/// A value as text: strings as they are, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every string inside an array or object.
fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| strings_in_item(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in_item(v, out)),
        _ => {}
    }
}

fn strings_in_item(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        other => strings_in(other, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets_derived_values_and_credential_keys() {
        let secrets = Secrets::new(vec!["abc123".to_owned(), String::new()]);
        let mut v = json!({
            "url": "https://x/?key=abc123",
            "headers": { "Authorization": "Bearer zzz", "X-Other": "fine" },
            "auth": { "bearer": "zzz" },
            "list": ["abc123", "ABC123"],
        });
        secrets.note(&[&json!("abc123")], &json!("ABC123"));
        secrets.note(&[&json!("nothing secret")], &json!("NOTHING SECRET"));
        secrets.note(&[&json!("abc123")], &json!("ABC"));
        secrets.redact(&mut v);
        assert_eq!(v["url"], "https://x/?key=[redacted]");
        assert_eq!(v["headers"]["Authorization"], REDACTED);
        assert_eq!(v["headers"]["X-Other"], "fine");
        assert_eq!(v["auth"]["bearer"], REDACTED);
        assert_eq!(v["list"], json!([REDACTED, REDACTED]));
        assert_eq!(
            secrets.redact_text("got abc123 and ABC123, NOTHING SECRET, ABC"),
            "got [redacted] and [redacted], NOTHING SECRET, ABC"
        );
        assert_eq!(format!("{secrets:?}"), "Secrets { values: 1, derived: 1 }");
    }

    #[test]
    fn derivation_is_transitive_and_bounded() {
        let secrets = Secrets::new(vec!["s3cret-value".to_owned()]);
        secrets.note(
            &[&json!("s3cret-value"), &json!("-")],
            &json!(["s3cret", "value"]),
        );
        secrets.note(
            &[&json!(["s3cret", "value"]), &json!("")],
            &json!("s3cretvalue"),
        );
        assert_eq!(secrets.redact_text("s3cretvalue"), REDACTED);
        for i in 0..MAX_DERIVED + 10 {
            secrets.note(&[&json!("s3cret-value")], &json!(format!("derived-{i}")));
        }
        assert_eq!(secrets.derived().len(), MAX_DERIVED);
        assert_eq!(
            secrets.redact_text(&format!("derived-{}", MAX_DERIVED + 9)),
            REDACTED
        );
    }
}
