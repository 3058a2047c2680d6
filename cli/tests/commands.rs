//! The operating commands end to end: pause/resume, trigger, next, runs,
//! status, workers, against a real nats-server, scheduler and worker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::{Deployment, jetcron};
use jetcron_shared::JobSpec;
use jetcron_tests::harness::Worker;

async fn put(d: &Deployment, json: &str) {
    let spec = JobSpec::decode(json.as_bytes()).unwrap();
    d.api.put(&spec).await.unwrap();
}

/// Runs the command until `done` holds for its output (at most `limit`).
async fn eventually(
    url: &str,
    args: &[&str],
    limit: Duration,
    done: impl Fn(&common::Run) -> bool,
) -> common::Run {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let out = jetcron(url, args).await;
        if done(&out) {
            return out;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting on jetcron {args:?}; last run: {out:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume() {
    let d = Deployment::start().await;
    let url = d.url();
    put(
        &d,
        r#"{"id":"tick","schedule":"@every 1s","run":{"shell":"true"}}"#,
    )
    .await;

    let out = jetcron(&url, &["job", "pause", "tick"]).await;
    out.ok();
    assert!(
        out.stdout.starts_with("job tick paused (revision "),
        "{out:#?}"
    );
    let out = jetcron(&url, &["job", "pause", "tick"]).await;
    out.ok();
    assert_eq!(out.stdout, "job tick was paused already\n");

    let out = jetcron(&url, &["job", "ls"]).await;
    out.ok();
    let line = out.lines()[1].to_string();
    assert!(
        line.starts_with("tick") && line.ends_with("paused"),
        "{out:#?}"
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = jetcron(&url, &["--json", "job", "resume", "tick"]).await;
    out.ok();
    let v = out.json();
    assert_eq!(v["changed"], true);
    assert!(v["skipped"].as_u64().unwrap() >= 1, "{v}");
    let out = jetcron(&url, &["job", "resume", "tick"]).await;
    out.ok();
    assert_eq!(out.stdout, "job tick was not paused\n");

    let out = jetcron(&url, &["job", "pause", "nope"]).await;
    out.expect_code(1);
    assert_eq!(out.error_line(), "jetcron: job 'nope' does not exist");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_and_runs() {
    let d = Deployment::start().await;
    let url = d.url();
    let worker = Worker::start(&url, "w1");
    put(
        &d,
        r#"{"id":"hello","schedule":"@yearly","shards":3,
            "run":{"shell":"echo shard $JETCRON_SHARD $JETCRON_PAYLOAD"}}"#,
    )
    .await;

    let out = jetcron(
        &url,
        &[
            "job",
            "trigger",
            "hello",
            "--shard",
            "0,2",
            "--payload",
            r#"{"a":1}"#,
        ],
    )
    .await;
    out.ok();
    assert!(
        out.stdout.starts_with("job hello triggered: fire hello:"),
        "{out:#?}"
    );
    assert!(out.stdout.trim_end().ends_with("shards 0,2)"), "{out:#?}");

    let out = eventually(
        &url,
        &["job", "runs", "hello"],
        Duration::from_secs(20),
        |o| o.stdout.contains("succeeded"),
    )
    .await;
    let lines = out.lines();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["FIRE", "INSTANT", "CAUSE", "STATE", "SHARDS", "DURATION"]
    );
    assert!(lines[1].starts_with("hello:"), "{out:#?}");
    assert!(
        lines[1].contains("manual") && lines[1].contains("0:ok 2:ok"),
        "{out:#?}"
    );
    // With --output, each shard's output follows the table.
    let out = jetcron(&url, &["job", "runs", "hello", "--output"]).await;
    out.ok();
    let fire = lines[1].split_whitespace().next().unwrap();
    for shard in [0, 2] {
        let at = format!("{fire} shard {shard} (ok)\n  shard {shard} {{\"a\":1}}\n");
        assert!(out.stdout.contains(&at), "{at:?} in {out:#?}");
    }

    let out = jetcron(&url, &["--json", "job", "trigger", "hello"]).await;
    out.ok();
    let fire_id = out.json()["fire_id"].as_str().unwrap().to_string();
    let out = eventually(
        &url,
        &["--json", "job", "runs", "hello", "--limit", "1"],
        Duration::from_secs(20),
        |o| o.code == Some(0) && o.json()["runs"][0]["state"] == "succeeded",
    )
    .await;
    let v = out.json();
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["runs"][0]["fire_id"], fire_id.as_str());

    // A fire with nothing failed: the API refuses a retry, and says why.
    let out = jetcron(&url, &["job", "retry", "hello", &fire_id]).await;
    out.expect_code(1);
    assert!(
        out.error_line()
            .contains("no failed, timed-out or expired shard to retry"),
        "{out:#?}"
    );

    // Local input errors come before any request.
    let out = jetcron(&url, &["job", "trigger", "hello", "--payload", "{nope"]).await;
    out.expect_code(2);
    assert!(
        out.error_line().contains("--payload is not JSON"),
        "{out:#?}"
    );
    let out = jetcron(&url, &["job", "trigger", "nope"]).await;
    out.expect_code(1);
    worker.stop(Duration::from_secs(10)).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_instants_in_utc_and_local_time() {
    let d = Deployment::start().await;
    let url = d.url();
    put(
        &d,
        r#"{"id":"berlin","schedule":"0 30 6 * * *","timezone":"Europe/Berlin",
            "run":{"shell":"true"}}"#,
    )
    .await;
    let out = jetcron(&url, &["job", "next", "berlin", "-n", "3"]).await;
    out.ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 4, "{out:#?}");
    assert_eq!(
        lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        ["UTC", "LOCAL (Europe/Berlin)", "WHEN"]
    );
    for line in &lines[1..] {
        assert!(line.contains("T06:30:00+0"), "{line}");
        assert!(line.contains(" in "), "{line}");
    }
    let out = jetcron(&url, &["--json", "job", "next", "berlin"]).await;
    out.ok();
    assert_eq!(out.json()["instants"].as_array().unwrap().len(), 5);
    jetcron(&url, &["job", "next", "berlin", "-n", "0"])
        .await
        .expect_code(2);
    jetcron(&url, &["job", "next", "nope"]).await.expect_code(1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_leader_jobs_and_groups() {
    let d = Deployment::start().await;
    let url = d.url();
    put(
        &d,
        r#"{"id":"a","schedule":"@yearly","run":{"shell":"true"}}"#,
    )
    .await;
    jetcron_tests::harness::kv_put(
        &d.client,
        &jetcron_shared::Names::default(),
        "broken",
        br#"{"id":"broken","schedule":"nope","run":{"shell":"x"}}"#,
    )
    .await;
    let out = eventually(&url, &["status"], Duration::from_secs(10), |o| {
        o.code == Some(0) && o.stdout.starts_with("leader:   a (epoch ")
    })
    .await;
    let text = &out.stdout;
    assert!(
        text.contains("\njobs:     2 (1 active, 0 paused, 1 invalid)\n"),
        "{text}"
    );
    assert!(text.contains("\ninvalid:  broken: schedule: "), "{text}");
    assert!(text.contains("\nREPLICA "), "{text}");
    let out = jetcron(&url, &["--json", "status"]).await;
    out.ok();
    assert_eq!(out.json()["leader"]["holder"], "a");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_live_workers() {
    let d = Deployment::start().await;
    let url = d.url();
    let worker = Worker::start(&url, "w1");
    let out = eventually(&url, &["workers"], Duration::from_secs(15), |o| {
        o.code == Some(0) && o.stdout.lines().any(|l| l.starts_with("w1 "))
    })
    .await;
    assert_eq!(
        out.lines()[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "GROUP",
            "HOST",
            "VERSION",
            "CONCURRENCY",
            "RUNNING",
            "HEARTBEAT",
            "HANDLERS"
        ]
    );
    let w1 = out
        .lines()
        .iter()
        .find(|l| l.starts_with("w1 "))
        .cloned()
        .unwrap();
    assert_eq!(w1.split_whitespace().last(), Some("-"), "{w1}");
    let out = jetcron(&url, &["--json", "workers"]).await;
    out.ok();
    assert_eq!(out.json()["workers"][0]["id"], "w1");
    worker.stop(Duration::from_secs(10)).await;
    d.stop().await;
}

/// Kills a child process when dropped; forgotten once it was waited for.
struct Reap(nix::unistd::Pid);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `watch JOB` shows that job's events (and no other job's), one line each,
/// and Ctrl-C ends it with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_one_job_until_ctrl_c() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    use jetcron_shared::Names;
    use jetcron_shared::wire::{Event, EventBody};

    let d = Deployment::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetcron"))
        .args(["--nats-url", &d.url(), "watch", "hello"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    // A failed assertion must not leave the watcher running: it holds the
    // test's output pipe open and the test run would never end.
    let reap = Reap(pid);
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let names = Names::default();
    let other = Event::now(EventBody::Paused {
        job: "other".into(),
        revision: 1,
    });
    let mine = Event::now(EventBody::Resumed {
        job: "hello".into(),
        revision: 2,
        skipped: 3,
    });
    // The watcher subscribes at some point after it starts: publish until
    // it shows the line (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        for (subject, event) in [
            (names.event_subject("paused", Some("other")), &other),
            (names.event_subject("resumed", Some("hello")), &mine),
        ] {
            d.client
                .publish(subject, event.encode().into())
                .await
                .unwrap();
        }
        d.client.flush().await.unwrap();
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            assert!(!line.contains("other"), "{line}");
            if line.contains("hello") {
                break line;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch printed nothing about hello"
        );
    };
    assert!(
        line.ends_with("resumed   hello resumed (revision 2); 3 fires skipped while paused"),
        "{line}"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("watch did not stop on Ctrl-C")
    .unwrap()
    .unwrap();
    // Waited for: its pid may be reused from here on.
    std::mem::forget(reap);
    assert_eq!(status.code(), Some(0));
    while let Ok(line) = rx.try_recv() {
        assert!(!line.contains("other"), "{line}");
    }
    d.stop().await;
}

/// No scheduler with this prefix: one clear line and exit code 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answering_is_exit_code_3() {
    let d = Deployment::start().await;
    let url = d.url();
    let out = jetcron(&url, &["--prefix", "other", "job", "ls"]).await;
    out.expect_code(3);
    assert_eq!(
        out.error_line(),
        "jetcron: nothing answers other.api.job.list (no responders): is a jetcron scheduler \
         running with this --prefix, and recent enough for this command?"
    );
    d.stop().await;
}
