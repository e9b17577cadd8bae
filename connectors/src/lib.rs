//! hookflow's connectors: step kinds for SaaS APIs (HubSpot, Stripe, …) and the verifiers of
//! inbound webhook signatures (`verify`).
//!
//! # Layout
//! Each connector implements [`Connector`] and registers its step kinds with the engine's
//! [`Registry`]; the engine's flow parser never changes when one is added. Verifiers register by
//! provider name. [`register_all`] is what the `hookflow` binary calls.

#![warn(missing_docs)]

pub mod verify;

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

/// Registers every connector's step kinds and every webhook verifier.
pub fn register_all(registry: &mut Registry) {
    verify::register(registry);
    for connector in CONNECTORS {
        connector.register(registry);
    }
}
