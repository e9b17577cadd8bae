//! Inbound webhook signature checks, one per provider, as each documents it. Registered with the
//! engine by provider name; a flow picks one with `trigger.webhook.verify.provider`.
//!
//! Every comparison of a signature is constant-time. A failure says what was wrong (missing
//! header, no matching signature, stale timestamp) and never shows the expected signature.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use hookflow_engine::model::Timestamp;
use hookflow_engine::steps::Registry;
use hookflow_engine::verify::{
    standard_webhooks_signature, trigger_header, trigger_text, SignedRequest, Verifier,
};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Registers every provider's check.
pub fn register(registry: &mut Registry) {
    let all: [(&'static str, Arc<dyn Verifier>); 9] = [
        ("stripe", Arc::new(Stripe)),
        ("github", Arc::new(GitHub)),
        ("shopify", Arc::new(Shopify)),
        ("slack", Arc::new(Slack)),
        ("standard-webhooks", Arc::new(StandardWebhooks)),
        ("hubspot", Arc::new(HubSpot(HubSpotVersion::V3))),
        ("hubspot-v1", Arc::new(HubSpot(HubSpotVersion::V1))),
        ("hubspot-v2", Arc::new(HubSpot(HubSpotVersion::V2))),
        ("twilio", Arc::new(Twilio)),
    ];
    for (name, verifier) in all {
        registry.register_verifier(name, verifier);
    }
}

/// What every failed check says when no secret produced a matching signature.
const NO_MATCH: &str = "the signature does not match (a wrong secret, or the body was changed)";

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part);
    }
    digest.finalize().to_vec()
}

/// Constant-time equality (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(request: &'a SignedRequest<'_>, name: &str) -> Result<&'a str, String> {
    request
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the {name} header is missing"))
}

/// Refuses a signed time (seconds since the epoch) further than `tolerance` from `now`.
fn fresh(signed_secs: i64, now: Timestamp, tolerance: Duration) -> Result<(), String> {
    let age = now.millis() / 1000 - signed_secs;
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(format!(
            "the signed timestamp is {age} s from now (tolerance {} s): a replayed or delayed request",
            tolerance.as_secs()
        ));
    }
    Ok(())
}

fn parse_secs(value: &str, name: &str) -> Result<i64, String> {
    value
        .parse()
        .map_err(|_| format!("the {name} header is not a Unix time"))
}

/// `Ok` when any secret's `expected(secret)` equals any of `given`.
fn any_match(
    secrets: &[String],
    given: &[Vec<u8>],
    expected: impl Fn(&str) -> Vec<u8>,
) -> Result<(), String> {
    let matched = secrets.iter().any(|secret| {
        let want = expected(secret);
        given.iter().any(|g| same(g, &want))
    });
    matched.then_some(()).ok_or_else(|| NO_MATCH.into())
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.trim()).unwrap_or_default()
}

fn unbase64(text: &str) -> Vec<u8> {
    BASE64.decode(text.trim()).unwrap_or_default()
}

/// Stripe: `Stripe-Signature: t=…,v1=…[,v1=…]`, HMAC-SHA256 (hex) of `{t}.{body}`.
struct Stripe;

impl Stripe {
    fn mac(secret: &str, t: &str, body: &[u8]) -> Vec<u8> {
        hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body])
    }
}

impl Verifier for Stripe {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        now: Timestamp,
        tolerance: Duration,
    ) -> Result<(), String> {
        let value = header(request, "stripe-signature")?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in value.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", sig)) => signatures.push(unhex(sig)),
                _ => {}
            }
        }
        let t = timestamp.ok_or("the Stripe-Signature header has no timestamp (t=)")?;
        if signatures.is_empty() {
            return Err("the Stripe-Signature header has no v1 signature".into());
        }
        let signed = |secret: &str| Stripe::mac(secret, t, request.body);
        any_match(secrets, &signatures, signed)?;
        fresh(parse_secs(t, "Stripe-Signature t=")?, now, tolerance)
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        let t = (now.millis() / 1000).to_string();
        let mac = hex::encode(Stripe::mac(secret, &t, request.body));
        Some(vec![("stripe-signature".into(), format!("t={t},v1={mac}"))])
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_text(trigger, "/body/id")
    }
}

/// GitHub: `X-Hub-Signature-256: sha256=…`, HMAC-SHA256 (hex) of the body.
struct GitHub;

impl Verifier for GitHub {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        _now: Timestamp,
        _tolerance: Duration,
    ) -> Result<(), String> {
        let value = header(request, "x-hub-signature-256")?;
        let sig = value
            .strip_prefix("sha256=")
            .ok_or("the X-Hub-Signature-256 header does not start with sha256=")?;
        let expected = |secret: &str| hmac_sha256(secret.as_bytes(), &[request.body]);
        any_match(secrets, &[unhex(sig)], expected)
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        _now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        let mac = hex::encode(hmac_sha256(secret.as_bytes(), &[request.body]));
        Some(vec![(
            "x-hub-signature-256".into(),
            format!("sha256={mac}"),
        )])
    }

    fn event_type(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "x-github-event").map(str::to_owned)
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "x-github-delivery").map(str::to_owned)
    }
}

/// Shopify: `X-Shopify-Hmac-Sha256`, HMAC-SHA256 (base64) of the body.
struct Shopify;

impl Verifier for Shopify {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        _now: Timestamp,
        _tolerance: Duration,
    ) -> Result<(), String> {
        let sig = unbase64(header(request, "x-shopify-hmac-sha256")?);
        let expected = |secret: &str| hmac_sha256(secret.as_bytes(), &[request.body]);
        any_match(secrets, &[sig], expected)
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        _now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        let mac = BASE64.encode(hmac_sha256(secret.as_bytes(), &[request.body]));
        Some(vec![("x-shopify-hmac-sha256".into(), mac)])
    }

    fn event_type(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "x-shopify-topic").map(str::to_owned)
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "x-shopify-event-id")
            .or_else(|| trigger_header(trigger, "x-shopify-webhook-id"))
            .map(str::to_owned)
    }
}

/// Slack: `X-Slack-Signature: v0=…`, HMAC-SHA256 (hex) of `v0:{X-Slack-Request-Timestamp}:{body}`.
struct Slack;

impl Slack {
    fn mac(secret: &str, t: &str, body: &[u8]) -> Vec<u8> {
        hmac_sha256(secret.as_bytes(), &[b"v0:", t.as_bytes(), b":", body])
    }
}

impl Verifier for Slack {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        now: Timestamp,
        tolerance: Duration,
    ) -> Result<(), String> {
        let t = header(request, "x-slack-request-timestamp")?;
        let value = header(request, "x-slack-signature")?;
        let sig = value
            .strip_prefix("v0=")
            .ok_or("the X-Slack-Signature header does not start with v0=")?;
        fresh(parse_secs(t, "X-Slack-Request-Timestamp")?, now, tolerance)?;
        let expected = |secret: &str| Slack::mac(secret, t, request.body);
        any_match(secrets, &[unhex(sig)], expected)
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        let t = (now.millis() / 1000).to_string();
        let mac = hex::encode(Slack::mac(secret, &t, request.body));
        Some(vec![
            ("x-slack-request-timestamp".into(), t),
            ("x-slack-signature".into(), format!("v0={mac}")),
        ])
    }

    fn event_type(&self, trigger: &Value) -> Option<String> {
        trigger_text(trigger, "/body/event/type").or_else(|| trigger_text(trigger, "/body/type"))
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_text(trigger, "/body/event_id")
    }
}

/// Standard Webhooks: `webhook-signature: v1,… [v1,…]`, HMAC-SHA256 (base64) of
/// `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the base64 after `whsec_`. Svix sends the
/// same scheme under `svix-id`, `svix-timestamp` and `svix-signature`; those are read when the
/// `webhook-` ones are absent.
struct StandardWebhooks;

impl Verifier for StandardWebhooks {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        now: Timestamp,
        tolerance: Duration,
    ) -> Result<(), String> {
        // Svix sends the same headers under `svix-` names.
        let prefix =
            if request.header("webhook-id").is_none() && request.header("svix-id").is_some() {
                "svix"
            } else {
                "webhook"
            };
        let named = |suffix: &str| header(request, &format!("{prefix}-{suffix}"));
        let id = named("id")?;
        let t = named("timestamp")?;
        let signatures: Vec<&str> = named("signature")?
            .split_whitespace()
            .filter(|s| s.starts_with("v1,"))
            .collect();
        if signatures.is_empty() {
            return Err(format!("the {prefix}-signature header has no v1 signature"));
        }
        let signed_at = parse_secs(t, &format!("{prefix}-timestamp"))?;
        fresh(signed_at, now, tolerance)?;
        let matched = secrets.iter().any(|secret| {
            let want = standard_webhooks_signature(secret, id, signed_at, request.body);
            signatures
                .iter()
                .any(|s| same(s.as_bytes(), want.as_bytes()))
        });
        matched.then_some(()).ok_or_else(|| NO_MATCH.into())
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        // A sender's message id stays (it is the event's identity); else one is made up.
        let id = request.header("webhook-id").unwrap_or("msg_hookflow_test");
        let t = now.millis() / 1000;
        Some(vec![
            ("webhook-id".into(), id.to_owned()),
            ("webhook-timestamp".into(), t.to_string()),
            (
                "webhook-signature".into(),
                standard_webhooks_signature(secret, id, t, request.body),
            ),
        ])
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "webhook-id")
            .or_else(|| trigger_header(trigger, "svix-id"))
            .map(str::to_owned)
    }
}

/// HubSpot's signature versions.
#[derive(Debug, Clone, Copy)]
enum HubSpotVersion {
    /// `X-HubSpot-Signature`: SHA-256 (hex) of the client secret and the body (older apps).
    V1,
    /// `X-HubSpot-Signature`: SHA-256 (hex) of secret, method, URL and body.
    V2,
    /// `X-HubSpot-Signature-v3`: HMAC-SHA256 (base64) of method, URL, body and
    /// `X-HubSpot-Request-Timestamp` (milliseconds), keyed by the client secret.
    V3,
}

/// HubSpot: one of its signature versions. HubSpot posts arrays of up to 100 events: each is a run.
struct HubSpot(HubSpotVersion);

impl HubSpot {
    /// The signature of `request` with `secret` in this version (`t`: v3's timestamp header).
    fn mac(&self, secret: &str, request: &SignedRequest<'_>, t: &str) -> Vec<u8> {
        let (method, url, body) = (
            request.method.as_bytes(),
            request.url.as_bytes(),
            request.body,
        );
        match self.0 {
            HubSpotVersion::V1 => sha256(&[secret.as_bytes(), body]),
            HubSpotVersion::V2 => sha256(&[secret.as_bytes(), method, url, body]),
            HubSpotVersion::V3 => {
                hmac_sha256(secret.as_bytes(), &[method, url, body, t.as_bytes()])
            }
        }
    }
}

impl Verifier for HubSpot {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        now: Timestamp,
        tolerance: Duration,
    ) -> Result<(), String> {
        match self.0 {
            HubSpotVersion::V1 | HubSpotVersion::V2 => {
                let sig = unhex(header(request, "x-hubspot-signature")?);
                any_match(secrets, &[sig], |secret| self.mac(secret, request, ""))
            }
            HubSpotVersion::V3 => {
                let t = header(request, "x-hubspot-request-timestamp")?;
                let sig = unbase64(header(request, "x-hubspot-signature-v3")?);
                let millis = parse_secs(t, "X-HubSpot-Request-Timestamp")?;
                fresh(millis / 1000, now, tolerance)?;
                any_match(secrets, &[sig], |secret| self.mac(secret, request, t))
            }
        }
    }

    fn sign(
        &self,
        request: &SignedRequest<'_>,
        secret: &str,
        now: Timestamp,
    ) -> Option<Vec<(String, String)>> {
        Some(match self.0 {
            HubSpotVersion::V1 | HubSpotVersion::V2 => vec![(
                "x-hubspot-signature".into(),
                hex::encode(self.mac(secret, request, "")),
            )],
            HubSpotVersion::V3 => {
                let t = now.millis().to_string();
                let mac = BASE64.encode(self.mac(secret, request, &t));
                vec![
                    ("x-hubspot-request-timestamp".into(), t),
                    ("x-hubspot-signature-v3".into(), mac),
                ]
            }
        })
    }

    fn event_type(&self, trigger: &Value) -> Option<String> {
        trigger_text(trigger, "/body/subscriptionType")
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_text(trigger, "/body/eventId")
    }

    fn batches(&self) -> bool {
        true
    }
}

/// Twilio: `X-Twilio-Signature`, base64 HMAC of the URL followed by the form fields (sorted by
/// name, each name's distinct values sorted), or of a URL whose `bodySHA256` matches a JSON body.
/// As Twilio's SDKs check it:
/// - the HMAC is SHA-1 keyed by the auth token, or SHA-256 keyed by a Webhooks Rule's shared key
///   when `X-Twilio-Webhooks-Signature-Settings` says `algorithm=HMAC_SHA256`;
/// - Twilio signs the URL with or without its default port (`:443`, `:80`): both are accepted;
/// - repeated identical values of a field count once (`Digits=1234&Digits=1234`).
struct Twilio;

impl Verifier for Twilio {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        secrets: &[String],
        _now: Timestamp,
        _tolerance: Duration,
    ) -> Result<(), String> {
        let sig = unbase64(header(request, "x-twilio-signature")?);
        let hmac: fn(&[u8], &[&[u8]]) -> Vec<u8> =
            match request.header("x-twilio-webhooks-signature-settings") {
                None => hmac_sha1,
                Some(settings) => match twilio_algorithm(settings) {
                    Some("HMAC_SHA256") => hmac_sha256,
                    Some("HMAC_SHA1") => hmac_sha1,
                    other => {
                        return Err(format!(
                            "X-Twilio-Webhooks-Signature-Settings names an unknown algorithm ({})",
                            other.unwrap_or("none")
                        ))
                    }
                },
            };
        let url = url::Url::parse(request.url).map_err(|e| format!("the request URL: {e}"))?;
        let body_hash = url
            .query_pairs()
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.into_owned());
        let mut fields = Vec::new();
        match body_hash {
            Some(hash) => {
                if !same(
                    hash.to_lowercase().as_bytes(),
                    hex::encode(sha256(&[request.body])).as_bytes(),
                ) {
                    return Err("the body does not match the URL's bodySHA256".into());
                }
            }
            None => {
                let mut params: Vec<(String, String)> = url::form_urlencoded::parse(request.body)
                    .into_owned()
                    .collect();
                params.sort();
                params.dedup();
                for (k, v) in params {
                    fields.extend_from_slice(k.as_bytes());
                    fields.extend_from_slice(v.as_bytes());
                }
            }
        }
        let urls = twilio_urls(request.url, &url);
        let expected = |secret: &str| -> Vec<Vec<u8>> {
            urls.iter()
                .map(|u| hmac(secret.as_bytes(), &[u.as_bytes(), &fields]))
                .collect()
        };
        let matched = secrets
            .iter()
            .any(|secret| expected(secret).iter().any(|want| same(&sig, want)));
        matched.then_some(()).ok_or_else(|| NO_MATCH.into())
    }

    fn event_id(&self, trigger: &Value) -> Option<String> {
        trigger_header(trigger, "i-twilio-idempotency-token").map(str::to_owned)
    }
}

/// The `algorithm=` of `X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256`.
fn twilio_algorithm(settings: &str) -> Option<&str> {
    settings
        .split(',')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("algorithm"))
        .map(|(_, v)| v.trim())
}

/// The URLs Twilio may have signed for a request to `raw`: as received, and with and without the
/// scheme's default port.
fn twilio_urls(raw: &str, url: &url::Url) -> Vec<String> {
    // Parsing drops a default port: `url` is the URL without it.
    let mut urls = vec![raw.to_owned(), url.to_string()];
    if let (None, Some(port)) = (url.port(), url.port_or_known_default()) {
        urls.push(format!(
            "{}:{port}{}",
            &url[..url::Position::AfterHost],
            &url[url::Position::BeforePath..]
        ));
    }
    urls.dedup();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        url: &'a str,
        headers: &'a [(String, String)],
        body: &'a [u8],
    ) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            url,
            headers,
            body,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secs(s: i64) -> Timestamp {
        Timestamp(s * 1000)
    }

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn check(
        v: &dyn Verifier,
        h: &[(String, String)],
        body: &[u8],
        secrets: &[&str],
        now: Timestamp,
    ) -> Result<(), String> {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        v.verify(
            &request("https://hooks.example.com/hooks/catch/f/t", h, body),
            &secrets,
            now,
            TOLERANCE,
        )
    }

    #[test]
    fn what_a_provider_signs_it_verifies() {
        let mut registry = Registry::default();
        register(&mut registry);
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let now = secs(1_767_000_000);
        for provider in registry.providers().collect::<Vec<_>>() {
            let (_, verifier) = registry.verifier(provider).unwrap();
            let unsigned = headers(&[("content-type", "application/json")]);
            let url = "https://hooks.example.com/hooks/catch/f/t";
            let Some(added) = verifier.sign(&request(url, &unsigned, body), "whsec_dGVzdA==", now)
            else {
                assert_eq!(provider, "twilio", "only Twilio's signing is not offered");
                continue;
            };
            let signed: Vec<(String, String)> = unsigned.iter().cloned().chain(added).collect();
            assert_eq!(
                check(verifier.as_ref(), &signed, body, &["whsec_dGVzdA=="], now),
                Ok(()),
                "{provider}"
            );
            assert!(
                check(verifier.as_ref(), &signed, body, &["whsec_b3RoZXI="], now).is_err(),
                "{provider}"
            );
        }
    }

    #[test]
    fn github_matches_its_published_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let secret = "It's a Secret to Everybody";
        assert_eq!(
            check(&GitHub, &h, b"Hello, World!", &[secret], secs(0)),
            Ok(())
        );
        assert_eq!(
            check(&GitHub, &h, b"Hello, World?", &[secret], secs(0)).unwrap_err(),
            NO_MATCH
        );
        assert!(
            check(&GitHub, &h, b"Hello, World!", &["other", secret], secs(0)).is_ok(),
            "rotation"
        );
        assert!(check(&GitHub, &[], b"x", &[secret], secs(0))
            .unwrap_err()
            .contains("missing"));
    }

    #[test]
    fn standard_webhooks_matches_the_specs_test_vector() {
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bm9ldHZhbGlk v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            check(&StandardWebhooks, &h, body, &[secret], secs(1614265330)),
            Ok(())
        );
        assert_eq!(
            check(
                &StandardWebhooks,
                &h,
                body,
                &["whsec_bm9ldHZhbGlk", secret],
                secs(1614265330)
            ),
            Ok(())
        );
        assert!(check(&StandardWebhooks, &h, b"{}", &[secret], secs(1614265330)).is_err());
        let stale = check(
            &StandardWebhooks,
            &h,
            body,
            &[secret],
            secs(1614265330 + 301),
        );
        assert!(stale.unwrap_err().contains("tolerance"));
    }

    #[test]
    fn slack_matches_its_published_example() {
        // From Slack's "Verifying requests from Slack" documentation.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = headers(&[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        assert_eq!(check(&Slack, &h, body, &[secret], secs(1531420618)), Ok(()));
        assert!(check(&Slack, &h, body, &[secret], secs(1531420618 + 301)).is_err());
    }

    #[test]
    fn twilio_matches_its_published_example() {
        // From Twilio's "Webhooks security" documentation: auth token 12345.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let h = headers(&[("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")]);
        let secrets = vec!["12345".to_string()];
        let ok = Twilio.verify(&request(url, &h, body), &secrets, secs(0), TOLERANCE);
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn stripe_checks_signature_then_timestamp() {
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let secret = "whsec_test";
        let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[b"1700000000.", body]));
        let value = format!("t=1700000000,v1=deadbeef,v1={sig},v0=ignored");
        let h = headers(&[("stripe-signature", &value)]);
        assert_eq!(
            check(&Stripe, &h, body, &[secret], secs(1700000100)),
            Ok(())
        );
        assert_eq!(
            check(&Stripe, &h, body, &["whsec_other"], secs(1700000100)).unwrap_err(),
            NO_MATCH
        );
        assert!(check(&Stripe, &h, body, &[secret], secs(1700000400))
            .unwrap_err()
            .contains("tolerance"));
        let no_t = headers(&[("stripe-signature", "v1=abc")]);
        assert!(check(&Stripe, &no_t, body, &[secret], secs(0))
            .unwrap_err()
            .contains("t="));
    }

    #[test]
    fn shopify_and_slack_round_trip() {
        let body = b"{\"id\":1}";
        let shopify = BASE64.encode(hmac_sha256(b"shpss", &[body]));
        let h = headers(&[("x-shopify-hmac-sha256", &shopify)]);
        assert_eq!(check(&Shopify, &h, body, &["shpss"], secs(0)), Ok(()));
        assert!(check(&Shopify, &h, b"{\"id\":2}", &["shpss"], secs(0)).is_err());

        let slack = format!(
            "v0={}",
            hex::encode(hmac_sha256(b"s3cr3t", &[b"v0:1531420618:", body]))
        );
        let h = headers(&[
            ("x-slack-signature", &slack),
            ("x-slack-request-timestamp", "1531420618"),
        ]);
        assert_eq!(
            check(&Slack, &h, body, &["s3cr3t"], secs(1531420618)),
            Ok(())
        );
        assert!(check(&Slack, &h, body, &["s3cr3t"], secs(1531420618 + 3600)).is_err());
        assert!(check(&Slack, &h, body, &["wrong"], secs(1531420618)).is_err());
    }

    #[test]
    fn hubspot_v3_signs_method_url_body_and_timestamp() {
        let url = "https://hooks.example.com/hooks/catch/f/t";
        let body = br#"[{"eventId":1,"subscriptionType":"contact.creation"}]"#;
        let t = "1700000000000";
        let sig = BASE64.encode(hmac_sha256(
            b"client-secret",
            &[b"POST", url.as_bytes(), body, t.as_bytes()],
        ));
        let h = headers(&[
            ("x-hubspot-signature-v3", &sig),
            ("x-hubspot-request-timestamp", t),
        ]);
        assert_eq!(
            check(
                &HubSpot(HubSpotVersion::V3),
                &h,
                body,
                &["client-secret"],
                secs(1700000060)
            ),
            Ok(())
        );
        assert!(
            check(
                &HubSpot(HubSpotVersion::V3),
                &h,
                body,
                &["client-secret"],
                secs(1700000400)
            )
            .is_err(),
            "stale"
        );
        let v1 = hex::encode(sha256(&[b"client-secret", body]));
        let h = headers(&[("x-hubspot-signature", &v1)]);
        assert_eq!(
            check(
                &HubSpot(HubSpotVersion::V1),
                &h,
                body,
                &["client-secret"],
                secs(0)
            ),
            Ok(())
        );
        let v2 = hex::encode(sha256(&[b"client-secret", b"POST", url.as_bytes(), body]));
        let h = headers(&[("x-hubspot-signature", &v2)]);
        assert_eq!(
            check(
                &HubSpot(HubSpotVersion::V2),
                &h,
                body,
                &["client-secret"],
                secs(0)
            ),
            Ok(())
        );
        assert!(check(
            &HubSpot(HubSpotVersion::V2),
            &h,
            b"[]",
            &["client-secret"],
            secs(0)
        )
        .is_err());
    }

    #[test]
    fn twilio_signs_the_url_and_sorted_form_fields_or_the_body_hash() {
        let secrets = vec!["12345".to_string()];
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let body = b"To=%2B18005551212&CallSid=CA1234567890ABCDE&Digits=1234&From=%2B12349013030&Caller=%2B12349013030";
        let data = format!("{url}CallSidCA1234567890ABCDECaller+12349013030Digits1234From+12349013030To+18005551212");
        let sig = BASE64.encode(hmac_sha1(b"12345", &[data.as_bytes()]));
        let h = headers(&[("x-twilio-signature", &sig)]);
        let ok = Twilio.verify(&request(url, &h, body), &secrets, secs(0), TOLERANCE);
        assert_eq!(ok, Ok(()));
        let tampered = Twilio.verify(&request(url, &h, b"To=%2B1"), &secrets, secs(0), TOLERANCE);
        assert!(tampered.is_err());

        let json = br#"{"MessageSid":"SM1"}"#;
        let json_url = format!(
            "https://example.com/hook?bodySHA256={}",
            hex::encode(sha256(&[json]))
        );
        let sig = BASE64.encode(hmac_sha1(b"12345", &[json_url.as_bytes()]));
        let h = headers(&[("x-twilio-signature", &sig)]);
        assert_eq!(
            Twilio.verify(&request(&json_url, &h, json), &secrets, secs(0), TOLERANCE),
            Ok(())
        );
        let changed = Twilio.verify(&request(&json_url, &h, b"{}"), &secrets, secs(0), TOLERANCE);
        assert!(changed.unwrap_err().contains("bodySHA256"));
    }

    /// Twilio's SDK test vectors (twilio-python `test_request_validator.py`): auth token `12345`.
    const TWILIO_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const TWILIO_BODY: &[u8] = b"CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309";

    fn twilio(url: &str, h: &[(&str, &str)], body: &[u8], secret: &str) -> Result<(), String> {
        let h = headers(h);
        Twilio.verify(
            &request(url, &h, body),
            &[secret.to_owned()],
            secs(0),
            TOLERANCE,
        )
    }

    #[test]
    fn twilio_collapses_repeated_identical_values_as_its_sdks_do() {
        let h = [("x-twilio-signature", "IK+Dwps556ElfBT0I3Rgjkr1wJU=")];
        let body = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(twilio(TWILIO_URL, &h, body, "12345"), Ok(()));
        let repeated = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=1234";
        assert_eq!(twilio(TWILIO_URL, &h, repeated, "12345"), Ok(()));
        let changed = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1235";
        assert_eq!(
            twilio(TWILIO_URL, &h, changed, "12345").unwrap_err(),
            NO_MATCH
        );
    }

    #[test]
    fn twilio_accepts_a_url_signed_with_or_without_its_default_port() {
        let with_443 = [("x-twilio-signature", "kvajT1Ptam85bY51eRf/AJRuM3w=")];
        assert_eq!(twilio(TWILIO_URL, &with_443, TWILIO_BODY, "12345"), Ok(()));
        let plain = [("x-twilio-signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8=")];
        let url_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(twilio(url_443, &plain, TWILIO_BODY, "12345"), Ok(()));
        let http = "http://mycompany.com/myapp.php?foo=1&bar=2";
        let with_80 = [("x-twilio-signature", "0ZXoZLH/DfblKGATFgpif+LLRf4=")];
        assert_eq!(twilio(http, &with_80, TWILIO_BODY, "12345"), Ok(()));
        // Another path or host is not the URL Twilio signed.
        let other = "https://mycompany.com:443/other.php?foo=1&bar=2";
        assert_eq!(
            twilio(other, &with_443, TWILIO_BODY, "12345").unwrap_err(),
            NO_MATCH
        );
    }

    #[test]
    fn twilio_checks_the_hmac_sha256_variant_of_a_webhooks_rule() {
        // HMAC-SHA256 with a rule's shared key over the same string (computed independently).
        let h = [
            (
                "x-twilio-signature",
                "E5VnwNBwyz0tCHTP5Dkbb6TefPRbPKoGqFaaypGFqwI=",
            ),
            (
                "x-twilio-webhooks-signature-settings",
                "key=KS123,algorithm=HMAC_SHA256",
            ),
        ];
        assert_eq!(
            twilio(TWILIO_URL, &h, TWILIO_BODY, "shared-key-secret"),
            Ok(())
        );
        assert_eq!(
            twilio(TWILIO_URL, &h, b"CallSid=CA1", "shared-key-secret").unwrap_err(),
            NO_MATCH
        );
        // The SHA-1 signature of the same request does not pass as SHA-256.
        let sha1 = [
            ("x-twilio-signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            (
                "x-twilio-webhooks-signature-settings",
                "key=KS123,algorithm=HMAC_SHA256",
            ),
        ];
        assert!(twilio(TWILIO_URL, &sha1, TWILIO_BODY, "12345").is_err());
        let unknown = [
            ("x-twilio-signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            (
                "x-twilio-webhooks-signature-settings",
                "key=KS123,algorithm=MD5",
            ),
        ];
        assert!(twilio(TWILIO_URL, &unknown, TWILIO_BODY, "12345")
            .unwrap_err()
            .contains("unknown algorithm (MD5)"));
    }

    #[test]
    fn standard_webhooks_are_read_under_svix_header_names() {
        let h = headers(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            (
                "svix-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            check(&StandardWebhooks, &h, body, &[secret], secs(1614265330)),
            Ok(())
        );
        assert_eq!(
            check(&StandardWebhooks, &h, b"{}", &[secret], secs(1614265330)).unwrap_err(),
            NO_MATCH
        );
        let trigger = serde_json::json!({ "headers": { "svix-id": "msg_1" } });
        assert_eq!(
            StandardWebhooks.event_id(&trigger).as_deref(),
            Some("msg_1")
        );
    }
}
