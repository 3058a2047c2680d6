//! What the jetcron scheduler and workers agree on.
//!
//! - [`names`]: every bucket, stream, consumer and subject name, from one prefix.
//! - [`job`]: the job definition (`JobSpec` as stored, `Job` once validated).
//! - [`schedule`]: cron, macros, `@every`, `@at`; time zones and DST.
//! - [`quote`]: user input quoted in errors, cut to 80 characters.
//! - [`wire`]: the messages that cross NATS: shard message, run result, event.
//! - [`api`]: request and reply bodies of the control API.
//! - [`runs`]: run history and heartbeat records kept in KV.
//! - [`setup`]: creates the buckets and streams, idempotently.
//! - [`connect`]: connection options shared by every binary.
//!
//! A fire travels: job definition (jobs bucket) -> scheduler computes the
//! instant with [`schedule`] -> [`wire::ShardMessage`] per shard on the work
//! stream -> worker runs it -> [`wire::RunResult`] on the results stream.

pub mod api;
pub mod connect;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod quote;
pub mod runs;
pub mod schedule;
pub mod setup;
pub mod wire;

pub use job::{Definition, Job, JobError, JobSpec};
pub use names::Names;
pub use schedule::Schedule;
