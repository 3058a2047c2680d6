//! Why a worker could not start. Once it runs, nothing ends it but a
//! shutdown request: trouble with the server or with one shard is logged
//! and retried, or settled on that shard alone.

use jetcron_shared::connect::ConnectError;
use jetcron_shared::names::InvalidPrefix;
use thiserror::Error;

use crate::config::ConfigError;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Prefix(#[from] InvalidPrefix),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("invalid handlers: {0}")]
    Handlers(String),
    #[error(transparent)]
    Metrics(#[from] jetcron_shared::metrics::MetricsError),
}
