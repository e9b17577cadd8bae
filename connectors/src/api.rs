//! The connector kit: what every connector shares. A connector declares its API as a [`Service`]
//! (name, environment prefix, credential and how it is sent, default headers, how errors read —
//! including a failure answered with `200` —, its rate limits) and builds [`Request`]s; this module
//! resolves the account a step calls as (base URL and credential, from the environment), makes one
//! paced call, pages through lists ([`Paging`]), and turns a call's failure into a step error or a
//! wait. `connectors/README.md` walks through adding one.
//!
//! Credentials never come from the flow file: a step names an `account` (or none, for the default)
//! and the token is read from the environment or the secrets file when the flow loads, then kept
//! out of the step's recorded input and redacted from everything the run records.

use std::time::Duration;

use hookflow_engine::expr::{LeftOut, Templates, ValueExpr};
use hookflow_engine::pacing::Observation;
use hookflow_engine::steps::http::{parse_retry_after, scalar_text, send_error};
use hookflow_engine::steps::paging;

/// A JSON value as a query, form or path value: strings as they are, the rest as JSON text.
pub use hookflow_engine::steps::http::scalar_text as scalar;
use hookflow_engine::steps::{BuildContext, ExecContext, Outcome, StepError};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::oauth::OAuth;

/// How a service's answers are read.
pub trait Service {
    /// The service's name in messages (`HubSpot`).
    const NAME: &'static str;
    /// The prefix of its environment variables (`HUBSPOT`).
    const ENV: &'static str;
    /// The credential's variable suffix (`TOKEN` → `HUBSPOT_TOKEN`).
    const CREDENTIAL: &'static str;
    /// The production API's base URL.
    const BASE_URL: &'static str;

    /// How the credential is sent (default: `Authorization: Bearer`).
    const AUTH: Auth = Auth::Bearer;
    /// The OAuth 2 token endpoint (a path under the base URL), for accounts configured with
    /// `{ENV}_REFRESH_TOKEN`, `{ENV}_CLIENT_ID` and `{ENV}_CLIENT_SECRET` instead of a token; the
    /// access token is then sent as `Authorization: Bearer`.
    const OAUTH_TOKEN_PATH: Option<&'static str> = None;

    /// Headers every call of an account sends (`Stripe-Version`), from the account's settings:
    /// `setting(suffix)` reads `{ENV}_{ACCOUNT}_{suffix}`, then `{ENV}_{suffix}`.
    fn default_headers(_setting: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        Vec::new()
    }

    /// What an answer says about the account's rate limits.
    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation>;

    /// The step error for a `2xx` answer that reports a failure in its body (Slack's
    /// `{"ok": false, "error": …}`); `None`: the answer is a success.
    fn failure(_status: u16, _headers: &HeaderMap, _body: &Value) -> Option<StepError> {
        None
    }

    /// The step error for a non-2xx answer (the service's error JSON mapped into message and
    /// detail).
    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError;
}

/// How a service takes its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <credential>`.
    Bearer,
    /// The credential as the value of this header (`X-API-Key`).
    Header(&'static str),
    /// The credential as this query parameter (`api_key`).
    Query(&'static str),
    /// HTTP basic authentication: the credential is `user:password` (or a user name alone).
    Basic,
    /// No credential (the URL is the secret: an incoming webhook).
    None,
}

/// The account a step calls as.
#[derive(Clone)]
pub struct Account {
    /// Where the API is (configurable, so tests and compatible services can be used).
    pub base_url: String,
    /// The credential, or the variable that should have held it.
    credential: Result<String, String>,
    /// The pacing key: the service and a hash of base URL and credential, never the credential.
    pacing_key: String,
    /// Headers every call sends ([`Service::default_headers`]).
    headers: Vec<(String, String)>,
    /// OAuth 2 refresh-token credentials, instead of a static token.
    oauth: Option<OAuth>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("Account")
            .field("base_url", &self.base_url)
            .field("pacing_key", &self.pacing_key)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The account named `name` (or the default one) of service `S`: its credential from
    /// `{ENV}_{NAME}_{CREDENTIAL}` (default account: `{ENV}_{CREDENTIAL}`), its base URL from
    /// `{ENV}_{NAME}_BASE_URL`, then `{ENV}_BASE_URL`, then the production API. A missing
    /// credential is not a load error (the shipped flows load without one); the step fails with
    /// the variable to set.
    pub fn resolve<S: Service>(cx: &mut BuildContext<'_>, name: Option<&str>) -> Option<Self> {
        let scope = match name {
            None => S::ENV.to_owned(),
            Some(n)
                if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                format!("{}_{}", S::ENV, n.to_ascii_uppercase())
            }
            Some(n) => {
                cx.error(
                    "account",
                    format!("`{n}` is not an account name: use letters, digits and `_`"),
                );
                return None;
            }
        };
        let setting = |suffix: &str| {
            cx.setting(&format!("{scope}_{suffix}"))
                .or_else(|| cx.setting(&format!("{}_{suffix}", S::ENV)))
        };
        let headers = S::default_headers(&setting);
        let base_url = setting("BASE_URL").unwrap_or_else(|| S::BASE_URL.to_owned());
        let base_url = base_url.trim_end_matches('/').to_owned();
        if reqwest::Url::parse(&base_url).is_err() {
            cx.error(
                "account",
                format!("the {} base URL `{base_url}` is not a URL", S::NAME),
            );
            return None;
        }
        let variable = format!("{scope}_{}", S::CREDENTIAL);
        let credential = cx.credential(&variable).ok_or(variable);
        // Without a token, a refresh token (OAuth 2) where the service has a token endpoint.
        let refresh = cx
            .setting(&format!("{scope}_REFRESH_TOKEN"))
            .unwrap_or_default();
        let key = pacing_key::<S>(&base_url, credential.as_deref().unwrap_or(&refresh));
        let oauth = match (&credential, S::OAUTH_TOKEN_PATH) {
            (Err(_), Some(path)) => OAuth::resolve(cx, &scope, format!("{base_url}{path}"), &key),
            _ => None,
        };
        Some(Self {
            pacing_key: key,
            base_url,
            credential: if oauth.is_some() {
                Ok(String::new())
            } else {
                credential
            },
            headers,
            oauth,
        })
    }

    /// An account that is a URL with no credential (an incoming webhook, [`Auth::None`]): the
    /// URL is rendered at run time, so it is checked here.
    pub fn at_url<S: Service>(url: &str) -> Result<Self, StepError> {
        reqwest::Url::parse(url)
            .map_err(|e| StepError::permanent(format!("`url` is not a URL: {e}")))?;
        Ok(Self {
            pacing_key: pacing_key::<S>(url, ""),
            base_url: url.to_owned(),
            credential: Ok(String::new()),
            headers: Vec::new(),
            oauth: None,
        })
    }
}

/// The pacing key of an account: the service and a hash of base URL and credential, never either.
fn pacing_key<S: Service>(base_url: &str, credential: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(base_url.as_bytes());
    hash.update([0]);
    hash.update(credential.as_bytes());
    let digest = hex::encode(&hash.finalize()[..8]);
    format!("{}:{digest}", S::ENV.to_ascii_lowercase())
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body.
    None,
    /// JSON.
    Json(Value),
    /// `application/x-www-form-urlencoded` pairs.
    Form(Vec<(String, String)>),
}

/// One API request, relative to the account's base URL.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, starting with `/`.
    pub path: String,
    /// Query-string pairs.
    pub query: Vec<(String, String)>,
    /// The body.
    pub body: Body,
    /// Sent as `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// A limit of the endpoint's own, paced besides the account's (HubSpot's search).
    pub rule: Option<Rule>,
}

/// A rate limit a service documents for some of its endpoints, paced before each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Names the limit within the account (`search`, `post:C123`).
    pub name: String,
    /// Calls allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

impl Request {
    /// A request without query, body or idempotency key.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: Body::None,
            idempotency_key: None,
            rule: None,
        }
    }

    /// Paced by an endpoint's own limit too.
    pub fn paced(mut self, rule: Rule) -> Self {
        self.rule = Some(rule);
        self
    }

    /// With a JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    /// With a form body.
    pub fn form(mut self, pairs: Vec<(String, String)>) -> Self {
        self.body = Body::Form(pairs);
        self
    }

    /// With query pairs.
    pub fn query(mut self, pairs: Vec<(String, String)>) -> Self {
        self.query.extend(pairs);
        self
    }

    /// With an idempotency key.
    pub fn idempotent(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }
}

/// Why a call did not produce an answer to use.
#[derive(Debug)]
pub enum CallError {
    /// The account's rate limit is used up: try the step again after this long.
    Wait(Duration),
    /// The call failed.
    Failed(StepError),
}

impl From<StepError> for CallError {
    fn from(e: StepError) -> Self {
        Self::Failed(e)
    }
}

/// Makes one call as `account`, paced by the account's rate limit; answers the parsed JSON body.
pub async fn call<S: Service>(
    cx: &ExecContext,
    account: &Account,
    request: Request,
) -> Result<Value, CallError> {
    send::<S>(cx, account, request).await.map(|(body, _)| body)
}

/// [`call`], answering the headers too (a `Link` header pages).
async fn send<S: Service>(
    cx: &ExecContext,
    account: &Account,
    request: Request,
) -> Result<(Value, HeaderMap), CallError> {
    let credential = account.credential.as_ref().map_err(|variable| {
        StepError::permanent(format!(
            "no {} credential: set `{variable}` in the environment or the secrets file, \
             restart, then retry the run",
            S::NAME
        ))
    })?;
    if let Some(rule) = &request.rule {
        let key = format!("{}:{}", account.pacing_key, rule.name);
        let limit = Observation::Remaining {
            max: rule.max,
            remaining: rule.max,
            window: rule.window,
        };
        cx.pacer.observe(&key, limit).await;
        admit(cx, &key).await?;
    }
    admit(cx, &account.pacing_key).await?;
    let url = format!("{}{}", account.base_url, request.path);
    let url = reqwest::Url::parse(&url)
        .map_err(|e| StepError::permanent(format!("`{url}` is not a valid URL: {e}")))?;
    cx.http.check_url(&url).map_err(StepError::permanent)?;
    // An OAuth access token the API refuses (401) is refreshed and the call made once more.
    let mut stale = false;
    let (status, headers, bytes) = loop {
        let token = match &account.oauth {
            Some(oauth) => Some(oauth.access_token(cx, stale).await?),
            None => None,
        };
        let mut builder = cx
            .http
            .client()
            .request(request.method.clone(), url.clone())
            .timeout(cx.timeout);
        builder = match (&token, S::AUTH) {
            (Some(token), _) => builder.bearer_auth(token),
            (None, Auth::Bearer) => builder.bearer_auth(credential),
            (None, Auth::Header(name)) => builder.header(name, credential),
            (None, Auth::Query(name)) => builder.query(&[(name, credential)]),
            (None, Auth::Basic) => match credential.split_once(':') {
                Some((user, password)) => builder.basic_auth(user, Some(password)),
                None => builder.basic_auth(credential, None::<&str>),
            },
            (None, Auth::None) => builder,
        };
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        for (name, value) in &account.headers {
            builder = builder.header(name, value);
        }
        if let Some(key) = &request.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        builder = match &request.body {
            Body::None => builder,
            Body::Json(v) => builder.json(v),
            Body::Form(pairs) => builder.form(pairs),
        };
        let response = builder.send().await.map_err(|e| send_error(&e))?;
        let status = response.status().as_u16();
        if status == 401 && token.is_some() && !stale {
            stale = true;
            continue;
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| {
            StepError::transient(format!("reading the {} answer failed: {e}", S::NAME))
        })?;
        break (status, headers, bytes);
    };
    for observation in S::observe(status, &headers) {
        cx.pacer.observe(&account.pacing_key, observation).await;
    }
    let body = if bytes.is_empty() {
        Value::Null
    } else if is_json(&headers) {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    } else {
        json!(String::from_utf8_lossy(&bytes))
    };
    if !(200..300).contains(&status) {
        return Err(CallError::Failed(S::error(status, &headers, &body)));
    }
    match S::failure(status, &headers, &body) {
        Some(e) => Err(CallError::Failed(e)),
        None => Ok((body, headers)),
    }
}

/// Where a request carries a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A query-string parameter.
    Query(&'static str),
    /// A field of the JSON body.
    Body(&'static str),
}

impl Place {
    /// Sets the parameter on `request`, replacing an earlier value.
    fn set(self, request: &mut Request, value: Value) {
        match self {
            Place::Query(name) => {
                request.query.retain(|(k, _)| k != name);
                request.query.push((name.to_owned(), scalar(&value)));
            }
            Place::Body(name) => {
                if let Body::Json(Value::Object(body)) = &mut request.body {
                    body.insert(name.to_owned(), value);
                }
            }
        }
    }
}

/// How a list endpoint says where its next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A cursor in the answer (a JSON pointer), sent back at `to`; no cursor (or `""`): the last
    /// page (Slack's `/response_metadata/next_cursor` → `cursor`, HubSpot's `/paging/next/after`
    /// → body `after`).
    Cursor {
        /// Where the answer holds it.
        at: &'static str,
        /// Where the next request sends it.
        to: Place,
    },
    /// While the answer's flag at `more` is true, the last item's `id` is sent at `to` (Stripe's
    /// `has_more` and `starting_after`).
    AfterLast {
        /// The answer's "more pages" flag.
        more: &'static str,
        /// Where the next request sends the id.
        to: Place,
    },
    /// The number of items received so far is sent at `to`; a short or empty page is the last.
    Offset {
        /// Where the next request sends it.
        to: Place,
    },
    /// The `Link` header's `rel="next"` URL (GitHub-style); none: the last page.
    Link,
}

/// A list endpoint's paging: where the items are, how a page's size is asked, where the next page
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// The items of a page (a JSON pointer; `""`: the answer is the list).
    pub items: &'static str,
    /// Where a page's size is asked, and the most one page holds.
    pub size: Option<(Place, u64)>,
    /// Where the next page starts.
    pub next: Next,
}

/// Collects up to `limit` items page by page from `first`: the items and the last page's answer.
pub async fn collect<S: Service>(
    cx: &ExecContext,
    account: &Account,
    mut request: Request,
    paging: Paging,
    limit: u64,
) -> Result<(Vec<Value>, Value), CallError> {
    let mut items: Vec<Value> = Vec::new();
    loop {
        let wanted = limit - items.len() as u64;
        if let Some((place, most)) = paging.size {
            place.set(&mut request, json!(wanted.min(most)));
        }
        let (page, headers) = send::<S>(cx, account, request.clone()).await?;
        let got = page
            .pointer(paging.items)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let short = paging
            .size
            .is_some_and(|(_, most)| (got.len() as u64) < wanted.min(most));
        let empty = got.is_empty();
        items.extend(got);
        if items.len() as u64 >= limit || empty {
            items.truncate(limit as usize);
            return Ok((items, page));
        }
        let more = match paging.next {
            Next::Cursor { at, to } => match page.pointer(at).map(scalar) {
                Some(cursor) if !cursor.is_empty() => {
                    to.set(&mut request, json!(cursor));
                    true
                }
                _ => false,
            },
            Next::AfterLast { more, to } => {
                let last = items.last().map(|i| i["id"].clone()).unwrap_or_default();
                to.set(&mut request, last);
                page.pointer(more) == Some(&json!(true))
            }
            Next::Offset { to } => {
                to.set(&mut request, json!(items.len()));
                !short
            }
            Next::Link => match next_link(&headers) {
                Some(url) => follow(&mut request, account, &url)?,
                None => false,
            },
        };
        if !more {
            return Ok((items, page));
        }
    }
}

/// The `rel="next"` URL of a response's `Link` headers.
fn next_link(headers: &HeaderMap) -> Option<String> {
    paging::next_link(
        headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// Points `request` at a next-page URL (absolute, or relative to the account's base URL), which
/// must stay under the account's base URL: the credential goes nowhere else.
fn follow(request: &mut Request, account: &Account, url: &str) -> Result<bool, StepError> {
    let next = reqwest::Url::parse(&account.base_url)
        .and_then(|base| base.join(url))
        .map_err(|e| StepError::permanent(format!("the next page `{url}` is not a URL: {e}")))?;
    let Some(rest) = next.as_str().strip_prefix(account.base_url.as_str()) else {
        return Err(StepError::permanent(format!(
            "the next page `{url}` is not under {}",
            account.base_url
        )));
    };
    request.path = rest.split('?').next().unwrap_or_default().to_owned();
    request.query = next.query_pairs().into_owned().collect();
    Ok(true)
}

/// The longest wait for an account's allowance a step sits out in place; longer waits put the step
/// back in the queue (a step that pages through results would start over, so short waits, such as
/// a per-second limit's, are taken here).
const WAIT_IN_PLACE: Duration = Duration::from_secs(2);

/// Takes one call of the allowance under `key`, waiting in place when the wait is short.
async fn admit(cx: &ExecContext, key: &str) -> Result<(), CallError> {
    loop {
        match cx.pacer.admit(key).await {
            Ok(()) => return Ok(()),
            Err(wait) if wait <= WAIT_IN_PLACE => {
                tracing::debug!(?wait, "waiting in place for the account's allowance");
                tokio::time::sleep(wait).await;
            }
            Err(wait) => return Err(CallError::Wait(wait)),
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}

/// A connector step's input: `{action, …the action's rendered fields, left_out}`. Fields whose
/// expression resolved to nothing are left out and named in `left_out` with why (see
/// [`ValueExpr::render_request`]); `$clear` renders `null`, which each connector sends as its API's
/// way to clear a field.
pub fn render_action(
    name: &str,
    params: &ValueExpr,
    t: &Templates,
    ctx: &Value,
) -> Result<Value, StepError> {
    let mut left_out = LeftOut::new();
    let mut input = Map::new();
    input.insert("action".into(), json!(name));
    if let Value::Object(fields) = params.render_request(t, ctx, &mut left_out)? {
        input.extend(fields);
    }
    if !left_out.is_empty() {
        input.insert(LEFT_OUT.into(), Value::Object(left_out));
    }
    Ok(Value::Object(input))
}

/// The key of a rendered input that lists the fields left out (never an API parameter).
pub const LEFT_OUT: &str = "left_out";

/// What a connector step answers in a dry run: the request it would make, unsent.
pub fn dry_run(input: Value) -> Outcome {
    Outcome::Output(json!({ "dry_run": true, "request": input }))
}

/// The step's outcome from its calls: the output, a wait for the rate limit, or the error.
pub fn outcome<S: Service>(result: Result<Value, CallError>) -> Result<Outcome, StepError> {
    match result {
        Ok(output) => Ok(Outcome::Output(output)),
        Err(CallError::Wait(delay)) => Ok(Outcome::Wait {
            delay,
            reason: format!("the {} account's rate limit is used up", S::NAME),
        }),
        Err(CallError::Failed(e)) => Err(e),
    }
}

/// A step error for a non-2xx answer: `message`, the answer's status and `Retry-After`, and
/// whether another attempt may succeed.
pub fn http_error(
    status: u16,
    headers: &HeaderMap,
    message: String,
    detail: Value,
    retryable: bool,
) -> StepError {
    StepError {
        message,
        detail,
        retryable,
        retry_after: retry_after(headers),
        http_status: Some(status),
    }
}

/// The answer's `Retry-After`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// A header's value as a number.
pub fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A rendered field as text (`""` when missing); numbers and booleans as their JSON text.
pub fn text(input: &Value, field: &str) -> String {
    scalar_text(&input[field])
}

/// A rendered field that must not be empty, or a permanent step error naming it.
pub fn required(input: &Value, field: &str, what: &str) -> Result<String, StepError> {
    let value = text(input, field);
    if value.is_empty() {
        return Err(StepError::permanent(format!(
            "`{field}` resolved to nothing: {what} is needed"
        )));
    }
    Ok(value)
}

/// A path segment, percent-encoded (ids and emails go into paths).
pub fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A rendered input's entries without `action`, `left_out` and `skip` (the fields that are not
/// API parameters).
pub fn params_without(input: &Value, skip: &[&str]) -> Map<String, Value> {
    input
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(&k.as_str()) && !matches!(k.as_str(), "action" | LEFT_OUT))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::extract::Query;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::routing::get;
    use axum::{Json, Router};
    use hookflow_engine::expr::Compiler;
    use hookflow_engine::ids::RunId;
    use hookflow_engine::outbound::{HttpClient, OutboundPolicy};
    use hookflow_engine::pacing::Pacer;
    use hookflow_engine::store::SystemClock;

    use super::*;

    /// A list API with twelve items, paged three ways: by offset (`/offset?offset=&limit=`), by
    /// `Link` header (`/linked?page=`), and by a body cursor (`/cursor`, Slack-like).
    async fn list_api() -> String {
        fn slice(from: usize, n: usize) -> Vec<Value> {
            (from..(from + n).min(12))
                .map(|i| json!({ "id": i }))
                .collect()
        }
        fn number(q: &HashMap<String, String>, name: &str) -> usize {
            q.get(name).map_or(0, |v| v.parse().unwrap())
        }
        // The credential arrives as the `api_key` query parameter ([`Auth::Query`]).
        let offset = |Query(q): Query<HashMap<String, String>>| async move {
            assert_eq!(q["api_key"], "k");
            Json(json!({ "items": slice(number(&q, "offset"), number(&q, "limit")) }))
        };
        let linked = |Query(q): Query<HashMap<String, String>>| async move {
            let page = number(&q, "page");
            let mut headers = AxumHeaders::new();
            if page < 2 {
                let next = format!("</linked?page={}>; rel=\"next\"", page + 1);
                headers.insert("link", next.parse().unwrap());
            }
            let body = Json(Value::Array(slice(page * 5, 5)));
            (headers, body)
        };
        let cursor = |Query(q): Query<HashMap<String, String>>| async move {
            let at: usize = q
                .get("cursor")
                .map_or(0, |c| c.trim_start_matches('c').parse().unwrap());
            let next = if at + 4 < 12 {
                format!("c{}", at + 4)
            } else {
                String::new()
            };
            Json(
                json!({ "ok": true, "members": slice(at, 4), "response_metadata": { "next_cursor": next } }),
            )
        };
        let app = Router::new()
            .route("/offset", get(offset))
            .route("/linked", get(linked))
            .route("/cursor", get(cursor));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    struct Api;

    impl Service for Api {
        const NAME: &'static str = "Test";
        const ENV: &'static str = "TEST";
        const CREDENTIAL: &'static str = "KEY";
        const BASE_URL: &'static str = "";
        const AUTH: Auth = Auth::Query("api_key");

        fn observe(_: u16, _: &HeaderMap) -> Vec<Observation> {
            Vec::new()
        }

        fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
            http_error(status, headers, format!("{status}"), body.clone(), false)
        }
    }

    /// A context whose requests may reach the test's API on 127.0.0.1.
    fn context() -> ExecContext {
        let policy = OutboundPolicy {
            allow: vec!["127.0.0.1".parse().unwrap()],
            ..OutboundPolicy::default()
        };
        ExecContext {
            run_id: RunId::new(),
            step_id: "list".parse().unwrap(),
            attempt: 1,
            idempotency_key: "k".into(),
            dry_run: false,
            timeout: Duration::from_secs(10),
            http: HttpClient::new(policy).unwrap(),
            pacer: Pacer::detached(),
            templates: Compiler::new().finish(Vec::new()),
            context: Arc::new(Value::Null),
            sub_flows: None,
            clock: Arc::new(SystemClock),
            state: None,
            log: Default::default(),
            storage: hookflow_engine::steps::storage::StepStorage::scratch(),
        }
    }

    fn ids(items: &[Value]) -> Vec<u64> {
        items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
    }

    #[tokio::test]
    async fn lists_page_by_offset_link_header_and_cursor() {
        let url = list_api().await;
        let cx = context();
        let account = Account {
            pacing_key: pacing_key::<Api>(&url, "k"),
            base_url: url.clone(),
            credential: Ok("k".into()),
            headers: Vec::new(),
            oauth: None,
        };
        let by_offset = Paging {
            items: "/items",
            size: Some((Place::Query("limit"), 5)),
            next: Next::Offset {
                to: Place::Query("offset"),
            },
        };
        let first = Request::new(Method::GET, "/offset").query(vec![("offset".into(), "0".into())]);
        let (items, _) = collect::<Api>(&cx, &account, first.clone(), by_offset, 100)
            .await
            .unwrap();
        assert_eq!(ids(&items), (0..12).collect::<Vec<_>>());
        let (items, _) = collect::<Api>(&cx, &account, first, by_offset, 7)
            .await
            .unwrap();
        assert_eq!(
            ids(&items),
            (0..7).collect::<Vec<_>>(),
            "stops at the limit"
        );

        let by_link = Paging {
            items: "",
            size: None,
            next: Next::Link,
        };
        let first = Request::new(Method::GET, "/linked");
        let (items, _) = collect::<Api>(&cx, &account, first, by_link, 100)
            .await
            .unwrap();
        assert_eq!(ids(&items), (0..12).collect::<Vec<_>>());

        let by_cursor = Paging {
            items: "/members",
            size: None,
            next: Next::Cursor {
                at: "/response_metadata/next_cursor",
                to: Place::Query("cursor"),
            },
        };
        let first = Request::new(Method::GET, "/cursor");
        let (items, last) = collect::<Api>(&cx, &account, first, by_cursor, 100)
            .await
            .unwrap();
        assert_eq!(ids(&items), (0..12).collect::<Vec<_>>());
        assert_eq!(last["response_metadata"]["next_cursor"], "");
    }
}
