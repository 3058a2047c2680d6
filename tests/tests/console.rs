#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The web console, in a real headless Chromium against a real scheduler,
//! worker and nats-server: every page loads, a job is paused, resumed,
//! triggered with shards and a payload, a failed fire retried and a job
//! deleted from the pages, and the runs appear live. And the ways in: a
//! viewer token sees no actions; NATS users act with their own
//! permissions, which the server enforces.
//!
//! With `JETCRON_SCREENSHOTS=<dir>` the browser test saves the jobs page
//! and a job's page there (the ones in `docs/`).

use std::net::SocketAddr;
use std::time::Duration;

use jetcron_scheduler::console::ConsoleConfig;
use jetcron_shared::api::{ClientError, ErrorCode};
use jetcron_tests::NatsServer;
use jetcron_tests::browser::Browser;
use jetcron_tests::harness::{self, Scheduler, Worker};
use jetcron_tests::stack::{LIMIT, Stack};
use jetcron_tests::users::{as_role, users_conf};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

const OPERATOR: &str = "operator-secret-0123456789";
const VIEWER: &str = "viewer-secret-0123456789";

/// A loopback address nobody listens on right now.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits until the console answers its page.
async fn console_up(addr: SocketAddr) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the console never answered");
        sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("JETCRON_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, b.screenshot().await).unwrap();
    }
}

/// Shows `hash` (`#/jobs`) in the page without reloading it.
async fn visit(b: &Browser, hash: &str) {
    b.script("location.hash = arguments[0];", json!([hash]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_jobs_runs_workers_and_events_and_acts_on_them() {
    let addr = free_addr();
    let stack = Stack::start_configured(|c| {
        c.console = Some(ConsoleConfig {
            addr,
            tokens: vec![
                format!("operator:{OPERATOR}").parse().unwrap(),
                format!("viewer:{VIEWER}").parse().unwrap(),
            ],
            nats_login: false,
        });
    })
    .await;
    let worker = Worker::start_with(jetcron_worker::WorkerConfig {
        allow_shell: true,
        ..stack.worker_config("w1")
    });
    stack
        .put(json!({
            "id": "report",
            "schedule": "0 6 * * *",
            "timezone": "Europe/Berlin",
            "shards": 2,
            "run": {"shell": "echo report shard $JETCRON_SHARD; echo \"payload=$JETCRON_PAYLOAD\""},
        }))
        .await;
    stack
        .put(json!({
            "id": "flaky",
            "schedule": "@yearly",
            "run": {"shell": "echo about to fail; exit 3"},
        }))
        .await;
    harness::kv_put(&stack.client, &stack.names, "broken", b"{not json").await;
    console_up(addr).await;
    let b = Browser::start().await;
    b.goto(&format!("http://{addr}/")).await;

    // A wrong token is refused on the page; the operator's signs in.
    b.wait_for("#token", LIMIT).await;
    b.type_into("#token", "not-the-token-at-all").await;
    b.click("#token-login").await;
    let why = b.wait_for("#login-error:not(:empty)", LIMIT).await;
    assert!(why.contains("not a console token"), "{why}");
    b.type_into("#token", OPERATOR).await;
    b.click("#token-login").await;

    // Jobs: schedule, zone, next fires, state, and an invalid job's error.
    let row = b.wait_for("#jobs tr[data-job='report']", LIMIT).await;
    assert!(
        row.contains("0 6 * * *") && row.contains("Europe/Berlin"),
        "{row}"
    );
    let next = b
        .script(
            "return document.querySelectorAll(\"#jobs tr[data-job='report'] td:nth-child(4) div\").length;",
            json!([]),
        )
        .await;
    assert_eq!(next, json!(2), "two next fires shown");
    let state = b
        .wait_for("#jobs tr[data-job='report'] .job-state", LIMIT)
        .await;
    assert!(state.starts_with("active"), "{state}");
    let broken = b
        .wait_for("#jobs tr[data-job='broken'] .job-state", LIMIT)
        .await;
    assert!(
        broken.starts_with("invalid") && broken.contains("JSON"),
        "{broken}"
    );
    assert!(b.wait_for("#who", LIMIT).await.contains("operator"));
    screenshot(&b, "console-jobs.png").await;

    // A job's page: pause and resume.
    b.click("#jobs tr[data-job='report'] a").await;
    assert_eq!(b.wait_for("#job-title", LIMIT).await, "report");
    b.wait_for("#pause:not([hidden])", LIMIT).await;
    b.click("#pause").await;
    b.wait_until(
        "the job shown paused",
        "return document.querySelector('#job-state')?.innerText === 'paused';",
        json!([]),
        LIMIT,
    )
    .await;
    let stored = stack.api.get("report").await.unwrap();
    assert!(stored.job.unwrap().paused, "paused through the API");
    b.wait_for("#resume:not([hidden])", LIMIT).await;
    b.click("#resume").await;
    b.wait_for("#pause:not([hidden])", LIMIT).await;
    assert!(!stack.api.get("report").await.unwrap().job.unwrap().paused);

    // Trigger shard 1 with a payload: the fire appears, then its result,
    // live (the page is never reloaded: the marker survives).
    b.script("window.stillTheSamePage = true;", json!([])).await;
    b.type_into("#trigger-shards", "1").await;
    b.type_into("#trigger-payload", r#"{"region": "eu"}"#).await;
    b.click("#trigger").await;
    let output = b
        .wait_until(
            "the triggered fire's result",
            "const f = document.querySelector(\"#runs tr.fire[data-state='succeeded']\");
             const o = document.querySelector('#runs tr.shard pre.output');
             return f && o ? o.innerText : null;",
            json!([]),
            LIMIT,
        )
        .await;
    let output = output.as_str().unwrap();
    assert!(output.contains("report shard 1"), "{output}");
    assert!(output.contains(r#"payload={"region":"eu"}"#), "{output}");
    let shards = b
        .script(
            "return document.querySelectorAll('#runs tr.shard').length;",
            json!([]),
        )
        .await;
    assert_eq!(shards, json!(1), "only the shard asked for ran");
    let same = b
        .script("return window.stillTheSamePage === true;", json!([]))
        .await;
    assert_eq!(same, json!(true), "the page was not reloaded");
    let shard = b.wait_for("#runs tr.shard", LIMIT).await;
    assert!(
        shard.contains("attempt 1") && shard.contains("on w1"),
        "{shard}"
    );
    screenshot(&b, "console-job.png").await;

    // A failing job: trigger, see it fail, retry its failed shard.
    visit(&b, "#/job/flaky").await;
    b.wait_for("#trigger", LIMIT).await;
    b.click("#trigger").await;
    b.wait_for("#runs tr.fire[data-state='failed'] .retry", LIMIT)
        .await;
    let failed = stack.api.runs("flaky", None).await.unwrap().runs[0]
        .fire_id
        .clone();
    b.click("#runs tr.fire[data-state='failed'] .retry").await;
    let retry = b
        .wait_until(
            "the retry's fire",
            "const r = [...document.querySelectorAll('#runs tr.fire')].find(t => t.innerText.includes('retry of'));
             return r ? r.innerText : null;",
            json!([]),
            LIMIT,
        )
        .await;
    assert!(retry.as_str().unwrap().contains(&failed), "{retry}");
    let runs = stack.api.runs("flaky", None).await.unwrap().runs;
    assert_eq!(runs[0].retry_of.as_deref(), Some(failed.as_str()));

    // Delete takes a second click, then the job is gone.
    b.click("#delete").await;
    assert!(
        stack.api.get("flaky").await.is_ok(),
        "one click deletes nothing"
    );
    b.click("#delete-confirm").await;
    b.wait_for("#jobs tr[data-job='report']", LIMIT).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        match stack.api.get("flaky").await {
            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => break,
            other => assert!(Instant::now() < deadline, "flaky still there: {other:?}"),
        }
        sleep(Duration::from_millis(100)).await;
    }

    // Workers and schedulers.
    visit(&b, "#/workers").await;
    let w = b.wait_for("#workers tr[data-worker='w1']", LIMIT).await;
    assert!(w.contains("default"), "{w}");
    assert!(
        b.wait_for("#replicas tbody tr", LIMIT)
            .await
            .contains("leader")
    );

    // The live feed has what happened since the page opened.
    visit(&b, "#/events").await;
    let triggered = b
        .wait_until(
            "a triggered event and a result in the feed",
            "const rows = [...document.querySelectorAll('#feed tr.event')];
             const t = rows.find(r => r.innerText.includes('triggered') && r.dataset.job === 'report');
             const res = document.querySelector(\"#feed tr.result[data-job='report']\");
             return t && res ? res.innerText : null;",
            json!([]),
            LIMIT,
        )
        .await;
    assert!(
        triggered.as_str().unwrap().contains("succeeded"),
        "{triggered}"
    );

    // A viewer sees everything and can change nothing.
    b.click("#logout").await;
    b.wait_for("#token", LIMIT).await;
    b.type_into("#token", VIEWER).await;
    b.click("#token-login").await;
    b.wait_until(
        "the viewer signed in",
        "return document.querySelector('#who').innerText.includes('viewer');",
        json!([]),
        LIMIT,
    )
    .await;
    visit(&b, "#/job/report").await;
    b.wait_for("#runs tr.fire", LIMIT).await;
    assert!(!b.has("#pause").await && !b.has("#trigger").await && !b.has("#delete").await);
    // And the console refuses a viewer's action however it is sent.
    let http = reqwest::Client::new();
    let (_, _, cookie) = post(
        &http,
        format!("http://{addr}/login"),
        None,
        json!({"token": VIEWER}),
    )
    .await;
    let (status, body, _) = post(
        &http,
        format!("http://{addr}/api/call/job.pause"),
        cookie.as_deref(),
        json!({"id": "report"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["message"],
        "viewer token is a viewer: job.pause needs an operator"
    );
    assert!(!stack.api.get("report").await.unwrap().job.unwrap().paused);

    b.close().await;
    worker.stop(Duration::from_secs(10)).await;
}

/// One console HTTP exchange: status and JSON body.
async fn post(
    http: &reqwest::Client,
    url: String,
    cookie: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let mut req = http
        .post(url)
        .header("x-jetcron", "1")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        cookie,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_users_sign_in_and_act_with_their_own_permissions() {
    harness::init_tracing();
    let server = NatsServer::start_with_config(&users_conf()).await;
    let addr = free_addr();
    let scheduler = Scheduler::start_with(jetcron_scheduler::SchedulerConfig {
        connect: as_role(&server, "scheduler"),
        console: Some(ConsoleConfig {
            addr,
            tokens: Vec::new(),
            nats_login: true,
        }),
        ..harness::scheduler_config(&server.url(), "s1")
    });
    let operator = as_role(&server, "operator")
        .connect("test operator", jetcron_shared::connect::Patience::FailFast)
        .await
        .unwrap();
    let api = harness::api(&operator, &jetcron_shared::Names::default()).await;
    api.put_raw(
        json!({"id": "nightly", "schedule": "@daily", "run": {"shell": "true"}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    console_up(addr).await;
    let http = reqwest::Client::new();
    let login = format!("http://{addr}/login");
    let call = |ep: &str| format!("http://{addr}/api/call/{ep}");

    // Refusals name what is wrong.
    let (status, body, _) = post(
        &http,
        login.clone(),
        None,
        json!({"user": "operator", "password": "wrong"}),
    )
    .await;
    assert_eq!(status, 401);
    let why = body["error"]["message"].as_str().unwrap();
    assert!(why.contains("did not accept user operator"), "{why}");
    let (status, body, _) = post(
        &http,
        login.clone(),
        None,
        json!({"token": "operator-secret-0123456789"}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "token: this console takes no tokens"
    );
    let (status, body, _) = post(
        &http,
        login.clone(),
        None,
        json!({"user": "operator", "pasword": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pasword"),
        "{body}"
    );
    let r = http
        .post(&login)
        .body(json!({"user": "operator", "password": "pw-operator"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "no x-jetcron header, no sign-in");

    // The viewer signs in and follows the live feed as itself.
    let (status, body, cookie) = post(
        &http,
        login.clone(),
        None,
        json!({"user": "viewer", "password": "pw-viewer"}),
    )
    .await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("viewer")),
        "{body}"
    );
    let viewer = cookie.unwrap();
    let mut feed = http
        .get(format!("http://{addr}/api/feed"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status().as_u16(), 200);
    // A feed of something that is not a job id is refused, quoting it briefly.
    let bad = http
        .get(format!("http://{addr}/api/feed?job={}", "x.".repeat(300)))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let why: Value = serde_json::from_str(&bad.text().await.unwrap()).unwrap();
    let why = why["error"]["message"].as_str().unwrap();
    assert!(why.starts_with("job: 'x.x.") && why.len() < 200, "{why}");

    // The operator pauses; the viewer's feed shows it.
    let (status, body, cookie) = post(
        &http,
        login.clone(),
        None,
        json!({"user": "operator", "password": "pw-operator"}),
    )
    .await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("operator")),
        "{body}"
    );
    let op = cookie.unwrap();
    let (status, body, _) = post(
        &http,
        call("job.pause"),
        Some(&op),
        json!({"id": "nightly"}),
    )
    .await;
    assert_eq!((status, body["ok"].as_bool()), (200, Some(true)), "{body}");
    assert!(api.get("nightly").await.unwrap().job.unwrap().paused);

    let mut seen = String::new();
    let deadline = Instant::now() + LIMIT;
    while !(seen.contains("event: event") && seen.contains(r#""kind":"paused""#)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, feed.chunk())
            .await
            .unwrap_or_else(|_| panic!("no paused event in the viewer's feed: {seen:?}"))
            .unwrap()
            .expect("the feed stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    // The viewer reads, and the NATS server refuses its resume.
    let (status, body, _) = post(
        &http,
        call("job.get"),
        Some(&viewer),
        json!({"id": "nightly"}),
    )
    .await;
    assert_eq!(
        (status, body["job"]["paused"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (status, body, _) = post(
        &http,
        call("job.resume"),
        Some(&viewer),
        json!({"id": "nightly"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let why = body["error"]["message"].as_str().unwrap();
    assert!(
        why.contains("refused user viewer") && why.contains("jetcron.api.job.resume"),
        "{why}"
    );
    assert!(
        api.get("nightly").await.unwrap().job.unwrap().paused,
        "still paused"
    );

    // Signed out, the cookie opens nothing.
    let (status, _, _) = post(&http, format!("http://{addr}/logout"), Some(&op), json!({})).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(&http, call("job.get"), Some(&op), json!({"id": "nightly"})).await;
    assert_eq!(status, 401);
    scheduler.stop().await;
}
