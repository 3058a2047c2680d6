//! A standby's copy of the state bucket, kept current while it does not
//! lead, so that taking over reads nothing per job.
//!
//! Every replica that does not lead watches the whole state bucket (one
//! ordered consumer: the latest value of every key, then every change) and
//! hands the decoded entries to its engine. On taking the lease the engine
//! stores its fence in the state stream and waits until its mirror has
//! delivered that fence: everything an earlier leader stored comes before
//! it in the stream, and nothing of an earlier leader can be stored after
//! it, so the engine's copy is then exactly what is stored. The leader
//! stops its mirror (it is the only writer, and knows its own writes); a
//! replica that stops leading starts one afresh, from a full snapshot.
//!
//! A broken watch (server restart) is opened again from a full snapshot;
//! applying a snapshot over a current copy changes nothing, and a key that
//! was removed meanwhile belongs to a deleted job, which the catalog
//! removes anyway.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use jetcron_shared::Names;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::state::{Checkpoint, FireState, Tick};

/// Entries handed over at once.
const BATCH: usize = 512;

/// One stored change of the state bucket, at stream sequence `seq`.
#[derive(Debug)]
pub enum Update {
    /// A job's fire state; None when it does not decode (rewritten at the
    /// job's next fire).
    State {
        job: String,
        seq: u64,
        state: Option<Box<FireState>>,
    },
    /// A job's state was removed.
    Removed {
        job: String,
        seq: u64,
    },
    /// The states of a batch of fires, in one tick record.
    Tick {
        seq: u64,
        states: Vec<(String, FireState)>,
    },
    Checkpoint {
        seq: u64,
        checkpoint: Checkpoint,
    },
    /// Anything else (a fence); only its sequence matters.
    Other {
        seq: u64,
    },
    /// Every entry stored when the watch was opened has been delivered.
    Current,
}

impl Update {
    pub fn seq(&self) -> Option<u64> {
        match self {
            Update::State { seq, .. }
            | Update::Removed { seq, .. }
            | Update::Tick { seq, .. }
            | Update::Checkpoint { seq, .. }
            | Update::Other { seq } => Some(*seq),
            Update::Current => None,
        }
    }
}

/// A running mirror; dropping it stops the watch.
#[derive(Debug)]
pub struct Mirror {
    pub updates: mpsc::Receiver<Vec<Update>>,
    task: JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mirror {
    pub fn start(kv: kv::Store, names: Names) -> Mirror {
        let (tx, updates) = mpsc::channel(64);
        let task = tokio::spawn(run(kv, names, tx));
        Mirror { updates, task }
    }
}

async fn run(kv: kv::Store, names: Names, tx: mpsc::Sender<Vec<Update>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the state bucket; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let mut loaded = 0u64;
        let mut current = false;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Hand over what has arrived whenever the watch has nothing
            // more at hand, so a quiet bucket is never held back.
            let next = if batch.is_empty() {
                watch.next().await
            } else {
                match futures::FutureExt::now_or_never(watch.next()) {
                    Some(n) => n,
                    None => {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if tx.send(full).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            };
            let entry = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    warn!(error = %e, "state bucket watch failed; opening it again");
                    break;
                }
                None => {
                    debug!("state bucket watch ended; opening it again");
                    break;
                }
            };
            loaded += 1;
            batch.push(decode(
                &names,
                entry.key,
                entry.revision,
                entry.operation,
                &entry.value,
            ));
            if !current && entry.delta == 0 {
                current = true;
                batch.push(Update::Current);
                info!(entries = loaded, took = ?started.elapsed(), "fire states loaded");
            }
            if batch.len() >= BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.send(full).await.is_err() {
                    return;
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

fn decode(names: &Names, key: String, seq: u64, op: Operation, value: &[u8]) -> Update {
    if key == names.checkpoint_key() {
        return match serde_json::from_slice(value) {
            Ok(checkpoint) if op == Operation::Put => Update::Checkpoint { seq, checkpoint },
            _ => Update::Other { seq },
        };
    }
    if Names::is_tick_key(&key) && op == Operation::Put {
        // A tick that does not decode holds nothing usable; its jobs keep
        // the state they had (and are fired again at worst, deduplicated).
        return match serde_json::from_slice::<Tick>(value) {
            Ok(t) => Update::Tick {
                seq,
                states: t.states.into_iter().map(|s| (s.job, s.state)).collect(),
            },
            Err(_) => Update::Other { seq },
        };
    }
    if key.starts_with('=') {
        return Update::Other { seq };
    }
    if op != Operation::Put {
        return Update::Removed { job: key, seq };
    }
    Update::State {
        job: key,
        seq,
        state: serde_json::from_slice(value).ok().map(Box::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_updates_by_their_key() {
        let names = Names::new("jetcron").unwrap();
        let state = br#"{"job_revision":3,"next_instant":null,"epoch":2}"#;
        match decode(&names, "a".into(), 5, Operation::Put, state) {
            Update::State { job, seq, state } => {
                assert_eq!((job.as_str(), seq), ("a", 5));
                assert_eq!(state.map(|s| s.job_revision), Some(3));
            }
            other => panic!("{other:?}"),
        }
        let broken = decode(&names, "a".into(), 6, Operation::Put, b"{");
        assert!(matches!(broken, Update::State { state: None, .. }));
        let gone = decode(&names, "a".into(), 7, Operation::Purge, b"");
        assert!(matches!(gone, Update::Removed { seq: 7, .. }));
        let cp = br#"{"epoch":4,"through":"2026-05-01T10:00:00Z"}"#;
        let cp = decode(&names, names.checkpoint_key().into(), 8, Operation::Put, cp);
        assert!(matches!(cp, Update::Checkpoint { seq: 8, checkpoint } if checkpoint.epoch == 4));
        let tick = br#"{"epoch":4,"states":[{"job":"a","state":{"job_revision":3,"next_instant":null,"epoch":4}}]}"#;
        match decode(&names, names.tick_key(4, 1, 0), 10, Operation::Put, tick) {
            Update::Tick { seq, states } => {
                assert_eq!((seq, states.len(), states[0].0.as_str()), (10, 1, "a"));
            }
            other => panic!("{other:?}"),
        }
        // A purged tick removes no job's state.
        let purged = decode(&names, names.tick_key(4, 1, 0), 11, Operation::Purge, b"");
        assert!(matches!(purged, Update::Other { seq: 11 }));
        let fence = decode(&names, names.fence_key().into(), 9, Operation::Put, b"{}");
        assert_eq!(fence.seq(), Some(9));
        assert!(matches!(fence, Update::Other { .. }));
    }
}
