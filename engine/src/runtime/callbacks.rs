//! Resume URLs of `wait_for_callback` steps, and finishing a waiting step when its URL is called.
//!
//! A step's resume URL is `{base}/hooks/resume/{run_id}/{step_id}/{token}`: the token is an HMAC of
//! the run and the step under a key kept in the store (created once with
//! [`Store::init_state`](crate::store::Store::init_state), so every node shares it). It cannot be
//! guessed without the key, and nothing is stored per run: the URL is known before the step waits
//! (the steps before it send it) and stays the same after.
//!
//! A callback is written through `update_run` like an attempt's outcome, so it races safely with
//! the step's timeout and with a second callback: whichever is written first finishes the step;
//! the others change nothing and are told so. A callback may come while the step is queued but
//! not yet waiting (the person was quick): it finishes the step all the same.

use std::sync::{Mutex, PoisonError};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tracing::info;

use super::advance::{self, Attempted};
use super::Engine;
use crate::flow::Flow;
use crate::ids::{RunId, StepId};
use crate::model::{Run, StepStatus};
use crate::steps::callback::CALLBACK_PATH;

/// Where the store keeps the key that signs resume URLs.
const KEY_STATE: &str = "callback-key";

/// The key that signs resume URLs.
#[derive(Clone)]
pub(crate) struct CallbackKey(String);

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey([secret])")
    }
}

impl CallbackKey {
    /// A key for runs that no server will resume (`hookflow run`, `hookflow test`).
    pub(crate) fn offline() -> Self {
        Self("offline".to_owned())
    }

    fn mac(&self, run: RunId, step: &StepId) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes any key length");
        mac.update(format!("{run}/{step}").as_bytes());
        mac
    }

    /// The token of one step of one run: 128 bits of the HMAC, hex.
    fn token(&self, run: RunId, step: &StepId) -> String {
        self.mac(run, step).finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is the step's (compared in constant time).
    fn verifies(&self, run: RunId, step: &StepId, token: &str) -> bool {
        let Ok(bytes) = hex_bytes(token) else {
            return false;
        };
        bytes.len() == 16 && self.mac(run, step).verify_truncated_left(&bytes).is_ok()
    }
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, ()> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| ()))
        .collect()
}

/// The resume URLs of the flow's `wait_for_callback` steps in run `run`.
pub(crate) fn resume_urls(
    flow: &Flow,
    run: RunId,
    base: &str,
    key: &CallbackKey,
) -> Vec<(StepId, String)> {
    flow.steps
        .iter()
        .filter(|s| s.action.awaits_callback())
        .map(|s| {
            let token = key.token(run, &s.id);
            let url = format!(
                "{}/hooks/resume/{run}/{}/{token}",
                base.trim_end_matches('/'),
                s.id
            );
            (s.id.clone(), url)
        })
        .collect()
}

/// What a callback brought.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The request's body (parsed JSON or form, or text; `null` when empty).
    pub body: Value,
    /// Its query parameters.
    pub query: Value,
}

/// Why a callback was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No run, no such step, or a token that does not match (not told apart, so that tokens
    /// cannot be probed).
    #[error("no step waits at this URL")]
    NotFound,
    /// The step is not waiting: it has not been reached yet, or it is done (called back or timed
    /// out), or the run is over.
    #[error("{0}")]
    NotWaiting(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

impl From<crate::store::StoreError> for ResumeError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e.into())
    }
}

/// Why `run` cannot take a callback for `step`, if it cannot.
fn not_waiting(run: &Run, step: &StepId) -> Option<String> {
    if run.status.is_final() {
        return Some(format!("the run is {} already", run.status));
    }
    match run.step_status(step) {
        Some(StepStatus::Queued) => None,
        Some(StepStatus::Pending) => Some(format!(
            "the run has not reached step `{step}` yet: call again once it waits"
        )),
        Some(_) => Some(format!(
            "step `{step}` is done already (it was called back, or it timed out)"
        )),
        None => Some(format!("the run has no step `{step}`")),
    }
}

impl Engine {
    /// The key that signs resume URLs (read from the store once, created there on first use).
    pub(crate) async fn callback_key(&self) -> crate::Result<&CallbackKey> {
        self.callback_key
            .get_or_try_init(|| async {
                let fresh: [u8; 32] = rand::random();
                let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
                let stored = self.store.init_state(KEY_STATE, &json!(fresh)).await?;
                match stored.as_str() {
                    Some(key) => Ok(CallbackKey(key.to_owned())),
                    None => Err(crate::store::StoreError::Corrupt {
                        tree: "state",
                        detail: format!("`{KEY_STATE}` is not a text"),
                    }
                    .into()),
                }
            })
            .await
    }

    /// The base URL resume URLs start with.
    fn base_url(&self) -> &str {
        self.config
            .base_url
            .as_deref()
            .unwrap_or(crate::flow::DEFAULT_SERVER_URL)
    }

    /// The resume URLs of the flow's `wait_for_callback` steps in a run (none for a flow without).
    pub async fn resume_urls(
        &self,
        flow: &Flow,
        run: RunId,
    ) -> crate::Result<Vec<(StepId, String)>> {
        if !flow.steps.iter().any(|s| s.action.awaits_callback()) {
            return Ok(Vec::new());
        }
        let key = self.callback_key().await?;
        Ok(resume_urls(flow, run, self.base_url(), key))
    }

    /// Finishes a waiting `wait_for_callback` step with what its resume URL was sent: its output
    /// is `{path: "callback", body, query, received_at}` and the run goes on. Returns the run as
    /// written.
    pub async fn resume(
        &self,
        run_id: RunId,
        step: &StepId,
        token: &str,
        callback: Callback,
    ) -> Result<Run, ResumeError> {
        let key = self.callback_key().await?;
        if !key.verifies(run_id, step, token) {
            self.metrics.callback("not_found");
            return Err(ResumeError::NotFound);
        }
        let store = self.store();
        let run = store.run(run_id).await?.ok_or(ResumeError::NotFound)?;
        let flow = self
            .catalog()
            .revision(store, &run.flow_id, &run.revision)
            .await?;
        if !flow.step(step).is_some_and(|s| s.action.awaits_callback()) {
            return Err(ResumeError::NotFound);
        }
        let records = store.step_records(run_id).await?;
        let previous = records.iter().find(|r| &r.step_id == step);
        let now = self.now();
        let url = resume_urls(&flow, run_id, self.base_url(), key)
            .into_iter()
            .find_map(|(id, url)| (&id == step).then_some(url));
        let output = json!({
            "path": CALLBACK_PATH, "body": callback.body, "query": callback.query, "received_at": now,
        });
        let input = json!({ "resume_url": url });
        let node = self.config.node.clone();
        let done = Attempted::at_once((step.clone(), 1), input, output, now, node);
        let refused = Mutex::new(None);
        let committed = store
            .update_run(run_id, None, &|run| {
                let why = not_waiting(&run, step);
                let update = match why {
                    Some(_) => None,
                    None => advance::advance(&flow, run, previous, &done, now),
                };
                *refused.lock().unwrap_or_else(PoisonError::into_inner) = why;
                update
            })
            .await?
            .ok_or(ResumeError::NotFound)?;
        if let Some(why) = refused.into_inner().unwrap_or_else(PoisonError::into_inner) {
            self.metrics.callback("not_waiting");
            return Err(ResumeError::NotWaiting(why));
        }
        self.metrics.callback("resumed");
        info!(%run_id, step_id = %step, "step called back; the run goes on");
        self.announce(Some(committed.run.clone()));
        self.wake.notify_one();
        Ok(committed.run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_own_run_and_step_only() {
        let key = CallbackKey("k".to_owned());
        let (run, other) = (RunId::new(), RunId::new());
        let step: StepId = "approve".parse().unwrap();
        let token = key.token(run, &step);
        assert_eq!(token.len(), 32);
        assert!(key.verifies(run, &step, &token));
        assert!(!key.verifies(other, &step, &token));
        assert!(!key.verifies(run, &"other".parse().unwrap(), &token));
        assert!(!CallbackKey("k2".to_owned()).verifies(run, &step, &token));
        assert!(!key.verifies(run, &step, &token[..30]));
        assert!(!key.verifies(run, &step, "zz"));
    }
}
