//! Graceful shutdown: stop pulling, let the runs in flight finish within a
//! grace period, then kill what still runs and hand its shards back.
//!
//! Two tokens carry it. `stop` is the caller's: when it fires the pull loop
//! stops at once. `hand_back` is ours: it fires when the grace is over, and
//! every run still going kills its process group and naks its message
//! without delay, so that another worker of the group takes it at once.

use std::future::Future;
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long runs may take to hand their shards back once told to (a kill
/// and a nak; the nak waits for the server's confirmation).
pub const HAND_BACK_LIMIT: Duration = Duration::from_secs(10);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every run finished (and was reported) within the grace.
    Finished,
    /// The grace ran out; the runs left were killed and handed back.
    HandedBack,
    /// Some runs did not even hand back in time; they are dropped, and their
    /// shards come back after the ack wait.
    Abandoned,
}

/// The worker's shutdown, from the stop request to the last run in flight.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: CancellationToken,
    hand_back: CancellationToken,
    grace: Duration,
}

impl Shutdown {
    /// `stop` is the request to shut down; `grace` the time runs in flight
    /// get to finish after it.
    pub fn new(stop: CancellationToken, grace: Duration) -> Shutdown {
        Shutdown {
            stop,
            hand_back: CancellationToken::new(),
            grace,
        }
    }

    /// Whether shutdown was requested: nothing more may be pulled.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes when shutdown is requested.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// Fires when runs in flight must stop and hand their shards back.
    pub fn hand_back_token(&self) -> CancellationToken {
        self.hand_back.clone()
    }

    /// Waits for `in_flight` (which completes when every run has ended) up
    /// to the grace, then fires the hand-back token and waits up to
    /// [`HAND_BACK_LIMIT`] more.
    pub async fn drain(&self, in_flight: impl Future<Output = ()>) -> Drained {
        let mut in_flight = std::pin::pin!(in_flight);
        if timeout(self.grace, &mut in_flight).await.is_ok() {
            return Drained::Finished;
        }
        self.hand_back.cancel();
        match timeout(HAND_BACK_LIMIT, &mut in_flight).await {
            Ok(()) => Drained::HandedBack,
            Err(_) => Drained::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, sleep};

    /// A run that takes `takes`, or stops a second after the hand-back.
    async fn run(takes: Duration, hand_back: CancellationToken) {
        tokio::select! {
            _ = sleep(takes) => {}
            _ = hand_back.cancelled() => sleep(Duration::from_secs(1)).await,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_that_finish_within_the_grace_are_awaited() {
        let stop = CancellationToken::new();
        let s = Shutdown::new(stop.clone(), Duration::from_secs(30));
        assert!(!s.is_stopping());
        stop.cancel();
        assert!(s.is_stopping());
        s.stopping().await;
        let start = Instant::now();
        let runs = async {
            tokio::join!(
                run(Duration::from_secs(5), s.hand_back_token()),
                run(Duration::from_secs(20), s.hand_back_token()),
            );
        };
        assert_eq!(s.drain(runs).await, Drained::Finished);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        assert!(!s.hand_back_token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_in_flight_ends_at_once() {
        let s = Shutdown::new(CancellationToken::new(), Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(s.drain(async {}).await, Drained::Finished);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_past_the_grace_are_handed_back() {
        let s = Shutdown::new(CancellationToken::new(), Duration::from_secs(30));
        let start = Instant::now();
        let runs = async {
            tokio::join!(
                run(Duration::from_secs(5), s.hand_back_token()),
                run(Duration::from_secs(3600), s.hand_back_token()),
            );
        };
        assert_eq!(s.drain(runs).await, Drained::HandedBack);
        assert_eq!(start.elapsed(), Duration::from_secs(31));
        assert!(s.hand_back_token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn runs_that_ignore_the_hand_back_are_abandoned() {
        let s = Shutdown::new(CancellationToken::new(), Duration::from_secs(30));
        let start = Instant::now();
        let stuck = sleep(Duration::from_secs(3600));
        assert_eq!(s.drain(stuck).await, Drained::Abandoned);
        assert_eq!(start.elapsed(), Duration::from_secs(30) + HAND_BACK_LIMIT);
    }
}
