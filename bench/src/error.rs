//! What can stop a scenario. A scenario that fails is reported as failed
//! with this error; the others still run.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    /// A NATS or JetStream call failed.
    #[error("{what}: {reason}")]
    Nats { what: String, reason: String },
    /// Something the scenario waits for did not happen in time.
    #[error("{what}: not within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// A child process could not be started or signalled.
    #[error("{what}: {reason}")]
    Process { what: String, reason: String },
    /// A binary the bench runs is missing.
    #[error(
        "{name} not found in {dir}; build it with `cargo build --release -p jetcron-scheduler -p jetcron-worker` or pass --bin-dir"
    )]
    MissingBinary { name: String, dir: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    pub fn nats(what: impl Into<String>, reason: impl std::fmt::Display) -> BenchError {
        BenchError::Nats {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub fn timeout(what: impl Into<String>, limit: Duration) -> BenchError {
        BenchError::Timeout {
            what: what.into(),
            limit,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
