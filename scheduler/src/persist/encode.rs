//! How a batch becomes writes: fire states (single keys and tick records),
//! shard messages and events, each with the subject, headers and body the
//! leader stores (see [`super::Persist::run`]).

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::job::Misfire;
use jetcron_shared::runs;
use jetcron_shared::wire::{self, Cause, Event, EventBody};
use tracing::error;

use super::{Action, Batch, Item, Persist, StateWrite, Write};
use crate::dispatch::Fire;
use crate::fence::Target;
use crate::state::{self, FireState, TickState};

/// Largest tick record: far below any server's max payload.
const TICK_BYTES: usize = 256 * 1024;
const KV_OPERATION: &str = "KV-Operation";
const NATS_ROLLUP: &str = "Nats-Rollup";

/// Batches of at most this many items encode their writes on the runtime's
/// thread; larger ones on the blocking pool (see [`Persist::run`]).
const INLINE_ITEMS: usize = 64;

/// A batch's writes, encoded.
pub(super) struct Encoded {
    /// Single-key state writes first (`single` of them), then tick records.
    pub(super) states: Vec<Write>,
    pub(super) single: usize,
    /// Per tick record, the items it holds.
    pub(super) members: Vec<Vec<usize>>,
    pub(super) shards: Vec<Write>,
    /// Per shard write, its item.
    pub(super) owner: Vec<usize>,
}

/// `encode(items)`, on the runtime's thread for a small batch and on the
/// blocking pool for a large one; the items are handed back.
async fn with_items<T: Send + 'static>(
    items: Vec<Item>,
    encode: impl FnOnce(&[Item]) -> T + Send + 'static,
) -> (Vec<Item>, T) {
    if items.len() <= INLINE_ITEMS {
        let out = encode(&items);
        return (items, out);
    }
    match tokio::task::spawn_blocking(move || {
        let out = encode(&items);
        (items, out)
    })
    .await
    {
        Ok(done) => done,
        // Only a panic in encoding gets here: resume it.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Persist {
    /// The writes of a batch's states and shards, encoded off the runtime's
    /// threads when the batch is large.
    pub(super) async fn encode(&self, batch: Batch, epoch: u64) -> (Vec<Item>, Encoded) {
        let this = self.clone();
        let id = batch.id;
        with_items(batch.items, move |items| this.encode_now(items, epoch, id)).await
    }

    pub(super) fn encode_now(&self, items: &[Item], epoch: u64, batch: u64) -> Encoded {
        let mut states = Vec::new();
        let mut ticked = Vec::new();
        for (n, item) in items.iter().enumerate() {
            match (&item.state, &item.action) {
                (StateWrite::Put(s), Action::Fire(_)) => ticked.push((n, s)),
                (state, _) => states.extend(self.state_write(&item.job, state)),
            }
        }
        let single = states.len();
        let parts = self.tick_writes(epoch, batch, items, &ticked);
        let mut members = Vec::with_capacity(parts.len());
        for (write, m) in parts {
            states.push(write);
            members.push(m);
        }
        let mut shards = Vec::new();
        let mut owner = Vec::new();
        for (n, item) in items.iter().enumerate() {
            if let Action::Fire(f) = &item.action {
                for w in self.shard_writes(f, epoch) {
                    owner.push(n);
                    shards.push(w);
                }
            }
        }
        Encoded {
            states,
            single,
            members,
            shards,
            owner,
        }
    }

    /// The events of a batch, stored at `at`; encoded off the runtime's
    /// threads when the batch is large.
    pub(super) async fn encode_reports(
        &self,
        items: Vec<Item>,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> (Vec<Item>, Vec<Write>) {
        let this = self.clone();
        with_items(items, move |items| {
            this.encode_reports_now(items, epoch, at)
        })
        .await
    }

    pub(super) fn encode_reports_now(
        &self,
        items: &[Item],
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Vec<Write> {
        items
            .iter()
            .flat_map(|item| self.reports(item, epoch, at))
            .collect()
    }

    /// The tick records holding the states of `ticked` (item index and
    /// state), each with the items it holds.
    pub(super) fn tick_writes(
        &self,
        epoch: u64,
        batch: u64,
        items: &[Item],
        ticked: &[(usize, &FireState)],
    ) -> Vec<(Write, Vec<usize>)> {
        let mut out = Vec::new();
        let mut part: Vec<u8> = Vec::new();
        let mut members = Vec::new();
        let flush = |part: &mut Vec<u8>, members: &mut Vec<usize>, out: &mut Vec<_>| {
            if members.is_empty() {
                return;
            }
            part.extend_from_slice(b"]}");
            let key = self.names.tick_key(epoch, batch, out.len());
            let body = Bytes::from(std::mem::take(part));
            let w = self.kv_put(Target::State, &self.names.state_bucket(), &key, body);
            out.push((w, std::mem::take(members)));
        };
        for (n, state) in ticked {
            let one = runs::encode(&TickState {
                job: items[*n].job.clone(),
                state: (*state).clone(),
            });
            if !members.is_empty() && part.len() + one.len() + 2 > TICK_BYTES {
                flush(&mut part, &mut members, &mut out);
            }
            if members.is_empty() {
                part = format!(r#"{{"epoch":{epoch},"states":["#).into_bytes();
            } else {
                part.push(b',');
            }
            part.extend_from_slice(&one);
            members.push(*n);
        }
        flush(&mut part, &mut members, &mut out);
        out
    }

    pub(super) fn state_write(&self, job: &str, state: &StateWrite) -> Option<Write> {
        let bucket = self.names.state_bucket();
        match state {
            StateWrite::Put(s) => {
                Some(self.kv_put(Target::State, &bucket, job, Bytes::from(runs::encode(s))))
            }
            StateWrite::Purge => {
                let mut headers = HeaderMap::new();
                headers.insert(KV_OPERATION, "PURGE");
                headers.insert(NATS_ROLLUP, "sub");
                Some(Write {
                    target: Target::State,
                    subject: Names::kv_subject(&bucket, job),
                    headers,
                    body: Bytes::new(),
                })
            }
            StateWrite::Stored => None,
        }
    }

    pub(super) fn kv_put(&self, target: Target, bucket: &str, key: &str, body: Bytes) -> Write {
        Write {
            target,
            subject: Names::kv_subject(bucket, key),
            headers: HeaderMap::new(),
            body,
        }
    }

    pub(super) fn shard_writes(&self, fire: &Fire, epoch: u64) -> Vec<Write> {
        let messages = match fire.messages(epoch) {
            Ok(m) => m,
            Err(e) => {
                // Validated when it was loaded: only a change in validation
                // itself can get here.
                error!(job = fire.job.id(), error = %e, "cannot make the shard messages of a fire; not dispatched");
                Vec::new()
            }
        };
        messages
            .into_iter()
            .map(|m| Write {
                target: Target::Work,
                subject: self.names.shard_subject(&m.group, &m.job, &m.run),
                headers: m.headers(),
                body: Bytes::from(m.encode()),
            })
            .collect()
    }

    pub(super) fn event_at(&self, at: DateTime<Utc>, body: EventBody, msg_id: String) -> Write {
        let event = Event { at, body };
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        Write {
            target: Target::Events,
            subject: self.names.event_subject(event.kind(), event.job()),
            headers,
            body: Bytes::from(event.encode()),
        }
    }

    pub(super) fn reports(&self, item: &Item, epoch: u64, at: DateTime<Utc>) -> Vec<Write> {
        reports(item, epoch, at)
            .into_iter()
            .map(|(body, id)| self.event_at(at, body, id))
            .collect()
    }
}

/// The events that tell what an item did, stored at `at`, each with its
/// message id (the same when a successor redoes the decision). A fire's
/// `fired` event is also its run-history entry (see [`crate::api`]'s
/// `job.runs`). Every late instant that does not fire as itself is named by
/// a `misfired` event: those a `fire_once` fire stands for, and those
/// skipped under `skip` or beyond the limit of `fire_all`. A late fire of
/// `fire_all` is its own instant; its `fired` event (cause `misfire`) says
/// it was late.
pub fn reports(item: &Item, epoch: u64, at: DateTime<Utc>) -> Vec<(EventBody, String)> {
    let job = item.job.clone();
    match &item.action {
        Action::Fire(f) => {
            let fire_id = wire::fire_id(&job, f.instant);
            let mut out = Vec::with_capacity(2);
            if f.cause == Cause::Misfire && f.job.misfire() == Misfire::FireOnce {
                out.push((
                    EventBody::Misfired {
                        job: job.clone(),
                        missed: f.missed,
                        first_missed: f.first_missed,
                        last_missed: f.instant,
                        fired: Some(f.instant),
                        epoch,
                        policy: Misfire::FireOnce,
                    },
                    format!("misfired:{fire_id}"),
                ));
            }
            if let Some(replaced) = f.replaces {
                out.push((
                    EventBody::Replaced {
                        job: job.clone(),
                        instant: replaced,
                        by: f.instant,
                        epoch,
                    },
                    format!("replaced:{fire_id}"),
                ));
            }
            if let Some(span) = f.skipped {
                out.push((
                    EventBody::Skipped {
                        job: job.clone(),
                        instant: span.last,
                        reason: state::OVERLAP.to_string(),
                        count: span.count,
                    },
                    format!("skipped:{}", wire::fire_id(&job, span.last)),
                ));
            }
            out.push((
                EventBody::Fired {
                    job,
                    instant: f.instant,
                    shards: f.job.shard_count(),
                    epoch,
                    cause: f.cause,
                    late_ms: (at - f.instant).num_milliseconds(),
                    record: f.record.clone(),
                    parent: f.parent.clone(),
                },
                format!("fired:{fire_id}"),
            ));
            out
        }
        Action::Skip {
            first,
            instant,
            count,
            reason,
        } => {
            let policy = match reason.as_str() {
                state::MISFIRE => Some(Misfire::Skip),
                state::MISFIRE_LIMIT => Some(Misfire::FireAll),
                _ => None,
            };
            let body = match policy {
                Some(policy) => EventBody::Misfired {
                    job: job.clone(),
                    missed: *count,
                    first_missed: *first,
                    last_missed: *instant,
                    fired: None,
                    epoch,
                    policy,
                },
                None => EventBody::Skipped {
                    job: job.clone(),
                    instant: *instant,
                    reason: reason.clone(),
                    count: *count,
                },
            };
            let kind = if policy.is_some() {
                "misfired"
            } else {
                "skipped"
            };
            vec![(body, format!("{kind}:{}", wire::fire_id(&job, *instant)))]
        }
        Action::Forget | Action::Track => Vec::new(),
    }
}
