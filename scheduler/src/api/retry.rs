//! `job.retry`: run again the shards of one fire that ended failed, timed
//! out (after all their attempts) or expired, as a new manual fire of the
//! job.
//!
//! The new fire's instant is now, so a job with a `deadline` gives its
//! shards the whole deadline again, counted from that instant.
//!
//! The new fire is made like a `job.trigger` of those shards (same record
//! ring, same `triggered` event, with `retry_of` naming the fire retried),
//! from the job's current definition and with the payload the retried fire
//! had. Shards still pending or running, and those that succeeded, are not
//! touched: retrying a fire twice while its retry runs is refused only when
//! nothing of it failed.

use bytes::Bytes;
use jetcron_shared::api::{ApiError, ErrorCode, RetryReply, RetryRequest, encode_ok};
use jetcron_shared::quote::quote;
use jetcron_shared::runs::ShardState;

use super::runs::history;
use super::trigger::{Manual, chosen_shards, fire_now};
use super::{Ctx, bad_request, check_id, load_job, parse, valid_job};

const SHAPE: &str = r#"{"id": "<job id>", "fire_id": "<fire id from job.runs>"}"#;

pub(super) async fn retry(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let req = request(body)?;
    let (job, revision) = valid_job(&req.id, load_job(ctx, &req.id).await?, "retried")?;
    let fires = history(ctx, &req.id, None).await?;
    let Some((record, run)) = fires.into_iter().find(|(_, r)| r.fire_id == req.fire_id) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "fire {} of job '{}' is not in its run history (job.runs lists the fires kept)",
                quote(&req.fire_id),
                req.id
            ),
        ));
    };
    let failed: Vec<u32> = run
        .shards
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                ShardState::Failed | ShardState::TimedOut | ShardState::Expired
            )
        })
        .map(|s| s.shard)
        .collect();
    if failed.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "fire {} has no failed, timed-out or expired shard to retry ({})",
                req.fire_id,
                tally(&run.shards)
            ),
        ));
    }
    let shards = chosen_shards(&job, Some(&failed))?;
    let reply = fire_now(
        ctx,
        Manual {
            job,
            revision,
            shards,
            payload: record.payload,
            retry_of: Some(req.fire_id.clone()),
        },
    )
    .await?;
    Ok(encode_ok(&RetryReply {
        id: reply.id,
        fire_id: reply.fire_id,
        retry_of: req.fire_id,
        instant: reply.instant,
        shards: reply.shards,
    }))
}

/// Decodes and checks a request.
pub(super) fn request(body: &[u8]) -> Result<RetryRequest, ApiError> {
    let req: RetryRequest = parse(body, SHAPE)?;
    check_id(&req.id)?;
    if req.fire_id.trim().is_empty() {
        return Err(bad_request(
            "fire_id: must name a fire of the job (a fire_id of job.runs), found an empty string",
        ));
    }
    Ok(req)
}

/// `2 succeeded, 1 running`: the shard states of a fire, counted.
fn tally(shards: &[jetcron_shared::api::ShardRun]) -> String {
    let mut counts: Vec<(ShardState, usize)> = Vec::new();
    for s in shards {
        match counts.iter_mut().find(|(state, _)| *state == s.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.state, 1)),
        }
    }
    counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
