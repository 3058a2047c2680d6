#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Firing through server faults: a server killed and restarted on its
//! store, and a cluster node lost. Firing must resume as soon as NATS
//! itself is back (within 2 s of the server accepting connections again),
//! and no instant may be dispatched twice or lost without an event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{Event, EventBody};
use jetcron_tests::harness::{self, Scheduler, WorkTap};
use jetcron_tests::{NatsCluster, NatsServer};

fn names() -> Names {
    Names::default()
}

fn job(id: &str, shards: u32) -> bytes::Bytes {
    format!(
        r#"{{"id":"{id}","schedule":"* * * * * *","shards":{shards},"run":{{"shell":"true"}}}}"#
    )
    .into()
}

/// Every instant of `job` between the first and the last fired, each either
/// dispatched (all shards, once) or named by a `misfired` event, never both.
async fn check_instants(
    client: &async_nats::Client,
    stored: &[harness::Stored],
    job: &str,
    shards: u32,
) {
    let mut per_instant: BTreeMap<DateTime<Utc>, Vec<u32>> = BTreeMap::new();
    // One stored message may reach the tap twice (its ack lost with a
    // killed server); one shard stored twice is a double dispatch.
    let mut ids: HashMap<String, u64> = HashMap::new();
    for s in stored.iter().filter(|s| s.msg.job == job) {
        match ids.insert(s.msg_id.clone(), s.seq) {
            Some(seq) if seq == s.seq => {
                eprintln!("{} (sequence {seq}) reached the tap twice", s.msg_id);
                continue;
            }
            Some(seq) => panic!(
                "{} dispatched twice: work stream sequences {seq} and {}",
                s.msg_id, s.seq
            ),
            None => {}
        }
        per_instant
            .entry(s.msg.instant)
            .or_default()
            .push(s.msg.shard);
    }
    let fired: BTreeSet<_> = per_instant.keys().copied().collect();
    for (instant, got) in &per_instant {
        let mut got = got.clone();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..shards).collect::<Vec<_>>(),
            "shards of {job} at {instant}"
        );
    }
    let mut missed = BTreeSet::new();
    for m in harness::stream_messages(client, &names().events_stream()).await {
        if let Ok(EventBody::Misfired {
            job: j,
            first_missed,
            last_missed,
            fired,
            ..
        }) = Event::decode(&m.payload).map(|e| e.body)
            && j == job
        {
            let mut t = first_missed;
            while t <= last_missed {
                if Some(t) != fired {
                    missed.insert(t);
                }
                t += chrono::Duration::seconds(1);
            }
        }
    }
    let both: Vec<_> = fired.intersection(&missed).collect();
    assert!(both.is_empty(), "{job}: fired and named missed: {both:?}");
    let (Some(first), Some(last)) = (fired.first(), fired.last()) else {
        panic!("{job} never fired");
    };
    let mut t = *first;
    while t <= *last {
        assert!(
            fired.contains(&t) || missed.contains(&t),
            "{job}: instant {t} neither fired nor named missed"
        );
        t += chrono::Duration::seconds(1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_resumes_within_2s_of_a_killed_server_accepting_connections_again() {
    harness::init_tracing();
    let mut server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let b = Scheduler::start(&server.url(), "b");
    let api = harness::api(&client, &names()).await;
    for i in 0..5 {
        api.put_raw(job(&format!("tick{i}"), 2)).await.unwrap();
    }
    // One tap for the whole test: its client reconnects after each restart.
    let tap = WorkTap::start(&client, &names()).await;
    for round in 0..3u32 {
        let seen = tap.snapshot().len();
        tap.wait_for("fires", Duration::from_secs(15), |s| s.len() >= seen + 20)
            .await;
        server.kill().await;
        tokio::time::sleep(Duration::from_millis(1000 + 1000 * u64::from(round))).await;
        server.restart().await;
        let ready = Utc::now();
        let after = tap
            .wait_for("fires after the restart", Duration::from_secs(30), |s| {
                s.iter().any(|m| m.msg.dispatched_at >= ready)
            })
            .await;
        let first = after
            .iter()
            .filter(|m| m.msg.dispatched_at >= ready)
            .map(|m| m.msg.dispatched_at)
            .min()
            .unwrap();
        let resumed = (first - ready).to_std().unwrap();
        eprintln!("round {round}: firing resumed {resumed:?} after the server was ready");
        assert!(
            resumed <= Duration::from_secs(2),
            "firing resumed {resumed:?} after the server accepted connections again"
        );
    }
    // Shards delivered to the tap just before a kill come back after its ack wait.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stored = tap.snapshot();
    let client = server.client().await;
    for i in 0..5 {
        check_instants(&client, &stored, &format!("tick{i}"), 2).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_cluster_node_stalls_firing_no_longer_than_the_failover() {
    harness::init_tracing();
    let mut cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let start = |id: &str| {
        let mut cfg = harness::scheduler_config(&cluster.urls(), id);
        cfg.setup.replicas = 3;
        Scheduler::start_with(cfg)
    };
    let a = start("a");
    let b = start("b");
    let api = harness::api(&client, &names()).await;
    for i in 0..5 {
        api.put_raw(job(&format!("tick{i}"), 2)).await.unwrap();
    }
    let tap = WorkTap::start(&client, &names()).await;
    tap.wait_for("fires", Duration::from_secs(20), |s| s.len() >= 30)
        .await;
    // Kill the node that leads the state bucket's stream: the first write
    // of every fire goes there.
    let js = async_nats::jetstream::new(client.clone());
    let n = names();
    // Every stream a fire or a takeover writes to; each fails over on its
    // own once its leader is lost.
    let streams = [
        format!("KV_{}", n.state_bucket()),
        format!("KV_{}", n.lease_bucket()),
        n.work_stream(),
        n.events_stream(),
    ];
    let mut leaders = Vec::new();
    for s in &streams {
        leaders.push(
            stream_leader(&js, s)
                .await
                .expect("the stream has a leader"),
        );
    }
    let victim_name = leaders[0].clone();
    let victim = cluster.index_of(&victim_name).expect("leader is a node");
    let killed = Utc::now();
    cluster.nodes[victim].kill().await;
    // NATS's own failover: until each stream the victim led has a leader
    // again; the others never lost theirs.
    let mut back: Vec<Option<DateTime<Utc>>> = leaders
        .iter()
        .map(|l| (*l != victim_name).then_some(killed))
        .collect();
    while back.iter().any(Option::is_none) {
        for (i, s) in streams.iter().enumerate() {
            if back[i].is_none()
                && stream_leader(&js, s)
                    .await
                    .is_some_and(|l| l != victim_name)
            {
                back[i] = Some(Utc::now());
            }
        }
        assert!(
            Utc::now() - killed < chrono::Duration::seconds(30),
            "no failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = back.iter().flatten().max().copied().unwrap_or(killed);
    let led: Vec<&str> = streams
        .iter()
        .zip(&leaders)
        .filter(|(_, l)| **l == victim_name)
        .map(|(s, _)| s.as_str())
        .collect();
    let leader = format!("{victim_name} (leading {})", led.join(", "));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stored = tap.snapshot();
    let mut times: Vec<DateTime<Utc>> = stored
        .iter()
        .map(|s| s.msg.dispatched_at)
        .filter(|t| *t >= killed - chrono::Duration::seconds(2))
        .collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap()
        .to_std()
        .unwrap();
    let nats = (failover - killed).to_std().unwrap();
    eprintln!("node {leader} killed: NATS failover took {nats:?}; longest pause in firing {gap:?}");
    // Fires come every second; beyond that, firing may stop only while
    // NATS itself has no leader for a stream firing writes to.
    assert!(
        gap <= nats + Duration::from_millis(1500),
        "firing stopped for {gap:?}; NATS failed over in {nats:?}"
    );
    cluster.nodes[victim].restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = tap.snapshot();
    for i in 0..5 {
        check_instants(&client, &stored, &format!("tick{i}"), 2).await;
    }
    a.stop().await;
    b.stop().await;
}

/// The cluster node leading `stream`, None while it has none or the
/// question goes unanswered for a second (a client reconnecting).
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(1), async {
        js.get_stream(stream)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .cluster
            .clone()?
            .leader
    })
    .await
    .ok()
    .flatten()
}

/// A message at or below its consumer's ack floor is finished; a server
/// crash can leave such messages in a work-queue stream, where no consumer
/// delivers them again. A stream that keeps acked messages (limits
/// retention) holds exactly that picture, on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_messages_at_or_below_the_ack_floor_and_nothing_else() {
    use async_nats::jetstream::{consumer::pull, stream};
    use futures::StreamExt;
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let work = js
        .create_stream(stream::Config {
            name: "STRANDED".into(),
            subjects: vec!["w.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = work
        .create_consumer(pull::Config {
            durable_name: Some("g".into()),
            filter_subject: "w.g.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..5 {
        js.publish(format!("w.g.job{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Another group's message, never delivered: not below any floor of its own.
    js.publish("w.other.job", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(3).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let removed = jetcron_scheduler::sweep::sweep(&work).await.unwrap();
    assert_eq!(removed, 3);
    let left: Vec<String> = harness::stream_messages(&client, "STRANDED")
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(left, ["w.g.job3", "w.g.job4", "w.other.job"]);
    // Nothing more to do on a second pass.
    assert_eq!(jetcron_scheduler::sweep::sweep(&work).await.unwrap(), 0);
}
