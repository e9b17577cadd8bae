//! The engine's error type.

use crate::flow::FlowError;
use crate::ids::FlowId;
use crate::model::Revision;
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
    /// Whether trying again later may succeed (a store hiccup may pass; an invalid flow will not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// An engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
