//! A group's backlog in the work stream: the shards waiting, the shards
//! delivered to a worker and not settled yet, and the age of the oldest
//! message. For `status` and the metrics.
//!
//! A group's shards are read through several consumers: the group's own,
//! `jetcron-<group>`, for shell and HTTP shards, and one per handler,
//! `jetcron-<group>@<handler>`. Their counters say what waits and what is
//! in flight, at no cost per message. Shards of a handler no worker serves
//! have no consumer: they are counted from the stream, listing only the
//! subjects of handler jobs (`jetcron.work.<group>.*.*`), so a burst of
//! shell jobs costs no listing. Before any worker made the group's own
//! consumer, its shell and HTTP shards are counted from the stream too.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use jetcron_shared::Names;

/// Groups queried at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Stored and not delivered (or handed back).
    pub pending: u64,
    /// Delivered to a worker, not settled yet.
    pub in_flight: u64,
    /// Age of the group's oldest message in the work stream.
    pub oldest_age_ms: Option<i64>,
}

/// The backlog of each of `groups`.
pub async fn backlogs(
    work: &Stream,
    names: &Names,
    groups: Vec<String>,
) -> Result<BTreeMap<String, Backlog>, String> {
    // (waiting, delivered and unsettled) per consumer name.
    let consumers: BTreeMap<String, (u64, u64)> = work
        .consumers()
        .map_ok(|info| (info.name, (info.num_pending, info.num_ack_pending as u64)))
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let consumers = &consumers;
    stream::iter(groups)
        .map(|group| async move {
            let own = names.work_consumer(&group);
            let served = format!("{own}@");
            let (mut pending, mut in_flight) = (0, 0);
            let mut handlers = BTreeSet::new();
            for (name, (waiting, delivered)) in consumers {
                let handler = name.strip_prefix(&served);
                if *name == own || handler.is_some() {
                    pending += waiting;
                    in_flight += delivered;
                    handlers.extend(handler.map(str::to_string));
                }
            }
            let plain_unserved = if consumers.contains_key(&own) {
                0
            } else {
                stored(work, &names.work_plain(&group), |_| true).await?
            };
            let handler_subjects = format!("{}.work.{group}.*.*", names.prefix());
            let unserved = stored(work, &handler_subjects, |subject| {
                subject
                    .rsplit('.')
                    .next()
                    .is_some_and(|h| !handlers.contains(h))
            })
            .await?;
            let oldest_age_ms = oldest_age_ms(work, names, &group).await?;
            let backlog = Backlog {
                pending: pending + plain_unserved + unserved,
                in_flight,
                oldest_age_ms,
            };
            Ok((group, backlog))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Messages the work stream holds on the subjects of `filter` that `count`
/// picks.
async fn stored(work: &Stream, filter: &str, count: impl Fn(&str) -> bool) -> Result<u64, String> {
    let count = &count;
    work.info_with_subjects(filter)
        .await
        .map_err(|e| e.to_string())?
        .try_fold(0u64, |sum, (subject, n)| async move {
            Ok(sum
                + if count(&subject) {
                    u64::try_from(n).unwrap_or(0)
                } else {
                    0
                })
        })
        .await
        .map_err(|e| e.to_string())
}

async fn oldest_age_ms(work: &Stream, names: &Names, group: &str) -> Result<Option<i64>, String> {
    match work
        .get_first_raw_message_by_subject(names.work_group(group), 0)
        .await
    {
        Ok(m) => {
            let stored_ms = i64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok();
            Ok(stored_ms.map(|ms| (Utc::now().timestamp_millis() - ms).max(0)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
