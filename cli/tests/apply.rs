//! `jetcron apply` end to end against a real nats-server and scheduler.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;

use common::{Deployment, jetcron, path};
use jetcron_shared::api::ClientError;

const JOBS_YAML: &str = r#"# Reports for the EU team.
id: report
schedule: 0 30 6 * * MON-FRI
timezone: Europe/Berlin
shards: [no, se, dk]
run:
  shell: ./report --country "$JETCRON_SHARD_PARAM"
---
- id: cleanup
  schedule: '@daily'
  run: {shell: ./cleanup}
  retry: {max_attempts: 3, backoff: [30s, 5m]}
- id: sync
  schedule: '@every 1h'
  run: {shell: ./sync}
"#;

const MORE_JSON: &str = r#"[
  {"id": "billing", "schedule": "0 0 2 * * *", "timezone": "Asia/Shanghai", "group": "billing",
   "run": {"shell": "./bill"}, "payload": {"batch": 500}},
  {"id": "digest", "schedule": "30 7 * * 1-5", "run": {"shell": "./digest"},
   "description": "weekday mail"}
]
"#;

const IDS: [&str; 5] = ["report", "cleanup", "sync", "billing", "digest"];

fn write_jobs(dir: &Path) {
    std::fs::write(dir.join("jobs.yaml"), JOBS_YAML).unwrap();
    std::fs::write(dir.join("more.json"), MORE_JSON).unwrap();
    std::fs::write(dir.join("README.md"), "not a job file").unwrap();
}

fn edit_jobs_yaml(dir: &Path) {
    let edited = JOBS_YAML
        .replace("0 30 6 * * MON-FRI", "0 45 6 * * MON-FRI")
        .replace(
            "  run: {shell: ./sync}",
            "  run: {shell: ./sync}\n  timeout: 10m",
        );
    std::fs::write(dir.join("jobs.yaml"), edited).unwrap();
}

/// Lines of the output that start with `action` (`added`, `changed`, ...).
fn ids_with(out: &common::Run, action: &str) -> Vec<String> {
    out.lines()
        .iter()
        .filter_map(|l| l.strip_prefix(action))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_invalid_set_and_writes_nothing() {
    let d = Deployment::start().await;
    let url = d.url();
    let dir = tempfile::tempdir().unwrap();
    write_jobs(dir.path());
    std::fs::write(
        dir.path().join("broken.json"),
        r#"[{"id":"fine","schedule":"@hourly","run":{"shell":"x"}},
            {"id":"oops","schedule":"0 0 25 * * *","run":{"shell":"x"}}]"#,
    )
    .unwrap();
    let out = jetcron(&url, &["apply", "-f", path(dir.path())]).await;
    out.expect_code(2);
    assert_eq!(
        out.error_line(),
        format!(
            "jetcron: {}/broken.json (item 2): job 'oops': schedule: '0 0 25 * * *': hour must \
             be 0-23",
            dir.path().display()
        )
    );
    assert_eq!(out.stdout, "");
    assert!(d.revisions().await.is_empty(), "nothing may be written");

    // A typo in a YAML file: file, line, job and field.
    std::fs::remove_file(dir.path().join("broken.json")).unwrap();
    std::fs::write(
        dir.path().join("typo.yml"),
        "id: typo\nschedule: '@hourly'\nrun: {shell: x}\ntimout: 5m\n",
    )
    .unwrap();
    let out = jetcron(&url, &["apply", "--dry-run", "-f", path(dir.path())]).await;
    out.expect_code(2);
    let err = out.error_line();
    assert!(
        err.contains("typo.yml:1: job 'typo': timout: unknown field"),
        "{err}"
    );

    // The same id twice.
    std::fs::write(
        dir.path().join("typo.yml"),
        "id: sync\nschedule: '@hourly'\nrun: {shell: x}\n",
    )
    .unwrap();
    let out = jetcron(&url, &["apply", "-f", path(dir.path())]).await;
    out.expect_code(2);
    let err = out.error_line();
    assert!(err.contains("job 'sync' is defined twice"), "{err}");
    assert!(
        err.contains("jobs.yaml:13") && err.contains("typo.yml:1"),
        "{err}"
    );

    // Unreadable and empty inputs.
    let out = jetcron(&url, &["apply", "-f", path(&dir.path().join("nope.yaml"))]).await;
    out.expect_code(2);
    assert!(out.error_line().contains("cannot read"), "{out:#?}");
    let empty = tempfile::tempdir().unwrap();
    let out = jetcron(&url, &["apply", "--prune", "-f", path(empty.path())]).await;
    out.expect_code(2);
    assert!(
        out.error_line().contains("no job definitions found"),
        "{out:#?}"
    );
    // Without -f at all: a usage error.
    jetcron(&url, &["apply"]).await.expect_code(2);

    assert!(d.revisions().await.is_empty(), "nothing may be written");
    d.stop().await;
}

/// Compares with jobs stored by plain `job.put`, so that it needs no
/// conditional write: unchanged (also for a paused job whose file does not
/// say `paused`), field diffs on dry run, and pruning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_compares_with_stored_jobs_diffs_and_prunes() {
    let d = Deployment::start().await;
    let url = d.url();
    let dir = tempfile::tempdir().unwrap();
    write_jobs(dir.path());
    let dir_arg = path(dir.path()).to_string();

    // Nothing stored: a dry run says everything would be added.
    let out = jetcron(&url, &["apply", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "added"), IDS, "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("5 added, 0 changed, 0 unchanged (dry run: nothing written)")
    );
    assert!(d.revisions().await.is_empty());

    // Store the same definitions (cleanup paused, as by `job pause`) and one
    // job that no file defines.
    for m in jetcron_cli::manifest::load(&[dir.path().to_path_buf()]).unwrap() {
        let mut spec = m.spec;
        spec.paused = spec.id == "cleanup";
        d.api.put(&spec).await.unwrap();
    }
    std::fs::write(
        dir.path().join("legacy.json"),
        r#"{"id":"legacy","schedule":"@weekly","run":{"shell":"./old"}}"#,
    )
    .unwrap();
    let out = jetcron(
        &url,
        &["job", "put", "-f", path(&dir.path().join("legacy.json"))],
    )
    .await;
    out.ok();
    std::fs::remove_file(dir.path().join("legacy.json")).unwrap();
    let before = d.revisions().await;
    assert_eq!(before.len(), 6);

    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "unchanged"), IDS, "{out:#?}");
    assert!(
        out.stdout
            .contains("1 stored job is in none of these files (legacy): --prune deletes it"),
        "{out:#?}"
    );
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 0 changed, 5 unchanged")
    );
    assert_eq!(
        d.revisions().await,
        before,
        "unchanged jobs are not written"
    );
    let cleanup = d.api.get("cleanup").await.unwrap();
    assert!(cleanup.job.unwrap().paused, "the live paused state is kept");

    // An edit shows as a field diff on dry run, and nothing is written.
    edit_jobs_yaml(dir.path());
    let out = jetcron(&url, &["apply", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    let text = &out.stdout;
    assert!(
        text.contains(
            "changed    report\n    schedule: - \"0 30 6 * * MON-FRI\" + \"0 45 6 * * MON-FRI\"\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("changed    sync\n    timeout: - (unset) + \"10m\"\n"),
        "{text}"
    );
    assert_eq!(
        ids_with(&out, "unchanged"),
        ["cleanup", "billing", "digest"]
    );
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 2 changed, 3 unchanged (dry run: nothing written)")
    );
    assert_eq!(d.revisions().await, before);

    let out = jetcron(&url, &["--json", "apply", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    let v = out.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["changed"], 2);
    assert_eq!(v["not_in_files"], serde_json::json!(["legacy"]));
    assert_eq!(v["jobs"][0]["id"], "report");
    assert_eq!(v["jobs"][0]["action"], "changed");
    assert_eq!(v["jobs"][0]["changes"][0]["field"], "schedule");
    assert_eq!(v["jobs"][0]["changes"][0]["new"], "0 45 6 * * MON-FRI");

    // Pruning: dry run first, then for real.
    write_jobs(dir.path());
    let out = jetcron(&url, &["apply", "--prune", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "pruned"), ["legacy"], "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 0 changed, 5 unchanged, 1 pruned (dry run: nothing written)")
    );
    assert_eq!(d.revisions().await, before);

    let out = jetcron(&url, &["apply", "--prune", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "pruned"), ["legacy"], "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 0 changed, 5 unchanged, 1 pruned")
    );
    let after = d.revisions().await;
    let expected: Vec<_> = before
        .into_iter()
        .filter(|(id, _)| id != "legacy")
        .collect();
    assert_eq!(after, expected);
    d.stop().await;
}

/// The whole cycle through conditional writes (`expected_revision` in
/// `job.put`): add, apply again (nothing written), change a paused job (it
/// stays paused), prune.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_adds_is_idempotent_keeps_paused_and_prunes() {
    let d = Deployment::start().await;
    let url = d.url();
    let dir = tempfile::tempdir().unwrap();
    write_jobs(dir.path());
    let dir_arg = path(dir.path()).to_string();

    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "added"), IDS, "{out:#?}");
    assert!(
        out.lines()[0].starts_with("added      report (revision "),
        "{out:#?}"
    );
    assert_eq!(
        out.lines().last().copied(),
        Some("5 added, 0 changed, 0 unchanged")
    );
    let first = d.revisions().await;
    assert_eq!(first.len(), 5);
    let stored = d.api.get("report").await.unwrap().job.unwrap();
    assert_eq!(stored.timezone, "Europe/Berlin");
    assert_eq!(stored.shards.count(), 3);

    // Twice: nothing changes, nothing is written.
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "unchanged"), IDS, "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 0 changed, 5 unchanged")
    );
    assert_eq!(d.revisions().await, first);

    // Pause `report` the way an operator would.
    match d.api.pause("report").await {
        Ok(reply) => assert!(reply.changed),
        Err(ClientError::Request { .. }) => {
            let mut spec = d.api.get("report").await.unwrap().job.unwrap();
            spec.paused = true;
            d.api.put(&spec).await.unwrap();
        }
        Err(e) => panic!("pause: {e}"),
    }
    let paused = d.revisions().await;

    // Still unchanged: the file does not say `paused`.
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "unchanged"), IDS, "{out:#?}");
    assert_eq!(d.revisions().await, paused);

    // Change it: the dry run shows the diff and writes nothing...
    edit_jobs_yaml(dir.path());
    let out = jetcron(&url, &["apply", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    assert!(
        out.stdout.contains(
            "changed    report\n    schedule: - \"0 30 6 * * MON-FRI\" + \"0 45 6 * * MON-FRI\"\n"
        ),
        "{out:#?}"
    );
    assert_eq!(d.revisions().await, paused);
    // ...and the apply writes it, keeping it paused.
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "changed"), ["report", "sync"], "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 2 changed, 3 unchanged")
    );
    let report = d.api.get("report").await.unwrap();
    let spec = report.job.unwrap();
    assert_eq!(spec.schedule, "0 45 6 * * MON-FRI");
    assert!(
        spec.paused,
        "an apply without `paused` keeps the job paused"
    );
    let rev = |revs: &[(String, u64)], id: &str| revs.iter().find(|(i, _)| i == id).unwrap().1;
    assert!(report.revision > rev(&paused, "report"));
    let now = d.revisions().await;
    for id in ["cleanup", "billing", "digest"] {
        assert_eq!(rev(&now, id), rev(&paused, id), "{id} must not be written");
    }

    // Drop `digest` from the files: --prune deletes it (dry run first).
    std::fs::write(
        dir.path().join("more.json"),
        MORE_JSON.replace(
            ",\n  {\"id\": \"digest\", \"schedule\": \"30 7 * * 1-5\", \"run\": {\"shell\": \"./digest\"},\n   \"description\": \"weekday mail\"}",
            "",
        ),
    )
    .unwrap();
    let out = jetcron(&url, &["apply", "--prune", "--dry-run", "-f", &dir_arg]).await;
    out.ok();
    assert_eq!(ids_with(&out, "pruned"), ["digest"], "{out:#?}");
    assert_eq!(d.revisions().await.len(), 5);
    let out = jetcron(&url, &["--json", "apply", "--prune", "-f", &dir_arg]).await;
    out.ok();
    let v = out.json();
    assert_eq!(
        (&v["added"], &v["changed"], &v["unchanged"], &v["pruned"]),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(4),
            &serde_json::json!(1)
        )
    );
    let ids: Vec<String> = d.revisions().await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["billing", "cleanup", "report", "sync"]);
    d.stop().await;
}

/// `on_success` chains: a set with a cycle, within itself or through a
/// stored job, is refused whole and nothing is written; a set that turns a
/// chain around is written children first, so that no put on the way sees
/// a cycle; jobs pruned that the set names are deleted first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_on_success_cycle_and_writes_nothing() {
    let d = Deployment::start().await;
    let url = d.url();
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = path(dir.path()).to_string();
    let file = dir.path().join("chain.yaml");
    let job = |id: &str, children: &str| {
        format!(
            "- id: {id}\n  schedule: '@daily'\n  run: {{shell: x}}\n  on_success: [{children}]\n"
        )
    };
    d.api
        .put_raw(
            r#"{"id":"tail","schedule":"@daily","run":{"shell":"x"},"on_success":["head"]}"#.into(),
        )
        .await
        .unwrap();
    let before = d.revisions().await;

    // head -> mid -> tail, and the stored tail fires head.
    let set = [job("head", "mid"), job("mid", "tail"), job("lone", "")].concat();
    std::fs::write(&file, &set).unwrap();
    for args in [
        vec!["apply", "-f", &dir_arg],
        vec!["apply", "--dry-run", "-f", &dir_arg],
    ] {
        let out = jetcron(&url, &args).await;
        out.expect_code(1);
        let err = out.error_line();
        assert!(err.contains("chain.yaml:1: job 'head': "), "{err}");
        assert!(
            err.ends_with("on_success: a cycle: head -> mid -> tail -> head; nothing was written"),
            "{err}"
        );
        assert_eq!(out.stdout, "");
    }
    assert_eq!(d.revisions().await, before, "nothing may be written");

    // Within the set alone.
    std::fs::write(&file, [job("x", "y"), job("y", "z, x")].concat()).unwrap();
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.expect_code(1);
    assert!(
        out.error_line()
            .ends_with("job 'x': on_success: a cycle: x -> y -> x; nothing was written"),
        "{out:#?}"
    );
    assert_eq!(d.revisions().await, before, "nothing may be written");

    // The set's tail replaces the stored one: a chain, written tail first
    // (head first, mid would close head -> mid -> tail -> head on the way).
    std::fs::write(&file, [set.clone(), job("tail", "")].concat()).unwrap();
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.ok();
    let written: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("added") || l.starts_with("changed"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(written, ["tail", "mid", "head", "lone"], "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("3 added, 1 changed, 0 unchanged")
    );
    let tail = d.api.get("tail").await.unwrap().job.unwrap();
    assert!(tail.on_success.is_empty());

    // A stored job outside the files that fires head: head naming it is a
    // cycle, unless --prune deletes it (first).
    d.api
        .put_raw(
            r#"{"id":"old","schedule":"@daily","run":{"shell":"x"},"on_success":["head"]}"#.into(),
        )
        .await
        .unwrap();
    let set = [job("head", "mid, old"), job("mid", "tail"), job("tail", "")].concat();
    std::fs::write(&file, &set).unwrap();
    let before = d.revisions().await;
    let out = jetcron(&url, &["apply", "-f", &dir_arg]).await;
    out.expect_code(1);
    assert!(
        out.error_line()
            .ends_with("on_success: a cycle: head -> old -> head; nothing was written"),
        "{out:#?}"
    );
    assert_eq!(d.revisions().await, before, "nothing may be written");
    let out = jetcron(&url, &["apply", "--prune", "-f", &dir_arg]).await;
    out.ok();
    assert!(out.lines()[0].starts_with("pruned     old"), "{out:#?}");
    assert_eq!(
        out.lines().last().copied(),
        Some("0 added, 1 changed, 2 unchanged, 2 pruned")
    );
    let ids: Vec<String> = d.revisions().await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["head", "mid", "tail"]);
    d.stop().await;
}
