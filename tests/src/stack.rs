//! [`Stack`]: a nats-server, one scheduler, its control API, and every
//! result and event collected from the start, for tests that run workers
//! of their own and put and trigger jobs through the API.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use jetcron_shared::Names;
use jetcron_shared::api::{ApiClient, TriggerReply, TriggerRequest};
use jetcron_shared::wire::{Event, EventBody, RunResult};
use serde_json::Value;
use tokio::time::{Instant, sleep};

use crate::NatsServer;
use crate::harness::{self, Collector, Scheduler};

/// Longest wait for anything a stack test expects; the machine is shared
/// and slow.
pub const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Stack {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub api: ApiClient,
    pub names: Names,
    pub results: Collector<RunResult>,
    pub events: Collector<Event>,
    _scheduler: Scheduler,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_configured(|_| {}).await
    }

    /// A stack whose scheduler's settings `configure` changes first.
    pub async fn start_configured(
        configure: impl FnOnce(&mut jetcron_scheduler::SchedulerConfig),
    ) -> Stack {
        harness::init_tracing();
        let names = Names::default();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let results = harness::results(&client, &names).await;
        let events = harness::events(&client, &names).await;
        let mut config = harness::scheduler_config(&server.url(), "s1");
        configure(&mut config);
        let scheduler = Scheduler::start_with(config);
        let api = harness::api(&client, &names).await;
        Stack {
            server,
            client,
            api,
            names,
            results,
            events,
            _scheduler: scheduler,
        }
    }

    /// A worker's settings for this server: shell off, a short kill grace.
    pub fn worker_config(&self, id: &str) -> jetcron_worker::WorkerConfig {
        jetcron_worker::WorkerConfig {
            allow_shell: false,
            kill_grace: Duration::from_millis(500),
            ..harness::worker_config(&self.server.url(), id)
        }
    }

    /// The work stream, once the scheduler made it.
    pub async fn work_stream(&self) -> jetstream::stream::Stream {
        let js = jetstream::new(self.client.clone());
        let deadline = Instant::now() + LIMIT;
        loop {
            match js.get_stream(self.names.work_stream()).await {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "no work stream: {e}"),
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `job.put` of `spec`; panics if refused.
    pub async fn put(&self, spec: Value) {
        self.api
            .put_raw(Bytes::from(spec.to_string()))
            .await
            .unwrap_or_else(|e| panic!("job.put {spec}: {e}"));
    }

    /// `job.trigger` of every shard of `id`; panics if refused.
    pub async fn trigger(&self, id: &str, payload: Option<Value>) -> TriggerReply {
        self.api
            .trigger(&TriggerRequest {
                id: id.to_string(),
                shards: None,
                payload,
            })
            .await
            .unwrap_or_else(|e| panic!("job.trigger {id}: {e}"))
    }

    /// The first `n` results of `job`, in arrival order.
    pub async fn results_of(&self, job: &str, n: usize) -> Vec<RunResult> {
        let of = |rs: &[RunResult]| -> Vec<RunResult> {
            rs.iter().filter(|r| r.job == job).cloned().collect()
        };
        let all = self
            .results
            .wait_for(&format!("{n} results of {job}"), LIMIT, |rs| {
                of(rs).len() >= n
            })
            .await;
        of(&all)
    }

    /// The results of `job` so far.
    pub fn results_now(&self, job: &str) -> Vec<RunResult> {
        self.results
            .snapshot()
            .into_iter()
            .filter(|r| r.job == job)
            .collect()
    }

    /// The `dead` events of `job`, once there are `n`.
    pub async fn dead(&self, job: &str, n: usize) -> Vec<EventBody> {
        let of = |es: &[Event]| -> Vec<EventBody> {
            es.iter()
                .filter(|e| matches!(&e.body, EventBody::Dead { job: j, .. } if j == job))
                .map(|e| e.body.clone())
                .collect()
        };
        let all = self
            .events
            .wait_for(&format!("{n} dead events of {job}"), LIMIT, |es| {
                of(es).len() >= n
            })
            .await;
        of(&all)
    }
}
