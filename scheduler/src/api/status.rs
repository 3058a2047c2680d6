//! `status` and `workers`: the deployment at a glance, from what is stored
//! (any replica answers alike).
//!
//! - leader: the lease key (holder, since, epoch);
//! - replicas: heartbeats `replica.*` in the lease bucket;
//! - jobs: counted as active, paused and invalid by the job index, in
//!   memory (the first invalid ones named); no read of the jobs bucket;
//! - groups: every group named by a job or a worker heartbeat, with its
//!   jobs, workers, and backlog in the work stream (see [`crate::backlog`]):
//!   shards waiting, shards delivered and not settled, and the age of its
//!   oldest message.

use std::collections::BTreeMap;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use jetcron_shared::api::{
    ApiError, GroupStatus, InvalidJob, JobCounts, LeaderInfo, STATUS_INVALID_LISTED, StatusReply,
    WorkersReply, encode_ok,
};
use jetcron_shared::runs::{self, ReplicaHeartbeat, WorkerHeartbeat};

use super::{Ctx, IndexState, index_current, no_params, scan, unavailable};
use crate::backlog::backlogs;
use crate::lease::LeaseValue;

pub(super) async fn status(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    no_params(body)?;
    let (leader, replicas, jobs, workers) = tokio::try_join!(
        leader(ctx),
        replicas(ctx),
        count_jobs(ctx),
        worker_heartbeats(ctx)
    )?;
    let (counts, job_groups) = jobs;
    // (jobs, workers) per group.
    let mut per_group: BTreeMap<String, (u64, u64)> = job_groups
        .into_iter()
        .map(|(g, jobs)| (g, (jobs, 0)))
        .collect();
    for w in &workers {
        per_group.entry(w.group.clone()).or_default().1 += 1;
    }
    let backlogs = backlogs(&ctx.work, &ctx.names, per_group.keys().cloned().collect())
        .await
        .map_err(|e| unavailable("work stream", e))?;
    let groups = per_group
        .into_iter()
        .map(|(group, (jobs, workers))| {
            let b = backlogs.get(&group).copied().unwrap_or_default();
            GroupStatus {
                group,
                jobs,
                workers,
                pending: b.pending,
                in_flight: b.in_flight,
                oldest_pending_age_ms: b.oldest_age_ms,
            }
        })
        .collect();
    Ok(encode_ok(&StatusReply {
        leader,
        replicas,
        jobs: counts,
        groups,
    }))
}

pub(super) async fn workers(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    no_params(body)?;
    let workers = worker_heartbeats(ctx).await?;
    Ok(encode_ok(&WorkersReply { workers }))
}

/// The current leader, from the lease key. The epoch is the revision at
/// which the holder took the lease, as the holder writes it into the value;
/// a value without one (the holder's very first write) is at that revision.
pub(super) async fn leader(ctx: &Ctx) -> Result<Option<LeaderInfo>, ApiError> {
    let entry = ctx
        .lease
        .entry(ctx.names.lease_key())
        .await
        .map_err(|e| unavailable("lease bucket", e))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Ok(None);
    };
    Ok(
        runs::decode::<LeaseValue>(&entry.value).map(|v| LeaderInfo {
            holder: v.holder,
            epoch: v.epoch.unwrap_or(entry.revision),
            since: v.since,
        }),
    )
}

async fn replicas(ctx: &Ctx) -> Result<Vec<ReplicaHeartbeat>, ApiError> {
    let mut out: Vec<ReplicaHeartbeat> = scan::latest(&ctx.lease, "replica.>")
        .await
        .map_err(|e| unavailable("lease bucket", e))?
        .into_iter()
        .filter_map(|r| runs::decode(&r.value))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Every heartbeat in the workers bucket, sorted by group and id.
async fn worker_heartbeats(ctx: &Ctx) -> Result<Vec<WorkerHeartbeat>, ApiError> {
    let mut out: Vec<WorkerHeartbeat> = scan::latest(&ctx.workers, ">")
        .await
        .map_err(|e| unavailable("workers bucket", e))?
        .into_iter()
        .filter_map(|r| runs::decode(&r.value))
        .collect();
    out.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
    Ok(out)
}

/// Job counts, and the valid jobs per group, from the job index once it
/// holds the bucket's latest writes (or could not catch up in time).
async fn count_jobs(ctx: &Ctx) -> Result<(JobCounts, Vec<(String, u64)>), ApiError> {
    let state = index_current(ctx).await?;
    let c = ctx.index.counts(STATUS_INVALID_LISTED);
    let counts = JobCounts {
        total: c.active + c.paused + c.invalid,
        active: c.active,
        paused: c.paused,
        invalid_count: c.invalid,
        invalid: c
            .first_invalid
            .into_iter()
            .map(|(id, error)| InvalidJob { id, error })
            .collect(),
        complete: state != IndexState::Loading,
    };
    let groups = c.groups.into_iter().map(|(g, n)| (g, n.total())).collect();
    Ok((counts, groups))
}
