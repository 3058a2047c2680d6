#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Fencing that the server enforces: a deposed leader stores nothing, even
//! what its client delivers long after it was deposed; and a lease create
//! whose answer was lost never holds the lease for a replica that does not
//! lead. Each test stalls one client's link with a [`Proxy`], so its writes
//! wait in the socket buffers and all arrive when the link heals.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use jetcron_scheduler::fence::{FenceError, Fences, Target};
use jetcron_scheduler::lease::Leadership;
use jetcron_scheduler::metrics::SchedulerMetrics;
use jetcron_scheduler::persist::{Persist, Write};
use jetcron_shared::Names;
use jetcron_shared::setup::{self, Resources, SetupOptions};
use jetcron_shared::wire::{Event, EventBody, Fence};
use jetcron_tests::harness::{self, Scheduler, WorkTap};
use jetcron_tests::{NatsServer, Proxy};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

fn names() -> Names {
    Names::default()
}

async fn resources(client: &async_nats::Client) -> Resources {
    let js = jetstream::new(client.clone());
    setup::ensure(&js, &names(), &SetupOptions::default())
        .await
        .unwrap()
}

/// A leadership that stays valid for the whole test: only the server can
/// stop this leader.
fn leading(epoch: u64) -> (watch::Sender<Leadership>, watch::Receiver<Leadership>) {
    watch::channel(Leadership::Leader {
        epoch,
        deadline: Instant::now() + Duration::from_secs(3600),
    })
}

/// One write of each fenced kind, for job `job`.
fn writes_for(job: &str) -> Vec<Write> {
    let n = names();
    let mut shard_headers = HeaderMap::new();
    shard_headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{job}:0:0").as_str(),
    );
    vec![
        Write {
            target: Target::Work,
            subject: n.work_subject("default", job),
            headers: shard_headers,
            body: Bytes::from_static(b"shard"),
        },
        Write {
            target: Target::State,
            subject: Names::kv_subject(&n.state_bucket(), job),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        },
        Write {
            target: Target::Events,
            subject: n.event_subject("fired", Some(job)),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        },
    ]
}

/// Whether anything of `job` is stored in the work stream, the state or
/// runs bucket (which the leader no longer writes to), or the events stream.
async fn stored_anything_of(
    client: &async_nats::Client,
    res: &Resources,
    job: &str,
) -> Vec<String> {
    let n = names();
    let mut found = Vec::new();
    for stream in [n.work_stream(), n.events_stream()] {
        for m in harness::stream_messages(client, &stream).await {
            if m.subject.ends_with(&format!(".{job}")) {
                found.push(format!("{stream}: {}", m.subject));
            }
        }
    }
    let entry = |kv: &kv::Store, key: String| {
        let kv = kv.clone();
        async move { kv.entry(key).await.unwrap() }
    };
    if entry(&res.state, job.to_string()).await.is_some() {
        found.push(format!("state: {job}"));
    }
    if entry(&res.runs, format!("{job}.s0")).await.is_some() {
        found.push(format!("runs: {job}.s0"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_buffered_writes_are_refused_by_the_server() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port())).await;
    let direct = server.client().await;
    let res = resources(&direct).await;

    // The old leader talks through the proxy.
    let old_client = async_nats::connect(proxy.url()).await.unwrap();
    let old_js = jetstream::new(old_client.clone());
    let old_res = resources(&old_client).await;
    let (_old_lease, old_lead) = leading(5);
    let old = Fences::take(old_js.clone(), &names(), &old_res, "old", 5, old_lead)
        .await
        .unwrap();
    let old = Arc::new(old);
    let persist = Persist::new(
        old_js.clone(),
        names(),
        old_res.state.stream.clone(),
        SchedulerMetrics::new("old"),
    );

    // While it leads, each kind of write is stored.
    persist.store_all(&old, writes_for("before")).await.unwrap();
    assert_eq!(stored_anything_of(&direct, &res, "before").await.len(), 3);

    // Its link stalls with writes in flight.
    proxy.pause();
    let writer = {
        let (persist, old) = (persist.clone(), old.clone());
        tokio::spawn(async move { persist.store_all(&old, writes_for("after")).await })
    };
    sleep(Duration::from_millis(1500)).await;

    // Meanwhile a new leader fences every stream.
    let (_new_lease, new_lead) = leading(9);
    let new = Fences::take(
        jetstream::new(direct.clone()),
        &names(),
        &res,
        "new",
        9,
        new_lead,
    )
    .await
    .unwrap();

    // The link heals: everything the old leader's client held arrives.
    proxy.resume();
    let outcome = timeout(Duration::from_secs(15), writer)
        .await
        .expect("the old leader's writer gave up")
        .unwrap();
    assert!(
        matches!(outcome, Err(FenceError::Superseded { newer: 9, .. })),
        "{outcome:?}"
    );
    old_client.flush().await.unwrap();
    sleep(Duration::from_millis(300)).await;
    let leaked = stored_anything_of(&direct, &res, "after").await;
    assert!(
        leaked.is_empty(),
        "a deposed leader's writes were stored: {leaked:?}"
    );

    // The new leader writes as usual.
    let new_persist = Persist::new(
        jetstream::new(direct.clone()),
        names(),
        res.state.stream.clone(),
        SchedulerMetrics::new("new"),
    );
    new_persist
        .store_all(&new, writes_for("new"))
        .await
        .unwrap();
    assert_eq!(stored_anything_of(&direct, &res, "new").await.len(), 3);

    // A fence never covers a newer one: the old leader cannot fence again.
    let (_again, again_lead) = leading(5);
    let again = Fences::take(old_js, &names(), &old_res, "old", 5, again_lead).await;
    assert!(
        matches!(again, Err(FenceError::Superseded { newer: 9, .. })),
        "{again:?}"
    );
    let fence = res
        .work
        .get_last_raw_message_by_subject(&names().work_fence_subject())
        .await
        .unwrap();
    assert_eq!(Fence::decode(&fence.payload).unwrap().epoch, 9);
}

/// The lease value: holder and epoch.
async fn lease(client: &async_nats::Client) -> Option<(String, Option<u64>)> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(names().lease_bucket()).await.ok()?;
    let entry = kv.entry(names().lease_key()).await.ok()??;
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
    Some((v["holder"].as_str()?.to_string(), v["epoch"].as_u64()))
}

async fn wait_for_leader(client: &async_nats::Client, id: &str, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((holder, Some(epoch))) = lease(client).await
            && holder == id
        {
            return epoch;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not lead within {limit:?}"
        );
        sleep(Duration::from_millis(25)).await;
    }
}

/// Every fire state write as it is stored, under a job's key or in a tick
/// record: (key, epoch), in stream order.
struct StateWatch {
    seen: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl StateWatch {
    async fn start(client: &async_nats::Client) -> StateWatch {
        use futures::StreamExt;
        let kv = resources(client).await.state;
        let mut watch = kv.watch_all().await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let epoch = serde_json::from_slice::<serde_json::Value>(&entry.value)
                    .ok()
                    .and_then(|v| v["epoch"].as_u64());
                if let Some(epoch) = epoch
                    && (!entry.key.starts_with('=') || Names::is_tick_key(&entry.key))
                {
                    sink.lock().unwrap().push((entry.key.clone(), epoch));
                }
            }
        });
        StateWatch { seen }
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap().clone()
    }
}

fn job(id: &str) -> Bytes {
    format!(r#"{{"id":"{id}","schedule":"* * * * * *","shards":2,"run":{{"shell":"true"}}}}"#)
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_and_deposed_stores_nothing_when_its_link_heals() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port())).await;
    let client = server.client().await;
    let a = Scheduler::start(&proxy.url(), "a");
    let old_epoch = wait_for_leader(&client, "a", Duration::from_secs(20)).await;
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    let states = StateWatch::start(&client).await;
    for id in ["tick1", "tick2", "tick3"] {
        api.put_raw(job(id)).await.unwrap();
    }
    tap.wait_for("fires by a", Duration::from_secs(10), |s| {
        s.iter().filter(|m| m.epoch == old_epoch).count() >= 6
    })
    .await;
    let b = Scheduler::start(&server.url(), "b");
    sleep(Duration::from_secs(1)).await;

    // a's link stalls: its writes pile up in the socket buffers while b
    // takes over once a's lease has lapsed.
    proxy.pause();
    let new_epoch = wait_for_leader(&client, "b", Duration::from_secs(15)).await;
    assert!(new_epoch > old_epoch);
    tap.wait_for("fires by b", Duration::from_secs(10), |s| {
        s.iter().filter(|m| m.epoch == new_epoch).count() >= 6
    })
    .await;
    proxy.resume();
    sleep(Duration::from_secs(3)).await;

    // b still leads, a follows, and nothing a wrote after b's fences is stored.
    assert_eq!(lease(&client).await.unwrap(), ("b".into(), Some(new_epoch)));
    let work = harness::stream_messages(&client, &names().work_stream()).await;
    let fences: Vec<(u64, u64)> = work
        .iter()
        .filter(|m| m.subject.as_str() == names().work_fence_subject())
        .map(|m| (m.sequence, Fence::decode(&m.payload).unwrap().epoch))
        .collect();
    let b_fence = fences
        .iter()
        .find(|(_, e)| *e == new_epoch)
        .map(|(s, _)| *s)
        .expect("b's fence in the work stream");
    for s in tap.snapshot() {
        assert!(
            s.epoch >= new_epoch || s.seq < b_fence,
            "shard {} of epoch {} stored at {} after the fence of epoch {new_epoch} at {b_fence}",
            s.msg_id,
            s.epoch,
            s.seq
        );
    }
    let events = harness::stream_messages(&client, &names().events_stream()).await;
    let b_leader = events
        .iter()
        .find(|m| {
            matches!(Event::decode(&m.payload).map(|e| e.body),
                Ok(EventBody::Leader { epoch, .. }) if epoch == new_epoch)
        })
        .map(|m| m.sequence)
        .expect("b's leader event");
    for m in &events {
        if let Ok(EventBody::Fired { epoch, job, .. }) = Event::decode(&m.payload).map(|e| e.body) {
            assert!(
                epoch >= new_epoch || m.sequence < b_leader,
                "fired event of {job} by epoch {epoch} stored after epoch {new_epoch} fenced"
            );
        }
    }
    // Every fire state write, in the order stored: none of a's after b's first.
    let writes = states.snapshot();
    let first_b = writes
        .iter()
        .position(|(_, e)| *e == new_epoch)
        .expect("b wrote fire states");
    let late: Vec<_> = writes[first_b..]
        .iter()
        .filter(|(_, e)| *e < new_epoch)
        .collect();
    assert!(
        late.is_empty(),
        "fire states written by a deposed leader: {late:?}"
    );
    // The shard messages' epoch header is the dispatching leader's.
    assert!(tap.snapshot().iter().all(|s| s.epoch == s.msg.epoch));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_create_answered_too_late_is_adopted_at_once() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port())).await;
    let l = Scheduler::start(&server.url(), "l");
    wait_for_leader(&client, "l", Duration::from_secs(20)).await;
    let f = Scheduler::start(&proxy.url(), "f");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(job("tick")).await.unwrap();
    sleep(Duration::from_secs(2)).await;

    // f's link stalls, then the leader dies: f's creates wait in the socket
    // buffers, unanswered, while the lease expires.
    proxy.pause();
    l.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease(&client).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the dead leader's lease never expired"
        );
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs(2)).await;
    assert!(
        lease(&client).await.is_none(),
        "nobody can have taken the lease"
    );

    // The link heals: the oldest create lands first and takes the lease;
    // f must lead with it at once, not leave it held for nobody until it
    // expires.
    proxy.resume();
    let resumed = Instant::now();
    let epoch = wait_for_leader(&client, "f", Duration::from_secs(10)).await;
    let took = resumed.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "f led {took:?} after its link healed"
    );
    tap.wait_for("fires by f", Duration::from_secs(10), |s| {
        s.iter().any(|m| m.epoch == epoch)
    })
    .await;
    f.stop().await;
}
