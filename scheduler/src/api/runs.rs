//! `job.runs`: a job's recent fires and where each shard stands.
//!
//! A scheduled fire's history entry is its `fired` event
//! (`jetcron.events.fired.<job>`), which names the runs-bucket key
//! `<job>.<slot>` its shard records go under: the leader stores no other
//! record per fire. A triggered fire's entry is a fire record under
//! `<job>.m<n>` in the runs bucket, written by the API (older versions
//! wrote scheduled fires there too, as `<job>.s<n>`; those are read alike).
//! Shard records `<job>.<slot>.<shard>` are written by the worker running
//! the shard. Slots are a ring, so a shard record may be left from an older
//! fire of the same slot: one whose `instant` is not its fire's counts as no
//! record. A dispatched shard without a record is `pending`; so is one whose
//! last attempt failed with another to follow.
//!
//! A fire's state is `succeeded` when every dispatched shard succeeded, else
//! the worst shard state, worst first: `failed`, `timed_out`, `expired`
//! (not started within the job's deadline), `running`, `pending`. A fire
//! with a failed shard reads `failed` even while others still run: what an
//! operator must look at comes first.

use std::collections::HashMap;

use bytes::Bytes;
use jetcron_shared::api::{ApiError, FireRun, RunsReply, RunsRequest, ShardRun, encode_ok};
use jetcron_shared::job::MAX_HISTORY;
use jetcron_shared::runs::{self, FireRecord, ShardRecord, ShardState};
use jetcron_shared::wire::{self, Cause, Event, EventBody};

use super::{Ctx, bad_request, check_id, not_found, parse, scan, unavailable};
use crate::catalog::Def;

const SHAPE: &str = r#"{"id": "<job id>", "limit": <fires, default all>}"#;

pub(super) async fn runs(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let req = request(body)?;
    let want = req.limit.map(|l| l as usize);
    let mut runs: Vec<FireRun> = history(ctx, &req.id, want)
        .await?
        .into_iter()
        .map(|(_, run)| run)
        .collect();
    if let Some(limit) = req.limit {
        runs.truncate(limit as usize);
    }
    Ok(encode_ok(&RunsReply { id: req.id, runs }))
}

/// Decodes and checks a request.
pub(super) fn request(body: &[u8]) -> Result<RunsRequest, ApiError> {
    let req: RunsRequest = parse(body, SHAPE)?;
    check_id(&req.id)?;
    if req.limit == Some(0) {
        return Err(bad_request("limit: must be at least 1, found 0"));
    }
    Ok(req)
}

/// The job's recent fires, newest first, each with its record and where
/// its shards stand: as many as its `history` keeps (at most `want` of
/// scheduled and of manual fires each). Not found: no such job and no
/// history.
pub(super) async fn history(
    ctx: &Ctx,
    id: &str,
    want: Option<usize>,
) -> Result<Vec<(FireRecord, FireRun)>, ApiError> {
    // The job's history size bounds both rings; a job this replica does
    // not know (deleted, or not loaded yet) may have kept up to the most.
    let history = match ctx.index.get(id) {
        Some((_, Def::Valid(d))) => d.history(),
        _ => MAX_HISTORY,
    } as usize;
    let want = want.map_or(history, |w| history.min(w));
    let subject = ctx.names.event_subject("fired", Some(id));
    let filter = ctx.names.run_job_filter(id);
    let (records, fired) = tokio::join!(
        scan::latest(&ctx.runs, &filter),
        scan::tail(&ctx.events_stream, &subject, want),
    );
    let records = records.map_err(|e| unavailable("runs bucket", e))?;
    let fired = fired.map_err(|e| unavailable("events stream", e))?;
    let mut scheduled: Vec<(String, FireRecord)> =
        fired.iter().filter_map(|m| fired_record(m)).collect();
    let mut manual: Vec<(String, FireRecord)> = Vec::new();
    let mut shards: HashMap<String, ShardRecord> = HashMap::new();
    for r in records {
        match r.key.matches('.').count() {
            1 => {
                if let Some(f) = runs::decode::<FireRecord>(&r.value) {
                    if f.cause == Cause::Manual {
                        manual.push((r.key, f));
                    } else {
                        scheduled.push((r.key, f));
                    }
                }
            }
            2 => {
                if let Some(s) = runs::decode::<ShardRecord>(&r.value) {
                    shards.insert(r.key, s);
                }
            }
            _ => {}
        }
    }
    if scheduled.is_empty() && manual.is_empty() && !job_exists(ctx, id).await? {
        return Err(not_found(id));
    }
    let mut fires = newest(scheduled, want);
    fires.extend(newest(manual, want));
    let mut out: Vec<(FireRecord, FireRun)> = fires
        .into_iter()
        .map(|(key, fire)| {
            let run = join(&key, fire.clone(), &shards);
            (fire, run)
        })
        .collect();
    out.sort_by(|(_, a), (_, b)| b.instant.cmp(&a.instant).then(b.fired_at.cmp(&a.fired_at)));
    Ok(out)
}

/// A stored `fired` event as the fire's history entry, with the key of its
/// shard records; `None` for anything else.
fn fired_record(payload: &[u8]) -> Option<(String, FireRecord)> {
    let event = Event::decode(payload).ok()?;
    let EventBody::Fired {
        job,
        instant,
        shards,
        epoch,
        cause,
        record: Some(key),
        ..
    } = event.body
    else {
        return None;
    };
    let fire = FireRecord {
        fire_id: wire::fire_id(&job, instant),
        job,
        instant,
        cause,
        fired_at: event.at,
        shards,
        dispatched: (0..shards).collect(),
        epoch,
        payload: None,
        retry_of: None,
    };
    Some((key, fire))
}

/// The `want` newest fires, one per instant (a fire stored twice, say its
/// event sent again by a successor after the dedup window, counts once).
fn newest(mut fires: Vec<(String, FireRecord)>, want: usize) -> Vec<(String, FireRecord)> {
    fires.sort_by_key(|f| std::cmp::Reverse(f.1.instant));
    fires.dedup_by(|a, b| a.1.instant == b.1.instant);
    fires.truncate(want);
    fires
}

async fn job_exists(ctx: &Ctx, id: &str) -> Result<bool, ApiError> {
    match super::load_job(ctx, id).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == jetcron_shared::api::ErrorCode::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One fire with its shards' records.
fn join(key: &str, fire: FireRecord, shards: &HashMap<String, ShardRecord>) -> FireRun {
    let shard_runs: Vec<ShardRun> = fire
        .dispatched
        .iter()
        .map(|&shard| {
            let record = shards
                .get(&format!("{key}.{shard}"))
                .filter(|r| r.instant == fire.instant && r.shard == shard);
            shard_run(shard, record)
        })
        .collect();
    FireRun {
        fire_id: fire.fire_id,
        instant: fire.instant,
        cause: fire.cause,
        fired_at: fire.fired_at,
        retry_of: fire.retry_of,
        state: fire_state(shard_runs.iter().map(|s| s.state)),
        shards: shard_runs,
    }
}

fn shard_run(shard: u32, record: Option<&ShardRecord>) -> ShardRun {
    let Some(r) = record else {
        return ShardRun {
            shard,
            state: ShardState::Pending,
            attempts: 0,
            worker: None,
            run_id: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            output_tail: None,
            error: None,
        };
    };
    let retrying = r.will_retry && matches!(r.state, ShardState::Failed | ShardState::TimedOut);
    ShardRun {
        shard,
        state: if retrying {
            ShardState::Pending
        } else {
            r.state
        },
        attempts: r.attempt,
        worker: Some(r.worker.clone()),
        run_id: Some(r.run_id.clone()),
        started_at: Some(r.started_at),
        finished_at: r.finished_at,
        duration_ms: r.finished_at.map(|f| (f - r.started_at).num_milliseconds()),
        exit_code: r.exit_code,
        output_tail: r.output_tail.clone(),
        error: r.error.clone(),
    }
}

/// Higher is worse.
fn severity(s: ShardState) -> u8 {
    match s {
        ShardState::Succeeded => 0,
        ShardState::Pending => 1,
        ShardState::Running => 2,
        ShardState::Cancelled => 3,
        ShardState::Expired => 3,
        ShardState::TimedOut => 4,
        ShardState::Failed => 5,
    }
}

fn fire_state(states: impl Iterator<Item = ShardState>) -> ShardState {
    states
        .max_by_key(|s| severity(*s))
        .unwrap_or(ShardState::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use jetcron_shared::wire::Cause;

    fn fire(dispatched: Vec<u32>) -> FireRecord {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        FireRecord {
            job: "j".into(),
            fire_id: "j:1".into(),
            instant: at,
            cause: Cause::Schedule,
            fired_at: at,
            shards: 3,
            dispatched,
            epoch: 1,
            payload: None,
            retry_of: None,
        }
    }

    fn shard(f: &FireRecord, shard: u32, state: ShardState, will_retry: bool) -> ShardRecord {
        ShardRecord {
            job: "j".into(),
            instant: f.instant,
            shard,
            state,
            attempt: 2,
            worker: "w".into(),
            run_id: "r".into(),
            started_at: f.instant,
            finished_at: Some(f.instant + chrono::Duration::milliseconds(250)),
            exit_code: Some(1),
            will_retry,
            lost: 0,
            output_tail: Some("out".into()),
            error: Some("exit status 1".into()),
        }
    }

    #[test]
    fn fire_state_is_the_worst_shard_state() {
        use ShardState::*;
        assert_eq!(fire_state([Succeeded, Succeeded].into_iter()), Succeeded);
        assert_eq!(fire_state([Succeeded, Pending].into_iter()), Pending);
        assert_eq!(fire_state([Pending, Running].into_iter()), Running);
        assert_eq!(fire_state([Running, Expired].into_iter()), Expired);
        assert_eq!(fire_state([Expired, Succeeded].into_iter()), Expired);
        assert_eq!(fire_state([Expired, TimedOut].into_iter()), TimedOut);
        assert_eq!(fire_state([Running, TimedOut].into_iter()), TimedOut);
        assert_eq!(
            fire_state([TimedOut, Failed, Succeeded].into_iter()),
            Failed
        );
    }

    #[test]
    fn shards_join_their_fire_and_stale_records_count_as_pending() {
        let f = fire(vec![0, 1, 2]);
        let mut stale = shard(&f, 1, ShardState::Succeeded, false);
        stale.instant = f.instant - chrono::Duration::hours(1);
        let shards = HashMap::from([
            (
                "j.s0.0".to_string(),
                shard(&f, 0, ShardState::Succeeded, false),
            ),
            ("j.s0.1".to_string(), stale),
            ("j.s0.2".to_string(), shard(&f, 2, ShardState::Failed, true)),
        ]);
        let run = join("j.s0", f, &shards);
        let states: Vec<_> = run.shards.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            vec![
                ShardState::Succeeded,
                ShardState::Pending,
                ShardState::Pending
            ]
        );
        assert_eq!(run.state, ShardState::Pending);
        assert_eq!(run.shards[0].duration_ms, Some(250));
        assert_eq!(run.shards[1].attempts, 0);
        assert_eq!(run.shards[2].attempts, 2);
    }
}
