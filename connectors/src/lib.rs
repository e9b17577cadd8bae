//! hookflow's connectors: step kinds for SaaS APIs (HubSpot, Stripe, …) and, later, the verifiers
//! of inbound webhook signatures.
//!
//! # Layout
//! Each connector implements [`Connector`] and registers its step kinds with the engine's
//! [`Registry`]; the engine's flow parser never changes when one is added. [`register_all`] is what
//! the `hookflow` binary calls.

#![warn(missing_docs)]

use hookflow_engine::steps::Registry;

/// A family of step kinds for one service.
pub trait Connector: Sync {
    /// The service's name, as used in flow files (`hubspot`, `stripe`).
    fn name(&self) -> &'static str;

    /// Adds the connector's step kinds.
    fn register(&self, registry: &mut Registry);
}

/// The connectors this build ships. None yet: the HubSpot and Stripe actions are the next step.
const CONNECTORS: &[&dyn Connector] = &[];

/// Registers every connector's step kinds.
pub fn register_all(registry: &mut Registry) {
    for connector in CONNECTORS {
        connector.register(registry);
    }
}
