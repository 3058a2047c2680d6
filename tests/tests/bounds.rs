#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Schedule bounds (`start_at`, `end_at`) and `@every ... offset ...`, fired
//! by a real scheduler against a real nats-server.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use jetcron_tests::harness::OneScheduler;
use serde_json::json;

/// A job fires only between its start and end (both inclusive), at its
/// period plus its offset, and nothing after its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_job_fires_only_between_start_and_end_at_its_offset() {
    let OneScheduler {
        server: _server,
        api,
        tap,
        a,
        ..
    } = OneScheduler::start().await;
    let now = Utc::now().timestamp();
    // Odd seconds only; the window holds exactly three of them.
    let odd = |t: i64| if t % 2 == 1 { t } else { t + 1 };
    let start = odd(now + 3);
    let end = start + 5;
    let at = |t: i64| {
        DateTime::from_timestamp(t, 0)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let def = json!({
        "id": "window",
        "schedule": "@every 2s offset 1s",
        "start_at": at(start),
        "end_at": at(end),
        "run": {"shell": "true"},
    });
    api.put_raw(def.to_string().into()).await.unwrap();
    let next = api.next("window", Some(5)).await.unwrap();
    let listed: Vec<i64> = next.instants.iter().map(|i| i.utc.timestamp()).collect();
    assert_eq!(
        listed,
        vec![start, start + 2, start + 4],
        "job.next stops at the end"
    );

    tap.wait_for("the last fire", Duration::from_secs(20), |s| {
        s.iter().any(|m| m.msg.instant.timestamp() == start + 4)
    })
    .await;
    // Two more periods: nothing after the end.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut fired: Vec<i64> = tap
        .snapshot()
        .iter()
        .filter(|m| m.msg.job == "window")
        .map(|m| m.msg.instant.timestamp())
        .collect();
    fired.sort_unstable();
    assert_eq!(fired, vec![start, start + 2, start + 4]);
    a.stop().await;
}
