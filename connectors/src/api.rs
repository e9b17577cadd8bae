//! What the HubSpot and Stripe actions share: the account a step calls as (base URL and
//! credential, from the environment), one paced API call, and how a call's failure becomes a step
//! error or a wait.
//!
//! Credentials never come from the flow file: a step names an `account` (or none, for the default)
//! and the token is read from the environment or the secrets file when the flow loads, then kept
//! out of the step's recorded input and redacted from everything the run records.

use std::time::Duration;

use hookflow_engine::expr::{LeftOut, Templates, ValueExpr};
use hookflow_engine::pacing::Observation;
use hookflow_engine::steps::http::{parse_retry_after, scalar_text, send_error};

/// A JSON value as a query, form or path value: strings as they are, the rest as JSON text.
pub use hookflow_engine::steps::http::scalar_text as scalar;
use hookflow_engine::steps::{BuildContext, ExecContext, Outcome, StepError};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

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

    /// Headers every call of an account sends (`Stripe-Version`), from the account's settings:
    /// `setting(suffix)` reads `{ENV}_{ACCOUNT}_{suffix}`, then `{ENV}_{suffix}`.
    fn default_headers(_setting: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        Vec::new()
    }

    /// What an answer says about the account's rate limits.
    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation>;

    /// The step error for a non-2xx answer (the service's error JSON mapped into message and
    /// detail).
    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError;
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
        let variable = format!("{scope}_{}", S::CREDENTIAL);
        let credential = cx.credential(&variable).ok_or(variable);
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
        let mut hash = Sha256::new();
        hash.update(base_url.as_bytes());
        hash.update([0]);
        hash.update(credential.as_deref().unwrap_or_default().as_bytes());
        let digest = hex::encode(&hash.finalize()[..8]);
        Some(Self {
            pacing_key: format!("{}:{digest}", S::ENV.to_ascii_lowercase()),
            base_url,
            credential,
            headers,
        })
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Names the limit within the account (`search`).
    pub name: &'static str,
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
    let credential = account.credential.as_ref().map_err(|variable| {
        StepError::permanent(format!(
            "no {} credential: set `{variable}` in the environment or the secrets file, \
             restart, then retry the run",
            S::NAME
        ))
    })?;
    if let Some(rule) = request.rule {
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
    let mut builder = cx
        .http
        .client()
        .request(request.method, url)
        .bearer_auth(credential)
        .timeout(cx.timeout);
    if !request.query.is_empty() {
        builder = builder.query(&request.query);
    }
    for (name, value) in &account.headers {
        builder = builder.header(name, value);
    }
    if let Some(key) = &request.idempotency_key {
        builder = builder.header("Idempotency-Key", key);
    }
    builder = match request.body {
        Body::None => builder,
        Body::Json(v) => builder.json(&v),
        Body::Form(pairs) => builder.form(&pairs),
    };
    let response = builder.send().await.map_err(|e| send_error(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    for observation in S::observe(status, &headers) {
        cx.pacer.observe(&account.pacing_key, observation).await;
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| StepError::transient(format!("reading the {} answer failed: {e}", S::NAME)))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else if is_json(&headers) {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    } else {
        json!(String::from_utf8_lossy(&bytes))
    };
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(CallError::Failed(S::error(status, &headers, &body)))
    }
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
