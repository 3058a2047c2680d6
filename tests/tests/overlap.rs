#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Tracked fires against a real nats-server, real schedulers and real
//! workers: `overlap` forbid, queue and replace with a slow job across two
//! workers and a leader killed in the middle, `@after` with varying run
//! times, and `on_success` chains.
//!
//! What the tests read: `fired`, `skipped`, `misfired` and `replaced`
//! events, and the results the workers publish, which say when each shard
//! of each fire started and finished, on which worker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{Cause, Event, EventBody, RunResult, RunStatus};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Collector, Scheduler, Worker};

fn names() -> Names {
    Names::default()
}

/// One fire as its shards' last results tell it.
#[derive(Debug, Clone)]
struct FireRun {
    instant: DateTime<Utc>,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    statuses: Vec<RunStatus>,
    workers: BTreeSet<String>,
}

/// The fires of `job` that have a result for each of their `shards`,
/// oldest first.
fn fire_runs(results: &[RunResult], job: &str, shards: u32) -> Vec<FireRun> {
    let mut by: BTreeMap<DateTime<Utc>, Vec<&RunResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.job == job && !r.will_retry) {
        by.entry(r.instant).or_default().push(r);
    }
    by.into_iter()
        .filter(|(_, rs)| rs.len() as u32 >= shards)
        .map(|(instant, rs)| FireRun {
            instant,
            started: rs.iter().map(|r| r.started_at).min().unwrap(),
            finished: rs.iter().map(|r| r.finished_at).max().unwrap(),
            statuses: rs.iter().map(|r| r.status).collect(),
            workers: rs.iter().map(|r| r.worker.clone()).collect(),
        })
        .collect()
}

/// The instants of `job`'s `fired` events, with their epochs. Events read
/// live may come twice (a write sent again after a lost ack is dropped by
/// the stream, not by the subject's subscribers); stored ones must not.
fn fired(events: &[Event], job: &str) -> BTreeMap<DateTime<Utc>, (u64, Cause, Option<String>)> {
    fired_once(events, job, false)
}

fn fired_once(
    events: &[Event],
    job: &str,
    strict: bool,
) -> BTreeMap<DateTime<Utc>, (u64, Cause, Option<String>)> {
    let mut out = BTreeMap::new();
    for e in events {
        if let EventBody::Fired {
            job: j,
            instant,
            epoch,
            cause,
            parent,
            ..
        } = &e.body
            && j == job
        {
            let again = out.insert(*instant, (*epoch, *cause, parent.clone()));
            assert!(!strict || again.is_none(), "{job} {instant} fired twice");
        }
    }
    out
}

/// Every second of an `@every 1s` job from its first fire to its last must
/// be accounted for exactly once: fired, or named by a `skipped` (overlap)
/// or `misfired` event. Returns the overlap `skipped` events seen.
fn every_second_accounted_once(events: &[Event], job: &str) -> usize {
    let fires = fired_once(events, job, true);
    let (first, last) = (
        *fires.keys().next().unwrap(),
        *fires.keys().next_back().unwrap(),
    );
    let mut seen: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for t in fires.keys() {
        seen.entry(*t).or_default().push("fired".into());
    }
    let second = chrono::Duration::seconds(1);
    let mut overlap_events = 0;
    for e in events {
        match &e.body {
            EventBody::Skipped {
                job: j,
                instant,
                reason,
                count,
            } if j == job => {
                assert_eq!(reason, "overlap", "{e:?}");
                overlap_events += 1;
                for n in 0..*count {
                    let t = *instant - second * i32::try_from(n).unwrap();
                    seen.entry(t).or_default().push(format!("skipped@{}", e.at));
                }
            }
            EventBody::Misfired {
                job: j,
                first_missed,
                last_missed,
                fired,
                ..
            } if j == job => {
                let mut t = *first_missed;
                while t <= *last_missed {
                    if Some(t) != *fired {
                        seen.entry(t).or_default().push("misfired".into());
                    }
                    t += second;
                }
            }
            _ => {}
        }
    }
    let mut t = first;
    while t <= last {
        let how = seen.get(&t).cloned().unwrap_or_default();
        assert_eq!(
            how.len(),
            1,
            "{job} {} accounted for {} times: {how:?}",
            t.to_rfc3339_opts(SecondsFormat::Millis, true),
            how.len()
        );
        t += second;
    }
    overlap_events
}

/// No fire of the job ran while another one did, on any worker.
fn never_side_by_side(runs: &[FireRun]) {
    for w in runs.windows(2) {
        assert!(
            w[1].started >= w[0].finished,
            "fire {} started at {} while fire {} ran until {}",
            w[1].instant,
            w[1].started,
            w[0].instant,
            w[0].finished
        );
    }
}

/// Scheduler `a`, two workers, and collectors.
struct Cluster {
    _server: NatsServer,
    client: async_nats::Client,
    url: String,
    events: Collector<Event>,
    results: Collector<RunResult>,
    api: jetcron_shared::api::ApiClient,
    a: Option<Scheduler>,
    workers: Vec<Worker>,
}

impl Cluster {
    async fn start() -> Cluster {
        harness::init_tracing();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let events = harness::events(&client, &names()).await;
        let results = harness::results(&client, &names()).await;
        let url = server.url();
        let a = Scheduler::start(&url, "a");
        let api = harness::api(&client, &names()).await;
        let workers = vec![Worker::start(&url, "w1"), Worker::start(&url, "w2")];
        Cluster {
            _server: server,
            client,
            url,
            events,
            results,
            api,
            a: Some(a),
            workers,
        }
    }

    async fn put(&self, definition: &str) {
        self.api
            .put_raw(definition.to_string().into())
            .await
            .unwrap_or_else(|e| panic!("put {definition}: {e}"));
    }

    /// Waits for `n` fired events of `job`.
    async fn fires(&self, job: &str, n: usize, limit: Duration) -> Vec<Event> {
        self.events
            .wait_for(&format!("{n} fires of {job}"), limit, |es| {
                fired(es, job).len() >= n
            })
            .await
    }

    /// The events as stored: once each.
    async fn stored_events(&self) -> Vec<Event> {
        harness::stream_messages(&self.client, &names().events_stream())
            .await
            .iter()
            .filter_map(|m| Event::decode(&m.payload).ok())
            .collect()
    }

    /// Crashes `a`.
    fn kill_a(&mut self) {
        if let Some(a) = self.a.take() {
            a.kill();
        }
    }

    async fn stop(self) {
        if let Some(a) = self.a {
            a.stop().await;
        }
        // Shards may still run (a replaced job's last fire sleeps 30 s).
        for w in self.workers {
            w.kill();
        }
    }
}

/// Lets `job` fire twice, starts `b`, kills `a` while the second fire
/// runs, and waits until `b` fired `after` times. Returns `b`, and
/// `a`'s epoch.
async fn failover(c: &mut Cluster, job: &str, after: usize) -> (Scheduler, u64) {
    let es = c.fires(job, 2, Duration::from_secs(30)).await;
    let old_epoch = fired(&es, job).values().next().unwrap().0;
    let b = Scheduler::start(&c.url, "b");
    // Let b mirror the fire states, then crash a mid-run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill_a();
    let last = *fired(&c.events.snapshot(), job).keys().next_back().unwrap();
    c.events
        .wait_for(
            &format!("{after} fires of {job} by the new leader"),
            Duration::from_secs(60),
            |es| {
                fired(es, job)
                    .iter()
                    .filter(|(t, f)| **t > last && f.0 != old_epoch)
                    .count()
                    >= after
            },
        )
        .await;
    (b, old_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forbid_skips_what_comes_while_a_fire_runs_across_workers_and_a_failover() {
    let mut c = Cluster::start().await;
    c.put(r#"{"id":"slow","schedule":"@every 1s","shards":2,"overlap":"forbid","run":{"shell":"sleep 2.2"}}"#)
        .await;
    let (b, _) = failover(&mut c, "slow", 3).await;
    b.stop().await;
    // The last fires' shards report.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let runs = fire_runs(&results, "slow", 2);
    assert!(runs.len() >= 4, "{runs:#?}");
    never_side_by_side(&runs);
    assert!(
        runs.iter().any(|r| r.workers.len() == 2),
        "shards ran on both workers: {runs:#?}"
    );
    let skips = every_second_accounted_once(&events, "slow");
    let fires = fired(&events, "slow").len();
    assert!(skips >= 1, "no overlap skip at all");
    // At most one event when a burst starts and one when it ends.
    assert!(
        skips <= 2 * fires + 2,
        "{skips} skip events for {fires} fires"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_runs_the_waiting_instant_as_soon_as_the_fire_ends_across_a_failover() {
    let mut c = Cluster::start().await;
    c.put(r#"{"id":"serial","schedule":"@every 1s","shards":2,"overlap":"queue","run":{"shell":"sleep 1.6"}}"#)
        .await;
    let (b, _) = failover(&mut c, "serial", 3).await;
    b.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let runs = fire_runs(&results, "serial", 2);
    assert!(runs.len() >= 4, "{runs:#?}");
    never_side_by_side(&runs);
    every_second_accounted_once(&events, "serial");
    // A queued fire is its first waiting instant, dispatched at the end of
    // the one before: late, and started right after it.
    let queued: Vec<_> = runs
        .windows(2)
        .filter(|w| w[1].instant < w[0].finished)
        .collect();
    assert!(!queued.is_empty(), "no fire waited: {runs:#?}");
    let prompt = queued
        .iter()
        .filter(|w| w[1].started - w[0].finished < chrono::Duration::milliseconds(1500))
        .count();
    assert!(
        prompt * 2 >= queued.len(),
        "queued fires were not started as the fire before ended: {queued:#?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_cancels_the_running_fire_on_its_workers_across_a_failover() {
    let mut c = Cluster::start().await;
    c.put(r#"{"id":"newest","schedule":"@every 2s","shards":2,"overlap":"replace","run":{"shell":"sleep 30"}}"#)
        .await;
    let (b, _) = failover(&mut c, "newest", 2).await;
    b.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let fires = fired_once(&events, "newest", true);
    let instants: Vec<DateTime<Utc>> = fires.keys().copied().collect();
    let replaced: BTreeMap<DateTime<Utc>, DateTime<Utc>> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Replaced {
                job, instant, by, ..
            } if job == "newest" => Some((*instant, *by)),
            _ => None,
        })
        .collect();
    // Each fire but the last was replaced by the next one, and both of its
    // shards ended cancelled, long before their 30 s.
    assert!(
        instants.len() >= 4,
        "stored {fires:?}\nlive {:?}",
        fired(&c.events.snapshot(), "newest")
    );
    let runs = fire_runs(&results, "newest", 2);
    for w in instants.windows(2) {
        assert_eq!(
            replaced.get(&w[0]),
            Some(&w[1]),
            "{w:?} not replaced: {replaced:?}"
        );
        let run = runs
            .iter()
            .find(|r| r.instant == w[0])
            .unwrap_or_else(|| panic!("no results for {}: {runs:#?}", w[0]));
        assert!(
            run.statuses.iter().all(|s| *s == RunStatus::Cancelled),
            "{run:?}"
        );
        let took = run.finished - run.started;
        assert!(took < chrono::Duration::seconds(20), "{run:?}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_fires_a_fixed_delay_after_each_fire_ended_whatever_it_took() {
    let c = Cluster::start().await;
    // Each shard sleeps 0 to 1.2 s: every fire ends at another offset.
    c.put(r#"{"id":"delay","schedule":"@after 1s","shards":2,"run":{"shell":"sleep $(awk 'BEGIN{srand(); printf \"%.2f\", rand()*1.2}')"}}"#)
        .await;
    c.fires("delay", 5, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let runs = fire_runs(&results, "delay", 2);
    let instants: Vec<DateTime<Utc>> = fired_once(&events, "delay", true).keys().copied().collect();
    assert!(instants.len() >= 5, "{instants:?}");
    for w in instants.windows(2) {
        let before = runs
            .iter()
            .find(|r| r.instant == w[0])
            .unwrap_or_else(|| panic!("no results for {}: {runs:#?}", w[0]));
        // The end to the millisecond, plus the delay: exactly.
        let end = DateTime::from_timestamp_millis(before.finished.timestamp_millis()).unwrap();
        assert_eq!(w[1], end + chrono::Duration::seconds(1), "{before:?}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_success_fires_a_chain_only_after_every_shard_succeeded() {
    let c = Cluster::start().await;
    let at = (Utc::now() + chrono::Duration::seconds(3)).to_rfc3339_opts(SecondsFormat::Secs, true);
    c.put(r#"{"id":"load","schedule":"@manual","shards":2,"on_success":["report"],"run":{"shell":"true"}}"#).await;
    c.put(
        r#"{"id":"report","schedule":"@manual","run":{"shell":"echo \"$JETCRON_PARENT_FIRE\""}}"#,
    )
    .await;
    c.put(&format!(
        r#"{{"id":"extract","schedule":"@at {at}","shards":3,"on_success":["load"],"run":{{"shell":"sleep 0.3"}}}}"#
    ))
    .await;
    c.put(&format!(
        r#"{{"id":"broken","schedule":"@at {at}","shards":2,"on_success":["cleanup"],"run":{{"shell":"exit $JETCRON_SHARD"}},"retry":{{"max_attempts":1}}}}"#
    ))
    .await;
    c.put(r#"{"id":"cleanup","schedule":"@manual","run":{"shell":"true"}}"#)
        .await;
    let events = c.fires("report", 1, Duration::from_secs(30)).await;
    // broken's shard 1 is dead by now; give cleanup time it must not use.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(events);
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let chain = |parent: &str, child: &str| {
        let p = fire_runs(&results, parent, 1);
        let (instant, (_, cause, from)) = fired(&events, child).into_iter().next().unwrap();
        assert_eq!(cause, Cause::Parent);
        let parent_fire = &p[0];
        assert_eq!(
            from.as_deref(),
            Some(jetcron_shared::wire::fire_id(parent, parent_fire.instant).as_str())
        );
        // The child's instant is the parent's end, to the millisecond.
        assert_eq!(
            instant.timestamp_millis(),
            parent_fire.finished.timestamp_millis()
        );
        let c = fire_runs(&results, child, 1);
        assert!(
            c.iter()
                .all(|r| r.statuses.iter().all(|s| *s == RunStatus::Succeeded))
        );
    };
    chain("extract", "load");
    chain("load", "report");
    // The child's results, and its command, know the parent's fire.
    let load = fire_runs(&results, "load", 2)[0].instant;
    let load_fire = jetcron_shared::wire::fire_id("load", load);
    let report: Vec<&RunResult> = results.iter().filter(|r| r.job == "report").collect();
    assert_eq!(report.len(), 1, "{report:#?}");
    assert_eq!(report[0].parent.as_deref(), Some(load_fire.as_str()));
    assert_eq!(report[0].output.trim(), load_fire);
    let broken = fire_runs(&results, "broken", 2);
    assert_eq!(broken.len(), 1, "{broken:#?}");
    assert!(broken[0].statuses.contains(&RunStatus::Failed));
    assert!(
        fired(&events, "cleanup").is_empty(),
        "a child fired after a failed shard"
    );
    for job in ["extract", "load", "report"] {
        assert_eq!(fired_once(&events, job, true).len(), 1, "{job}");
    }
    c.stop().await;
}

/// A leader killed while parents run: every parent fire whose shards all
/// succeeded fires its child exactly once (no fire lost, none doubled),
/// whichever leader saw its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_successful_parent_fires_its_child_once_across_a_failover() {
    let mut c = Cluster::start().await;
    c.put(r#"{"id":"kid","schedule":"@manual","run":{"shell":"true"}}"#)
        .await;
    c.put(r#"{"id":"mom","schedule":"@every 1s","shards":2,"on_success":["kid"],"run":{"shell":"sleep 0.6"}}"#)
        .await;
    let (b, _) = failover(&mut c, "mom", 3).await;
    // The last parents' ends reach the new leader.
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.stop().await;
    let events = c.stored_events().await;
    let results = c.results.snapshot();
    let kids = fired_once(&events, "kid", true);
    let parents: BTreeSet<String> = kids
        .values()
        .map(|(_, cause, parent)| {
            assert_eq!(*cause, Cause::Parent);
            parent.clone().expect("a child fire names its parent")
        })
        .collect();
    assert_eq!(
        parents.len(),
        kids.len(),
        "a parent fired its child twice: {kids:?}"
    );
    let done: Vec<FireRun> = fire_runs(&results, "mom", 2)
        .into_iter()
        .filter(|r| r.statuses.iter().all(|s| *s == RunStatus::Succeeded))
        .collect();
    assert!(done.len() >= 4, "{done:#?}");
    // Parents that ended before the new leader stopped (with a margin for
    // the last one) each fired the child.
    let stop = Utc::now() - chrono::Duration::seconds(4);
    for r in done.iter().filter(|r| r.finished < stop) {
        let id = jetcron_shared::wire::fire_id("mom", r.instant);
        assert!(
            parents.contains(&id),
            "{id} succeeded and fired no child: {kids:?}"
        );
    }
    c.stop().await;
}
