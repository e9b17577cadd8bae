//! Access to the UI and the API. With an admin password configured, people log in
//! (`POST /api/v1/login`) and get a session cookie (HttpOnly, SameSite=Strict, and Secure when the
//! server's public URL is https) plus a CSRF token that every request other than GET must echo in
//! `X-CSRF-Token`; with an API token configured, clients send `Authorization: Bearer TOKEN` (the
//! scheme in any case; no CSRF needed). Without either, nothing is asked — and the server listens
//! on 127.0.0.1 only (see `serve`), as it does with a password shorter than
//! [`MIN_PASSWORD_CHARS`] (refused for any other address).
//!
//! Credentials are compared in constant time (`hooks::constant_time_eq`); failed logins are
//! throttled per client address (`throttle`).
//!
//! Every request let through past the checks carries its [`Actor`] (token, session or anyone,
//! and the client's address) for the audit record; logins are recorded, and so are wrong
//! passwords (not the refusals of a locked-out address, which come at any rate).
//!
//! Always open: the catch hooks (their token, signatures and rate limits guard them), the request
//! inspector's receiving end, `/healthz`, `/readyz`, the UI's page and assets (the app asks to log in), and
//! the login itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::audit::{Actor, AuditAction};
use super::hooks::constant_time_eq;
use super::throttle::LoginThrottle;
use super::{ApiError, AppState};

/// The shortest admin password allowed when the server listens beyond loopback.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The session cookie's name.
const COOKIE: &str = "hookflow_session";

/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Paths anyone may use.
const OPEN_PREFIXES: [&str; 6] = [
    "/hooks/",
    "/inspect/",
    "/assets/",
    "/healthz",
    "/readyz",
    "/api/openapi.json",
];
const OPEN_PATHS: [&str; 3] = ["/", "/api/v1/login", "/api/v1/session"];

struct Session {
    csrf: String,
    expires: Instant,
}

/// The configured credentials, the live sessions and the login throttle.
#[derive(Clone, Default)]
pub struct Auth {
    password: Option<String>,
    token: Option<String>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// Whether the session cookie is `Secure` (the public URL is https).
    secure_cookie: bool,
    /// Failed logins per client address.
    pub(super) throttle: LoginThrottle,
}

impl Auth {
    /// Access with an admin password and/or an API token (empty values count as unset); the
    /// session cookie is `Secure` when `secure_cookie`.
    pub fn new(password: Option<String>, token: Option<String>, secure_cookie: bool) -> Self {
        Self {
            password: password.filter(|p| !p.is_empty()),
            token: token.filter(|t| !t.is_empty()),
            sessions: Arc::default(),
            secure_cookie,
            throttle: LoginThrottle::default(),
        }
    }

    /// Whether the admin password is shorter than [`MIN_PASSWORD_CHARS`].
    pub fn weak_password(&self) -> bool {
        self.password
            .as_ref()
            .is_some_and(|p| p.chars().count() < MIN_PASSWORD_CHARS)
    }

    /// The cookie attributes shared by setting and clearing the session cookie.
    fn cookie_attributes(&self) -> &'static str {
        if self.secure_cookie {
            "HttpOnly; SameSite=Strict; Secure; Path=/"
        } else {
            "HttpOnly; SameSite=Strict; Path=/"
        }
    }

    /// Whether any credential is configured (else the server stays on 127.0.0.1).
    pub fn enabled(&self) -> bool {
        self.password.is_some() || self.token.is_some()
    }

    /// Whether people log in with an admin password (and hold a session cookie).
    pub(super) fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether clients may send an API token.
    pub(super) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The CSRF token of the request's live session, if it has one.
    fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(&id).map(|s| s.csrf.clone())
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, given)| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }
}

/// The middleware: lets open paths through, and the rest only with a bearer token or a session
/// (plus its CSRF token for anything but GET and HEAD), carrying its [`Actor`] (for the audit
/// record).
pub(super) async fn require(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let path = request.uri().path();
    let open = OPEN_PATHS.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p));
    if open {
        return next.run(request).await;
    }
    let address = super::audit::address_of(&request);
    if !auth.enabled() || auth.bearer_ok(request.headers()) {
        let actor = if auth.enabled() {
            Actor::token(address)
        } else {
            Actor::anyone(address)
        };
        request.extensions_mut().insert(actor);
        return next.run(request).await;
    }
    let Some(csrf) = auth.session_csrf(request.headers()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in (POST /api/v1/login) or send `Authorization: Bearer TOKEN`",
        )
        .into_response();
    };
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let echoed = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| constant_time_eq(t.as_bytes(), csrf.as_bytes()));
    if !safe && !echoed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "this request needs the session's CSRF token in `X-CSRF-Token`",
        )
        .into_response();
    }
    let session = cookie(request.headers(), COOKIE).unwrap_or_default();
    request
        .extensions_mut()
        .insert(Actor::session(&session, address));
    next.run(request).await
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct Login {
    password: String,
}

async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(login): Json<Login>,
) -> Response {
    let auth = &state.auth;
    let Some(password) = &auth.password else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_login",
            "no admin password is configured: use the API token, or no credential at all",
        )
        .into_response();
    };
    let ip = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0 .0.ip());
    let actor = Actor::password(Some(ip));
    if let Some(wait) = auth.throttle.locked(ip) {
        let seconds = super::whole_seconds(wait);
        // Not audited: a locked-out address may ask at any rate (`/metrics` counts these).
        tracing::warn!(%ip, seconds, "refused a login: too many failures from this address");
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins from this address: try again in {seconds} s"),
        )
        .retry_after(wait)
        .into_response();
    }
    if !constant_time_eq(login.password.as_bytes(), password.as_bytes()) {
        auth.throttle.failed(ip);
        tracing::warn!(%ip, "refused a login: wrong password");
        let why = json!({ "reason": "invalid_credentials" });
        state.audit.record(&actor, AuditAction::LoginFailed, why);
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong password",
        )
        .into_response();
    }
    auth.throttle.succeeded(ip);
    let (id, csrf) = (random_token(), random_token());
    let session = Actor::session(&id, Some(ip));
    state.audit.record(
        &actor,
        AuditAction::Login,
        json!({ "session": session.who() }),
    );
    auth.sessions().insert(
        id.clone(),
        Session {
            csrf: csrf.clone(),
            expires: Instant::now() + SESSION_TTL,
        },
    );
    let cookie = format!(
        "{COOKIE}={id}; {}; Max-Age={}",
        auth.cookie_attributes(),
        SESSION_TTL.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "authenticated": true, "csrf_token": csrf })),
    )
        .into_response()
}

async fn logout(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        state.auth.sessions().remove(&id);
    }
    state.audit.record(&actor, AuditAction::Logout, json!({}));
    let expired = format!("{COOKIE}=; {}; Max-Age=0", state.auth.cookie_attributes());
    (
        [(header::SET_COOKIE, expired)],
        Json(json!({ "authenticated": false })),
    )
        .into_response()
}

/// Whether the caller must log in, and its CSRF token when it is logged in.
async fn session(State(state): State<AppState>, headers: HeaderMap) -> Json<serde_json::Value> {
    let auth = &state.auth;
    let csrf = auth.session_csrf(&headers);
    Json(json!({
        "auth_required": auth.enabled(),
        "login": auth.password.is_some(),
        "authenticated": !auth.enabled() || csrf.is_some() || auth.bearer_ok(&headers),
        "csrf_token": csrf,
    }))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
