#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Many jobs due at the same instant: every one is dispatched, once, at its
//! instant (the crowd is stored as several batches side by side).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use jetcron_shared::Names;
use jetcron_tests::harness::{self, OneScheduler};

fn names() -> Names {
    Names::default()
}

/// Writes `count` one-off jobs due at `at` straight into the jobs bucket.
async fn put_crowd(client: &async_nats::Client, count: usize, at: DateTime<Utc>) {
    let at = at.to_rfc3339();
    let definitions = (0..count).map(|n| {
        let id = format!("crowd-{n:05}");
        let body = format!(r#"{{"id":"{id}","schedule":"@at {at}","run":{{"shell":"true"}}}}"#);
        (id, body.into_bytes())
    });
    harness::kv_put_many(client, &names(), definitions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_jobs_due_at_once_are_each_dispatched_once() {
    // Bound whole: the server lives as long as the fixture.
    let OneScheduler {
        server: _server,
        client,
        a,
        tap,
        ..
    } = OneScheduler::start().await;
    let count = 20_000;
    // Far enough ahead for every definition to be loaded first.
    let at = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(8);
    put_crowd(&client, count, at).await;
    tap.wait_for("every shard of the crowd", Duration::from_secs(60), |s| {
        s.len() >= count
    })
    .await;
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = tap.snapshot();
    assert_eq!(stored.len(), count, "shards stored for {count} fires");
    let ids: HashSet<&str> = stored.iter().map(|s| s.msg_id.as_str()).collect();
    assert_eq!(ids.len(), count, "distinct shards");
    for s in &stored {
        assert_eq!(s.msg.instant, at, "{} fired at another instant", s.msg_id);
    }
    a.stop().await;
}
