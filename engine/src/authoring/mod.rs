//! Authoring aids: running a flow offline with canned answers for the steps that would call out
//! ([`offline`]), flagging the expressions that resolved to nothing, with where they are
//! written and the closest path that exists ([`unresolved`]), and warning of request fields a
//! sample would send empty ([`empty`]). `hookflow run --dry-run`, `hookflow validate`, the
//! preview and `hookflow test` are built on them.

pub mod empty;
pub mod offline;
pub mod unresolved;
