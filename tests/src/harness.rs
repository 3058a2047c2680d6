//! Runs jetcron pieces in-process against a test server and observes what
//! they publish.
//!
//! A "killed" scheduler or worker is its task aborted: its NATS connection
//! drops and it never renews, acks or releases anything, as after SIGKILL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use jetcron_scheduler::SchedulerConfig;
use jetcron_shared::Names;
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::wire::{Event, RunResult, ShardMessage};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Installs a test log subscriber once (`RUST_LOG` to see it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn connect_args(url: &str) -> ConnectArgs {
    ConnectArgs {
        nats_url: url.to_string(),
        ..ConnectArgs::default()
    }
}

pub fn scheduler_config(url: &str, id: &str) -> SchedulerConfig {
    SchedulerConfig {
        connect: connect_args(url),
        id: id.to_string(),
        ..SchedulerConfig::default()
    }
}

/// A task tree on a runtime of its own, so that killing it stops every
/// task it spawned and drops its NATS connection, as a crashed process would.
#[derive(Debug)]
pub struct Isolated<T: Send + 'static> {
    rt: Option<tokio::runtime::Runtime>,
    token: CancellationToken,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Isolated<T> {
    pub fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Isolated<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let token = CancellationToken::new();
        let handle = rt.spawn(f(token.clone()));
        Isolated {
            rt: Some(rt),
            token,
            handle: Some(handle),
        }
    }

    /// Crash: every task stops where it is; nothing is released or acked.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Graceful stop: cancels and waits (at most `limit`) for the result.
    pub async fn stop(mut self, limit: Duration) -> T {
        self.token.cancel();
        let handle = self.handle.take().expect("handle");
        let out = tokio::time::timeout(limit, handle)
            .await
            .unwrap_or_else(|_| panic!("did not stop within {limit:?}"))
            .expect("task panicked");
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        out
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl<T: Send + 'static> Drop for Isolated<T> {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A scheduler replica running in this process on its own runtime.
#[derive(Debug)]
pub struct Scheduler {
    pub id: String,
    inner: Isolated<Result<(), jetcron_scheduler::SchedulerError>>,
}

impl Scheduler {
    pub fn start(url: &str, id: &str) -> Scheduler {
        Scheduler::start_with(scheduler_config(url, id))
    }

    pub fn start_with(config: SchedulerConfig) -> Scheduler {
        let id = config.id.clone();
        let inner = Isolated::spawn(move |token| jetcron_scheduler::run(config, token));
        Scheduler { id, inner }
    }

    /// Crash: no lease release, no goodbye.
    pub fn kill(self) {
        self.inner.kill();
    }

    /// Graceful stop; panics if it takes longer than 10 s or fails.
    pub async fn stop(self) {
        self.inner
            .stop(Duration::from_secs(10))
            .await
            .expect("scheduler returned an error");
    }
}

pub fn worker_config(url: &str, id: &str) -> jetcron_worker::WorkerConfig {
    jetcron_worker::WorkerConfig {
        connect: connect_args(url),
        id: id.to_string(),
        allow_shell: true,
        ..jetcron_worker::WorkerConfig::default()
    }
}

/// A worker running in this process on its own runtime.
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    inner: Isolated<Result<(), jetcron_worker::WorkerError>>,
}

impl Worker {
    pub fn start(url: &str, id: &str) -> Worker {
        Worker::start_with(worker_config(url, id))
    }

    pub fn start_with(config: jetcron_worker::WorkerConfig) -> Worker {
        let id = config.id.clone();
        let inner = Isolated::spawn(move |token| jetcron_worker::run(config, token));
        Worker { id, inner }
    }

    /// Runs a worker built with handlers (`jetcron_worker::Worker::builder`).
    pub fn start_built(id: &str, worker: jetcron_worker::Worker) -> Worker {
        let inner = Isolated::spawn(move |token| worker.run(token));
        Worker {
            id: id.to_string(),
            inner,
        }
    }

    /// Crash: runs in flight are abandoned, nothing is acked.
    pub fn kill(self) {
        self.inner.kill();
    }

    /// Graceful stop; panics if it takes longer than `limit` or fails.
    pub async fn stop(self, limit: Duration) {
        self.inner
            .stop(limit)
            .await
            .expect("worker returned an error");
    }
}

/// Collects every message on a subject, decoded, in arrival order.
#[derive(Debug, Clone)]
pub struct Collector<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T: Clone + Send + 'static> Collector<T> {
    pub async fn subscribe(
        client: &async_nats::Client,
        subject: String,
        decode: fn(&[u8]) -> Option<T>,
    ) -> Collector<T> {
        let mut sub = client.subscribe(subject).await.expect("subscribe");
        client.flush().await.expect("flush");
        let items = Arc::new(Mutex::new(Vec::new()));
        let sink = items.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(item) = decode(&msg.payload) {
                    sink.lock().unwrap().push(item);
                }
            }
        });
        Collector { items }
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the collected items; panics with `what`
    /// and the items after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[T]) -> bool) -> Vec<T>
    where
        T: std::fmt::Debug,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let items = self.snapshot();
            if done(&items) {
                return items;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {limit:?} waiting for {what}; collected: {items:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn results(client: &async_nats::Client, names: &Names) -> Collector<RunResult> {
    Collector::subscribe(client, names.results_all(), |b| RunResult::decode(b).ok()).await
}

pub async fn events(client: &async_nats::Client, names: &Names) -> Collector<Event> {
    Collector::subscribe(client, names.events_all(), |b| Event::decode(b).ok()).await
}

/// A shard message as stored in the work stream, with its headers.
#[derive(Debug, Clone)]
pub struct Stored {
    pub msg: ShardMessage,
    pub msg_id: String,
    pub epoch: u64,
    /// Sequence in the work stream.
    pub seq: u64,
}

/// Drains the work stream through a test consumer (only for tests without
/// workers: a work-queue stream allows one consumer per subject).
#[derive(Debug, Clone)]
pub struct WorkTap {
    items: Arc<Mutex<Vec<Stored>>>,
}

impl WorkTap {
    pub async fn start(client: &async_nats::Client, names: &Names) -> WorkTap {
        let js = jetstream::new(client.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let stream = loop {
            match js.get_stream(names.work_stream()).await {
                Ok(s) => break s,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("work stream never appeared: {e}"),
            }
        };
        let consumer = stream
            .get_or_create_consumer(
                "test-tap",
                pull::Config {
                    durable_name: Some("test-tap".into()),
                    filter_subject: names.work_shards_all(),
                    // A delivery lost with a killed server comes back soon.
                    ack_wait: Duration::from_secs(2),
                    ..Default::default()
                },
            )
            .await
            .expect("tap consumer");
        let items = Arc::new(Mutex::new(Vec::new()));
        let sink = items.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut msgs) = consumer.messages().await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while let Some(Ok(m)) = msgs.next().await {
                    let header = |k: &str| {
                        m.headers
                            .as_ref()
                            .and_then(|h| h.get(k))
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default()
                    };
                    if let Ok(msg) = ShardMessage::decode(&m.payload) {
                        sink.lock().unwrap().push(Stored {
                            msg,
                            msg_id: header("Nats-Msg-Id"),
                            epoch: header("Jetcron-Epoch").parse().unwrap_or(0),
                            seq: m.info().map_or(0, |i| i.stream_sequence),
                        });
                    }
                    let _ = m.ack().await;
                }
            }
        });
        WorkTap { items }
    }

    pub fn snapshot(&self) -> Vec<Stored> {
        self.items.lock().unwrap().clone()
    }

    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Stored]) -> bool,
    ) -> Vec<Stored> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let items = self.snapshot();
            if done(&items) {
                return items;
            }
            if tokio::time::Instant::now() >= deadline {
                let ids: Vec<&str> = items.iter().map(|s| s.msg_id.as_str()).collect();
                panic!("timed out after {limit:?} waiting for {what}; stored: {ids:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Puts raw bytes under a key of the jobs bucket, bypassing the API.
pub async fn kv_put(client: &async_nats::Client, names: &Names, key: &str, value: &[u8]) -> u64 {
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let kv = loop {
        match js.get_key_value(names.jobs_bucket()).await {
            Ok(kv) => break kv,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("jobs bucket never appeared: {e}"),
        }
    };
    kv.put(key, value.to_vec().into()).await.expect("kv put")
}

/// Writes many definitions straight into the jobs bucket, bypassing the
/// API: asynchronous publishes with at most 1,000 acks outstanding (the
/// client stalls beyond a few thousand).
pub async fn kv_put_many(
    client: &async_nats::Client,
    names: &Names,
    definitions: impl IntoIterator<Item = (String, Vec<u8>)>,
) {
    use async_nats::jetstream::context::PublishAckFuture;
    use futures::stream::FuturesUnordered;
    use std::future::IntoFuture;
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while js.get_key_value(names.jobs_bucket()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs bucket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bucket = names.jobs_bucket();
    let mut acks: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    for (id, body) in definitions {
        if acks.len() >= 1000
            && let Some(ack) = acks.next().await
        {
            ack.expect("kv put ack");
        }
        let ack = js
            .publish(Names::kv_subject(&bucket, &id), body.into())
            .await
            .expect("kv put");
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack.expect("kv put ack");
    }
}

/// Waits until the control API answers (some scheduler replica is up).
pub async fn api(client: &async_nats::Client, names: &Names) -> jetcron_shared::api::ApiClient {
    let api = jetcron_shared::api::ApiClient::new(client.clone(), names.clone())
        .with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match api.list().await {
            Ok(_) => return api,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("control API never answered: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every message a stream holds now, in sequence order, read one by one
/// (works on any stream, also a work queue, whose consumers may not overlap).
pub async fn stream_messages(
    client: &async_nats::Client,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.expect("stream");
    let info = s.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if info.messages == 0 {
        return out;
    }
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// The value of a header of a stored message, if present.
pub fn header(m: &async_nats::jetstream::message::StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_string())
}

/// The set-up most scheduler tests share: a nats-server, a client, one
/// scheduler replica `a` whose control API answers, and a tap on the work
/// stream. Keep `server` bound (`server: _server` when unused): dropping it
/// stops the nats-server.
#[derive(Debug)]
pub struct OneScheduler {
    pub server: crate::NatsServer,
    pub client: async_nats::Client,
    pub a: Scheduler,
    pub api: jetcron_shared::api::ApiClient,
    pub tap: WorkTap,
}

impl OneScheduler {
    pub async fn start() -> OneScheduler {
        init_tracing();
        let names = Names::default();
        let server = crate::NatsServer::start().await;
        let client = server.client().await;
        let a = Scheduler::start(&server.url(), "a");
        let api = api(&client, &names).await;
        let tap = WorkTap::start(&client, &names).await;
        OneScheduler {
            server,
            client,
            a,
            api,
            tap,
        }
    }
}
