#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Webhooks (`--webhook`): two schedulers post to one receiver on
//! loopback, written here, which records every request and fails the first
//! one. Each event is posted once (twice for the one that failed: the
//! retry), with its kind and id in the headers, whichever scheduler took it;
//! kinds not asked for are not posted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetcron_scheduler::SchedulerConfig;
use jetcron_scheduler::webhooks::{DEFAULT_KINDS, Sink};
use jetcron_shared::Names;
use jetcron_shared::api::TriggerRequest;
use jetcron_shared::wire::EventBody;
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler, Worker};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

const LIMIT: Duration = Duration::from_secs(45);

/// One request as received: its status answered, kind, id and body.
#[derive(Debug, Clone)]
struct Posted {
    status: u16,
    kind: String,
    id: u64,
    body: Value,
}

/// Receives posts; answers 500 to the first, 200 to the others.
async fn receiver() -> (String, Arc<Mutex<Vec<Posted>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (head, buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                };
                let status = {
                    let mut log = log.lock().unwrap();
                    let status = if log.is_empty() { 500 } else { 200 };
                    log.push(Posted {
                        status,
                        kind: header("jetcron-event-kind"),
                        id: header("jetcron-event-id").parse().unwrap_or(0),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    status
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_posted_once_across_schedulers_and_a_failed_post_is_retried() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let (url, seen) = receiver().await;
    let sink = Sink {
        url: url.clone(),
        kinds: DEFAULT_KINDS.map(str::to_string).to_vec(),
        jobs: Vec::new(),
    };
    let scheduler = |id: &str| {
        Scheduler::start_with(SchedulerConfig {
            webhooks: vec![sink.clone()],
            ..harness::scheduler_config(&server.url(), id)
        })
    };
    let s1 = scheduler("s1");
    let s2 = scheduler("s2");
    let client = server.client().await;
    let names = Names::default();
    let api = harness::api(&client, &names).await;
    // Both have opened the sink's consumer: events from now on are posted.
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + LIMIT;
    loop {
        let events = js.get_stream(names.events_stream()).await;
        if let Ok(s) = events
            && s.consumer_info(sink.consumer_name()).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no webhook consumer");
        sleep(Duration::from_millis(100)).await;
    }

    // `dead`: a shard failing its only attempt.
    let worker = Worker::start(&server.url(), "w1");
    api.put_raw(
        json!({"id": "doomed", "schedule": "@manual", "run": {"shell": "exit 3"}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    api.trigger(&TriggerRequest {
        id: "doomed".into(),
        shards: None,
        payload: None,
    })
    .await
    .unwrap();
    // `invalid`: a definition stored straight into the bucket.
    harness::kv_put(
        &client,
        &names,
        "broken",
        br#"{"id":"broken","schedule":"nope"}"#,
    )
    .await;
    // `leader`: the leader stops, the other takes over.
    let deadline = Instant::now() + LIMIT;
    let leader = loop {
        if let Ok(status) = api.status().await
            && let Some(l) = status.leader
        {
            break l.holder;
        }
        assert!(Instant::now() < deadline, "no leader");
        sleep(Duration::from_millis(100)).await;
    };
    let (stopping, heir, staying) = if leader == "s1" {
        (s1, "s2", s2)
    } else {
        (s2, "s1", s1)
    };
    stopping.stop().await;

    let posted = |kind: &str, rs: &[Posted]| rs.iter().filter(|p| p.kind == kind).count();
    let deadline = Instant::now() + LIMIT;
    loop {
        let rs = seen.lock().unwrap().clone();
        if posted("dead", &rs) >= 1 && posted("invalid", &rs) >= 1 && posted("leader", &rs) >= 1 {
            break;
        }
        if Instant::now() >= deadline {
            let events = js.get_stream(names.events_stream()).await.unwrap();
            let info = events.consumer_info(sink.consumer_name()).await.unwrap();
            let leaders: Vec<_> = harness::stream_messages(&client, &names.events_stream())
                .await
                .into_iter()
                .filter(|m| m.subject.as_str() == names.event_subject("leader", None))
                .collect();
            panic!(
                "events not posted: {rs:#?}\nconsumer: pending {} ack pending {} redelivered {} delivered {:?} ack floor {:?}\nleader events: {:?}",
                info.num_pending,
                info.num_ack_pending,
                info.num_redelivered,
                info.delivered,
                info.ack_floor,
                leaders
                    .iter()
                    .map(|m| (m.sequence, String::from_utf8_lossy(&m.payload).to_string()))
                    .collect::<Vec<_>>()
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
    // Room for duplicates to show up, if there were any.
    sleep(Duration::from_secs(2)).await;
    let rs = seen.lock().unwrap().clone();
    // The first post failed and came again with the same id.
    assert_eq!(rs[0].status, 500, "{rs:#?}");
    let mut by_id: BTreeMap<u64, Vec<&Posted>> = BTreeMap::new();
    for p in &rs {
        assert!(p.id > 0, "{p:?}");
        by_id.entry(p.id).or_default().push(p);
    }
    for (id, posts) in &by_id {
        let statuses: Vec<u16> = posts.iter().map(|p| p.status).collect();
        let want = if *id == rs[0].id {
            vec![500, 200]
        } else {
            vec![200]
        };
        assert_eq!(statuses, want, "event {id}: {posts:#?}");
        assert_eq!(posts[0].body, posts[posts.len() - 1].body);
    }
    for p in &rs {
        assert!(
            DEFAULT_KINDS.contains(&p.kind.as_str()),
            "{} is not asked for: {p:?}",
            p.kind
        );
        assert_eq!(p.body["kind"], p.kind, "{p:?}");
    }
    let dead = rs.iter().find(|p| p.kind == "dead").unwrap();
    let body: EventBody = serde_json::from_value(dead.body.clone()).unwrap();
    assert!(
        matches!(body, EventBody::Dead { ref job, .. } if job == "doomed"),
        "{body:?}"
    );
    let leader = rs.iter().rfind(|p| p.kind == "leader").unwrap();
    assert_eq!(leader.body["holder"], heir, "{leader:?}");

    worker.stop(LIMIT).await;
    staying.stop().await;
}
