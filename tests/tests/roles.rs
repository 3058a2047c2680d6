#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The least-privilege users of `deploy/jetcron-users.conf`, on a real
//! nats-server started with that file: a scheduler and a worker run a job
//! an operator put and triggered, a viewer reads status and watches the
//! result; and each role is refused what it must not do. A refusal is
//! proved twice: the client gets no answer, and the server logs the
//! permission violation for that user and subject.

use std::time::Duration;

use async_nats::jetstream;
use jetcron_shared::Names;
use jetcron_shared::connect::Patience;
use jetcron_shared::wire::{RunResult, RunStatus};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Collector, Scheduler, Worker};
use jetcron_tests::users::{as_role, users_conf};
use serde_json::json;
use tokio::time::{Instant, sleep, timeout};

const LIMIT: Duration = Duration::from_secs(45);

async fn client(server: &NatsServer, role: &str) -> async_nats::Client {
    as_role(server, role)
        .connect(&format!("test {role}"), Patience::FailFast)
        .await
        .unwrap()
}

/// The server's log lines about permission violations, such as
/// `... - "$G/user:viewer" - Publish Violation - Subject "jetcron.api.job.put"`.
fn violations(server: &NatsServer) -> Vec<String> {
    std::fs::read_to_string(server.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" Violation - "))
        .map(str::to_string)
        .collect()
}

/// `role` publishing a request to `subject` gets no answer, and the server
/// logs it as a violation of that user.
async fn refused(server: &NatsServer, c: &async_nats::Client, role: &str, subject: &str) {
    let answer = timeout(
        Duration::from_secs(2),
        c.request(subject.to_string(), "{}".into()),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "{role} got an answer on {subject}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = violations(server).iter().any(|l| {
            l.contains(&format!("Publish Violation - Subject \"{subject}\""))
                && l.contains(&format!("/user:{role}\""))
        });
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no violation logged for {role} on {subject}: {:#?}\n{}",
            violations(server),
            server.log_tail(30)
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_and_is_refused_the_rest() {
    harness::init_tracing();
    let server = NatsServer::start_with_config(&users_conf()).await;
    let names = Names::default();

    let scheduler = Scheduler::start_with(jetcron_scheduler::SchedulerConfig {
        connect: as_role(&server, "scheduler"),
        ..harness::scheduler_config(&server.url(), "s1")
    });
    let operator = client(&server, "operator").await;
    let viewer = client(&server, "viewer").await;
    let ops = harness::api(&operator, &names).await;
    let view = harness::api(&viewer, &names).await;
    // The viewer watches results.
    let results: Collector<RunResult> =
        Collector::subscribe(&viewer, names.results_all(), |b| RunResult::decode(b).ok()).await;
    let deadline = Instant::now() + LIMIT;
    while !matches!(view.status().await, Ok(s) if s.leader.is_some()) {
        assert!(Instant::now() < deadline, "no leader");
        sleep(Duration::from_millis(100)).await;
    }
    let worker = Worker::start_with(jetcron_worker::WorkerConfig {
        connect: as_role(&server, "worker"),
        ..harness::worker_config(&server.url(), "w1")
    });

    ops.put_raw(
        json!({"id": "hello", "schedule": "@manual", "shards": 2, "run": {"shell": "echo hi"}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    ops.trigger(&jetcron_shared::api::TriggerRequest {
        id: "hello".into(),
        shards: None,
        payload: None,
    })
    .await
    .unwrap();
    let done = results
        .wait_for("2 results", LIMIT, |rs| rs.len() >= 2)
        .await;
    for r in &done {
        assert_eq!(
            (r.status, r.output.as_str(), r.worker.as_str()),
            (RunStatus::Succeeded, "hi\n", "w1")
        );
    }
    let listed = view.list().await.unwrap();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(view.workers().await.unwrap().workers.len(), 1);
    // Nothing the scheduler and the worker did was refused.
    assert_eq!(violations(&server), Vec::<String>::new());

    // The viewer reads, but does not change or fire.
    for subject in [
        "jetcron.api.job.put",
        "jetcron.api.job.trigger",
        "jetcron.api.job.delete",
    ] {
        refused(&server, &viewer, "viewer", subject).await;
    }
    // A worker's credentials do not reach the API or the jobs bucket, nor
    // another group's shards.
    let w = client(&server, "worker").await;
    for subject in [
        "jetcron.api.job.put",
        "jetcron.api.job.trigger",
        "$KV.jetcron_jobs.evil",
        "$JS.API.CONSUMER.MSG.NEXT.JETCRON_WORK.jetcron-billing",
    ] {
        refused(&server, &w, "worker", subject).await;
    }
    let js = jetstream::new(w.clone());
    assert!(
        timeout(
            Duration::from_secs(3),
            js.delete_stream(names.work_stream())
        )
        .await
        .map(|r| r.is_err())
        .unwrap_or(true),
        "a worker deleted the work stream"
    );
    // An operator does not write the buckets directly.
    refused(&server, &operator, "operator", "$KV.jetcron_jobs.evil").await;
    // The job is still there, as it was.
    assert_eq!(view.get("hello").await.unwrap().id, "hello");

    worker.stop(LIMIT).await;
    scheduler.stop().await;
    // Their whole lives, stop included, needed nothing refused: the only
    // violations are the ones provoked above.
    let unexpected: Vec<String> = violations(&server)
        .into_iter()
        .filter(|l| l.contains("/user:scheduler\"") || l.contains("/user:worker\""))
        // The test's own client as `worker` provoked its refusals.
        .filter(|l| !l.contains(":test worker\""))
        .collect();
    assert_eq!(unexpected, Vec::<String>::new());
}
