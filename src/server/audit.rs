//! The audit record: who did what on this server — logins (and failed ones), logouts, retries,
//! replays (one run or in bulk), manual runs, sample captures, quarantine reingests and callbacks
//! to resume URLs — with the
//! actor (the API token, a session, or anyone when no credential is configured), the client's
//! address and the time. Kept in the store (every node's, on PostgreSQL), within the retention
//! set by `retention.log_max_age` and `retention.audit_max_entries`; listed newest first by
//! `GET /api/v1/audit` (`hookflow audit`).
//!
//! Recording never fails an action: entries go through the [`LogWriter`], off the request path,
//! and a store that refuses them is logged and counted on `/metrics`. Only what was done is
//! recorded, never a secret (a session shows as a short hash of its id).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::ids::LogEntryId;
use hookflow_engine::model::Timestamp;
use hookflow_engine::store::{LogEntry, LogName, LogQuery};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::log_writer::LogWriter;
use super::{ApiError, AppState};

/// Who made a request: how it was authenticated, and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `token`, `session:HASH`, `password` (a login) or `anyone` (no credential configured).
    who: String,
    /// The client's address (the TCP peer's: behind a proxy, the proxy's).
    address: Option<IpAddr>,
}

impl Actor {
    /// A client holding the API token.
    pub(super) fn token(address: Option<IpAddr>) -> Self {
        Self::new("token".into(), address)
    }

    /// A logged-in session, named by a short hash of its id (the id itself is a credential).
    pub(super) fn session(id: &str, address: Option<IpAddr>) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(id.as_bytes());
        let tag: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self::new(format!("session:{tag}"), address)
    }

    /// Someone logging in with the admin password.
    pub(super) fn password(address: Option<IpAddr>) -> Self {
        Self::new("password".into(), address)
    }

    /// Whoever holds a `wait_for_callback` step's resume URL (the URL is the credential).
    pub(super) fn resume_url(address: Option<IpAddr>) -> Self {
        Self::new("resume_url".into(), address)
    }

    /// Anyone: the server asks for no credential.
    pub(super) fn anyone(address: Option<IpAddr>) -> Self {
        Self::new("anyone".into(), address)
    }

    fn new(who: String, address: Option<IpAddr>) -> Self {
        Self { who, address }
    }

    /// Who, as the audit record names them.
    pub(super) fn who(&self) -> &str {
        &self.who
    }
}

/// The client address of a request, if the server knows it.
pub(super) fn address_of(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// What the audit record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A login with the right password.
    Login,
    /// A login refused for a wrong password (a locked-out address's attempts are counted on
    /// `/metrics`, not recorded: they may come at any rate).
    LoginFailed,
    /// A session ended.
    Logout,
    /// A failed run resumed from its failed step.
    Retry,
    /// A run's event started again as a new run.
    Replay,
    /// Every failed run of a selection retried.
    RetryBulk,
    /// Every run of a selection replayed.
    ReplayBulk,
    /// A run started by hand with a payload.
    Trigger,
    /// A sample capture armed.
    Capture,
    /// A quarantined record ingested again.
    Reingest,
    /// A waiting `wait_for_callback` step called back at its resume URL.
    Callback,
}

impl AuditAction {
    /// Every action, as the API names them.
    pub const ALL: [AuditAction; 11] = [
        Self::Login,
        Self::LoginFailed,
        Self::Logout,
        Self::Retry,
        Self::Replay,
        Self::RetryBulk,
        Self::ReplayBulk,
        Self::Trigger,
        Self::Capture,
        Self::Reingest,
        Self::Callback,
    ];

    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::LoginFailed => "login_failed",
            Self::Logout => "logout",
            Self::Retry => "retry",
            Self::Replay => "replay",
            Self::RetryBulk => "retry_bulk",
            Self::ReplayBulk => "replay_bulk",
            Self::Trigger => "trigger",
            Self::Capture => "capture",
            Self::Reingest => "reingest",
            Self::Callback => "callback",
        }
    }

    /// Every action's name.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|a| a.as_str()).collect()
    }
}

/// Records actions in the store's audit record.
#[derive(Clone)]
pub struct AuditRecord {
    writer: LogWriter,
}

impl AuditRecord {
    /// An audit record kept in the store through `writer`.
    pub fn kept_by(writer: LogWriter) -> Self {
        Self { writer }
    }

    /// Records that `actor` did `action`; `detail` says on what and how it went (an object).
    pub fn record(&self, actor: &Actor, action: AuditAction, detail: Value) {
        tracing::info!(actor = %actor.who, address = ?actor.address, action = action.as_str(), "audit");
        let mut fields = Map::new();
        fields.insert("actor".into(), json!(actor.who));
        fields.insert("address".into(), json!(actor.address));
        if let Value::Object(detail) = detail {
            fields.extend(detail);
        }
        let entry = LogEntry::new(Timestamp::now(), action.as_str(), Value::Object(fields));
        self.writer.write(LogName::Audit, entry);
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list))
}

/// `GET /api/v1/audit`'s query.
#[derive(Debug, Deserialize)]
struct AuditParams {
    action: Option<String>,
    since: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let bad = |field: &'static str, e: String| {
        ApiError::bad_request("invalid_parameter", format!("`{field}`: {e}"))
    };
    let action = params
        .action
        .map(|a| {
            AuditAction::ALL
                .iter()
                .find(|k| k.as_str() == a)
                .map(|k| k.as_str().to_owned())
                .ok_or_else(|| {
                    let known = AuditAction::names().join(", ");
                    bad(
                        "action",
                        format!("unknown action `{a}` (expected one of {known})"),
                    )
                })
        })
        .transpose()?;
    let query = LogQuery {
        action,
        since: params
            .since
            .map(|t| super::api::parse_time(&t, Timestamp::now()))
            .transpose()
            .map_err(|e| bad("since", e))?,
        before: params
            .before
            .map(|c| c.parse::<LogEntryId>())
            .transpose()
            .map_err(|e| bad("before", e.to_string()))?,
        limit: super::api::page_limit(params.limit).map_err(|e| bad("limit", e))?,
    };
    let page = state
        .engine
        .store()
        .read_log(&LogName::Audit, &query)
        .await?;
    let entries: Vec<Value> = page
        .entries
        .into_iter()
        .map(|e| {
            let mut shown = json!({ "id": e.id, "at": e.at, "action": e.action });
            if let (Some(shown), Value::Object(detail)) = (shown.as_object_mut(), e.detail) {
                for (k, v) in detail {
                    shown.entry(k).or_insert(v);
                }
            }
            shown
        })
        .collect();
    Ok(Json(
        json!({ "entries": entries, "next_cursor": page.next, "actions": AuditAction::names() }),
    ))
}
