//! End-to-end tests: the real `hookflow` binary, real HTTP on 127.0.0.1, a real sled directory
//! (and for `cluster`, a throwaway PostgreSQL cluster).
//! One test binary; the harness is in `support`.

mod access;
mod alerts;
mod audit;
mod authoring;
mod bench;
mod browser;
mod callbacks;
mod cli;
mod cluster;
mod code;
mod connectors;
mod crash;
mod delivery;
mod fakes;
mod limits;
mod openapi;
mod outbound;
mod paging;
mod pipeline;
mod quarantine;
mod requests;
mod resources;
mod secrets;
mod signatures;
mod storage;
mod support;
mod ui;
mod validate;
