//! `jetcron`, the operator CLI, as a library that `main.rs` dispatches into.
//!
//! Every command is a plain NATS request to the control API (or a
//! subscription), so anything it does can also be done with the `nats` CLI.
//!
//! - [`connect`]: NATS connection and API client from the common flags.
//! - [`failure`]: what a failed command prints and its exit code.
//! - [`output`]: tables, durations and ages for people; JSON for scripts.
//! - [`jobs`]: `job put/get/rm/ls/pause/resume/trigger/next/runs`; `ls`
//!   walks `job.list` page by page and prints each page as it arrives.
//! - [`apply`]: `apply`: job files -> [`manifest`] (load, validate) ->
//!   compare with what is stored ([`diff`]) -> `on_success` cycles refused
//!   and writes ordered ([`chain`]) -> conditional writes.
//! - [`status`]: `status` and `workers`.
//! - [`watch`]: `watch`: results and events, one line each.
//!
//! Exit codes: 0 success, 1 the API refused the request (invalid definition,
//! unknown job, conflict), 2 usage or local input error, 3 NATS unreachable or
//! no scheduler answering.

pub mod apply;
pub mod chain;
pub mod connect;
pub mod diff;
pub mod failure;
pub mod jobs;
pub mod manifest;
pub mod output;
pub mod status;
pub mod watch;

pub use failure::Failure;
pub use output::Output;
