//! Storage between runs over the API: list namespaces and their keys, and get, put or delete
//! one key (`/api/v1/storage…`). Each call is one store operation, so it is atomic with respect
//! to running `storage` steps; a put or delete is durable before it is answered. Expiry is read
//! on the engine's clock, like the steps that write it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::store::{Entry, Namespace, StorageCall, StorageError, StorageKey, StorageOp};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// The longest expiry a put may give: 365 days.
const MAX_EXPIRES_IN_SECONDS: u64 = 365 * 24 * 3600;

/// A key, as the API document states it: exactly what [`StorageKey::new`] takes (1 to 256
/// characters, no control characters), percent-encoded in a path.
pub(super) const KEY_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,256}$";

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/storage", get(namespaces))
        .route("/api/v1/storage/{namespace}", get(entries))
        .route(
            "/api/v1/storage/{namespace}/{key}",
            get(read).put(write).delete(remove),
        )
}

/// A put's body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutBody {
    /// The value to store: any JSON, at most 64 KiB.
    value: Value,
    /// The entry expires this many seconds from now (default: never).
    #[serde(default)]
    #[schemars(range(min = 1, max = 31_536_000))]
    expires_in_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PageParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// A refused storage operation as an answer.
fn refused(e: StorageError) -> ApiError {
    let (status, code) = match &e {
        StorageError::BadNamespace(_) => (StatusCode::BAD_REQUEST, "invalid_namespace"),
        StorageError::BadKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
        StorageError::ValueTooLarge { .. } | StorageError::ListTooLong(_) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
        }
        StorageError::NotANumber { .. }
        | StorageError::NotAList { .. }
        | StorageError::Overflow(_) => (StatusCode::CONFLICT, "wrong_type"),
    };
    ApiError::new(status, code, e.to_string())
}

fn names(namespace: &str, key: &str) -> Result<(Namespace, StorageKey), ApiError> {
    Ok((
        Namespace::new(namespace).map_err(refused)?,
        StorageKey::new(key).map_err(refused)?,
    ))
}

/// 404 for a key that holds nothing.
fn no_key(namespace: &Namespace, key: &StorageKey) -> ApiError {
    ApiError::not_found(format!("storage `{namespace}` holds no key `{key}`"))
}

/// An entry as the API shows it.
fn shown(namespace: &Namespace, key: &StorageKey, entry: &Entry) -> Value {
    json!({
        "namespace": namespace,
        "key": key,
        "value": entry.value,
        "expires_at": entry.expires_at.map(|t| t.to_rfc3339()),
        "updated_at": entry.updated_at.to_rfc3339(),
    })
}

/// Applies `op`, answering its outcome or the refusal.
async fn apply(
    state: &AppState,
    namespace: &Namespace,
    key: &StorageKey,
    op: StorageOp,
) -> Result<hookflow_engine::store::Applied, ApiError> {
    let engine = &state.engine;
    let applied = engine
        .store()
        .storage(StorageCall::new(namespace, key, &op, engine.now()))
        .await?
        .map_err(refused)?;
    if op.writes() {
        engine.store().flush().await?;
        tracing::info!(%namespace, %key, action = op.name(), "storage changed over the API");
    }
    Ok(applied)
}

async fn namespaces(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = &state.engine;
    let counts = engine.store().storage_namespaces(engine.now()).await?;
    let list: Vec<Value> = counts
        .iter()
        .map(|(namespace, keys)| json!({ "namespace": namespace, "keys": keys }))
        .collect();
    Ok(Json(json!({ "namespaces": list })))
}

async fn entries(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let namespace = Namespace::new(&namespace).map_err(refused)?;
    let after = params
        .after
        .as_deref()
        .map(StorageKey::new)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("`after`: {e}")))?;
    let limit = match params.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`limit`: {n} is not 1 to 1000"),
            ))
        }
    };
    let engine = &state.engine;
    let page = engine
        .store()
        .storage_entries(&namespace, after.as_ref(), limit, engine.now())
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(k, _)| k.clone()))
        .flatten();
    let list: Vec<Value> = page
        .iter()
        .map(|(key, entry)| shown(&namespace, key, entry))
        .collect();
    Ok(Json(
        json!({ "namespace": namespace, "entries": list, "next_cursor": next }),
    ))
}

async fn read(
    State(state): State<AppState>,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (namespace, key) = names(&namespace, &key)?;
    let applied = apply(&state, &namespace, &key, StorageOp::Get).await?;
    let entry = applied.before.ok_or_else(|| no_key(&namespace, &key))?;
    Ok(Json(shown(&namespace, &key, &entry)))
}

async fn write(
    State(state): State<AppState>,
    Path((namespace, key)): Path<(String, String)>,
    Json(body): Json<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    // Read from an object only: serde would also take a struct from an array.
    let body: PutBody = serde_json::from_value(Value::Object(body)).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("the JSON body is invalid: {e}"))
    })?;
    let (namespace, key) = names(&namespace, &key)?;
    let expires_at = match body.expires_in_seconds {
        None => None,
        Some(s @ 1..=MAX_EXPIRES_IN_SECONDS) => {
            Some(state.engine.now().plus(std::time::Duration::from_secs(s)))
        }
        Some(s) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("`expires_in_seconds`: {s} is not 1 to {MAX_EXPIRES_IN_SECONDS}"),
            ))
        }
    };
    let op = StorageOp::Set {
        value: body.value,
        expires_at,
    };
    let applied = apply(&state, &namespace, &key, op).await?;
    Ok(Json(applied.after.map_or(Value::Null, |entry| {
        shown(&namespace, &key, &entry)
    })))
}

async fn remove(
    State(state): State<AppState>,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (namespace, key) = names(&namespace, &key)?;
    let applied = apply(&state, &namespace, &key, StorageOp::Delete).await?;
    if applied.before.is_none() {
        return Err(no_key(&namespace, &key));
    }
    Ok(Json(
        json!({ "namespace": namespace, "key": key, "deleted": true }),
    ))
}
