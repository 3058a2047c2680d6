//! The work protocol (docs/work-protocol.md) spoken by a worker whose NATS
//! client nobody on this project wrote: the example Python worker
//! (examples/python-worker/worker.py, on nats-py) runs in the same group as
//! a Rust worker, against a real nats-server and a real scheduler.
//!
//! nats-py comes from `./scripts/install-nats-py.sh` (into `.tools/nats-py`,
//! which `./scripts/test.sh` runs); without it these tests fail and say so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use chrono::{DateTime, SecondsFormat, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{Event, EventBody, RunResult, RunStatus};
use jetcron_tests::harness::{self, Worker};
use jetcron_tests::stack::Stack;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::time::{Instant, sleep};

/// Longest wait for anything a test expects; the machine is shared and slow.
const LIMIT: Duration = Duration::from_secs(60);
/// The group's ack wait (the Rust worker creates the consumer with it):
/// short, so that a killed worker's shard comes back soon.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// Run slots of each worker.
const SLOTS: usize = 4;
const PY: &str = "py";
const RUST: &str = "rust";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where `./scripts/install-nats-py.sh` puts nats-py; checked to import.
fn nats_py() -> PathBuf {
    let dir = workspace().join(".tools/nats-py");
    let imports = Command::new("python3")
        .args([
            "-c",
            "import sys, nats.js; sys.exit(sys.version_info < (3, 11))",
        ])
        .env("PYTHONPATH", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match imports {
        Ok(s) if s.success() => dir,
        _ => panic!(
            "these tests run examples/python-worker/worker.py and need python3 (3.11 or later) \
             with nats-py in {}: run ./scripts/install-nats-py.sh",
            dir.display()
        ),
    }
}

/// The example Python worker as a child process (its own process group).
struct PyWorker {
    child: Child,
}

impl PyWorker {
    fn start(url: &str) -> PyWorker {
        let child = Command::new("python3")
            .arg(workspace().join("examples/python-worker/worker.py"))
            .env("PYTHONPATH", nats_py())
            .env("NATS_URL", url)
            .env("JETCRON_GROUP", "default")
            .env("JETCRON_WORKER_ID", PY)
            .env("JETCRON_CONCURRENCY", SLOTS.to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start python3");
        PyWorker { child }
    }

    /// SIGKILL: nothing is acked or reported any more.
    fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server, a scheduler, a Rust worker and the Python worker in group
/// `default`, both pulling; results and events collected from the start
/// (the [`Stack`] it derefs to). Fields drop in this order: the workers go
/// before the server.
struct Setup {
    py: PyWorker,
    _rust: Worker,
    /// Commands leave a file here per execution.
    dir: tempfile::TempDir,
    stack: Stack,
}

impl std::ops::Deref for Setup {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Setup {
    async fn start() -> Setup {
        nats_py();
        let stack = Stack::start().await;
        let url = stack.server.url();
        // The Rust worker comes first and creates the group's consumer.
        let rust = Worker::start_with(jetcron_worker::WorkerConfig {
            concurrency: SLOTS,
            ack_wait: ACK_WAIT,
            ..harness::worker_config(&url, RUST)
        });
        wait_pulling(&stack.client, 1).await;
        let py = PyWorker::start(&url);
        // One pull request of the Rust worker and one per Python slot.
        wait_pulling(&stack.client, 1 + SLOTS).await;
        Setup {
            py,
            _rust: rust,
            dir: tempfile::tempdir().unwrap(),
            stack,
        }
    }

    /// Triggers every shard of `id`; the fire's instant.
    async fn fire(&self, id: &str) -> DateTime<Utc> {
        self.stack.trigger(id, None).await.instant
    }

    /// Names of the files the commands left, sorted.
    fn marks(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits until the group's consumer has nothing pending or unacked.
    async fn wait_settled(&self) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let mut c = consumer(&self.client).await;
            let info = c.info().await.unwrap().clone();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "never settled: {info:?}");
            sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn consumer(client: &async_nats::Client) -> PullConsumer {
    let names = Names::default();
    jetstream::new(client.clone())
        .get_stream(names.work_stream())
        .await
        .unwrap()
        .get_consumer(&names.work_consumer("default"))
        .await
        .unwrap()
}

/// Waits until `n` pull requests wait at the group's consumer.
async fn wait_pulling(client: &async_nats::Client, n: usize) {
    let js = jetstream::new(client.clone());
    let names = Names::default();
    let deadline = Instant::now() + LIMIT;
    loop {
        let waiting = async {
            let stream = js.get_stream(names.work_stream()).await.ok()?;
            let mut c: PullConsumer = stream
                .get_consumer(&names.work_consumer("default"))
                .await
                .ok()?;
            Some(c.info().await.ok()?.num_waiting)
        };
        if let Ok(Some(w)) = tokio::time::timeout(Duration::from_secs(5), waiting).await
            && w >= n
        {
            return;
        }
        assert!(Instant::now() < deadline, "{n} pull requests never waited");
        sleep(Duration::from_millis(50)).await;
    }
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn by_shard(results: &[RunResult]) -> BTreeMap<u32, Vec<RunResult>> {
    let mut by: BTreeMap<u32, Vec<RunResult>> = BTreeMap::new();
    for r in results {
        by.entry(r.shard).or_default().push(r.clone());
    }
    for rs in by.values_mut() {
        rs.sort_by_key(|r| r.attempt);
    }
    by
}

/// `Nats-Msg-Id` of every stored message of `stream`, by subject.
async fn msg_ids(client: &async_nats::Client, stream: &str) -> BTreeMap<String, Vec<String>> {
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in harness::stream_messages(client, stream).await {
        let id = harness::header(&m, "Nats-Msg-Id").unwrap_or_default();
        ids.entry(m.subject.to_string()).or_default().push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_run_on_the_python_and_the_rust_worker_alike() {
    let s = Setup::start().await;
    let dir = s.dir.path().display();
    let shards: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    let payload = json!({"batch": 500, "name": "grüße"});
    // The Python worker's runs outlast the ack wait: only its progress acks
    // keep them from being delivered a second time.
    let cmd = format!(
        "echo \"$JETCRON_JOB|$JETCRON_INSTANT|$JETCRON_SHARD|$JETCRON_SHARDS|$JETCRON_SHARD_PARAM|\
         $JETCRON_ATTEMPT|$JETCRON_RUN_ID|$JETCRON_WORKER|$JETCRON_PAYLOAD|$(cat \"$JETCRON_PAYLOAD_FILE\")\"; \
         touch {dir}/$JETCRON_SHARD.$JETCRON_RUN_ID; \
         if [ \"$JETCRON_WORKER\" = {PY} ]; then sleep 4; else sleep 0.3; fi"
    );
    // Scheduled, with a child: its shards are tracked, so the child fires
    // only once every shard's end notice, from either worker, is stored.
    let at = (Utc::now() + chrono::Duration::seconds(3)).to_rfc3339_opts(SecondsFormat::Secs, true);
    s.put(json!({"id": "after", "schedule": "@manual", "run": {"shell": "echo chained"}}))
        .await;
    s.put(
        json!({"id": "mixed", "schedule": format!("@at {at}"), "shards": shards,
        "run": {"shell": cmd}, "payload": payload, "on_success": ["after"]}),
    )
    .await;
    let results = s.results_of("mixed", 16).await;
    let chained = s.results_of("after", 1).await;
    assert_eq!(chained[0].status, RunStatus::Succeeded, "{chained:#?}");

    let instant = results[0].instant;
    let compact = payload.to_string();
    let by = by_shard(&results);
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    let mut seqs = BTreeSet::new();
    for (shard, rs) in &by {
        assert_eq!(rs.len(), 1, "shard {shard} ran once: {rs:#?}");
        let r = &rs[0];
        assert_eq!(
            (r.status, r.attempt, r.exit_code, r.will_retry, r.shards),
            (RunStatus::Succeeded, 1, Some(0), false, 16),
            "{r:#?}"
        );
        assert_eq!((r.instant, r.epoch), (instant, results[0].epoch), "{r:#?}");
        assert!(
            r.epoch > 0 && r.error.is_none() && !r.output_truncated,
            "{r:#?}"
        );
        assert!(
            r.instant <= r.started_at && r.started_at <= r.finished_at,
            "{r:#?}"
        );
        assert!(seqs.insert(r.stream_seq.expect("stream_seq")), "{r:#?}");
        // Both workers hand a command the same environment.
        let expected = format!(
            "mixed|{}|{shard}|16|p{shard}|1|{}|{}|{compact}|{compact}\n",
            instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            r.run_id,
            r.worker
        );
        assert_eq!(r.output, expected, "{r:#?}");
    }
    let workers: BTreeSet<&str> = results.iter().map(|r| r.worker.as_str()).collect();
    assert_eq!(
        workers,
        BTreeSet::from([PY, RUST]),
        "both workers ran shards"
    );
    // Each shard ran once: no run was delivered twice.
    let run_ids: BTreeSet<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(run_ids.len(), 16);
    let marks = s.marks();
    assert_eq!(marks.len(), 16, "one execution per shard: {marks:?}");
    // Every result is stored under the id that names its execution.
    let ids = msg_ids(&s.client, "JETCRON_RESULTS").await;
    let mut stored = ids["jetcron.results.mixed"].clone();
    stored.sort();
    let mut expected: Vec<String> = results
        .iter()
        .map(|r| format!("mixed:{}:{}:1:{}", ms(instant), r.shard, r.run_id))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    s.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_after_its_backoff_on_either_worker() {
    let s = Setup::start().await;
    s.put(json!({"id": "flaky", "schedule": "@manual", "shards": 16,
        "retry": {"max_attempts": 2, "backoff": ["1s"]},
        "run": {"shell": "sleep 0.3; [ \"$JETCRON_ATTEMPT\" -ge 2 ] || { echo no; exit 3; }; echo yes"}}))
    .await;
    let instant = s.fire("flaky").await;
    let results = s.results_of("flaky", 32).await;
    for (shard, rs) in by_shard(&results) {
        assert_eq!(rs.len(), 2, "shard {shard}: {rs:#?}");
        let (first, second) = (&rs[0], &rs[1]);
        assert_eq!(
            (
                first.attempt,
                first.status,
                first.exit_code,
                first.will_retry
            ),
            (1, RunStatus::Failed, Some(3), true),
            "{first:#?}"
        );
        assert_eq!(
            (second.attempt, second.status, second.will_retry),
            (2, RunStatus::Succeeded, false),
            "{second:#?}"
        );
        assert_eq!(
            (first.output.as_str(), second.output.as_str()),
            ("no\n", "yes\n")
        );
        assert_eq!((first.instant, second.instant), (instant, instant));
        assert_eq!(first.stream_seq, second.stream_seq, "one shard message");
        // Redelivered after the delay the failing worker asked for.
        let waited = second.started_at - first.finished_at;
        assert!(
            waited >= chrono::Duration::milliseconds(900),
            "{waited}: {rs:#?}"
        );
    }
    let py: Vec<&RunResult> = results.iter().filter(|r| r.worker == PY).collect();
    assert!(
        !py.is_empty(),
        "the Python worker ran attempts: {results:#?}"
    );
    assert!(results.iter().any(|r| r.worker == RUST), "{results:#?}");
    s.wait_settled().await;
    let dead: Vec<Event> = s
        .events
        .snapshot()
        .into_iter()
        .filter(|e| e.kind() == "dead")
        .collect();
    assert!(dead.is_empty(), "{dead:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_its_last_attempt_on_the_python_worker_is_dead_lettered() {
    let s = Setup::start().await;
    s.put(json!({"id": "doomed", "schedule": "@manual", "shards": 12,
        "retry": {"max_attempts": 2, "backoff": ["500ms"]},
        "run": {"shell": "sleep 0.3; echo no luck; exit 7"}}))
        .await;
    let instant = s.fire("doomed").await;
    let results = s.results_of("doomed", 24).await;
    let dead = s
        .events
        .wait_for("12 dead events", LIMIT, |es| {
            es.iter().filter(|e| e.kind() == "dead").count() >= 12
        })
        .await;
    let by = by_shard(&results);
    let mut dead_on_py = 0;
    for e in dead.iter().filter(|e| e.kind() == "dead") {
        let EventBody::Dead {
            job,
            instant: at,
            shard,
            attempts,
            status,
            run_id,
            worker,
            ..
        } = &e.body
        else {
            unreachable!()
        };
        let last = &by[shard][1];
        assert_eq!(
            (job.as_str(), *at, *attempts, *status),
            ("doomed", instant, 2, RunStatus::Failed)
        );
        assert_eq!(
            (run_id, worker),
            (&last.run_id, &last.worker),
            "{e:#?}: {last:#?}"
        );
        dead_on_py += usize::from(worker == PY);
    }
    assert!(
        dead_on_py > 0,
        "the Python worker dead-lettered a shard: {dead:#?}"
    );
    for (shard, rs) in &by {
        assert_eq!(rs.len(), 2, "shard {shard}: {rs:#?}");
        assert_eq!(
            rs.iter()
                .map(|r| (r.attempt, r.status, r.exit_code, r.will_retry))
                .collect::<Vec<_>>(),
            vec![
                (1, RunStatus::Failed, Some(7), true),
                (2, RunStatus::Failed, Some(7), false)
            ],
            "{rs:#?}"
        );
    }
    // One dead event per shard, under its shard's id, whoever sent it.
    let ids = msg_ids(&s.client, "JETCRON_EVENTS").await;
    let mut stored = ids["jetcron.events.dead.doomed"].clone();
    stored.sort();
    let mut expected: Vec<String> = (0..12)
        .map(|n| format!("dead:doomed:{}:{n}", ms(instant)))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    // Terminated: never delivered again.
    s.wait_settled().await;
    sleep(ACK_WAIT + Duration::from_secs(1)).await;
    assert_eq!(s.results_now("doomed").len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_past_its_timeout_is_timed_out_on_the_python_worker_as_on_the_rust_one() {
    let s = Setup::start().await;
    s.put(
        json!({"id": "slow", "schedule": "@manual", "shards": 8, "timeout": "500ms",
        "retry": {"max_attempts": 2, "backoff": ["200ms"]},
        "run": {"shell": "echo started; sleep 30"}}),
    )
    .await;
    s.fire("slow").await;
    let results = s.results_of("slow", 16).await;
    let mut on_py = 0;
    for (shard, rs) in &by_shard(&results) {
        assert_eq!(
            rs.iter()
                .map(|r| (r.attempt, r.status, r.exit_code, r.will_retry))
                .collect::<Vec<_>>(),
            vec![
                (1, RunStatus::TimedOut, None, true),
                (2, RunStatus::TimedOut, None, false)
            ],
            "shard {shard}: {rs:#?}"
        );
        for r in rs {
            assert_eq!(r.output, "started\n", "{r:#?}");
            let error = r.error.clone().unwrap_or_default();
            assert!(error.starts_with("timed out after 500"), "{r:#?}");
            // Stopped at its timeout, not when the command would have ended.
            assert!(
                r.finished_at - r.started_at < chrono::Duration::seconds(10),
                "{r:#?}"
            );
            on_py += usize::from(r.worker == PY);
        }
    }
    assert!(
        on_py > 0,
        "the Python worker timed out attempts: {results:#?}"
    );
    let dead = s
        .events
        .wait_for("8 dead events", LIMIT, |es| {
            es.iter().filter(|e| e.kind() == "dead").count() >= 8
        })
        .await;
    assert_eq!(dead.iter().filter(|e| e.kind() == "dead").count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_python_workers_shards_are_finished_by_the_rust_worker() {
    let mut s = Setup::start().await;
    let dir = s.dir.path().display();
    // On the Python worker a shard runs until the worker is killed.
    let cmd = format!(
        "echo $$ > {dir}/$JETCRON_SHARD.$JETCRON_WORKER.$JETCRON_ATTEMPT; \
         if [ \"$JETCRON_WORKER\" = {PY} ]; then sleep 60; fi; echo done by $JETCRON_WORKER"
    );
    s.put(json!({"id": "long", "schedule": "@manual", "shards": 8, "run": {"shell": cmd}}))
        .await;
    s.fire("long").await;
    let deadline = Instant::now() + LIMIT;
    while !s.marks().iter().any(|m| m.contains(".py.")) {
        assert!(
            Instant::now() < deadline,
            "the Python worker never started a shard"
        );
        sleep(Duration::from_millis(50)).await;
    }
    // Let it take what it can, past a progress ack or two, then kill it and
    // what it ran.
    sleep(Duration::from_secs(2)).await;
    s.py.kill();
    let on_py: Vec<String> = s
        .marks()
        .into_iter()
        .filter(|m| m.contains(".py."))
        .collect();
    for mark in &on_py {
        let pid: i32 = std::fs::read_to_string(s.dir.path().join(mark))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let results = s.results_of("long", 8).await;
    for (shard, rs) in by_shard(&results) {
        assert_eq!(rs.len(), 1, "shard {shard}: {rs:#?}");
        let r = &rs[0];
        assert_eq!(
            (r.status, r.worker.as_str()),
            (RunStatus::Succeeded, RUST),
            "{r:#?}"
        );
        assert_eq!(r.output, "done by rust\n");
        let was_on_py = on_py.contains(&format!("{shard}.py.1"));
        // The killed attempt counts: the redelivery is attempt 2.
        assert_eq!(r.attempt, if was_on_py { 2 } else { 1 }, "{r:#?}");
    }
    assert!(!on_py.is_empty());
    s.wait_settled().await;
}
