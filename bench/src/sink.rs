//! The sink: an HTTP server on 127.0.0.1 that answers 200 to every POST and remembers which
//! events it received (by the event number in the JSON body's `id`) and with which idempotency
//! keys, so a scenario can check that every acknowledged event arrived.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use crate::load::number_of;

type Seen = Arc<Mutex<HashMap<u64, HashSet<String>>>>;

/// A running sink; it stops when the process ends.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The URL to post to.
    pub url: String,
    seen: Seen,
}

impl Sink {
    /// Starts a sink on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let seen = Seen::default();
        let app = Router::new()
            .route("/", post(receive))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, seen })
    }

    /// How many distinct events arrived.
    pub fn distinct(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The events among `numbers` that never arrived, and those that arrived with more than one
    /// idempotency key (a duplicate delivery that the target could not recognise).
    pub fn check(&self, numbers: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let missing = numbers
            .iter()
            .copied()
            .filter(|n| !seen.contains_key(n))
            .collect();
        let mut mixed: Vec<u64> = seen
            .iter()
            .filter(|(_, keys)| keys.len() > 1)
            .map(|(n, _)| *n)
            .collect();
        mixed.sort_unstable();
        (missing, mixed)
    }
}

/// The one field of a received event the sink reads (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct EventId<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

async fn receive(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> &'static str {
    let id = serde_json::from_slice::<EventId>(&body)
        .ok()
        .and_then(|e| number_of(&e.id));
    if let Some(n) = id {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(n)
            .or_default()
            .insert(key);
    }
    "ok"
}
