//! `job.pause` / `job.resume`: set the definition's `paused` flag with
//! update-at-revision, retrying a few times when someone else changed the
//! definition in between.
//!
//! The engine does the rest: a paused job's instants pass without a fire.
//! The first one is reported as `skipped` (and counted in the fire state's
//! `paused_skipped`); the engine then leaves the job alone until its
//! definition changes, so a paused job writes nothing per instant. After a
//! resume it fires from the next instant on; skipped instants are not
//! replayed. `job.resume` reports how many passed in all as `skipped`,
//! counted from the fire state and the schedule before the definition
//! changes (at most [`crate::decide::MAX_SKIPPED_COUNT`]).

use async_nats::jetstream::kv::UpdateErrorKind;
use bytes::Bytes;
use chrono::Utc;
use jetcron_shared::Schedule;
use jetcron_shared::api::{ApiError, PauseReply, ResumeReply, encode_ok};
use jetcron_shared::wire::{Event, EventBody};
use tracing::{info, warn};

use super::jobs::id_request;
use super::{Ctx, load_job, unavailable, valid_job};
use crate::decide::skipped_since;

/// Attempts when the definition keeps changing under us.
const ATTEMPTS: usize = 5;

/// The outcome of setting the flag.
struct Flagged {
    revision: u64,
    changed: bool,
    /// `paused_skipped` of the fire state, read just before a resume.
    skipped: u64,
}

pub(super) async fn pause(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    let f = set_paused(ctx, &id, true).await?;
    if f.changed {
        info!(job = %id, revision = f.revision, "job paused");
        let event = Event::now(EventBody::Paused {
            job: id.clone(),
            revision: f.revision,
        });
        ctx.events.publish(&event, None).await;
    }
    Ok(encode_ok(&PauseReply {
        id,
        revision: f.revision,
        changed: f.changed,
    }))
}

pub(super) async fn resume(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    let f = set_paused(ctx, &id, false).await?;
    if f.changed {
        info!(job = %id, revision = f.revision, skipped = f.skipped, "job resumed");
        let event = Event::now(EventBody::Resumed {
            job: id.clone(),
            revision: f.revision,
            skipped: f.skipped,
        });
        ctx.events.publish(&event, None).await;
    }
    Ok(encode_ok(&ResumeReply {
        id,
        revision: f.revision,
        changed: f.changed,
        skipped: f.skipped,
    }))
}

async fn set_paused(ctx: &Ctx, id: &str, paused: bool) -> Result<Flagged, ApiError> {
    let action = if paused { "paused" } else { "resumed" };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (job, revision) = valid_job(id, load_job(ctx, id).await?, action)?;
        if job.paused() == paused {
            return Ok(Flagged {
                revision,
                changed: false,
                skipped: 0,
            });
        }
        let skipped = if paused {
            0
        } else {
            paused_skipped(ctx, id, &job.schedule).await
        };
        let mut spec = job.spec;
        spec.paused = paused;
        match ctx
            .jobs
            .update(id, Bytes::from(spec.encode()), revision)
            .await
        {
            Ok(revision) => {
                return Ok(Flagged {
                    revision,
                    changed: true,
                    skipped,
                });
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision && attempt < ATTEMPTS => {
                continue;
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                return Err(ApiError::new(
                    jetcron_shared::api::ErrorCode::Conflict,
                    format!(
                        "job '{id}' changed {ATTEMPTS} times while it was being {action}; try again"
                    ),
                ));
            }
            Err(e) => return Err(unavailable("jobs bucket", e)),
        }
    }
}

/// Instants skipped while paused, from the fire state and the schedule;
/// 0 when unknown (the count is informative, never a reason to refuse a
/// resume).
async fn paused_skipped(ctx: &Ctx, id: &str, schedule: &Schedule) -> u64 {
    match ctx.state.load(id).await {
        Ok(v) => v
            .state
            .map_or(0, |s| skipped_since(schedule, &s, Utc::now())),
        Err(e) => {
            warn!(job = %id, error = %e, "cannot read the fire state; reporting 0 skipped");
            0
        }
    }
}
