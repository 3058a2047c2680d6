#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Misfire policies against a real nats-server: a job fires every second,
//! every scheduler stops for about 4 s, one starts again, and the work
//! stream and the events must account for every instant of the gap exactly
//! as the job's `misfire` says: dispatched, or named by a `misfired` event,
//! never both and never neither.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::api::{ClientError, ErrorCode};
use jetcron_shared::job::Misfire;
use jetcron_shared::wire::{Cause, Event, EventBody};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Collector, Scheduler, WorkTap};

/// How long no scheduler runs.
const DOWN: Duration = Duration::from_secs(4);

fn names() -> Names {
    Names::default()
}

fn second() -> chrono::Duration {
    chrono::Duration::seconds(1)
}

/// One `misfired` event of the job, as the test reads it.
#[derive(Debug, Clone, PartialEq)]
struct Misfired {
    missed: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    fired: Option<DateTime<Utc>>,
    policy: Misfire,
}

/// What the job did around the outage.
#[derive(Debug)]
struct Outage {
    /// Instants dispatched before the stop, and after the restart, each
    /// with its cause; one shard, so one message per instant.
    before: BTreeMap<DateTime<Utc>, Cause>,
    after: BTreeMap<DateTime<Utc>, Cause>,
    misfired: Vec<Misfired>,
}

/// Puts `definition` (an `@every 1s` job `id`), lets it fire, stops the
/// only scheduler for [`DOWN`], starts another, and collects what the job
/// dispatched and reported until `after` instants came from the new leader.
async fn outage(id: &str, definition: &str, after: usize) -> Outage {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    api.put_raw(definition.to_string().into()).await.unwrap();
    let first = tap
        .wait_for("two fires before the stop", Duration::from_secs(20), |s| {
            s.iter().filter(|m| m.msg.job == id).count() >= 2
        })
        .await;
    let old_epoch = first[0].epoch;
    a.stop().await;
    tokio::time::sleep(DOWN).await;
    let b = Scheduler::start(&server.url(), "b");
    let stored = tap
        .wait_for(
            "fires by the restarted scheduler",
            Duration::from_secs(20),
            |s| {
                s.iter()
                    .filter(|m| m.msg.job == id && m.epoch != old_epoch)
                    .count()
                    >= after
            },
        )
        .await;
    b.stop().await;
    // Anything stored by the stop has reached the tap and the collector.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_all = tap.snapshot();
    assert!(stored_all.len() >= stored.len());

    let mut before = BTreeMap::new();
    let mut after = BTreeMap::new();
    for s in stored_all.iter().filter(|s| s.msg.job == id) {
        assert_eq!(
            s.msg_id,
            format!("{id}:{}:0", s.msg.instant.timestamp_millis())
        );
        let side = if s.epoch == old_epoch {
            &mut before
        } else {
            &mut after
        };
        let again = side.insert(s.msg.instant, s.msg.cause);
        assert!(again.is_none(), "{} dispatched twice", s.msg_id);
    }
    let both: Vec<_> = before.keys().filter(|i| after.contains_key(i)).collect();
    assert!(both.is_empty(), "dispatched by both leaders: {both:?}");
    Outage {
        before,
        after,
        misfired: misfired(&events, id),
    }
}

fn misfired(events: &Collector<Event>, id: &str) -> Vec<Misfired> {
    events
        .snapshot()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Misfired {
                job,
                missed,
                first_missed,
                last_missed,
                fired,
                policy,
                ..
            } if job == id => Some(Misfired {
                missed,
                first: first_missed,
                last: last_missed,
                fired,
                policy,
            }),
            _ => None,
        })
        .collect()
}

/// Instants from `first` to `last`, both included, one a second.
fn seconds(first: DateTime<Utc>, last: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = first;
    while t <= last {
        out.push(t);
        t += second();
    }
    out
}

impl Outage {
    /// Every instant from the first dispatched to the last is dispatched
    /// or named by a `misfired` event as not fired, never both.
    fn assert_accounted(&self) {
        let fired: BTreeSet<_> = self.before.keys().chain(self.after.keys()).collect();
        let mut named = BTreeSet::new();
        for m in &self.misfired {
            for t in seconds(m.first, m.last) {
                if Some(t) != m.fired {
                    assert!(named.insert(t), "{t} named missed twice");
                }
            }
        }
        let both: Vec<_> = named.iter().filter(|t| fired.contains(t)).collect();
        assert!(both.is_empty(), "dispatched and named missed: {both:?}");
        let (first, last) = (**fired.first().unwrap(), **fired.last().unwrap());
        for t in seconds(first, last) {
            assert!(
                fired.contains(&t) || named.contains(&t),
                "{t} neither dispatched nor named missed: {self:#?}"
            );
        }
    }

    /// The last instant the first scheduler dispatched.
    fn last_before(&self) -> DateTime<Utc> {
        *self.before.keys().next_back().unwrap()
    }

    /// The restarted scheduler's instants, in order.
    fn after_instants(&self) -> Vec<DateTime<Utc>> {
        self.after.keys().copied().collect()
    }

    /// The instants the restarted scheduler dispatched consecutively, from
    /// its first one.
    fn assert_after_consecutive(&self) {
        let after = self.after_instants();
        assert_eq!(
            after,
            seconds(after[0], *after.last().unwrap()),
            "{self:#?}"
        );
    }
}

fn definition(id: &str, misfire: &str) -> String {
    format!(r#"{{"id":"{id}","schedule":"@every 1s","run":{{"shell":"true"}}{misfire}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_once_fires_the_latest_missed_instant_once_for_all_of_them() {
    let o = outage("once", &definition("once", ""), 3).await;
    o.assert_accounted();
    // One misfired event: from the first instant after the stop to the
    // instant fired in their place, which is the restarted leader's first.
    let [m] = &o.misfired[..] else {
        panic!("one misfired event expected: {o:#?}");
    };
    let fired = m.fired.expect("fire_once fires one in their place");
    assert_eq!(m.policy, Misfire::FireOnce);
    assert_eq!(m.first, o.last_before() + second(), "{o:#?}");
    assert_eq!(m.last, fired);
    assert_eq!(m.missed, seconds(m.first, m.last).len() as u64);
    assert!(m.missed >= 4, "{DOWN:?} down, only {} missed", m.missed);
    let after = o.after_instants();
    assert_eq!(after[0], fired, "{o:#?}");
    assert_eq!(o.after[&fired], Cause::Misfire);
    assert!(after[1..].iter().all(|t| o.after[t] == Cause::Schedule));
    o.assert_after_consecutive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_fires_none_of_the_missed_instants_and_names_them() {
    let o = outage("skipper", &definition("skipper", r#","misfire":"skip""#), 3).await;
    o.assert_accounted();
    let [m] = &o.misfired[..] else {
        panic!("one misfired event expected: {o:#?}");
    };
    assert_eq!((m.fired, m.policy), (None, Misfire::Skip), "{o:#?}");
    assert_eq!(m.first, o.last_before() + second(), "{o:#?}");
    assert_eq!(m.missed, seconds(m.first, m.last).len() as u64);
    assert!(m.missed >= 3, "{DOWN:?} down, only {} missed", m.missed);
    // The job goes on right after the last skipped instant, on time.
    let after = o.after_instants();
    assert_eq!(after[0], m.last + second(), "{o:#?}");
    assert!(o.after.values().all(|c| *c == Cause::Schedule), "{o:#?}");
    o.assert_after_consecutive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_all_fires_the_newest_missed_instants_up_to_its_limit_and_names_the_rest() {
    let o = outage(
        "all",
        &definition("all", r#","misfire":"fire_all","misfire_limit":2"#),
        4,
    )
    .await;
    o.assert_accounted();
    // The older missed instants, beyond the limit, in one event.
    let [m] = &o.misfired[..] else {
        panic!("one misfired event expected: {o:#?}");
    };
    assert_eq!((m.fired, m.policy), (None, Misfire::FireAll), "{o:#?}");
    assert_eq!(m.first, o.last_before() + second(), "{o:#?}");
    assert_eq!(m.missed, seconds(m.first, m.last).len() as u64);
    assert!(m.missed >= 1, "{DOWN:?} down, nothing beyond the limit");
    // The newest two fire, each as itself and late, in order; then the
    // job is on time again.
    let after = o.after_instants();
    assert_eq!(
        after[..2],
        [m.last + second(), m.last + second() * 2],
        "{o:#?}"
    );
    assert_eq!(
        (o.after[&after[0]], o.after[&after[1]]),
        (Cause::Misfire, Cause::Misfire)
    );
    assert!(after[2..].iter().all(|t| o.after[t] == Cause::Schedule));
    o.assert_after_consecutive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_settings_that_cannot_work_are_refused_naming_the_field() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    for (extra, expect) in [
        (
            r#","misfire":"later""#,
            "misfire: 'later' is not one of fire_once, skip, fire_all",
        ),
        (
            r#","misfire":"fire_all","misfire_limit":0"#,
            "misfire_limit: must be 1-1000, found 0",
        ),
        (
            r#","misfire":"fire_all","misfire_limit":1001"#,
            "misfire_limit: must be 1-1000, found 1001",
        ),
        (
            r#","misfire":"skip","misfire_limit":5"#,
            "misfire_limit: applies only to misfire fire_all, and this job's misfire is skip",
        ),
    ] {
        match api.put_raw(definition("x", extra).into()).await {
            Err(ClientError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidJob);
                assert!(
                    e.message.contains(expect),
                    "{:?} does not contain {expect:?}",
                    e.message
                );
            }
            other => panic!("{extra}: expected a refusal, got {other:?}"),
        }
    }
    assert!(api.list().await.unwrap().jobs.is_empty());
    api.put_raw(definition("x", r#","misfire":"fire_all","misfire_limit":1000"#).into())
        .await
        .unwrap();
    a.stop().await;
}
