//! Authoring aids: running a flow offline with canned answers for the steps that would call out
//! ([`offline`]), and flagging the expressions that resolved to nothing, with where they are
//! written and the closest path that exists ([`unresolved`]). `hookflow run --dry-run`,
//! `hookflow validate --samples` and `hookflow test` are built on them.

pub mod offline;
pub mod unresolved;
