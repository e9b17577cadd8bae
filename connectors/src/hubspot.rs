//! `hubspot`: CRM actions on HubSpot's v3 API (v4 for associations) with a private-app token.
//!
//! A step names one action: `create`, `update`, `get`, `search` (any object type: contacts,
//! companies, deals, …), `upsert_contact` and `upsert_contacts` (by email, create or update in one
//! call), `associate`, `add_note` and `add_task`. The token is `HUBSPOT_TOKEN` (or
//! `HUBSPOT_<ACCOUNT>_TOKEN` with `account:`), the API `HUBSPOT_BASE_URL` (default
//! `https://api.hubapi.com`). HubSpot's rate-limit headers (ten-secondly and daily) pace every call
//! of the account, and search calls are also paced by search's own per-second limit; its error JSON
//! (category, message, validation errors) becomes the step's error.
//!
//! HubSpot has no idempotency keys: creates (`create`, `add_note`, `add_task`) are not retried after
//! a lost answer unless the step sets `retry_creates`. A batch upsert that HubSpot answers
//! `207 Multi-Status` fails the step with each refused contact's error.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use hookflow_engine::expr::{Templates, ValueExpr};
use hookflow_engine::model::Timestamp;
use hookflow_engine::pacing::Observation;
use hookflow_engine::steps::{
    Action, BuildContext, ExecContext, Outcome, Registry, StepError, StepKind,
};
use reqwest::header::HeaderMap;
use reqwest::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{
    self, call, collect, dry_run, header_number, http_error, outcome, render_action, required,
    segment, text, Account, CallError, Next, Paging, Place, Request, Rule, Service,
};
use crate::{config, Connector};

/// The HubSpot connector.
pub struct HubSpotConnector;

impl Connector for HubSpotConnector {
    fn name(&self) -> &'static str {
        "hubspot"
    }

    fn register(&self, registry: &mut Registry) {
        registry.register::<HubSpotSpec>();
    }
}

/// HubSpot as an API [`Service`].
pub struct HubSpot;

/// The most records HubSpot's batch endpoints take per call.
const BATCH: usize = 100;

/// The most results one search page holds.
const SEARCH_PAGE: u64 = 200;

/// How long a spent daily allowance holds the account's calls.
const DAILY_HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

/// HubSpot's search endpoints' own limit (five calls per second per account; their answers carry
/// no rate-limit headers), paced evenly: one call per 200 ms.
fn search_rule() -> Rule {
    Rule {
        name: "search".into(),
        max: 1,
        window: std::time::Duration::from_millis(200),
    }
}

/// How many search results a step collects by default, and at most (HubSpot's own cap).
const SEARCH_DEFAULT: u64 = 100;
const SEARCH_MAX: u64 = 10_000;

impl Service for HubSpot {
    const NAME: &'static str = "HubSpot";
    const ENV: &'static str = "HUBSPOT";
    const CREDENTIAL: &'static str = "TOKEN";
    const BASE_URL: &'static str = "https://api.hubapi.com";
    /// A public app's accounts use OAuth 2: `HUBSPOT_REFRESH_TOKEN`, `HUBSPOT_CLIENT_ID`,
    /// `HUBSPOT_CLIENT_SECRET` instead of `HUBSPOT_TOKEN`.
    const OAUTH_TOKEN_PATH: Option<&'static str> = Some("/oauth/v1/token");

    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation> {
        let number = |name| header_number(headers, name);
        // The daily allowance resets at midnight in the account's time zone, which hookflow does
        // not know: a spent one holds the account's calls for an hour, then a call probes again.
        if number("x-hubspot-ratelimit-daily-remaining") == Some(0) {
            return vec![Observation::Limited { wait: DAILY_HOLD }];
        }
        if status == 429 {
            let wait = api::retry_after(headers)
                .or_else(|| number("x-hubspot-ratelimit-interval-milliseconds").map(millis))
                .unwrap_or(std::time::Duration::from_secs(10));
            return vec![Observation::Limited { wait }];
        }
        let Some(remaining) = number("x-hubspot-ratelimit-remaining") else {
            return Vec::new();
        };
        let max = number("x-hubspot-ratelimit-max").unwrap_or(remaining);
        let window = number("x-hubspot-ratelimit-interval-milliseconds")
            .map_or(std::time::Duration::from_secs(10), millis);
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        vec![Observation::Remaining {
            max: count(max),
            remaining: count(remaining),
            window,
        }]
    }

    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
        let category = body["category"]
            .as_str()
            .or_else(|| body["errorType"].as_str())
            .unwrap_or("ERROR");
        let message = body["message"]
            .as_str()
            .map_or_else(|| api::scalar(body), str::to_owned);
        let details: Vec<String> = body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let message = e["message"].as_str()?;
                let property = e["context"]["propertyName"][0].as_str();
                Some(match property {
                    Some(p) => format!("{p}: {message}"),
                    None => message.to_owned(),
                })
            })
            .collect();
        let mut text = format!("HubSpot answered {status} {category}: {message}");
        if !details.is_empty() {
            text = format!("{text} ({})", details.join("; "));
        }
        let detail = json!({
            "status": status,
            "category": category,
            "message": message,
            "errors": body["errors"],
            "correlation_id": body["correlationId"],
        });
        let retryable = status >= 500 || matches!(status, 408 | 429);
        http_error(status, headers, text, detail, retryable)
    }
}

fn millis(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms.max(1))
}

/// Call HubSpot's CRM: give `account` (optional) and exactly one action.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpotSpec {
    /// Which HubSpot account: its token is read from `HUBSPOT_<ACCOUNT>_TOKEN` (default:
    /// `HUBSPOT_TOKEN`).
    #[serde(default)]
    pub account: Option<String>,
    /// Retry `create`, `add_note` and `add_task` after an answer was lost (a timeout, a 5xx).
    /// HubSpot has no idempotency keys, so such a retry may make a duplicate; by default the step
    /// fails instead, for a manual retry once you have checked HubSpot. Rate limits (429) and
    /// every other action are always retried.
    #[serde(default)]
    pub retry_creates: bool,
    /// Create a record.
    #[serde(default)]
    pub create: Option<Create>,
    /// Update a record's properties.
    #[serde(default)]
    pub update: Option<Update>,
    /// Read a record by id or email.
    #[serde(default)]
    pub get: Option<Get>,
    /// Search records by property filters, paging through the results.
    #[serde(default)]
    pub search: Option<Search>,
    /// Create or update the contact with this email, in one call.
    #[serde(default)]
    pub upsert_contact: Option<UpsertContact>,
    /// Create or update many contacts by email (100 per call).
    #[serde(default)]
    pub upsert_contacts: Option<UpsertContacts>,
    /// Associate two records (HubSpot's default association).
    #[serde(default)]
    pub associate: Option<Associate>,
    /// Add a note to a record.
    #[serde(default)]
    pub add_note: Option<AddNote>,
    /// Add a task to a record (e.g. for its owner).
    #[serde(default)]
    pub add_task: Option<AddTask>,
}

fn contacts() -> String {
    "contacts".into()
}

/// Create a record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Create {
    /// The object type: `contacts` (default), `companies`, `deals`, `tickets` or a custom object.
    #[serde(default = "contacts")]
    pub object: String,
    /// Property values (templates).
    pub properties: BTreeMap<String, Value>,
}

/// Update a record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// The object type (default `contacts`).
    #[serde(default = "contacts")]
    pub object: String,
    /// The record's id (or the value of `id_property`).
    pub id: String,
    /// A unique property `id` is a value of (e.g. `email`), instead of the record id.
    #[serde(default)]
    pub id_property: Option<String>,
    /// Property values to set (templates); `$clear` clears one (a value that resolves to nothing
    /// is left out).
    pub properties: BTreeMap<String, Value>,
}

/// Read one record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Get {
    /// The object type (default `contacts`).
    #[serde(default = "contacts")]
    pub object: String,
    /// The record's id.
    #[serde(default)]
    pub id: Option<String>,
    /// Or a contact's email.
    #[serde(default)]
    pub email: Option<String>,
    /// The properties to return (HubSpot's defaults when empty).
    #[serde(default)]
    pub properties: Vec<String>,
}

/// Search records.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// The object type (default `contacts`).
    #[serde(default = "contacts")]
    pub object: String,
    /// Conditions that must all hold.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// The properties to return.
    #[serde(default)]
    pub properties: Vec<String>,
    /// Sort by a property: `createdate` or `-createdate` (descending).
    #[serde(default)]
    pub sort: Option<String>,
    /// The most results to collect, across pages (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One search condition.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The property.
    pub property: String,
    /// `EQ` (default), `NEQ`, `LT`, `LTE`, `GT`, `GTE`, `BETWEEN`, `IN`, `NOT_IN`,
    /// `CONTAINS_TOKEN`, `NOT_CONTAINS_TOKEN`, `HAS_PROPERTY`, `NOT_HAS_PROPERTY`.
    #[serde(default = "eq")]
    pub operator: String,
    /// The value (a template); for `BETWEEN`, the low end.
    #[serde(default)]
    pub value: Option<Value>,
    /// `BETWEEN`'s high end.
    #[serde(default)]
    pub high_value: Option<Value>,
    /// `IN` and `NOT_IN`'s values (a list, or a lone `{{path}}` to one).
    #[serde(default)]
    pub values: Option<Value>,
}

fn eq() -> String {
    "EQ".into()
}

/// Create or update a contact by email.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertContact {
    /// The contact's email (a template).
    pub email: String,
    /// Property values (templates).
    #[serde(default)]
    pub properties: BTreeMap<String, Value>,
}

/// Create or update many contacts by email.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertContacts {
    /// A list of `{email, properties}` (or a lone `{{path}}` to such a list).
    pub contacts: Value,
}

/// A record, by object type and id.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The object type (default `contacts`).
    #[serde(default = "contacts")]
    pub object: String,
    /// The record's id (a template).
    pub id: String,
}

/// Associate two records.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Associate {
    /// One record.
    pub from: Record,
    /// The other.
    pub to: Record,
}

/// A note on a record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNote {
    /// The record the note is on (a contact, company, deal or ticket).
    pub to: Record,
    /// The note's text (a template; HTML allowed).
    pub body: String,
}

/// A task on a record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTask {
    /// The record the task is about (a contact, company, deal or ticket).
    pub to: Record,
    /// The task's title.
    pub subject: String,
    /// Its description.
    #[serde(default)]
    pub body: Option<String>,
    /// When it is due (RFC 3339 or epoch milliseconds; default: now).
    #[serde(default)]
    pub due: Option<String>,
    /// The HubSpot owner id to assign it to.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// `LOW`, `MEDIUM` or `HIGH`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// The actions, by their YAML key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    Get,
    Search,
    UpsertContact,
    UpsertContacts,
    Associate,
    AddNote,
    AddTask,
}

impl StepKind for HubSpotSpec {
    const KIND: &'static str = "hubspot";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let actions = [
            (Op::Create, "create", config(&self.create)),
            (Op::Update, "update", config(&self.update)),
            (Op::Get, "get", config(&self.get)),
            (Op::Search, "search", config(&self.search)),
            (
                Op::UpsertContact,
                "upsert_contact",
                config(&self.upsert_contact),
            ),
            (
                Op::UpsertContacts,
                "upsert_contacts",
                config(&self.upsert_contacts),
            ),
            (Op::Associate, "associate", config(&self.associate)),
            (Op::AddNote, "add_note", config(&self.add_note)),
            (Op::AddTask, "add_task", config(&self.add_task)),
        ];
        let (op, name, params) = crate::one_action(cx, actions)?;
        if let Some(get) = &self.get {
            if get.id.is_some() == get.email.is_some() {
                cx.error("get", "give `id` or `email`");
            }
        }
        for (i, f) in self.search.iter().flat_map(|s| &s.filters).enumerate() {
            let at = format!("search.filters[{i}]");
            let problem = match f.operator.as_str() {
                "IN" | "NOT_IN" if f.values.is_none() || f.value.is_some() => {
                    Some("`IN` and `NOT_IN` take `values: [..]`, not `value`")
                }
                "BETWEEN" if f.value.is_none() || f.high_value.is_none() => {
                    Some("`BETWEEN` takes `value` (the low end) and `high_value`")
                }
                "IN" | "NOT_IN" | "BETWEEN" => None,
                _ if f.values.is_some() || f.high_value.is_some() => {
                    Some("`values` is for `IN`/`NOT_IN` and `high_value` for `BETWEEN`")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                cx.error(&at, problem);
            }
        }
        if let Some(limit) = self.search.as_ref().and_then(|s| s.limit) {
            if limit == 0 || limit > SEARCH_MAX {
                cx.error("search.limit", format!("must be 1 to {SEARCH_MAX}"));
            }
        }
        let account = Account::resolve::<HubSpot>(cx, self.account.as_deref());
        let params = cx.value(name, &params);
        Some(Arc::new(HubSpotStep {
            op,
            name,
            retry_creates: self.retry_creates,
            account: account?,
            params: params?,
        }))
    }
}

#[derive(Debug)]
struct HubSpotStep {
    op: Op,
    name: &'static str,
    retry_creates: bool,
    account: Account,
    params: ValueExpr,
}

#[async_trait]
impl Action for HubSpotStep {
    /// `{action, …the action's rendered fields}`; a note's time and a task's due time are fixed
    /// here (default: now), so a retry resends the same request.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let mut input = render_action(self.name, &self.params, t, ctx)?;
        match self.op {
            Op::AddNote => input["timestamp"] = json!(Timestamp::now().to_rfc3339()),
            Op::AddTask => input["due"] = json!(due_time(&input["due"])?),
            _ => {}
        }
        Ok(input)
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        if cx.dry_run {
            return Ok(dry_run(input));
        }
        let result = self.run(&input, cx).await;
        outcome::<HubSpot>(result.map_err(|e| match e {
            CallError::Failed(e) if !self.may_repeat() => CallError::Failed(once(e)),
            other => other,
        }))
    }

    fn may_repeat(&self) -> bool {
        self.retry_creates || !matches!(self.op, Op::Create | Op::AddNote | Op::AddTask)
    }
}

/// The error of a create that may have reached HubSpot: not retried (a retry could duplicate the
/// record), except a rate limit, which HubSpot refused before doing anything.
fn once(mut e: StepError) -> StepError {
    if e.retryable && e.http_status != Some(429) {
        e.retryable = false;
        e.message = format!(
            "{} (not retried: HubSpot has no idempotency keys, so a retry could create a \
             duplicate; check HubSpot, then retry the run, or set `retry_creates: true`)",
            e.message
        );
    }
    e
}

impl HubSpotStep {
    async fn run(&self, input: &Value, cx: &ExecContext) -> Result<Value, CallError> {
        let object = segment(&text(input, "object"));
        let call = |request| call::<HubSpot>(cx, &self.account, request);
        match self.op {
            Op::Create => {
                let body = json!({ "properties": properties(&input["properties"]) });
                call(Request::new(Method::POST, format!("/crm/v3/objects/{object}")).json(body))
                    .await
            }
            Op::Update => {
                let id = segment(&required(input, "id", "the record's id")?);
                let mut request =
                    Request::new(Method::PATCH, format!("/crm/v3/objects/{object}/{id}"))
                        .json(json!({ "properties": properties(&input["properties"]) }));
                if let Some(p) = input["id_property"].as_str() {
                    request = request.query(vec![("idProperty".into(), p.into())]);
                }
                call(request).await
            }
            Op::Get => {
                let (id, by) = match input["email"].as_str() {
                    Some(_) => (required(input, "email", "the contact's email")?, "email"),
                    None => (required(input, "id", "the record's id")?, ""),
                };
                let mut query = Vec::new();
                if !by.is_empty() {
                    query.push(("idProperty".to_owned(), by.to_owned()));
                }
                if let Some(list) = input["properties"].as_array().filter(|l| !l.is_empty()) {
                    let names: Vec<String> = list.iter().map(api::scalar).collect();
                    query.push(("properties".to_owned(), names.join(",")));
                }
                let path = format!("/crm/v3/objects/{object}/{}", segment(&id));
                call(Request::new(Method::GET, path).query(query)).await
            }
            Op::Search => self.search(input, &object, cx).await,
            Op::UpsertContact => {
                let email = required(input, "email", "the contact's email")?;
                let contact = json!({ "email": email, "properties": input["properties"] });
                let mut results = self.upsert(vec![contact], cx).await?;
                Ok(results.swap_remove(0))
            }
            Op::UpsertContacts => {
                let Some(list) = input["contacts"].as_array() else {
                    return Err(StepError::permanent(
                        "`contacts` must be a list of {email, properties}",
                    )
                    .into());
                };
                let results = self.upsert(list.clone(), cx).await?;
                Ok(json!({ "results": results }))
            }
            Op::Associate => {
                let part = |side: &str| -> Result<(String, String), StepError> {
                    let record = &input[side];
                    let id = required(record, "id", &format!("the `{side}` record's id"))?;
                    Ok((segment(&text(record, "object")), segment(&id)))
                };
                let ((from, from_id), (to, to_id)) = (part("from")?, part("to")?);
                let path =
                    format!("/crm/v4/objects/{from}/{from_id}/associations/default/{to}/{to_id}");
                call(Request::new(Method::PUT, path)).await
            }
            Op::AddNote => {
                let properties = json!({
                    "hs_note_body": text(input, "body"),
                    "hs_timestamp": input["timestamp"],
                });
                self.engagement("notes", properties, input, cx).await
            }
            Op::AddTask => {
                let mut properties = json!({
                    "hs_task_subject": required(input, "subject", "the task's subject")?,
                    "hs_task_status": "NOT_STARTED",
                    "hs_timestamp": input["due"],
                });
                for (field, property) in [
                    ("body", "hs_task_body"),
                    ("owner_id", "hubspot_owner_id"),
                    ("priority", "hs_task_priority"),
                ] {
                    let value = text(input, field);
                    if !value.is_empty() {
                        properties[property] = json!(value);
                    }
                }
                self.engagement("tasks", properties, input, cx).await
            }
        }
    }

    /// Collects search results page by page up to the limit: `{total, results}`.
    async fn search(
        &self,
        input: &Value,
        object: &str,
        cx: &ExecContext,
    ) -> Result<Value, CallError> {
        let filters: Vec<Value> = input["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let mut filter =
                    json!({ "propertyName": f["property"], "operator": f["operator"] });
                if let Some(values) = f["values"].as_array() {
                    let values: Vec<String> = values.iter().map(api::scalar).collect();
                    filter["values"] = json!(values);
                }
                for (field, name) in [("value", "value"), ("high_value", "highValue")] {
                    if !f[field].is_null() {
                        filter[name] = json!(api::scalar(&f[field]));
                    }
                }
                filter
            })
            .collect();
        let limit = input["limit"].as_u64().unwrap_or(SEARCH_DEFAULT);
        let mut body = json!({
            "filterGroups": if filters.is_empty() { json!([]) } else { json!([{ "filters": filters }]) },
            "properties": input["properties"],
        });
        if let Some(sort) = input["sort"].as_str().filter(|s| !s.is_empty()) {
            let (name, direction) = match sort.strip_prefix('-') {
                Some(name) => (name, "DESCENDING"),
                None => (sort, "ASCENDING"),
            };
            body["sorts"] = json!([{ "propertyName": name, "direction": direction }]);
        }
        let paging = Paging {
            items: "/results",
            size: Some((Place::Body("limit"), SEARCH_PAGE)),
            next: Next::Cursor {
                at: "/paging/next/after",
                to: Place::Body("after"),
            },
        };
        let first = Request::new(Method::POST, format!("/crm/v3/objects/{object}/search"))
            .json(body)
            .paced(search_rule());
        let (results, last) = collect::<HubSpot>(cx, &self.account, first, paging, limit).await?;
        let total = last["total"].clone();
        Ok(json!({ "total": total, "results": results }))
    }

    /// Upserts contacts by email, 100 per call; answers each contact's record in order. When some
    /// fail (a 207 Multi-Status answer), the step fails with each error, and its detail lists every
    /// contact's result (`{ok, email, record | errors}`: what `on_error: continue` passes on).
    async fn upsert(
        &self,
        contacts: Vec<Value>,
        cx: &ExecContext,
    ) -> Result<Vec<Value>, CallError> {
        let mut results: Vec<Result<Value, (String, Vec<Value>)>> = Vec::new();
        for chunk in contacts.chunks(BATCH) {
            let inputs: Vec<Value> = chunk
                .iter()
                .map(|c| {
                    let email = api::scalar(&c["email"]);
                    let mut properties = match properties(&c["properties"]) {
                        Value::Object(p) => p,
                        _ => serde_json::Map::new(),
                    };
                    properties.insert("email".into(), json!(email));
                    json!({ "id": email, "idProperty": "email", "properties": properties })
                })
                .collect();
            if inputs
                .iter()
                .any(|i| i["id"].as_str().is_none_or(str::is_empty))
            {
                return Err(
                    StepError::permanent("every contact needs an email to upsert by").into(),
                );
            }
            let request = Request::new(Method::POST, "/crm/v3/objects/contacts/batch/upsert")
                .json(json!({ "inputs": inputs }));
            let answer = call::<HubSpot>(cx, &self.account, request).await?;
            let mut by_email: BTreeMap<String, Value> = BTreeMap::new();
            for r in answer["results"].as_array().into_iter().flatten() {
                let email = r["properties"]["email"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase();
                by_email.insert(email, r.clone());
            }
            // A 207 Multi-Status answer lists the inputs that failed in `errors`.
            let errors = answer["errors"].as_array().cloned().unwrap_or_default();
            // HubSpot does not promise the inputs' order: match results back by email.
            for i in &inputs {
                let email = i["id"].as_str().unwrap_or_default();
                results.push(match by_email.remove(&email.to_lowercase()) {
                    Some(record) => Ok(record),
                    None => Err((email.to_owned(), errors_about(&errors, email))),
                });
            }
        }
        let failed: Vec<&(String, Vec<Value>)> =
            results.iter().filter_map(|r| r.as_ref().err()).collect();
        if failed.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        let why: Vec<String> = failed
            .iter()
            .map(|(email, errors)| {
                let messages: Vec<&str> = errors
                    .iter()
                    .filter_map(|e| e["message"].as_str())
                    .collect();
                match messages.is_empty() {
                    true => format!("{email}: no result"),
                    false => format!("{email}: {}", messages.join("; ")),
                }
            })
            .collect();
        let message = format!(
            "HubSpot upserted {} of {} contacts; failed: {}",
            results.len() - failed.len(),
            results.len(),
            why.join(", ")
        );
        let per_item: Vec<Value> = results
            .into_iter()
            .map(|r| match r {
                Ok(record) => {
                    json!({ "ok": true, "email": record["properties"]["email"], "record": record })
                }
                Err((email, errors)) => json!({ "ok": false, "email": email, "errors": errors }),
            })
            .collect();
        Err(StepError::permanent(message)
            .with_detail(json!({ "results": per_item }))
            .into())
    }

    /// Creates a note or task associated with the `to` record.
    async fn engagement(
        &self,
        kind: &str,
        properties: Value,
        input: &Value,
        cx: &ExecContext,
    ) -> Result<Value, CallError> {
        let to = &input["to"];
        let object = text(to, "object");
        let id = required(to, "id", "the record's id")?;
        let type_id = association_type(kind, &object).ok_or_else(|| {
            StepError::permanent(format!(
                "a {kind} can be added to contacts, companies, deals or tickets, not `{object}`"
            ))
        })?;
        let body = json!({
            "properties": properties,
            "associations": [{
                "to": { "id": id },
                "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id }],
            }],
        });
        call::<HubSpot>(
            cx,
            &self.account,
            Request::new(Method::POST, format!("/crm/v3/objects/{kind}")).json(body),
        )
        .await
    }
}

/// The errors of a batch answer about the input with this email (any that names it), else all.
fn errors_about(errors: &[Value], email: &str) -> Vec<Value> {
    fn names(value: &Value, email: &str) -> bool {
        match value {
            Value::String(s) => s.eq_ignore_ascii_case(email) || s.contains(email),
            Value::Array(items) => items.iter().any(|v| names(v, email)),
            Value::Object(map) => map.values().any(|v| names(v, email)),
            _ => false,
        }
    }
    let about: Vec<Value> = errors.iter().filter(|e| names(e, email)).cloned().collect();
    if about.is_empty() {
        errors.to_vec()
    } else {
        about
    }
}

/// A task's due time as RFC 3339: given as RFC 3339 text or epoch milliseconds (a number or
/// digits); now when not given.
fn due_time(due: &Value) -> Result<String, StepError> {
    let millis = match due {
        Value::Null => return Ok(Timestamp::now().to_rfc3339()),
        Value::Number(n) => n.as_i64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        Value::String(s) => {
            return Timestamp::parse_rfc3339(s)
                .map(Timestamp::to_rfc3339)
                .ok_or_else(|| {
                    StepError::permanent(format!(
                        "`due` is `{s}`: give an RFC 3339 time (2026-12-01T09:00:00Z) or epoch milliseconds"
                    ))
                })
        }
        _ => None,
    };
    millis.map(|ms| Timestamp(ms).to_rfc3339()).ok_or_else(|| {
        StepError::permanent(format!(
            "`due` is `{due}`: give an RFC 3339 time or epoch milliseconds"
        ))
    })
}

/// Property values as HubSpot takes them: `null` (what `$clear` renders) becomes `""`, which
/// clears the property.
fn properties(values: &Value) -> Value {
    match values {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), if v.is_null() { json!("") } else { v.clone() }))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// HubSpot's defined association type ids from notes and tasks to records.
fn association_type(kind: &str, object: &str) -> Option<u32> {
    Some(match (kind, object) {
        ("notes", "contacts") => 202,
        ("notes", "companies") => 190,
        ("notes", "deals") => 214,
        ("notes", "tickets") => 228,
        ("tasks", "contacts") => 204,
        ("tasks", "companies") => 192,
        ("tasks", "deals") => 216,
        ("tasks", "tickets") => 230,
        _ => return None,
    })
}
