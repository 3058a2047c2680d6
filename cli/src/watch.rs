//! `jetcron watch [JOB]`: results and events as they are published, one line
//! each, until Ctrl-C. With `--json`, each message as published (one JSON
//! object a line).

use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::job::Misfire;
use jetcron_shared::wire::{Cause, Event, EventBody, RunResult};

use crate::{Failure, Output, connect};

pub async fn watch(args: &ConnectArgs, out: &Output, job: Option<&str>) -> Result<(), Failure> {
    if let Some(j) = job
        && !is_job_id(j)
    {
        return Err(Failure::Input(format!(
            "'{j}' is not a job id (1-128 characters of A-Z, a-z, 0-9, '_' or '-')"
        )));
    }
    let (client, names) = connect::connect(args).await?;
    // With a job, subscribe to its subjects only: leader changes still
    // show, they explain gaps.
    let subjects = match job {
        Some(j) => vec![
            names.results_subject(j),
            names.event_subject("*", Some(j)),
            names.event_subject("leader", None),
        ],
        None => vec![names.results_all(), names.events_all()],
    };
    let mut subs = Vec::new();
    for subject in subjects {
        let sub = client
            .subscribe(subject)
            .await
            .map_err(|e| Failure::Unavailable(format!("cannot subscribe: {e}")))?;
        subs.push(sub);
    }
    let mut merged = futures::stream::select_all(subs);
    let results_prefix = format!("{}.results.", names.prefix());
    loop {
        let next = tokio::select! {
            m = merged.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(msg) = next else {
            return Err(Failure::Unavailable("the NATS connection closed".into()));
        };
        if out.json {
            println!("{}", String::from_utf8_lossy(&msg.payload));
            continue;
        }
        let line = if msg.subject.starts_with(results_prefix.as_str()) {
            RunResult::decode(&msg.payload)
                .ok()
                .map(|r| result_line(&r))
        } else {
            Event::decode(&msg.payload).ok().map(|e| event_line(&e))
        };
        if let Some(line) = line {
            println!("{line}");
        }
    }
}

fn is_job_id(id: &str) -> bool {
    jetcron_shared::job::is_valid_id(id)
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S%.3f").to_string()
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn result_line(r: &RunResult) -> String {
    let took = (r.finished_at - r.started_at).num_milliseconds();
    let output = r.output.trim_end().lines().last().unwrap_or("");
    // An HTTP job has a status where a command has an exit code.
    let exit = match (r.http_status, r.exit_code) {
        (Some(status), _) => format!("http={status}"),
        (None, code) => format!(
            "exit={}",
            code.map_or_else(|| "-".to_string(), |c| c.to_string())
        ),
    };
    let retry = if r.will_retry { " (will retry)" } else { "" };
    format!(
        "{} {:<9} {} {} shard {}/{} attempt {} {}{retry} on {} in {took}ms {exit} {}",
        clock(r.finished_at),
        "result",
        r.job,
        utc(r.instant),
        r.shard,
        r.shards,
        r.attempt,
        r.status.as_str(),
        r.worker,
        r.error.as_deref().unwrap_or(output),
    )
    .trim_end()
    .to_string()
}

pub fn event_line(e: &Event) -> String {
    let detail = match &e.body {
        EventBody::Fired {
            job,
            instant,
            shards,
            cause,
            late_ms,
            ..
        } => {
            let cause = match cause {
                Cause::Schedule => String::new(),
                Cause::Misfire => " (misfire)".to_string(),
                Cause::Manual => " (manual)".to_string(),
                Cause::Parent => " (on success of its parent)".to_string(),
            };
            format!(
                "{job} {} shards={shards} late={late_ms}ms{cause}",
                utc(*instant)
            )
        }
        EventBody::Misfired {
            job,
            missed,
            first_missed,
            last_missed,
            fired,
            policy,
            ..
        } => format!(
            "{job} missed {missed} instant{} ({} .. {}), {}",
            if *missed == 1 { "" } else { "s" },
            utc(*first_missed),
            utc(*last_missed),
            match (fired, policy) {
                (Some(f), _) => format!("fired once, late, for {}", utc(*f)),
                (None, Misfire::FireAll) => "not fired: older than the newest misfire_limit".into(),
                (None, _) => "not fired (misfire skip)".into(),
            }
        ),
        EventBody::Dead {
            job,
            instant,
            shard,
            attempts,
            status,
            worker,
            error,
            ..
        } => format!(
            "{job} {} shard {shard} {} after {attempts} attempt{} on {worker}{}",
            utc(*instant),
            status.as_str(),
            if *attempts == 1 { "" } else { "s" },
            error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        EventBody::Replaced {
            job, instant, by, ..
        } => format!(
            "{job} {} replaced by the fire of {}: its shards are cancelled",
            utc(*instant),
            utc(*by)
        ),
        EventBody::Expired {
            job,
            instant,
            shard,
            worker,
            expires_at,
            late_ms,
            ..
        } => format!(
            "{job} {} shard {shard} expired, not run: due to start by {}, came {late_ms}ms after \
             its instant on {worker}",
            utc(*instant),
            utc(*expires_at)
        ),
        EventBody::Invalid {
            job,
            revision,
            error,
        } => format!("{job} (revision {revision}): {error}"),
        EventBody::Leader { holder, epoch } => format!("{holder} leads (epoch {epoch})"),
        EventBody::Skipped {
            job,
            instant,
            reason,
            count,
        } => {
            let times = if *count > 1 {
                format!(" x{count}")
            } else {
                String::new()
            };
            format!("{job} {} skipped ({reason}){times}", utc(*instant))
        }
        EventBody::Paused { job, revision } => format!("{job} paused (revision {revision})"),
        EventBody::Resumed {
            job,
            revision,
            skipped,
        } => format!(
            "{job} resumed (revision {revision}); {skipped} fire{} skipped while paused",
            if *skipped == 1 { "" } else { "s" }
        ),
        EventBody::Triggered {
            job,
            fire_id,
            instant,
            shards,
            retry_of,
        } => {
            let list: Vec<String> = shards.iter().map(u32::to_string).collect();
            let retry = retry_of
                .as_ref()
                .map(|of| format!(" (retry of {of})"))
                .unwrap_or_default();
            format!(
                "{job} fire {fire_id} for {} shards={}{retry}",
                utc(*instant),
                list.join(",")
            )
        }
    };
    format!("{} {:<9} {detail}", clock(e.at), e.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::wire::RunStatus;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 21, 30, 5).unwrap()
    }

    fn event(body: EventBody) -> String {
        event_line(&Event { at: at(), body })
    }

    #[test]
    fn new_event_kinds_read_as_one_line_each() {
        assert_eq!(
            event(EventBody::Skipped {
                job: "a".into(),
                instant: at(),
                reason: "paused".into(),
                count: 3
            }),
            "21:30:05.000 skipped   a 2026-11-24T21:30:05Z skipped (paused) x3"
        );
        assert_eq!(
            event(EventBody::Paused {
                job: "a".into(),
                revision: 4
            }),
            "21:30:05.000 paused    a paused (revision 4)"
        );
        assert_eq!(
            event(EventBody::Resumed {
                job: "a".into(),
                revision: 5,
                skipped: 1
            }),
            "21:30:05.000 resumed   a resumed (revision 5); 1 fire skipped while paused"
        );
        assert_eq!(
            event(EventBody::Triggered {
                job: "a".into(),
                fire_id: "a:1".into(),
                instant: at(),
                shards: vec![0, 2],
                retry_of: None,
            }),
            "21:30:05.000 triggered a fire a:1 for 2026-11-24T21:30:05Z shards=0,2"
        );
        assert_eq!(
            event(EventBody::Triggered {
                job: "a".into(),
                fire_id: "a:2".into(),
                instant: at(),
                shards: vec![2],
                retry_of: Some("a:1".into()),
            }),
            "21:30:05.000 triggered a fire a:2 for 2026-11-24T21:30:05Z shards=2 (retry of a:1)"
        );
        assert_eq!(
            event(EventBody::Fired {
                job: "a".into(),
                instant: at(),
                shards: 2,
                epoch: 1,
                cause: Cause::Manual,
                late_ms: 3,
                record: None,
                parent: None,
            }),
            "21:30:05.000 fired     a 2026-11-24T21:30:05Z shards=2 late=3ms (manual)"
        );
        assert_eq!(
            event(EventBody::Dead {
                job: "a".into(),
                instant: at(),
                shard: 1,
                attempts: 3,
                status: RunStatus::TimedOut,
                run_id: "r".into(),
                worker: "w1".into(),
                error: None
            }),
            "21:30:05.000 dead      a 2026-11-24T21:30:05Z shard 1 timed_out after 3 attempts on w1"
        );
        assert_eq!(
            event(EventBody::Expired {
                job: "a".into(),
                instant: at(),
                shard: 1,
                attempt: 1,
                run_id: "r".into(),
                worker: "w1".into(),
                expires_at: at() + chrono::Duration::seconds(2),
                late_ms: 3400,
            }),
            "21:30:05.000 expired   a 2026-11-24T21:30:05Z shard 1 expired, not run: due to start \
             by 2026-11-24T21:30:07Z, came 3400ms after its instant on w1"
        );
    }

    #[test]
    fn a_misfired_event_says_what_fired_for_the_missed_instants() {
        let misfired = |fired: Option<DateTime<Utc>>, policy: Misfire| {
            event(EventBody::Misfired {
                job: "a".into(),
                missed: 3,
                first_missed: at(),
                last_missed: at() + chrono::Duration::seconds(2),
                fired,
                epoch: 4,
                policy,
            })
        };
        let head = "21:30:05.000 misfired  a missed 3 instants (2026-11-24T21:30:05Z .. \
                    2026-11-24T21:30:07Z), ";
        assert_eq!(
            misfired(Some(at() + chrono::Duration::seconds(2)), Misfire::FireOnce),
            format!("{head}fired once, late, for 2026-11-24T21:30:07Z")
        );
        assert_eq!(
            misfired(None, Misfire::Skip),
            format!("{head}not fired (misfire skip)")
        );
        assert_eq!(
            misfired(None, Misfire::FireAll),
            format!("{head}not fired: older than the newest misfire_limit")
        );
    }

    #[test]
    fn results_show_status_retry_and_last_output_line() {
        let r = RunResult {
            job: "a".into(),
            instant: at(),
            shard: 0,
            shards: 2,
            attempt: 1,
            run_id: "r".into(),
            status: RunStatus::Failed,
            worker: "w1".into(),
            started_at: at(),
            finished_at: at() + chrono::Duration::milliseconds(12),
            exit_code: Some(3),
            output: "one\ntwo\n".into(),
            output_truncated: false,
            error: None,
            will_retry: true,
            epoch: 1,
            stream_seq: None,
            parent: None,
            http_status: None,
        };
        assert_eq!(
            result_line(&r),
            "21:30:05.012 result    a 2026-11-24T21:30:05Z shard 0/2 attempt 1 failed (will retry) \
             on w1 in 12ms exit=3 two"
        );
        let http = RunResult {
            exit_code: None,
            http_status: Some(503),
            ..r.clone()
        };
        assert_eq!(
            result_line(&http),
            "21:30:05.012 result    a 2026-11-24T21:30:05Z shard 0/2 attempt 1 failed (will retry) \
             on w1 in 12ms http=503 two"
        );
        assert!(is_job_id("a-b_1") && !is_job_id("a.b") && !is_job_id(""));
    }
}
