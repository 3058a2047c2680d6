#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Taking over: a standby that kept the fire states current reads none of
//! them when it takes over, and a stopping leader gives the lease back
//! before it tears anything down.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv::Operation};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::Names;
use jetcron_shared::wire::EventBody;
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, OneScheduler, Scheduler, Stored, WorkTap};
use tokio::time::Instant;

fn names() -> Names {
    Names::default()
}

/// Writes `count` definitions with `schedule` straight into the jobs bucket.
async fn put_jobs(client: &async_nats::Client, count: usize, schedule: &str) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("job-{n:05}")).collect();
    let definitions = ids.iter().map(|id| {
        let body = format!(r#"{{"id":"{id}","schedule":"{schedule}","run":{{"shell":"true"}}}}"#);
        (id.clone(), body.into_bytes())
    });
    harness::kv_put_many(client, &names(), definitions).await;
    ids
}

/// Counts the reads of single job states from the state bucket's stream:
/// direct gets and message gets, as any KV `get` sends them. Reads of the
/// bucket's own keys (`=fence`, `=checkpoint`) are not per job.
async fn count_state_reads(client: &async_nats::Client) -> Arc<AtomicU64> {
    let stream = format!("KV_{}", names().state_bucket());
    let own_keys = format!("$KV.{}.=", names().state_bucket());
    let count = Arc::new(AtomicU64::new(0));
    for subject in [
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ] {
        let mut sub = client.subscribe(subject).await.unwrap();
        let count = count.clone();
        let own_keys = own_keys.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let body = String::from_utf8_lossy(&m.payload);
                if m.subject.contains(own_keys.as_str()) || body.contains(own_keys.as_str()) {
                    continue;
                }
                eprintln!("state read: {} {body}", m.subject);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    client.flush().await.unwrap();
    count
}

fn epochs(stored: &[Stored]) -> BTreeSet<u64> {
    stored.iter().map(|s| s.epoch).collect()
}

fn assert_unique_ids(stored: &[Stored]) {
    let mut seen = HashSet::new();
    for s in stored {
        assert!(seen.insert(s.msg_id.clone()), "{} stored twice", s.msg_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_takes_over_without_reading_any_fire_state() {
    let OneScheduler {
        server,
        client,
        a,
        api,
        tap,
    } = OneScheduler::start().await;
    let ids = put_jobs(&client, 300, "* * * * * *").await;
    // Every job has fired under a, so every job has a stored fire state.
    let stored = tap
        .wait_for("every job fired once", Duration::from_secs(30), |s| {
            let fired: HashSet<&str> = s.iter().map(|m| m.msg.job.as_str()).collect();
            ids.iter().all(|id| fired.contains(id.as_str()))
        })
        .await;
    let first = epochs(&stored);
    assert_eq!(first.len(), 1, "one leader so far: {first:?}");
    let b = Scheduler::start(&server.url(), "b");
    // b mirrors the states while it stands by, and says when it has them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = api.status().await.unwrap();
        let b_warm = status
            .replicas
            .iter()
            .any(|r| r.id == "b" && r.warm && !r.leader);
        if b_warm {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never said it was warm: {:?}",
            status.replicas
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads = count_state_reads(&client).await;
    a.kill();
    let stored = tap
        .wait_for(
            "every job fired under the new leader",
            Duration::from_secs(30),
            |s| {
                let fired: HashSet<&str> = s
                    .iter()
                    .filter(|m| !first.contains(&m.epoch))
                    .map(|m| m.msg.job.as_str())
                    .collect();
                ids.iter().all(|id| fired.contains(id.as_str()))
            },
        )
        .await;
    assert_unique_ids(&stored);
    assert_eq!(
        reads.load(Ordering::SeqCst),
        0,
        "the standby read fire states one by one while taking over"
    );
    // The count sees reads when there are some.
    let js = jetstream::new(client.clone());
    let state = js.get_key_value(names().state_bucket()).await.unwrap();
    // (Its state may well live in a tick record: the read is what counts.)
    state.entry(ids[0].as_str()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "a state read went unseen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_releases_the_lease_before_it_finishes_stopping() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    put_jobs(&client, 5_000, "@yearly").await;
    harness::kv_put(
        &client,
        &names(),
        "tick",
        br#"{"id":"tick","schedule":"* * * * * *","run":{"shell":"true"}}"#,
    )
    .await;
    let b = Scheduler::start(&server.url(), "b");
    tap.wait_for("tick fires", Duration::from_secs(30), |s| s.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let js = jetstream::new(client.clone());
    let lease = js.get_key_value(names().lease_bucket()).await.unwrap();
    let mut watch = lease.watch(names().lease_key()).await.unwrap();
    let stopping = Utc::now();
    a.stop().await;
    let stopped = Utc::now();
    // When the server stored the release.
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(e)) = watch.next().await {
            if e.operation != Operation::Put {
                let nanos = e.created.unix_timestamp_nanos();
                return DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap());
            }
        }
        panic!("the lease watch ended");
    })
    .await
    .expect("the lease was released");
    assert!(
        released <= stopped,
        "the lease was released at {released}, after the leader had stopped at {stopped}"
    );
    eprintln!(
        "lease released {:?} after the stop began; stopping took {:?}",
        released - stopping,
        stopped - stopping
    );

    events
        .wait_for("b leads", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| matches!(&e.body, EventBody::Leader { holder, .. } if holder == "b"))
        })
        .await;
    let first = epochs(&tap.snapshot());
    let stored = tap
        .wait_for("tick fires under b", Duration::from_secs(10), |s| {
            s.iter().filter(|m| !first.contains(&m.epoch)).count() >= 2
        })
        .await;
    assert_unique_ids(&stored);
    // No instant of tick between a's last fire and b's first went silent:
    // each was fired, or a misfired event names it.
    let fired: BTreeSet<DateTime<Utc>> = stored
        .iter()
        .filter(|s| s.msg.job == "tick")
        .map(|s| s.msg.instant)
        .collect();
    let mut covered = fired.clone();
    for e in events.snapshot() {
        if let EventBody::Misfired {
            job,
            first_missed,
            last_missed,
            ..
        } = &e.body
            && job == "tick"
        {
            let mut t = *first_missed;
            while t <= *last_missed {
                covered.insert(t);
                t += chrono::Duration::seconds(1);
            }
        }
    }
    let (lo, hi) = (*fired.first().unwrap(), *fired.last().unwrap());
    let mut t = lo;
    while t <= hi {
        assert!(covered.contains(&t), "instant {t} of tick went silent");
        t += chrono::Duration::seconds(1);
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_states_move_from_tick_records_to_their_keys_and_old_records_go() {
    let OneScheduler {
        server,
        client,
        a,
        tap,
        ..
    } = OneScheduler::start().await;
    let once_at = (Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    harness::kv_put(
        &client,
        &names(),
        "once",
        format!(r#"{{"id":"once","schedule":"@at {once_at}","run":{{"shell":"true"}}}}"#)
            .as_bytes(),
    )
    .await;
    harness::kv_put(
        &client,
        &names(),
        "fast",
        br#"{"id":"fast","schedule":"* * * * * *","run":{"shell":"true"}}"#,
    )
    .await;
    let js = jetstream::new(client.clone());
    let state = js.get_key_value(names().state_bucket()).await.unwrap();
    // The one-off fire's state leaves its tick record for its own key once
    // the record is a few seconds old; the job firing every second stays in
    // tick records.
    let deadline = Instant::now() + Duration::from_secs(30);
    let compacted = loop {
        if let Some(v) = state.get("once").await.unwrap() {
            break serde_json::from_slice::<serde_json::Value>(&v).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the one-off fire's state never got its own key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(compacted["fires"], 1, "{compacted}");
    assert!(compacted["next_instant"].is_null(), "{compacted}");
    assert!(state.get("fast").await.unwrap().is_none());
    // Old tick records are purged: after 15 s of fires at most the last few
    // seconds' records are left.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let stream = js
        .get_stream(format!("KV_{}", names().state_bucket()))
        .await
        .unwrap();
    let mut ticks = 0usize;
    let mut subjects = stream
        .info_with_subjects(names().tick_filter())
        .await
        .unwrap();
    while let Some(s) = subjects.next().await {
        ticks += s.unwrap().1;
    }
    let fast_fires = tap
        .snapshot()
        .iter()
        .filter(|m| m.msg.job == "fast")
        .count();
    assert!(fast_fires >= 15, "fast fired {fast_fires} times");
    assert!(
        ticks < 12,
        "{ticks} tick records left after {fast_fires} fires"
    );

    // A replica started cold reads the states from wherever they are and
    // carries on: nothing fired twice, the one-off not again.
    a.kill();
    let before = tap.snapshot();
    let last_a = before
        .iter()
        .filter(|m| m.msg.job == "fast")
        .map(|m| m.msg.instant)
        .max()
        .unwrap();
    let b = Scheduler::start(&server.url(), "b");
    let stored = tap
        .wait_for("fast fires under b", Duration::from_secs(20), |s| {
            s.len() >= before.len() + 2
        })
        .await;
    assert_unique_ids(&stored);
    for m in &stored[before.len()..] {
        assert_eq!(m.msg.job, "fast", "{} fired again", m.msg_id);
        assert!(m.msg.instant > last_a, "{} fired again", m.msg_id);
    }
    b.stop().await;
}
