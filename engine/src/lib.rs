//! hookflow's engine: the flow model and the durable runtime. No HTTP server lives here; the
//! `hookflow` binary wires this crate to its server and CLI.
//!
//! # Layout
//! - [`ids`], [`model`]: identifiers and the records the engine keeps (events, runs, step records,
//!   queue items).
//! - [`flow`]: flow files — YAML spec, validation with `file:line:col` errors, JSON Schema.
//! - [`expr`]: templates (handlebars), JSONPath selection and filter conditions.
//! - [`steps`]: the `Action` contract, the kind registry, and the built-in steps `filter`, `map`,
//!   `http` (with `paginate:`, in `steps::paging`), `code` (JavaScript in a QuickJS sandbox, in
//!   `steps::code`).
//! - [`outbound`]: the shared HTTP client and the policy that keeps actions off private networks.
//! - [`pacing`]: rate-limit pacing per connector account.
//! - [`store`]: the `Store` trait (the contract several nodes can share: owned, fenced leases;
//!   coordination; run notices; the quarantine), the injected clock, and the sled backend.
//! - [`authoring`]: offline runs with stubbed calls, and flags for expressions that resolved to
//!   nothing (previews, `validate --samples`, flow tests).
//! - [`intake`]: what a catch hook decides before a run exists (signature, event type, dedupe
//!   key), shared by the server and flow tests.
//! - [`secrets`]: a flow's secrets, the values derived from them, and their redaction.
//! - [`schedule`]: cron schedules in a timezone (the ticks `schedule:` flows fire at).
//! - [`runtime`]: ingest, the queue dispatcher and workers, retry policies, the pure decision
//!   function `advance`.
//!
//! # How an event moves
//! `Engine::ingest` writes the event, its run and the run's first queue items in one durable batch
//! (the caller acknowledges only after it returns). Workers claim due items with a lease that names
//! their node and carries a fencing token, renew it while the step runs, render the step's input,
//! execute it, and commit the step record and the next items atomically through
//! `Store::update_run`, which the store refuses once the lease is no longer held. A crash loses at
//! most in-flight attempts, which run again with the same idempotency key once their lease expires.

#![warn(missing_docs)]

pub mod authoring;
pub mod error;
pub mod expr;
pub mod flow;
pub mod ids;
pub mod intake;
pub mod model;
pub mod outbound;
pub mod pacing;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod steps;
pub mod store;
pub mod verify;

pub use error::{Error, Result};
