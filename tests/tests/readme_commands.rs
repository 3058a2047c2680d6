#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The README's "Operating jetcron with the nats CLI" section, run: every
//! `nats req SUBJECT 'BODY'` line in it is sent as a raw NATS request (as the
//! `nats` CLI would send it, no jetcron client involved), in order, against a
//! real server and scheduler, and must succeed. So the documented commands
//! cannot drift from the API.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jetcron_shared::Names;
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler};
use serde_json::Value;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
const SECTION: &str = "## Operating jetcron with the nats CLI";
/// Fewer commands than this means the section lost its content.
const MIN_COMMANDS: usize = 10;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One documented request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    line: String,
    subject: String,
    body: String,
}

/// The lines of the section: from its heading to the next `## ` heading.
fn section(readme: &str) -> Vec<&str> {
    readme
        .lines()
        .skip_while(|l| l.trim_end() != SECTION)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

/// `nats req SUBJECT 'BODY'`, optionally followed by a `# comment`; the body
/// `"$(cat FILE)"` is read from FILE (relative to the workspace). Other lines
/// are not requests: None.
fn parse(line: &str) -> Option<Command> {
    let rest = line.trim().strip_prefix("nats req ")?.trim_start();
    let (subject, rest) = rest.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (body, tail) = if let Some(r) = rest.strip_prefix("\"$(cat ") {
        let (file, tail) = r.split_once(")\"")?;
        let path = workspace().join(file.trim());
        let body = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{line}: cannot read {}: {e}", path.display()));
        (body, tail)
    } else {
        let r = rest.strip_prefix('\'')?;
        let (body, tail) = r.split_once('\'')?;
        (body.to_string(), tail)
    };
    let tail = tail.trim();
    if !(tail.is_empty() || tail.starts_with('#')) {
        return None;
    }
    Some(Command {
        line: line.trim().to_string(),
        subject: subject.to_string(),
        body,
    })
}

fn commands() -> Vec<Command> {
    let readme = std::fs::read_to_string(README).expect("README.md");
    let lines = section(&readme);
    assert!(!lines.is_empty(), "README.md has no section {SECTION:?}");
    lines.into_iter().filter_map(parse).collect()
}

#[test]
fn the_parser_reads_single_quoted_bodies_and_files() {
    let c = parse(r#"nats req jetcron.api.job.get '{"id": "hello"}'"#).unwrap();
    assert_eq!(
        (c.subject.as_str(), c.body.as_str()),
        ("jetcron.api.job.get", r#"{"id": "hello"}"#)
    );
    let c = parse("  nats req jetcron.api.status ''   # who leads").unwrap();
    assert_eq!(
        (c.subject.as_str(), c.body.as_str()),
        ("jetcron.api.status", "")
    );
    let c = parse(r#"nats req jetcron.api.job.put "$(cat examples/hello.json)""#).unwrap();
    assert!(c.body.contains(r#""id": "hello""#), "{}", c.body);
    for not_a_request in [
        "nats sub 'jetcron.results.>'",
        "nats micro ls",
        "nats req jetcron.api.status",
        "jetcron job ls",
        "",
    ] {
        assert_eq!(parse(not_a_request), None, "{not_a_request}");
    }
}

#[test]
fn the_section_documents_every_endpoint() {
    let commands = commands();
    assert!(
        commands.len() >= MIN_COMMANDS,
        "only {} `nats req` commands in {SECTION:?}: {commands:#?}",
        commands.len()
    );
    let names = Names::default();
    for ep in [
        "job.put",
        "job.get",
        "job.list",
        "job.delete",
        "job.pause",
        "job.resume",
        "job.trigger",
        "job.next",
        "job.runs",
        "status",
        "workers",
    ] {
        let subject = names.api_subject(ep);
        assert!(
            commands.iter().any(|c| c.subject == subject),
            "no `nats req {subject} ...` in {SECTION:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_request_succeeds_as_a_raw_nats_request() {
    harness::init_tracing();
    let commands = commands();
    assert!(commands.len() >= MIN_COMMANDS, "{commands:#?}");
    let server = NatsServer::start().await;
    let client = server.client().await;
    let sched = Scheduler::start(&server.url(), "a");
    harness::api(&client, &Names::default()).await;

    for c in &commands {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(c.subject.clone(), c.body.clone().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("no reply within 5 s to: {}", c.line))
        .unwrap_or_else(|e| panic!("{}: {e}", c.line));
        let v: Value = serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{}: reply is not JSON ({e})", c.line));
        assert_eq!(v["ok"], true, "{}\n  -> {v}", c.line);
        assert!(
            reply
                .headers
                .as_ref()
                .is_none_or(|h| h.get("Nats-Service-Error").is_none()),
            "{}: error headers on a success",
            c.line
        );
        // What each kind of request says about job `hello`.
        match c.subject.rsplit_once("api.").map(|(_, ep)| ep) {
            Some("job.put") => assert_eq!(v["job"]["id"], "hello", "{v}"),
            Some("job.get") | Some("job.delete") | Some("job.next") | Some("job.runs")
            | Some("job.trigger") | Some("job.pause") | Some("job.resume") => {
                assert_eq!(v["id"], "hello", "{}: {v}", c.line)
            }
            Some("job.list") => assert!(v["jobs"].is_array(), "{v}"),
            Some("status") => assert!(v["jobs"]["total"].is_u64(), "{v}"),
            Some("workers") => assert!(v["workers"].is_array(), "{v}"),
            _ => {}
        }
    }
    sched.stop().await;
}

/// Every job in the README's job reference (a fenced `json` block holding
/// an object with an `id`) is a valid definition: the examples cannot drift
/// from the job model.
#[test]
fn every_example_job_in_the_job_reference_is_valid() {
    let readme = std::fs::read_to_string(README).expect("README.md");
    let start = readme.find("\n## Job definition").expect("a job reference");
    let rest = &readme[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let mut checked = 0;
    // Top-level fields and schedule forms the examples show between them.
    let mut shown: BTreeSet<String> = BTreeSet::new();
    let mut block: Option<String> = None;
    for line in rest[..end].lines() {
        match (&mut block, line.trim()) {
            (None, "```json") => block = Some(String::new()),
            (Some(text), "```") => {
                let value: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("a json block that is not JSON ({e}):\n{text}"));
                if value.get("id").is_some() {
                    if let Err(e) = jetcron_shared::Job::decode(text.as_bytes(), None) {
                        panic!("an example job that does not validate: {e}\n{text}");
                    }
                    checked += 1;
                    shown.extend(
                        value
                            .as_object()
                            .into_iter()
                            .flat_map(|o| o.keys().cloned()),
                    );
                    if let Some(form) = value["schedule"].as_str().and_then(|s| s.split(' ').next())
                    {
                        shown.insert(form.to_string());
                    }
                }
                block = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(checked >= 6, "only {checked} example jobs found");
    for wanted in [
        "deadline",
        "misfire",
        "overlap",
        "on_success",
        "@every",
        "@after",
        "@manual",
    ] {
        assert!(shown.contains(wanted), "no example job shows {wanted}");
    }
}
