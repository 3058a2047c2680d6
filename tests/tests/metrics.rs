#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The metrics endpoints (`--metrics-addr`) of the worker and of the
//! scheduler, scraped over HTTP while they run real shards and fires, and
//! their text parsed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jetcron_scheduler::SchedulerConfig;
use jetcron_shared::Names;
use jetcron_shared::wire::RunStatus;
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler, Worker};
use jetcron_tests::stack::{LIMIT, Stack};
use jetcron_worker::WorkerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

/// A loopback address nobody listens on right now.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP GET: status code, content type, body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

/// The samples of an OpenMetrics text: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_scrape_shows_runs_by_status_durations_dead_letters_and_slots() {
    let env = Stack::start().await;
    let addr = free_addr();
    let worker = Worker::start_with(WorkerConfig {
        metrics_addr: Some(addr),
        ..harness::worker_config(&env.server.url(), "w1")
    });
    env.put(json!({"id": "fine", "schedule": "@manual", "shards": 3, "run": {"shell": "true"}}))
        .await;
    env.put(
        json!({"id": "broken", "schedule": "@manual", "run": {"shell": "exit 3"},
        "retry": {"max_attempts": 2, "backoff": ["100ms"]}}),
    )
    .await;
    env.trigger("fine", None).await;
    env.trigger("broken", None).await;
    let fine = env.results_of("fine", 3).await;
    assert!(fine.iter().all(|r| r.status == RunStatus::Succeeded));
    env.results_of("broken", 2).await;
    env.dead("broken", 1).await;

    let labels = r#"group="default",worker="w1""#;
    let series = |name: &str| format!("jetcron_worker_{name}{{{labels}}}");
    let runs = |status: &str| format!("jetcron_worker_runs_total{{{labels},status=\"{status}\"}}");
    // The record of the last attempt is written after its result: wait
    // until the scrape has caught up with every ending.
    let deadline = Instant::now() + LIMIT;
    let s = loop {
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let s = samples(&body);
        if s.get(&series("dead_letters_total")) == Some(&1.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "{body}");
        sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s[&runs("succeeded")], 3.0, "{s:#?}");
    assert_eq!(s[&runs("failed")], 2.0, "{s:#?}");
    assert_eq!(s[&series("deliveries_total")], 5.0, "{s:#?}");
    assert_eq!(s[&series("redeliveries_total")], 1.0, "{s:#?}");
    assert_eq!(s[&series("run_duration_seconds_count")], 5.0, "{s:#?}");
    assert!(s[&series("run_duration_seconds_sum")] > 0.0, "{s:#?}");
    let inf = s
        .iter()
        .find(|(k, _)| {
            k.starts_with("jetcron_worker_run_duration_seconds_bucket{")
                && k.contains(r#"le="+Inf""#)
        })
        .map(|(_, v)| *v);
    assert_eq!(inf, Some(5.0), "{s:#?}");
    assert_eq!(s[&series("expired_total")], 0.0, "{s:#?}");
    assert_eq!(s[&series("handed_back_total")], 0.0, "{s:#?}");
    assert_eq!(s[&series("running")], 0.0, "{s:#?}");
    assert_eq!(s[&series("slots")], 4.0, "{s:#?}");

    let (status, _, body) = get(addr, "/").await;
    assert_eq!(
        (status, body.as_str()),
        (404, "only GET /metrics is served here\n")
    );

    // The address is taken: a second worker on it does not start.
    let taken = jetcron_worker::Worker::builder(WorkerConfig {
        metrics_addr: Some(addr),
        ..harness::worker_config(&env.server.url(), "w2")
    })
    .build()
    .unwrap()
    .run(tokio_util::sync::CancellationToken::new())
    .await;
    let error = taken.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("metrics_addr: cannot listen on {addr}: ")),
        "{error}"
    );
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_scrape_of_the_leader_and_a_standby_shows_fires_lateness_lease_and_backlog() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let (leader_addr, standby_addr) = (free_addr(), free_addr());
    let scheduler = |id: &str, addr| {
        Scheduler::start_with(SchedulerConfig {
            metrics_addr: Some(addr),
            ..harness::scheduler_config(&server.url(), id)
        })
    };
    let s1 = scheduler("s1", leader_addr);
    let client = server.client().await;
    let api = harness::api(&client, &Names::default()).await;
    // s1 leads before its standby starts.
    let deadline = Instant::now() + LIMIT;
    while !matches!(api.status().await, Ok(s) if s.leader.as_ref().is_some_and(|l| l.holder == "s1"))
    {
        assert!(Instant::now() < deadline, "s1 does not lead");
        sleep(Duration::from_millis(100)).await;
    }
    let s2 = scheduler("s2", standby_addr);
    api.put_raw(
        json!({"id": "tick", "schedule": "@every 1s", "run": {"shell": "true"}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();

    // No worker: the shards wait in the work stream, and the backlog says so.
    let one = |name: &str, extra: &str, replica: &str| {
        format!("jetcron_scheduler_{name}{{replica=\"{replica}\"{extra}}}")
    };
    let deadline = Instant::now() + LIMIT;
    let s = loop {
        let (status, _, body) = get(leader_addr, "/metrics").await;
        assert_eq!(status, 200);
        let s = samples(&body);
        let fired = s
            .get(&one("fires_total", r#",cause="schedule""#, "s1"))
            .copied()
            .unwrap_or(0.0);
        let pending = s
            .get(&one("group_pending", r#",group="default""#, "s1"))
            .copied()
            .unwrap_or(0.0);
        if fired >= 3.0 && pending >= 2.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "{body}");
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s[&one("leader", "", "s1")], 1.0, "{s:#?}");
    assert!(s[&one("epoch", "", "s1")] >= 1.0, "{s:#?}");
    assert!(
        s[&one("lease_renewals_total", r#",result="ok""#, "s1")] >= 1.0,
        "{s:#?}"
    );
    assert!(
        s[&one("fire_lateness_seconds_count", "", "s1")] >= 3.0,
        "{s:#?}"
    );
    assert_eq!(s[&one("jobs", r#",state="active""#, "s1")], 1.0, "{s:#?}");
    assert_eq!(
        s[&one("group_in_flight", r#",group="default""#, "s1")],
        0.0,
        "{s:#?}"
    );
    assert!(
        s[&one("group_oldest_age_seconds", r#",group="default""#, "s1")] > 0.0,
        "{s:#?}"
    );

    let (_, _, body) = get(standby_addr, "/metrics").await;
    let standby = samples(&body);
    assert_eq!(standby[&one("leader", "", "s2")], 0.0, "{body}");
    assert_eq!(standby[&one("epoch", "", "s2")], 0.0, "{body}");
    assert_eq!(
        standby[&one("fires_total", r#",cause="schedule""#, "s2")],
        0.0,
        "a standby fires nothing: {body}"
    );
    // A trigger's fire is counted by whichever replica answered it.
    api.trigger(&jetcron_shared::api::TriggerRequest {
        id: "tick".into(),
        shards: None,
        payload: None,
    })
    .await
    .unwrap();
    let manual = r#",cause="manual""#;
    let mut counted = 0.0;
    for (addr, id) in [(leader_addr, "s1"), (standby_addr, "s2")] {
        let (_, _, body) = get(addr, "/metrics").await;
        counted += samples(&body)
            .get(&one("fires_total", manual, id))
            .copied()
            .unwrap_or(0.0);
    }
    assert_eq!(counted, 1.0);
    s2.stop().await;
    s1.stop().await;
}
