//! The pull loops: the group's durable consumers, and pulls sized to the
//! free run slots.
//!
//! A worker pulls from one consumer per [`Route`]: the group's shared one
//! for shell and HTTP shards (filter `jetcron.work.<group>.*`), and one per
//! handler it registered (`jetcron.work.<group>.*.<handler>`), shared with
//! every worker of the group that knows the handler. The filters never
//! overlap, as a work-queue stream requires, and a handler's shards are
//! only ever delivered to a worker that has it. Each consumer has a pull
//! loop and run slots (`--concurrency`) of its own, so a busy handler does
//! not hold up the others.
//!
//! A worker never holds a message it cannot start: a message waiting in a
//! buffer would have its ack wait running down. So the loop waits for a
//! free slot, takes every free slot, asks the server for that many messages
//! (the request waits up to [`PULL_EXPIRES`] for them) and starts a task per
//! message the moment it arrives, each task holding one slot.
//!
//! Trouble with the server never ends the loop: it logs, backs off (100 ms
//! growing to 2 s), gets the consumer again and carries on once the server
//! is back. A pull request dies with the connection that carried it, so a
//! reconnect ends the current pull at once instead of at its expiry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Statistics;
use async_nats::jetstream::consumer::FromConsumer;
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use jetcron_shared::Names;
use jetcron_shared::setup::{self, Resources, SetupError, SetupOptions};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, interval, sleep};
use tracing::{debug, error, info, warn};

use crate::attempt::{self, Runner, Settle};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// The consumer type workers pull from.
pub type PullConsumer = consumer::Consumer<consumer::pull::Config>;

/// How long one pull request waits at the server for messages.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Beyond its expiry, how long a pull waits for the server's answer before
/// taking the request as lost.
const PULL_SLACK: Duration = Duration::from_secs(1);
/// How often a pull looks whether the connection was re-established.
const RECONNECT_CHECK: Duration = Duration::from_millis(100);
/// A pull answered this fast without a message was refused, not expired.
const REFUSED_WITHIN: Duration = Duration::from_millis(50);
/// Unacked messages the group's consumer allows, over all its workers.
pub const MAX_ACK_PENDING: i64 = 10_000;

#[derive(Debug, Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot get or create consumer {consumer} on stream {stream}: {reason}")]
    Consumer {
        stream: String,
        consumer: String,
        reason: String,
    },
}

/// Which of a group's shards a consumer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Shell and HTTP shards (`jetcron.work.<group>.<job>`), on the
    /// group's shared consumer.
    Plain,
    /// The shards of one handler (`jetcron.work.<group>.<job>.<handler>`),
    /// on that handler's consumer, shared by the workers that know it.
    Handler(String),
}

/// Where some of a group's shard messages come from: one durable consumer.
#[derive(Debug, Clone)]
pub struct Source {
    js: jetstream::Context,
    names: Names,
    group: String,
    route: Route,
    ack_wait: Duration,
    setup: SetupOptions,
}

impl Source {
    pub fn new(
        js: jetstream::Context,
        names: Names,
        group: String,
        route: Route,
        ack_wait: Duration,
        setup: SetupOptions,
    ) -> Source {
        Source {
            js,
            names,
            group,
            route,
            ack_wait,
            setup,
        }
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> String {
        match &self.route {
            Route::Plain => self.names.work_consumer(&self.group),
            Route::Handler(h) => self.names.work_handler_consumer(&self.group, h),
        }
    }

    /// The subjects it holds.
    pub fn filter(&self) -> String {
        match &self.route {
            Route::Plain => self.names.work_plain(&self.group),
            Route::Handler(h) => self.names.work_handler(&self.group, h),
        }
    }

    /// Settings of the consumer when this worker creates it.
    pub fn consumer_config(&self) -> consumer::pull::Config {
        let description = match &self.route {
            Route::Plain => format!("jetcron workers of group {}", self.group),
            Route::Handler(h) => {
                format!("jetcron workers of group {} with handler {h}", self.group)
            }
        };
        consumer::pull::Config {
            durable_name: Some(self.consumer_name()),
            description: Some(description),
            filter_subject: self.filter(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Attempts are counted and limited by the workers (see `attempt`).
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        }
    }

    /// Gets (or creates) the consumer again, e.g. after the server restarted.
    pub async fn reopen(&self) -> Result<PullConsumer, ConsumeError> {
        match self.js.get_stream(self.names.work_stream()).await {
            Ok(stream) => self.open_on(&stream).await,
            Err(_) => {
                let resources = setup::ensure(&self.js, &self.names, &self.setup).await?;
                self.open_on(&resources.work).await
            }
        }
    }

    async fn open_on(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> Result<PullConsumer, ConsumeError> {
        let name = self.consumer_name();
        let failed = |e: &dyn std::fmt::Display| ConsumeError::Consumer {
            stream: self.names.work_stream(),
            consumer: name.clone(),
            reason: e.to_string(),
        };
        let mut consumer: PullConsumer = stream
            .get_or_create_consumer(&name, self.consumer_config())
            .await
            .map_err(|e| failed(&e))?;
        let have = consumer.cached_info().config.clone();
        let filter = self.filter();
        if have.filter_subject != filter && !have.filter_subjects.contains(&filter) {
            if self.route == Route::Plain
                && have.filter_subject == self.names.work_group(&self.group)
            {
                // Made by a version without handlers, it would take handler
                // shards too.
                info!(
                    consumer = name,
                    from = have.filter_subject,
                    to = filter,
                    "narrowing the group consumer's filter to shell and HTTP shards"
                );
                let mut narrowed = consumer::pull::Config::try_from_consumer_config(have.clone())
                    .map_err(|e| failed(&e))?;
                narrowed.filter_subject = filter;
                consumer = stream
                    .update_consumer(narrowed)
                    .await
                    .map_err(|e| failed(&e))?;
            } else {
                warn!(
                    consumer = name,
                    filter = have.filter_subject,
                    expected = filter,
                    "consumer exists with another filter; using it as it is"
                );
            }
        }
        if have.ack_wait != self.ack_wait {
            info!(
                consumer = name,
                ack_wait = ?have.ack_wait,
                "consumer exists with another ack wait; using it as it is"
            );
        }
        Ok(consumer)
    }
}

/// Creates the streams and buckets if needed, then opens every source's
/// consumer; retries until it works. `None` when shutdown came first.
pub async fn start(
    sources: &[Source],
    setup: &SetupOptions,
    shutdown: &Shutdown,
) -> Option<(Vec<PullConsumer>, Resources)> {
    let first = sources.first()?;
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let resources = setup::ensure(&first.js, &first.names, setup).await?;
            let mut consumers = Vec::with_capacity(sources.len());
            for source in sources {
                consumers.push(source.open_on(&resources.work).await?);
            }
            Ok::<_, ConsumeError>((consumers, resources))
        };
        match stop_or(shutdown, attempt).await? {
            Ok(started) => return Some(started),
            Err(e) => warn!(error = %e, "cannot set up; retrying"),
        }
        if !pause(shutdown, backoff.next_delay()).await {
            return None;
        }
    }
}

/// The pull loop of one worker.
#[derive(Debug)]
pub struct Puller {
    pub source: Source,
    pub worker: Arc<Runner>,
    pub slots: Arc<Semaphore>,
    pub shutdown: Shutdown,
    /// The client's counters; `connects` moves on every reconnect.
    pub stats: Arc<Statistics>,
}

/// How one pull ended.
enum Pulled {
    Done,
    Stopped,
    Failed(String),
}

impl Puller {
    /// Pulls and starts runs until shutdown is requested. The runs started
    /// are in `tasks`, which the caller drains.
    pub async fn run(&self, consumer: PullConsumer, tasks: &mut JoinSet<()>) {
        let mut consumer = Some(consumer);
        let mut backoff = Backoff::default();
        loop {
            reap(tasks);
            let current = match &consumer {
                Some(c) => c.clone(),
                None => match stop_or(&self.shutdown, self.source.reopen()).await {
                    None => return,
                    Some(Ok(c)) => {
                        info!("consumer open again");
                        consumer = Some(c.clone());
                        c
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "cannot open the consumer; retrying");
                        if !pause(&self.shutdown, backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let Some(Ok(first)) = stop_or(&self.shutdown, self.slots.clone().acquire_owned()).await
            else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            match self.pull(&current, permits, tasks).await {
                Pulled::Done => backoff.reset(),
                Pulled::Stopped => return,
                Pulled::Failed(e) => {
                    warn!(error = e, "pull failed; retrying");
                    consumer = None;
                    if !pause(&self.shutdown, backoff.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    /// One pull request for as many messages as `permits` has slots.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        mut permits: Vec<OwnedSemaphorePermit>,
        tasks: &mut JoinSet<()>,
    ) -> Pulled {
        let connects = self.stats.connects.load(Ordering::Relaxed);
        let started = Instant::now();
        let request = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages();
        let mut batch = match stop_or(&self.shutdown, request).await {
            None => return Pulled::Stopped,
            Some(Err(e)) => return Pulled::Failed(e.to_string()),
            Some(Ok(batch)) => batch,
        };
        let lost = sleep(PULL_EXPIRES + PULL_SLACK);
        let mut lost = std::pin::pin!(lost);
        let mut watch = interval(RECONNECT_CHECK);
        let mut received = 0usize;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.stopping() => {
                    // Messages already here go back at once, not after the ack wait.
                    while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                        hand_back(&message).await;
                    }
                    return Pulled::Stopped;
                }
                next = batch.next() => match next {
                    Some(Ok(message)) => {
                        received += 1;
                        match permits.pop() {
                            Some(slot) => {
                                tasks.spawn(attempt::handle(
                                    self.worker.clone(),
                                    message,
                                    self.shutdown.hand_back_token(),
                                    slot,
                                ));
                            }
                            None => hand_back(&message).await,
                        }
                    }
                    Some(Err(e)) => return Pulled::Failed(e.to_string()),
                    None => break,
                },
                _ = &mut lost => {
                    debug!("no answer to the pull request; pulling again");
                    break;
                }
                _ = watch.tick() => {
                    if self.stats.connects.load(Ordering::Relaxed) != connects {
                        info!("reconnected to NATS; pulling again");
                        break;
                    }
                }
            }
        }
        if received == 0 && started.elapsed() < REFUSED_WITHIN {
            return Pulled::Failed("the server ended the pull request at once".into());
        }
        Pulled::Done
    }
}

/// Gives a message back for immediate redelivery, to any worker.
async fn hand_back(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(Settle::HandedBack.ack_kind()).await {
        warn!(error = %e, "cannot hand a message back; it comes back after the ack wait");
    }
}

/// Collects finished run tasks, so that the set does not grow.
pub fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        log_task_end(done);
    }
}

/// Logs a run task that panicked; its shard comes back after the ack wait.
pub fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!(error = %e, "a run task panicked");
    }
}

/// Runs `f` unless shutdown is requested first (`None`).
async fn stop_or<T>(shutdown: &Shutdown, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.stopping() => None,
        out = f => Some(out),
    }
}

/// Sleeps for `delay`; false when shutdown was requested meanwhile.
async fn pause(shutdown: &Shutdown, delay: Duration) -> bool {
    stop_or(shutdown, sleep(delay)).await.is_some()
}
