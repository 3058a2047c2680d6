//! `job.trigger`, `job.next` and `job.runs`.

use super::*;
use async_nats::jetstream;
use futures::TryStreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_dispatches_once_with_the_chosen_shards_and_payload_also_when_paused() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(
        r#"{"id":"report","schedule":"@yearly","shards":["eu","us","apac"],"group":"billing",
            "run":{"shell":"true"},"payload":{"batch":500},"history":4}"#
            .into(),
    )
    .await
    .unwrap();
    api.pause("report").await.unwrap();

    let before = Utc::now();
    let reply = api
        .trigger(&TriggerRequest {
            id: "report".into(),
            shards: Some(vec![2, 0]),
            payload: Some(json!({"rerun": true})),
        })
        .await
        .unwrap();
    assert_eq!(reply.id, "report");
    assert_eq!(reply.shards, vec![2, 0]);
    assert!(reply.instant >= before - chrono::Duration::milliseconds(1));
    assert_eq!(
        reply.instant.timestamp_subsec_nanos() % 1_000_000,
        0,
        "ms precision"
    );
    assert_eq!(
        reply.fire_id,
        format!("report:{}", reply.instant.timestamp_millis())
    );
    tap.wait_for("two shards", Duration::from_secs(10), |s| s.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stored = tap.snapshot();
    assert_eq!(
        stored.len(),
        2,
        "dispatched once: {:?}",
        stored.iter().map(|s| &s.msg_id).collect::<Vec<_>>()
    );
    let shards: BTreeSet<u32> = stored.iter().map(|s| s.msg.shard).collect();
    assert_eq!(shards, BTreeSet::from([0, 2]));
    for s in &stored {
        assert_eq!(s.msg.job, "report");
        assert_eq!(s.msg.group, "billing");
        assert_eq!(s.msg.cause, Cause::Manual);
        assert_eq!(s.msg.instant, reply.instant);
        assert_eq!(s.msg.shards, 3);
        assert_eq!(s.msg.payload, Some(json!({"rerun": true})));
        assert_eq!(
            s.msg.record.as_deref(),
            Some("report.m0"),
            "the first free manual slot"
        );
        assert_eq!(
            s.msg_id,
            format!(
                "report:{}:{}",
                reply.instant.timestamp_millis(),
                s.msg.shard
            )
        );
        let param = ["eu", "us", "apac"][s.msg.shard as usize];
        assert_eq!(s.msg.param.as_deref(), Some(param));
    }
    events
        .wait_for("the triggered event", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                matches!(&e.body, EventBody::Triggered { job, fire_id, shards, .. }
                if job == "report" && *fire_id == reply.fire_id && *shards == vec![2, 0])
            })
        })
        .await;

    // The fire is in the run history at once, its shards pending.
    let runs = api.runs("report", None).await.unwrap();
    assert_eq!(runs.runs.len(), 1, "{runs:?}");
    let run = &runs.runs[0];
    assert_eq!(run.fire_id, reply.fire_id);
    assert_eq!(run.cause, Cause::Manual);
    assert_eq!(run.state, ShardState::Pending);
    let listed: Vec<u32> = run.shards.iter().map(|s| s.shard).collect();
    assert_eq!(listed, vec![2, 0]);

    // Without options: every shard, the job's own payload, a new instant.
    let all = api
        .trigger(&TriggerRequest {
            id: "report".into(),
            shards: None,
            payload: None,
        })
        .await
        .unwrap();
    assert_eq!(all.shards, vec![0, 1, 2]);
    assert!(all.instant > reply.instant);
    let stored = tap
        .wait_for("three more shards", Duration::from_secs(10), |s| {
            s.len() >= 5
        })
        .await;
    for s in stored.iter().filter(|s| s.msg.instant == all.instant) {
        assert_eq!(s.msg.payload, Some(json!({"batch": 500})));
        assert_eq!(s.msg.record.as_deref(), Some("report.m1"));
    }
    let runs = api.runs("report", None).await.unwrap();
    assert_eq!(runs.runs.len(), 2);
    assert_eq!(runs.runs[0].fire_id, all.fire_id, "newest first");
    assert_eq!(api.runs("report", Some(1)).await.unwrap().runs.len(), 1);

    // The manual history is a ring of `history` (4) slots: the fifth
    // trigger takes the slot of the oldest.
    let mut fire_ids = vec![reply.fire_id.clone(), all.fire_id.clone()];
    for _ in 0..3 {
        let t = api
            .trigger(&TriggerRequest {
                id: "report".into(),
                shards: Some(vec![1]),
                payload: None,
            })
            .await
            .unwrap();
        fire_ids.push(t.fire_id);
    }
    let runs = api.runs("report", None).await.unwrap();
    let listed: Vec<_> = runs.runs.iter().map(|r| r.fire_id.clone()).collect();
    let expected: Vec<_> = fire_ids[1..].iter().rev().cloned().collect();
    assert_eq!(listed, expected, "the oldest fire was overwritten");
    // Still paused: nothing else fires.
    assert!(api.get("report").await.unwrap().job.unwrap().paused);
    a.stop().await;
}

/// Checks every instant of a `job.next` reply against the zone.
fn check_instants(reply: &jetcron_shared::api::NextReply, job: &Job) {
    let tz = job.schedule.timezone();
    for w in reply.instants.windows(2) {
        assert!(w[0].utc < w[1].utc, "not increasing: {:?}", reply.instants);
    }
    for i in &reply.instants {
        let local =
            DateTime::parse_from_rfc3339(&i.local).unwrap_or_else(|e| panic!("{}: {e}", i.local));
        assert_eq!(local.with_timezone(&Utc), i.utc, "{}", i.local);
        let offset = i.utc.with_timezone(&tz).offset().fix();
        assert_eq!(*local.offset(), offset, "{} at {}", i.local, i.utc);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_lists_upcoming_instants_in_utc_and_local_time_across_dst() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;

    // Daily at 02:30 Berlin time: default count, the schedule's own instants.
    let daily = r#"{"id":"nightly","schedule":"0 30 2 * * *","timezone":"Europe/Berlin","run":{"shell":"true"}}"#;
    api.put_raw(daily.into()).await.unwrap();
    let job = Job::decode(daily.as_bytes(), None).unwrap();
    let t0 = Utc::now();
    let reply = api.next("nightly", None).await.unwrap();
    let t1 = Utc::now();
    assert_eq!(reply.timezone, "Europe/Berlin");
    assert!(!reply.paused);
    assert_eq!(reply.instants.len(), 5);
    let got: Vec<_> = reply.instants.iter().map(|i| i.utc).collect();
    assert!(
        got == job.schedule.upcoming(t0, 5) || got == job.schedule.upcoming(t1, 5),
        "{got:?}"
    );
    check_instants(&reply, &job);
    for i in &reply.instants {
        assert!(i.local.contains("T02:30:00+0"), "{}", i.local);
    }

    // Weekly on Sunday 02:30 for 100 weeks: every DST change in Berlin falls
    // on a Sunday, so the spring-forward gap (02:30 does not exist: first
    // instant after the gap, 03:00 CEST) and the fall-back overlap (02:30
    // twice: the first, CEST) are both in the list.
    let weekly = r#"{"id":"sunday","schedule":"0 30 2 * * SUN","timezone":"Europe/Berlin","run":{"shell":"true"}}"#;
    api.put_raw(weekly.into()).await.unwrap();
    let job = Job::decode(weekly.as_bytes(), None).unwrap();
    let reply = api.next("sunday", Some(100)).await.unwrap();
    assert_eq!(reply.instants.len(), 100);
    check_instants(&reply, &job);
    let mut offsets = BTreeSet::new();
    let (mut springs, mut falls) = (0, 0);
    for i in &reply.instants {
        let local = DateTime::parse_from_rfc3339(&i.local).unwrap();
        assert_eq!(local.weekday(), Weekday::Sun, "{}", i.local);
        offsets.insert(local.offset().local_minus_utc());
        let last_sunday = local.day() + 7 > 31;
        match (local.month(), last_sunday) {
            (3, true) => {
                springs += 1;
                assert!(i.local.ends_with("T03:00:00+02:00"), "{}", i.local);
            }
            (10, true) => {
                falls += 1;
                assert!(i.local.ends_with("T02:30:00+02:00"), "{}", i.local);
                assert_eq!(i.utc.hour(), 0, "first occurrence: {}", i.utc);
            }
            _ => assert!(i.local.contains("T02:30:00+0"), "{}", i.local),
        }
    }
    assert_eq!(offsets, BTreeSet::from([3600, 7200]), "both offsets");
    assert!(
        springs >= 1 && falls >= 1,
        "{springs} springs, {falls} falls"
    );

    // Interval schedules ignore the zone's DST: multiples of the interval.
    api.put_raw(
        r#"{"id":"every","schedule":"@every 90s","timezone":"Europe/Berlin","run":{"shell":"true"}}"#
            .into(),
    )
    .await
    .unwrap();
    let reply = api.next("every", Some(3)).await.unwrap();
    assert_eq!(reply.instants.len(), 3);
    for i in &reply.instants {
        assert_eq!(i.utc.timestamp() % 90, 0, "{}", i.utc);
    }
    for w in reply.instants.windows(2) {
        assert_eq!(w[1].utc - w[0].utc, chrono::Duration::seconds(90));
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_each_shard_succeeded_failed_or_timed_out() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let w = harness::Worker::start(&server.url(), "w1");
    let definition = json!({
        "id": "mixed",
        "schedule": "@yearly",
        "shards": 3,
        "timeout": "1s",
        "run": {"shell": "case $JETCRON_SHARD in 0) exit 0;; 1) seq 1 2000; echo last line; exit 3;; *) sleep 30;; esac"},
    });
    api.put_raw(definition.to_string().into()).await.unwrap();
    assert!(api.runs("mixed", None).await.unwrap().runs.is_empty());

    let first = api
        .trigger(&TriggerRequest {
            id: "mixed".into(),
            shards: None,
            payload: None,
        })
        .await
        .unwrap();
    let run = wait_until(
        "every shard finished",
        Duration::from_secs(30),
        async || {
            let runs = api.runs("mixed", None).await.ok()?;
            let run = runs.runs.into_iter().next()?;
            run.shards
                .iter()
                .all(|s| !matches!(s.state, ShardState::Pending | ShardState::Running))
                .then_some(run)
        },
    )
    .await;
    assert_eq!(run.fire_id, first.fire_id);
    assert_eq!(run.cause, Cause::Manual);
    let by_shard: HashMap<u32, _> = run.shards.iter().map(|s| (s.shard, s)).collect();
    assert_eq!(by_shard[&0].state, ShardState::Succeeded);
    assert_eq!(by_shard[&0].exit_code, Some(0));
    assert_eq!(by_shard[&1].state, ShardState::Failed);
    assert_eq!(by_shard[&1].exit_code, Some(3));
    assert_eq!(by_shard[&2].state, ShardState::TimedOut);
    // The end of the output, at most 1 KiB of it, and why it failed.
    let tail = by_shard[&1].output_tail.as_deref().unwrap();
    assert!(tail.ends_with("1999\n2000\nlast line\n"), "{tail:?}");
    assert!(tail.len() <= 1024 && tail.len() > 1000, "{}", tail.len());
    assert_eq!(by_shard[&0].output_tail, None, "no output, no tail");
    assert_eq!(by_shard[&1].error, None, "an exit code says it all");
    assert_eq!(by_shard[&2].error.as_deref(), Some("timed out after 1s"));
    for s in &run.shards {
        assert_eq!(s.attempts, 1);
        assert_eq!(s.worker.as_deref(), Some("w1"));
        assert!(s.run_id.is_some() && s.started_at.is_some() && s.finished_at.is_some());
        assert!(s.duration_ms.unwrap() >= 0);
    }
    assert!(
        by_shard[&2].duration_ms.unwrap() >= 900,
        "{:?}",
        by_shard[&2]
    );
    assert_eq!(run.state, ShardState::Failed, "the worst shard state");

    // A second fire of only the good shard: newest first, succeeded.
    let second = api
        .trigger(&TriggerRequest {
            id: "mixed".into(),
            shards: Some(vec![0]),
            payload: None,
        })
        .await
        .unwrap();
    let runs = wait_until(
        "the second fire succeeded",
        Duration::from_secs(20),
        async || {
            let runs = api.runs("mixed", None).await.ok()?;
            (runs.runs.len() == 2 && runs.runs[0].state == ShardState::Succeeded).then_some(runs)
        },
    )
    .await;
    assert_eq!(runs.runs[0].fire_id, second.fire_id);
    assert_eq!(runs.runs[0].shards.len(), 1);
    assert_eq!(runs.runs[1].fire_id, first.fire_id);
    assert_eq!(runs.runs[1].state, ShardState::Failed);
    let limited = api.runs("mixed", Some(1)).await.unwrap();
    assert_eq!(limited.runs.len(), 1);
    assert_eq!(limited.runs[0].fire_id, second.fire_id);
    w.stop(Duration::from_secs(10)).await;
    a.stop().await;
}

/// A scheduled fire's history entry is its `fired` event: the leader writes
/// no fire record in the runs bucket, and `job.runs` still shows the newest
/// fires (as many as the job's `history`) with their shards' records, for a
/// job with few stored events (read whole) and one with many (read from the
/// end back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_are_read_from_fired_events_newest_first_bounded_by_history() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let w = harness::Worker::start(&server.url(), "w1");
    let n = names();
    let events = jetstream::new(client.clone())
        .get_stream(n.events_stream())
        .await
        .unwrap();
    assert_eq!(
        events.cached_info().config.max_messages_per_subject,
        1000,
        "events are bounded per subject"
    );
    let results = jetstream::new(client.clone())
        .get_stream(n.results_stream())
        .await
        .unwrap();
    assert_eq!(
        (
            events.cached_info().config.max_bytes,
            results.cached_info().config.max_bytes
        ),
        (512 << 20, 1 << 30),
        "events and results are bounded in size"
    );
    for (id, every, history) in [("busy", "200ms", 3), ("calm", "1s", 20)] {
        let def = json!({"id": id, "schedule": format!("@every {every}"), "shards": 2,
            "history": history, "run": {"shell": "true"}});
        api.put_raw(def.to_string().into()).await.unwrap();
    }
    // More than four times busy's history, so that its events are read from
    // the end; calm's few are read whole.
    let fired_of = async |job: &str| -> Vec<DateTime<Utc>> {
        harness::stream_messages(&client, &n.events_stream())
            .await
            .into_iter()
            .filter(|m| m.subject.as_str() == n.event_subject("fired", Some(job)))
            .filter_map(|m| match jetcron_shared::wire::Event::decode(&m.payload) {
                Ok(e) => match e.body {
                    EventBody::Fired { instant, .. } => Some(instant),
                    _ => None,
                },
                Err(_) => None,
            })
            .collect()
    };
    wait_until("busy fired 15 times", Duration::from_secs(20), async || {
        (fired_of("busy").await.len() >= 15).then_some(())
    })
    .await;
    api.pause("busy").await.unwrap();
    api.pause("calm").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (id, history) in [("busy", 3usize), ("calm", 20)] {
        let fired = fired_of(id).await;
        assert!(!fired.is_empty(), "{id} fired");
        let mut newest: Vec<DateTime<Utc>> = fired.iter().rev().take(history).copied().collect();
        newest.dedup();
        let runs = wait_until(
            "every shard of the listed fires succeeded",
            Duration::from_secs(20),
            async || {
                let r = api.runs(id, None).await.ok()?;
                r.runs
                    .iter()
                    .all(|f| f.state == ShardState::Succeeded)
                    .then_some(r)
            },
        )
        .await;
        let listed: Vec<DateTime<Utc>> = runs.runs.iter().map(|f| f.instant).collect();
        assert_eq!(listed, newest, "{id}: the newest fires, newest first");
        for f in &runs.runs {
            assert_eq!(f.cause, Cause::Schedule);
            assert_eq!(f.fire_id, jetcron_shared::wire::fire_id(id, f.instant));
            assert_eq!(f.shards.len(), 2, "{id}: {f:?}");
            assert!(f.shards.iter().all(|s| s.worker.as_deref() == Some("w1")));
        }
        let limited = api.runs(id, Some(2)).await.unwrap();
        assert_eq!(
            limited.runs.iter().map(|f| f.instant).collect::<Vec<_>>(),
            newest[..2.min(newest.len())]
        );
    }
    // The runs bucket holds shard records (`<job>.<slot>.<shard>`) only.
    let runs_kv = jetstream::new(client.clone())
        .get_key_value(n.runs_bucket())
        .await
        .unwrap();
    let keys: Vec<String> = runs_kv.keys().await.unwrap().try_collect().await.unwrap();
    assert!(!keys.is_empty());
    let fire_records: Vec<&String> = keys
        .iter()
        .filter(|k| k.matches('.').count() == 1 && !k.starts_with('='))
        .collect();
    assert!(fire_records.is_empty(), "fire records: {fire_records:?}");
    w.stop(Duration::from_secs(10)).await;
    a.stop().await;
}

/// `job.runs` finds a job's last `fired` events however many other events
/// lie between them (its read moves back from the last one until it has
/// enough), and also when there are far more of them than it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_find_the_last_fired_events_among_many_others() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let n = names();
    let js = jetstream::new(client.clone());
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut instants = Vec::new();
    for i in 0..40i64 {
        let instant = t0 + chrono::Duration::seconds(i);
        instants.push(instant);
        let fired = jetcron_shared::wire::Event {
            at: instant,
            body: EventBody::Fired {
                job: "gone".into(),
                instant,
                shards: 1,
                epoch: 1,
                cause: Cause::Schedule,
                late_ms: 0,
                record: Some(format!("gone.s{}", i % 5)),
                parent: None,
            },
        };
        let mut acks = vec![
            js.publish(
                n.event_subject("fired", Some("gone")),
                fired.encode().into(),
            )
            .await
            .unwrap(),
        ];
        // Other jobs' events in between: 10 after the first fires, 300
        // after the later ones.
        for _ in 0..if i < 20 { 10 } else { 300 } {
            let other = n.event_subject("skipped", Some("other"));
            acks.push(js.publish(other, "{}".into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    // `gone` is no job (deleted, say): its history is what is stored.
    for limit in [1u32, 3, 25] {
        let runs = api.runs("gone", Some(limit)).await.unwrap();
        let listed: Vec<DateTime<Utc>> = runs.runs.iter().map(|f| f.instant).collect();
        let newest: Vec<DateTime<Utc>> = instants
            .iter()
            .rev()
            .take(limit as usize)
            .copied()
            .collect();
        assert_eq!(listed, newest, "limit {limit}");
        assert!(
            runs.runs
                .iter()
                .all(|f| f.shards.len() == 1 && f.state == ShardState::Pending)
        );
    }
    assert_eq!(api.runs("gone", None).await.unwrap().runs.len(), 40);
    a.stop().await;
}

/// `job.retry` runs again only the shards of a fire that ended failed or
/// timed out, as a new fire naming the one it retries, with that fire's
/// payload; a fire with nothing failed, an unknown fire and a bad request
/// are refused, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_again_only_the_failed_and_timed_out_shards_of_a_fire() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let results = harness::results(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let w = harness::Worker::start(&server.url(), "w1");
    // Shard 0 succeeds, 1 fails, 2 times out; a marker file lets the
    // second run of each succeed, so the retry's outcome shows.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("again");
    let definition = json!({
        "id": "flaky",
        "schedule": "@yearly",
        "shards": 3,
        "timeout": "1s",
        "run": {"shell": format!(
            "echo \"payload=$JETCRON_PAYLOAD\"; test -e {m}.$JETCRON_SHARD && exit 0; \
             touch {m}.$JETCRON_SHARD; case $JETCRON_SHARD in 0) exit 0;; 1) exit 3;; *) sleep 30;; esac",
            m = marker.display()
        )},
    });
    api.put_raw(definition.to_string().into()).await.unwrap();
    let first = api
        .trigger(&TriggerRequest {
            id: "flaky".into(),
            shards: None,
            payload: Some(json!({"batch": 7})),
        })
        .await
        .unwrap();
    let finished = async |fire_id: &str| {
        let runs = api.runs("flaky", None).await.ok()?;
        let run = runs.runs.into_iter().find(|r| r.fire_id == fire_id)?;
        run.shards
            .iter()
            .all(|s| !matches!(s.state, ShardState::Pending | ShardState::Running))
            .then_some(run)
    };
    let run = wait_until(
        "the first fire ended",
        Duration::from_secs(30),
        async || finished(&first.fire_id).await,
    )
    .await;
    assert_eq!(run.state, ShardState::Failed);

    let retry = api.retry("flaky", &first.fire_id).await.unwrap();
    assert_eq!(retry.retry_of, first.fire_id);
    assert_eq!(
        retry.shards,
        vec![1, 2],
        "only the failed and timed-out shards"
    );
    assert_ne!(retry.fire_id, first.fire_id);
    let again = wait_until("the retry ended", Duration::from_secs(30), async || {
        finished(&retry.fire_id).await
    })
    .await;
    assert_eq!(again.retry_of.as_deref(), Some(first.fire_id.as_str()));
    assert_eq!(again.state, ShardState::Succeeded);
    assert_eq!(
        again.shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The retried fire's record is untouched; shard 0 ran once.
    let runs = api.runs("flaky", None).await.unwrap();
    let old = runs
        .runs
        .iter()
        .find(|r| r.fire_id == first.fire_id)
        .unwrap();
    assert_eq!(old.state, ShardState::Failed);
    let ran: Vec<(String, u32)> = results
        .snapshot()
        .iter()
        .map(|r| (jetcron_shared::wire::fire_id(&r.job, r.instant), r.shard))
        .collect();
    assert_eq!(
        ran.iter().filter(|(_, s)| *s == 0).count(),
        1,
        "shard 0 is not run again: {ran:?}"
    );
    // The payload of the retried fire came along.
    let retried: Vec<_> = results
        .snapshot()
        .into_iter()
        .filter(|r| jetcron_shared::wire::fire_id(&r.job, r.instant) == retry.fire_id)
        .collect();
    assert_eq!(retried.len(), 2, "{retried:?}");
    for r in &retried {
        assert_eq!(r.status, jetcron_shared::wire::RunStatus::Succeeded);
        assert!(r.output.contains(r#"payload={"batch":7}"#), "{}", r.output);
    }
    let triggered = events
        .wait_for("the retry's triggered event", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                matches!(&e.body, EventBody::Triggered { retry_of: Some(of), .. } if *of == first.fire_id)
            })
        })
        .await;
    assert!(!triggered.is_empty());

    // Nothing failed in the retry: refused, saying how its shards stand.
    let e = api.retry("flaky", &retry.fire_id).await.unwrap_err();
    let (code, message) = match e {
        ClientError::Api(e) => (e.code, e.message),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, ErrorCode::Conflict);
    assert!(
        message.contains("no failed, timed-out or expired shard")
            && message.contains("2 succeeded"),
        "{message}"
    );
    // Unknown fire, unknown job, empty fire id.
    let e = api.retry("flaky", "flaky:123").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(a) if a.code == ErrorCode::NotFound && a.message.contains("'flaky:123'")),
        "{e:?}"
    );
    let e = api.retry("nope", "nope:1").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(a) if a.code == ErrorCode::NotFound && a.message.contains("job 'nope'")),
        "{e:?}"
    );
    let e = api.retry("flaky", " ").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(a) if a.code == ErrorCode::BadRequest && a.message.starts_with("fire_id: ")),
        "{e:?}"
    );
    w.stop(Duration::from_secs(10)).await;
    a.stop().await;
}
