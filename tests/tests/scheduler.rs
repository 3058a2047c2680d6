#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The scheduler against a real nats-server, observed through the work
//! stream itself (a test consumer drains it; no workers run here).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::api::{ClientError, ErrorCode};
use jetcron_shared::wire::{Cause, EventBody};
use jetcron_tests::harness::{self, Scheduler, WorkTap};
use jetcron_tests::{NatsCluster, NatsServer};

fn names() -> Names {
    Names::default()
}

fn job(id: &str, schedule: &str, shards: u32) -> bytes::Bytes {
    format!(r#"{{"id":"{id}","schedule":"{schedule}","shards":{shards},"run":{{"shell":"true"}}}}"#)
        .into()
}

fn instants(stored: &[harness::Stored], job: &str) -> BTreeSet<DateTime<Utc>> {
    stored
        .iter()
        .filter(|s| s.msg.job == job)
        .map(|s| s.msg.instant)
        .collect()
}

fn assert_unique_ids(stored: &[harness::Stored]) {
    let mut seen = HashSet::new();
    for s in stored {
        assert!(seen.insert(s.msg_id.clone()), "{} stored twice", s.msg_id);
        assert_eq!(
            s.msg_id,
            format!(
                "{}:{}:{}",
                s.msg.job,
                s.msg.instant.timestamp_millis(),
                s.msg.shard
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_at_once_and_only_one_dispatches() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    // Both set up the same resources at the same moment.
    let a = Scheduler::start(&server.url(), "a");
    let b = Scheduler::start(&server.url(), "b");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 2)).await.unwrap();
    let stored = tap
        .wait_for("4 fires of 2 shards", Duration::from_secs(20), |s| {
            s.len() >= 8
        })
        .await;
    assert_unique_ids(&stored);
    let epochs: HashSet<u64> = stored.iter().map(|s| s.epoch).collect();
    assert_eq!(
        epochs.len(),
        1,
        "dispatched under several epochs: {epochs:?}"
    );
    let leaders: Vec<_> = events
        .snapshot()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Leader { holder, epoch } => Some((holder, epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert!(epochs.contains(&leaders[0].1));
    // Consecutive seconds, each with shards 0 and 1.
    let inst: Vec<_> = instants(&stored, "tick").into_iter().collect();
    for w in inst.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{inst:?}");
    }
    for i in &inst[..inst.len() - 1] {
        let shards: BTreeSet<u32> = stored
            .iter()
            .filter(|s| s.msg.instant == *i)
            .map(|s| s.msg.shard)
            .collect();
        assert_eq!(shards, BTreeSet::from([0, 1]));
    }
    a.stop().await;
    b.stop().await;
}

/// Kills the leader whose fires are being observed and returns
/// (kill time, old epoch).
async fn kill_leader(a: Scheduler, b: Scheduler, tap: &WorkTap) -> (DateTime<Utc>, u64, Scheduler) {
    let stored = tap
        .wait_for("fires", Duration::from_secs(20), |s| s.len() >= 3)
        .await;
    let epoch = stored.last().unwrap().epoch;
    // The leader is the one whose lease revision is the epoch; ask the bucket.
    let leader_is_a = {
        let server_client = async_nats::connect(harness_url(&a)).await.unwrap();
        let js = async_nats::jetstream::new(server_client);
        let kv = js.get_key_value(names().lease_bucket()).await.unwrap();
        let entry = kv.entry("leader").await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
        v["holder"] == "a"
    };
    let (leader, standby) = if leader_is_a { (a, b) } else { (b, a) };
    let at = Utc::now();
    leader.kill();
    (at, epoch, standby)
}

fn harness_url(_s: &Scheduler) -> String {
    URL.with(|u| u.borrow().clone())
}

thread_local! {
    static URL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_within_5s_and_nothing_is_dispatched_twice() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    URL.with(|u| *u.borrow_mut() = server.url());
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let b = Scheduler::start(&server.url(), "b");
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 1)).await.unwrap();

    let (killed_at, old_epoch, standby) = kill_leader(a, b, &tap).await;
    let before: BTreeSet<_> = instants(&tap.snapshot(), "tick");
    let stored = tap
        .wait_for("fires by the new leader", Duration::from_secs(15), |s| {
            s.iter().filter(|m| m.epoch != old_epoch).count() >= 3
        })
        .await;
    assert_unique_ids(&stored);

    let takeover = events
        .snapshot()
        .into_iter()
        .find_map(|e| match e.body {
            EventBody::Leader { epoch, .. } if epoch != old_epoch => Some(e.at),
            _ => None,
        })
        .expect("a leader event from the new leader");
    let took = (takeover - killed_at).to_std().unwrap();
    let new: Vec<_> = stored.iter().filter(|m| m.epoch != old_epoch).collect();
    let first_new = new.first().unwrap();
    let first_fire_after = (first_new.msg.dispatched_at - killed_at).to_std().unwrap();
    eprintln!(
        "takeover: leader event {took:?} after the kill; first fire by the new leader {first_fire_after:?} after the kill"
    );
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");

    // The instants missed during takeover are fired once, as one late fire
    // with a misfired event; then fires are on time again.
    assert_eq!(first_new.msg.cause, Cause::Misfire, "{:?}", first_new.msg);
    let misfired: Vec<_> = events
        .snapshot()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Misfired { fired, missed, .. } => Some((fired, missed)),
            _ => None,
        })
        .collect();
    assert_eq!(misfired.len(), 1, "{misfired:?}");
    assert_eq!(misfired[0].0, Some(first_new.msg.instant));
    assert!(misfired[0].1 >= 1);
    let last_old = *before.last().unwrap();
    assert!(first_new.msg.instant > last_old);
    let after: Vec<_> = new.iter().map(|m| m.msg.instant).collect();
    for w in after.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{after:?}");
    }
    assert!(new[1..].iter().all(|m| m.msg.cause == Cause::Schedule));
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_leader_hands_over_at_once() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    events
        .wait_for("a leads", Duration::from_secs(20), |e| {
            e.iter()
                .any(|e| matches!(&e.body, EventBody::Leader { holder, .. } if holder == "a"))
        })
        .await;
    let b = Scheduler::start(&server.url(), "b");
    harness::api(&client, &names()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Utc::now();
    a.stop().await;
    let evs = events
        .wait_for("b leads", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| matches!(&e.body, EventBody::Leader { holder, .. } if holder == "b"))
        })
        .await;
    let at = evs
        .iter()
        .find(|e| matches!(&e.body, EventBody::Leader { holder, .. } if holder == "b"))
        .unwrap()
        .at;
    let took = (at - stopped).to_std().unwrap_or_default();
    eprintln!("graceful handover took {took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lease_stops_the_old_leader_before_its_deadline() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 1)).await.unwrap();
    let stored = tap
        .wait_for("fires", Duration::from_secs(20), |s| s.len() >= 2)
        .await;
    let epoch = stored[0].epoch;
    // An intruder replaces the lease (as a partitioned replica's successor would).
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names().lease_bucket()).await.unwrap();
    kv.purge("leader").await.unwrap();
    let stolen_at = Utc::now();
    kv.create("leader", r#"{"holder":"intruder"}"#.into())
        .await
        .unwrap();
    // The intruder never renews: a owns nothing until the key expires (3 s),
    // then takes it again with a new epoch.
    let stored = tap
        .wait_for("fires under a new epoch", Duration::from_secs(15), |s| {
            s.iter().any(|m| m.epoch != epoch)
        })
        .await;
    let ttl = chrono::Duration::seconds(3);
    for m in stored.iter().filter(|m| m.epoch == epoch) {
        assert!(
            m.msg.dispatched_at < stolen_at + ttl,
            "old epoch dispatched at {} after the lease was stolen at {stolen_at}",
            m.msg.dispatched_at
        );
    }
    assert_unique_ids(&stored);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_or_reported_and_other_jobs_keep_firing() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;

    // By API: refused with the field named, nothing stored.
    let cases: [(&str, &str); 5] = [
        (
            r#"{"id":"x","schedule":"61 * * * * *","run":{"shell":"true"}}"#,
            "schedule: '61 * * * * *': second must be 0-59",
        ),
        (
            r#"{"id":"x","schedule":"@hourly","timezone":"Mars/Base","run":{"shell":"true"}}"#,
            "timezone:",
        ),
        (
            r#"{"id":"x","schedule":"@hourly","shards":0,"run":{"shell":"true"}}"#,
            "shards:",
        ),
        (r#"{"id":"x","schedule":"@hourly""#, "invalid JSON"),
        ("", "definition is empty"),
    ];
    for (body, expect) in cases {
        match api.put_raw(body.to_string().into()).await {
            Err(ClientError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidJob);
                assert!(
                    e.message.contains(expect),
                    "{:?} does not contain {expect:?}",
                    e.message
                );
            }
            other => panic!("{body}: expected an error, got {other:?}"),
        }
    }
    // The micro error headers are set too.
    let reply = client
        .request(names().api_subject("job.put"), r#"{"id":"x"}"#.into())
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(
        headers
            .get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .contains("schedule")
    );
    assert!(api.list().await.unwrap().jobs.is_empty());
    // Each refusal is also reported as an event naming the job it claimed.
    let refused = events
        .wait_for("refusal events", Duration::from_secs(10), |e| {
            e.iter().filter(|e| e.kind() == "invalid").count() >= 6
        })
        .await;
    let first = refused.iter().find(|e| e.kind() == "invalid").unwrap();
    match &first.body {
        EventBody::Invalid { job, error, .. } => {
            assert_eq!(job, "x");
            assert!(error.starts_with("schedule: '61 * * * * *'"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let before = refused.iter().filter(|e| e.kind() == "invalid").count();

    // Straight into KV: reported, and the good job keeps firing.
    api.put_raw(job("good", "* * * * * *", 1)).await.unwrap();
    harness::kv_put(&client, &names(), "broken", b"{not json").await;
    harness::kv_put(
        &client,
        &names(),
        "wrongtz",
        br#"{"id":"wrongtz","schedule":"@hourly","timezone":"Nowhere","run":{"shell":"true"}}"#,
    )
    .await;
    let written = Utc::now();
    let evs = events
        .wait_for("two more invalid events", Duration::from_secs(10), |e| {
            e.iter().filter(|e| e.kind() == "invalid").count() >= before + 2
        })
        .await;
    let invalid: Vec<(String, String)> = evs
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Invalid { job, error, .. } => Some((job.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert!(
        invalid
            .iter()
            .any(|(j, e)| j == "broken" && e.starts_with("invalid JSON")),
        "{invalid:?}"
    );
    assert!(
        invalid
            .iter()
            .any(|(j, e)| j == "wrongtz" && e.starts_with("timezone:")),
        "{invalid:?}"
    );
    tap.wait_for("good keeps firing", Duration::from_secs(15), |s| {
        s.iter()
            .filter(|m| m.msg.job == "good" && m.msg.instant > written)
            .count()
            >= 3
    })
    .await;
    // get and list show what is wrong.
    let got = api.get("broken").await.unwrap();
    assert!(got.job.is_none());
    assert!(got.invalid.unwrap().starts_with("invalid JSON"));
    assert_eq!(got.raw.as_deref(), Some("{not json"));
    let list = api.list().await.unwrap();
    let ids: Vec<_> = list
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.invalid.is_some()))
        .collect();
    assert_eq!(
        ids,
        vec![("broken", true), ("good", false), ("wrongtz", true)]
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_round_trip_and_failure_paths() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;

    let put = api.put_raw(job("nightly", "0 0 2 * * *", 3)).await.unwrap();
    assert!(put.created);
    assert_eq!(put.job.group, "default");
    let again = api.put_raw(job("nightly", "0 0 3 * * *", 3)).await.unwrap();
    assert!(!again.created);
    assert!(again.revision > put.revision);
    let got = api.get("nightly").await.unwrap();
    assert_eq!(got.job.unwrap().schedule, "0 0 3 * * *");
    assert_eq!(got.revision, again.revision);
    let list = api.list().await.unwrap();
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].shards, Some(3));

    let code = |r: Result<_, ClientError>| match r {
        Err(ClientError::Api(e)) => (e.code, e.message),
        other => panic!("expected an API error, got {other:?}"),
    };
    let (c, m) = code(api.get("nope").await.map(|_| ()));
    assert_eq!(
        (c, m.as_str()),
        (ErrorCode::NotFound, "job 'nope' does not exist")
    );
    let (c, _) = code(api.delete("nope").await.map(|_| ()));
    assert_eq!(c, ErrorCode::NotFound);
    let (c, m) = code(api.get("a.b").await.map(|_| ()));
    assert_eq!(c, ErrorCode::BadRequest);
    assert!(m.starts_with("id:"), "{m}");
    for body in ["", "{", r#"{"name":"x"}"#, "[]"] {
        let (c, m) = code(
            api.call::<serde_json::Value>("job.get", body.to_string().into())
                .await
                .map(|_| ()),
        );
        assert_eq!(c, ErrorCode::BadRequest, "{body}");
        assert!(m.contains(r#"{"id": "<job id>"}"#), "{m}");
    }
    api.delete("nightly").await.unwrap();
    let (c, _) = code(api.get("nightly").await.map(|_| ()));
    assert_eq!(c, ErrorCode::NotFound);
    assert!(api.list().await.unwrap().jobs.is_empty());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_update_applies_from_the_next_fire_and_delete_stops_it() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("sync", "*/3 * * * * *", 1)).await.unwrap();
    tap.wait_for("two fires every 3 s", Duration::from_secs(15), |s| {
        s.len() >= 2
    })
    .await;
    for i in instants(&tap.snapshot(), "sync") {
        assert_eq!(i.timestamp() % 3, 0, "{i}");
    }
    let changed = Utc::now();
    api.put_raw(job("sync", "* * * * * *", 2)).await.unwrap();
    let stored = tap
        .wait_for("fires on the new schedule", Duration::from_secs(15), |s| {
            s.iter().filter(|m| m.msg.instant > changed).count() >= 8
        })
        .await;
    let after: Vec<_> = instants(&stored, "sync")
        .into_iter()
        .filter(|i| *i > changed)
        .collect();
    for w in after.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{after:?}");
    }
    assert!(
        stored
            .iter()
            .filter(|m| m.msg.instant > changed)
            .all(|m| m.msg.shards == 2)
    );
    assert!(
        stored
            .iter()
            .filter(|m| m.msg.instant < changed)
            .all(|m| m.msg.shards == 1)
    );
    assert_unique_ids(&stored);

    api.delete("sync").await.unwrap();
    let deleted = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = tap
        .snapshot()
        .into_iter()
        .filter(|m| m.msg.dispatched_at > deleted + chrono::Duration::milliseconds(300))
        .map(|m| m.msg_id)
        .collect();
    assert!(late.is_empty(), "fired after delete: {late:?}");
    // Its fire state is forgotten.
    let js = async_nats::jetstream::new(client.clone());
    let state = js.get_key_value(names().state_bucket()).await.unwrap();
    assert!(state.get("sync").await.unwrap().is_none());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_carries_on_after_the_server_restarts() {
    harness::init_tracing();
    let mut server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 1)).await.unwrap();
    {
        let tap = WorkTap::start(&client, &names()).await;
        tap.wait_for("fires", Duration::from_secs(15), |s| s.len() >= 2)
            .await;
    }
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;
    let restarted = Utc::now();
    let client = server.client().await;
    let tap = WorkTap::start(&client, &names()).await;
    let stored = tap
        .wait_for("fires after the restart", Duration::from_secs(30), |s| {
            s.iter().filter(|m| m.msg.dispatched_at > restarted).count() >= 3
        })
        .await;
    assert_unique_ids(&stored);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_a_three_node_cluster_with_replicated_resources() {
    harness::init_tracing();
    let cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let mut cfg = harness::scheduler_config(&cluster.urls(), "a");
    cfg.setup.replicas = 3;
    let a = Scheduler::start_with(cfg);
    let api = harness::api(&client, &names()).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut work = js.get_stream(names().work_stream()).await.unwrap();
    assert_eq!(work.info().await.unwrap().config.num_replicas, 3);
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("tick", "* * * * * *", 3)).await.unwrap();
    let stored = tap
        .wait_for("fires", Duration::from_secs(20), |s| s.len() >= 6)
        .await;
    assert_unique_ids(&stored);
    a.stop().await;
}

/// A leader that published a fire but died before recording it: the next
/// leader dispatches the same instant again, and the stream drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_dispatched_again_after_a_lost_state_write_is_stored_once() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    let at = (Utc::now() + chrono::Duration::seconds(2)).format("%Y-%m-%dT%H:%M:%SZ");
    let put = api
        .put_raw(
            format!(r#"{{"id":"once","schedule":"@at {at}","shards":2,"run":{{"shell":"true"}}}}"#)
                .into(),
        )
        .await
        .unwrap();
    let stored = tap
        .wait_for("the fire", Duration::from_secs(15), |s| s.len() >= 2)
        .await;
    let instant = stored[0].msg.instant;
    a.stop().await;

    // Rewind the fire state to before the fire, as if the write was lost.
    let js = async_nats::jetstream::new(client.clone());
    let state = js.get_key_value(names().state_bucket()).await.unwrap();
    let rewound =
        serde_json::json!({"job_revision": put.revision, "next_instant": instant, "epoch": 0});
    state.put("once", rewound.to_string().into()).await.unwrap();

    let b = Scheduler::start(&server.url(), "b");
    let fired = events
        .wait_for("the second dispatch", Duration::from_secs(15), |e| {
            e.iter().filter(|e| e.kind() == "fired").count() >= 2
        })
        .await;
    assert!(
        fired
            .iter()
            .filter(|e| e.kind() == "fired")
            .all(|e| { matches!(&e.body, EventBody::Fired { instant: i, .. } if *i == instant) })
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = tap.snapshot();
    assert_eq!(stored.len(), 2, "each shard stored once");
    assert_unique_ids(&stored);
    b.stop().await;
}

/// A paused job keeps its state and reports each instant it lets pass; when
/// it runs again it does not replay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_reports_one_skip_and_resumes_without_replay() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    let body = |paused: bool| -> bytes::Bytes {
        format!(
            r#"{{"id":"tick","schedule":"* * * * * *","paused":{paused},"run":{{"shell":"true"}}}}"#
        )
        .into()
    };
    api.put_raw(body(false)).await.unwrap();
    tap.wait_for("fires", Duration::from_secs(15), |s| s.len() >= 2)
        .await;
    api.put_raw(body(true)).await.unwrap();
    let paused_at = Utc::now();
    events
        .wait_for("a skipped event", Duration::from_secs(15), |e| {
            e.iter().any(|e| e.kind() == "skipped")
        })
        .await;
    // Then nothing per instant: three more instants pass without an event.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let evs = events.snapshot();
    let skipped: Vec<_> = evs.iter().filter(|e| e.kind() == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    match &skipped[0].body {
        EventBody::Skipped {
            job, reason, count, ..
        } => {
            assert_eq!(
                (job.as_str(), reason.as_str(), *count),
                ("tick", "paused", 1)
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing was dispatched while paused (one fire may have been in flight).
    let slack = chrono::Duration::milliseconds(500);
    assert!(
        tap.snapshot()
            .iter()
            .all(|m| m.msg.dispatched_at < paused_at + slack),
        "dispatched while paused"
    );
    // The state records the one skip, and no next instant: the job sleeps
    // until its definition changes.
    let js = async_nats::jetstream::new(client.clone());
    let state = js.get_key_value(names().state_bucket()).await.unwrap();
    let st: serde_json::Value =
        serde_json::from_slice(&state.get("tick").await.unwrap().unwrap()).unwrap();
    assert_eq!(st["paused_skipped"].as_u64(), Some(1), "{st}");
    assert!(st["next_instant"].is_null(), "{st}");
    let fires_before = tap.snapshot().len();

    api.put_raw(body(false)).await.unwrap();
    let resumed_at = Utc::now();
    let stored = tap
        .wait_for("fires after resume", Duration::from_secs(15), |s| {
            s.len() >= fires_before + 2
        })
        .await;
    for m in &stored[fires_before..] {
        assert!(
            m.msg.instant > resumed_at,
            "replayed {} from before the resume",
            m.msg.instant
        );
        assert_eq!(m.msg.cause, Cause::Schedule);
    }
    assert_unique_ids(&stored);
    a.stop().await;
}

/// Bounds the server's file store cannot reserve are refused by the server;
/// the error names the resource, the bytes and the flag that bounds them, and
/// the resources set up before it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_the_server_cannot_reserve_are_refused_naming_the_flag() {
    use jetcron_shared::setup::{self, SetupOptions};
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    // The test server's file store holds 1 TB at most.
    let too_much = 2 * (1_i64 << 40);

    let opts = SetupOptions {
        results_max_bytes: too_much,
        ..SetupOptions::default()
    };
    let err = setup::ensure(&js, &names(), &opts).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("jetcron_runs"), "{text}");
    assert!(text.contains(&format!("{too_much} more bytes")), "{text}");
    assert!(text.contains("lower --results-max-bytes"), "{text}");
    assert!(text.contains("max_file_store"), "{text}");
    js.get_key_value(names().jobs_bucket()).await.unwrap();

    let opts = SetupOptions {
        events_max_bytes: too_much,
        ..SetupOptions::default()
    };
    let err = setup::ensure(&js, &names(), &opts).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("JETCRON_EVENTS"), "{text}");
    assert!(text.contains("lower --events-max-bytes"), "{text}");

    // With the defaults everything is created, next to what was.
    setup::ensure(&js, &names(), &SetupOptions::default())
        .await
        .unwrap();
}
