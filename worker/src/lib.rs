//! The jetcron worker: pulls shard messages of its group, runs them, and
//! publishes their results. The `jetcron-worker` binary runs it with the
//! shell and HTTP executors; a Rust service embeds it to run handlers of
//! its own.
//!
//! # Handlers: a worker inside a service
//!
//! A service registers async functions by name. A job selects one with
//! `"run": {"handler": "send-reminders"}`, and its shards run only on
//! workers of its group that registered that name (each handler has its
//! own consumer, `jetcron-<group>@<handler>`; see [`consume`]). See
//! [`handler`] for errors, panics, timeouts and cancellation.
//!
//! ```no_run
//! use jetcron_worker::{Output, ShardContext, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn service() -> Result<(), Box<dyn std::error::Error>> {
//! let config = WorkerConfig {
//!     group: "billing".into(),
//!     ..WorkerConfig::default()
//! };
//! let worker = Worker::builder(config)
//!     .handler("send-reminders", |ctx: ShardContext| async move {
//!         // ctx.job(), ctx.instant(), ctx.shard(), ctx.shards(), ctx.param(),
//!         // ctx.attempt(), ctx.run_id(), ctx.payload::<T>()?, ctx.print(..),
//!         // ctx.cancelled().await
//!         ctx.print(format!("shard {} of {}", ctx.shard() + 1, ctx.shards()));
//!         Ok(Output::text("sent 1200"))
//!     })
//!     .build()?;
//! let shutdown = CancellationToken::new(); // cancel it to stop gracefully
//! worker.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embedded-worker` in the repository is the same as a complete
//! program.
//!
//! # Modules
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
//! - [`handler`]: handlers ([`ShardContext`], [`Output`]): registration, and
//!   how one attempt runs, is cancelled, and ends.
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
//! - [`metrics`]: the series served at `--metrics-addr`.
//! - [`heartbeat`]: this worker's liveness key in the workers bucket.
//! - [`shutdown`]: stop pulling, let runs finish, hand back the rest.
//! - [`backoff`]: pauses between retries against the server.
//! - [`mod@error`]: why a worker could not start.
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
pub mod handler;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod output;
pub mod record;
pub mod report;
pub mod shutdown;
pub mod unreadable;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use jetcron_shared::connect::Patience;
use jetcron_shared::metrics::Endpoint;
use jetcron_shared::setup::SetupOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::WorkerConfig;
pub use error::WorkerError;
pub use handler::{HandlerError, HandlerResult, Output, ShardContext};

use crate::attempt::Runner;
use crate::cancel::{LOAD_LIMIT, Replacements};
use crate::consume::{PullConsumer, Puller, Route, Source, log_task_end, reap};
use crate::handler::{Handler, Handlers};
use crate::heartbeat::{Heartbeat, RunCount};
use crate::metrics::WorkerMetrics;
use crate::record::Recorder;
use crate::report::Reporter;
use crate::shutdown::{Drained, Shutdown};

/// How long the last acks and naks may take to leave at exit.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Runs the `jetcron-worker` binary's worker: shell and HTTP shards of
/// `config.group`, no handlers. See [`Worker::run`].
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    Worker::builder(config).build()?.run(shutdown).await
}

/// A worker, with the handlers it registered. Build one with
/// [`Worker::builder`]; see the crate documentation for an example.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    http_policy: http::HostPolicy,
    http_roots: Vec<reqwest::Certificate>,
    handlers: Handlers,
    plain: bool,
}

/// Collects a worker's settings and handlers; [`WorkerBuilder::build`]
/// checks them.
#[derive(Debug)]
pub struct WorkerBuilder {
    config: WorkerConfig,
    handlers: Handlers,
    plain: Option<bool>,
    refused: Vec<String>,
}

impl Worker {
    /// A worker of `config.group`, with `config`'s settings.
    pub fn builder(config: WorkerConfig) -> WorkerBuilder {
        WorkerBuilder {
            config,
            handlers: Handlers::default(),
            plain: None,
            refused: Vec::new(),
        }
    }

    /// The names of its handlers, sorted.
    pub fn handlers(&self) -> impl Iterator<Item = &str> {
        self.handlers.names()
    }

    /// Whether it runs the group's shell and HTTP shards.
    pub fn runs_plain_jobs(&self) -> bool {
        self.plain
    }

    /// Runs until `shutdown` is cancelled, then stops pulling, lets the runs
    /// in flight finish within `config.shutdown_grace`, hands back what
    /// still runs, deletes its heartbeat, and returns `Ok(())`.
    ///
    /// Fails only at start, when it cannot connect with the settings given.
    /// A server that is not there yet, or goes away later, is waited for.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker {
            config,
            http_policy,
            http_roots,
            handlers,
            plain,
        } = self;
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
        let metrics = WorkerMetrics::new(&config.group, &config.id);
        let endpoint = match config.metrics_addr {
            Some(addr) => Some(Endpoint::bind(addr, metrics.registry()).await?),
            None => None,
        };
        let shutdown = Shutdown::new(shutdown, config.shutdown_grace);
        let handler_names: Vec<String> = handlers.names().map(str::to_string).collect();
        info!(
            id = config.id,
            group = config.group,
            concurrency = config.concurrency,
            allow_shell = config.allow_shell,
            http = ?http_policy,
            handlers = ?handler_names,
            plain_jobs = plain,
            "worker starting"
        );

        let setup = config.retention.apply(SetupOptions {
            replicas: config.replicas,
            ..SetupOptions::default()
        });
        let routes = plain
            .then_some(Route::Plain)
            .into_iter()
            .chain(handler_names.iter().cloned().map(Route::Handler));
        let sources: Vec<Source> = routes
            .map(|route| {
                Source::new(
                    js.clone(),
                    names.clone(),
                    config.group.clone(),
                    route,
                    config.ack_wait,
                    setup.clone(),
                )
            })
            .collect();
        let Some((consumers, resources)) = consume::start(&sources, &setup, &shutdown).await else {
            info!("stopped before the consumers were ready");
            return Ok(());
        };
        // Progress must beat the ack wait the server enforces, which is an
        // existing consumer's when it was not created by this worker.
        let ack_wait = consumers
            .iter()
            .map(|c| c.cached_info().config.ack_wait)
            .filter(|w| !w.is_zero())
            .fold(config.ack_wait, Duration::min);
        let running = RunCount::new(metrics.running_gauge());
        metrics.set_slots(config.concurrency * consumers.len());
        let replacements = Replacements::default();
        let runner = Arc::new(Runner {
            id: config.id.clone(),
            allow_shell: config.allow_shell,
            http: http::HttpRunner::new(http_policy, &config.allow_http_host, http_roots),
            max_output: config.max_output,
            kill_grace: config.kill_grace,
            progress_every: ack_wait / 3,
            reporter: Reporter::new(js.clone(), names.clone()),
            recorder: Recorder::new(resources.runs),
            max_lost: config.max_lost_attempts,
            running: running.clone(),
            replacements: replacements.clone(),
            handlers,
            metrics,
        });
        let heartbeat = Heartbeat::new(
            resources.workers,
            &names,
            &config,
            running,
            started_at,
            handler_names,
        );
        info!(
            consumers = ?sources.iter().map(Source::consumer_name).collect::<Vec<_>>(),
            heartbeat = heartbeat.key(),
            heartbeat_interval = ?heartbeat.interval(),
            "pulling"
        );

        let stats = client.statistics();
        let pullers: Vec<(Puller, PullConsumer)> = sources
            .into_iter()
            .zip(consumers)
            .map(|(source, consumer)| {
                let puller = Puller {
                    source,
                    worker: runner.clone(),
                    slots: Arc::new(Semaphore::new(config.concurrency)),
                    shutdown: shutdown.clone(),
                    stats: stats.clone(),
                };
                (puller, consumer)
            })
            .collect();
        // The heartbeat and the follower live inside this future, not in
        // tasks of their own, so that a worker whose `run` is aborted goes
        // silent like a dead process.
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
            pull_until_stopped(&shutdown, pullers, config.shutdown_grace).await;
            done.cancel();
        };
        let serving = async {
            if let Some(endpoint) = endpoint {
                endpoint.serve(done.clone()).await;
            }
        };
        tokio::join!(heartbeat.run(done.clone()), following, work, serving);
        match heartbeat.remove().await {
            Ok(()) => info!("heartbeat deleted"),
            Err(e) => {
                warn!(error = %e, "heartbeat not deleted; it expires with the bucket's max age")
            }
        }
        match tokio::time::timeout(FLUSH_LIMIT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot flush the last acks"),
            Err(_) => warn!("cannot flush the last acks: timed out"),
        }
        info!("worker stopped");
        Ok(())
    }
}

impl WorkerBuilder {
    /// Registers `handler` as `name`: it runs the shards of jobs with
    /// `"run": {"handler": "<name>"}` in this worker's group. A name is
    /// 1-64 of `A-Z a-z 0-9 _ -`, registered once.
    pub fn handler<F, Fut>(mut self, name: &str, handler: F) -> WorkerBuilder
    where
        F: Fn(ShardContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        if !jetcron_shared::job::is_valid_handler(name) {
            self.refused.push(format!(
                "handler name {} must be 1-{} characters of A-Z, a-z, 0-9, '_' or '-'",
                jetcron_shared::quote::quote(name),
                jetcron_shared::job::MAX_HANDLER_LEN
            ));
        } else if !self.handlers.insert(name, Handler::new(handler)) {
            self.refused
                .push(format!("handler '{name}' is registered twice"));
        }
        self
    }

    /// Whether it also runs the group's shell and HTTP shards (within
    /// `allow_shell`, `no_http` and `allow_http_host`). By default a worker
    /// with handlers runs only its handlers' shards, so that a service does
    /// not take (and fail) the shell shards meant for the group's
    /// `jetcron-worker --allow-shell` processes; one without handlers runs
    /// the shell and HTTP shards.
    pub fn plain_jobs(mut self, on: bool) -> WorkerBuilder {
        self.plain = Some(on);
        self
    }

    /// Checks the settings and the handlers.
    pub fn build(self) -> Result<Worker, WorkerError> {
        self.config.validate()?;
        let http_policy = self
            .config
            .http_policy()
            .map_err(config::ConfigError::from)?;
        let http_roots = self.config.http_roots()?;
        self.config.connect.names()?;
        if !self.refused.is_empty() {
            return Err(WorkerError::Handlers(self.refused.join("; ")));
        }
        let plain = self.plain.unwrap_or(self.handlers.is_empty());
        if !plain && self.handlers.is_empty() {
            return Err(WorkerError::Handlers(
                "nothing to run: no handler registered and plain jobs turned off".into(),
            ));
        }
        Ok(Worker {
            config: self.config,
            http_policy,
            http_roots,
            handlers: self.handlers,
            plain,
        })
    }
}

/// Pulls and runs shards from every consumer until shutdown is requested,
/// then lets the runs in flight finish within `grace` and hands back the
/// rest.
async fn pull_until_stopped(
    shutdown: &Shutdown,
    pullers: Vec<(Puller, PullConsumer)>,
    grace: Duration,
) {
    let mut sets: Vec<JoinSet<()>> = pullers.iter().map(|_| JoinSet::new()).collect();
    futures::future::join_all(
        pullers
            .iter()
            .zip(sets.iter_mut())
            .map(|((puller, consumer), tasks)| puller.run(consumer.clone(), tasks)),
    )
    .await;
    sets.iter_mut().for_each(reap);

    let in_flight: usize = sets.iter().map(JoinSet::len).sum();
    info!(in_flight, grace = ?grace, "stopped pulling");
    let drained = shutdown
        .drain(async {
            for tasks in sets.iter_mut() {
                while let Some(done) = tasks.join_next().await {
                    log_task_end(done);
                }
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
    for tasks in sets.iter_mut() {
        tasks.abort_all();
        while let Some(done) = tasks.join_next().await {
            log_task_end(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn noop(_ctx: ShardContext) -> HandlerResult {
        Ok(Output::empty())
    }

    fn refusal(b: WorkerBuilder) -> String {
        match b.build() {
            Err(WorkerError::Handlers(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_and_repeated_handler_names_are_refused_naming_them() {
        let b = Worker::builder(WorkerConfig::default())
            .handler("send reminders", noop)
            .handler("ok", noop)
            .handler("ok", noop);
        assert_eq!(
            refusal(b),
            "handler name 'send reminders' must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'; \
             handler 'ok' is registered twice"
        );
    }

    #[test]
    fn handlers_alone_unless_plain_jobs_are_asked_for() {
        let w = Worker::builder(WorkerConfig::default()).build().unwrap();
        assert!(w.runs_plain_jobs());
        assert_eq!(w.handlers().count(), 0);
        let w = Worker::builder(WorkerConfig::default())
            .handler("b", noop)
            .handler("a", noop)
            .build()
            .unwrap();
        assert!(!w.runs_plain_jobs());
        assert_eq!(w.handlers().collect::<Vec<_>>(), ["a", "b"]);
        let w = Worker::builder(WorkerConfig::default())
            .handler("a", noop)
            .plain_jobs(true)
            .build()
            .unwrap();
        assert!(w.runs_plain_jobs());
        assert_eq!(
            refusal(Worker::builder(WorkerConfig::default()).plain_jobs(false)),
            "nothing to run: no handler registered and plain jobs turned off"
        );
    }
}
