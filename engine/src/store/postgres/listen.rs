//! Run notices across nodes: one connection per node LISTENs on the runs channel and republishes
//! what every node NOTIFYs (runs created, runs final) to this process's subscribers.
//!
//! The connection is the node's own (not from the pool: a pooled connection would be handed to
//! other work). When it drops (PostgreSQL restarted, the network failed) the task connects again
//! with a growing pause; notices sent meanwhile are missed, which the contract allows (a
//! subscriber that misses one reads the store again when its wait times out).

use std::time::Duration;

use tokio_postgres::AsyncMessage;

use super::RUN_CHANNEL;
use crate::model::RunStatus;
use crate::store::{Notices, RunNotice, StoreError};

/// Listens until the task is aborted (when the store is dropped).
pub(super) async fn listen_forever(config: tokio_postgres::Config, notices: Notices) {
    let mut pause = Duration::from_millis(100);
    loop {
        match listen(&config, &notices).await {
            Ok(()) => tracing::warn!("the notice connection to PostgreSQL closed; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "the notice connection to PostgreSQL failed; reconnecting")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Listens on one connection until it ends.
async fn listen(config: &tokio_postgres::Config, notices: &Notices) -> Result<(), StoreError> {
    let lost = |e| StoreError::unavailable("listen for run notices", e);
    let (client, mut connection) = config.connect(super::tls()?).await.map_err(lost)?;
    let (messages, mut received) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if messages.send(n.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {RUN_CHANNEL}"))
        .await
        .map_err(lost)?;
    tracing::debug!("listening for run notices");
    while let Some(payload) = received.recv().await {
        for notice in parse(&payload) {
            notices.send(notice);
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result.map_err(lost),
        Err(_) => Ok(()),
    }
}

/// The notices in one payload (`RUN:STATUS`, comma-separated); malformed ones are skipped with a
/// warning (a notice only wakes waiters: the run itself is in the database).
fn parse(payload: &str) -> impl Iterator<Item = RunNotice> + '_ {
    payload.split(',').filter_map(|notice| {
        let parsed = notice.split_once(':').and_then(|(run, status)| {
            Some(RunNotice {
                run_id: run.parse().ok()?,
                status: status.parse::<RunStatus>().ok()?,
            })
        });
        if parsed.is_none() {
            tracing::warn!(notice, "ignored a malformed run notice");
        }
        parsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RunId;

    #[test]
    fn payloads_carry_several_notices() {
        let (a, b) = (RunId::new(), RunId::new());
        let parsed: Vec<_> = parse(&format!("{a}:queued,{b}:succeeded,junk")).collect();
        assert_eq!(
            parsed,
            [
                RunNotice {
                    run_id: a,
                    status: RunStatus::Queued
                },
                RunNotice {
                    run_id: b,
                    status: RunStatus::Succeeded
                }
            ]
        );
    }
}
