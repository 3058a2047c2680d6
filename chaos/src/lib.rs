//! jetcron chaos suite: real schedulers, workers and nats-servers under
//! injected faults, and a checker of what they stored.
//!
//! - [`rng`]: the seeded PRNG (SplitMix64) behind every random choice.
//! - [`plan`]: the fault plan drawn from the seed.
//! - [`jobs`]: the jobs a run puts; their commands write the execution log.
//! - [`execlog`]: reads the execution log, the ground truth of what ran.
//! - [`servers`]: nats-server or a 3-node cluster (through the test helper).
//! - [`procs`]: schedulers and workers as child processes.
//! - [`leader`]: who holds the lease.
//! - [`faults`]: carries out a planned fault and records it.
//! - [`history`]: reads results, events, fences and leftovers from the streams.
//! - [`check`]: the invariants, one pure function each.
//! - [`report`]: figures and the printed report.
//! - [`console`]: progress lines.
//! - [`run`]: one run, start to finish.
//!
//! A run goes: seed -> [`plan`] -> [`servers`] + [`procs`] -> [`jobs`] put
//! through the control API -> [`faults`] one at a time -> schedulers stopped,
//! work drained, workers stopped -> [`history`] + [`execlog`] -> [`check`]
//! -> [`report`].

pub mod check;
pub mod console;
pub mod execlog;
pub mod faults;
pub mod history;
pub mod jobs;
pub mod leader;
pub mod plan;
pub mod procs;
pub mod report;
pub mod rng;
pub mod run;
pub mod servers;

pub use run::{Config, Finished, RunError, RunFailure, run};
