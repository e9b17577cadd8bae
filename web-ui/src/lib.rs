//! hookflow's browser UI, served by the hookflow binary at `/`.
//!
//! For now one page that lists the flows (with their catch URLs) and the latest runs through the
//! REST API; the full UI (flow graphs, run detail, replay) builds on it.

#![warn(missing_docs)]

use axum::response::Html;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");

/// The UI's routes, for any application state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(|| async { Html(INDEX) }))
}
