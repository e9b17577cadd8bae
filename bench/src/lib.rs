//! hookflow's benchmark harness: a load generator ([`load`]), a sink that counts what it receives
//! ([`sink`]), a `hookflow serve` child process watched through `/proc` ([`server`]) and the
//! scenarios that tie them together ([`scenario`]); a [`relay`] stands in for a server that does
//! nothing but pass events on, to measure the machine's ceiling. Everything runs on 127.0.0.1 and stops by
//! itself. The `hookflow-bench` binary prints and records the figures; the test suite runs each
//! scenario small, for correctness only.

pub mod load;
pub mod relay;
pub mod scenario;
pub mod server;
pub mod sink;
