//! hookflow's connectors: step kinds for SaaS APIs (HubSpot, Stripe, Slack, …), email over SMTP,
//! and the verifiers of inbound webhook signatures (`verify`).
//!
//! # Layout
//! Each connector implements [`Connector`] and registers its step kinds with the engine's
//! [`Registry`]; the engine's flow parser never changes when one is added. Verifiers register by
//! provider name. [`register_all`] is what the `hookflow` binary calls.

#![warn(missing_docs)]

pub mod api;
pub mod email;
pub mod hubspot;
pub mod oauth;
pub mod slack;
pub mod stripe;
pub mod verify;

use hookflow_engine::steps::{BuildContext, Registry};
use serde_json::Value;

/// A family of step kinds for one service.
pub trait Connector: Sync {
    /// The service's name, as used in flow files (`hubspot`, `stripe`, `slack`).
    fn name(&self) -> &'static str;

    /// Adds the connector's step kinds.
    fn register(&self, registry: &mut Registry);
}

/// The connectors this build ships.
const CONNECTORS: &[&dyn Connector] = &[
    &hubspot::HubSpotConnector,
    &stripe::StripeConnector,
    &slack::SlackConnector,
    &email::EmailConnector,
];

/// Registers every connector's step kinds and every webhook verifier.
pub fn register_all(registry: &mut Registry) {
    verify::register(registry);
    for connector in CONNECTORS {
        connector.register(registry);
    }
}

/// The one action a connector step names, from its (action, YAML key, config if given) list;
/// records an error when there is none or more than one.
fn one_action<Op: Copy, const N: usize>(
    cx: &mut BuildContext<'_>,
    actions: [(Op, &'static str, Option<Value>); N],
) -> Option<(Op, &'static str, Value)> {
    let mut given = actions
        .iter()
        .filter_map(|(op, name, config)| config.clone().map(|c| (*op, *name, c)));
    match (given.next(), given.next()) {
        (Some(only), None) => Some(only),
        (None, _) => {
            let names: Vec<String> = actions.iter().map(|(_, n, _)| format!("`{n}`")).collect();
            cx.error("", format!("name one action: {}", names.join(", ")));
            None
        }
        (Some((_, first, _)), Some((_, second, _))) => {
            cx.error(
                second,
                format!("a step does one action, but this one has `{first}` and `{second}`: split it into two steps"),
            );
            None
        }
    }
}

/// An action's config as JSON (compiled as templates), when the step gives it; optional fields
/// left out stay out (not `null`), so the recorded input shows what the flow wrote.
fn config<T: serde::Serialize>(action: &Option<T>) -> Option<Value> {
    action.as_ref().map(|a| {
        let mut value = serde_json::to_value(a).expect("action configs serialize");
        if let Value::Object(fields) = &mut value {
            fields.retain(|_, v| !v.is_null());
        }
        value
    })
}
