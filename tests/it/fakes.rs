//! Local fakes of the SaaS APIs hookflow's connectors call (HubSpot's CRM, Stripe, Slack) and of
//! an SMTP server, on 127.0.0.1. Each checks requests the way the provider documents them (path, method, bearer
//! token, body encoding, Stripe's idempotency keys), keeps the objects it was sent, and answers
//! with the provider's documented response and error shapes, including 429s with rate-limit
//! headers. Every request is recorded for assertions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body's pairs (form) or JSON, as received.
    pub body: String,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Call {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON body.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The form body's pairs, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The path's segments, percent-decoded (ids and emails arrive encoded).
fn path_segments(uri: &Uri) -> Vec<String> {
    uri.path()
        .trim_start_matches('/')
        .split('/')
        .map(|segment| {
            let pair = format!("s={}", segment.replace('+', "%2B"));
            url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HubSpot
// ---------------------------------------------------------------------------------------------

/// HubSpot's CRM v3/v4 API, in memory.
#[derive(Clone)]
pub struct FakeHubSpot {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<HubSpotState>>,
}

struct HubSpotState {
    token: String,
    objects: HashMap<String, BTreeMap<u64, Value>>,
    associations: Vec<(String, String, String, String)>,
    next_id: u64,
    /// Calls allowed per rolling window, as HubSpot's headers report it.
    limit: Option<(usize, Duration)>,
    recent: VecDeque<Instant>,
    /// The most results one search page holds (HubSpot's is 200; smaller to exercise paging).
    page_size: usize,
    /// Calls left today, reported in `X-HubSpot-RateLimit-Daily-Remaining` (none: not reported).
    daily: Option<(u64, u64)>,
    /// An OAuth app: client id, client secret, the refresh token it accepts.
    oauth: Option<(String, String, String)>,
    /// Access tokens issued and still valid.
    access_tokens: Vec<String>,
    /// How many access tokens were issued.
    issued: usize,
    calls: Vec<Call>,
}

impl FakeHubSpot {
    /// A fake accepting `token`, with no rate limit.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(HubSpotState {
            token: token.to_owned(),
            objects: HashMap::new(),
            associations: Vec::new(),
            next_id: 101,
            limit: None,
            recent: VecDeque::new(),
            page_size: 200,
            daily: None,
            oauth: None,
            access_tokens: Vec::new(),
            issued: 0,
            calls: Vec::new(),
        }));
        let app = Router::new()
            .fallback(any(hubspot))
            .with_state(state.clone());
        Self {
            url: serve(app).await,
            state,
        }
    }

    /// Allows `max` calls per rolling `window`, answering 429 beyond it.
    pub fn limit(&self, max: usize, window: Duration) {
        lock(&self.state).limit = Some((max, window));
    }

    /// Allows `max` calls a day, `left` of them still unused (HubSpot's daily headers; a spent
    /// allowance answers 429 with the `DAILY` policy).
    pub fn daily(&self, max: u64, left: u64) {
        lock(&self.state).daily = Some((max, left));
    }

    /// Accepts OAuth access tokens issued at `POST /oauth/v1/token` for this app's refresh token
    /// (besides the private-app token).
    pub fn oauth(&self, client_id: &str, client_secret: &str, refresh_token: &str) {
        lock(&self.state).oauth = Some((
            client_id.to_owned(),
            client_secret.to_owned(),
            refresh_token.to_owned(),
        ));
    }

    /// Revokes every access token issued (as if they expired early).
    pub fn revoke_access_tokens(&self) {
        lock(&self.state).access_tokens.clear();
    }

    /// How many access tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.state).issued
    }

    /// Caps search pages at `n` results.
    pub fn page_size(&self, n: usize) {
        lock(&self.state).page_size = n;
    }

    /// Adds a record; answers its id.
    pub fn insert(&self, object: &str, properties: Value) -> String {
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        let record = record(id, properties);
        s.objects
            .entry(object.to_owned())
            .or_default()
            .insert(id, record);
        id.to_string()
    }

    /// The records of an object type, by id.
    pub fn records(&self, object: &str) -> Vec<Value> {
        lock(&self.state)
            .objects
            .get(object)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The associations made: (from type, from id, to type, to id).
    pub fn associations(&self) -> Vec<(String, String, String, String)> {
        lock(&self.state).associations.clone()
    }

    /// Every request received.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }
}

fn record(id: u64, properties: Value) -> Value {
    json!({
        "id": id.to_string(),
        "properties": properties,
        "createdAt": "2026-11-22T10:00:00.000Z",
        "updatedAt": "2026-11-22T10:00:00.000Z",
        "archived": false,
    })
}

fn hubspot_error(status: StatusCode, category: &str, message: &str, errors: Value) -> Response {
    let body = json!({
        "status": "error",
        "message": message,
        "correlationId": "4b1d6f1e-0000-4000-8000-000000000000",
        "category": category,
        "errors": errors,
    });
    (status, Json(body)).into_response()
}

async fn hubspot(
    State(state): State<Arc<Mutex<HubSpotState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut response = match s.daily {
        Some((_, 0)) => {
            let body = json!({
                "status": "error",
                "message": "You have reached your daily limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": "4b1d6f1e-0000-4000-8000-00000000d429",
                "policyName": "DAILY",
            });
            (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
        }
        _ => hubspot_answer(&mut s, &method, &uri, &headers, &text),
    };
    if let Some((max, left)) = &mut s.daily {
        *left = left.saturating_sub(1);
        let h = response.headers_mut();
        h.insert("x-hubspot-ratelimit-daily", (*max).into());
        h.insert("x-hubspot-ratelimit-daily-remaining", (*left).into());
    }
    if let Some((max, window)) = s.limit {
        let remaining = max.saturating_sub(s.recent.len());
        let h = response.headers_mut();
        h.insert("x-hubspot-ratelimit-max", max.into());
        h.insert("x-hubspot-ratelimit-remaining", remaining.into());
        let window = window.as_millis() as u64;
        h.insert("x-hubspot-ratelimit-interval-milliseconds", window.into());
    }
    s.calls.push(Call {
        method,
        path: uri.path().to_owned(),
        query: query_pairs(&uri),
        headers,
        body: text,
        status: response.status().as_u16(),
        at: Instant::now(),
    });
    response
}

fn hubspot_answer(
    s: &mut HubSpotState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Response {
    if uri.path() == "/oauth/v1/token" {
        return oauth_token(s, body);
    }
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    let bearer = given
        .and_then(|g| g.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bearer != s.token && !s.access_tokens.iter().any(|t| t == bearer) {
        return hubspot_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
            json!([]),
        );
    }
    if let Some((max, window)) = s.limit {
        let now = Instant::now();
        while s.recent.front().is_some_and(|t| now - *t >= window) {
            s.recent.pop_front();
        }
        if s.recent.len() >= max {
            let body = json!({
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": "4b1d6f1e-0000-4000-8000-000000000429",
                "policyName": "TEN_SECONDLY_ROLLING",
            });
            return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        }
        s.recent.push_back(now);
    }
    let has_body = !body.is_empty();
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if has_body && !json_body {
        return hubspot_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "HubSpot takes JSON bodies",
            json!([]),
        );
    }
    let input: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let query: HashMap<String, String> = query_pairs(uri).into_iter().collect();
    let parts = path_segments(uri);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["crm", "v3", "objects", "contacts", "batch", "upsert"]) => upsert(s, &input),
        ("POST", ["crm", "v3", "objects", object, "search"]) => search(s, object, &input),
        ("POST", ["crm", "v3", "objects", object]) => create(s, object, &input),
        ("PATCH", ["crm", "v3", "objects", object, id]) => {
            let Some(found) = find(s, object, id, query.get("idProperty")) else {
                return not_found();
            };
            let record = s.objects.get_mut(*object).unwrap().get_mut(&found).unwrap();
            for (k, v) in input["properties"].as_object().into_iter().flatten() {
                record["properties"][k] = v.clone();
            }
            Json(record.clone()).into_response()
        }
        ("GET", ["crm", "v3", "objects", object, id]) => {
            let Some(found) = find(s, object, id, query.get("idProperty")) else {
                return not_found();
            };
            let mut record = s.objects[*object][&found].clone();
            if let Some(wanted) = query.get("properties") {
                let all = record["properties"].clone();
                let picked: Map<String, Value> = wanted
                    .split(',')
                    .map(|p| (p.to_owned(), all.get(p).cloned().unwrap_or(Value::Null)))
                    .collect();
                record["properties"] = Value::Object(picked);
            }
            Json(record).into_response()
        }
        ("PUT", ["crm", "v4", "objects", from, from_id, "associations", "default", to, to_id]) => {
            for (object, id) in [(from, from_id), (to, to_id)] {
                if find(s, object, id, None).is_none() {
                    return not_found();
                }
            }
            let made = (
                from.to_string(),
                from_id.to_string(),
                to.to_string(),
                to_id.to_string(),
            );
            s.associations.push(made);
            let spec = json!({ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1 });
            Json(json!({
                "status": "COMPLETE",
                "results": [{ "from": { "id": from_id }, "to": { "id": to_id }, "associationSpec": spec }],
            }))
            .into_response()
        }
        _ => hubspot_error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("no route for {method} {}", uri.path()),
            json!([]),
        ),
    }
}

/// HubSpot's token endpoint (OAuth v1): a form with `grant_type=refresh_token`, the client's id
/// and secret and the refresh token; answers `{token_type, refresh_token, access_token,
/// expires_in}`, or `400 {"status": "BAD_REFRESH_TOKEN", …}`.
fn oauth_token(s: &mut HubSpotState, body: &str) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let Some((id, secret, refresh)) = s.oauth.clone() else {
        return not_found();
    };
    if field("grant_type") != "refresh_token"
        || field("client_id") != id
        || field("client_secret") != secret
        || field("refresh_token") != refresh
    {
        let body =
            json!({ "status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token" });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    s.issued += 1;
    let access = format!("oauth-access-{}", s.issued);
    s.access_tokens.push(access.clone());
    Json(json!({
        "token_type": "bearer",
        "refresh_token": refresh,
        "access_token": access,
        "expires_in": 1800,
    }))
    .into_response()
}

fn not_found() -> Response {
    hubspot_error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "resource not found",
        json!([]),
    )
}

fn find(s: &HubSpotState, object: &str, id: &str, by: Option<&String>) -> Option<u64> {
    let records = s.objects.get(object)?;
    match by.map(String::as_str) {
        Some(property) => records
            .iter()
            .find(|(_, r)| r["properties"][property].as_str() == Some(id))
            .map(|(k, _)| *k),
        None => id.parse().ok().filter(|k| records.contains_key(k)),
    }
}

fn invalid_email(email: &str) -> Response {
    hubspot_error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        "Property values were not valid",
        json!([{
            "message": format!("Email address {email} is invalid"),
            "code": "INVALID_EMAIL",
            "context": { "propertyName": ["email"] },
        }]),
    )
}

fn create(s: &mut HubSpotState, object: &str, input: &Value) -> Response {
    let Some(properties) = input["properties"].as_object() else {
        return hubspot_error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Invalid input JSON: `properties` is required",
            json!([]),
        );
    };
    if let Some(email) = properties.get("email").and_then(Value::as_str) {
        if !email.contains('@') {
            return invalid_email(email);
        }
        if let Some(existing) = find(s, object, email, Some(&"email".to_owned())) {
            return hubspot_error(
                StatusCode::CONFLICT,
                "CONFLICT",
                &format!("Contact already exists. Existing ID: {existing}"),
                json!([]),
            );
        }
    }
    // Notes and tasks must be associated with an existing record, with the defined type id.
    for association in input["associations"].as_array().into_iter().flatten() {
        let to = association["to"]["id"].as_str().unwrap_or_default();
        let type_id = association["types"][0]["associationTypeId"].as_u64();
        let category = association["types"][0]["associationCategory"].as_str();
        let target = match (object, type_id) {
            ("notes", Some(202)) | ("tasks", Some(204)) => "contacts",
            ("notes", Some(190)) | ("tasks", Some(192)) => "companies",
            ("notes", Some(214)) | ("tasks", Some(216)) => "deals",
            _ => "",
        };
        if category != Some("HUBSPOT_DEFINED") || find(s, target, to, None).is_none() {
            return hubspot_error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("invalid association to {to} ({type_id:?})"),
                json!([]),
            );
        }
    }
    let id = s.next_id;
    s.next_id += 1;
    let mut made = record(id, Value::Object(properties.clone()));
    if let Some(a) = input.get("associations") {
        made["associations"] = a.clone();
    }
    s.objects
        .entry(object.to_owned())
        .or_default()
        .insert(id, made.clone());
    (StatusCode::CREATED, Json(made)).into_response()
}

/// A batch upsert: the valid inputs are upserted; an invalid email fails the whole batch when it is
/// alone, or answers `207 Multi-Status` with one error per failed input beside the results.
fn upsert(s: &mut HubSpotState, input: &Value) -> Response {
    let inputs = input["inputs"].as_array().cloned().unwrap_or_default();
    let invalid: Vec<&str> = inputs
        .iter()
        .filter_map(|i| i["id"].as_str())
        .filter(|email| !email.contains('@'))
        .collect();
    if invalid.len() == inputs.len() && !invalid.is_empty() {
        return invalid_email(invalid[0]);
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for item in &inputs {
        let email = item["id"].as_str().unwrap_or_default();
        if item["idProperty"] != "email" {
            return hubspot_error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "idProperty must be a unique property",
                json!([]),
            );
        }
        if !email.contains('@') {
            errors.push(json!({
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": format!("Email address {email} is invalid"),
                "context": { "ids": [email] },
                "errors": [{ "message": format!("Email address {email} is invalid"), "code": "INVALID_EMAIL" }],
            }));
            continue;
        }
        let properties = item["properties"].as_object().cloned().unwrap_or_default();
        let existing = find(s, "contacts", email, Some(&"email".to_owned()));
        let contacts = s.objects.entry("contacts".into()).or_default();
        let (id, new) = match existing {
            Some(id) => (id, false),
            None => {
                let id = s.next_id;
                s.next_id += 1;
                contacts.insert(id, record(id, json!({ "email": email })));
                (id, true)
            }
        };
        let record = contacts.get_mut(&id).unwrap();
        for (k, v) in properties {
            record["properties"][k] = v;
        }
        let mut answer = record.clone();
        answer["new"] = json!(new);
        results.push(answer);
    }
    // HubSpot does not keep the inputs' order.
    results.reverse();
    let mut answer = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": "2026-11-22T10:00:00.000Z",
        "completedAt": "2026-11-22T10:00:00.100Z",
    });
    if errors.is_empty() {
        return Json(answer).into_response();
    }
    answer["numErrors"] = json!(errors.len());
    answer["errors"] = json!(errors);
    (StatusCode::MULTI_STATUS, Json(answer)).into_response()
}

fn search(s: &HubSpotState, object: &str, input: &Value) -> Response {
    let filters = input["filterGroups"][0]["filters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // HubSpot documents `values` (a list) for IN and NOT_IN, and `highValue` for BETWEEN.
    for f in &filters {
        let well_formed = match f["operator"].as_str() {
            Some("IN" | "NOT_IN") => f["values"].is_array() && f.get("value").is_none(),
            Some("BETWEEN") => f["value"].is_string() && f["highValue"].is_string(),
            _ => f.get("values").is_none(),
        };
        if !well_formed {
            return hubspot_error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Invalid filter: {f}"),
                json!([]),
            );
        }
    }
    let matches: Vec<Value> = s
        .objects
        .get(object)
        .map(|m| m.values().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            filters.iter().all(|f| {
                let property = f["propertyName"].as_str().unwrap_or_default();
                let actual = r["properties"][property].as_str().unwrap_or_default();
                let wanted = f["value"].as_str().unwrap_or_default();
                let number = |v: &str| v.parse::<f64>().ok();
                match f["operator"].as_str() {
                    Some("EQ") => actual.eq_ignore_ascii_case(wanted),
                    Some("IN") => f["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v.as_str().is_some_and(|v| actual.eq_ignore_ascii_case(v))),
                    Some("BETWEEN") => {
                        let high = f["highValue"].as_str().and_then(number);
                        match (number(actual), number(wanted), high) {
                            (Some(a), Some(low), Some(high)) => low <= a && a <= high,
                            _ => false,
                        }
                    }
                    Some("CONTAINS_TOKEN") => actual.contains(wanted.trim_matches('*')),
                    Some("HAS_PROPERTY") => !actual.is_empty(),
                    _ => false,
                }
            })
        })
        .collect();
    let after: usize = input["after"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let limit = input["limit"].as_u64().unwrap_or(10) as usize;
    let size = limit.min(s.page_size);
    let page: Vec<Value> = matches.iter().skip(after).take(size).cloned().collect();
    let mut answer = json!({ "total": matches.len(), "results": page });
    if after + size < matches.len() {
        answer["paging"] = json!({ "next": { "after": (after + size).to_string() } });
    }
    Json(answer).into_response()
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

/// Stripe's API, in memory: customers, subscriptions, invoices, refunds, with idempotency keys.
#[derive(Clone)]
pub struct FakeStripe {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<StripeState>>,
}

/// A scripted answer, given instead of the real one.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Value,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

struct StripeState {
    key: String,
    objects: BTreeMap<String, Value>,
    next: u64,
    /// Idempotency key → (request fingerprint, status, answer).
    idempotent: HashMap<String, (String, u16, Value)>,
    /// Answers given (in order) before any real one.
    script: VecDeque<Scripted>,
    /// Refunds are made, then answered this late (a response lost to a client timeout).
    slow_refunds: Option<Duration>,
    page_size: usize,
    calls: Vec<Call>,
}

impl FakeStripe {
    /// A fake accepting secret key `key`.
    pub async fn start(key: &str) -> Self {
        let state = Arc::new(Mutex::new(StripeState {
            key: key.to_owned(),
            objects: BTreeMap::new(),
            next: 1,
            idempotent: HashMap::new(),
            script: VecDeque::new(),
            slow_refunds: None,
            page_size: 100,
            calls: Vec::new(),
        }));
        let app = Router::new()
            .fallback(any(stripe))
            .with_state(state.clone());
        Self {
            url: serve(app).await,
            state,
        }
    }

    /// Answers the next requests with these instead.
    pub fn script(&self, answers: Vec<Scripted>) {
        lock(&self.state).script.extend(answers);
    }

    /// Makes the first refund of each idempotency key, then answers it only after `delay`.
    pub fn slow_refunds(&self, delay: Duration) {
        lock(&self.state).slow_refunds = Some(delay);
    }

    /// Caps list pages at `n` objects.
    pub fn page_size(&self, n: usize) {
        lock(&self.state).page_size = n;
    }

    /// Adds an object (its `id` and `object` fields set by the caller).
    pub fn insert(&self, object: Value) {
        let id = object["id"].as_str().unwrap().to_owned();
        lock(&self.state).objects.insert(id, object);
    }

    /// An object by id.
    pub fn object(&self, id: &str) -> Option<Value> {
        lock(&self.state).objects.get(id).cloned()
    }

    /// The objects of a kind (`refund`, `customer`).
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        lock(&self.state)
            .objects
            .values()
            .filter(|o| o["object"] == kind)
            .cloned()
            .collect()
    }

    /// Every request received.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }
}

fn stripe_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> (u16, Value) {
    let mut error = json!({ "type": kind, "message": message });
    if let Some(c) = code {
        error["code"] = json!(c);
    }
    if let Some(p) = param {
        error["param"] = json!(p);
    }
    (status.as_u16(), json!({ "error": error }))
}

/// Stripe's form encoding back to JSON: `a[b]=1&a[c][0]=x` → `{"a": {"b": "1", "c": ["x"]}}`.
fn parse_form(pairs: &[(String, String)]) -> Value {
    let mut root = json!({});
    for (key, value) in pairs {
        let mut parts: Vec<String> = Vec::new();
        let (head, rest) = key
            .split_once('[')
            .map_or((key.as_str(), ""), |(h, r)| (h, r));
        parts.push(head.to_owned());
        for p in rest.split('[') {
            let p = p.trim_end_matches(']');
            if !p.is_empty() || !rest.is_empty() {
                parts.push(p.to_owned());
            }
        }
        let mut node = &mut root;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let next_is_index = parts.get(i + 1).is_some_and(|n| n.parse::<usize>().is_ok());
            let slot = match node {
                Value::Array(items) => {
                    let index: usize = part.parse().unwrap_or(items.len());
                    while items.len() <= index {
                        items.push(Value::Null);
                    }
                    &mut items[index]
                }
                other => {
                    if !other.is_object() {
                        *other = json!({});
                    }
                    other
                        .as_object_mut()
                        .unwrap()
                        .entry(part.clone())
                        .or_insert(Value::Null)
                }
            };
            if last {
                *slot = json!(value);
            } else if slot.is_null() {
                *slot = if next_is_index { json!([]) } else { json!({}) };
            }
            node = slot;
        }
    }
    root
}

async fn stripe(
    State(state): State<Arc<Mutex<StripeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    let (status, answer, extra, delay) = {
        let mut s = lock(&state);
        let (status, answer, extra) = stripe_answer(&mut s, &method, &uri, &headers, &text);
        let is_refund = method == Method::POST && uri.path() == "/v1/refunds";
        let delay = s.slow_refunds.filter(|_| {
            is_refund && status == 200 && !extra.iter().any(|(k, _)| *k == "idempotent-replayed")
        });
        s.calls.push(Call {
            method,
            path: uri.path().to_owned(),
            query: query_pairs(&uri),
            headers,
            body: text,
            status,
            at: Instant::now(),
        });
        (status, answer, extra, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = (StatusCode::from_u16(status).unwrap(), Json(answer)).into_response();
    response
        .headers_mut()
        .insert("request-id", "req_fake".parse().unwrap());
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

type Answer = (u16, Value, Vec<(&'static str, String)>);

fn stripe_answer(
    s: &mut StripeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Answer {
    let bearer = format!("Bearer {}", s.key);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
        let (st, b) = stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided.",
            None,
        );
        return (st, b, vec![]);
    }
    if let Some(version) = headers.get("stripe-version").and_then(|v| v.to_str().ok()) {
        let date = version.split('.').next().unwrap_or_default();
        let valid = date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !valid {
            let (st, b) = stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &format!("Invalid Stripe API version: {version}"),
                None,
            );
            return (st, b, vec![]);
        }
    }
    let mutating = *method == Method::POST || *method == Method::DELETE;
    if *method == Method::POST && !body.is_empty() {
        let form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if !form {
            let (st, b) = stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "Stripe takes form-encoded bodies",
                None,
            );
            return (st, b, vec![]);
        }
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fingerprint = format!("{method} {} {body}", uri.path());
    if let (true, Some(k)) = (mutating, &key) {
        if let Some((seen, status, answer)) = s.idempotent.get(k) {
            if *seen != fingerprint {
                let (st, b) = stripe_error(StatusCode::BAD_REQUEST, "idempotency_error", None, "Keys for idempotent requests can only be used with the same parameters they were first used with.", None);
                return (st, b, vec![]);
            }
            return (
                *status,
                answer.clone(),
                vec![("idempotent-replayed", "true".into())],
            );
        }
    }
    if let Some(scripted) = s.script.pop_front() {
        // Stripe saves the answer of a request that started executing (a card decline, a
        // validation error), not of one refused before (a lock timeout, a rate limit).
        let executed = scripted.status < 500 && !matches!(scripted.status, 409 | 429);
        if let (true, true, Some(k)) = (executed, mutating, &key) {
            let saved = (fingerprint, scripted.status, scripted.body.clone());
            s.idempotent.insert(k.clone(), saved);
        }
        return (scripted.status, scripted.body, scripted.headers);
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut params = parse_form(&pairs);
    let query_pairs = query_pairs(uri);
    let query = parse_form(&query_pairs);
    let expand: Vec<String> = params["expand"]
        .as_array()
        .or(query["expand"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if let Some(o) = params.as_object_mut() {
        o.remove("expand");
    }
    let parts = path_segments(uri);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let (status, mut answer) = match (method.as_str(), parts.as_slice()) {
        ("GET", ["v1", "customers"]) => {
            // The list's `email` filter: exact and case-sensitive, and consistent at once.
            let email = query["email"].as_str();
            let limit = query["limit"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(10usize);
            let data: Vec<Value> = s
                .objects
                .values()
                .filter(|o| o["object"] == "customer")
                .filter(|o| email.is_none_or(|e| o["email"] == e))
                .take(limit)
                .cloned()
                .collect();
            (
                200,
                json!({ "object": "list", "data": data, "has_more": false, "url": "/v1/customers" }),
            )
        }
        ("POST", ["v1", "customers"]) => {
            let id = format!("cus_{}", s.next);
            s.next += 1;
            let mut customer = json!({ "id": id, "object": "customer", "metadata": {} });
            merge(&mut customer, &params);
            s.objects.insert(id, customer.clone());
            (200, customer)
        }
        ("POST", ["v1", "refunds"]) => {
            if params["payment_intent"].is_null() && params["charge"].is_null() {
                stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    "Must provide either payment_intent or charge.",
                    Some("payment_intent"),
                )
            } else {
                let id = format!("re_{}", s.next);
                s.next += 1;
                let mut refund = json!({ "id": id, "object": "refund", "status": "succeeded" });
                merge(&mut refund, &params);
                s.objects.insert(id, refund.clone());
                (200, refund)
            }
        }
        ("GET", ["v1", "invoices"]) => {
            let customer = query["customer"].as_str().unwrap_or_default();
            let limit = query["limit"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(10usize)
                .min(s.page_size);
            let mut all: Vec<Value> = s
                .objects
                .values()
                .filter(|o| o["object"] == "invoice" && o["customer"] == customer)
                .cloned()
                .collect();
            all.sort_by(|a, b| b["created"].as_i64().cmp(&a["created"].as_i64()));
            let start = match query["starting_after"].as_str() {
                Some(after) => all
                    .iter()
                    .position(|i| i["id"] == after)
                    .map_or(all.len(), |p| p + 1),
                None => 0,
            };
            let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
            let has_more = start + page.len() < all.len();
            (
                200,
                json!({ "object": "list", "data": page, "has_more": has_more, "url": "/v1/invoices" }),
            )
        }
        (m, ["v1", kind @ ("customers" | "subscriptions" | "invoices"), id]) => {
            let Some(mut object) = s.objects.get(*id).cloned() else {
                let (st, b) = stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such {}: '{id}'", kind.trim_end_matches('s')),
                    Some("id"),
                );
                return (st, b, vec![]);
            };
            match m {
                "GET" => (200, object),
                "POST" => {
                    if let Some(items) = params.get("items").and_then(Value::as_array).cloned() {
                        let current = object["items"]["data"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let mut data = Vec::new();
                        for change in items {
                            let Some(mut item) =
                                current.iter().find(|i| i["id"] == change["id"]).cloned()
                            else {
                                let (st, b) = stripe_error(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_request_error",
                                    Some("resource_missing"),
                                    "No such subscription item",
                                    Some("items[0][id]"),
                                );
                                return (st, b, vec![]);
                            };
                            item["price"] = json!({ "id": change["price"], "object": "price" });
                            if let Some(q) = change["quantity"].as_str() {
                                item["quantity"] = json!(q.parse::<u64>().unwrap_or(1));
                            }
                            data.push(item);
                        }
                        object["items"]["data"] = json!(data);
                        params.as_object_mut().unwrap().remove("items");
                    }
                    if params["cancel_at_period_end"] == "true" {
                        object["cancel_at_period_end"] = json!(true);
                        params
                            .as_object_mut()
                            .unwrap()
                            .remove("cancel_at_period_end");
                    }
                    merge(&mut object, &params);
                    s.objects.insert(id.to_string(), object.clone());
                    (200, object)
                }
                "DELETE" if *kind == "subscriptions" => {
                    object["status"] = json!("canceled");
                    s.objects.insert(id.to_string(), object.clone());
                    (200, object)
                }
                _ => stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    None,
                    "Unrecognized request URL",
                    None,
                ),
            }
        }
        _ => stripe_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({method}: {})", uri.path()),
            None,
        ),
    };
    if status == 200 && expand.iter().any(|e| e == "customer") {
        if let Some(customer) = answer["customer"].as_str().and_then(|c| s.objects.get(c)) {
            answer["customer"] = customer.clone();
        }
    }
    if let (true, Some(k)) = (mutating, key) {
        s.idempotent
            .insert(k, (fingerprint, status, answer.clone()));
    }
    (status, answer, vec![])
}

/// Sets `params`' fields on `object`, nested objects merged (Stripe's `metadata[x]` updates).
fn merge(object: &mut Value, params: &Value) {
    for (k, v) in params.as_object().into_iter().flatten() {
        match (object.get_mut(k), v) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => merge(existing, v),
            _ => object[k] = v.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An enrichment API (the shape of a Clearbit-style person lookup)
// ---------------------------------------------------------------------------------------------

/// A person-enrichment API: `GET /v1/people?email=` answers a title and a company.
pub async fn enrichment() -> String {
    async fn person(uri: Uri) -> Response {
        let query: HashMap<String, String> = query_pairs(&uri).into_iter().collect();
        let email = query.get("email").cloned().unwrap_or_default();
        let domain = email.split('@').nth(1).unwrap_or_default().to_owned();
        Json(json!({
            "email": email,
            "person": { "title": "Head of Revenue Operations" },
            "company": { "name": format!("{} Inc", domain.split('.').next().unwrap_or_default()), "employees": 250 },
        }))
        .into_response()
    }
    serve(Router::new().route("/v1/people", axum::routing::get(person))).await
}

// ---------------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------------

/// Slack's Web API (`chat.postMessage`, `chat.update`, `conversations.open`,
/// `users.lookupByEmail`) and an incoming webhook (`/services/T000/B000/XXXX`), in memory. As Slack
/// documents: the Web API answers `200 {"ok": false, "error": …}` for most failures (a bad token,
/// an unknown channel, a channel the app is not in, no text), `429 {"ok": false, "error":
/// "ratelimited"}` with `Retry-After`; the webhook answers plain-text codes with 4xx statuses.
#[derive(Clone)]
pub struct FakeSlack {
    /// `http://127.0.0.1:PORT/api` (the Web API's base URL).
    pub url: String,
    /// The incoming webhook's URL.
    pub webhook_url: String,
    state: Arc<Mutex<SlackState>>,
}

struct SlackState {
    token: String,
    /// Channel id → (name, whether the app is a member).
    channels: BTreeMap<String, (String, bool)>,
    /// User id → email.
    users: BTreeMap<String, String>,
    /// Messages posted: channel, ts, the request's JSON.
    messages: Vec<(String, String, Value)>,
    /// 429s to answer before anything else.
    rate_limited: usize,
    next_ts: u64,
    calls: Vec<Call>,
}

impl FakeSlack {
    /// A fake accepting bot token `token`, with a channel `C0SALES` (`#sales`, the app a member),
    /// `C0OTHER` (`#other`, the app not invited) and a user `U0JANE` (`jane@acme.com`).
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(SlackState {
            token: token.to_owned(),
            channels: BTreeMap::from([
                ("C0SALES".to_owned(), ("sales".to_owned(), true)),
                ("C0OTHER".to_owned(), ("other".to_owned(), false)),
            ]),
            users: BTreeMap::from([("U0JANE".to_owned(), "jane@acme.com".to_owned())]),
            messages: Vec::new(),
            rate_limited: 0,
            next_ts: 1,
            calls: Vec::new(),
        }));
        let app = Router::new().fallback(any(slack)).with_state(state.clone());
        let base = serve(app).await;
        Self {
            url: format!("{base}/api"),
            webhook_url: format!("{base}/services/T000/B000/XXXX"),
            state,
        }
    }

    /// Answers the next `n` calls `429 ratelimited` (`Retry-After: 1`).
    pub fn rate_limit(&self, n: usize) {
        lock(&self.state).rate_limited = n;
    }

    /// The messages posted or updated: (channel, ts, the last request's JSON).
    pub fn messages(&self) -> Vec<(String, String, Value)> {
        lock(&self.state).messages.clone()
    }

    /// Every request received.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }
}

async fn slack(
    State(state): State<Arc<Mutex<SlackState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let text = String::from_utf8_lossy(&body).into_owned();
    let response = slack_answer(&mut s, &method, &uri, &headers, &text);
    s.calls.push(Call {
        method,
        path: uri.path().to_owned(),
        query: query_pairs(&uri),
        headers,
        body: text,
        status: response.status().as_u16(),
        at: Instant::now(),
    });
    response
}

fn slack_error(error: &str) -> Response {
    Json(json!({ "ok": false, "error": error })).into_response()
}

fn slack_answer(
    s: &mut SlackState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Response {
    if s.rate_limited > 0 {
        s.rate_limited -= 1;
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "ok": false, "error": "ratelimited" })),
        )
            .into_response();
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
        return r;
    }
    let path = uri.path().to_owned();
    let input: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if path.starts_with("/services/") {
        // An incoming webhook: plain-text answers.
        let plain = |status: StatusCode, text: &'static str| (status, text).into_response();
        if method != Method::POST || input.is_null() {
            return plain(StatusCode::BAD_REQUEST, "invalid_payload");
        }
        if input["text"].is_null() && input["blocks"].is_null() {
            return plain(StatusCode::BAD_REQUEST, "no_text");
        }
        let ts = next_ts(s);
        s.messages.push(("webhook".into(), ts, input));
        return plain(StatusCode::OK, "ok");
    }
    let bearer = format!("Bearer {}", s.token);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => return slack_error("not_authed"),
        Some(given) if given != bearer => return slack_error("invalid_auth"),
        Some(_) => {}
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if method == Method::POST && !json_body {
        return slack_error("invalid_form_data");
    }
    let channel_id = |s: &SlackState, given: &str| -> Option<String> {
        let name = given.trim_start_matches('#');
        s.channels
            .iter()
            .find(|(id, (n, _))| id.as_str() == given || n == name)
            .map(|(id, _)| id.clone())
            .or_else(|| given.starts_with('D').then(|| given.to_owned()))
    };
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/chat.postMessage") => {
            let Some(id) = channel_id(s, input["channel"].as_str().unwrap_or_default()) else {
                return slack_error("channel_not_found");
            };
            if s.channels.get(&id).is_some_and(|(_, member)| !member) {
                return slack_error("not_in_channel");
            }
            if input["text"].is_null() && input["blocks"].is_null() {
                return slack_error("no_text");
            }
            if !input["blocks"].is_null() && !input["blocks"].is_array() {
                return slack_error("invalid_blocks");
            }
            let ts = next_ts(s);
            s.messages.push((id.clone(), ts.clone(), input.clone()));
            let mut message = input;
            message["type"] = json!("message");
            message["ts"] = json!(ts);
            if let Some(m) = message.as_object_mut() {
                m.remove("channel");
            }
            Json(json!({ "ok": true, "channel": id, "ts": ts, "message": message })).into_response()
        }
        ("POST", "/api/chat.update") => {
            let Some(id) = channel_id(s, input["channel"].as_str().unwrap_or_default()) else {
                return slack_error("channel_not_found");
            };
            let ts = input["ts"].as_str().unwrap_or_default().to_owned();
            let Some(found) = s.messages.iter_mut().find(|(c, t, _)| *c == id && *t == ts) else {
                return slack_error("message_not_found");
            };
            found.2 = input.clone();
            Json(json!({ "ok": true, "channel": id, "ts": ts, "text": input["text"] }))
                .into_response()
        }
        ("POST", "/api/conversations.open") => {
            let user = input["users"].as_str().unwrap_or_default();
            if !s.users.contains_key(user) {
                return slack_error("user_not_found");
            }
            let dm = format!("D{}", user.trim_start_matches('U'));
            Json(json!({ "ok": true, "channel": { "id": dm } })).into_response()
        }
        ("GET", "/api/users.lookupByEmail") => {
            let email = query_pairs(uri)
                .into_iter()
                .find(|(k, _)| k == "email")
                .map(|(_, v)| v)
                .unwrap_or_default();
            match s.users.iter().find(|(_, e)| **e == email) {
                Some((id, email)) => Json(json!({
                    "ok": true,
                    "user": { "id": id, "profile": { "email": email }, "is_bot": false },
                }))
                .into_response(),
                None => slack_error("users_not_found"),
            }
        }
        _ => slack_error("unknown_method"),
    }
}

fn next_ts(s: &mut SlackState) -> String {
    s.next_ts += 1;
    format!("1700000000.{:06}", s.next_ts)
}

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

/// An SMTP server (RFC 5321) on 127.0.0.1, without TLS: `EHLO`, `AUTH PLAIN` (RFC 4616), `MAIL`,
/// `RCPT`, `DATA`, `RSET`, `NOOP`, `QUIT`. It refuses a recipient `bounce@…` for good
/// (`550 5.1.1`), answers `busy@…` with a temporary failure (`451 4.3.0`) once, and refuses other
/// credentials than its own (`535 5.7.8`).
#[derive(Clone)]
pub struct FakeSmtp {
    /// The port it listens on.
    pub port: u16,
    state: Arc<Mutex<SmtpState>>,
}

/// One message the fake accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM`'s address.
    pub from: String,
    /// Every `RCPT TO` address.
    pub to: Vec<String>,
    /// The message as sent after `DATA` (headers and body).
    pub data: String,
}

struct SmtpState {
    user: String,
    password: String,
    busy_refused: bool,
    mail: Vec<Mail>,
    logins: Vec<(String, String)>,
}

impl FakeSmtp {
    /// A server accepting `user` and `password`.
    pub async fn start(user: &str, password: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(SmtpState {
            user: user.to_owned(),
            password: password.to_owned(),
            busy_refused: false,
            mail: Vec::new(),
            logins: Vec::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(smtp_session(stream, shared.clone()));
            }
        });
        Self { port, state }
    }

    /// The messages accepted.
    pub fn mail(&self) -> Vec<Mail> {
        lock(&self.state).mail.clone()
    }

    /// The credentials clients logged in with.
    pub fn logins(&self) -> Vec<(String, String)> {
        lock(&self.state).logins.clone()
    }
}

async fn smtp_session(stream: tokio::net::TcpStream, state: Arc<Mutex<SmtpState>>) {
    use base64::Engine as _;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    async fn reply(w: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> std::io::Result<()> {
        w.write_all(format!("{text}\r\n").as_bytes()).await
    }
    if reply(&mut write, "220 fake.test ESMTP").await.is_err() {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let answer = if upper.starts_with("EHLO") {
            "250-fake.test\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8".to_owned()
        } else if upper.starts_with("AUTH PLAIN") {
            let given = command[10..].trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(given)
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let (user, password) = (
                parts.get(1).cloned().unwrap_or_default(),
                parts.get(2).cloned().unwrap_or_default(),
            );
            let mut s = lock(&state);
            s.logins.push((user.clone(), password.clone()));
            if user == s.user && password == s.password {
                "235 2.7.0 Authentication successful".to_owned()
            } else {
                "535 5.7.8 Authentication credentials invalid".to_owned()
            }
        } else if upper.starts_with("MAIL FROM:") {
            // `MAIL FROM:<a@b> BODY=8BITMIME`: the address, without parameters.
            let path = command[10..].split_whitespace().next().unwrap_or_default();
            from = path.trim_matches(['<', '>']).to_owned();
            to.clear();
            "250 2.1.0 Ok".to_owned()
        } else if upper.starts_with("RCPT TO:") {
            let address = command[8..].trim().trim_matches(['<', '>']).to_owned();
            let mut s = lock(&state);
            if address.starts_with("bounce@") {
                "550 5.1.1 No such user here".to_owned()
            } else if address.starts_with("busy@") && !s.busy_refused {
                s.busy_refused = true;
                "451 4.3.0 Mailbox temporarily unavailable, try again later".to_owned()
            } else {
                to.push(address);
                "250 2.1.5 Ok".to_owned()
            }
        } else if upper == "DATA" {
            if reply(&mut write, "354 End data with <CR><LF>.<CR><LF>")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                // Dot-stuffing (RFC 5321 4.5.2): a leading `..` stands for `.`.
                data.push_str(
                    line.strip_prefix('.')
                        .filter(|_| line.starts_with(".."))
                        .unwrap_or(&line),
                );
            }
            lock(&state).mail.push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            "250 2.0.0 Ok: queued as FAKE1".to_owned()
        } else if upper == "QUIT" {
            let _ = reply(&mut write, "221 2.0.0 Bye").await;
            return;
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok".to_owned()
        } else {
            "502 5.5.2 Command not recognized".to_owned()
        };
        if reply(&mut write, &answer).await.is_err() {
            return;
        }
    }
}
