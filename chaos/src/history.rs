//! Reads what the run stored, after the fact, from the streams themselves.
//!
//! A live subscription loses whatever is published while the client is
//! disconnected (a server restart), so the checker reads the streams:
//! `JETCRON_RESULTS` and `JETCRON_EVENTS` whole, with an ordered consumer
//! from the first message until the consumer reports nothing pending; the
//! fences in `JETCRON_WORK` (`jetcron.work.fence`) one by one with a
//! stream message get by `next_by_subj` (a work-queue stream refuses a
//! consumer that overlaps its workers' one); and how many shard messages
//! the work stream still holds.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::LastRawMessageErrorKind};
use futures::StreamExt;
use jetcron_shared::Names;
use jetcron_shared::wire::{Event, Fence, RunResult, ShardMessage};
use thiserror::Error;
use tokio::time::timeout;

/// Longest wait for one request or the next message of a stream.
const STEP_LIMIT: Duration = Duration::from_secs(10);
/// Undecodable messages described in the report, at most.
const MAX_UNDECODABLE: usize = 20;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("reading stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
}

fn err(stream: &str, reason: impl ToString) -> HistoryError {
    HistoryError::Stream {
        stream: stream.to_string(),
        reason: reason.to_string(),
    }
}

/// A fence message and its sequence in the work stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFence {
    pub seq: u64,
    pub fence: Fence,
}

/// A shard message still in the work stream at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Leftover {
    pub seq: u64,
    pub subject: String,
    /// `None` when the payload is not a shard message.
    pub shard: Option<ShardMessage>,
}

/// What was left in the work stream, and where its consumers stood.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkLeft {
    /// Shard messages in the stream.
    pub count: u64,
    /// The first of them (at most [`MAX_LEFTOVERS`]).
    pub messages: Vec<Leftover>,
    /// One line per consumer: ack floor, delivered, pending, ack pending.
    pub consumers: Vec<String>,
}

/// Leftover shard messages described, at most.
pub const MAX_LEFTOVERS: usize = 50;

/// Everything the run stored.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub results: Vec<RunResult>,
    pub events: Vec<Event>,
    pub fences: Vec<StoredFence>,
    /// Shard messages still in the work stream.
    pub work_left: WorkLeft,
    /// Messages that did not decode (stream, sequence, why), the first few.
    pub undecodable: Vec<String>,
    pub undecodable_count: usize,
}

impl History {
    pub async fn read(js: &jetstream::Context, names: &Names) -> Result<History, HistoryError> {
        let mut history = History::default();
        for (seq, payload) in read_all(js, &names.results_stream()).await? {
            match RunResult::decode(&payload) {
                Ok(r) => history.results.push(r),
                Err(e) => history.note_undecodable(&names.results_stream(), seq, e),
            }
        }
        for (seq, payload) in read_all(js, &names.events_stream()).await? {
            match Event::decode(&payload) {
                Ok(e) => history.events.push(e),
                Err(e) => history.note_undecodable(&names.events_stream(), seq, e),
            }
        }
        for (seq, payload) in read_fences(js, names).await? {
            match Fence::decode(&payload) {
                Ok(fence) => history.fences.push(StoredFence { seq, fence }),
                Err(e) => history.note_undecodable(&names.work_stream(), seq, e),
            }
        }
        let count = work_left(js, names).await?;
        history.work_left = if count == 0 {
            WorkLeft::default()
        } else {
            WorkLeft {
                count,
                messages: leftovers(js, names).await?,
                consumers: consumer_states(js, names).await?,
            }
        };
        Ok(history)
    }

    fn note_undecodable(&mut self, stream: &str, seq: u64, e: impl std::fmt::Display) {
        self.undecodable_count += 1;
        if self.undecodable.len() < MAX_UNDECODABLE {
            self.undecodable.push(format!("{stream} seq {seq}: {e}"));
        }
    }
}

/// Every message of a stream, in order, as (sequence, payload).
pub async fn read_all(
    js: &jetstream::Context,
    name: &str,
) -> Result<Vec<(u64, Vec<u8>)>, HistoryError> {
    let mut stream = match timeout(STEP_LIMIT, js.get_stream(name)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(err(name, e)),
        Err(_) => return Err(err(name, "stream info timed out")),
    };
    let state = match timeout(STEP_LIMIT, stream.info()).await {
        Ok(Ok(info)) => info.state.clone(),
        Ok(Err(e)) => return Err(err(name, e)),
        Err(_) => return Err(err(name, "stream info timed out")),
    };
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let config = consumer::pull::OrderedConfig {
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let consumer = match timeout(STEP_LIMIT, stream.create_consumer(config)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(err(name, format!("ordered consumer: {e}"))),
        Err(_) => return Err(err(name, "creating the ordered consumer timed out")),
    };
    let mut messages = match timeout(STEP_LIMIT, consumer.messages()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(err(name, e)),
        Err(_) => return Err(err(name, "starting the ordered consumer timed out")),
    };
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    loop {
        let message = match timeout(STEP_LIMIT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(err(name, e)),
            Ok(None) => return Err(err(name, "the ordered consumer ended early")),
            Err(_) => {
                return Err(err(
                    name,
                    format!(
                        "no message for {STEP_LIMIT:?} after {} of {} (last seq {})",
                        out.len(),
                        state.messages,
                        state.last_sequence
                    ),
                ));
            }
        };
        let info = message.info().map_err(|e| err(name, e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push((seq, message.payload.to_vec()));
        if pending == 0 {
            return Ok(out);
        }
    }
}

/// The stream `name`, with a bounded wait.
async fn open_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::stream::Stream, HistoryError> {
    match timeout(STEP_LIMIT, js.get_stream(name)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(err(name, e)),
        Err(_) => Err(err(name, "stream info timed out")),
    }
}

/// The fence messages of the work stream, by `next_by_subj` gets.
async fn read_fences(
    js: &jetstream::Context,
    names: &Names,
) -> Result<Vec<(u64, Vec<u8>)>, HistoryError> {
    let name = names.work_stream();
    let subject = names.work_fence_subject();
    let stream = open_stream(js, &name).await?;
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let got = timeout(
            STEP_LIMIT,
            stream.get_first_raw_message_by_subject(&subject, from),
        )
        .await;
        match got {
            Ok(Ok(m)) => {
                from = m.sequence + 1;
                out.push((m.sequence, m.payload.to_vec()));
            }
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(out),
            Ok(Err(e)) => return Err(err(&name, format!("getting fences after seq {from}: {e}"))),
            Err(_) => {
                return Err(err(
                    &name,
                    format!("getting fences after seq {from}: timed out"),
                ));
            }
        }
    }
}

/// Shard messages (anything but fences) left in the work stream.
pub async fn work_left(js: &jetstream::Context, names: &Names) -> Result<u64, HistoryError> {
    let name = names.work_stream();
    let stream = open_stream(js, &name).await?;
    let mut subjects = match timeout(
        STEP_LIMIT,
        stream.info_with_subjects(names.work_shards_all()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(err(&name, e)),
        Err(_) => return Err(err(&name, "stream info timed out")),
    };
    let mut total = 0u64;
    loop {
        match timeout(STEP_LIMIT, subjects.next()).await {
            Ok(Some(Ok((_, count)))) => total += count as u64,
            Ok(Some(Err(e))) => return Err(err(&name, e)),
            Ok(None) => return Ok(total),
            Err(_) => return Err(err(&name, "subject counts timed out")),
        }
    }
}

/// The first shard messages left in the work stream.
async fn leftovers(js: &jetstream::Context, names: &Names) -> Result<Vec<Leftover>, HistoryError> {
    let name = names.work_stream();
    let filter = names.work_shards_all();
    let stream = open_stream(js, &name).await?;
    let mut out = Vec::new();
    let mut from = 1;
    while out.len() < MAX_LEFTOVERS {
        match timeout(
            STEP_LIMIT,
            stream.get_first_raw_message_by_subject(&filter, from),
        )
        .await
        {
            Ok(Ok(m)) => {
                from = m.sequence + 1;
                out.push(Leftover {
                    seq: m.sequence,
                    subject: m.subject.to_string(),
                    shard: ShardMessage::decode(&m.payload).ok(),
                });
            }
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Ok(Err(e)) => {
                return Err(err(
                    &name,
                    format!("getting shard messages after seq {from}: {e}"),
                ));
            }
            Err(_) => {
                return Err(err(
                    &name,
                    format!("getting shard messages after seq {from}: timed out"),
                ));
            }
        }
    }
    Ok(out)
}

/// The info of every consumer of the work stream.
async fn consumer_infos(
    js: &jetstream::Context,
    names: &Names,
) -> Result<Vec<consumer::Info>, HistoryError> {
    let name = names.work_stream();
    let stream = open_stream(js, &name).await?;
    let mut consumers = stream.consumer_names();
    let mut out = Vec::new();
    loop {
        let consumer = match timeout(STEP_LIMIT, consumers.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => return Err(err(&name, e)),
            Ok(None) => return Ok(out),
            Err(_) => return Err(err(&name, "consumer names timed out")),
        };
        match timeout(STEP_LIMIT, stream.consumer_info(&consumer)).await {
            Ok(Ok(info)) => out.push(info),
            Ok(Err(e)) => return Err(err(&name, format!("consumer {consumer}: {e}"))),
            Err(_) => return Err(err(&name, format!("consumer {consumer}: info timed out"))),
        }
    }
}

/// Where each consumer of the work stream stands, one line each.
async fn consumer_states(
    js: &jetstream::Context,
    names: &Names,
) -> Result<Vec<String>, HistoryError> {
    Ok(consumer_infos(js, names)
        .await?
        .iter()
        .map(|info| {
            format!(
                "{}: ack floor stream seq {}, delivered up to stream seq {}, \
                 pending {}, ack pending {}, redelivered {}",
                info.name,
                info.ack_floor.stream_sequence,
                info.delivered.stream_sequence,
                info.num_pending,
                info.num_ack_pending,
                info.num_redelivered
            )
        })
        .collect())
}

/// True when no consumer of the work stream has anything left to deliver
/// or waiting for an ack: shard messages still in the stream then will
/// never be delivered again.
pub async fn work_idle(js: &jetstream::Context, names: &Names) -> Result<bool, HistoryError> {
    Ok(consumer_infos(js, names)
        .await?
        .iter()
        .all(|info| info.num_pending == 0 && info.num_ack_pending == 0))
}
