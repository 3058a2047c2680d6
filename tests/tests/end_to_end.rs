//! Schedulers and workers together against a real nats-server: what a user
//! sees on `jetcron.results.>`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{RunResult, RunStatus};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler, Worker};

fn names() -> Names {
    Names::default()
}

fn job(id: &str, schedule: &str, shards: u32, cmd: &str) -> bytes::Bytes {
    serde_json::json!({"id": id, "schedule": schedule, "shards": shards, "run": {"shell": cmd}})
        .to_string()
        .into()
}

/// Results grouped by instant, for the instants whose shards all reported.
fn complete_fires(results: &[RunResult], shards: u32) -> BTreeMap<DateTime<Utc>, Vec<RunResult>> {
    let mut by: BTreeMap<DateTime<Utc>, Vec<RunResult>> = BTreeMap::new();
    for r in results {
        by.entry(r.instant).or_default().push(r.clone());
    }
    by.retain(|_, rs| rs.iter().map(|r| r.shard).collect::<HashSet<_>>().len() == shards as usize);
    by
}

fn millis(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_second_job_with_three_shards_gives_three_results_per_fire() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let results = harness::results(&client, &names()).await;
    let sched = Scheduler::start(&server.url(), "s1");
    let w1 = Worker::start(&server.url(), "w1");
    let w2 = Worker::start(&server.url(), "w2");
    let api = harness::api(&client, &names()).await;
    api.put_raw(job(
        "tick",
        "* * * * * *",
        3,
        "echo shard $JETCRON_SHARD of $JETCRON_SHARDS",
    ))
    .await
    .unwrap();
    let all = results
        .wait_for("6 complete fires", Duration::from_secs(30), |rs| {
            complete_fires(rs, 3).len() >= 6
        })
        .await;
    let fires = complete_fires(&all, 3);
    let instants: Vec<_> = fires.keys().copied().collect();
    for w in instants.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{instants:?}");
    }
    let mut lateness = Vec::new();
    for (instant, rs) in &fires {
        assert_eq!(rs.len(), 3, "{instant}: {rs:#?}");
        let shards: BTreeSet<u32> = rs.iter().map(|r| r.shard).collect();
        assert_eq!(shards, BTreeSet::from([0, 1, 2]));
        for r in rs {
            assert_eq!(
                (r.status, r.attempt, r.shards),
                (RunStatus::Succeeded, 1, 3)
            );
            assert_eq!(r.output, format!("shard {} of 3\n", r.shard));
            lateness.push(millis(r.started_at - r.instant));
        }
    }
    lateness.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "fire lateness (instant to worker start) over {} runs: median {:.1} ms, worst {:.1} ms",
        lateness.len(),
        lateness[lateness.len() / 2],
        lateness[lateness.len() - 1]
    );
    let workers: HashSet<_> = all.iter().map(|r| r.worker.as_str()).collect();
    assert!(workers.len() == 2, "both workers run shards: {workers:?}");
    sched.stop().await;
    w1.stop(Duration::from_secs(10)).await;
    w2.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_and_a_killed_leader_never_run_a_shard_twice() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let results = harness::results(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let b = Scheduler::start(&server.url(), "b");
    let w1 = Worker::start(&server.url(), "w1");
    let w2 = Worker::start(&server.url(), "w2");
    let api = harness::api(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 2, "true"))
        .await
        .unwrap();
    let before = results
        .wait_for("3 fires", Duration::from_secs(30), |rs| {
            complete_fires(rs, 2).len() >= 3
        })
        .await;
    let epoch = before[0].epoch;
    assert!(
        before.iter().all(|r| r.epoch == epoch),
        "only one scheduler dispatches"
    );

    // Kill whichever leads.
    let js = async_nats::jetstream::new(client.clone());
    let lease = js.get_key_value(names().lease_bucket()).await.unwrap();
    let holder: serde_json::Value =
        serde_json::from_slice(&lease.get("leader").await.unwrap().unwrap()).unwrap();
    let (leader, standby) = if holder["holder"] == "a" {
        (a, b)
    } else {
        (b, a)
    };
    leader.kill();
    let all = results
        .wait_for("3 fires by the new leader", Duration::from_secs(30), |rs| {
            let new: Vec<_> = rs.iter().filter(|r| r.epoch != epoch).cloned().collect();
            complete_fires(&new, 2).len() >= 3
        })
        .await;
    let mut seen = HashSet::new();
    for r in all.iter().filter(|r| r.attempt == 1) {
        assert!(seen.insert((r.instant, r.shard)), "ran twice: {r:#?}");
    }
    assert!(all.iter().all(|r| r.status == RunStatus::Succeeded));
    standby.stop().await;
    w1.stop(Duration::from_secs(10)).await;
    w2.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_workers_carry_on_after_the_server_restarts() {
    harness::init_tracing();
    let mut server = NatsServer::start().await;
    let client = server.client().await;
    let sched = Scheduler::start(&server.url(), "s1");
    let w1 = Worker::start(&server.url(), "w1");
    let api = harness::api(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 2, "echo ok"))
        .await
        .unwrap();
    {
        let results = harness::results(&client, &names()).await;
        results
            .wait_for("2 fires", Duration::from_secs(30), |rs| {
                complete_fires(rs, 2).len() >= 2
            })
            .await;
    }
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;
    let restarted = Utc::now();
    let client = server.client().await;
    let results = harness::results(&client, &names()).await;
    let all = results
        .wait_for("3 fires after the restart", Duration::from_secs(40), |rs| {
            let after: Vec<_> = rs
                .iter()
                .filter(|r| r.instant > restarted)
                .cloned()
                .collect();
            complete_fires(&after, 2).len() >= 3
        })
        .await;
    let mut seen = HashSet::new();
    for r in all.iter().filter(|r| r.attempt == 1) {
        assert!(seen.insert((r.instant, r.shard)), "ran twice: {r:#?}");
    }
    sched.stop().await;
    w1.stop(Duration::from_secs(10)).await;
}
