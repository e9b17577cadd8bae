//! hookflow's browser UI, served by the hookflow binary at `/`: a small single-page app (no build
//! step: HTML, CSS and JavaScript embedded in the binary) over the REST API. Pages: the flows with
//! their catch URLs, health, latest runs and the catch-hook log; one flow, with its source, samples
//! with a mapping preview that marks unresolved expressions, sample capture, its hook log, runs and
//! revisions; every run (filtered, live, bulk retry and replay); and one run, live.

#![warn(missing_docs)]

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The UI's routes, for any application state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type)], body)
}
