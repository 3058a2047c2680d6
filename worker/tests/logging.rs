#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The `jetcron-worker` binary's log output, read from its stderr (a pipe,
//! not a terminal): plain text without escape codes by default, one JSON
//! object per line with `--log-format json`. It is pointed at a port where
//! no server listens, so it logs its start and its retries, and is then
//! stopped.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What the worker wrote to stderr in its first second and a half.
fn stderr_of(args: &[&str]) -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetcron-worker"))
        .args([
            "--nats-url",
            &format!("nats://127.0.0.1:{port}"),
            "--id",
            "w-log",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("JETCRON_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child.wait().unwrap();
    text
}

#[test]
fn text_logs_to_a_pipe_have_no_escape_codes() {
    let text = stderr_of(&[]);
    assert!(text.contains("worker starting"), "{text}");
    assert!(text.contains("id=\"w-log\""), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in {text:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let text = stderr_of(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "worker starting")
        .unwrap_or_else(|| panic!("no start line in {text}"));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["fields"]["id"], "w-log");
    assert!(start["timestamp"].is_string(), "{start}");
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_jetcron-worker"))
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'")
            && err.contains("[possible values: text, json]"),
        "{err}"
    );
}
