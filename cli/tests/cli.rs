//! The `jetcron` binary end to end against a real nats-server and scheduler.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::process::{Command, Output};

use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler};

fn jetcron(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jetcron"))
        .arg("--nats-url")
        .arg(url)
        .args(args)
        .output()
        .expect("run jetcron")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_commands_end_to_end() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let sched = Scheduler::start(&server.url(), "a");
    harness::api(&client, &jetcron_shared::Names::default()).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();

    let good = dir.path().join("good.json");
    std::fs::File::create(&good)
        .unwrap()
        .write_all(br#"{"id":"report","schedule":"0 30 6 * * MON-FRI","timezone":"Europe/Berlin","shards":["eu","us"],"run":{"shell":"echo hi"}}"#)
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        let good = good.clone();
        move || jetcron(&url, &["job", "put", "-f", good.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("job report created (revision "),
        "{}",
        text(&out.stdout)
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        br#"{"id":"oops","schedule":"0 0 25 * * *","run":{"shell":"x"}}"#,
    )
    .unwrap();
    let (u, b) = (url.clone(), bad.clone());
    let out = tokio::task::spawn_blocking(move || {
        jetcron(&u, &["job", "put", "-f", b.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "jetcron: schedule: '0 0 25 * * *': hour must be 0-23"
    );

    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || jetcron(&u, &["job", "ls"]))
        .await
        .unwrap();
    assert!(out.status.success());
    let ls = text(&out.stdout);
    let lines: Vec<_> = ls.lines().collect();
    assert!(lines[0].starts_with("ID"), "{ls}");
    assert!(
        lines[1].starts_with("report")
            && lines[1].contains("Europe/Berlin")
            && lines[1].ends_with("active"),
        "{ls}"
    );
    assert_eq!(lines.len(), 2, "{ls}");

    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || jetcron(&u, &["--json", "job", "get", "report"]))
        .await
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["job"]["shards"], serde_json::json!(["eu", "us"]));

    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || jetcron(&u, &["job", "rm", "report"]))
        .await
        .unwrap();
    assert!(out.status.success());
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || jetcron(&u, &["job", "get", "report"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "jetcron: job 'report' does not exist"
    );

    let missing = dir.path().join("missing.json");
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        jetcron(&u, &["job", "put", "-f", missing.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
    sched.stop().await;

    // No server at all: a clear one-line error and exit code 3.
    drop(server);
    let out = tokio::task::spawn_blocking(move || jetcron(&url, &["job", "ls"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("jetcron: cannot connect to NATS"), "{err}");
}
