//! jetcron scheduler.
//!
//! - [`config`]: settings with defaults.
//! - [`catalog`]: watches the jobs bucket; every change becomes a catalog event.
//! - [`lease`]: the leader lease (create / update-at-revision, local deadline).
//! - [`fence`]: the leader's fences, which make the server refuse a deposed
//!   leader's writes.
//! - [`engine`]: the fire loop: the job [`table`] (definitions, fire
//!   states, timer) and leadership terms.
//! - [`decide`]: what a due instant becomes (fire, misfire, skip), apart
//!   from I/O.
//! - [`persist`]: stores a batch of decisions, fenced: fire states, then
//!   shard messages, then events and fire records.
//! - [`dispatch`]: a fire and its shard messages (and the unfenced
//!   publisher of manual fires).
//! - [`deletion`]: purges a deleted job's shard messages from the work
//!   stream, and why that is enough.
//! - [`state`]: per-job fire state (the write-ahead record of each
//!   decision) and the leader's checkpoint.
//! - [`mirror`]: a standby's copy of every fire state, kept current so
//!   that taking over reads nothing per job.
//! - [`events`]: events the control API publishes.
//! - [`replica`]: this replica's heartbeat, for `status`.
//! - [`sweep`]: removes shard messages a server crash stranded in the work
//!   stream below their consumer's ack floor.
//! - [`api`]: the control API micro service.
//!
//! A definition travels: jobs bucket -> catalog -> engine (job table) ->
//! timer -> at its instant, if this replica leads (lease held, fences
//! stored): a decision -> persist: fire state, then one message per shard
//! on `jetcron.work.<group>.<job>`, then the `fired` event and fire record,
//! each write fenced -> table's timer holds the next instant.

pub mod api;
pub mod backlog;
pub mod catalog;
pub mod config;
pub mod console;
pub mod decide;
pub mod deletion;
pub mod dispatch;
pub mod ends;
pub mod engine;
pub mod events;
pub mod fence;
pub mod lease;
pub mod metrics;
pub mod mirror;
pub mod persist;
pub mod replica;
pub mod state;
pub mod sweep;
pub mod table;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream;
use jetcron_shared::connect::{ConnectError, Patience};
use jetcron_shared::metrics::Endpoint;
use jetcron_shared::names::InvalidPrefix;
use jetcron_shared::setup::{self, Resources, SetupError};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::SchedulerConfig;

#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Service(#[from] api::ServiceError),
    #[error(transparent)]
    Metrics(#[from] jetcron_shared::metrics::MetricsError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
}

/// Runs a scheduler replica until `shutdown` is cancelled.
pub async fn run(
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let names = config.connect.names()?;
    let client = config
        .connect
        .connect(
            &format!("jetcron-scheduler {}", config.id),
            Patience::WaitForServer,
        )
        .await?;
    let js = jetstream::new(client.clone());
    let Some(res) = ensure_resources(&js, &names, &config, &shutdown).await? else {
        return Ok(());
    };
    // The lease lifetime is the bucket's, whatever this replica was told.
    let ttl = res.lease.stream.cached_info().config.max_age;
    let ttl = if ttl.is_zero() {
        config.setup.lease_ttl
    } else {
        ttl
    };
    info!(id = %config.id, prefix = names.prefix(), lease_ttl = ?ttl, "scheduler starting");
    let metrics = metrics::SchedulerMetrics::new(&config.id);
    let endpoint = match config.metrics_addr {
        Some(addr) => Some(Endpoint::bind(addr, metrics.registry()).await?),
        None => None,
    };
    let console = match &config.console {
        Some(c) => Some(
            console::Console::bind(
                c,
                client.clone(),
                config.connect.clone(),
                names.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let console = tokio::spawn(async move {
        if let Some(console) = console {
            console.serve().await;
        }
    });

    let events = events::Events::new(js.clone(), names.clone());
    let index = catalog::JobIndex::new();
    let api = api::spawn(
        client.clone(),
        &names,
        &res,
        &config.id,
        api::Shared {
            events: events.clone(),
            index: index.clone(),
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    )
    .await?;
    let (catalog_tx, catalog_rx) = mpsc::channel(4096);
    let catalog = tokio::spawn(catalog::watch(
        res.jobs.clone(),
        events.clone(),
        index.clone(),
        catalog_tx,
        shutdown.clone(),
    ));
    // The lease outlives the engine's fire loop: the engine releases it once
    // it has stopped firing, before anything else is torn down.
    let lease_stop = CancellationToken::new();
    let lease = lease::spawn(
        res.lease.clone(),
        lease::LeaseSettings {
            holder: config.id.clone(),
            key: names.lease_key().to_string(),
            ttl,
            poll: config.takeover_poll,
        },
        lease_stop.clone(),
        metrics.clone(),
    );
    let observing = tokio::spawn({
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        let leadership = lease.leadership.clone();
        let backlog = metrics.clone().follow_backlog(
            res.work.clone(),
            names.clone(),
            index.clone(),
            shutdown.clone(),
        );
        async move {
            // Nobody reads the gauges without the endpoint: no refresh then.
            let serving = async {
                if let Some(endpoint) = endpoint {
                    tokio::join!(endpoint.serve(shutdown.clone()), backlog);
                }
            };
            tokio::select! {
                _ = serving => {}
                _ = metrics.follow_leadership(leadership) => {}
            }
        }
    });
    let states_current = Arc::new(AtomicBool::new(false));
    let heartbeat = tokio::spawn(replica::beat(
        res.lease.clone(),
        names.replica_key(&config.id),
        config.id.clone(),
        replica::Readiness {
            leadership: lease.leadership.clone(),
            index: index.clone(),
            states_current: states_current.clone(),
        },
        shutdown.clone(),
    ));
    let posting = tokio::spawn(webhooks::run(
        res.events.clone(),
        names.clone(),
        config.webhooks.clone(),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(sweep::run(
        res.work.clone(),
        lease.leadership.clone(),
        shutdown.clone(),
    ));
    let engine = engine::Engine::new(
        engine::EngineSettings {
            holder: config.id.clone(),
            misfire_threshold: config.misfire_threshold,
            states_current,
            metrics,
        },
        lease.leadership.clone(),
        lease.resign.clone(),
        res.clone(),
        names.clone(),
    );
    engine
        .run(catalog_rx, shutdown.clone(), lease_stop.clone())
        .await;
    let _ = lease.task.await;
    let _ = heartbeat.await;
    let _ = sweeper.await;
    let _ = posting.await;
    let _ = catalog.await;
    let _ = api.await;
    let _ = observing.await;
    let _ = console.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    info!(id = %config.id, "scheduler stopped");
    Ok(())
}

/// Creates the resources, retrying while the server is unreachable.
async fn ensure_resources(
    js: &jetstream::Context,
    names: &jetcron_shared::Names,
    config: &SchedulerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Resources>, SchedulerError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match setup::ensure(js, names, &config.setup).await {
            Ok(r) => return Ok(Some(r)),
            Err(e) => warn!(error = %e, "cannot set up NATS resources yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
