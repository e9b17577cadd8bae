//! The engine's error type.

use crate::flow::FlowError;
use crate::ids::{FlowId, RunId};
use crate::model::Revision;
use crate::runtime::advance::NotRetryable;
use crate::store::StoreError;

/// What can go wrong in the engine (outside a step: a step's failure is a [`crate::steps::StepError`]
/// recorded in the run).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A flow did not validate.
    #[error("the flow is invalid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidFlow {
        /// Every problem found.
        errors: Vec<FlowError>,
    },
    /// No run has this id (it never existed, or retention deleted it).
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The run's event is no longer stored, so it cannot be replayed.
    #[error("the event of run {0} is no longer stored (retention deleted it)")]
    EventGone(RunId),
    /// The flow is not deployed on this server.
    #[error("flow `{0}` is not deployed (its file was removed or is invalid); replay the run on its original revision instead")]
    FlowNotDeployed(FlowId),
    /// A bulk action selected more runs than it may handle at once.
    #[error("more than {0} runs match: narrow the time window")]
    TooManyRuns(usize),
    /// Only failed runs can be retried.
    #[error(transparent)]
    NotRetryable(#[from] NotRetryable),
    /// A run refers to a flow revision whose source is not kept.
    #[error("revision {revision} of flow `{flow}` is not in the store")]
    RevisionMissing {
        /// The flow.
        flow: FlowId,
        /// The revision.
        revision: Revision,
    },
}

impl Error {
    /// Whether trying again later may succeed (a store hiccup may pass; an invalid flow or a
    /// corrupt record will not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

/// An engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
