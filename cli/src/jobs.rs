//! `jetcron job ...`: one job at a time through the control API.

use std::io::{BufWriter, Write};
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetcron_shared::api::{
    FireRun, JobState, JobSummary, ListRequest, NextReply, RunsReply, ShardRun, TriggerRequest,
};
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::runs::ShardState;

use crate::manifest::{self, Format};
use crate::output::{GrowingTable, ago, duration_ms, instant, table};
use crate::{Failure, Output, connect};

/// Shards listed one by one in `job runs`; beyond this, counted per state.
const SHARDS_LISTED: usize = 10;

/// `job put -f FILE`: stores one definition as it is (JSON, or YAML turned
/// into JSON); the API validates it. `-` reads JSON from standard input.
pub async fn put(args: &ConnectArgs, out: &Output, file: &Path) -> Result<(), Failure> {
    let body = read_definition(file)?;
    let reply = connect::api(args).await?.put_raw(body).await?;
    if out.json {
        out.json(&reply);
    } else {
        let verb = if reply.created { "created" } else { "updated" };
        println!("job {} {verb} (revision {})", reply.job.id, reply.revision);
    }
    Ok(())
}

fn read_definition(file: &Path) -> Result<Bytes, Failure> {
    let name = file.display();
    let read_err = |e: std::io::Error| Failure::Input(format!("cannot read {name}: {e}"));
    if file.as_os_str() == manifest::STDIN {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(read_err)?;
        return Ok(Bytes::from(buf));
    }
    let bytes = std::fs::read(file).map_err(read_err)?;
    if Format::of(file) != Some(Format::Yaml) {
        return Ok(Bytes::from(bytes));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| Failure::Input(format!("{name}: not UTF-8 text")))?;
    let mut jobs = manifest::parse(&name.to_string(), &text, Format::Yaml)
        .map_err(|e| Failure::Input(e.to_string()))?;
    match (jobs.pop(), jobs.is_empty()) {
        (Some(job), true) => serde_json::to_vec(&job.value)
            .map(Bytes::from)
            .map_err(|e| Failure::Input(format!("{name}: {e}"))),
        (None, _) => Err(Failure::Input(format!("{name}: no job definition in it"))),
        (Some(_), false) => Err(Failure::Input(format!(
            "{name} holds {} jobs; job put takes one (use jetcron apply for several)",
            jobs.len() + 1
        ))),
    }
}

pub async fn get(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = connect::api(args).await?.get(id).await?;
    if out.json {
        out.json(&reply);
        return Ok(());
    }
    match (&reply.job, &reply.invalid) {
        (Some(job), _) => out.json(job),
        (None, invalid) => {
            println!(
                "# revision {}: INVALID: {}",
                reply.revision,
                invalid.as_deref().unwrap_or("?")
            );
            println!("{}", reply.raw.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

pub async fn rm(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = connect::api(args).await?.delete(id).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("job {} deleted", reply.id);
    }
    Ok(())
}

/// Which jobs `job ls` prints.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub group: Option<String>,
    pub state: Option<JobState>,
    /// At most this many in all (default: every one).
    pub limit: Option<u64>,
}

const LIST_HEADER: [&str; 7] = [
    "ID", "SCHEDULE", "TIMEZONE", "GROUP", "SHARDS", "REV", "STATUS",
];

/// `job ls [--group G] [--state S] [--limit N]`: each page is printed as it
/// arrives, so any number of jobs lists without being held at once.
pub async fn ls(args: &ConnectArgs, out: &Output, opts: &ListOptions) -> Result<(), Failure> {
    let api = connect::api(args).await?;
    let request = ListRequest {
        group: opts.group.clone(),
        state: opts.state,
        ..ListRequest::default()
    };
    let mut pages = api.pages(request);
    if let Some(n) = opts.limit {
        pages = pages.total(n);
    }
    let mut render = if out.json {
        ListRender::Json(JsonList::default())
    } else {
        ListRender::Table(GrowingTable::new(&LIST_HEADER))
    };
    let mut stdout = BufWriter::new(std::io::stdout());
    while let Some(page) = pages.next_page().await? {
        if write_out(&mut stdout, &render.page(&page.jobs)).is_err() {
            // The reader went away (`jetcron job ls | head`): nothing to add.
            return Ok(());
        }
    }
    let _ = write_out(&mut stdout, &render.finish());
    Ok(())
}

fn write_out(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// `job ls` output, a page at a time.
#[derive(Debug)]
enum ListRender {
    Table(GrowingTable),
    Json(JsonList),
}

impl ListRender {
    fn page(&mut self, jobs: &[JobSummary]) -> String {
        match self {
            ListRender::Table(t) => {
                let rows: Vec<Vec<String>> = jobs.iter().map(list_row).collect();
                lines(t.rows(&rows))
            }
            ListRender::Json(j) => j.page(jobs),
        }
    }

    fn finish(&mut self) -> String {
        match self {
            ListRender::Table(t) => lines(t.finish()),
            ListRender::Json(j) => j.finish(),
        }
    }
}

fn lines(lines: Vec<String>) -> String {
    lines.into_iter().map(|l| l + "\n").collect()
}

fn list_row(j: &JobSummary) -> Vec<String> {
    let dash = || "-".to_string();
    let status = match (&j.invalid, j.paused) {
        (Some(e), _) => format!("INVALID: {e}"),
        (None, true) => "paused".to_string(),
        (None, false) => "active".to_string(),
    };
    vec![
        j.id.clone(),
        j.schedule.clone().unwrap_or_else(dash),
        j.timezone.clone().unwrap_or_else(dash),
        j.group.clone().unwrap_or_else(dash),
        j.shards.map_or_else(dash, |s| s.to_string()),
        j.revision.to_string(),
        status,
    ]
}

/// `{"jobs": [...]}` exactly as `--json` pretty-prints a whole reply, written
/// a page at a time.
#[derive(Debug, Default)]
struct JsonList {
    started: bool,
}

impl JsonList {
    fn page(&mut self, jobs: &[JobSummary]) -> String {
        let mut text = String::new();
        for job in jobs {
            text.push_str(if std::mem::replace(&mut self.started, true) {
                ",\n"
            } else {
                "{\n  \"jobs\": [\n"
            });
            let pretty = serde_json::to_string_pretty(job).unwrap_or_default();
            let indented: Vec<String> = pretty.lines().map(|l| format!("    {l}")).collect();
            text.push_str(&indented.join("\n"));
        }
        text
    }

    fn finish(&mut self) -> String {
        if std::mem::replace(&mut self.started, true) {
            "\n  ]\n}\n".to_string()
        } else {
            "{\n  \"jobs\": []\n}\n".to_string()
        }
    }
}

pub async fn pause(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = connect::api(args).await?.pause(id).await?;
    if out.json {
        out.json(&reply);
    } else if reply.changed {
        println!(
            "job {} paused (revision {}); its instants are skipped until it is resumed",
            reply.id, reply.revision
        );
    } else {
        println!("job {} was paused already", reply.id);
    }
    Ok(())
}

pub async fn resume(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = connect::api(args).await?.resume(id).await?;
    if out.json {
        out.json(&reply);
    } else if reply.changed {
        let fires = if reply.skipped == 1 { "fire" } else { "fires" };
        println!(
            "job {} resumed (revision {}); {} {fires} skipped while paused (not replayed)",
            reply.id, reply.revision, reply.skipped
        );
    } else {
        println!("job {} was not paused", reply.id);
    }
    Ok(())
}

/// `job trigger ID [--shard N ...] [--payload JSON]`: one fire now.
pub async fn trigger(
    args: &ConnectArgs,
    out: &Output,
    id: &str,
    shards: Vec<u32>,
    payload: Option<&str>,
) -> Result<(), Failure> {
    let payload = payload
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p)
                .map_err(|e| Failure::Input(format!("--payload is not JSON: {e}")))
        })
        .transpose()?;
    let req = TriggerRequest {
        id: id.to_string(),
        shards: (!shards.is_empty()).then_some(shards),
        payload,
    };
    let reply = connect::api(args).await?.trigger(&req).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!(
            "job {} triggered: fire {} (instant {}, shards {})",
            reply.id,
            reply.fire_id,
            instant(reply.instant),
            shard_list(&reply.shards)
        );
    }
    Ok(())
}

/// `job retry ID FIRE`: the failed and timed-out shards of one fire again.
pub async fn retry(
    args: &ConnectArgs,
    out: &Output,
    id: &str,
    fire_id: &str,
) -> Result<(), Failure> {
    let reply = connect::api(args).await?.retry(id, fire_id).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!(
            "job {}: fire {} runs shards {} of fire {} again (instant {})",
            reply.id,
            reply.fire_id,
            shard_list(&reply.shards),
            reply.retry_of,
            instant(reply.instant)
        );
    }
    Ok(())
}

fn shard_list(shards: &[u32]) -> String {
    let list: Vec<String> = shards.iter().map(u32::to_string).collect();
    list.join(",")
}

/// `job next ID [-n COUNT]`: the coming instants, in UTC and in the job's zone.
pub async fn next(
    args: &ConnectArgs,
    out: &Output,
    id: &str,
    count: Option<u32>,
) -> Result<(), Failure> {
    let reply = connect::api(args).await?.next(id, count).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("{}", next_table(&reply, Utc::now()));
    }
    Ok(())
}

pub fn next_table(reply: &NextReply, now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = reply
        .instants
        .iter()
        .map(|i| vec![instant(i.utc), i.local.clone(), ago(i.utc, now)])
        .collect();
    let zone = format!("LOCAL ({})", reply.timezone);
    let mut text = table(&["UTC", &zone, "WHEN"], &rows);
    if reply.instants.is_empty() {
        text.push_str("\n(no more instants: the schedule has ended)");
    }
    if reply.paused {
        text.push_str(&format!(
            "\njob {} is paused: these instants are skipped until it is resumed",
            reply.id
        ));
    }
    text
}

/// `job runs ID [--limit N] [--output]`: recent fires, newest first; with
/// `--output`, each shard's error and the end of its output after them.
pub async fn runs(
    args: &ConnectArgs,
    out: &Output,
    id: &str,
    limit: Option<u32>,
    output: bool,
) -> Result<(), Failure> {
    let reply = connect::api(args).await?.runs(id, limit).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("{}", runs_table(&reply, Utc::now()));
        if output {
            print!("{}", runs_output(&reply));
        }
    }
    Ok(())
}

/// Each shard's error and output tail, fire by fire, newest first; shards
/// with neither are left out.
pub fn runs_output(reply: &RunsReply) -> String {
    let mut text = String::new();
    for fire in &reply.runs {
        for s in &fire.shards {
            if s.error.is_none() && s.output_tail.is_none() {
                continue;
            }
            text.push_str(&format!(
                "\n{} shard {} ({})",
                fire.fire_id,
                s.shard,
                shard_token(s)
            ));
            if let Some(e) = &s.error {
                text.push_str(&format!(": {e}"));
            }
            text.push('\n');
            if let Some(tail) = &s.output_tail {
                for line in tail.lines() {
                    text.push_str("  ");
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    text
}

pub fn runs_table(reply: &RunsReply, now: DateTime<Utc>) -> String {
    if reply.runs.is_empty() {
        return format!("job {} has not fired yet", reply.id);
    }
    let rows: Vec<Vec<String>> = reply
        .runs
        .iter()
        .map(|r| {
            let cause = match &r.retry_of {
                Some(of) => format!("retry of {of}"),
                None => cause(r.cause).to_string(),
            };
            vec![
                r.fire_id.clone(),
                instant(r.instant),
                cause,
                r.state.as_str().to_string(),
                shard_summary(&r.shards),
                fire_duration(r, now),
            ]
        })
        .collect();
    table(
        &["FIRE", "INSTANT", "CAUSE", "STATE", "SHARDS", "DURATION"],
        &rows,
    )
}

fn cause(c: jetcron_shared::wire::Cause) -> &'static str {
    use jetcron_shared::wire::Cause;
    match c {
        Cause::Schedule => "schedule",
        Cause::Misfire => "misfire",
        Cause::Manual => "manual",
        Cause::Parent => "parent",
    }
}

/// `0:ok 1:failed(3) 2:running@w1`; past a few shards, counts per state and
/// the shards that are not ok.
pub fn shard_summary(shards: &[ShardRun]) -> String {
    if shards.len() <= SHARDS_LISTED {
        let parts: Vec<String> = shards
            .iter()
            .map(|s| format!("{}:{}", s.shard, shard_token(s)))
            .collect();
        return parts.join(" ");
    }
    let order = [
        ShardState::Succeeded,
        ShardState::Failed,
        ShardState::TimedOut,
        ShardState::Expired,
        ShardState::Cancelled,
        ShardState::Running,
        ShardState::Pending,
    ];
    let counts: Vec<String> = order
        .iter()
        .filter_map(|state| {
            let n = shards.iter().filter(|s| s.state == *state).count();
            let name = if *state == ShardState::Succeeded {
                "ok"
            } else {
                state.as_str()
            };
            (n > 0).then(|| format!("{n} {name}"))
        })
        .collect();
    let not_ok: Vec<String> = shards
        .iter()
        .filter(|s| s.state != ShardState::Succeeded)
        .take(5)
        .map(|s| format!("{}:{}", s.shard, shard_token(s)))
        .collect();
    let mut text = counts.join(", ");
    if !not_ok.is_empty() {
        text.push_str(&format!(" ({}", not_ok.join(" ")));
        let more = shards
            .iter()
            .filter(|s| s.state != ShardState::Succeeded)
            .count()
            .saturating_sub(not_ok.len());
        if more > 0 {
            text.push_str(&format!(" +{more}"));
        }
        text.push(')');
    }
    text
}

fn shard_token(s: &ShardRun) -> String {
    match s.state {
        ShardState::Succeeded if s.attempts > 1 => format!("ok({})", s.attempts),
        ShardState::Succeeded => "ok".to_string(),
        ShardState::Failed | ShardState::TimedOut => {
            format!("{}({})", s.state.as_str(), s.attempts)
        }
        ShardState::Running => match &s.worker {
            Some(w) => format!("running@{w}"),
            None => "running".to_string(),
        },
        ShardState::Expired => "expired".to_string(),
        ShardState::Cancelled => "cancelled".to_string(),
        ShardState::Pending => "pending".to_string(),
    }
}

/// From the fire to its last shard's end; `12s+` while shards still run.
fn fire_duration(r: &FireRun, now: DateTime<Utc>) -> String {
    let done = r.shards.iter().all(|s| {
        matches!(
            s.state,
            ShardState::Succeeded
                | ShardState::Failed
                | ShardState::TimedOut
                | ShardState::Expired
                | ShardState::Cancelled
        )
    });
    let last_end = r.shards.iter().filter_map(|s| s.finished_at).max();
    match (done, last_end) {
        (true, Some(end)) => duration_ms((end - r.fired_at).num_milliseconds()),
        (true, None) => "-".to_string(),
        (false, _) => format!("{}+", duration_ms((now - r.fired_at).num_milliseconds())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::api::NextInstant;
    use jetcron_shared::wire::Cause;

    fn shard(shard: u32, state: ShardState, attempts: u32, worker: Option<&str>) -> ShardRun {
        ShardRun {
            shard,
            state,
            attempts,
            worker: worker.map(str::to_string),
            run_id: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            output_tail: None,
            error: None,
        }
    }

    #[test]
    fn shard_summaries_are_short() {
        let shards = [
            shard(0, ShardState::Succeeded, 1, Some("w0")),
            shard(1, ShardState::Failed, 3, Some("w2")),
            shard(2, ShardState::Running, 1, Some("w1")),
            shard(3, ShardState::Pending, 0, None),
            shard(4, ShardState::Succeeded, 2, Some("w0")),
            shard(5, ShardState::TimedOut, 1, Some("w0")),
            shard(6, ShardState::Expired, 2, Some("w0")),
        ];
        assert_eq!(
            shard_summary(&shards),
            "0:ok 1:failed(3) 2:running@w1 3:pending 4:ok(2) 5:timed_out(1) 6:expired"
        );
        let mut many: Vec<ShardRun> = (0..100)
            .map(|i| shard(i, ShardState::Succeeded, 1, None))
            .collect();
        many[7] = shard(7, ShardState::Failed, 2, None);
        many[8] = shard(8, ShardState::Expired, 1, None);
        for (i, s) in many.iter_mut().enumerate().take(17).skip(10) {
            *s = shard(i as u32, ShardState::Running, 1, Some("w"));
        }
        assert_eq!(
            shard_summary(&many),
            "91 ok, 1 failed, 1 expired, 7 running (7:failed(2) 8:expired 10:running@w \
             11:running@w 12:running@w +4)"
        );
    }

    #[test]
    fn runs_table_shows_instant_cause_state_shards_and_duration() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 21, 30, 0).unwrap();
        let mut done = shard(0, ShardState::Succeeded, 1, Some("w1"));
        done.finished_at = Some(at + chrono::Duration::milliseconds(2500));
        let reply = RunsReply {
            id: "hello".into(),
            runs: vec![
                FireRun {
                    fire_id: "hello:2".into(),
                    instant: at + chrono::Duration::seconds(60),
                    cause: Cause::Manual,
                    fired_at: at + chrono::Duration::seconds(60),
                    retry_of: Some("hello:1".into()),
                    state: ShardState::Running,
                    shards: vec![shard(0, ShardState::Running, 1, Some("w1"))],
                },
                FireRun {
                    fire_id: "hello:1".into(),
                    instant: at,
                    cause: Cause::Schedule,
                    fired_at: at,
                    retry_of: None,
                    state: ShardState::Succeeded,
                    shards: vec![done],
                },
            ],
        };
        let now = at + chrono::Duration::seconds(65);
        assert_eq!(
            runs_table(&reply, now),
            "FIRE     INSTANT               CAUSE             STATE      SHARDS        DURATION\n\
             hello:2  2026-11-24T21:31:00Z  retry of hello:1  running    0:running@w1  5.0s+\n\
             hello:1  2026-11-24T21:30:00Z  schedule          succeeded  0:ok          2.5s"
        );
        let empty = RunsReply {
            id: "x".into(),
            runs: vec![],
        };
        assert_eq!(runs_table(&empty, now), "job x has not fired yet");
    }

    #[test]
    fn runs_output_shows_errors_and_output_tails_of_the_shards_that_have_them() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 21, 30, 0).unwrap();
        let mut failed = shard(1, ShardState::TimedOut, 2, Some("w2"));
        failed.error = Some("timed out after 1s".into());
        failed.output_tail = Some("step 1\nstep 2\n".into());
        let mut printed = shard(0, ShardState::Succeeded, 1, Some("w1"));
        printed.output_tail = Some("done".into());
        let silent = shard(2, ShardState::Succeeded, 1, Some("w1"));
        let reply = RunsReply {
            id: "hello".into(),
            runs: vec![FireRun {
                fire_id: "hello:1".into(),
                instant: at,
                cause: Cause::Schedule,
                fired_at: at,
                retry_of: None,
                state: ShardState::TimedOut,
                shards: vec![printed, failed, silent],
            }],
        };
        assert_eq!(
            runs_output(&reply),
            "\nhello:1 shard 0 (ok)\n  done\n\
             \nhello:1 shard 1 (timed_out(2)): timed out after 1s\n  step 1\n  step 2\n"
        );
    }

    #[test]
    fn next_table_has_utc_local_and_when() {
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 5, 30, 0).unwrap();
        let reply = NextReply {
            id: "r".into(),
            timezone: "Europe/Berlin".into(),
            paused: true,
            instants: vec![NextInstant {
                utc: at,
                local: "2026-11-25T06:30:00+01:00".into(),
            }],
        };
        let text = next_table(&reply, at - chrono::Duration::seconds(90));
        assert_eq!(
            text,
            "UTC                   LOCAL (Europe/Berlin)      WHEN\n\
             2026-11-25T05:30:00Z  2026-11-25T06:30:00+01:00  in 1m30s\n\
             job r is paused: these instants are skipped until it is resumed"
        );
    }

    fn summary(id: &str, paused: bool, invalid: Option<&str>) -> JobSummary {
        JobSummary {
            id: id.into(),
            revision: 3,
            schedule: invalid.is_none().then(|| "@hourly".into()),
            timezone: invalid.is_none().then(|| "UTC".into()),
            group: invalid.is_none().then(|| "default".into()),
            shards: invalid.is_none().then_some(2),
            paused,
            invalid: invalid.map(str::to_string),
        }
    }

    #[test]
    fn listed_pages_print_as_one_table() {
        let mut r = ListRender::Table(GrowingTable::new(&LIST_HEADER));
        let mut text = r.page(&[summary("a", false, None), summary("bb", true, None)]);
        text += &r.page(&[]);
        text += &r.page(&[summary("c", false, Some("invalid JSON: eof"))]);
        text += &r.finish();
        assert_eq!(
            text,
            "ID  SCHEDULE  TIMEZONE  GROUP    SHARDS  REV  STATUS\n\
             a   @hourly   UTC       default  2       3    active\n\
             bb  @hourly   UTC       default  2       3    paused\n\
             c   -         -         -        -       3    INVALID: invalid JSON: eof\n"
        );
        let mut empty = ListRender::Table(GrowingTable::new(&LIST_HEADER));
        assert_eq!(empty.page(&[]), "");
        assert_eq!(
            empty.finish(),
            "ID  SCHEDULE  TIMEZONE  GROUP  SHARDS  REV  STATUS\n"
        );
    }

    #[test]
    fn listed_pages_print_as_one_json_document() {
        let jobs = [
            summary("a", false, None),
            summary("b", true, None),
            summary("c", false, Some("x")),
        ];
        for split in [0, 1, 3] {
            let mut r = ListRender::Json(JsonList::default());
            let text = r.page(&jobs[..split]) + &r.page(&jobs[split..]) + &r.finish();
            let whole = jetcron_shared::api::ListReply {
                jobs: jobs.to_vec(),
                next: None,
            };
            assert_eq!(text, serde_json::to_string_pretty(&whole).unwrap() + "\n");
        }
        let mut r = ListRender::Json(JsonList::default());
        let text = r.page(&[]) + &r.finish();
        let none = jetcron_shared::api::ListReply {
            jobs: vec![],
            next: None,
        };
        assert_eq!(text, serde_json::to_string_pretty(&none).unwrap() + "\n");
    }

    #[test]
    fn yaml_definitions_are_sent_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("j.yaml");
        std::fs::write(&f, "id: a\nschedule: '@hourly'\nrun: {shell: x}\n").unwrap();
        let body = read_definition(&f).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["run"]["shell"], "x");
        std::fs::write(&f, "- id: a\n- id: b\n").unwrap();
        assert!(matches!(read_definition(&f), Err(Failure::Input(_))));
    }
}
