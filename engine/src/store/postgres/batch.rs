//! Concurrent callers' requests written in batches: callers hand a request to a channel and wait
//! for its answer; a few tasks each take what is waiting (up to a maximum) and write it together,
//! so the cost of a statement, a transaction and a round trip is shared. Ingests and step
//! outcomes are written this way (`ingest.rs`, `finish.rs`).
//!
//! Invariants:
//! - Every request taken is answered once, with the answer at its place in what the batch's work
//!   returned; a caller whose batch task is gone hears an error, never nothing.
//! - A batch is taken only while no other task is taking one, so each request is in one batch.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::store::{Result, StoreError};

struct Pending<T, A> {
    request: T,
    reply: oneshot::Sender<A>,
}

/// The batch tasks' inbox. Dropping it ends the tasks once they have answered what they took.
pub(super) struct Batcher<T, A> {
    queue: mpsc::Sender<Pending<T, A>>,
}

impl<T: Send + 'static, A: Send + 'static> Batcher<T, A> {
    /// Starts `tasks` tasks that take up to `max` requests at a time and answer them with `work`,
    /// which returns one answer per request, in order.
    pub(super) fn start<W, F>(tasks: usize, max: usize, work: W) -> Self
    where
        W: Fn(Vec<T>) -> F + Clone + Send + 'static,
        F: Future<Output = Vec<A>> + Send,
    {
        let (queue, waiting) = mpsc::channel(max * 16);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..tasks.max(1) {
            let (waiting, work) = (waiting.clone(), work.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&waiting, max).await {
                    let (requests, replies): (Vec<T>, Vec<_>) =
                        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
                    let answers = work(requests).await;
                    debug_assert_eq!(answers.len(), replies.len());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { queue }
    }

    /// Hands `request` to the next batch; its answer once the batch is written.
    pub(super) async fn call(&self, request: T) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable_because("the store is closing");
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// Waits for one request, then takes what else is waiting, up to `max`; `None` once the
/// batcher is dropped.
async fn next_batch<T, A>(
    waiting: &Mutex<mpsc::Receiver<Pending<T, A>>>,
    max: usize,
) -> Option<Vec<Pending<T, A>>> {
    let mut waiting = waiting.lock().await;
    let first = waiting.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match waiting.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The same error, with its causes, for each caller of a failed batch (a [`StoreError`] is not
/// `Clone`).
pub(super) fn shared_error(e: &StoreError, doing: &str) -> StoreError {
    match e {
        StoreError::Conflict(why) => StoreError::Conflict(why.clone()),
        other => {
            let mut why = format!("{doing}: {other}");
            let mut cause = std::error::Error::source(other);
            while let Some(e) = cause {
                why = format!("{why}: {e}");
                cause = e.source();
            }
            StoreError::unavailable_because(why)
        }
    }
}
