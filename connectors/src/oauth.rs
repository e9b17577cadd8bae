//! OAuth 2 refresh tokens for connector accounts: an account configured with a refresh token (and
//! its app's client id and secret) calls with a short-lived access token, got from the service's
//! token endpoint and cached in the store, so every node and every run share it until it expires.
//!
//! Invariants: an access token is refreshed five minutes before it expires, and at once when the
//! API answers `401` (then the call is made once more); a refresh token the service rotates is
//! cached too and used from then on. Tokens are never logged, never part of a step's input, output
//! or error, and the cache key names the account by a hash, never by a credential.

use std::time::Duration;

use hookflow_engine::model::Timestamp;
use hookflow_engine::steps::{BuildContext, ExecContext, StepError};
use serde_json::{json, Value};

use crate::api::scalar;

/// How long before its expiry an access token is replaced.
const MARGIN: Duration = Duration::from_secs(300);

/// An account's refresh-token credentials.
#[derive(Clone)]
pub struct OAuth {
    /// The token endpoint.
    token_url: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: String,
    /// Where the access token is cached (`oauth:<account's pacing key>`).
    cache_key: String,
    /// The variable prefix, for messages (`HUBSPOT`).
    scope: String,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("OAuth")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// The refresh-token credentials of the account whose variables start with `scope`, when
    /// `{scope}_REFRESH_TOKEN` is set: with `{scope}_CLIENT_ID` and `{scope}_CLIENT_SECRET`
    /// (secrets are remembered for redaction).
    pub fn resolve(
        cx: &mut BuildContext<'_>,
        scope: &str,
        token_url: String,
        account_key: &str,
    ) -> Option<Self> {
        let refresh_token = cx.credential(&format!("{scope}_REFRESH_TOKEN"))?;
        Some(Self {
            token_url,
            client_id: cx.setting(&format!("{scope}_CLIENT_ID")),
            client_secret: cx.credential(&format!("{scope}_CLIENT_SECRET")),
            refresh_token,
            cache_key: format!("oauth:{account_key}"),
            scope: scope.to_owned(),
        })
    }

    /// A valid access token: the cached one, unless it expires within [`MARGIN`] or `stale`
    /// (the API refused it), else a new one from the token endpoint.
    pub async fn access_token(&self, cx: &ExecContext, stale: bool) -> Result<String, StepError> {
        let now = cx.clock.now();
        let cached = match &cx.state {
            Some(state) => state.get(&self.cache_key).await,
            None => None,
        };
        if let Some(cached) = cached.as_ref().filter(|_| !stale) {
            let expires = cached["expires_at"].as_i64().unwrap_or(0);
            if let Some(token) = cached["access_token"].as_str() {
                if Timestamp(expires) > now.plus(MARGIN) {
                    return Ok(token.to_owned());
                }
            }
        }
        let refresh_token = cached
            .as_ref()
            .and_then(|c| c["refresh_token"].as_str())
            .unwrap_or(&self.refresh_token)
            .to_owned();
        let answer = self.refresh(cx, &refresh_token).await?;
        let access_token = scalar(field(&answer, "access_token", "accessToken"));
        let expires_in = field(&answer, "expires_in", "expiresIn")
            .as_u64()
            .unwrap_or(0);
        let rotated = field(&answer, "refresh_token", "refreshToken").as_str();
        let entry = json!({
            "access_token": access_token,
            "expires_at": now.plus(Duration::from_secs(expires_in)).millis(),
            "refresh_token": rotated.unwrap_or(&refresh_token),
        });
        if let Some(state) = &cx.state {
            if let Err(e) = state.put(&self.cache_key, &entry).await {
                tracing::warn!(error = %e, "could not cache the OAuth access token");
            }
        }
        tracing::info!(expires_in, "OAuth access token refreshed");
        Ok(access_token)
    }

    /// Trades the refresh token for an access token at the token endpoint (RFC 6749 §6).
    async fn refresh(&self, cx: &ExecContext, refresh_token: &str) -> Result<Value, StepError> {
        let (Some(id), Some(secret)) = (&self.client_id, &self.client_secret) else {
            return Err(StepError::permanent(format!(
                "OAuth needs the app's client: set `{0}_CLIENT_ID` and `{0}_CLIENT_SECRET`, \
                 restart, then retry the run",
                self.scope
            )));
        };
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| {
            StepError::permanent(format!("the token URL `{}`: {e}", self.token_url))
        })?;
        cx.http.check_url(&url).map_err(StepError::permanent)?;
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
            ("refresh_token", refresh_token),
        ];
        let response = cx
            .http
            .client()
            .post(url)
            .form(&form)
            .timeout(cx.timeout)
            .send()
            .await
            .map_err(|e| StepError::transient(format!("the OAuth token endpoint: {e}")))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) && field(&body, "access_token", "accessToken").is_string() {
            return Ok(body);
        }
        // The service's reason, never the tokens.
        let reason = ["error_description", "message", "error", "status"]
            .iter()
            .find_map(|k| body[*k].as_str())
            .unwrap_or("no reason given");
        let message = format!(
            "the OAuth token endpoint refused to refresh the access token ({status}: {reason}); \
             check `{}_REFRESH_TOKEN` and the app's client",
            self.scope
        );
        Err(if status >= 500 || status == 429 {
            StepError::transient(message)
        } else {
            StepError::permanent(message)
        })
    }
}

/// A field of a token answer, under its RFC 6749 name or its camel-case one (newer APIs).
fn field<'a>(answer: &'a Value, snake: &str, camel: &str) -> &'a Value {
    match &answer[snake] {
        Value::Null => &answer[camel],
        found => found,
    }
}
