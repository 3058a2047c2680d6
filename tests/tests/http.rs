#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! HTTP jobs (`run.http`) against a real nats-server, real workers and a
//! real HTTP server on loopback, written here: it records every request
//! (method, path, headers, body) and answers each path as the test says:
//! a status and a body, a stall past the timeout, a connection closed in
//! the middle of the response or before it.
//!
//! Shard messages are published by the test, as in `worker.rs`; the last
//! test puts and triggers a job through a scheduler's API.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::api::{ClientError, TriggerRequest};
use jetcron_shared::setup::{self, SetupOptions};
use jetcron_shared::wire::{Cause, Event, EventBody, RunResult, RunStatus, ShardMessage};
use jetcron_shared::{Job, Names};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler, Worker};
use jetcron_worker::WorkerConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

/// Longest wait for anything a test expects; the machine is shared and slow.
const LIMIT: Duration = Duration::from_secs(45);

/// How the test server answers one request.
#[derive(Debug, Clone)]
enum Reply {
    /// This status, these headers and this body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// Never answers (until the test ends).
    Stall,
    /// Headers promising 1000 bytes, 10 of them, then the connection closes.
    CutBody(u16),
    /// Closes the connection without answering.
    Close,
}

fn ok(body: &str) -> Reply {
    Reply::Status(200, Vec::new(), body.to_string())
}

/// One request as the server read it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// With the query.
    target: String,
    /// Names in lower case.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Debug, Default)]
struct Answers {
    /// Per path (without the query), in order; once used up, `200 ok`.
    script: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Recorded>,
}

/// The HTTP server the jobs call.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
}

impl Target {
    async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let shared = answers.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, shared.clone()));
            }
        });
        Target { addr, answers }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests to `path` with `replies`, in order.
    fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.answers
            .lock()
            .unwrap()
            .script
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    fn seen(&self, path: &str) -> Vec<Recorded> {
        self.answers
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    /// Waits for the `n`th request to `path`.
    async fn wait_seen(&self, path: &str, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let seen = self.seen(path);
            if seen.len() >= n {
                return seen;
            }
            assert!(Instant::now() < deadline, "{n} requests to {path} not seen");
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads one request, records it, answers it as scripted, closes.
async fn serve(mut conn: TcpStream, answers: Arc<Mutex<Answers>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // A TLS handshake (a record of type 22): answer in plain HTTP,
        // as a server without TLS does.
        if buf.first() == Some(&0x16) {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let reply = {
        let mut a = answers.lock().unwrap();
        a.seen.push(Recorded {
            method,
            target,
            headers,
            body,
        });
        a.script
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| ok("ok"))
    };
    match reply {
        Reply::Status(code, extra, body) => {
            let mut text = format!(
                "HTTP/1.1 {code} Whatever\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in extra {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\n");
            text.push_str(&body);
            let _ = conn.write_all(text.as_bytes()).await;
        }
        Reply::Stall => sleep(Duration::from_secs(600)).await,
        Reply::CutBody(code) => {
            let text = format!("HTTP/1.1 {code} OK\r\ncontent-length: 1000\r\n\r\n0123456789");
            let _ = conn.write_all(text.as_bytes()).await;
            let _ = conn.flush().await;
            sleep(Duration::from_millis(50)).await;
        }
        Reply::Close => {}
    }
    let _ = conn.shutdown().await;
}

/// A server, its resources, a client, and subscriptions to results and events.
struct Env {
    server: NatsServer,
    js: jetstream::Context,
    names: Names,
    results: async_nats::Subscriber,
    events: async_nats::Subscriber,
}

impl Env {
    async fn start() -> Env {
        harness::init_tracing();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let names = Names::default();
        setup::ensure(&js, &names, &SetupOptions::default())
            .await
            .unwrap();
        let results = client.subscribe(names.results_all()).await.unwrap();
        let events = client.subscribe(names.events_all()).await.unwrap();
        client.flush().await.unwrap();
        Env {
            server,
            js,
            names,
            results,
            events,
        }
    }

    /// A worker without `--allow-shell`: HTTP jobs need none.
    fn config(&self, id: &str) -> WorkerConfig {
        WorkerConfig {
            allow_shell: false,
            ack_wait: Duration::from_secs(2),
            kill_grace: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            ..harness::worker_config(&self.server.url(), id)
        }
    }

    /// Publishes every shard of one fire of `job`.
    async fn dispatch(&self, job: &Job) -> DateTime<Utc> {
        let instant = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        for shard in 0..job.shard_count() {
            let msg = ShardMessage::new(job, instant, shard, 7, Cause::Schedule);
            timeout(
                LIMIT,
                self.js
                    .publish_with_headers(
                        self.names.work_subject(&msg.group, &msg.job),
                        msg.headers(),
                        msg.encode().into(),
                    )
                    .await
                    .unwrap(),
            )
            .await
            .expect("publish not acked in time")
            .unwrap();
        }
        instant
    }

    async fn result(&mut self) -> RunResult {
        let msg = timeout(LIMIT, self.results.next())
            .await
            .expect("no result in time")
            .expect("results subscription ended");
        RunResult::decode(&msg.payload).unwrap()
    }

    /// The next `n` results, by job and then attempt.
    async fn results(&mut self, n: usize) -> Vec<RunResult> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.result().await);
        }
        out.sort_by(|a, b| (&a.job, a.shard, a.attempt).cmp(&(&b.job, b.shard, b.attempt)));
        out
    }

    /// Fails if a result arrives within `quiet`.
    async fn no_more_results(&mut self, quiet: Duration) {
        if let Ok(Some(msg)) = timeout(quiet, self.results.next()).await {
            panic!(
                "unexpected result: {:?}",
                RunResult::decode(&msg.payload).unwrap()
            );
        }
    }

    /// The next `dead` event.
    async fn dead(&mut self) -> Event {
        let deadline = Instant::now() + LIMIT;
        loop {
            let msg = timeout(deadline - Instant::now(), self.events.next())
                .await
                .expect("no dead event in time")
                .expect("events subscription ended");
            let event = Event::decode(&msg.payload).unwrap();
            if event.kind() == "dead" {
                return event;
            }
        }
    }
}

fn job(def: Value) -> Job {
    Job::decode(&serde_json::to_vec(&def).unwrap(), None).unwrap()
}

#[tokio::test]
async fn an_http_shard_sends_its_context_and_reports_status_and_body() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script("/sync/eu", [ok("synced eu")]);
    target.script("/sync/us west", [ok("never: the path is encoded")]);
    target.script("/hook", [ok(&format!("{}END", "x".repeat(100)))]);
    let worker = Worker::start_with(WorkerConfig {
        max_output: 16,
        ..env.config("w1")
    });
    // Templates in the URL, a header and a JSON body.
    let templated = job(json!({
        "id": "sync", "schedule": "@hourly", "shards": ["eu", "us west"],
        "payload": {"batch": 5},
        "run": {"http": {
            "method": "PUT",
            "url": target.url("/sync/{{param}}?shard={{shard}}&of={{shards}}&try={{attempt}}"),
            "headers": {"X-Run": "{{run_id}}", "Authorization": "Bearer secret"},
            "body": {"job": "{{job}}", "shard": "{{shard}}", "data": "{{payload}}",
                     "note": "fire {{fire_id}} on {{worker}}"},
            "expect": [200, 201]
        }}
    }));
    // No body: the envelope, by POST.
    let enveloped = job(json!({
        "id": "hook", "schedule": "@hourly",
        "run": {"http": {"url": target.url("/hook")}}
    }));
    let at = env.dispatch(&templated).await;
    let hook_at = env.dispatch(&enveloped).await;
    let results = env.results(3).await;

    let (hook, eu, us) = (&results[0], &results[1], &results[2]);
    for r in &results {
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        assert_eq!(r.http_status, Some(200), "{r:?}");
        assert_eq!((r.exit_code, r.error.as_deref()), (None, None), "{r:?}");
        assert_eq!(r.worker, "w1");
    }
    assert_eq!(
        (eu.output.as_str(), eu.output_truncated),
        ("synced eu", false)
    );
    assert_eq!((us.output.as_str(), us.shard), ("ok", 1));
    // The tail of the body, bounded by --max-output.
    assert_eq!(hook.output, format!("{}END", "x".repeat(13)));
    assert!(hook.output_truncated);

    let seen = target.seen("/sync/eu");
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "PUT");
    assert_eq!(req.target, "/sync/eu?shard=0&of=2&try=1");
    assert_eq!(req.headers["x-run"], eu.run_id);
    assert_eq!(req.headers["authorization"], "Bearer secret");
    assert_eq!(req.headers["content-type"], "application/json");
    assert!(req.headers["user-agent"].starts_with("jetcron-worker/"));
    let fire = format!("sync:{}", at.timestamp_millis());
    assert_eq!(
        req.json(),
        json!({"job": "sync", "shard": 0, "data": {"batch": 5},
               "note": format!("fire {fire} on w1")})
    );
    // A parameter is one piece of the path, whatever it holds.
    assert_eq!(
        target.seen("/sync/us%20west")[0].target,
        "/sync/us%20west?shard=1&of=2&try=1"
    );
    assert!(target.seen("/sync/us west").is_empty());

    let req = &target.seen("/hook")[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(
        req.json(),
        json!({"job": "hook", "instant": hook_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
               "fire_id": format!("hook:{}", hook_at.timestamp_millis()), "shard": 0,
               "shards": 1, "param": null, "attempt": 1, "run_id": hook.run_id,
               "worker": "w1", "payload": null, "parent": null})
    );
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_failed_request_is_retried_and_then_succeeds() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script(
        "/flaky",
        [Reply::Status(503, Vec::new(), "busy".into()), ok("done")],
    );
    let worker = Worker::start_with(env.config("w1"));
    let j = job(json!({
        "id": "flaky", "schedule": "@hourly",
        "retry": {"max_attempts": 3, "backoff": ["200ms"]},
        "run": {"http": {"method": "GET", "url": target.url("/flaky?a={{attempt}}")}}
    }));
    env.dispatch(&j).await;
    let first = env.result().await;
    assert_eq!(
        (
            first.attempt,
            first.status,
            first.http_status,
            first.will_retry
        ),
        (1, RunStatus::Failed, Some(503), true)
    );
    assert_eq!(
        first.error.as_deref(),
        Some("status 503 Service Unavailable, expected 2xx")
    );
    assert_eq!(first.output, "busy");
    let second = env.result().await;
    assert_eq!(
        (
            second.attempt,
            second.status,
            second.http_status,
            second.will_retry
        ),
        (2, RunStatus::Succeeded, Some(200), false)
    );
    let seen = target.seen("/flaky");
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/flaky?a=1", "/flaky?a=2"]);
    // A GET has no envelope.
    assert!(seen.iter().all(|r| r.method == "GET" && r.body.is_empty()));
    env.no_more_results(Duration::from_millis(500)).await;
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn bad_statuses_redirects_and_broken_connections_fail_with_a_clear_error() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script(
        "/teapot",
        [Reply::Status(418, Vec::new(), "short and stout".into())],
    );
    target.script(
        "/moved",
        [Reply::Status(
            302,
            vec![("location", target.url("/elsewhere"))],
            String::new(),
        )],
    );
    target.script("/cut", [Reply::CutBody(200)]);
    target.script("/close", [Reply::Close]);
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let worker = Worker::start_with(env.config("w1"));
    let jobs = [
        ("a-teapot", target.url("/teapot"), json!([200])),
        ("b-moved", target.url("/moved"), json!([])),
        ("c-cut", target.url("/cut"), json!([])),
        ("d-close", target.url("/close"), json!([])),
        (
            "e-refused",
            format!("http://127.0.0.1:{closed}/x"),
            json!([]),
        ),
        // TLS to a server that speaks plain HTTP: the handshake fails.
        ("f-tls", format!("https://{}/tls", target.addr), json!([])),
    ];
    for (id, url, expect) in &jobs {
        env.dispatch(&job(json!({
            "id": id, "schedule": "@hourly",
            "run": {"http": {"url": url, "expect": expect}}
        })))
        .await;
    }
    let results = env.results(jobs.len()).await;
    for r in &results {
        assert_eq!(
            (r.status, r.will_retry),
            (RunStatus::Failed, false),
            "{r:?}"
        );
    }
    let error = |i: usize| results[i].error.clone().unwrap();
    assert_eq!(results[0].http_status, Some(418));
    assert_eq!(error(0), "status 418 I'm a teapot, expected 200");
    assert_eq!(results[0].output, "short and stout");

    assert_eq!(results[1].http_status, Some(302));
    assert_eq!(
        error(1),
        format!(
            "redirected (302 Found) to '{}'; redirects are not followed: call the final URL, \
             or list 302 in expect",
            target.url("/elsewhere")
        )
    );
    assert!(
        target.seen("/elsewhere").is_empty(),
        "a redirect was followed"
    );

    assert_eq!(results[2].http_status, Some(200));
    assert!(
        error(2).starts_with("the response (status 200) broke off before its end: "),
        "{}",
        error(2)
    );
    assert_eq!(results[2].output, "0123456789");

    for (i, want) in [
        (3, "the request failed to "),
        (4, "cannot connect to "),
        (5, "cannot connect (TCP or TLS handshake) to https://"),
    ] {
        assert_eq!(results[i].http_status, None);
        assert!(error(i).starts_with(want), "{i}: {}", error(i));
    }
    assert!(error(4).contains("Connection refused"), "{}", error(4));
    assert!(error(5).contains("corrupt message"), "{}", error(5));
    // Each was its job's last attempt: a dead event each.
    let mut dead = Vec::new();
    for _ in 0..jobs.len() {
        dead.push(env.dead().await.job().unwrap().to_string());
    }
    dead.sort();
    let ids: Vec<&str> = jobs.iter().map(|j| j.0).collect();
    assert_eq!(dead, ids);
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_request_past_its_timeout_is_timed_out_and_dead_after_its_last_attempt() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script("/slow", [Reply::Stall, Reply::Stall]);
    let worker = Worker::start_with(env.config("w1"));
    let j = job(json!({
        "id": "slow", "schedule": "@hourly", "timeout": "1m",
        "retry": {"max_attempts": 2, "backoff": ["100ms"]},
        "run": {"http": {"url": target.url("/slow"), "timeout": "1s"}}
    }));
    let at = env.dispatch(&j).await;
    let first = env.result().await;
    let second = env.result().await;
    for (r, attempt, will_retry) in [(&first, 1, true), (&second, 2, false)] {
        assert_eq!(
            (r.attempt, r.status, r.will_retry, r.http_status),
            (attempt, RunStatus::TimedOut, will_retry, None)
        );
        assert_eq!(
            r.error.as_deref(),
            Some("timed out after 1s waiting for the response")
        );
        let took = (r.finished_at - r.started_at).num_milliseconds();
        assert!((900..10_000).contains(&took), "{took} ms");
    }
    let dead = env.dead().await;
    match dead.body {
        EventBody::Dead {
            job,
            instant,
            attempts,
            status,
            run_id,
            ..
        } => {
            assert_eq!((job.as_str(), instant), ("slow", at));
            assert_eq!((attempts, status), (2, RunStatus::TimedOut));
            assert_eq!(run_id, second.run_id);
        }
        other => panic!("not a dead event: {other:?}"),
    }
    assert_eq!(target.seen("/slow").len(), 2);
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn operators_restrict_hosts_or_turn_http_jobs_off() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    let port = target.addr.port();
    let worker = Worker::start_with(WorkerConfig {
        allow_http_host: vec![format!("127.0.0.1:{port}"), "*.example.com".into()],
        ..env.config("w1")
    });
    let call = |id: &str, url: String| {
        job(json!({"id": id, "schedule": "@hourly", "run": {"http": {"url": url}}}))
    };
    env.dispatch(&call("allowed", target.url("/allowed"))).await;
    env.dispatch(&call("refused", format!("http://localhost:{port}/refused")))
        .await;
    let results = env.results(2).await;
    assert_eq!(
        (results[0].job.as_str(), results[0].status),
        ("allowed", RunStatus::Succeeded)
    );
    assert_eq!(
        (results[1].job.as_str(), results[1].status),
        ("refused", RunStatus::Failed)
    );
    assert_eq!(
        results[1].error.as_deref(),
        Some(
            format!(
                "host localhost:{port} is not allowed on worker w1 (--allow-http-host \
                 127.0.0.1:{port}, *.example.com)"
            )
            .as_str()
        )
    );
    assert!(target.seen("/refused").is_empty());
    worker.stop(LIMIT).await;

    let off = Worker::start_with(WorkerConfig {
        no_http: true,
        ..env.config("w2")
    });
    env.dispatch(&call("off", target.url("/off"))).await;
    let r = env.result().await;
    assert_eq!((r.status, r.http_status), (RunStatus::Failed, None));
    assert_eq!(
        r.error.as_deref(),
        Some("http jobs are disabled on worker w2: it was started with --no-http")
    );
    assert!(target.seen("/off").is_empty());
    off.stop(LIMIT).await;
}

#[tokio::test]
async fn a_worker_killed_mid_request_leaves_the_shard_to_another_that_runs_it_again() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script("/long", [Reply::Stall, ok("second time lucky")]);
    let first = Worker::start_with(env.config("w1"));
    let j = job(json!({
        "id": "long", "schedule": "@hourly",
        "run": {"http": {"url": target.url("/long")}}
    }));
    env.dispatch(&j).await;
    let seen = target.wait_seen("/long", 1).await;
    assert_eq!(seen[0].json()["attempt"], 1);
    first.kill();
    // Redelivered after the ack wait (2 s) to the other worker.
    let second = Worker::start_with(env.config("w2"));
    let r = env.result().await;
    assert_eq!(
        (r.worker.as_str(), r.attempt, r.status, r.http_status),
        ("w2", 2, RunStatus::Succeeded, Some(200))
    );
    assert_eq!(r.output, "second time lucky");
    let seen = target.seen("/long");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].json()["attempt"], 2);
    assert_eq!(seen[1].json()["run_id"], r.run_id);
    env.no_more_results(Duration::from_millis(500)).await;
    second.stop(LIMIT).await;
}

#[tokio::test]
async fn a_worker_stopping_mid_request_hands_the_shard_back() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script("/held", [Reply::Stall, ok("done")]);
    let first = Worker::start_with(WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..env.config("w1")
    });
    env.dispatch(&job(json!({
        "id": "held", "schedule": "@hourly",
        "run": {"http": {"url": target.url("/held")}}
    })))
    .await;
    target.wait_seen("/held", 1).await;
    // Stopped: the request is dropped and the shard handed back (no result).
    first.stop(LIMIT).await;
    let second = Worker::start_with(env.config("w2"));
    let r = env.result().await;
    assert_eq!(
        (r.worker.as_str(), r.attempt, r.status),
        ("w2", 2, RunStatus::Succeeded)
    );
    assert_eq!(target.seen("/held").len(), 2);
    second.stop(LIMIT).await;
}

/// A tracked job (`overlap: replace`) whose fire is replaced while its
/// request waits: the request is dropped, the shard ends `cancelled`, with
/// no retry, and its end notice is stored.
#[tokio::test]
async fn a_replaced_fire_stops_its_request_and_ends_cancelled() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    target.script("/replaced", [Reply::Stall]);
    let client = env.server.client().await;
    let mut ends = client.subscribe(env.names.ends_all()).await.unwrap();
    client.flush().await.unwrap();
    let worker = Worker::start_with(env.config("w1"));
    let j = job(json!({
        "id": "replaced", "schedule": "@hourly", "overlap": "replace",
        "retry": {"max_attempts": 3},
        "run": {"http": {"url": target.url("/replaced")}}
    }));
    let at = env.dispatch(&j).await;
    target.wait_seen("/replaced", 1).await;
    let by = at + chrono::TimeDelta::seconds(1);
    let event = Event::now(EventBody::Replaced {
        job: "replaced".into(),
        instant: at,
        by,
        epoch: 7,
    });
    timeout(
        LIMIT,
        env.js
            .publish(
                env.names.event_subject("replaced", Some("replaced")),
                event.encode().into(),
            )
            .await
            .unwrap(),
    )
    .await
    .expect("publish not acked in time")
    .unwrap();
    let r = env.result().await;
    assert_eq!(
        (r.status, r.will_retry, r.http_status),
        (RunStatus::Cancelled, false, None)
    );
    assert_eq!(
        r.error,
        Some(format!(
            "replaced by the fire of {}",
            by.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ))
    );
    let end = timeout(LIMIT, ends.next())
        .await
        .expect("no end notice in time")
        .unwrap();
    assert_eq!(RunResult::decode(&end.payload).unwrap().run_id, r.run_id);
    env.no_more_results(Duration::from_millis(500)).await;
    worker.stop(LIMIT).await;
}

#[tokio::test]
async fn a_job_put_through_the_api_is_validated_and_runs_when_triggered() {
    let mut env = Env::start().await;
    let target = Target::start().await;
    let scheduler = Scheduler::start(&env.server.url(), "s1");
    let client = env.server.client().await;
    let api = harness::api(&client, &env.names).await;
    let worker = Worker::start_with(env.config("w1"));

    let bad = json!({"id": "bad", "schedule": "@manual",
                     "run": {"http": {"url": "ftp://example.com/x"}}});
    match api.put_raw(serde_json::to_vec(&bad).unwrap().into()).await {
        Err(ClientError::Api(e)) => assert_eq!(
            e.message,
            "run.http.url: 'ftp://example.com/x': scheme 'ftp' is not http or https"
        ),
        other => panic!("not refused: {other:?}"),
    }
    let bad = json!({"id": "bad", "schedule": "@manual",
                     "run": {"http": {"url": "http://h/", "expect": [700]}}});
    match api.put_raw(serde_json::to_vec(&bad).unwrap().into()).await {
        Err(ClientError::Api(e)) => assert_eq!(
            e.message,
            "run.http.expect[0]: 700 is not an HTTP status code (100-599)"
        ),
        other => panic!("not refused: {other:?}"),
    }

    let good = json!({"id": "ping", "schedule": "@manual", "shards": 2,
                      "run": {"http": {"url": target.url("/ping/{{shard}}")}}});
    api.put_raw(serde_json::to_vec(&good).unwrap().into())
        .await
        .unwrap();
    let fired = api
        .trigger(&TriggerRequest {
            id: "ping".into(),
            shards: None,
            payload: Some(json!({"why": "test"})),
        })
        .await
        .unwrap();
    let results = env.results(2).await;
    for (shard, r) in results.iter().enumerate() {
        assert_eq!(
            (r.shard, r.status, r.http_status),
            (shard as u32, RunStatus::Succeeded, Some(200))
        );
        assert_eq!(r.instant, fired.instant);
        let req = &target.seen(&format!("/ping/{shard}"))[0];
        assert_eq!(req.json()["payload"], json!({"why": "test"}));
    }
    worker.stop(LIMIT).await;
    scheduler.stop().await;
}
