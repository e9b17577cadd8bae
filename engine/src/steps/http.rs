//! `http`: sends one HTTP request and returns the response (status, headers, body parsed when JSON).
//!
//! Every attempt carries `Idempotency-Key: {run_id}:{step_id}` (unless the flow sets the header), so
//! a receiver can drop the duplicate a retry after a crash may cause; automatic retries resend the
//! recorded request (the runtime reuses the input), and fields whose expression resolved to nothing
//! are left out of headers, query and body (listed in the input's `left_out`). A non-2xx answer is a step
//! error; 5xx, 408, 409, 425 and 429 are retryable, other 4xx are not, and `Retry-After` is honoured.
//!
//! With `paginate:` the step follows a list API's pages and collects their items (see
//! [`super::paging`]); each page is retried on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::paging::{Paginate, PaginateSpec};
use super::{join_path, Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{LeftOut, Templates, TextExpr, ValueExpr};
use crate::model::Timestamp;

/// How much of a response body an error keeps.
const BODY_EXCERPT: usize = 500;

/// Send an HTTP request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS`. Default: `POST` when a body is
    /// given, else `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// The URL (a template).
    pub url: String,
    /// Request headers (values are templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query-string parameters added to the URL (values are templates).
    #[serde(default)]
    pub query: BTreeMap<String, Value>,
    /// A JSON body (strings are templates; a lone `{{path}}` keeps its type).
    #[serde(default)]
    pub json: Option<Value>,
    /// A form-encoded body (`application/x-www-form-urlencoded`).
    #[serde(default)]
    pub form: Option<BTreeMap<String, Value>>,
    /// A raw text body (a template); set `Content-Type` in `headers`.
    #[serde(default)]
    pub body: Option<String>,
    /// Authentication.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Sign the request as a webhook, so its receiver can check it came from you.
    #[serde(default)]
    pub sign: Option<SignSpec>,
    /// Follow a list API's pages (a cursor, an offset or `Link: rel="next"`), collecting their
    /// items into one output.
    #[serde(default)]
    pub paginate: Option<PaginateSpec>,
}

/// How a request is signed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignSpec {
    /// A Standard Webhooks secret (`whsec_…`, usually `${env:…}`): the request gets `webhook-id`
    /// (the step's idempotency key, the same on every retry), `webhook-timestamp` and
    /// `webhook-signature`.
    pub standard_webhooks: String,
}

/// HTTP authentication: one of `bearer` or `basic`. Use `${env:NAME}` for the secret so it stays
/// out of the flow file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer: Option<String>,
    /// `Authorization: Basic …`.
    #[serde(default)]
    pub basic: Option<BasicAuthSpec>,
}

/// User name and password for basic authentication.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl StepKind for HttpSpec {
    const KIND: &'static str = "http";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let bodies = [
            self.json.is_some(),
            self.form.is_some(),
            self.body.is_some(),
        ];
        if bodies.iter().filter(|b| **b).count() > 1 {
            cx.error("", "give at most one of `json`, `form` and `body`");
        }
        let method = match self.method.as_deref().map(str::to_ascii_uppercase) {
            Some(m) if ALLOWED_METHODS.contains(&m.as_str()) => m,
            Some(m) => {
                cx.error(
                    "method",
                    format!("`{m}` is not one of {}", ALLOWED_METHODS.join(", ")),
                );
                return None;
            }
            None if bodies.contains(&true) => "POST".to_owned(),
            None => "GET".to_owned(),
        };
        for name in self.headers.keys() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.error(&format!("headers.{name}"), "not a valid header name");
            }
        }
        let url = cx.text("url", &self.url);
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), cx.text(&format!("headers.{k}"), v)))
            .collect();
        let query = cx.value("query", &json!(self.query));
        let body = match (self.json, self.form, self.body) {
            (Some(v), _, _) => cx.value("json", &v).map(Body::Json),
            (_, Some(f), _) => cx.value("form", &json!(f)).map(Body::Form),
            (_, _, Some(t)) => cx.text("body", &t).map(Body::Text),
            _ => Some(Body::None),
        };
        let auth = match self.auth {
            Some(AuthSpec {
                bearer: Some(_),
                basic: Some(_),
            }) => {
                cx.error("auth", "give one of `bearer` and `basic`, not both");
                None
            }
            Some(AuthSpec {
                bearer: Some(token),
                ..
            }) => cx.text("auth.bearer", &token).map(Auth::Bearer),
            Some(AuthSpec { basic: Some(b), .. }) => {
                let u = cx.text("auth.basic.username", &b.username);
                let p = cx.text("auth.basic.password", &b.password);
                u.zip(p).map(|(u, p)| Auth::Basic(u, p))
            }
            None
            | Some(AuthSpec {
                bearer: None,
                basic: None,
            }) => Some(Auth::None),
        };
        let headers = headers
            .into_iter()
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect::<Option<Vec<_>>>();
        let paginate = match self.paginate {
            Some(p) => p.build(cx).map(Some),
            None => Some(None),
        };
        let sign = self.sign.map(|s| s.standard_webhooks);
        if sign.as_deref().is_some_and(|s| s.contains("{{")) {
            cx.error(
                "sign.standard_webhooks",
                "the secret is not a template: use `${env:NAME}`",
            );
        }
        Some(Arc::new(Http {
            sign,
            method,
            url: url?,
            headers: headers?,
            query: query?,
            body: body?,
            auth: auth?,
            paginate: paginate?,
        }))
    }
}

const ALLOWED_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

struct Http {
    /// The Standard Webhooks secret to sign with (kept out of the rendered input, so out of history).
    sign: Option<String>,
    method: String,
    url: TextExpr,
    headers: Vec<(String, TextExpr)>,
    query: ValueExpr,
    body: Body,
    auth: Auth,
    paginate: Option<Paginate>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the signing secret.
        f.debug_struct("Http")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("signed", &self.sign.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Body {
    None,
    Json(ValueExpr),
    Form(ValueExpr),
    Text(TextExpr),
}

#[derive(Debug)]
enum Auth {
    None,
    Bearer(TextExpr),
    Basic(TextExpr, TextExpr),
}

#[async_trait]
impl Action for Http {
    /// The rendered request: `{method, url, headers, query, json|form|body, auth}`, and
    /// `left_out`: the headers, query and body fields whose expression resolved to nothing (not
    /// sent; `$clear` sends `null` in JSON, `""` in a query or form).
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let mut left_out = LeftOut::new();
        let mut req = Map::new();
        req.insert("method".into(), json!(self.method));
        req.insert("url".into(), json!(self.url.render(t, ctx)?));
        let mut headers = Map::new();
        for (k, v) in &self.headers {
            let value = v.render(t, ctx)?;
            if value.is_empty() && !v.is_literal() {
                left_out.insert(
                    format!("headers.{k}"),
                    json!("its expression resolved to empty text"),
                );
            } else {
                headers.insert(k.clone(), json!(value));
            }
        }
        req.insert("headers".into(), Value::Object(headers));
        req.insert(
            "query".into(),
            fields("query", &self.query, t, ctx, &mut left_out)?,
        );
        match &self.body {
            Body::None => {}
            Body::Json(v) => {
                req.insert("json".into(), fields("json", v, t, ctx, &mut left_out)?);
            }
            Body::Form(v) => {
                req.insert("form".into(), fields("form", v, t, ctx, &mut left_out)?);
            }
            Body::Text(v) => {
                req.insert("body".into(), json!(v.render(t, ctx)?));
            }
        }
        if !left_out.is_empty() {
            req.insert("left_out".into(), Value::Object(left_out));
        }
        if self.sign.is_some() {
            req.insert("sign".into(), json!("standard-webhooks"));
        }
        if let Some(p) = &self.paginate {
            req.insert("paginate".into(), p.describe());
        }
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(tok) => {
                req.insert("auth".into(), json!({ "bearer": tok.render(t, ctx)? }));
            }
            Auth::Basic(u, p) => {
                let basic = json!({ "username": u.render(t, ctx)?, "password": p.render(t, ctx)? });
                req.insert("auth".into(), json!({ "basic": basic }));
            }
        }
        Ok(Value::Object(req))
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        if cx.dry_run {
            // Built (and signed) as it would be sent, so a dry run catches the same mistakes.
            self.request(&input, &cx.idempotency_key, cx)?;
            let mut out = json!({ "dry_run": true, "request": input });
            if self.paginate.is_some() {
                out["pages"] = json!("only the first page's request is shown");
            }
            return Ok(Outcome::Output(out));
        }
        match &self.paginate {
            None => self.send(&input, &cx.idempotency_key, cx).await,
            Some(p) => self.send_pages(p, input, cx).await,
        }
        .map(Outcome::Output)
    }
}

impl Http {
    /// The request for `input`, sent under idempotency key `key`.
    fn request(
        &self,
        input: &Value,
        key: &str,
        cx: &ExecContext,
    ) -> Result<reqwest::Request, StepError> {
        let mut request = build_request(input, key, cx)?;
        if let Some(secret) = &self.sign {
            sign_standard_webhooks(&mut request, secret, key)?;
        }
        Ok(request)
    }

    /// Sends `input` once: the response `{status, headers, body}`.
    async fn send(&self, input: &Value, key: &str, cx: &ExecContext) -> Result<Value, StepError> {
        let request = self.request(input, key, cx)?;
        let response = cx
            .http
            .client()
            .execute(request)
            .await
            .map_err(|e| send_error(&e))?;
        read_response(response).await
    }

    /// Sends page after page, each retried on its own (see [`super::paging`]).
    async fn send_pages(
        &self,
        paginate: &Paginate,
        input: Value,
        cx: &ExecContext,
    ) -> Result<Value, StepError> {
        let mut walk = paginate.walk(input, &cx.templates);
        while let Some((request, key)) = walk.next_request(&cx.idempotency_key) {
            let mut attempt = 1;
            let response = loop {
                let started = std::time::Instant::now();
                let sent = self.send(&request, &key, cx).await;
                let ms = started.elapsed().as_millis() as u64;
                match sent {
                    Ok(response) => {
                        walk.attempt(json!({ "duration_ms": ms, "status": response["status"] }));
                        break response;
                    }
                    Err(e) => {
                        walk.attempt(json!({ "duration_ms": ms, "error": e.message }));
                        if !e.retryable || attempt >= paginate.attempts {
                            return Err(walk.failed(e));
                        }
                        let wait = page_backoff(attempt, e.retry_after);
                        tracing::info!(step_id = %cx.step_id, key = %key, attempt, ?wait, error = %e.message, "page failed, retrying it");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                }
            };
            tracing::debug!(step_id = %cx.step_id, key = %key, attempt, "page received");
            walk.page(request, response)?;
        }
        Ok(walk.finish())
    }
}

/// How long before a failed page is tried again: what the server asked (at most a minute), else
/// 0.5 s doubling per attempt.
fn page_backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(wait) => wait.min(Duration::from_secs(60)),
        None => Duration::from_millis(500) * 2u32.pow(attempt.saturating_sub(1).min(5)),
    }
}

/// A request part rendered with [`ValueExpr::render_request`], its left-out fields named under
/// `part`.
fn fields(
    part: &str,
    value: &ValueExpr,
    t: &Templates,
    ctx: &Value,
    left_out: &mut LeftOut,
) -> Result<Value, StepError> {
    let mut here = LeftOut::new();
    let rendered = value.render_request(t, ctx, &mut here)?;
    left_out.extend(here.into_iter().map(|(k, v)| (join_path(part, &k), v)));
    Ok(rendered)
}

/// Builds the request from the rendered input (also in dry runs, so they catch the same mistakes,
/// except the address policy: nothing is sent).
fn build_request(
    input: &Value,
    idempotency_key: &str,
    cx: &ExecContext,
) -> Result<reqwest::Request, StepError> {
    let url_text = input["url"].as_str().unwrap_or_default();
    let mut url = reqwest::Url::parse(url_text)
        .map_err(|e| StepError::permanent(format!("`{url_text}` is not a valid URL: {e}")))?;
    if let Some(query) = input["query"].as_object() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, &scalar_text(v));
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    if !cx.dry_run {
        cx.http.check_url(&url).map_err(StepError::permanent)?;
    }
    let method = Method::from_bytes(input["method"].as_str().unwrap_or("GET").as_bytes())
        .map_err(|_| StepError::permanent("invalid HTTP method"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in input["headers"].as_object().into_iter().flatten() {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| StepError::permanent(format!("`{k}` is not a valid header name")))?;
        let value = HeaderValue::from_str(v.as_str().unwrap_or_default()).map_err(|_| {
            StepError::permanent(format!(
                "the value of header `{k}` has characters headers cannot carry"
            ))
        })?;
        headers.insert(name, value);
    }
    if !headers.contains_key("idempotency-key") {
        let key = HeaderValue::from_str(idempotency_key)
            .map_err(|_| StepError::permanent("invalid idempotency key"))?;
        headers.insert("idempotency-key", key);
    }
    let mut builder = cx
        .http
        .client()
        .request(method, url)
        .headers(headers)
        .timeout(cx.timeout);
    builder = match &input["auth"] {
        Value::Object(a) if a.contains_key("bearer") => {
            builder.bearer_auth(a["bearer"].as_str().unwrap_or_default())
        }
        Value::Object(a) if a.contains_key("basic") => {
            let b = &a["basic"];
            builder.basic_auth(
                b["username"].as_str().unwrap_or_default(),
                b["password"].as_str(),
            )
        }
        _ => builder,
    };
    if let Some(v) = input.get("json") {
        builder = builder.json(v);
    } else if let Some(form) = input.get("form").and_then(Value::as_object) {
        let pairs: Vec<(&str, String)> = form
            .iter()
            .map(|(k, v)| (k.as_str(), scalar_text(v)))
            .collect();
        builder = builder.form(&pairs);
    } else if let Some(text) = input.get("body").and_then(Value::as_str) {
        builder = builder.body(text.to_owned());
    }
    builder
        .build()
        .map_err(|e| StepError::permanent(format!("could not build the request: {e}")))
}

/// Adds the Standard Webhooks headers, signing the request's exact body.
fn sign_standard_webhooks(
    request: &mut reqwest::Request,
    secret: &str,
    id: &str,
) -> Result<(), StepError> {
    let body = request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .unwrap_or_default();
    let timestamp = Timestamp::now().millis() / 1000;
    let signature = crate::verify::standard_webhooks_signature(secret, id, timestamp, body);
    let headers = request.headers_mut();
    for (name, value) in [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| StepError::permanent(format!("cannot send `{name}`: {value}")))?;
        headers.insert(name, value);
    }
    Ok(())
}

/// A JSON value as a query or form field: strings as they are, the rest as JSON text.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The step error for a request that got no answer (timeout, connection refused, …), with its
/// whole cause chain.
pub fn send_error(e: &reqwest::Error) -> StepError {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    if e.is_timeout() {
        StepError::transient(format!("the request timed out: {cause}"))
    } else if cause.contains("refused to connect to") {
        StepError::permanent(cause)
    } else if e.is_connect() {
        StepError::transient(format!("could not connect to the target: {cause}"))
    } else {
        StepError::transient(format!("the request failed: {cause}"))
    }
}

async fn read_response(response: reqwest::Response) -> Result<Value, StepError> {
    let status = response.status();
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| StepError::transient(format!("reading the response failed: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    let body = if is_json {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(text))
    } else {
        json!(text)
    };
    if status.is_success() {
        return Ok(json!({ "status": status.as_u16(), "headers": headers, "body": body }));
    }
    let code = status.as_u16();
    let excerpt: String = text.chars().take(BODY_EXCERPT).collect();
    let retryable = status.is_server_error() || matches!(code, 408 | 409 | 425 | 429);
    let message = format!("the server answered {status}: {excerpt}");
    Err(StepError {
        message,
        detail: json!({ "status": code, "body": excerpt }),
        retryable,
        retry_after,
        http_status: Some(code),
    })
}

/// `Retry-After` as seconds (`120`) or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(v.trim(), &format).ok()?;
    let delta = at - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(delta.whole_seconds().max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
