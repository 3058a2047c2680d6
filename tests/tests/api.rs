#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The control API against a real nats-server and in-process schedulers:
//! every endpoint's success and failure paths, the micro error headers, the
//! micro discovery protocol (`$SRV.PING/INFO/STATS`) and its error counts.
//!
//! - here: request validation (nothing written on error), compare-and-set
//!   puts, pause and resume;
//! - [`fires`]: `job.trigger`, `job.next`, `job.runs`;
//! - [`chains`]: `on_success` cycles refused at `job.put`;
//! - [`observe`]: `status`, `workers`, and the micro protocol.

#[path = "api/chains.rs"]
mod chains;
#[path = "api/fires.rs"]
mod fires;
#[path = "api/observe.rs"]
mod observe;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use chrono::{DateTime, Datelike, Offset, Timelike, Utc, Weekday};
use futures::StreamExt;
use jetcron_shared::api::{ApiClient, ClientError, ErrorCode, TriggerRequest};
use jetcron_shared::runs::ShardState;
use jetcron_shared::wire::{Cause, EventBody};
use jetcron_shared::{Job, Names};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler, WorkTap};
use serde_json::{Value, json};

fn names() -> Names {
    Names::default()
}

fn job(id: &str, schedule: &str, shards: u32) -> bytes::Bytes {
    format!(r#"{{"id":"{id}","schedule":"{schedule}","shards":{shards},"run":{{"shell":"true"}}}}"#)
        .into()
}

/// A raw request, as any NATS client sends it: the reply body and headers.
async fn raw(
    client: &async_nats::Client,
    endpoint: &str,
    body: &str,
) -> (Value, Option<HeaderMap>) {
    let subject = names().api_subject(endpoint);
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.clone(), body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply from {subject} within 5 s"))
    .unwrap();
    let v = serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply of {subject} is not JSON ({e}): {:?}", msg.payload));
    (v, msg.headers)
}

/// Sends a request that must be refused with `code`, a message containing
/// `needle`, and the micro error headers agreeing with the body.
async fn refused(
    client: &async_nats::Client,
    endpoint: &str,
    body: &str,
    code: &str,
    needle: &str,
) -> String {
    let (v, headers) = raw(client, endpoint, body).await;
    assert_eq!(v["ok"], false, "{endpoint} {body}: {v}");
    assert_eq!(v["error"]["code"], code, "{endpoint} {body}: {v}");
    let message = v["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(needle),
        "{endpoint} {body}: {message:?} does not contain {needle:?}"
    );
    let headers = headers.unwrap_or_else(|| panic!("{endpoint} {body}: no error headers"));
    assert_eq!(
        headers.get("Nats-Service-Error").unwrap().as_str(),
        message,
        "{endpoint} {body}"
    );
    let status = match code {
        "bad_request" | "invalid_job" => "400",
        "not_found" => "404",
        "conflict" => "409",
        other => panic!("unexpected code {other}"),
    };
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        status,
        "{endpoint} {body}"
    );
    message
}

fn api_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Api(e)) => (e.code, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Last sequence of a stream: unchanged means nothing was written.
async fn last_seq(client: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_bad_requests_with_the_field_named_and_writes_nothing() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    api.put_raw(job("known", "@yearly", 3)).await.unwrap();
    harness::kv_put(&client, &names(), "broken", b"{not json").await;

    let jobs_stream = format!("KV_{}", names().jobs_bucket());
    let runs_stream = format!("KV_{}", names().runs_bucket());
    let before = (
        last_seq(&client, &jobs_stream).await,
        last_seq(&client, &runs_stream).await,
        last_seq(&client, &names().work_stream()).await,
    );

    // Unknown job: not_found, from every endpoint that names one.
    for ep in [
        "job.get",
        "job.delete",
        "job.pause",
        "job.resume",
        "job.trigger",
        "job.next",
        "job.runs",
    ] {
        refused(
            &client,
            ep,
            r#"{"id":"nope"}"#,
            "not_found",
            "job 'nope' does not exist",
        )
        .await;
        // Malformed JSON, empty bodies, wrong shapes, bad ids.
        for body in ["", "   ", "{", "[]", "42", r#"{"name":"x"}"#] {
            refused(&client, ep, body, "bad_request", "").await;
        }
        let m = refused(&client, ep, r#"{"id":"a.b"}"#, "bad_request", "").await;
        assert!(m.starts_with("id: 'a.b' must be"), "{ep}: {m}");
        let m = refused(
            &client,
            ep,
            r#"{"id":"known","bogus":1}"#,
            "bad_request",
            "",
        )
        .await;
        assert!(m.starts_with("bogus: unknown field"), "{ep}: {m}");
        let m = refused(&client, ep, r#"{"id":7}"#, "bad_request", "").await;
        assert!(m.starts_with("id: invalid type"), "{ep}: {m}");
    }
    let m = refused(&client, "job.get", r#"{"name":"x"}"#, "bad_request", "").await;
    assert!(m.contains(r#"{"id": "<job id>"}"#), "{m}");

    // Field checks of the endpoints with parameters.
    for (ep, body, start) in [
        (
            "job.next",
            r#"{"id":"known","count":0}"#,
            "count: must be 1-100, found 0",
        ),
        (
            "job.next",
            r#"{"id":"known","count":101}"#,
            "count: must be 1-100, found 101",
        ),
        (
            "job.next",
            r#"{"id":"known","count":"5"}"#,
            "count: invalid type",
        ),
        (
            "job.runs",
            r#"{"id":"known","limit":0}"#,
            "limit: must be at least 1",
        ),
        (
            "job.runs",
            r#"{"id":"known","limit":-1}"#,
            "limit: invalid value",
        ),
        (
            "job.trigger",
            r#"{"id":"known","shards":[0,1,7]}"#,
            "shards[2]: 7 is not a shard of job 'known' (it has 3)",
        ),
        (
            "job.trigger",
            r#"{"id":"known","shards":[1,1]}"#,
            "shards[1]: 1 is listed twice",
        ),
        (
            "job.trigger",
            r#"{"id":"known","shards":[]}"#,
            "shards: must list at least one",
        ),
        (
            "job.trigger",
            r#"{"id":"known","shards":"all"}"#,
            "shards: invalid type",
        ),
        ("status", r#"{"verbose":true}"#, "verbose: unknown field"),
        ("workers", "[]", "body must be empty or {}"),
        ("job.list", "{", r#"body must be {"limit": 1-1000"#),
        (
            "job.list",
            r#"{"limit":0}"#,
            "limit: must be 1-1000, found 0",
        ),
        (
            "job.list",
            r#"{"state":"gone"}"#,
            "state: unknown variant `gone`",
        ),
        (
            "job.list",
            r#"{"cursor":"a.b"}"#,
            "cursor: 'a.b' is not a job id",
        ),
    ] {
        let m = refused(&client, ep, body, "bad_request", "").await;
        assert!(
            m.starts_with(start),
            "{ep} {body}: {m:?} does not start with {start:?}"
        );
    }

    // job.put: invalid definitions (named field), bad expected_revision.
    refused(
        &client,
        "job.put",
        r#"{"id":"x","schedule":"61 * * * * *","run":{"shell":"true"}}"#,
        "invalid_job",
        "schedule: '61 * * * * *': second must be 0-59",
    )
    .await;
    refused(&client, "job.put", "", "invalid_job", "definition is empty").await;
    refused(&client, "job.put", "{", "invalid_job", "invalid JSON").await;
    let m = refused(
        &client,
        "job.put",
        r#"{"id":"x","schedule":"@hourly","run":{"shell":"true"},"expected_revision":"one"}"#,
        "bad_request",
        "",
    )
    .await;
    assert!(
        m.starts_with("expected_revision: must be a revision number"),
        "{m}"
    );

    // A stored definition that does not validate can be read, not operated.
    for (ep, action) in [
        ("job.pause", "paused"),
        ("job.resume", "resumed"),
        ("job.trigger", "triggered"),
        ("job.next", "planned"),
    ] {
        let m = refused(&client, ep, r#"{"id":"broken"}"#, "invalid_job", "").await;
        assert!(
            m.starts_with(&format!(
                "job 'broken' cannot be {action}: its stored definition is invalid: invalid JSON"
            )),
            "{ep}: {m}"
        );
    }

    let after = (
        last_seq(&client, &jobs_stream).await,
        last_seq(&client, &runs_stream).await,
        last_seq(&client, &names().work_stream()).await,
    );
    assert_eq!(before, after, "a refused request wrote something");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_expected_revision_is_compare_and_set() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let spec = |schedule: &str| Job::decode(&job("cas", schedule, 1), None).unwrap().spec;

    // 0: only if it does not exist.
    let first = api.put_expecting(&spec("@hourly"), 0).await.unwrap();
    assert!(first.created);
    let (c, m) = api_error(api.put_expecting(&spec("@daily"), 0).await);
    assert_eq!(c, ErrorCode::Conflict);
    assert_eq!(
        m,
        format!("job 'cas' is at revision {}, not 0", first.revision)
    );
    // The right revision applies, a stale one does not.
    let second = api
        .put_expecting(&spec("@daily"), first.revision)
        .await
        .unwrap();
    assert!(!second.created);
    assert!(second.revision > first.revision);
    let (c, m) = api_error(api.put_expecting(&spec("@weekly"), first.revision).await);
    assert_eq!(c, ErrorCode::Conflict);
    assert_eq!(
        m,
        format!(
            "job 'cas' is at revision {}, not {}",
            second.revision, first.revision
        )
    );
    let got = api.get("cas").await.unwrap();
    assert_eq!(got.revision, second.revision);
    assert_eq!(got.job.unwrap().schedule, "@daily");
    // The field is not part of the stored definition.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names().jobs_bucket()).await.unwrap();
    let stored: Value = serde_json::from_slice(&kv.get("cas").await.unwrap().unwrap()).unwrap();
    assert!(stored.get("expected_revision").is_none(), "{stored}");
    // A job that does not exist is not at any revision but 0.
    let (c, m) = api_error(
        api.put_expecting(
            &Job::decode(&job("fresh", "@hourly", 1), None).unwrap().spec,
            3,
        )
        .await,
    );
    assert_eq!(c, ErrorCode::Conflict);
    assert_eq!(m, "job 'fresh' does not exist, not at revision 3");
    // After a delete, 0 creates it again.
    api.delete("cas").await.unwrap();
    assert!(
        api.put_expecting(&spec("@hourly"), 0)
            .await
            .unwrap()
            .created
    );
    // Without the field: a plain put.
    let plain = api.put(&spec("@monthly")).await.unwrap();
    assert!(!plain.created);
    // An invalid definition with the field is refused like any other, and
    // reported.
    let (c, m) = api_error(
        api.put_raw(
            r#"{"id":"cas","schedule":"@nope","run":{"shell":"true"},"expected_revision":1}"#
                .into(),
        )
        .await,
    );
    assert_eq!(c, ErrorCode::InvalidJob);
    assert!(m.starts_with("schedule: "), "{m}");
    events
        .wait_for("the invalid event", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                matches!(&e.body, EventBody::Invalid { job, error, .. } if job == "cas" && error.starts_with("schedule: "))
            })
        })
        .await;
    assert_eq!(
        api.get("cas").await.unwrap().job.unwrap().schedule,
        "@monthly"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_an_at_instant_already_passed_but_a_stored_one_still_loads() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let once = |id: &str, at: &str| -> String {
        format!(r#"{{"id":"{id}","schedule":"@at {at}","run":{{"shell":"true"}}}}"#)
    };
    let past = "2020-01-01T00:00:00Z";

    let (c, m) = api_error(api.put_raw(once("late", past).into()).await);
    assert_eq!(c, ErrorCode::InvalidJob);
    assert_eq!(
        m,
        format!("schedule: '@at {past}': never fires: {past} is in the past")
    );
    refused(
        &client,
        "job.put",
        &once("late", past),
        "invalid_job",
        "is in the past",
    )
    .await;
    events
        .wait_for("the invalid event", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                matches!(&e.body, EventBody::Invalid { job, error, .. } if job == "late" && error.ends_with("is in the past"))
            })
        })
        .await;
    let (c, _) = api_error(api.get("late").await);
    assert_eq!(c, ErrorCode::NotFound, "nothing was stored");

    // An instant still ahead is taken.
    let ahead = (Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    assert!(
        api.put_raw(once("soon", &ahead.to_string()).into())
            .await
            .unwrap()
            .created
    );

    // A stored job whose instant has passed is a valid job with nothing left to fire.
    harness::kv_put(&client, &names(), "done", once("done", past).as_bytes()).await;
    let got = api.get("done").await.unwrap();
    assert_eq!(got.invalid, None);
    assert_eq!(got.job.unwrap().schedule, format!("@at {past}"));
    assert!(api.next("done", None).await.unwrap().instants.is_empty());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_fires_and_resume_restarts_them_reporting_what_was_skipped() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let events = harness::events(&client, &names()).await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let tap = WorkTap::start(&client, &names()).await;
    let put = api.put_raw(job("tick", "* * * * * *", 1)).await.unwrap();
    tap.wait_for("fires", Duration::from_secs(15), |s| s.len() >= 2)
        .await;

    let paused = api.pause("tick").await.unwrap();
    let paused_at = Utc::now();
    assert!(paused.changed);
    assert!(paused.revision > put.revision);
    let again = api.pause("tick").await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.revision, paused.revision);
    assert!(api.get("tick").await.unwrap().job.unwrap().paused);
    assert!(api.list().await.unwrap().jobs[0].paused);
    assert!(api.next("tick", None).await.unwrap().paused);

    // No fire while paused. The first skipped instant is reported, then
    // nothing is written per instant until the resume.
    let skips = |e: &[jetcron_shared::wire::Event]| {
        e.iter()
            .filter(|e| matches!(&e.body, EventBody::Skipped { job, reason, .. } if job == "tick" && reason == "paused"))
            .count()
    };
    events
        .wait_for("a skipped instant", Duration::from_secs(10), |e| {
            skips(e) >= 1
        })
        .await;
    let state_kv = async_nats::jetstream::new(client.clone())
        .get_key_value(names().state_bucket())
        .await
        .unwrap();
    let state_rev = || async { state_kv.entry("tick").await.unwrap().map(|e| e.revision) };
    let before = state_rev().await;
    assert!(before.is_some(), "the skip is stored under the job's key");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(skips(&events.snapshot()), 1, "one skipped event per pause");
    assert_eq!(
        state_rev().await,
        before,
        "no state write per skipped instant"
    );
    let late: Vec<_> = tap
        .snapshot()
        .into_iter()
        .filter(|m| m.msg.dispatched_at > paused_at + chrono::Duration::milliseconds(500))
        .map(|m| m.msg_id)
        .collect();
    assert!(late.is_empty(), "fired while paused: {late:?}");

    let resumed = api.resume("tick").await.unwrap();
    let resumed_at = Utc::now();
    assert!(resumed.changed);
    assert!(resumed.revision > paused.revision);
    assert!(resumed.skipped >= 3, "{resumed:?}");
    assert!(!api.resume("tick").await.unwrap().changed);
    assert!(!api.get("tick").await.unwrap().job.unwrap().paused);
    tap.wait_for("fires after the resume", Duration::from_secs(10), |s| {
        s.iter().filter(|m| m.msg.instant > resumed_at).count() >= 2
    })
    .await;
    let evs = events
        .wait_for("paused and resumed events", Duration::from_secs(10), |e| {
            e.iter().any(|e| e.kind() == "paused") && e.iter().any(|e| e.kind() == "resumed")
        })
        .await;
    for e in &evs {
        match &e.body {
            EventBody::Paused { job, revision } => {
                assert_eq!((job.as_str(), *revision), ("tick", paused.revision))
            }
            EventBody::Resumed {
                job,
                revision,
                skipped,
            } => assert_eq!(
                (job.as_str(), *revision, *skipped),
                ("tick", resumed.revision, resumed.skipped)
            ),
            _ => {}
        }
    }
    a.stop().await;
}
