#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Once-only execution across a server crash that falls between a shard's
//! result and its ack.
//!
//! A first worker reaches the server through a [`Proxy`]. The test pauses
//! the proxy at a chosen point of the worker's run (everything the worker
//! sends after it waits in the proxy), SIGKILLs the server and restarts it
//! on the same store, kills the frozen worker, and lets a second worker,
//! connected directly, take the shard when the server hands it out again:
//!
//! - paused once the shard's final record is stored (only the ack is
//!   missing): the second worker must not run it again;
//! - paused once the result is stored, before the final record: the second
//!   worker runs it again, as attempt 2, and both executions are stored.
//!
//! The pause is set off by the test's own copy of the worker's write, taken
//! from the server as the write arrives, so it usually lands before the
//! server's answer gets back through the proxy; when it did not (the worker
//! got further than the window), the proxy is resumed, the fire finishes,
//! and the test tries again with a new fire, a few times at most.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::runs::{self, ShardRecord, ShardState};
use jetcron_shared::setup::{self, Resources, SetupOptions};
use jetcron_shared::wire::{Cause, RunResult, RunStatus, ShardMessage};
use jetcron_shared::{Job, Names};
use jetcron_tests::harness::{Worker, init_tracing, worker_config};
use jetcron_tests::{NatsServer, Proxy};
use jetcron_worker::WorkerConfig;
use jetcron_worker::record::is_final;
use serde_json::json;
use tokio::time::{Instant, sleep, timeout};

/// Longest wait for anything a test expects; the machine is shared and slow.
const LIMIT: Duration = Duration::from_secs(45);
/// The consumer's ack wait: short, so that the server hands the shard out
/// again soon after the crash.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Fires tried before giving up on freezing the worker inside the window.
const TRIES: u32 = 10;
/// After the pause, time for bytes already on their way to arrive.
const SETTLE: Duration = Duration::from_millis(300);
/// Job id, and the runs-bucket key of its fire record (history slot 0).
const JOB: &str = "once";
const FIRE_RECORD: &str = "once.s0";
/// The shard record of shard 0 of that fire.
const SHARD_RECORD: &str = "once.s0.0";

/// Where the first worker is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Its final shard record is stored; the ack is not sent yet.
    FinalRecordStored,
    /// Its result is stored; the final record is not written yet.
    ResultStored,
}

/// A server with the jetcron resources, a client of the test's own, and a
/// temp dir for what the shell commands write.
struct Env {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    resources: Resources,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        init_tracing();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let names = Names::default();
        let resources = setup::ensure(&js, &names, &SetupOptions::default())
            .await
            .unwrap();
        Env {
            server,
            client,
            js,
            names,
            resources,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// SIGKILL, then the same server again on the same store, and a fresh
    /// client of the test's.
    async fn crash_and_restart(&mut self) {
        self.server.kill().await;
        self.server.restart().await;
        self.client = self.server.client().await;
        self.js = jetstream::new(self.client.clone());
        self.resources = setup::ensure(&self.js, &self.names, &SetupOptions::default())
            .await
            .unwrap();
    }

    fn worker(&self, url: &str, id: &str) -> WorkerConfig {
        WorkerConfig {
            // One slot: a frozen worker has no pull request waiting at the
            // server that could take the shard back when it is redelivered.
            concurrency: 1,
            ack_wait: ACK_WAIT,
            kill_grace: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            ..worker_config(url, id)
        }
    }

    /// The file the job of try `n` appends its run ids to.
    fn lines_file(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("runs-{n}.txt"))
    }

    /// A one-shard job that appends `$JETCRON_RUN_ID` to `file`.
    fn job(file: &Path) -> Job {
        let def = json!({
            "id": JOB,
            "schedule": "@every 1h",
            "run": {"shell": format!(r#"echo "$JETCRON_RUN_ID" >> {}"#, file.display())},
        });
        Job::decode(&serde_json::to_vec(&def).unwrap(), None).unwrap()
    }

    /// Publishes shard 0 of the fire of `job` at `instant`, recorded under
    /// [`FIRE_RECORD`]; returns its work stream sequence.
    async fn dispatch(&self, job: &Job, instant: DateTime<Utc>) -> u64 {
        let mut msg = ShardMessage::new(job, instant, 0, 7, Cause::Schedule);
        msg.record = Some(FIRE_RECORD.to_string());
        let published = async {
            self.js
                .publish_with_headers(
                    self.names.work_subject(&msg.group, &msg.job),
                    msg.headers(),
                    msg.encode().into(),
                )
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        timeout(LIMIT, published)
            .await
            .expect("dispatch timed out")
            .expect("cannot dispatch")
            .sequence
    }

    async fn record(&self) -> Option<ShardRecord> {
        let value = timeout(LIMIT, self.resources.runs.get(SHARD_RECORD))
            .await
            .expect("runs bucket did not answer")
            .unwrap()?;
        Some(runs::decode(&value).expect("shard record does not decode"))
    }

    /// Every result of the fire at `instant` in the results stream.
    async fn stored_results(&self, instant: DateTime<Utc>) -> Vec<RunResult> {
        let read = async {
            let mut stream = self.js.get_stream(self.names.results_stream()).await?;
            let state = stream.info().await?.state.clone();
            let mut out = Vec::new();
            if state.messages == 0 {
                return Ok::<_, async_nats::Error>(out);
            }
            for seq in state.first_sequence..=state.last_sequence {
                // Gaps are fine: nothing is deleted, but do not insist.
                if let Ok(raw) = stream.get_raw_message(seq).await {
                    let r = RunResult::decode(&raw.payload)?;
                    if r.instant == instant {
                        out.push(r);
                    }
                }
            }
            Ok(out)
        };
        timeout(LIMIT, read)
            .await
            .expect("results stream did not answer")
            .unwrap()
    }

    /// Waits until the results stream holds `n` results of the fire.
    async fn wait_results(&self, instant: DateTime<Utc>, n: usize) -> Vec<RunResult> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let results = self.stored_results(instant).await;
            if results.len() >= n {
                return results;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} results stored: {results:?}",
                results.len()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages in the work stream, and the group consumer's pending and
    /// ack-pending counts.
    async fn work_state(&self) -> (u64, u64, usize) {
        let read = async {
            let mut stream = self.js.get_stream(self.names.work_stream()).await?;
            let messages = stream.info().await?.state.messages;
            let mut consumer: PullConsumer = stream
                .get_consumer(&self.names.work_consumer("default"))
                .await?;
            let info = consumer.info().await?;
            Ok::<_, async_nats::Error>((messages, info.num_pending, info.num_ack_pending))
        };
        timeout(LIMIT, read)
            .await
            .expect("work stream did not answer")
            .unwrap()
    }

    /// Waits until the work stream is empty and its consumer has nothing
    /// left to deliver or to wait for.
    async fn wait_work_settled(&self) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let state = self.work_state().await;
            if state == (0, 0, 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "work not settled: (messages, pending, ack pending) = {state:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Dispatches fires to a worker connected through `proxy` until one
    /// freezes it inside `window`; returns that fire's instant and file.
    async fn freeze_in(&self, proxy: &Proxy, window: Window) -> (DateTime<Utc>, PathBuf, u64) {
        for n in 1..=TRIES {
            // Subscribed before the dispatch, so the write cannot be missed.
            let subject = match window {
                Window::FinalRecordStored => {
                    format!("$KV.{}.{SHARD_RECORD}", self.names.runs_bucket())
                }
                Window::ResultStored => self.names.results_subject(JOB),
            };
            let mut writes = self.client.subscribe(subject).await.unwrap();
            self.client.flush().await.unwrap();
            let file = self.lines_file(n);
            let instant = now_ms();
            let seq = self.dispatch(&Env::job(&file), instant).await;

            // The test's copy of the write arrives as the server takes it in.
            let deadline = Instant::now() + LIMIT;
            loop {
                let msg = timeout(deadline - Instant::now(), writes.next())
                    .await
                    .unwrap_or_else(|_| panic!("no {window:?} write in time"))
                    .expect("subscription ended");
                let in_window = match window {
                    Window::FinalRecordStored => runs::decode::<ShardRecord>(&msg.payload)
                        .is_some_and(|r| r.instant == instant && is_final(&r)),
                    Window::ResultStored => {
                        RunResult::decode(&msg.payload).is_ok_and(|r| r.instant == instant)
                    }
                };
                if in_window {
                    proxy.pause();
                    break;
                }
            }
            sleep(SETTLE).await;

            // Stored: the write reached the server before the pause.
            match window {
                Window::FinalRecordStored => {
                    let deadline = Instant::now() + LIMIT;
                    while !self
                        .record()
                        .await
                        .is_some_and(|r| r.instant == instant && is_final(&r))
                    {
                        assert!(Instant::now() < deadline, "final record never stored");
                        sleep(Duration::from_millis(50)).await;
                    }
                }
                Window::ResultStored => {
                    self.wait_results(instant, 1).await;
                }
            }
            // Frozen inside the window: nothing later reached the server.
            let (messages, _, ack_pending) = self.work_state().await;
            let record = self.record().await.filter(|r| r.instant == instant);
            let inside = messages == 1
                && ack_pending == 1
                && match window {
                    Window::FinalRecordStored => true,
                    Window::ResultStored => record
                        .as_ref()
                        .is_some_and(|r| r.state == ShardState::Running),
                };
            if inside {
                return (instant, file, seq);
            }
            eprintln!("try {n}: the worker got past {window:?} before the pause; again");
            proxy.resume();
            self.wait_work_settled().await;
        }
        panic!("could not freeze the worker inside {window:?} in {TRIES} tries");
    }
}

/// An instant with millisecond precision, as the wire keeps it.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

/// The lines a job's runs appended to `file`.
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Freezes a worker inside `window`, crashes and restarts the server, kills
/// the frozen worker and starts a second one; returns the fire's instant,
/// the file its runs write to, its work stream sequence and the second
/// worker.
async fn crash_inside(env: &mut Env, window: Window) -> (DateTime<Utc>, PathBuf, u64, Worker) {
    let proxy = Proxy::start(&format!("127.0.0.1:{}", env.server.port())).await;
    let first = Worker::start_with(env.worker(&proxy.url(), "first"));
    let (instant, file, seq) = env.freeze_in(&proxy, window).await;

    env.crash_and_restart().await;
    first.kill();
    drop(proxy);
    let second = Worker::start_with(env.worker(&env.server.url(), "second"));
    (instant, file, seq, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_its_final_record_stored_is_not_run_again_after_a_crash() {
    let mut env = Env::start().await;
    let (instant, file, seq, second) = crash_inside(&mut env, Window::FinalRecordStored).await;

    // The server hands the shard out again (it never saw the ack); the
    // second worker acks it without running it.
    env.wait_work_settled().await;
    // Long enough for another delivery, had the ack not counted.
    sleep(ACK_WAIT * 2).await;
    assert_eq!(env.work_state().await, (0, 0, 0));

    let results = env.stored_results(instant).await;
    assert_eq!(results.len(), 1, "{results:?}");
    let r = &results[0];
    assert_eq!((r.status, r.attempt), (RunStatus::Succeeded, 1), "{r:?}");
    assert_eq!(r.worker, "first");
    assert_eq!(r.stream_seq, Some(seq));
    assert_eq!(lines(&file), [r.run_id.as_str()], "ran more than once");
    // Untouched: a second execution would have marked it running first.
    let record = env.record().await.unwrap();
    assert_eq!(
        (record.state, record.run_id.as_str(), record.worker.as_str()),
        (ShardState::Succeeded, r.run_id.as_str(), "first")
    );
    second.stop(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_final_record_was_lost_runs_again_and_both_runs_are_stored() {
    let mut env = Env::start().await;
    let (instant, file, seq, second) = crash_inside(&mut env, Window::ResultStored).await;

    // The record says attempt 1 was running: the second execution is
    // attempt 2, whatever delivery count the server kept.
    let mut results = env.wait_results(instant, 2).await;
    env.wait_work_settled().await;
    sleep(ACK_WAIT * 2).await;
    assert_eq!(env.work_state().await, (0, 0, 0));
    assert_eq!(env.stored_results(instant).await.len(), 2);

    results.sort_by_key(|r| r.attempt);
    let attempts: Vec<(u32, &str, RunStatus)> = results
        .iter()
        .map(|r| (r.attempt, r.worker.as_str(), r.status))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "first", RunStatus::Succeeded),
            (2, "second", RunStatus::Succeeded)
        ]
    );
    assert_ne!(results[0].run_id, results[1].run_id);
    // Both executions of the one dispatched message.
    assert!(
        results.iter().all(|r| r.stream_seq == Some(seq)),
        "{results:?}"
    );
    assert_eq!(
        lines(&file),
        [results[0].run_id.clone(), results[1].run_id.clone()]
    );
    let record = env.record().await.unwrap();
    assert_eq!(
        (record.state, record.attempt, record.run_id.as_str()),
        (ShardState::Succeeded, 2, results[1].run_id.as_str())
    );
    second.stop(LIMIT).await;
}
