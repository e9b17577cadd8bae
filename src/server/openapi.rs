//! The HTTP API's OpenAPI 3 document, served at `/api/openapi.json`. It is built from
//! [`OPERATIONS`] — one entry per route the server registers, next to its handler's module; a test
//! checks that every `.route(…)` of the server is listed — with request body and query schemas
//! derived by schemars from the very types the handlers deserialize, path parameters with the
//! patterns the handlers accept, and the security this server actually asks for (none when no
//! credential is configured).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::audit::AuditAction;
use super::auth::Login;
use super::capture::ArmRequest;
use super::preview::PreviewRequest;
use super::repair::{BulkBody, ReplayBody};
use super::storage::{PutBody, KEY_PATTERN};
use super::trigger::StartRequest;
use super::{AppState, Auth};
use hookflow_engine::ids::{FlowId, LogEntryId, RunId};
use hookflow_engine::store::Namespace;

/// A body's schema, from the type the handler reads.
type BodySchema = fn(&mut SchemaGenerator) -> Schema;

/// What an operation answers when it succeeds.
#[derive(Clone, Copy)]
enum Answer {
    /// A JSON object.
    Json(u16),
    /// Server-sent events.
    Events,
    /// Text (Prometheus' format).
    Text,
    /// Whatever the page is (HTML, or the inspector's echo).
    Any,
}

/// One documented operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    /// Query parameters: (name, description).
    query: &'static [(&'static str, &'static str)],
    body: Option<BodySchema>,
    answer: Answer,
    /// Open to anyone (no session or token needed).
    open: bool,
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        query: &[],
        body: None,
        answer: Answer::Json(200),
        open: false,
    }
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A bulk retry's body: a bulk action's, without `revision` (a retry keeps each run's own),
/// inline and in OpenAPI 3.0's dialect like the generator's own schemas.
fn retry_schema(g: &mut SchemaGenerator) -> Schema {
    let mut schema = BulkBody::json_schema(g);
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.remove("revision");
    }
    for transform in &mut g.settings().clone().transforms {
        transform.transform(&mut schema);
    }
    schema
}

const RUN_FILTERS: &[(&str, &str)] = &[
    ("flow", "only runs of this flow"),
    (
        "status",
        "only runs with this status: queued, running, succeeded, failed, filtered",
    ),
    (
        "since",
        "only runs created since: RFC 3339, or a duration ago (`2h`)",
    ),
    (
        "until",
        "only runs created before: RFC 3339, or a duration ago",
    ),
    (
        "q",
        "only runs whose payload contains this text (case-insensitive, bounded scan)",
    ),
    ("limit", "how many runs (1 to 1000, default 50)"),
    (
        "cursor",
        "go on after this run (`next_cursor` of the previous page)",
    ),
];

const AUDIT_FILTERS: &[(&str, &str)] = &[
    ("action", "only entries of this action"),
    (
        "since",
        "only entries since: RFC 3339, or a duration ago (`2h`)",
    ),
    ("limit", "how many entries (1 to 1000, default 50)"),
    (
        "before",
        "go on after this entry (`next_cursor` of the previous page)",
    ),
];

/// Every route the server registers.
const OPERATIONS: &[Operation] = &[
    Operation { open: true, ..op("post", "/hooks/catch/{flow_id}/{token}", "hooks", "Send an event to a flow's catch hook; JSON, form or text bodies") },
    Operation { open: true, ..op("get", "/hooks/catch/{flow_id}/{token}", "hooks", "Send an event (query string only)") },
    Operation { open: true, ..op("put", "/hooks/catch/{flow_id}/{token}", "hooks", "Send an event with PUT") },
    Operation { open: true, ..op("post", "/hooks/resume/{run_id}/{step_id}/{resume_token}", "hooks", "Call back a waiting `wait_for_callback` step: its output is the body and query, and the run goes on (409 `not_waiting` when it is not waiting)") },
    op("get", "/api/v1/flows", "flows", "The deployed flows with catch URLs, last-day activity, and the flow files' problems"),
    Operation { query: &[("revision", "a kept revision instead of the current one")], ..op("get", "/api/v1/flows/{flow_id}", "flows", "One flow, with its source") },
    op("get", "/api/v1/flows/{flow_id}/revisions", "flows", "The flow's revisions as deployed, newest first"),
    op("get", "/api/v1/flows/{flow_id}/hooks", "flows", "The flow's catch-hook log: recent requests and what became of them (those that started no run are kept in the store)"),
    Operation { body: Some(schema::<ArmRequest>), ..op("post", "/api/v1/flows/{flow_id}/capture", "authoring", "Keep the next events sent to the flow as samples") },
    op("get", "/api/v1/flows/{flow_id}/capture", "authoring", "How a capture stands"),
    op("get", "/api/v1/flows/{flow_id}/samples", "authoring", "The flow's samples"),
    op("get", "/api/v1/flows/{flow_id}/samples/{name}", "authoring", "One sample, as the run's `trigger` it stands for"),
    Operation { body: Some(schema::<PreviewRequest>), ..op("post", "/api/v1/flows/{flow_id}/preview", "authoring", "Run the flow offline on a sample or event: each step's input and output, unresolved expressions") },
    Operation { body: Some(schema::<StartRequest>), answer: Answer::Json(201), ..op("post", "/api/v1/flows/{flow_id}/runs", "runs", "Start a run with a payload (manual run)") },
    Operation { query: RUN_FILTERS, ..op("get", "/api/v1/runs", "runs", "Runs, newest first, filtered and cursor-paged") },
    Operation { query: &[("flow", "only this flow's runs")], answer: Answer::Events, ..op("get", "/api/v1/runs/events", "runs", "Server-sent `run` events as runs are created and finish") },
    op("get", "/api/v1/runs/{run_id}", "runs", "A run with its event and every step's record"),
    op("post", "/api/v1/runs/{run_id}/retry", "runs", "Resume a failed run from its failed step"),
    Operation { body: Some(schema::<ReplayBody>), answer: Answer::Json(201), ..op("post", "/api/v1/runs/{run_id}/replay", "runs", "Start a new run of the run's event") },
    Operation { body: Some(retry_schema), ..op("post", "/api/v1/runs/retry", "runs", "Retry every failed run of a flow in a time window (or count them)") },
    Operation { body: Some(schema::<BulkBody>), ..op("post", "/api/v1/runs/replay", "runs", "Replay every run of a flow matching a status and window (or count them)") },
    Operation { open: true, body: Some(schema::<Login>), ..op("post", "/api/v1/login", "access", "Log in with the admin password: a session cookie and a CSRF token") },
    op("post", "/api/v1/logout", "access", "End the session"),
    Operation { query: AUDIT_FILTERS, ..op("get", "/api/v1/audit", "access", "The audit record: who did what (logins, retries, replays, manual runs, captures), from which address and when; newest first, cursor-paged") },
    Operation { open: true, ..op("get", "/api/v1/session", "access", "Whether a login is required, and the session's CSRF token") },
    op("get", "/api/v1/quarantine", "operations", "Accepted events the store set aside as damaged or undecodable (the quarantine)"),
    op("post", "/api/v1/quarantine/{id}/reingest", "operations", "Ingest a quarantined record again once its bytes decode; the entry is then removed (404: no such entry, 422: still undecodable)"),
    op("get", "/api/v1/storage", "storage", "Storage between runs: the namespaces holding values, with how many keys each"),
    Operation { query: &[("after", "go on after this key (`next_cursor` of the previous page)"), ("limit", "how many entries (1 to 1000, default 100)")], ..op("get", "/api/v1/storage/{namespace}", "storage", "A namespace's entries (value, expiry), by key, cursor-paged") },
    op("get", "/api/v1/storage/{namespace}/{key}", "storage", "One key's value and expiry (404: the key holds none)"),
    Operation { body: Some(schema::<PutBody>), ..op("put", "/api/v1/storage/{namespace}/{key}", "storage", "Store a value under a key, with an optional expiry (413: over 64 KiB)") },
    op("delete", "/api/v1/storage/{namespace}/{key}", "storage", "Delete a key (404: the key holds none)"),
    op("get", "/api/v1/inspector", "inspector", "The request inspector's bins"),
    op("get", "/api/v1/inspector/{bin}", "inspector", "What one bin received"),
    Operation { open: true, answer: Answer::Any, ..op("get", "/inspect/{bin}", "inspector", "Record a GET and answer 200") },
    Operation { open: true, answer: Answer::Any, ..op("post", "/inspect/{bin}", "inspector", "Record a POST and answer 200") },
    Operation { open: true, answer: Answer::Any, ..op("put", "/inspect/{bin}", "inspector", "Record a PUT and answer 200") },
    Operation { open: true, answer: Answer::Any, ..op("patch", "/inspect/{bin}", "inspector", "Record a PATCH and answer 200") },
    Operation { open: true, answer: Answer::Any, ..op("delete", "/inspect/{bin}", "inspector", "Record a DELETE and answer 200") },
    Operation { answer: Answer::Text, ..op("get", "/metrics", "operations", "Prometheus metrics") },
    Operation { open: true, ..op("get", "/healthz", "operations", "Liveness") },
    Operation { open: true, ..op("get", "/readyz", "operations", "Readiness: 200 while the store answers, 503 otherwise") },
    Operation { open: true, ..op("get", "/api/openapi.json", "operations", "This document") },
];

/// What a run's status may be, as the API takes it.
pub(super) const RUN_STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "filtered"];

/// [`RUN_STATUSES`] or nothing (`null`), for optional body fields.
pub(super) const OPTIONAL_RUN_STATUSES: [Option<&str>; 6] = [
    None,
    Some("queued"),
    Some("running"),
    Some("succeeded"),
    Some("failed"),
    Some("filtered"),
];

/// The times the API takes (`since`, `until`), as documented: a whole number of seconds, minutes,
/// hours or days ago (`2h`), or an RFC 3339 UTC time. The server takes more (any `humantime`
/// duration, any RFC 3339 offset); the document states a form every part of which it accepts.
pub(super) const TIME_PATTERN: &str = "^([1-9][0-9]{0,4}(s|m|h|d)|20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)$";

/// A path parameter's schema, by name: the forms its handler accepts.
fn path_schema(name: &str) -> Value {
    let pattern = match name {
        "flow_id" => FlowId::PATTERN,
        "run_id" => RunId::PATTERN,
        "token" => "^[0-9a-f]{40}$",
        "step_id" => hookflow_engine::ids::StepId::PATTERN,
        "resume_token" => "^[0-9a-f]{32}$",
        "id" => "^[0-9]{1,20}-[0-9]{1,20}$",
        "bin" => super::inspector::BIN_PATTERN,
        // A sample's file name without `.json` (captured ones are `YYYYMMDD-HHMMSS-N`).
        "name" => "^[A-Za-z0-9._-]{1,100}$",
        "namespace" => Namespace::PATTERN,
        "key" => KEY_PATTERN,
        other => unreachable!("no schema for the path parameter `{other}`"),
    };
    json!({ "type": "string", "pattern": pattern })
}

/// A query parameter's schema, by name.
fn query_schema(name: &str) -> Value {
    match name {
        "limit" => json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
        "status" => json!({ "type": "string", "enum": RUN_STATUSES }),
        "since" | "until" => json!({ "type": "string", "pattern": TIME_PATTERN }),
        "flow" => json!({ "type": "string", "pattern": FlowId::PATTERN }),
        "cursor" => json!({ "type": "string", "pattern": RunId::PATTERN }),
        "before" => json!({ "type": "string", "pattern": LogEntryId::PATTERN }),
        "action" => json!({ "type": "string", "enum": AuditAction::names() }),
        "after" => json!({ "type": "string", "pattern": KEY_PATTERN }),
        _ => json!({ "type": "string" }),
    }
}

/// The OpenAPI document for a server with these credentials.
pub fn document(auth: &Auth) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_schema(name) }))
            .collect();
        parameters.extend(op.query.iter().map(|(name, description)| {
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": query_schema(name) })
        }));
        let (status, content) = match op.answer {
            Answer::Json(status) => (
                status,
                json!({ "application/json": { "schema": { "type": "object" } } }),
            ),
            Answer::Events => (
                200,
                json!({ "text/event-stream": { "schema": { "type": "string" } } }),
            ),
            Answer::Text => (
                200,
                json!({ "text/plain": { "schema": { "type": "string" } } }),
            ),
            Answer::Any => (200, json!({ "*/*": { "schema": {} } })),
        };
        let error = json!({
            "description": "An error: `{code, detail}`",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
        });
        let mut operation = json!({
            "tags": [op.tag],
            "summary": op.summary,
            "operationId": format!("{}_{}", op.method, op.path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters,
            "responses": { status.to_string(): { "description": "OK", "content": content }, "4XX": error.clone(), "5XX": error },
        });
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body(&mut generator) } },
            });
        }
        if op.open && auth.enabled() {
            operation["security"] = json!([]);
        }
        let item = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        item[op.method] = operation;
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "required": ["code", "detail"], "properties": {
            "code": { "type": "string" }, "detail": { "type": "string" } } }),
    );
    let mut schemes = Map::new();
    if auth.has_token() {
        schemes.insert(
            "bearer".into(),
            json!({ "type": "http", "scheme": "bearer", "description": "HOOKFLOW_API_TOKEN" }),
        );
    }
    if auth.has_password() {
        schemes.insert("session".into(), json!({ "type": "apiKey", "in": "cookie", "name": "hookflow_session", "description": "from POST /api/v1/login; changes also need X-CSRF-Token" }));
    }
    let security: Vec<Value> = schemes.keys().map(|k| json!({ k.as_str(): [] })).collect();
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hookflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "hookflow's HTTP API: catch hooks, flows, runs, authoring, storage between runs, access, operations.",
        },
        "paths": paths,
        "components": { "schemas": schemas },
    });
    if !schemes.is_empty() {
        document["components"]["securitySchemes"] = Value::Object(schemes);
        document["security"] = json!(security);
    }
    document
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi))
}

async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.auth))
}
