#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! `job.list` pages and `status` counts, both answered from the scheduler's
//! job index, against a real nats-server: many jobs written straight into
//! the jobs bucket, every page walked, filters, cursors, byte-bounded pages,
//! bad requests, and counts that follow puts and deletes at once.

use std::collections::BTreeSet;
use std::time::Duration;

use jetcron_shared::Names;
use jetcron_shared::api::{
    ApiClient, ClientError, ErrorCode, JobState, JobSummary, ListRequest, STATUS_INVALID_LISTED,
    StatusReply,
};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler};

fn names() -> Names {
    Names::default()
}

/// Jobs written straight into the bucket.
const JOBS: usize = 20_000;
/// Jobs `LONG` (ids in order) have a 1.4 KB schedule, so that 1000 of them
/// do not fit in one 1 MiB message.
const LONG: std::ops::Range<usize> = 5_000..6_200;

fn id(i: usize) -> String {
    format!("job-{i:05}")
}

fn group(i: usize) -> String {
    format!("g{}", i % 4)
}

fn paused(i: usize) -> bool {
    i % 1000 == 7
}

/// A definition as the API would store it. The long schedule fires on
/// 1 January at midnight, like `@yearly`: the seconds field lists 0 again
/// and again.
fn definition(i: usize) -> Vec<u8> {
    let schedule = if LONG.contains(&i) {
        format!("{} 0 0 1 1 *", vec!["0"; 700].join(","))
    } else {
        "@yearly".to_string()
    };
    serde_json::to_vec(&serde_json::json!({
        "id": id(i),
        "schedule": schedule,
        "group": group(i),
        "paused": paused(i),
        "run": {"shell": "true"},
    }))
    .unwrap()
}

/// Writes jobs `0..JOBS` straight into the jobs bucket.
async fn write_jobs(client: &async_nats::Client) {
    let definitions = (0..JOBS).map(|i| (id(i), definition(i)));
    harness::kv_put_many(client, &names(), definitions).await;
}

/// Every page from `request` on: the jobs, and each page's size and `next`.
async fn walk(
    api: &ApiClient,
    mut request: ListRequest,
) -> (Vec<JobSummary>, Vec<(usize, Option<String>)>) {
    let mut jobs = Vec::new();
    let mut pages = Vec::new();
    loop {
        assert!(pages.len() < 5_000, "the walk does not end: {request:?}");
        let page = api.list_page(&request).await.expect("job.list");
        pages.push((page.jobs.len(), page.next.clone()));
        jobs.extend(page.jobs);
        match page.next {
            Some(next) => request.cursor = Some(next),
            None => return (jobs, pages),
        }
    }
}

/// Ids strictly ascending (so each at most once) and equal to `want`.
fn assert_ids(jobs: &[JobSummary], want: &[String], what: &str) {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{what}: ids not strictly ascending"
    );
    assert_eq!(ids.len(), want.len(), "{what}: count");
    assert!(
        ids.iter().zip(want).all(|(a, b)| a == b),
        "{what}: ids differ"
    );
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
            e.message
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
}

async fn wait_for_total(api: &ApiClient, total: u64) -> StatusReply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = api.status().await;
        if let Ok(s) = &status
            && s.jobs.total == total
            && s.jobs.complete
        {
            return status.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the index never held {total} jobs: {:?}",
            status.map(|s| s.jobs)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_pages_through_twenty_thousand_jobs() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names())
        .await
        .with_timeout(Duration::from_secs(10));
    write_jobs(&client).await;
    harness::kv_put(&client, &names(), "broken-1", b"{not json").await;
    harness::kv_put(
        &client,
        &names(),
        "broken-2",
        br#"{"id":"broken-2","schedule":"61 * * * * *","run":{"shell":"true"}}"#,
    )
    .await;
    let status = wait_for_total(&api, JOBS as u64 + 2).await;
    let paused_count = (0..JOBS).filter(|&i| paused(i)).count() as u64;
    assert_eq!(
        (
            status.jobs.active,
            status.jobs.paused,
            status.jobs.invalid_count
        ),
        (JOBS as u64 - paused_count, paused_count, 2)
    );

    let mut all: Vec<String> = (0..JOBS).map(id).collect();
    all.extend(["broken-1".to_string(), "broken-2".to_string()]);
    all.sort();

    // Pages of 1000: every id once, in order; the long schedules make some
    // pages stop short of 1000 jobs to stay within one message, and say
    // where to go on.
    let (jobs, pages) = walk(
        &api,
        ListRequest {
            limit: Some(1000),
            ..ListRequest::default()
        },
    )
    .await;
    assert_ids(&jobs, &all, "limit 1000");
    assert!(pages.iter().all(|(n, _)| *n <= 1000), "{pages:?}");
    assert!(
        pages.iter().any(|(n, next)| *n < 1000 && next.is_some()),
        "no page was cut short by its size: {pages:?}"
    );
    assert!(pages.len() >= JOBS / 1000, "{}", pages.len());
    let line = jobs.iter().find(|j| j.id == id(42)).unwrap();
    assert_eq!(
        (
            line.schedule.as_deref(),
            line.timezone.as_deref(),
            line.group.as_deref(),
            line.shards,
            line.paused
        ),
        (Some("@yearly"), Some("UTC"), Some("g2"), Some(1), false)
    );
    assert!(line.revision > 0 && line.invalid.is_none());
    let bad = jobs.iter().find(|j| j.id == "broken-2").unwrap();
    assert!(
        bad.invalid
            .as_deref()
            .unwrap()
            .starts_with("schedule: '61 * * * * *'"),
        "{bad:?}"
    );
    assert_eq!(
        (bad.schedule.as_deref(), bad.group.as_deref()),
        (None, None)
    );

    // The default page size, 100.
    let (jobs, pages) = walk(&api, ListRequest::default()).await;
    assert_ids(&jobs, &all, "default limit");
    assert!(pages.iter().all(|(n, _)| *n <= 100));
    assert!(pages.len() >= all.len() / 100, "{}", pages.len());

    // Filters.
    let g1: Vec<String> = (0..JOBS).filter(|i| i % 4 == 1).map(id).collect();
    let (jobs, _) = walk(
        &api,
        ListRequest {
            limit: Some(1000),
            group: Some("g1".into()),
            ..ListRequest::default()
        },
    )
    .await;
    assert_ids(&jobs, &g1, "group g1");
    assert!(jobs.iter().all(|j| j.group.as_deref() == Some("g1")));

    // One more paused through the API, next to those stored paused.
    api.pause(&id(3)).await.unwrap();
    let mut paused_ids: Vec<String> = (0..JOBS).filter(|&i| paused(i)).map(id).collect();
    paused_ids.push(id(3));
    paused_ids.sort();
    let (jobs, _) = walk(
        &api,
        ListRequest {
            state: Some(JobState::Paused),
            ..ListRequest::default()
        },
    )
    .await;
    assert_ids(&jobs, &paused_ids, "state paused");
    assert!(jobs.iter().all(|j| j.paused));

    let (jobs, _) = walk(
        &api,
        ListRequest {
            limit: Some(1),
            state: Some(JobState::Invalid),
            ..ListRequest::default()
        },
    )
    .await;
    assert_ids(
        &jobs,
        &["broken-1".to_string(), "broken-2".to_string()],
        "state invalid",
    );
    assert!(
        jobs[0]
            .invalid
            .as_deref()
            .unwrap()
            .starts_with("invalid JSON")
    );

    let active_g3: Vec<String> = (0..JOBS)
        .filter(|&i| i % 4 == 3 && !paused(i) && i != 3)
        .map(id)
        .collect();
    let (jobs, _) = walk(
        &api,
        ListRequest {
            limit: Some(500),
            group: Some("g3".into()),
            state: Some(JobState::Active),
            ..ListRequest::default()
        },
    )
    .await;
    assert_ids(&jobs, &active_g3, "group g3, active");

    // Past the last id: an empty last page. A cursor need not name a job.
    for cursor in [all.last().unwrap().as_str(), "zzz"] {
        let page = api
            .list_page(&ListRequest {
                cursor: Some(cursor.into()),
                ..ListRequest::default()
            })
            .await
            .unwrap();
        assert!(page.jobs.is_empty() && page.next.is_none(), "{page:?}");
    }
    let page = api
        .list_page(&ListRequest {
            cursor: Some("job-19997x".into()),
            ..ListRequest::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!((ids, page.next), (vec!["job-19998", "job-19999"], None));

    // The client's own walk, with a total.
    let mut pages = api
        .pages(ListRequest {
            limit: Some(300),
            ..ListRequest::default()
        })
        .total(1_234);
    let mut walked = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        walked.extend(page.jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(walked, all[..1_234].to_vec());
    assert_eq!(api.list().await.unwrap().jobs.len(), all.len());

    // Bad requests name the field.
    for (limit, start) in [
        (0, "limit: must be 1-1000, found 0"),
        (1001, "limit: must be 1-1000, found 1001"),
    ] {
        let m = refused(
            api.list_page(&ListRequest {
                limit: Some(limit),
                ..ListRequest::default()
            })
            .await,
        );
        assert!(m.starts_with(start), "{m}");
    }
    let m = refused(
        api.list_page(&ListRequest {
            cursor: Some("job.1".into()),
            ..ListRequest::default()
        })
        .await,
    );
    assert!(m.starts_with("cursor: 'job.1' is not a job id"), "{m}");
    let m = refused(
        api.call::<serde_json::Value>("job.list", r#"{"state":"running"}"#.into())
            .await,
    );
    assert!(
        m.starts_with("state: unknown variant `running`, expected one of"),
        "{m}"
    );
    let m = refused(
        api.call::<serde_json::Value>("job.list", r#"{"limit":"ten"}"#.into())
            .await,
    );
    assert!(m.starts_with("limit: invalid type"), "{m}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_follow_puts_and_deletes_at_once() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let counts = |s: &StatusReply| {
        (
            s.jobs.total,
            s.jobs.active,
            s.jobs.paused,
            s.jobs.invalid_count,
        )
    };
    let groups = |s: &StatusReply| -> Vec<(String, u64)> {
        s.groups.iter().map(|g| (g.group.clone(), g.jobs)).collect()
    };
    let status = api.status().await.unwrap();
    assert!(status.jobs.complete);
    assert_eq!(counts(&status), (0, 0, 0, 0));

    let put = |id: &str, group: &str| {
        format!(
            r#"{{"id":"{id}","schedule":"@yearly","group":"{group}","run":{{"shell":"true"}}}}"#
        )
    };
    api.put_raw(put("a", "billing").into()).await.unwrap();
    api.put_raw(put("b", "billing").into()).await.unwrap();
    api.put_raw(put("c", "default").into()).await.unwrap();
    api.pause("b").await.unwrap();
    harness::kv_put(&client, &names(), "d", put("d", "reports").as_bytes()).await;
    harness::kv_put(&client, &names(), "bad", b"[]").await;
    // Every write is answered, so the next status already counts it.
    let status = api.status().await.unwrap();
    assert_eq!(counts(&status), (5, 3, 1, 1));
    assert_eq!(
        groups(&status),
        vec![
            ("billing".to_string(), 2),
            ("default".to_string(), 1),
            ("reports".to_string(), 1)
        ]
    );
    assert_eq!(status.jobs.invalid[0].id, "bad");

    // A job moved to another group, deletes by API and straight in KV, a
    // fixed definition.
    api.put_raw(put("c", "billing").into()).await.unwrap();
    api.delete("a").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names().jobs_bucket()).await.unwrap();
    kv.delete("d").await.unwrap();
    kv.put("bad", put("bad", "default").into_bytes().into())
        .await
        .unwrap();
    let status = api.status().await.unwrap();
    assert_eq!(counts(&status), (3, 2, 1, 0));
    assert!(status.jobs.invalid.is_empty());
    assert_eq!(
        groups(&status),
        vec![("billing".to_string(), 2), ("default".to_string(), 1)]
    );

    // Many invalid definitions: the first ones by id are named, all counted.
    for i in 0..25 {
        harness::kv_put(&client, &names(), &format!("x{i:02}"), b"nope").await;
    }
    kv.purge("c").await.unwrap();
    let status = api.status().await.unwrap();
    assert_eq!(counts(&status), (27, 1, 1, 25));
    let named: Vec<String> = status.jobs.invalid.iter().map(|j| j.id.clone()).collect();
    let want: Vec<String> = (0..STATUS_INVALID_LISTED)
        .map(|i| format!("x{i:02}"))
        .collect();
    assert_eq!(named, want);
    let listed: BTreeSet<String> = api
        .list()
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed.len(), 27);
    assert!(!listed.contains("c") && listed.contains("bad"));

    // A replica started now reads the bucket before it counts.
    let b = Scheduler::start(&server.url(), "b");
    a.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        match api.status().await {
            Ok(s) if s.replicas.iter().any(|r| r.id == "b") => break s,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("replica b never answered: {other:?}"),
        }
    };
    assert!(status.jobs.complete);
    assert_eq!(counts(&status), (27, 1, 1, 25));
    b.stop().await;
}
