//! `job.trigger`: fire a job now, outside its schedule (also when paused),
//! with all or some of its shards and optionally another payload.
//!
//! The fire's instant is now, to the millisecond, and never the instant of a
//! scheduled fire nor of another trigger by this replica, so its shard
//! messages get dedup ids of their own. Its record goes to the manual ring of
//! the job's run history (slots `m0` .. `m<history-1>`, oldest reused first)
//! before the shards are published, so workers always find the fire their
//! shard records belong to.
//!
//! A payload may be as large as one a definition can hold
//! ([`MAX_PAYLOAD_BYTES`]). A job deleted while its fire is being
//! dispatched has the shards just stored purged (see [`crate::deletion`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetcron_shared::api::{ApiError, ErrorCode, TriggerReply, TriggerRequest, encode_ok};
use jetcron_shared::job::MAX_PAYLOAD_BYTES;
use jetcron_shared::runs::{self, FireRecord};
use jetcron_shared::wire::{self, Cause, Event, EventBody};
use jetcron_shared::{Job, Schedule};
use tracing::{info, warn};

use super::status::leader;
use super::{Ctx, bad_request, check_id, load_job, parse, scan, unavailable, valid_job};
use crate::deletion::purge_work;
use crate::dispatch::{Fire, FireJob};

/// Tries to claim a history slot against concurrent triggers.
const CLAIM_ATTEMPTS: usize = 5;

const SHAPE: &str = r#"{"id": "<job id>", "shards": [<shard index>, ...] (optional), "payload": <JSON> (optional)}"#;

pub(super) async fn trigger(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let req = request(body)?;
    let (job, revision) = valid_job(&req.id, load_job(ctx, &req.id).await?, "triggered")?;
    let shards = chosen_shards(&job, req.shards.as_deref())?;
    let reply = fire_now(
        ctx,
        Manual {
            job,
            revision,
            shards,
            payload: req.payload,
            retry_of: None,
        },
    )
    .await?;
    Ok(encode_ok(&reply))
}

/// Decodes and checks a request (its shards are checked against the job).
pub(super) fn request(body: &[u8]) -> Result<TriggerRequest, ApiError> {
    let req: TriggerRequest = parse(body, SHAPE)?;
    check_id(&req.id)?;
    check_payload(req.payload.as_ref())?;
    Ok(req)
}

/// A fire outside the schedule: a trigger, or a retry of a fire's failed
/// shards.
pub(super) struct Manual {
    pub job: Job,
    pub revision: u64,
    /// Checked with [`chosen_shards`].
    pub shards: Vec<u32>,
    /// Replaces the job's payload for this fire.
    pub payload: Option<serde_json::Value>,
    /// The fire a retry retries.
    pub retry_of: Option<String>,
}

/// Records and dispatches a manual fire now, and reports it with a
/// `triggered` event.
pub(super) async fn fire_now(ctx: &Ctx, m: Manual) -> Result<TriggerReply, ApiError> {
    let id = m.job.id().to_string();
    let instant = manual_instant(ctx, &m.job.schedule);
    let epoch = leader(ctx).await?.map_or(0, |l| l.epoch);
    let fire_id = wire::fire_id(&id, instant);
    let record = FireRecord {
        job: id.clone(),
        fire_id: fire_id.clone(),
        instant,
        cause: Cause::Manual,
        fired_at: Utc::now(),
        shards: m.job.shard_count(),
        dispatched: m.shards.clone(),
        epoch,
        payload: m.payload.clone(),
        retry_of: m.retry_of.clone(),
    };
    let key = record_fire(ctx, &m.job, &record).await?;
    let fire = Fire {
        job: FireJob::full(Arc::new(m.job)),
        revision: m.revision,
        instant,
        cause: Cause::Manual,
        missed: 1,
        first_missed: instant,
        shards: Some(m.shards.clone()),
        payload: m.payload,
        record: Some(key),
        replaces: None,
        parent: None,
        skipped: None,
    };
    match ctx.dispatcher.dispatch(&fire, epoch).await {
        Ok(d) if d.duplicates > 0 => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "fire {fire_id} was already dispatched (a trigger on another replica in \
                     the same millisecond); try again"
                ),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(unavailable("work stream", e)),
    }
    if deleted_meanwhile(ctx, &id).await {
        if let Err(e) = purge_work(&ctx.work, &ctx.names, &id).await {
            warn!(error = %e, "job deleted while triggered: its shards stay");
        }
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("job '{id}' was deleted while it was being triggered; its shards were removed"),
        ));
    }
    info!(job = %id, %instant, shards = ?m.shards, retry_of = ?m.retry_of, "triggered");
    let event = Event::now(EventBody::Triggered {
        job: id.clone(),
        fire_id: fire_id.clone(),
        instant,
        shards: m.shards.clone(),
        retry_of: m.retry_of,
    });
    ctx.events
        .publish(&event, Some(format!("triggered:{fire_id}")))
        .await;
    ctx.metrics.fired(Cause::Manual);
    Ok(TriggerReply {
        id,
        fire_id,
        instant,
        shards: m.shards,
    })
}

/// Whether the job's definition is gone now; false when the bucket does not
/// answer (the purges of the delete itself then remain).
async fn deleted_meanwhile(ctx: &Ctx, id: &str) -> bool {
    match ctx.jobs.entry(id).await {
        Ok(entry) => entry.is_none_or(|e| e.operation != Operation::Put),
        Err(e) => {
            warn!(job = %id, error = %e, "cannot check that the job still exists");
            false
        }
    }
}

/// Refuses a payload larger than a definition could hold.
fn check_payload(payload: Option<&serde_json::Value>) -> Result<(), ApiError> {
    let Some(payload) = payload else {
        return Ok(());
    };
    let size = payload.to_string().len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(bad_request(format!(
            "payload: is {size} bytes as JSON, the limit is {MAX_PAYLOAD_BYTES}"
        )));
    }
    Ok(())
}

/// Writes the fire record into the job's ring of manual slots `m0` ..
/// `m<history-1>`: a free slot if there is one, else the slot of the oldest
/// manual fire. The write is the claim (create, or update at the revision
/// read), so two triggers never share a slot; the loser picks again.
async fn record_fire(ctx: &Ctx, job: &Job, record: &FireRecord) -> Result<String, ApiError> {
    let body = Bytes::from(runs::encode(record));
    for _ in 0..CLAIM_ATTEMPTS {
        let slots = manual_slots(ctx, job).await?;
        let free = (0..job.history()).find(|k| !slots.contains_key(k));
        let (slot, revision) = match free {
            Some(k) => (k, None),
            None => slots
                .iter()
                .min_by_key(|(_, (_, fired_at))| *fired_at)
                .map_or((0, None), |(k, (revision, _))| (*k, Some(*revision))),
        };
        let key = ctx.names.run_fire_key(job.id(), &format!("m{slot}"));
        let written = match revision {
            None => match ctx.runs.create(key.as_str(), body.clone()).await {
                Ok(_) => true,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                Err(e) => return Err(unavailable("runs bucket", e)),
            },
            Some(rev) => match ctx.runs.update(key.as_str(), body.clone(), rev).await {
                Ok(_) => true,
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                Err(e) => return Err(unavailable("runs bucket", e)),
            },
        };
        if written {
            return Ok(key);
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!(
            "too many concurrent triggers of job '{}'; try again",
            job.id()
        ),
    ))
}

/// The job's manual slots in use (below its history size): revision and
/// fire time of each record. An unreadable record counts as the oldest.
async fn manual_slots(
    ctx: &Ctx,
    job: &Job,
) -> Result<HashMap<u32, (u64, DateTime<Utc>)>, ApiError> {
    // `<job>.*`: fire records only (shard records have one token more).
    let records = scan::latest(&ctx.runs, &format!("{}.*", job.id()))
        .await
        .map_err(|e| unavailable("runs bucket", e))?;
    let prefix = format!("{}.m", job.id());
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let slot: u32 = r.key.strip_prefix(&prefix)?.parse().ok()?;
            let fired_at = runs::decode::<FireRecord>(&r.value)
                .map_or(DateTime::<Utc>::MIN_UTC, |f| f.fired_at);
            (slot < job.history()).then_some((slot, (r.revision, fired_at)))
        })
        .collect())
}

/// The shards to fire: all, or the listed ones (each a shard of the job,
/// none twice, at least one).
pub(super) fn chosen_shards(job: &Job, listed: Option<&[u32]>) -> Result<Vec<u32>, ApiError> {
    let count = job.shard_count();
    let Some(listed) = listed else {
        return Ok((0..count).collect());
    };
    if listed.is_empty() {
        return Err(bad_request(format!(
            "shards: must list at least one shard index (0-{}), or be left out for all",
            count.saturating_sub(1)
        )));
    }
    let mut seen = HashSet::new();
    for (i, &s) in listed.iter().enumerate() {
        if s >= count {
            return Err(bad_request(format!(
                "shards[{i}]: {s} is not a shard of job '{}' (it has {count})",
                job.id()
            )));
        }
        if !seen.insert(s) {
            return Err(bad_request(format!("shards[{i}]: {s} is listed twice")));
        }
    }
    Ok(listed.to_vec())
}

/// Now, to the millisecond; later than this replica's previous manual
/// instant, and not an instant of the schedule (whose fire has that dedup id).
fn manual_instant(ctx: &Ctx, schedule: &Schedule) -> DateTime<Utc> {
    let now = Utc::now().timestamp_millis();
    loop {
        let last = ctx.last_manual_ms.load(Ordering::SeqCst);
        let mut ms = now.max(last + 1);
        while is_scheduled(schedule, ms) {
            ms += 1;
        }
        if ctx
            .last_manual_ms
            .compare_exchange(last, ms, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now);
        }
    }
}

fn is_scheduled(schedule: &Schedule, ms: i64) -> bool {
    DateTime::from_timestamp_millis(ms)
        .is_some_and(|t| schedule.next_after(t - chrono::Duration::milliseconds(1)) == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(shards: &str) -> Job {
        let body = format!(
            r#"{{"id":"x","schedule":"@hourly","shards":{shards},"run":{{"shell":"true"}}}}"#
        );
        Job::decode(body.as_bytes(), None).unwrap()
    }

    #[test]
    fn manual_instants_avoid_scheduled_ones() {
        let every: Schedule = job("1").schedule;
        let hour = 3_600_000;
        assert!(is_scheduled(&every, 5 * hour));
        assert!(!is_scheduled(&every, 5 * hour + 1));
    }

    #[test]
    fn a_payload_may_be_as_large_as_a_definition_can_hold() {
        assert!(check_payload(None).is_ok());
        let fits = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES - 2));
        assert!(check_payload(Some(&fits)).is_ok());
        let over = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES - 1));
        let e = check_payload(Some(&over)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(
            e.message,
            format!(
                "payload: is {} bytes as JSON, the limit is 262144",
                MAX_PAYLOAD_BYTES + 1
            )
        );
    }

    #[test]
    fn shards_are_checked_one_by_one() {
        let j = job("3");
        assert_eq!(chosen_shards(&j, None).unwrap(), vec![0, 1, 2]);
        assert_eq!(chosen_shards(&j, Some(&[2, 0])).unwrap(), vec![2, 0]);
        let e = chosen_shards(&j, Some(&[0, 1, 7])).unwrap_err();
        assert_eq!(
            e.message,
            "shards[2]: 7 is not a shard of job 'x' (it has 3)"
        );
        let e = chosen_shards(&j, Some(&[1, 1])).unwrap_err();
        assert_eq!(e.message, "shards[1]: 1 is listed twice");
        let e = chosen_shards(&j, Some(&[])).unwrap_err();
        assert!(e.message.starts_with("shards: "), "{}", e.message);
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
