//! The jetcron worker: pulls shard messages of its group, runs them, and
//! publishes their results.
//!
//! - [`config`]: [`WorkerConfig`], the settings with their defaults.
//! - [`consume`]: the group's durable consumer and the pull loop, which
//!   pulls no more messages than there are free run slots.
//! - [`attempt`]: one delivery: decode, skip if already finished, run,
//!   report, settle (ack, nak with delay, term; progress while running),
//!   the rule for attempt numbers, and the end of crash loops.
//! - [`environment`]: what a command is handed: `JETCRON_*` variables and
//!   the payload file.
//! - [`execute`]: the shell executor: process group, timeout, bounded output.
//! - [`http`]: the HTTP executor (`run.http`): one request, redirects not
//!   followed, the response body's tail as output; `--no-http` and
//!   `--allow-http-host`.
//! - [`output`]: the bounded tail of a run's output.
//! - [`ending`]: what an attempt stores as it ends, and in which order.
//! - [`report`]: publishes results, `dead` and `expired` events, and the end
//!   notices of tracked shards through JetStream.
//! - [`cancel`]: the latest replaced fire per job (`overlap: replace`),
//!   read from the `replaced` events; stops and skips shards of replaced
//!   fires.
//! - [`record`]: shard records (run history) in the runs bucket.
//! - [`heartbeat`]: this worker's liveness key in the workers bucket.
//! - [`shutdown`]: stop pulling, let runs finish, hand back the rest.
//! - [`backoff`]: pauses between retries against the server.
//! - [`error`]: why a worker could not start.
//! - [`unreadable`]: a shard message this version cannot read whole.
//!
//! A shard message travels: work stream `jetcron.work.<group>.<job>` ->
//! [`consume`] pulls it into a free slot -> [`attempt`] decodes it and
//! reads its shard record ([`record`]): a shard that already finished for
//! good is acked without running, one whose last attempts all died with
//! their workers ends dead without running, one delivered past its
//! deadline ends expired without running, one of a replaced fire
//! ([`cancel`]) ends cancelled without running, any other gets its attempt
//! number ->
//! [`attempt`] marks the record `running` and runs the shard with
//! [`execute`] in the [`environment`] it builds, or with [`http`], (acking progress
//! meanwhile, and stopping it if its fire is replaced) -> [`ending`] has
//! [`report`] store the `RunResult` on `jetcron.results.<job>` (and a
//! `dead` event after the last failed attempt, an `expired` one for a shard
//! past its deadline, and on `jetcron.ends.<job>` the end notice of a
//! tracked shard that ends for good), then [`record`] write the outcome
//! into the shard record -> [`attempt`] settles the message: ack, nak with
//! the retry delay, or term.
//!
//! Beside it, [`heartbeat`] keeps `<group>.<id>` fresh in the workers bucket
//! from start to exit, with the number of shards running, and
//! [`cancel::follow`] reads the `replaced` events.

pub mod attempt;
pub mod backoff;
pub mod cancel;
pub mod config;
pub mod consume;
pub mod ending;
pub mod environment;
pub mod error;
pub mod execute;
pub mod heartbeat;
pub mod http;
pub mod output;
pub mod record;
pub mod report;
pub mod shutdown;
pub mod unreadable;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use jetcron_shared::connect::Patience;
use jetcron_shared::setup::SetupOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::WorkerConfig;
pub use error::WorkerError;

use crate::attempt::Worker;
use crate::cancel::{LOAD_LIMIT, Replacements};
use crate::consume::{PullConsumer, Puller, Source, log_task_end, reap};
use crate::heartbeat::{Heartbeat, RunCount};
use crate::record::Recorder;
use crate::report::Reporter;
use crate::shutdown::{Drained, Shutdown};

/// How long the last acks and naks may take to leave at exit.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Runs a worker until `shutdown` is cancelled, then stops pulling, lets the
/// runs in flight finish within `config.shutdown_grace`, hands back what
/// still runs, deletes its heartbeat, and returns `Ok(())`.
///
/// Fails only at start, on a setting it cannot run with. A server that is
/// not there yet, or goes away later, is waited for.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    config.validate()?;
    let http_policy = config.http_policy().map_err(config::ConfigError::from)?;
    let names = config.connect.names()?;
    let client = config
        .connect
        .connect(
            &format!("jetcron-worker {}", config.id),
            Patience::WaitForServer,
        )
        .await?;
    let js = jetstream::new(client.clone());
    let started_at = Utc::now();
    let shutdown = Shutdown::new(shutdown, config.shutdown_grace);
    info!(
        id = config.id,
        group = config.group,
        concurrency = config.concurrency,
        allow_shell = config.allow_shell,
        http = ?http_policy,
        "worker starting"
    );

    let source = Source::new(
        js.clone(),
        names.clone(),
        config.group.clone(),
        config.ack_wait,
        config.retention.apply(SetupOptions {
            replicas: config.replicas,
            ..SetupOptions::default()
        }),
    );
    let Some((consumer, resources)) = source.start(&shutdown).await else {
        info!("stopped before the consumer was ready");
        return Ok(());
    };
    // Progress must beat the ack wait the server enforces, which is the
    // existing consumer's when it was not created by this worker.
    let server_ack_wait = consumer.cached_info().config.ack_wait;
    let ack_wait = if server_ack_wait.is_zero() {
        config.ack_wait
    } else {
        server_ack_wait.min(config.ack_wait)
    };
    let running = RunCount::default();
    let replacements = Replacements::default();
    let worker = Arc::new(Worker {
        id: config.id.clone(),
        allow_shell: config.allow_shell,
        http: http::HttpRunner::new(http_policy, &config.allow_http_host),
        max_output: config.max_output,
        kill_grace: config.kill_grace,
        progress_every: ack_wait / 3,
        reporter: Reporter::new(js.clone(), names.clone()),
        recorder: Recorder::new(resources.runs),
        max_lost: config.max_lost_attempts,
        running: running.clone(),
        replacements: replacements.clone(),
    });
    let heartbeat = Heartbeat::new(resources.workers, &names, &config, running, started_at);
    info!(
        consumer = names.work_consumer(&config.group),
        heartbeat = heartbeat.key(),
        heartbeat_interval = ?heartbeat.interval(),
        "pulling"
    );

    let puller = Puller {
        source,
        worker,
        slots: Arc::new(Semaphore::new(config.concurrency)),
        shutdown: shutdown.clone(),
        stats: client.statistics(),
    };
    // The heartbeat and the follower live inside this future, not in tasks
    // of their own, so that a worker whose `run` is aborted goes silent
    // like a dead process.
    let done = CancellationToken::new();
    let following = cancel::follow(
        js.clone(),
        names.clone(),
        replacements.clone(),
        done.clone(),
    );
    let work = async {
        // A shard of a replaced fire must not run because its worker had
        // not read the replace yet.
        tokio::select! {
            _ = shutdown.stopping() => {}
            loaded = tokio::time::timeout(LOAD_LIMIT, replacements.loaded()) => {
                if loaded.is_err() {
                    warn!(limit = ?LOAD_LIMIT, "replaced events not read yet; pulling anyway");
                }
            }
        }
        pull_until_stopped(puller, consumer, config.shutdown_grace).await;
        done.cancel();
    };
    tokio::join!(heartbeat.run(done.clone()), following, work);
    match heartbeat.remove().await {
        Ok(()) => info!("heartbeat deleted"),
        Err(e) => warn!(error = %e, "heartbeat not deleted; it expires with the bucket's max age"),
    }
    match tokio::time::timeout(FLUSH_LIMIT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot flush the last acks"),
        Err(_) => warn!("cannot flush the last acks: timed out"),
    }
    info!("worker stopped");
    Ok(())
}

/// Pulls and runs shards until shutdown is requested, then lets the runs in
/// flight finish within `grace` and hands back the rest.
async fn pull_until_stopped(puller: Puller, consumer: PullConsumer, grace: Duration) {
    let mut tasks = JoinSet::new();
    puller.run(consumer, &mut tasks).await;
    reap(&mut tasks);

    info!(in_flight = tasks.len(), grace = ?grace, "stopped pulling");
    let drained = puller
        .shutdown
        .drain(async {
            while let Some(done) = tasks.join_next().await {
                log_task_end(done);
            }
        })
        .await;
    match drained {
        Drained::Finished => info!("runs in flight finished"),
        Drained::HandedBack => warn!("grace over: runs still going were killed and handed back"),
        Drained::Abandoned => {
            error!("runs did not hand back in time; their shards come back after the ack wait")
        }
    }
    tasks.abort_all();
    while let Some(done) = tasks.join_next().await {
        log_task_end(done);
    }
}
