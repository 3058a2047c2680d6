#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The worker against a real nats-server: shard messages are published into
//! the work stream by the test (a scheduler runs only where a test says so),
//! results and events are watched on `jetcron.results.>` and
//! `jetcron.events.>`, heartbeats and shard records in the `jetcron_workers`
//! and `jetcron_runs` buckets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use jetcron_shared::api::TriggerRequest;
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::runs::{self, ShardRecord, ShardState, WorkerHeartbeat};
use jetcron_shared::setup::{self, Resources, SetupOptions};
use jetcron_shared::wire::{self, Cause, Event, EventBody, RunResult, RunStatus, ShardMessage};
use jetcron_shared::{Job, Names};
use jetcron_tests::NatsServer;
use jetcron_tests::harness;
use jetcron_worker::{WorkerConfig, WorkerError};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

/// Longest wait for anything a test expects; the machine is shared and slow.
const LIMIT: Duration = Duration::from_secs(45);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,jetcron_worker=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One server with the jetcron resources, and a client of the test's own.
struct Env {
    server: NatsServer,
    js: jetstream::Context,
    client: async_nats::Client,
    names: Names,
    resources: Resources,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(SetupOptions::default()).await
    }

    /// With the resources created by the test, with `opts`, before any worker.
    async fn start_with(opts: SetupOptions) -> Env {
        init_tracing();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let names = Names::default();
        let resources = setup::ensure(&js, &names, &opts).await.unwrap();
        Env {
            server,
            js,
            client,
            names,
            resources,
        }
    }

    /// A fresh client, e.g. after a server restart.
    async fn reconnect(&mut self) {
        self.client = self.server.client().await;
        self.js = jetstream::new(self.client.clone());
        self.resources = setup::ensure(&self.js, &self.names, &SetupOptions::default())
            .await
            .unwrap();
    }

    fn config(&self, id: &str) -> WorkerConfig {
        WorkerConfig {
            connect: ConnectArgs {
                nats_url: self.server.url(),
                ..ConnectArgs::default()
            },
            group: "default".into(),
            concurrency: 2,
            allow_shell: true,
            no_http: false,
            allow_http_host: Vec::new(),
            http_ca: None,
            id: id.into(),
            ack_wait: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            max_output: 64 * 1024,
            kill_grace: Duration::from_secs(1),
            replicas: 1,
            heartbeat_interval: Duration::from_secs(1),
            max_lost_attempts: 5,
            metrics_addr: None,
            retention: Default::default(),
        }
    }

    async fn watch(&self) -> Watch {
        let results = self
            .client
            .subscribe(self.names.results_all())
            .await
            .unwrap();
        let events = self
            .client
            .subscribe(self.names.events_all())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        Watch { results, events }
    }

    /// Publishes every shard of one fire of `job` into the work stream.
    async fn dispatch(&self, job: &Job, instant: DateTime<Utc>) -> Vec<ShardMessage> {
        self.dispatch_recorded(job, instant, None).await
    }

    /// Like `dispatch`, with the runs-bucket key of the fire's record.
    async fn dispatch_recorded(
        &self,
        job: &Job,
        instant: DateTime<Utc>,
        record: Option<&str>,
    ) -> Vec<ShardMessage> {
        let mut sent = Vec::new();
        for shard in 0..job.shard_count() {
            let mut msg = ShardMessage::new(job, instant, shard, 7, Cause::Schedule);
            msg.record = record.map(str::to_string);
            self.publish(
                self.names.work_subject(&msg.group, &msg.job),
                msg.headers(),
                msg.encode(),
            )
            .await;
            sent.push(msg);
        }
        sent
    }

    /// Publishes into the work stream; the stream sequence it got.
    async fn publish(&self, subject: String, headers: async_nats::HeaderMap, body: Vec<u8>) -> u64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let tried = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match timeout(Duration::from_secs(10), tried).await {
                Ok(Ok(ack)) => return ack.sequence,
                Ok(Err(e)) => assert!(Instant::now() < deadline, "cannot publish: {e}"),
                Err(_) => assert!(Instant::now() < deadline, "cannot publish: timed out"),
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `n` pull requests wait at the group's consumer: the
    /// workers are ready.
    async fn wait_pulling(&self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let waiting = async {
                let stream = self.js.get_stream(self.names.work_stream()).await.ok()?;
                let mut consumer: jetstream::consumer::PullConsumer = stream
                    .get_consumer(&self.names.work_consumer("default"))
                    .await
                    .ok()?;
                Some(consumer.info().await.ok()?.num_waiting)
            };
            if let Ok(Some(w)) = timeout(Duration::from_secs(5), waiting).await
                && w >= n
            {
                return;
            }
            assert!(Instant::now() < deadline, "{n} workers are not pulling");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages left in the work stream.
    async fn work_left(&self) -> u64 {
        let mut stream = self.js.get_stream(self.names.work_stream()).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until the work stream no longer holds the message at `seq`
    /// (acked or terminated); unlike `wait_work_empty`, this holds with a
    /// scheduler running, whose fence stays in the stream.
    async fn wait_work_gone(&self, seq: u64) {
        let stream = self.js.get_stream(self.names.work_stream()).await.unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(Err(e)) = timeout(Duration::from_secs(10), stream.get_raw_message(seq)).await
                && e.kind() == LastRawMessageErrorKind::NoMessageFound
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "message {seq} is still in the work stream"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shard messages of `job` the work stream holds now.
    async fn work_of(&self, job: &str) -> usize {
        harness::stream_messages(&self.client, &self.names.work_stream())
            .await
            .iter()
            .filter(|m| m.subject.rsplit('.').next() == Some(job))
            .count()
    }

    /// Waits until the work stream holds no shard message of `job`.
    async fn wait_work_of_gone(&self, job: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = self.work_of(job).await;
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} shard messages of {job} left in the work stream"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_work_empty(&self) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = self.work_left().await;
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} messages left in the work stream"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Heartbeats and shard records, read from their buckets.
impl Env {
    async fn heartbeat(&self, id: &str) -> Option<WorkerHeartbeat> {
        let key = self.names.worker_key("default", id);
        let value = timeout(Duration::from_secs(10), self.resources.workers.get(key))
            .await
            .expect("workers bucket did not answer")
            .unwrap()?;
        Some(runs::decode(&value).expect("heartbeat does not decode"))
    }

    /// Waits for a heartbeat of `id` for which `pred` holds.
    async fn wait_heartbeat(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&WorkerHeartbeat) -> bool,
    ) -> WorkerHeartbeat {
        let deadline = Instant::now() + LIMIT;
        loop {
            let beat = self.heartbeat(id).await;
            if let Some(beat) = &beat
                && pred(beat)
            {
                return beat.clone();
            }
            assert!(Instant::now() < deadline, "no heartbeat {what}: {beat:?}");
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn record(&self, key: &str) -> Option<ShardRecord> {
        let value = timeout(Duration::from_secs(10), self.resources.runs.get(key))
            .await
            .expect("runs bucket did not answer")
            .unwrap()?;
        Some(runs::decode(&value).expect("shard record does not decode"))
    }

    /// Every key in the runs bucket.
    async fn record_keys(&self) -> BTreeSet<String> {
        let keys = async {
            let keys = self.resources.runs.keys().await.unwrap();
            keys.map(|k| k.unwrap()).collect::<BTreeSet<_>>().await
        };
        timeout(Duration::from_secs(10), keys)
            .await
            .expect("runs bucket did not list its keys")
    }

    /// Every write to the runs bucket from now on, under `filter`.
    async fn watch_records(&self, filter: &str) -> kv::Watch {
        self.resources.runs.watch(filter).await.unwrap()
    }
}

/// The next `n` shard records written, as (key, record).
async fn next_records(watch: &mut kv::Watch, n: usize) -> Vec<(String, ShardRecord)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while out.len() < n {
        let entry = timeout(deadline - Instant::now(), watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records in time: {out:?}", out.len()))
            .expect("records watch ended")
            .unwrap();
        assert_eq!(entry.operation, kv::Operation::Put, "{entry:?}");
        let record = runs::decode(&entry.value).expect("shard record does not decode");
        out.push((entry.key, record));
    }
    out
}

struct Watch {
    results: async_nats::Subscriber,
    events: async_nats::Subscriber,
}

impl Watch {
    async fn result(&mut self) -> RunResult {
        let msg = timeout(LIMIT, self.results.next())
            .await
            .expect("no result in time")
            .expect("results subscription ended");
        RunResult::decode(&msg.payload).unwrap()
    }

    async fn results(&mut self, n: usize) -> Vec<RunResult> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.result().await);
        }
        out
    }

    /// Fails if a result arrives within `quiet`.
    async fn no_more_results(&mut self, quiet: Duration) {
        if let Ok(Some(msg)) = timeout(quiet, self.results.next()).await {
            panic!(
                "unexpected result: {:?}",
                RunResult::decode(&msg.payload).unwrap()
            );
        }
    }

    /// The next `dead` event (other kinds are skipped).
    async fn dead(&mut self) -> Event {
        self.event("dead").await
    }

    /// The next event of `kind` (other kinds are skipped), checked to be on
    /// its subject.
    async fn event(&mut self, kind: &str) -> Event {
        let deadline = Instant::now() + LIMIT;
        loop {
            let msg = timeout(deadline - Instant::now(), self.events.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event in time"))
                .expect("events subscription ended");
            let event = Event::decode(&msg.payload).unwrap();
            if event.kind() == kind {
                assert_eq!(
                    msg.subject.as_str(),
                    format!("jetcron.events.{kind}.{}", event.job().unwrap())
                );
                return event;
            }
        }
    }
}

type Running = (JoinHandle<Result<(), WorkerError>>, CancellationToken);

fn start_worker(config: WorkerConfig) -> Running {
    let token = CancellationToken::new();
    let handle = tokio::spawn(jetcron_worker::run(config, token.clone()));
    (handle, token)
}

async fn stop_worker((handle, token): Running) {
    token.cancel();
    timeout(LIMIT, handle)
        .await
        .expect("worker did not stop in time")
        .unwrap()
        .unwrap();
}

fn job(def: serde_json::Value) -> Job {
    Job::decode(&serde_json::to_vec(&def).unwrap(), None).unwrap()
}

/// An instant with millisecond precision, as the wire keeps it.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a live (not zombie) process of group `pgid` exists.
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_runs_and_reports_success_with_its_environment() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let script = r#"echo "$JETCRON_JOB|$JETCRON_INSTANT|$JETCRON_SHARD|$JETCRON_SHARDS|$JETCRON_SHARD_PARAM|$JETCRON_ATTEMPT|$JETCRON_RUN_ID|$JETCRON_PAYLOAD""#;
    let job = job(json!({
        "id": "hello",
        "schedule": "@every 1h",
        "shards": ["beijing", "tianjin"],
        "run": {"shell": script},
        "payload": {"k": 1},
    }));
    let instant = now_ms();
    env.dispatch(&job, instant).await;

    let mut results = watch.results(2).await;
    results.sort_by_key(|r| r.shard);
    let at = instant.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    for (r, param) in results.iter().zip(["beijing", "tianjin"]) {
        assert_eq!(r.job, "hello");
        assert_eq!(r.instant, instant);
        assert_eq!(r.shards, 2);
        assert_eq!(r.attempt, 1);
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        assert_eq!(r.worker, "w1");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.epoch, 7);
        assert!(!r.will_retry);
        assert_eq!(r.error, None);
        assert!(!r.output_truncated);
        assert!(r.started_at <= r.finished_at);
        assert_eq!(
            r.output,
            format!(
                "hello|{at}|{}|2|{param}|1|{}|{{\"k\":1}}\n",
                r.shard, r.run_id
            )
        );
    }
    assert_eq!(results[0].shard, 0);
    assert_eq!(results[1].shard, 1);
    assert_ne!(results[0].run_id, results[1].run_id);
    env.wait_work_empty().await;
    // Each result is stored in the results stream once.
    let mut stored = env.js.get_stream(env.names.results_stream()).await.unwrap();
    assert_eq!(stored.info().await.unwrap().state.messages, 2);
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_job_fails_clearly_on_a_worker_without_allow_shell() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut config = env.config("locked");
    config.allow_shell = false;
    let worker = start_worker(config);
    let job = job(json!({"id": "sh", "schedule": "@every 1h", "run": {"shell": "echo hi"}}));
    env.dispatch(&job, now_ms()).await;

    let r = watch.result().await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(
        r.error.as_deref(),
        Some("shell jobs are disabled on worker locked; start it with --allow-shell")
    );
    assert_eq!(r.exit_code, None);
    assert_eq!(r.output, "");
    assert_eq!(r.attempt, 1);
    assert!(!r.will_retry);
    let EventBody::Dead {
        attempts, error, ..
    } = watch.dead().await.body
    else {
        unreachable!()
    };
    assert_eq!(attempts, 1);
    assert_eq!(error, r.error);
    env.wait_work_empty().await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_ends_timed_out() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "slow",
        "schedule": "@every 1h",
        "run": {"shell": "echo begun; sleep 30"},
        "timeout": "1s",
    }));
    env.dispatch(&job, now_ms()).await;

    let r = watch.result().await;
    assert_eq!(r.status, RunStatus::TimedOut, "{r:?}");
    assert_eq!(r.exit_code, None);
    assert_eq!(r.output, "begun\n");
    let took = (r.finished_at - r.started_at).to_std().unwrap();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    let EventBody::Dead { status, .. } = watch.dead().await.body else {
        unreachable!()
    };
    assert_eq!(status, RunStatus::TimedOut);
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shard_is_retried_with_backoff_then_dead() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "flaky",
        "schedule": "@every 1h",
        "run": {"shell": "echo try $JETCRON_ATTEMPT; exit 3"},
        "retry": {"max_attempts": 3, "backoff": ["200ms"]},
    }));
    let instant = now_ms();
    env.dispatch(&job, instant).await;

    let results = watch.results(3).await;
    for (i, r) in results.iter().enumerate() {
        let attempt = i as u32 + 1;
        assert_eq!(r.attempt, attempt, "{results:?}");
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output, format!("try {attempt}\n"));
        assert_eq!(r.will_retry, attempt < 3);
    }
    for pair in results.windows(2) {
        let gap = (pair[1].started_at - pair[0].finished_at).to_std().unwrap();
        assert!(gap >= Duration::from_millis(150), "retried after {gap:?}");
    }
    let event = watch.dead().await;
    let EventBody::Dead {
        job,
        instant: dead_instant,
        shard,
        attempts,
        status,
        run_id,
        worker: by,
        ..
    } = event.body
    else {
        unreachable!()
    };
    assert_eq!((job.as_str(), dead_instant, shard), ("flaky", instant, 0));
    assert_eq!((attempts, status), (3, RunStatus::Failed));
    assert_eq!(run_id, results[2].run_id);
    assert_eq!(by, "w1");
    env.wait_work_empty().await;
    watch.no_more_results(Duration::from_secs(1)).await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_worker_was_killed_completes_on_another_worker() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let pgid_file = dir.path().join("pgid");
    let mut config = env.config("doomed");
    config.ack_wait = Duration::from_secs(2);
    let doomed = start_worker(config.clone());
    let job = job(json!({
        "id": "long",
        "schedule": "@every 1h",
        "run": {"shell": format!("echo $$ > {}; sleep 3; echo done", pgid_file.display())},
    }));
    env.dispatch(&job, now_ms()).await;

    let pgid: i32 = wait_for_file(&pgid_file).await.trim().parse().unwrap();
    std::fs::remove_file(&pgid_file).unwrap();
    doomed.0.abort();
    assert!(doomed.0.await.unwrap_err().is_cancelled());
    // Its process group went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "the killed worker's run is still alive"
        );
        sleep(Duration::from_millis(50)).await;
    }

    config.id = "heir".into();
    let heir = start_worker(config);
    let r = watch.result().await;
    assert_eq!(r.worker, "heir");
    assert_eq!(r.attempt, 2);
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, "done\n");
    env.wait_work_empty().await;
    watch.no_more_results(Duration::from_secs(2)).await;
    stop_worker(heir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_waits_for_the_run_and_reports_it() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let (handle, token) = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "finishing",
        "schedule": "@every 1h",
        "run": {"shell": format!("echo yes > {}; sleep 2; echo finished", started.display())},
    }));
    env.dispatch(&job, now_ms()).await;
    wait_for_file(&started).await;

    let asked = Instant::now();
    token.cancel();
    timeout(LIMIT, handle).await.unwrap().unwrap().unwrap();
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "returned before the run ended"
    );

    // Stored and acked before `run` returned.
    let results = env.js.get_stream(env.names.results_stream()).await.unwrap();
    let last = results
        .get_last_raw_message_by_subject(&env.names.results_subject("finishing"))
        .await
        .unwrap();
    let r = RunResult::decode(&last.payload).unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.output, "finished\n");
    assert_eq!(env.work_left().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_hands_the_shard_back_at_once() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let mut config = env.config("leaving");
    config.shutdown_grace = Duration::from_secs(1);
    let (handle, token) = start_worker(config.clone());
    let script = format!(
        r#"if [ "$JETCRON_ATTEMPT" = 1 ]; then echo yes > {}; sleep 60; fi; echo attempt $JETCRON_ATTEMPT"#,
        started.display()
    );
    let job = job(json!({"id": "handed", "schedule": "@every 1h", "run": {"shell": script}}));
    env.dispatch_recorded(&job, now_ms(), Some("handed.s1"))
        .await;
    wait_for_file(&started).await;

    token.cancel();
    timeout(Duration::from_secs(20), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let returned = Instant::now();
    // Nobody runs it until another worker takes it.
    let back = env.record("handed.s1.0").await.unwrap();
    assert_eq!(back.state, ShardState::Pending, "{back:?}");
    assert_eq!((back.attempt, back.worker.as_str()), (1, "leaving"));
    assert!(back.will_retry && back.finished_at.is_some(), "{back:?}");
    config.id = "staying".into();
    let staying = start_worker(config);
    let r = watch.result().await;
    // Naked without delay, not left to the 15 s ack wait.
    assert!(
        returned.elapsed() < Duration::from_secs(12),
        "took {:?}",
        returned.elapsed()
    );
    assert_eq!(r.worker, "staying");
    assert_eq!(r.attempt, 2);
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.output, "attempt 2\n");
    env.wait_work_empty().await;
    let done = env.record("handed.s1.0").await.unwrap();
    assert_eq!(done.state, ShardState::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.worker.as_str()), (2, "staying"));
    stop_worker(staying).await;
}

/// A run longer than the ack wait keeps its shard through progress acks: it is
/// never redelivered to the idle second worker while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_ack_wait_is_not_redelivered() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let mut config = env.config("a");
    config.ack_wait = Duration::from_secs(2);
    let a = start_worker(config.clone());
    config.id = "b".into();
    let b = start_worker(config);
    env.wait_pulling(2).await;
    let job = job(json!({
        "id": "slow",
        "schedule": "@every 1h",
        "run": {"shell": format!("echo $JETCRON_ATTEMPT >> {}; sleep 7; echo done", starts.display())},
    }));
    env.dispatch(&job, now_ms()).await;

    let r = watch.result().await;
    assert_eq!((r.status, r.attempt), (RunStatus::Succeeded, 1), "{r:?}");
    assert!(r.finished_at - r.started_at >= chrono::Duration::seconds(6));
    assert_eq!(
        std::fs::read_to_string(&starts).unwrap(),
        "1\n",
        "started more than once"
    );
    env.wait_work_empty().await;
    watch.no_more_results(Duration::from_secs(3)).await;
    stop_worker(a).await;
    stop_worker(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_shards_and_each_runs_once() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let a = start_worker(env.config("a"));
    let b = start_worker(env.config("b"));
    env.wait_pulling(2).await;
    let job = job(json!({
        "id": "fanout",
        "schedule": "@every 1h",
        "shards": 8,
        "run": {"shell": "sleep 1; echo $JETCRON_SHARD"},
    }));
    env.dispatch(&job, now_ms()).await;

    let results = watch.results(8).await;
    let shards: BTreeSet<u32> = results.iter().map(|r| r.shard).collect();
    assert_eq!(shards, (0..8).collect(), "{results:?}");
    let mut per_worker: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in &results {
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.attempt, 1);
        assert_eq!(r.output, format!("{}\n", r.shard));
        per_worker.entry(&r.worker).or_default().push(r);
    }
    assert_eq!(
        per_worker.keys().copied().collect::<Vec<_>>(),
        ["a", "b"],
        "both workers run shards"
    );
    // No worker ever ran more than its 2 slots at once.
    for (worker, runs) in &per_worker {
        for r in runs {
            let at_once = runs
                .iter()
                .filter(|o| o.started_at <= r.started_at && r.started_at < o.finished_at)
                .count();
            assert!(at_once <= 2, "{worker} ran {at_once} at once");
        }
    }
    env.wait_work_empty().await;
    watch.no_more_results(Duration::from_secs(2)).await;
    stop_worker(a).await;
    stop_worker(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_terminated_and_the_worker_carries_on() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "junk-1");
    env.publish(
        env.names.work_subject("default", "junk"),
        headers,
        b"{not json".to_vec(),
    )
    .await;
    let job = job(json!({"id": "fine", "schedule": "@every 1h", "run": {"shell": "echo ok"}}));
    env.dispatch(&job, now_ms()).await;

    let r = watch.result().await;
    assert_eq!((r.job.as_str(), r.status), ("fine", RunStatus::Succeeded));
    env.wait_work_empty().await;
    stop_worker(worker).await;
}

/// A shard of a `run` kind this worker does not know (written by a newer
/// jetcron) is not dropped silently: it ends dead with a result, a `dead`
/// event, its final record and its end notice, each saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_an_unknown_run_kind_ends_dead_saying_why() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut ends = env
        .client
        .subscribe(env.names.ends_subject("newer"))
        .await
        .unwrap();
    env.client.flush().await.unwrap();
    let worker = start_worker(env.config("w1"));
    let instant = now_ms();
    let body = json!({
        "job": "newer", "group": "default", "instant": instant, "shard": 1, "shards": 2,
        "run": {"grpc": {"service": "x"}}, "timeout_ms": 1000,
        "retry": {"max_attempts": 3, "backoff": [1000]}, "epoch": 7, "cause": "schedule",
        "dispatched_at": instant, "record": "newer.s0", "track": true
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "newer-1");
    let seq = env
        .publish(
            env.names.work_subject("default", "newer"),
            headers,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;

    let r = watch.result().await;
    assert_eq!(
        (r.job.as_str(), r.shard, r.status, r.will_retry),
        ("newer", 1, RunStatus::Failed, false)
    );
    let error = r.error.clone().unwrap_or_default();
    assert!(error.contains("upgrade the workers"), "{error}");
    let dead = watch.dead().await;
    assert_eq!(dead.job(), Some("newer"));
    let end = timeout(LIMIT, ends.next())
        .await
        .expect("no end notice")
        .unwrap();
    assert_eq!(RunResult::decode(&end.payload).unwrap().run_id, r.run_id);
    // Terminated, after its final record: it never comes back.
    env.wait_work_gone(seq).await;
    let record = env.record("newer.s0.1").await.expect("final record");
    assert_eq!(record.state, ShardState::Failed);
    assert!(!record.will_retry);
    watch.no_more_results(Duration::from_secs(2)).await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_on_after_a_server_restart() {
    let mut env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let before =
        job(json!({"id": "before", "schedule": "@every 1h", "run": {"shell": "echo before"}}));
    env.dispatch(&before, now_ms()).await;
    assert_eq!(watch.result().await.output, "before\n");

    env.server.stop().await;
    env.server.restart().await;
    env.reconnect().await;
    let mut watch = env.watch().await;
    let after =
        job(json!({"id": "after", "schedule": "@every 1h", "run": {"shell": "echo after"}}));
    env.dispatch(&after, now_ms()).await;
    let r = watch.result().await;
    assert_eq!((r.job.as_str(), r.status), ("after", RunStatus::Succeeded));
    assert_eq!(r.output, "after\n");
    env.wait_work_empty().await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_on_after_a_server_crash_and_downtime() {
    let mut env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    env.wait_pulling(1).await;

    // No goodbye from the server: the pending pull request just vanishes.
    env.server.kill().await;
    sleep(Duration::from_secs(3)).await;
    let restarted = Utc::now();
    env.server.restart().await;
    env.reconnect().await;
    // Heartbeats failed meanwhile, and resume.
    env.wait_heartbeat("w1", "after the restart", |b| b.last_heartbeat > restarted)
        .await;
    watch.results = env.client.subscribe(env.names.results_all()).await.unwrap();
    env.client.flush().await.unwrap();
    let after =
        job(json!({"id": "after", "schedule": "@every 1h", "run": {"shell": "echo after"}}));
    env.dispatch(&after, now_ms()).await;
    let r = watch.result().await;
    assert_eq!((r.job.as_str(), r.status), ("after", RunStatus::Succeeded));
    env.wait_work_empty().await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_heartbeats_with_the_shards_it_runs() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let before = Utc::now();
    let worker = start_worker(env.config("beating"));

    let first = env.wait_heartbeat("beating", "at start", |_| true).await;
    assert_eq!(first.id, "beating");
    assert_eq!(first.group, "default");
    assert_eq!(first.host, jetcron_worker::config::hostname());
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(first.concurrency, 2);
    assert_eq!(first.running, 0);
    assert!(before <= first.started_at, "{first:?}");
    assert!(first.started_at <= first.last_heartbeat, "{first:?}");

    let job = job(json!({
        "id": "busy",
        "schedule": "@every 1h",
        "run": {"shell": format!("echo yes > {}; sleep 3", started.display())},
    }));
    env.dispatch(&job, now_ms()).await;
    wait_for_file(&started).await;
    let busy = env
        .wait_heartbeat("beating", "with a shard running", |b| b.running == 1)
        .await;
    assert_eq!(busy.started_at, first.started_at);
    assert!(busy.last_heartbeat > first.last_heartbeat, "{busy:?}");
    env.wait_work_empty().await;
    env.wait_heartbeat("beating", "idle again", |b| b.running == 0)
        .await;
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_gracefully_disappears_at_once() {
    let env = Env::start().await;
    let mut config = env.config("leaving");
    // Long enough that only the delete can make the key go in time.
    config.heartbeat_interval = Duration::from_secs(5);
    let worker = start_worker(config);
    env.wait_heartbeat("leaving", "at start", |_| true).await;
    stop_worker(worker).await;
    assert_eq!(env.heartbeat("leaving").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_disappears_within_the_buckets_max_age() {
    let ttl = Duration::from_secs(3);
    let env = Env::start_with(SetupOptions {
        worker_ttl: ttl,
        ..Default::default()
    })
    .await;
    let (handle, _token) = start_worker(env.config("doomed"));
    env.wait_heartbeat("doomed", "at start", |_| true).await;
    // Alive for longer than the max age: the heartbeats keep the key.
    let alive_until = Instant::now() + ttl + Duration::from_secs(1);
    while Instant::now() < alive_until {
        assert!(
            env.heartbeat("doomed").await.is_some(),
            "a live worker expired"
        );
        sleep(Duration::from_millis(100)).await;
    }

    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    let killed = Instant::now();
    // Not deleted: it expires.
    assert!(env.heartbeat("doomed").await.is_some());
    // The server expires keys a little after their max age.
    let limit = ttl + Duration::from_secs(3);
    while env.heartbeat("doomed").await.is_some() {
        assert!(
            killed.elapsed() < limit,
            "still there {:?} after the kill",
            killed.elapsed()
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_interval_too_long_for_the_bucket_is_shortened() {
    let ttl = Duration::from_secs(3);
    let env = Env::start_with(SetupOptions {
        worker_ttl: ttl,
        ..Default::default()
    })
    .await;
    let mut config = env.config("slow-beat");
    config.heartbeat_interval = Duration::from_secs(60);
    let worker = start_worker(config);
    env.wait_heartbeat("slow-beat", "at start", |_| true).await;
    let alive_until = Instant::now() + 2 * ttl;
    while Instant::now() < alive_until {
        assert!(
            env.heartbeat("slow-beat").await.is_some(),
            "a live worker expired"
        );
        sleep(Duration::from_millis(100)).await;
    }
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_shard_is_running_then_final_before_its_ack() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut records = env.watch_records("job.s0.*").await;
    let worker = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "job",
        "schedule": "@every 1h",
        "shards": 2,
        "run": {"shell": "sleep 0.5; exit $JETCRON_SHARD"},
    }));
    let instant = now_ms();
    env.dispatch_recorded(&job, instant, Some("job.s0")).await;
    let plain =
        self::job(json!({"id": "plain", "schedule": "@every 1h", "run": {"shell": "true"}}));
    env.dispatch(&plain, instant).await;

    let written = next_records(&mut records, 4).await;
    let mut results = watch.results(3).await;
    results.retain(|r| r.job == "job");
    results.sort_by_key(|r| r.shard);
    env.wait_work_empty().await;
    for (shard, result) in results.iter().enumerate() {
        let key = format!("job.s0.{shard}");
        let mine: Vec<&ShardRecord> = written
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(mine.len(), 2, "{written:?}");
        let (start, end) = (mine[0], mine[1]);
        assert_eq!(start.state, ShardState::Running, "{start:?}");
        assert_eq!((start.job.as_str(), start.instant), ("job", instant));
        assert_eq!((start.shard, start.attempt), (shard as u32, 1));
        assert_eq!(start.worker, "w1");
        assert_eq!(start.run_id, result.run_id);
        assert_eq!(start.started_at, result.started_at);
        assert_eq!((start.finished_at, start.exit_code), (None, None));
        let state = if shard == 0 {
            ShardState::Succeeded
        } else {
            ShardState::Failed
        };
        assert_eq!(
            *end,
            ShardRecord {
                state,
                finished_at: Some(result.finished_at),
                exit_code: Some(shard as i32),
                ..start.clone()
            }
        );
        // The message is acked (the work stream is empty): its record is final.
        assert_eq!(env.record(&key).await.as_ref(), Some(end));
    }
    // A message without a record key leaves no record.
    assert_eq!(
        env.record_keys().await,
        BTreeSet::from(["job.s0.0".to_string(), "job.s0.1".to_string()])
    );
    stop_worker(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_shard_records_each_attempt() {
    let env = Env::start().await;
    let mut records = env.watch_records("flaky.s3.*").await;
    let worker = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "flaky",
        "schedule": "@every 1h",
        "run": {"shell": "exit 3"},
        "retry": {"max_attempts": 2, "backoff": ["200ms"]},
    }));
    env.dispatch_recorded(&job, now_ms(), Some("flaky.s3"))
        .await;

    let written = next_records(&mut records, 4).await;
    let seen: Vec<(&str, ShardState, u32, bool)> = written
        .iter()
        .map(|(k, r)| (k.as_str(), r.state, r.attempt, r.will_retry))
        .collect();
    assert_eq!(
        seen,
        [
            ("flaky.s3.0", ShardState::Running, 1, false),
            ("flaky.s3.0", ShardState::Failed, 1, true),
            ("flaky.s3.0", ShardState::Running, 2, false),
            ("flaky.s3.0", ShardState::Failed, 2, false),
        ]
    );
    assert_ne!(written[0].1.run_id, written[2].1.run_id);
    assert_eq!(written[3].1.exit_code, Some(3));
    env.wait_work_empty().await;
    assert_eq!(env.record("flaky.s3.0").await.as_ref(), Some(&written[3].1));
    stop_worker(worker).await;
}

/// A shard whose worker dies in every attempt (its command kills the
/// worker, or the machine OOM-kills it) runs `--max-lost-attempts` times,
/// then the next delivery ends it as dead without running it. Each worker
/// is killed as a crashed process would be: its runtime stops where it is,
/// and it never reports, acks or hands anything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_worker_dies_every_time_ends_dead_after_its_lost_attempts() {
    const MAX_LOST: u32 = 2;
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut records = env.watch_records("crashing.*.0").await;
    let scheduler = harness::Scheduler::start(&env.server.url(), "s1");
    let api = harness::api(&env.client, &env.names).await;
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let def = json!({
        "id": "crashing",
        "schedule": "@every 1h",
        "paused": true,
        "run": {"shell": format!("echo $JETCRON_ATTEMPT >> {}; sleep 60", starts.display())},
    });
    api.put_raw(def.to_string().into()).await.unwrap();
    let fire = api
        .trigger(&TriggerRequest {
            id: "crashing".into(),
            shards: None,
            payload: None,
        })
        .await
        .unwrap();

    let mut config = env.config("doomed");
    config.ack_wait = Duration::from_secs(2);
    config.concurrency = 1;
    config.max_lost_attempts = MAX_LOST;
    let mut key = String::new();
    for n in 1..=MAX_LOST {
        config.id = format!("doomed-{n}");
        let doomed = harness::Worker::start_with(config.clone());
        let (written, started) = next_records(&mut records, 1).await.remove(0);
        assert_eq!(started.instant, fire.instant);
        assert_eq!(
            (started.state, started.attempt, started.lost),
            (ShardState::Running, n, n - 1),
            "{started:?}"
        );
        assert_eq!(started.worker, config.id);
        key = written;
        // The command runs; then its worker dies.
        let deadline = Instant::now() + LIMIT;
        while std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
            < n as usize
        {
            assert!(Instant::now() < deadline, "attempt {n} never ran");
            sleep(Duration::from_millis(20)).await;
        }
        doomed.kill();
    }

    config.id = "heir".into();
    let heir = harness::Worker::start_with(config);
    let r = watch.result().await;
    assert_eq!(
        (r.job.as_str(), r.instant, r.shard),
        ("crashing", fire.instant, 0)
    );
    assert_eq!(
        (r.status, r.attempt),
        (RunStatus::Failed, MAX_LOST + 1),
        "{r:?}"
    );
    assert_eq!(
        r.error.as_deref(),
        Some(
            "lost 2 attempts in a row: the worker running it died each time (crash loop); not run again"
        )
    );
    assert_eq!((r.worker.as_str(), r.exit_code), ("heir", None));
    assert_eq!(r.output, "");
    assert!(!r.will_retry);
    let EventBody::Dead {
        job,
        instant,
        shard,
        attempts,
        status,
        run_id,
        worker,
        error,
    } = watch.dead().await.body
    else {
        unreachable!()
    };
    assert_eq!(
        (job.as_str(), instant, shard),
        ("crashing", fire.instant, 0)
    );
    assert_eq!((attempts, status), (MAX_LOST + 1, RunStatus::Failed));
    assert_eq!((run_id, worker), (r.run_id.clone(), "heir".to_string()));
    assert_eq!(error, r.error);

    // The final record comes next, and is the last: the shard is over.
    let (_, end) = next_records(&mut records, 1).await.remove(0);
    assert_eq!(
        (end.state, end.attempt, end.lost, end.will_retry),
        (ShardState::Failed, MAX_LOST + 1, MAX_LOST, false),
        "{end:?}"
    );
    assert_eq!(
        (end.run_id.as_str(), end.worker.as_str()),
        (r.run_id.as_str(), "heir")
    );
    env.wait_work_gone(r.stream_seq.unwrap()).await;
    assert_eq!(env.record(&key).await.as_ref(), Some(&end));
    // Long enough for another delivery, had the message not been terminated.
    watch.no_more_results(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read_to_string(&starts).unwrap(),
        "1\n2\n",
        "the shard ran a third time"
    );
    // What an operator sees: the fire failed, after three attempts.
    let runs = api.runs("crashing", None).await.unwrap();
    let shard = &runs.runs[0].shards[0];
    assert_eq!(
        (runs.runs[0].state, shard.state, shard.attempts),
        (ShardState::Failed, ShardState::Failed, MAX_LOST + 1)
    );
    heir.stop(LIMIT).await;
    scheduler.stop().await;
}

/// A shard not started within its job's deadline after its instant is not
/// run. A fire triggered while no worker runs waits past its deadline; the
/// worker that comes later ends each of its shards expired (result, event,
/// final record, `job.runs`) and runs nothing. A fire that reaches a worker
/// in time runs, and so does a retry of the expired fire: its deadline
/// counts from its own instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_not_started_within_their_deadline_expire_without_running() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut records = env.watch_records("late.*.*").await;
    let scheduler = harness::Scheduler::start(&env.server.url(), "s1");
    let api = harness::api(&env.client, &env.names).await;
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let def = json!({
        "id": "late",
        "schedule": "@yearly",
        "paused": true,
        "shards": 2,
        "deadline": "2s",
        "run": {"shell": format!("echo \"$JETCRON_INSTANT $JETCRON_SHARD\" >> {}", ran.display())},
    });
    api.put_raw(def.to_string().into()).await.unwrap();
    let trigger = TriggerRequest {
        id: "late".into(),
        shards: None,
        payload: None,
    };
    let fire = api.trigger(&trigger).await.unwrap();
    let expires_at = fire.instant + chrono::Duration::seconds(2);
    // No worker until the deadline has passed.
    sleep(Duration::from_secs(3)).await;
    let worker = start_worker(env.config("w1"));

    let mut results = watch.results(2).await;
    results.sort_by_key(|r| r.shard);
    for (n, r) in results.iter().enumerate() {
        assert_eq!(
            (r.job.as_str(), r.instant, r.shard),
            ("late", fire.instant, n as u32)
        );
        assert_eq!(
            (r.status, r.attempt, r.exit_code, r.will_retry),
            (RunStatus::Expired, 1, None, false),
            "{r:?}"
        );
        assert_eq!((r.worker.as_str(), r.output.as_str()), ("w1", ""));
        assert!(r.started_at > expires_at, "{r:?}");
        let error = r.error.as_deref().unwrap();
        assert!(
            error.starts_with("not started within its deadline (2s after its instant): delivered ")
                && error.ends_with(" after it; not run"),
            "{error}"
        );
    }
    for _ in 0..2 {
        let EventBody::Expired {
            job,
            instant,
            shard,
            attempt,
            run_id,
            worker,
            expires_at: due,
            late_ms,
        } = watch.event("expired").await.body
        else {
            unreachable!()
        };
        assert_eq!(
            (job.as_str(), instant, due),
            ("late", fire.instant, expires_at)
        );
        assert_eq!((attempt, worker.as_str()), (1, "w1"));
        assert_eq!(run_id, results[shard as usize].run_id);
        assert!(late_ms >= 3000, "{late_ms}");
    }
    // The final records come next, with no `running` one: nothing started.
    let mut written = next_records(&mut records, 2).await;
    written.sort_by_key(|(_, r)| r.shard);
    for ((_, record), r) in written.iter().zip(&results) {
        assert_eq!(
            (record.state, record.attempt, record.will_retry),
            (ShardState::Expired, 1, false),
            "{record:?}"
        );
        assert_eq!(record.run_id, r.run_id);
    }
    for r in &results {
        env.wait_work_gone(r.stream_seq.unwrap()).await;
    }
    let runs = api.runs("late", None).await.unwrap();
    let expired = runs
        .runs
        .iter()
        .find(|f| f.fire_id == fire.fire_id)
        .unwrap();
    assert_eq!(expired.state, ShardState::Expired);
    assert!(
        expired
            .shards
            .iter()
            .all(|s| s.state == ShardState::Expired),
        "{expired:?}"
    );
    watch.no_more_results(Duration::from_secs(2)).await;
    assert!(!ran.exists(), "an expired shard ran");

    // A fire that reaches the worker in time runs.
    let on_time = api.trigger(&trigger).await.unwrap();
    let done = watch.results(2).await;
    assert!(
        done.iter()
            .all(|r| r.status == RunStatus::Succeeded && r.instant == on_time.instant),
        "{done:?}"
    );
    // The retry of the expired fire is a fire of its own, with a deadline
    // from its own instant.
    let retry = api.retry("late", &fire.fire_id).await.unwrap();
    assert_eq!(retry.shards, vec![0, 1]);
    let again = watch.results(2).await;
    assert!(
        again
            .iter()
            .all(|r| r.status == RunStatus::Succeeded && r.instant == retry.instant),
        "{again:?}"
    );
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let mut lines: Vec<String> = std::fs::read_to_string(&ran)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    let mut expected: Vec<String> = [on_time.instant, retry.instant]
        .iter()
        .flat_map(|t| [format!("{} 0", at(*t)), format!("{} 1", at(*t))])
        .collect();
    expected.sort();
    assert_eq!(lines, expected);
    stop_worker(worker).await;
    scheduler.stop().await;
}

/// The deadline counts from the instant for every attempt: a failed shard
/// whose retry delay takes it past the deadline ends expired when it comes
/// back, not run again and not dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_would_start_past_the_deadline_expires() {
    let env = Env::start().await;
    let events = harness::events(&env.client, &env.names).await;
    let mut watch = env.watch().await;
    let mut records = env.watch_records("flaky.*.*").await;
    let worker = start_worker(env.config("w1"));
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let job = job(json!({
        "id": "flaky",
        "schedule": "@every 1h",
        "deadline": "2s",
        "retry": {"max_attempts": 3, "backoff": ["3s"]},
        "run": {"shell": format!("echo $JETCRON_ATTEMPT >> {}; exit 1", starts.display())},
    }));
    let instant = now_ms();
    let sent = env.dispatch_recorded(&job, instant, Some("flaky.s0")).await;
    assert_eq!(
        sent[0].expires_at,
        Some(instant + chrono::Duration::seconds(2))
    );

    let first = watch.result().await;
    assert_eq!(
        (first.status, first.attempt, first.will_retry),
        (RunStatus::Failed, 1, true),
        "{first:?}"
    );
    let second = watch.result().await;
    assert_eq!(
        (second.status, second.attempt, second.will_retry),
        (RunStatus::Expired, 2, false),
        "{second:?}"
    );
    assert_eq!(second.stream_seq, first.stream_seq);
    let EventBody::Expired {
        attempt, run_id, ..
    } = watch.event("expired").await.body
    else {
        unreachable!()
    };
    assert_eq!((attempt, run_id), (2, second.run_id.clone()));
    let states: Vec<_> = next_records(&mut records, 3)
        .await
        .into_iter()
        .map(|(_, r)| (r.state, r.attempt, r.will_retry))
        .collect();
    assert_eq!(
        states,
        vec![
            (ShardState::Running, 1, false),
            (ShardState::Failed, 1, true),
            (ShardState::Expired, 2, false)
        ]
    );
    env.wait_work_gone(second.stream_seq.unwrap()).await;
    // A third attempt would have come 3 s after the second delivery.
    watch.no_more_results(Duration::from_secs(4)).await;
    assert_eq!(std::fs::read_to_string(&starts).unwrap(), "1\n");
    assert!(
        events.snapshot().iter().all(|e| e.kind() != "dead"),
        "{:?}",
        events.snapshot()
    );
    stop_worker(worker).await;
}

/// Shards of a deleted job still waiting in the work stream never run:
/// `job.delete` purges them, and so does the leader when a definition is
/// deleted straight from the jobs bucket (as `nats kv del` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_shards_of_a_deleted_job_never_run() {
    let env = Env::start().await;
    let events = harness::events(&env.client, &env.names).await;
    let mut watch = env.watch().await;
    let scheduler = harness::Scheduler::start(&env.server.url(), "s1");
    let api = harness::api(&env.client, &env.names).await;
    let dir = tempfile::tempdir().unwrap();
    let def = |id: &str, schedule: &str| {
        json!({
            "id": id,
            "schedule": schedule,
            "paused": true,
            "shards": 3,
            "run": {"shell": format!("touch {}/{id}.$JETCRON_SHARD", dir.path().display())},
        })
    };
    // `by-kv` is paused on a one-second schedule: its `skipped` event says
    // the leader is deciding.
    for (id, schedule) in [
        ("by-api", "@yearly"),
        ("by-kv", "@every 1s"),
        ("kept", "@yearly"),
    ] {
        api.put_raw(def(id, schedule).to_string().into())
            .await
            .unwrap();
    }
    events
        .wait_for("the leader to skip by-kv", LIMIT, |es| {
            es.iter()
                .any(|e| matches!(&e.body, EventBody::Skipped { job, .. } if job == "by-kv"))
        })
        .await;
    let trigger = |id: &str| TriggerRequest {
        id: id.into(),
        shards: None,
        payload: None,
    };
    for id in ["by-api", "by-kv"] {
        api.trigger(&trigger(id)).await.unwrap();
        assert_eq!(env.work_of(id).await, 3, "{id}");
    }

    api.delete("by-api").await.unwrap();
    assert_eq!(env.work_of("by-api").await, 0);
    env.resources.jobs.delete("by-kv").await.unwrap();
    env.wait_work_of_gone("by-kv").await;

    // A worker comes back: only what is left runs.
    let worker = start_worker(env.config("w1"));
    let kept = api.trigger(&trigger("kept")).await.unwrap();
    let results = watch.results(3).await;
    assert!(
        results.iter().all(|r| r.job == "kept"
            && r.instant == kept.instant
            && r.status == RunStatus::Succeeded),
        "{results:?}"
    );
    watch.no_more_results(Duration::from_secs(2)).await;
    let touched: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        touched,
        BTreeSet::from(["kept.0".into(), "kept.1".into(), "kept.2".into()])
    );
    stop_worker(worker).await;
    scheduler.stop().await;
}

/// Any payload a job may hold runs. One of 200 KiB, many small values that
/// take three times that indented, is put, triggered and read in full from
/// `JETCRON_PAYLOAD_FILE` (it is too large for an environment variable, so
/// `JETCRON_PAYLOAD` is unset); a small one is in both. Each file is gone
/// once its run has ended. A trigger's payload larger than a definition
/// could hold is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_too_large_for_the_environment_is_read_from_its_file() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let scheduler = harness::Scheduler::start(&env.server.url(), "s1");
    let api = harness::api(&env.client, &env.names).await;
    let worker = start_worker(env.config("w1"));
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..23_000).map(|i| format!("r{i:05}")).collect();
    let payload = json!({ "rows": rows });
    let big = payload.to_string();
    assert!(big.len() > 200 * 1024, "{}", big.len());
    let script = format!(
        r#"cp "$JETCRON_PAYLOAD_FILE" {d}/got-$JETCRON_RUN_ID; echo "$JETCRON_PAYLOAD_FILE" > {d}/path-$JETCRON_RUN_ID; printf '%s|%s|%s' "$(wc -c < "$JETCRON_PAYLOAD_FILE" | tr -d ' ')" "${{JETCRON_PAYLOAD+set}}" "$JETCRON_PAYLOAD""#,
        d = dir.path().display()
    );
    let def = json!({
        "id": "bulky",
        "schedule": "@yearly",
        "paused": true,
        "run": {"shell": script},
        "payload": payload,
    });
    api.put_raw(def.to_string().into()).await.unwrap();
    let trigger = |payload: Option<serde_json::Value>| TriggerRequest {
        id: "bulky".into(),
        shards: None,
        payload,
    };
    let read = |name: &str, r: &RunResult| {
        std::fs::read_to_string(dir.path().join(format!("{name}-{}", r.run_id))).unwrap()
    };

    api.trigger(&trigger(None)).await.unwrap();
    let r = watch.result().await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, format!("{}||", big.len()));
    assert_eq!(read("got", &r), big);
    assert!(!Path::new(read("path", &r).trim()).exists());

    let small = json!({"k": "v"});
    api.trigger(&trigger(Some(small.clone()))).await.unwrap();
    let r = watch.result().await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, format!("{}|set|{small}", small.to_string().len()));
    assert_eq!(read("got", &r), small.to_string());
    assert!(!Path::new(read("path", &r).trim()).exists());

    let too_big = serde_json::Value::String("x".repeat(jetcron_shared::job::MAX_PAYLOAD_BYTES));
    match api.trigger(&trigger(Some(too_big))).await {
        Err(jetcron_shared::api::ClientError::Api(e)) => {
            assert_eq!(e.code, jetcron_shared::api::ErrorCode::BadRequest);
            assert!(e.message.starts_with("payload: "), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    watch.no_more_results(Duration::from_secs(1)).await;
    stop_worker(worker).await;
    scheduler.stop().await;
}

/// The end notices the ends stream holds now: (subject, dedup id, result).
async fn end_notices(env: &Env) -> Vec<(String, String, RunResult)> {
    harness::stream_messages(&env.client, &env.names.ends_stream())
        .await
        .iter()
        .map(|m| {
            (
                m.subject.to_string(),
                harness::header(m, "Nats-Msg-Id").unwrap_or_default(),
                RunResult::decode(&m.payload).expect("an end notice is a run result"),
            )
        })
        .collect()
}

/// Publishes the leader's `replaced` event: the fire of `job` at
/// `instant` is replaced by the fire of `by`.
async fn publish_replaced(env: &Env, job: &str, instant: DateTime<Utc>, by: DateTime<Utc>) {
    let event = Event::now(EventBody::Replaced {
        job: job.into(),
        instant,
        by,
        epoch: 7,
    });
    env.publish(
        env.names.event_subject("replaced", Some(job)),
        async_nats::HeaderMap::new(),
        event.encode(),
    )
    .await;
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A shard of a tracked fire (a job with an overlap policy) that ends for
/// good leaves its last result on the ends stream, under the shard's dedup
/// id, before its final record; an untracked shard leaves nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_shard_leaves_an_end_notice_before_its_final_record() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let mut records = env.watch_records("tracked.s1.*").await;
    let worker = start_worker(env.config("w1"));
    let tracked = job(json!({
        "id": "tracked",
        "schedule": "@every 1h",
        "overlap": "forbid",
        "run": {"shell": "echo ok"},
    }));
    let instant = now_ms();
    let sent = env
        .dispatch_recorded(&tracked, instant, Some("tracked.s1"))
        .await;
    assert!(sent[0].track);

    let r = watch.result().await;
    assert_eq!((r.status, r.will_retry), (RunStatus::Succeeded, false));
    let written = next_records(&mut records, 2).await;
    assert_eq!(written[1].1.state, ShardState::Succeeded, "{written:?}");
    // The final record is written: the end notice is already stored.
    let notices = end_notices(&env).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (subject, id, notice) = &notices[0];
    assert_eq!(subject, "jetcron.ends.tracked");
    assert_eq!(id, &format!("end:tracked:{}:0", instant.timestamp_millis()));
    assert_eq!(id, &wire::end_msg_id("tracked", instant, 0));
    assert_eq!(notice, &r);
    env.wait_work_empty().await;

    let untracked =
        job(json!({"id": "untracked", "schedule": "@every 1h", "run": {"shell": "echo ok"}}));
    let sent = env.dispatch(&untracked, now_ms()).await;
    assert!(!sent[0].track);
    let r = watch.result().await;
    assert_eq!(
        (r.job.as_str(), r.status),
        ("untracked", RunStatus::Succeeded)
    );
    // Settled, so everything it stores is stored.
    env.wait_work_empty().await;
    let notices = end_notices(&env).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    stop_worker(worker).await;
}

/// Attempts with a retry to follow leave no end notice: a tracked shard
/// that fails until it is dead leaves exactly one, its last attempt's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_tracked_shard_leaves_one_end_notice_from_its_last_attempt() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let worker = start_worker(env.config("w1"));
    let job = job(json!({
        "id": "flaky",
        "schedule": "@every 1h",
        "overlap": "queue",
        "run": {"shell": "echo try $JETCRON_ATTEMPT; exit 3"},
        "retry": {"max_attempts": 3, "backoff": ["200ms"]},
    }));
    let instant = now_ms();
    env.dispatch(&job, instant).await;

    let results = watch.results(3).await;
    let attempts: Vec<(u32, bool)> = results.iter().map(|r| (r.attempt, r.will_retry)).collect();
    assert_eq!(attempts, [(1, true), (2, true), (3, false)]);
    watch.dead().await;
    env.wait_work_empty().await;
    let notices = end_notices(&env).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (subject, id, notice) = &notices[0];
    assert_eq!(subject, "jetcron.ends.flaky");
    assert_eq!(id, &wire::end_msg_id("flaky", instant, 0));
    assert_eq!(notice, &results[2]);
    assert_eq!(
        (notice.status, notice.exit_code),
        (RunStatus::Failed, Some(3))
    );
    stop_worker(worker).await;
}

/// A `replaced` event that reaches a running shard's fire stops it like a
/// timeout: it ends `cancelled`, its processes gone, with no retry, no
/// `dead` event, a final record and its end notice. Replaces of other jobs,
/// or of earlier fires only, leave it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_fire_stops_its_running_shard() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let events = harness::events(&env.client, &env.names).await;
    let worker = start_worker(env.config("w1"));
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let job = job(json!({
        "id": "swap",
        "schedule": "@every 1h",
        "overlap": "replace",
        "run": {"shell": format!("echo $$ > {}; echo begun; sleep 30", pid.display())},
    }));
    let instant = now_ms();
    env.dispatch_recorded(&job, instant, Some("swap.s1")).await;
    let pgid: i32 = wait_for_file(&pid).await.trim().parse().unwrap();
    assert!(group_alive(pgid));

    let hour = chrono::Duration::hours(1);
    publish_replaced(&env, "other", instant, instant + hour).await;
    publish_replaced(&env, "swap", instant - hour, instant).await;
    watch.no_more_results(Duration::from_secs(2)).await;
    assert!(
        group_alive(pgid),
        "a replace of another fire stopped the run"
    );

    let by = instant + chrono::Duration::minutes(1);
    let asked = Instant::now();
    publish_replaced(&env, "swap", instant, by).await;
    let r = watch.result().await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped after {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (r.status, r.attempt, r.exit_code, r.will_retry),
        (RunStatus::Cancelled, 1, None, false),
        "{r:?}"
    );
    assert_eq!(
        r.error.as_deref(),
        Some(format!("replaced by the fire of {}", at(by)).as_str())
    );
    assert_eq!(r.output, "begun\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) {
        assert!(Instant::now() < deadline, "the replaced run is still alive");
        sleep(Duration::from_millis(50)).await;
    }
    // Terminated, not left for a retry.
    env.wait_work_gone(r.stream_seq.unwrap()).await;
    let record = env.record("swap.s1.0").await.unwrap();
    assert_eq!(
        (record.state, record.will_retry, record.run_id.as_str()),
        (ShardState::Cancelled, false, r.run_id.as_str())
    );
    let notices = end_notices(&env).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].1, wire::end_msg_id("swap", instant, 0));
    assert_eq!(notices[0].2, r);
    watch.no_more_results(Duration::from_secs(2)).await;
    let seen = events.snapshot();
    assert!(seen.iter().all(|e| e.kind() != "dead"), "{seen:?}");
    stop_worker(worker).await;
}

/// A worker started after a `replaced` event still knows of it: a shard of
/// the replaced fire that it gets ends `cancelled` without running, while
/// the replacing fire's shard and another job's shard of the same instant
/// run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_a_replaced_fire_end_cancelled_without_running() {
    let env = Env::start().await;
    let mut watch = env.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let def = |id: &str| {
        job(json!({
            "id": id,
            "schedule": "@every 1h",
            "overlap": "replace",
            "run": {"shell": format!("echo \"$JETCRON_JOB $JETCRON_INSTANT\" >> {}", ran.display())},
        }))
    };
    let old = now_ms() - chrono::Duration::minutes(2);
    let by = old + chrono::Duration::minutes(1);
    // An earlier replace, then the one that replaces `old`; no worker yet.
    publish_replaced(&env, "swap", old - chrono::Duration::hours(1), old).await;
    publish_replaced(&env, "swap", old, by).await;

    let worker = start_worker(env.config("w1"));
    env.dispatch_recorded(&def("swap"), old, Some("swap.s1"))
        .await;
    env.dispatch(&def("swap"), by).await;
    env.dispatch(&def("other"), old).await;

    let results = watch.results(3).await;
    let of = |job: &str, instant| {
        results
            .iter()
            .find(|r| r.job == job && r.instant == instant)
            .unwrap_or_else(|| panic!("no result of {job} at {instant}: {results:?}"))
    };
    let cancelled = of("swap", old);
    assert_eq!(
        (cancelled.status, cancelled.attempt, cancelled.exit_code),
        (RunStatus::Cancelled, 1, None),
        "{cancelled:?}"
    );
    assert!(!cancelled.will_retry);
    assert_eq!(cancelled.output, "");
    assert_eq!(
        cancelled.error.as_deref(),
        Some(format!("replaced by the fire of {}; not run", at(by)).as_str())
    );
    assert_eq!(of("swap", by).status, RunStatus::Succeeded);
    assert_eq!(of("other", old).status, RunStatus::Succeeded);
    env.wait_work_empty().await;

    let mut lines: Vec<String> = std::fs::read_to_string(&ran)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [format!("other {}", at(old)), format!("swap {}", at(by))]
    );
    let record = env.record("swap.s1.0").await.unwrap();
    assert_eq!(
        (record.state, record.will_retry, record.run_id.as_str()),
        (ShardState::Cancelled, false, cancelled.run_id.as_str())
    );
    // Every shard here is tracked: three end notices, the cancelled one too.
    let notices = end_notices(&env).await;
    assert_eq!(notices.len(), 3, "{notices:?}");
    let (_, id, notice) = notices
        .iter()
        .find(|(_, _, n)| n.job == "swap" && n.instant == old)
        .unwrap();
    assert_eq!(id, &wire::end_msg_id("swap", old, 0));
    assert_eq!(notice, cancelled);
    watch.no_more_results(Duration::from_secs(1)).await;
    stop_worker(worker).await;
}
