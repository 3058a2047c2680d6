#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Handler jobs (`run.handler`) against a real nats-server, a real
//! scheduler, and workers embedded in this process with
//! `jetcron_worker::Worker::builder`: context, output, failure and retry,
//! panics, dead letters, timeouts (a handler that stops when told and one
//! that does not), routing to the workers that know a handler, a worker
//! killed mid-run, shutdown and `overlap: replace`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use jetcron_shared::wire::{EventBody, RunStatus};
use jetcron_tests::harness::Worker;
use jetcron_tests::stack::{LIMIT, Stack};
use jetcron_worker::{HandlerResult, Output, ShardContext, WorkerConfig};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};

/// What a handler saw of its shard.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    job: String,
    instant: DateTime<Utc>,
    shard: u32,
    shards: u32,
    param: Option<String>,
    attempt: u32,
    run_id: String,
    worker: String,
    template: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(ctx: &ShardContext) -> Seen {
    #[derive(serde::Deserialize)]
    struct Payload {
        template: String,
    }
    Seen {
        job: ctx.job().to_string(),
        instant: ctx.instant(),
        shard: ctx.shard(),
        shards: ctx.shards(),
        param: ctx.param().map(str::to_string),
        attempt: ctx.attempt(),
        run_id: ctx.run_id().to_string(),
        worker: ctx.worker().to_string(),
        template: ctx
            .payload::<Option<Payload>>()
            .ok()
            .flatten()
            .map(|p| p.template),
    }
}

/// A handler that logs what it saw and succeeds.
fn logging(
    log: &Log,
) -> impl Fn(ShardContext) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
{
    let log = log.clone();
    move |ctx: ShardContext| {
        let log = log.clone();
        Box::pin(async move {
            let s = seen(&ctx);
            ctx.print(format!("template {}", s.template.as_deref().unwrap_or("-")));
            log.lock().unwrap().push(s);
            Ok(Output::text(format!(
                "sent for {}",
                ctx.param().unwrap_or("all")
            )))
        })
    }
}

fn build(
    config: WorkerConfig,
    f: impl FnOnce(jetcron_worker::WorkerBuilder) -> jetcron_worker::WorkerBuilder,
) -> Worker {
    let id = config.id.clone();
    let worker = f(jetcron_worker::Worker::builder(config))
        .build()
        .expect("worker settings");
    Worker::start_built(&id, worker)
}

#[tokio::test]
async fn handler_shards_run_with_their_context_and_report_their_output() {
    let env = Stack::start().await;
    let log: Log = Log::default();
    let worker = build(env.worker_config("w1"), |b| {
        b.handler("send-reminders", logging(&log))
    });
    env.put(json!({
        "id": "remind", "schedule": "@manual", "shards": ["eu", "us"],
        "payload": {"template": "t1"},
        "run": {"handler": "send-reminders"}
    }))
    .await;
    let fire = env.trigger("remind", Some(json!({"template": "t2"}))).await;
    let mut results = env.results_of("remind", 2).await;
    results.sort_by_key(|r| r.shard);
    let mut seen = log.lock().unwrap().clone();
    seen.sort_by_key(|s| s.shard);
    for (i, (r, s)) in results.iter().zip(&seen).enumerate() {
        let param = ["eu", "us"][i];
        assert_eq!(
            (r.status, r.attempt, r.worker.as_str(), r.exit_code),
            (RunStatus::Succeeded, 1, "w1", None),
            "{r:?}"
        );
        assert_eq!(r.output, format!("template t2\nsent for {param}"));
        assert_eq!(
            s,
            &Seen {
                job: "remind".into(),
                instant: fire.instant,
                shard: i as u32,
                shards: 2,
                param: Some(param.into()),
                attempt: 1,
                run_id: r.run_id.clone(),
                worker: "w1".into(),
                template: Some("t2".into()),
            }
        );
    }
    worker.stop(LIMIT).await;
}

/// A handler that counts its runs by worker.
fn tally(
    hits: &Arc<Mutex<Vec<(String, String)>>>,
    name: &str,
) -> impl Fn(ShardContext) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
{
    let hits = hits.clone();
    let name = name.to_string();
    move |ctx: ShardContext| {
        let hits = hits.clone();
        let name = name.clone();
        Box::pin(async move {
            hits.lock().unwrap().push((name, ctx.worker().to_string()));
            Ok(Output::empty())
        })
    }
}

#[tokio::test]
async fn shards_reach_only_workers_that_know_their_handler() {
    let env = Stack::start().await;
    // A group consumer as a version without handlers made it: its filter
    // takes every subject of the group, handler shards included. The
    // worker narrows it at start.
    let work = env.work_stream().await;
    work.create_consumer(consumer::pull::Config {
        durable_name: Some(env.names.work_consumer("default")),
        filter_subject: env.names.work_group("default"),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    })
    .await
    .unwrap();

    let hits = Arc::new(Mutex::new(Vec::new()));
    let a = build(env.worker_config("a"), |b| {
        b.handler("alpha", tally(&hits, "alpha"))
    });
    let b = build(env.worker_config("b"), |b| {
        b.handler("beta", tally(&hits, "beta"))
    });
    let plain = Worker::start(&env.server.url(), "plain");
    for (id, run) in [
        ("alpha-job", json!({"handler": "alpha"})),
        ("beta-job", json!({"handler": "beta"})),
        ("gamma-job", json!({"handler": "gamma"})),
        ("shell-job", json!({"shell": "true"})),
    ] {
        env.put(json!({"id": id, "schedule": "@manual", "shards": 6, "run": run}))
            .await;
        env.trigger(id, None).await;
    }
    for job in ["alpha-job", "beta-job", "shell-job"] {
        let results = env.results_of(job, 6).await;
        let want = match job {
            "alpha-job" => "a",
            "beta-job" => "b",
            _ => "plain",
        };
        for r in &results {
            assert_eq!(
                (r.status, r.worker.as_str()),
                (RunStatus::Succeeded, want),
                "{r:?}"
            );
        }
    }
    let filter = work
        .consumer_info(env.names.work_consumer("default"))
        .await
        .unwrap()
        .config
        .filter_subject;
    assert_eq!(filter, env.names.work_plain("default"));

    // Nobody knows `gamma`: its shards wait in the work stream, untaken.
    sleep(Duration::from_millis(1_500)).await;
    assert!(env.results_now("gamma-job").is_empty());
    let waiting: Vec<(String, usize)> = work
        .info_with_subjects(env.names.work_job_handlers("gamma-job"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        waiting,
        [(
            env.names
                .work_handler_subject("default", "gamma-job", "gamma"),
            6
        )]
    );
    // `status` counts them as waiting in their group, though no consumer
    // holds them.
    let status = env.api.status().await.unwrap();
    let group = status.groups.iter().find(|g| g.group == "default").unwrap();
    assert_eq!((group.pending, group.in_flight), (6, 0), "{group:?}");
    assert!(group.oldest_pending_age_ms.is_some(), "{group:?}");
    let workers = env.api.workers().await.unwrap();
    let mut listed: Vec<(String, Vec<String>)> = workers
        .workers
        .iter()
        .map(|w| (w.id.clone(), w.handlers.clone()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("a".to_string(), vec!["alpha".to_string()]),
            ("b".to_string(), vec!["beta".to_string()]),
            ("plain".to_string(), vec![]),
        ]
    );

    // A worker that knows it comes along and runs them.
    let c = build(env.worker_config("c"), |b| {
        b.handler("gamma", tally(&hits, "gamma"))
    });
    for r in env.results_of("gamma-job", 6).await {
        assert_eq!((r.status, r.worker.as_str()), (RunStatus::Succeeded, "c"));
    }
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 18, "{hits:?}");
    assert!(
        hits.iter().all(|(h, w)| (h == "alpha" && w == "a")
            || (h == "beta" && w == "b")
            || (h == "gamma" && w == "c")),
        "{hits:?}"
    );
    for w in [a, b, c, plain] {
        w.stop(LIMIT).await;
    }
}

#[tokio::test]
async fn errors_retry_panics_fail_and_a_last_failure_is_a_dead_letter() {
    let env = Stack::start().await;
    let worker = build(env.worker_config("w1"), |b| {
        b.handler("flaky", |ctx: ShardContext| async move {
            if ctx.attempt() == 1 {
                return Err("the database is down".into());
            }
            Ok(Output::text(format!("done at attempt {}", ctx.attempt())))
        })
        .handler("boom", |ctx: ShardContext| async move {
            ctx.print("about to fail");
            let v: Vec<u32> = Vec::new();
            // Out of bounds: a panic, not an error.
            Ok(Output::text(v[ctx.shard() as usize + 1].to_string()))
        })
    });
    let retry = json!({"max_attempts": 2, "backoff": ["100ms"]});
    env.put(
        json!({"id": "flaky", "schedule": "@manual", "retry": retry, "run": {"handler": "flaky"}}),
    )
    .await;
    env.put(
        json!({"id": "boom", "schedule": "@manual", "retry": retry, "run": {"handler": "boom"}}),
    )
    .await;
    env.trigger("flaky", None).await;
    env.trigger("boom", None).await;

    let flaky = env.results_of("flaky", 2).await;
    assert_eq!(
        (flaky[0].attempt, flaky[0].status, flaky[0].will_retry),
        (1, RunStatus::Failed, true)
    );
    assert_eq!(flaky[0].error.as_deref(), Some("the database is down"));
    assert_eq!(
        (flaky[1].attempt, flaky[1].status, flaky[1].output.as_str()),
        (2, RunStatus::Succeeded, "done at attempt 2")
    );

    let boom = env.results_of("boom", 2).await;
    for (i, r) in boom.iter().enumerate() {
        assert_eq!(
            (r.attempt, r.status, r.will_retry),
            (i as u32 + 1, RunStatus::Failed, i == 0)
        );
        assert_eq!(r.output, "about to fail\n");
        let error = r.error.clone().unwrap();
        assert!(
            error.starts_with("the handler panicked: index out of bounds"),
            "{error}"
        );
    }
    let dead = env.dead("boom", 1).await;
    assert!(
        matches!(&dead[0], EventBody::Dead { attempts: 2, status: RunStatus::Failed, worker, .. } if worker == "w1"),
        "{dead:?}"
    );
    // The panics did not take the worker down.
    env.trigger("flaky", None).await;
    let again = env.results_of("flaky", 4).await;
    assert_eq!(again[3].status, RunStatus::Succeeded, "{again:?}");
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_timeout_cancels_the_handler_and_one_that_ignores_it_is_abandoned() {
    let env = Stack::start().await;
    let worker = build(env.worker_config("w1"), |b| {
        b.handler("polite", |ctx: ShardContext| async move {
            ctx.print("waiting");
            ctx.cancelled().await;
            ctx.print("told to stop");
            Err("stopped".into())
        })
        .handler("stubborn", |ctx: ShardContext| async move {
            ctx.print("ignoring my token");
            sleep(Duration::from_secs(3600)).await;
            Ok(Output::empty())
        })
    });
    for id in ["polite", "stubborn"] {
        env.put(
            json!({"id": id, "schedule": "@manual", "timeout": "300ms", "run": {"handler": id}}),
        )
        .await;
        env.trigger(id, None).await;
    }
    let polite = env.results_of("polite", 1).await.remove(0);
    assert_eq!(polite.status, RunStatus::TimedOut);
    assert_eq!(polite.error.as_deref(), Some("timed out after 300ms"));
    assert_eq!(polite.output, "waiting\ntold to stop\n");
    let stubborn = env.results_of("stubborn", 1).await.remove(0);
    assert_eq!(stubborn.status, RunStatus::TimedOut);
    assert_eq!(
        stubborn.error.as_deref(),
        Some(
            "timed out after 300ms; the handler did not return within the kill grace (500ms) \
             and was abandoned"
        )
    );
    assert_eq!(stubborn.output, "ignoring my token\n");
    let took = stubborn.finished_at - stubborn.started_at;
    assert!(took >= chrono::Duration::milliseconds(800), "{took}");
    // One attempt each: both are dead letters.
    env.dead("polite", 1).await;
    env.dead("stubborn", 1).await;
    worker.stop(LIMIT).await;
}

/// A handler that says when it started, then runs until cancelled (and
/// says that too).
fn blocking(
    started: &Arc<Notify>,
    cancelled: &Arc<Notify>,
) -> impl Fn(ShardContext) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
{
    let (started, cancelled) = (started.clone(), cancelled.clone());
    move |ctx: ShardContext| {
        let (started, cancelled) = (started.clone(), cancelled.clone());
        Box::pin(async move {
            started.notify_one();
            ctx.cancelled().await;
            cancelled.notify_one();
            Err("cancelled".into())
        })
    }
}

#[tokio::test]
async fn a_killed_worker_s_shard_runs_again_on_another_worker() {
    let env = Stack::start().await;
    let config = |id: &str| WorkerConfig {
        ack_wait: Duration::from_secs(2),
        ..env.worker_config(id)
    };
    let (started, cancelled) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let doomed = build(config("doomed"), |b| {
        b.handler("report", blocking(&started, &cancelled))
    });
    env.put(json!({"id": "report", "schedule": "@manual", "run": {"handler": "report"}}))
        .await;
    env.trigger("report", None).await;
    tokio::time::timeout(LIMIT, started.notified())
        .await
        .expect("the handler did not start");
    doomed.kill();

    let heir = build(config("heir"), |b| {
        b.handler("report", |ctx: ShardContext| async move {
            Ok(Output::text(format!("attempt {}", ctx.attempt())))
        })
    });
    let results = env.results_of("report", 1).await;
    assert_eq!(
        (
            results[0].status,
            results[0].attempt,
            results[0].worker.as_str(),
            results[0].output.as_str()
        ),
        (RunStatus::Succeeded, 2, "heir", "attempt 2")
    );
    sleep(Duration::from_millis(500)).await;
    assert_eq!(env.results_now("report").len(), 1);
    heir.stop(LIMIT).await;
}

#[tokio::test]
async fn shutdown_cancels_a_running_handler_and_hands_its_shard_back() {
    let env = Stack::start().await;
    let (started, cancelled) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leaving = build(
        WorkerConfig {
            shutdown_grace: Duration::from_millis(300),
            ..env.worker_config("leaving")
        },
        |b| b.handler("sync", blocking(&started, &cancelled)),
    );
    env.put(json!({"id": "sync", "schedule": "@manual", "run": {"handler": "sync"}}))
        .await;
    env.trigger("sync", None).await;
    tokio::time::timeout(LIMIT, started.notified())
        .await
        .expect("the handler did not start");
    let stopped_at = Instant::now();
    leaving.stop(LIMIT).await;
    // Told through its token, once the grace was over.
    tokio::time::timeout(Duration::from_secs(1), cancelled.notified())
        .await
        .expect("the handler was not told to stop");
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    assert!(
        env.results_now("sync").is_empty(),
        "a handed-back shard has no result"
    );

    let next = build(env.worker_config("next"), |b| {
        b.handler("sync", |ctx: ShardContext| async move {
            Ok(Output::text(format!("attempt {}", ctx.attempt())))
        })
    });
    let results = env.results_of("sync", 1).await;
    assert_eq!(
        (results[0].status, results[0].worker.as_str()),
        (RunStatus::Succeeded, "next")
    );
    next.stop(LIMIT).await;
}

#[tokio::test]
async fn a_replaced_fire_cancels_its_running_handler() {
    let env = Stack::start().await;
    let first: Arc<Mutex<Option<DateTime<Utc>>>> = Arc::default();
    let started = Arc::new(Notify::new());
    let worker = build(env.worker_config("w1"), |b| {
        let (first, started) = (first.clone(), started.clone());
        b.handler("export", move |ctx: ShardContext| {
            let (first, started) = (first.clone(), started.clone());
            async move {
                let is_first = *first.lock().unwrap().get_or_insert(ctx.instant()) == ctx.instant();
                if is_first {
                    started.notify_one();
                    ctx.cancelled().await;
                    ctx.print("replaced");
                }
                Ok(Output::text("exported"))
            }
        })
    });
    // Replacing concerns scheduled fires (triggered ones are not followed).
    env.put(json!({
        "id": "export", "schedule": "@every 1s", "overlap": "replace",
        "run": {"handler": "export"}
    }))
    .await;
    tokio::time::timeout(LIMIT, started.notified())
        .await
        .expect("the handler did not start");
    let first = first.lock().unwrap().expect("first instant");
    let results = env
        .results
        .wait_for("the replaced fire and a later one", LIMIT, |rs| {
            rs.iter().any(|r| r.instant == first)
                && rs
                    .iter()
                    .any(|r| r.instant > first && r.status == RunStatus::Succeeded)
        })
        .await;
    let replaced = results.iter().find(|r| r.instant == first).unwrap();
    assert_eq!(replaced.status, RunStatus::Cancelled, "{results:?}");
    assert_eq!(replaced.output, "replaced\nexported");
    let error = replaced.error.clone().unwrap_or_default();
    assert!(error.contains("replaced"), "{error}");
    let next = results.iter().find(|r| r.instant > first).unwrap();
    assert_eq!(
        (next.status, next.output.as_str()),
        (RunStatus::Succeeded, "exported")
    );
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_deleted_handler_job_s_waiting_shards_never_run() {
    let env = Stack::start().await;
    let work = env.work_stream().await;
    // Nobody serves `export` yet: the shards wait in the work stream.
    env.put(
        json!({"id": "gone", "schedule": "@manual", "shards": 3, "run": {"handler": "export"}}),
    )
    .await;
    env.trigger("gone", None).await;
    let waiting = || async {
        work.info_with_subjects(env.names.work_job_handlers("gone"))
            .await
            .unwrap()
            .try_collect::<Vec<(String, usize)>>()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + LIMIT;
    while waiting().await.is_empty() {
        assert!(Instant::now() < deadline, "the shards were never stored");
        sleep(Duration::from_millis(50)).await;
    }
    env.api.delete("gone").await.unwrap();
    assert_eq!(waiting().await, Vec::<(String, usize)>::new());
    // A worker with the handler comes and finds nothing of it.
    let ran: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let worker = build(env.worker_config("late"), |b| {
        b.handler("export", tally(&ran, "export"))
    });
    sleep(Duration::from_secs(2)).await;
    assert!(ran.lock().unwrap().is_empty(), "{:?}", ran.lock().unwrap());
    assert!(env.results_now("gone").is_empty());
    worker.stop(LIMIT).await;
}
