//! `status`, `workers`, and the micro discovery protocol.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_leader_replicas_jobs_and_waiting_shards() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let b = Scheduler::start(&server.url(), "b");
    api.put_raw(
        r#"{"id":"bill","schedule":"@yearly","shards":3,"group":"billing","run":{"shell":"true"}}"#
            .into(),
    )
    .await
    .unwrap();
    api.put_raw(job("idle", "@yearly", 1)).await.unwrap();
    api.pause("idle").await.unwrap();
    api.put_raw(job("plain", "@yearly", 1)).await.unwrap();
    harness::kv_put(&client, &names(), "broken", b"{not json").await;
    // No worker runs: the shards wait in the work stream.
    api.trigger(&TriggerRequest {
        id: "bill".into(),
        shards: None,
        payload: None,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = wait_until(
        "two replicas, one leading",
        Duration::from_secs(15),
        async || {
            let s = api.status().await.ok()?;
            let holder = s.leader.as_ref()?.holder.clone();
            let leading: Vec<_> = s
                .replicas
                .iter()
                .filter(|r| r.leader)
                .map(|r| r.id.clone())
                .collect();
            (s.replicas.len() == 2 && leading == vec![holder]).then_some(s)
        },
    )
    .await;
    let leader = status.leader.clone().unwrap();
    assert!(["a", "b"].contains(&leader.holder.as_str()), "{leader:?}");
    let leader_event = events
        .wait_for("the leader event", Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind() == "leader")
        })
        .await
        .into_iter()
        .find_map(|e| match e.body {
            EventBody::Leader { holder, epoch } => Some((holder, epoch)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (leader.holder.clone(), leader.epoch),
        leader_event,
        "epoch = take-over revision"
    );
    assert!(leader.since <= Utc::now());
    let ids: Vec<_> = status.replicas.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert_eq!(status.jobs.total, 4);
    assert_eq!(status.jobs.active, 2);
    assert_eq!(status.jobs.paused, 1);
    assert_eq!(status.jobs.invalid_count, 1);
    assert!(status.jobs.complete);
    assert_eq!(status.jobs.invalid.len(), 1);
    assert_eq!(status.jobs.invalid[0].id, "broken");
    assert!(status.jobs.invalid[0].error.starts_with("invalid JSON"));
    let groups: BTreeMap<_, _> = status
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g))
        .collect();
    assert_eq!(
        groups.keys().copied().collect::<Vec<_>>(),
        vec!["billing", "default"]
    );
    let billing = groups["billing"];
    assert_eq!((billing.jobs, groups["default"].jobs), (1, 2));
    assert_eq!(billing.workers, 0);
    assert_eq!(billing.pending, 3, "{billing:?}");
    assert_eq!(billing.in_flight, 0);
    assert!(billing.oldest_pending_age_ms.unwrap() >= 0, "{billing:?}");
    assert_eq!(groups["default"].pending, 0);
    assert_eq!(groups["default"].oldest_pending_age_ms, None);

    // The same through a raw request: the JSON shape.
    let (v, headers) = raw(&client, "status", "").await;
    assert!(headers.is_none_or(|h| h.get("Nats-Service-Error").is_none()));
    assert_eq!(v["ok"], true);
    for field in ["leader", "replicas", "jobs", "groups"] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_live_workers_by_group_and_id() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    assert!(api.workers().await.unwrap().workers.is_empty());
    let w1 = harness::Worker::start(&server.url(), "w1");
    let mut cfg = harness::worker_config(&server.url(), "w0");
    cfg.group = "billing".into();
    let w0 = harness::Worker::start_with(cfg);
    let workers = wait_until("two workers", Duration::from_secs(15), async || {
        let w = api.workers().await.ok()?.workers;
        (w.len() == 2).then_some(w)
    })
    .await;
    let listed: Vec<_> = workers
        .iter()
        .map(|w| (w.group.as_str(), w.id.as_str()))
        .collect();
    assert_eq!(listed, vec![("billing", "w0"), ("default", "w1")]);
    assert!(workers.iter().all(|w| w.concurrency > 0 && w.running == 0));
    let status = api.status().await.unwrap();
    let counts: Vec<_> = status
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g.workers))
        .collect();
    assert_eq!(counts, vec![("billing", 1), ("default", 1)]);
    w1.stop(Duration::from_secs(10)).await;
    w0.stop(Duration::from_secs(10)).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_forgets_a_killed_worker_within_its_heartbeat_ttl() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let ttl = Duration::from_secs(3);
    let mut sc = harness::scheduler_config(&server.url(), "a");
    sc.setup.worker_ttl = ttl;
    let a = Scheduler::start_with(sc);
    let api = harness::api(&client, &names()).await;
    let mut wc = harness::worker_config(&server.url(), "doomed");
    wc.heartbeat_interval = Duration::from_secs(1);
    let doomed = harness::Worker::start_with(wc);
    let mut wc = harness::worker_config(&server.url(), "survivor");
    wc.heartbeat_interval = Duration::from_secs(1);
    let survivor = harness::Worker::start_with(wc);
    wait_until("both workers listed", Duration::from_secs(15), async || {
        let w = api.workers().await.ok()?.workers;
        (w.len() == 2).then_some(())
    })
    .await;
    let killed = tokio::time::Instant::now();
    doomed.kill();
    let left = wait_until(
        "the killed worker forgotten",
        Duration::from_secs(15),
        async || {
            let w = api.workers().await.ok()?.workers;
            (w.len() == 1).then_some(w)
        },
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(left[0].id, "survivor");
    // Gone by expiry (no goodbye was sent), within the TTL plus the server's
    // expiry sweep and our polling.
    assert!(took <= ttl + Duration::from_secs(3), "{took:?}");
    survivor.stop(Duration::from_secs(10)).await;
    a.stop().await;
}

/// Every reply to a request sent to `subject` within `window`.
async fn gather(client: &async_nats::Client, subject: &str, window: Duration) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        // A status message (no responders) is not a reply.
        if m.status.is_none() {
            out.push(serde_json::from_slice(&m.payload).unwrap());
        }
    }
    out
}

fn endpoint_stats<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_discovery_follows_adr_32_and_stats_count_error_replies() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let b = Scheduler::start(&server.url(), "b");
    let api: ApiClient = harness::api(&client, &names()).await;
    api.put_raw(job("hello", "@yearly", 1)).await.unwrap();
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };

    // PING: every replica answers, each with its own id.
    let pings = wait_until(
        "both replicas answer PING",
        Duration::from_secs(15),
        async || {
            let p = gather(&client, "$SRV.PING.jetcron", Duration::from_millis(500)).await;
            (p.len() == 2).then_some(p)
        },
    )
    .await;
    let mut ids = BTreeSet::new();
    let mut replicas = BTreeSet::new();
    for p in &pings {
        assert_eq!(p["type"], "io.nats.micro.v1.ping_response", "{p}");
        assert_eq!(p["name"], "jetcron");
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
        assert!(p["metadata"].is_object(), "{p}");
        ids.insert(p["id"].as_str().unwrap().to_string());
        replicas.insert(p["metadata"]["replica"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 2, "{pings:?}");
    assert_eq!(replicas, BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(
        gather(&client, "$SRV.PING", Duration::from_millis(300))
            .await
            .len(),
        2
    );
    let id = ids.iter().next().unwrap().clone();
    let one = gather(
        &client,
        &format!("$SRV.PING.jetcron.{id}"),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["id"], id.as_str());
    assert!(
        gather(&client, "$SRV.PING.other", Duration::from_millis(300))
            .await
            .is_empty()
    );

    // INFO: description, endpoints with subject and queue group.
    let info = gather(
        &client,
        &format!("$SRV.INFO.jetcron.{id}"),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(info.len(), 1);
    let info = &info[0];
    assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
    assert_eq!(info["name"], "jetcron");
    assert_eq!(info["id"], id.as_str());
    assert!(info["description"].as_str().unwrap().contains("jetcron"));
    let endpoints = info["endpoints"].as_array().unwrap();
    let subjects: BTreeSet<&str> = endpoints
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<String> = [
        "job.put",
        "job.get",
        "job.delete",
        "job.list",
        "job.pause",
        "job.resume",
        "job.trigger",
        "job.next",
        "job.runs",
        "job.retry",
        "status",
        "workers",
    ]
    .iter()
    .map(|e| names().api_subject(e))
    .collect();
    assert_eq!(subjects, expected.iter().map(String::as_str).collect());
    for e in endpoints {
        assert!(name_ok(e["name"].as_str().unwrap()), "{e}");
        assert_eq!(e["queue_group"], "q", "{e}");
        assert!(e["metadata"].is_object() || e["metadata"].is_null(), "{e}");
    }
    assert_eq!(
        gather(&client, "$SRV.INFO", Duration::from_millis(300))
            .await
            .len(),
        2
    );

    // STATS: 2 good and 1 bad request to job.get; summed over the replicas
    // (the queue group spreads requests between them).
    let get_stats =
        async || gather(&client, "$SRV.STATS.jetcron", Duration::from_millis(500)).await;
    let before = get_stats().await;
    assert_eq!(before.len(), 2);
    let sum = |stats: &[Value], ep: &str, field: &str| -> u64 {
        stats
            .iter()
            .map(|s| endpoint_stats(s, ep)[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum(&before, "job_get", "num_requests"), 0);
    api.get("hello").await.unwrap();
    api.get("hello").await.unwrap();
    let (c, _) = api_error(api.get("missing").await);
    assert_eq!(c, ErrorCode::NotFound);
    let after = get_stats().await;
    assert_eq!(after.len(), 2);
    assert_eq!(sum(&after, "job_get", "num_requests"), 3);
    assert_eq!(sum(&after, "job_get", "num_errors"), 1);
    assert_eq!(sum(&after, "job_put", "num_requests"), 1);
    assert_eq!(sum(&after, "job_put", "num_errors"), 0);
    let with_error: Vec<_> = after
        .iter()
        .map(|s| endpoint_stats(s, "job_get"))
        .filter(|e| e["num_errors"] == 1)
        .collect();
    assert_eq!(with_error.len(), 1);
    assert_eq!(
        with_error[0]["last_error"],
        "404:job 'missing' does not exist"
    );
    for s in &after {
        assert_eq!(s["type"], "io.nats.micro.v1.stats_response", "{s}");
        assert_eq!(s["name"], "jetcron");
        let started = DateTime::parse_from_rfc3339(s["started"].as_str().unwrap()).unwrap();
        assert!(started <= Utc::now());
        for e in s["endpoints"].as_array().unwrap() {
            for field in [
                "name",
                "subject",
                "num_requests",
                "num_errors",
                "last_error",
                "processing_time",
                "average_processing_time",
            ] {
                assert!(e.get(field).is_some(), "{field} missing: {e}");
            }
            let (n, total, avg) = (
                e["num_requests"].as_u64().unwrap(),
                e["processing_time"].as_u64().unwrap(),
                e["average_processing_time"].as_u64().unwrap(),
            );
            match total.checked_div(n) {
                Some(mean) => {
                    assert!(total > 0 && avg > 0 && avg <= total, "{e}");
                    assert_eq!(avg, mean, "{e}");
                }
                None => assert_eq!((total, avg), (0, 0), "{e}"),
            }
            if e["num_errors"] == 0 {
                assert_eq!(e["last_error"], "", "{e}");
            }
        }
    }
    b.stop().await;
    a.stop().await;
}
