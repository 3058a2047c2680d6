//! `job.put` refuses a definition whose `on_success` chain leads back to
//! itself through the stored definitions: `on_success: a cycle: a -> b -> a`
//! (bad request). Children that do not exist yet are fine; a paused job's
//! children count (it may be resumed), an invalid one has none.
//!
//! The stored definitions come from the job index when it holds what the
//! bucket holds; otherwise (a replica still loading, or behind) from the
//! bucket itself, only what the new definition reaches.
//!
//! Two puts at once may each close half of a cycle (`a -> b` and
//! `b -> a`), each checked against a bucket without the other: both are
//! stored. Nothing here can prevent that without a lock over the whole
//! bucket; the scheduler refuses to follow a cycle when it fires instead.

use std::collections::{HashMap, HashSet, VecDeque};

use jetcron_shared::Job;
use jetcron_shared::api::{ApiError, ErrorCode};
use jetcron_shared::job::find_cycle;

use super::{Ctx, IndexState, bad_request, index_current, load_job};
use crate::catalog::{Def, JobIndex};

/// Refuses `job` if following `on_success` from it comes back to it.
pub(super) async fn refuse_cycle(ctx: &Ctx, job: &Job) -> Result<(), ApiError> {
    let own = job.on_success();
    if own.is_empty() {
        return Ok(());
    }
    let id = job.spec.id.as_str();
    // The definition being put counts instead of the stored one.
    let cycle = if index_current(ctx).await? == IndexState::Current {
        find_cycle(id, |j| {
            if j == id {
                own.to_vec()
            } else {
                indexed_children(&ctx.index, j)
            }
        })
    } else {
        let read = read_reachable(ctx, id, own).await?;
        find_cycle(id, |j| {
            if j == id {
                own.to_vec()
            } else {
                read.get(j).cloned().unwrap_or_default()
            }
        })
    };
    match cycle {
        Some(cycle) => Err(bad_request(cycle.to_string())),
        None => Ok(()),
    }
}

/// The `on_success` of the definition the index holds for `id`.
fn indexed_children(index: &JobIndex, id: &str) -> Vec<String> {
    match index.get(id) {
        Some((_, Def::Valid(def))) => def.on_success().iter().map(|c| c.to_string()).collect(),
        Some((_, Def::Invalid(_))) | None => Vec::new(),
    }
}

/// Reads from the bucket the `on_success` of every stored job reachable
/// from `children`, except `root` (being put).
async fn read_reachable(
    ctx: &Ctx,
    root: &str,
    children: &[String],
) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let mut read = HashMap::new();
    let mut seen: HashSet<String> = HashSet::from([root.to_string()]);
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut follow = |ids: &[String], queue: &mut VecDeque<String>| {
        for c in ids {
            if seen.insert(c.clone()) {
                queue.push_back(c.clone());
            }
        }
    };
    follow(children, &mut queue);
    while let Some(id) = queue.pop_front() {
        let next = match load_job(ctx, &id).await {
            Ok(stored) => stored
                .job
                .map(|j| j.on_success().to_vec())
                .unwrap_or_default(),
            Err(e) if e.code == ErrorCode::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        follow(&next, &mut queue);
        read.insert(id, next);
    }
    Ok(read)
}
