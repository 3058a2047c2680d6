//! Handlers: async functions of a service, registered by name, that run the
//! shards of `"run": {"handler": "<name>"}` jobs.
//!
//! A handler gets a [`ShardContext`] (the shard's job, instant, shard
//! number, parameter, payload, attempt and run id, an output it may print
//! to, and a cancellation token) and returns a [`HandlerResult`]:
//!
//! - `Ok(output)`: the attempt succeeded; `output`'s text ends the result's
//!   output, after whatever the handler printed.
//! - `Err(e)`: the attempt failed with `e` (and its sources) as `error`, and
//!   is retried like a failed shell command.
//! - a panic: caught; the attempt failed with the panic's message, and the
//!   worker goes on.
//!
//! # Cancellation
//!
//! Three things stop a handler early: its job's `timeout`, a newer fire
//! that replaces its own (`overlap: replace`), and the end of the worker's
//! shutdown grace. Each cancels the context's token
//! ([`ShardContext::cancelled`]); the handler then has the worker's kill
//! grace to return. One that has not returned by then is abandoned: its
//! task is aborted (it stops at its next `.await`; code that never awaits
//! runs on, detached). Whatever the handler returns after its token was
//! cancelled, the cause decides the ending, as for a shell command that
//! got SIGTERM: `timed_out`, `cancelled`, or (at shutdown) handed back to
//! another worker.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use jetcron_shared::wire::{RunStatus, ShardMessage};
use serde::de::DeserializeOwned;
use tokio::task::JoinError;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::warn;

use crate::execute::{Ended, Outcome};
use crate::output::Tail;

/// What a handler fails with: any error, boxed (`?` converts most errors,
/// and `"text".into()` makes one).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<Output, HandlerError>;

/// The output of a handler that succeeded: text kept in its result (its
/// tail, bounded like a shell command's output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    text: String,
}

impl Output {
    /// Output with this text.
    pub fn text(text: impl Into<String>) -> Output {
        Output { text: text.into() }
    }

    /// No output.
    pub fn empty() -> Output {
        Output::default()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<String> for Output {
    fn from(text: String) -> Output {
        Output { text }
    }
}

impl From<&str> for Output {
    fn from(text: &str) -> Output {
        Output::text(text)
    }
}

type Boxed = Arc<dyn Fn(ShardContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// A registered handler.
#[derive(Clone)]
pub struct Handler(Boxed);

impl Handler {
    pub fn new<F, Fut>(f: F) -> Handler
    where
        F: Fn(ShardContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Handler(Arc::new(move |ctx| Box::pin(f(ctx))))
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler")
    }
}

/// The handlers of one worker, by name.
#[derive(Debug, Clone, Default)]
pub struct Handlers(BTreeMap<String, Handler>);

impl Handlers {
    /// Adds `handler` as `name`; false if the name was taken.
    pub fn insert(&mut self, name: &str, handler: Handler) -> bool {
        if self.0.contains_key(name) {
            return false;
        }
        self.0.insert(name.to_string(), handler);
        true
    }

    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.0.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// What a handler knows about the shard it runs. Cheap to clone; clones
/// share the output and the cancellation token.
#[derive(Clone)]
pub struct ShardContext {
    inner: Arc<Inner>,
}

struct Inner {
    shard: ShardMessage,
    attempt: u32,
    run_id: String,
    worker: String,
    cancel: CancellationToken,
    output: Mutex<Tail>,
}

impl fmt::Debug for ShardContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardContext")
            .field("job", &self.job())
            .field("instant", &self.instant())
            .field("shard", &self.shard())
            .field("shards", &self.shards())
            .field("attempt", &self.attempt())
            .field("run_id", &self.run_id())
            .finish_non_exhaustive()
    }
}

impl ShardContext {
    pub(crate) fn new(
        shard: &ShardMessage,
        attempt: u32,
        run_id: &str,
        worker: &str,
        max_output: usize,
    ) -> ShardContext {
        ShardContext {
            inner: Arc::new(Inner {
                shard: shard.clone(),
                attempt,
                run_id: run_id.to_string(),
                worker: worker.to_string(),
                cancel: CancellationToken::new(),
                output: Mutex::new(Tail::new(max_output)),
            }),
        }
    }

    /// The job's id.
    pub fn job(&self) -> &str {
        &self.inner.shard.job
    }

    /// The worker group the job runs in.
    pub fn group(&self) -> &str {
        &self.inner.shard.group
    }

    /// The scheduled instant of this fire.
    pub fn instant(&self) -> DateTime<Utc> {
        self.inner.shard.instant
    }

    /// This shard's number, from 0.
    pub fn shard(&self) -> u32 {
        self.inner.shard.shard
    }

    /// How many shards the fire has.
    pub fn shards(&self) -> u32 {
        self.inner.shard.shards
    }

    /// This shard's parameter, when the job lists them.
    pub fn param(&self) -> Option<&str> {
        self.inner.shard.param.as_deref()
    }

    /// The attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The job's `retry.max_attempts`: `attempt() == max_attempts()` is the
    /// last try.
    pub fn max_attempts(&self) -> u32 {
        self.inner.shard.retry.max_attempts
    }

    /// This attempt's run id, unique to it.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// The id of the worker running it.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }

    /// The parent job's fire (`<job>:<unix ms>`) when an `on_success`
    /// parent fired this one.
    pub fn parent(&self) -> Option<&str> {
        self.inner.shard.parent.as_deref()
    }

    /// The attempt's time limit (the job's `timeout`).
    pub fn timeout(&self) -> Duration {
        self.inner.shard.timeout()
    }

    /// The payload as JSON, if the job or the trigger gave one.
    pub fn payload_json(&self) -> Option<&serde_json::Value> {
        self.inner.shard.payload.as_ref()
    }

    /// The payload read as `T`. A missing payload reads as JSON `null`, so
    /// `T = Option<...>` accepts it.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.inner.shard.payload {
            Some(v) => T::deserialize(v),
            None => T::deserialize(serde_json::Value::Null),
        }
    }

    /// Adds a line to this attempt's output (kept whether it succeeds or
    /// not; the last `--max-output` bytes are kept).
    pub fn print(&self, line: impl AsRef<str>) {
        let mut out = self.inner.output.lock().unwrap_or_else(|e| e.into_inner());
        out.push(line.as_ref().as_bytes());
        out.push(b"\n");
    }

    /// Completes when the handler must stop: its timeout passed, its fire
    /// was replaced, or the worker's shutdown grace ran out.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// The cancellation token itself, to hand to other code.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// The output so far, with `last` appended.
    fn take_output(&self, last: Option<&Output>) -> (String, bool) {
        let mut out = self.inner.output.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = last {
            out.push(last.as_str().as_bytes());
        }
        std::mem::replace(&mut *out, Tail::new(0)).into_text()
    }
}

/// Why a handler was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    TimedOut,
    Replaced,
    HandedBack,
}

/// Runs `handler` on `ctx` to its end, its timeout, until `stop` completes
/// (its fire was replaced), or until `hand_back` fires; see the module
/// documentation for how each ends.
pub async fn execute(
    handler: &Handler,
    ctx: ShardContext,
    kill_grace: Duration,
    hand_back: &CancellationToken,
    stop: impl Future<Output = ()>,
) -> Ended {
    let limit = ctx.timeout();
    let deadline = Instant::now() + limit;
    let mut task = tokio::spawn((handler.0)(ctx.clone()));
    let cut = tokio::select! {
        joined = &mut task => return finished(&ctx, joined),
        _ = sleep_until(deadline) => Cut::TimedOut,
        _ = stop => Cut::Replaced,
        _ = hand_back.cancelled() => Cut::HandedBack,
    };
    ctx.inner.cancel.cancel();
    let returned = timeout(kill_grace, &mut task).await;
    let abandoned = returned.is_err();
    if abandoned {
        warn!(?cut, kill_grace = ?kill_grace, "the handler did not return after its cancellation; abandoned");
        task.abort();
    }
    let last = match &returned {
        Ok(Ok(Ok(output))) => Some(output),
        _ => None,
    };
    let (output, output_truncated) = ctx.take_output(last);
    match cut {
        Cut::TimedOut => {
            let mut error = format!("timed out after {}", humantime::format_duration(limit));
            if abandoned {
                error.push_str(&format!(
                    "; the handler did not return within the kill grace ({}) and was abandoned",
                    humantime::format_duration(kill_grace)
                ));
            }
            Ended::Finished(Outcome {
                status: RunStatus::TimedOut,
                exit_code: None,
                output,
                output_truncated,
                error: Some(error),
                http_status: None,
            })
        }
        Cut::Replaced => Ended::Stopped {
            output,
            output_truncated,
        },
        Cut::HandedBack => Ended::Cancelled,
    }
}

/// The outcome of a handler that returned (or panicked) on its own.
fn finished(ctx: &ShardContext, joined: Result<HandlerResult, JoinError>) -> Ended {
    let (status, last, error) = match joined {
        Ok(Ok(output)) => (RunStatus::Succeeded, Some(output), None),
        Ok(Err(e)) => (RunStatus::Failed, None, Some(error_chain(e.as_ref()))),
        Err(e) if e.is_panic() => (
            RunStatus::Failed,
            None,
            Some(format!("the handler panicked: {}", panic_message(e))),
        ),
        Err(_) => (
            RunStatus::Failed,
            None,
            Some("the handler's task was cancelled".to_string()),
        ),
    };
    let (output, output_truncated) = ctx.take_output(last.as_ref());
    Ended::Finished(Outcome {
        status,
        exit_code: None,
        output,
        output_truncated,
        error,
        http_status: None,
    })
}

/// `e: its source: its source's source`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_message(e: JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not text)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::job::{RetryPolicy, Run};
    use jetcron_shared::wire::Cause;

    fn shard(timeout_ms: u64) -> ShardMessage {
        ShardMessage {
            job: "j".into(),
            group: "default".into(),
            instant: Utc::now(),
            shard: 0,
            shards: 1,
            param: None,
            run: Run::Handler("h".into()),
            timeout_ms,
            retry: RetryPolicy::default(),
            payload: Some(serde_json::json!({"n": 3})),
            epoch: 1,
            cause: Cause::Schedule,
            dispatched_at: Utc::now(),
            record: None,
            expires_at: None,
            track: false,
            parent: None,
        }
    }

    async fn run(handler: Handler, timeout_ms: u64, grace_ms: u64) -> Ended {
        let ctx = ShardContext::new(&shard(timeout_ms), 1, "r1", "w1", 1024);
        execute(
            &handler,
            ctx,
            Duration::from_millis(grace_ms),
            &CancellationToken::new(),
            std::future::pending(),
        )
        .await
    }

    fn finished(ended: Ended) -> Outcome {
        match ended {
            Ended::Finished(o) => o,
            other => panic!("expected a finished attempt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn printed_lines_come_before_the_returned_text() {
        let h = Handler::new(|ctx: ShardContext| async move {
            let n: serde_json::Value = ctx.payload()?;
            ctx.print(format!("n = {}", n["n"]));
            Ok(Output::text("done"))
        });
        let o = finished(run(h, 1_000, 100).await);
        assert_eq!(o.status, RunStatus::Succeeded);
        assert_eq!(o.output, "n = 3\ndone");
        assert_eq!(o.error, None);
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot send")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[tokio::test]
    async fn an_error_fails_with_its_sources() {
        let h = Handler::new(|_ctx| async move {
            Err(Outer(std::io::Error::other("connection reset")).into())
        });
        let o = finished(run(h, 1_000, 100).await);
        assert_eq!(o.status, RunStatus::Failed);
        assert_eq!(o.error.as_deref(), Some("cannot send: connection reset"));
    }

    #[tokio::test]
    async fn a_panic_fails_with_its_message() {
        let h = Handler::new(|ctx: ShardContext| async move {
            ctx.print("before");
            if ctx.attempt() == 1 {
                panic!("boom at attempt {}", ctx.attempt());
            }
            Ok(Output::empty())
        });
        let o = finished(run(h, 1_000, 100).await);
        assert_eq!(o.status, RunStatus::Failed);
        assert_eq!(
            o.error.as_deref(),
            Some("the handler panicked: boom at attempt 1")
        );
        assert_eq!(o.output, "before\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_cancels_the_token_and_waits_the_grace() {
        let h = Handler::new(|ctx: ShardContext| async move {
            ctx.cancelled().await;
            ctx.print("stopping");
            Ok(Output::text("partial"))
        });
        let start = Instant::now();
        let o = finished(run(h, 200, 5_000).await);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(o.status, RunStatus::TimedOut);
        assert_eq!(o.error.as_deref(), Some("timed out after 200ms"));
        assert_eq!(o.output, "stopping\npartial");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_ignores_its_token_is_abandoned_after_the_grace() {
        let h = Handler::new(|_ctx| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Output::empty())
        });
        let start = Instant::now();
        let o = finished(run(h, 200, 1_000).await);
        assert_eq!(start.elapsed(), Duration::from_millis(1_200));
        assert_eq!(o.status, RunStatus::TimedOut);
        assert_eq!(
            o.error.as_deref(),
            Some(
                "timed out after 200ms; the handler did not return within the kill grace (1s) \
                 and was abandoned"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_fire_stops_and_a_hand_back_gives_nothing_to_report() {
        let slow = || {
            Handler::new(|ctx: ShardContext| async move {
                ctx.print("working");
                ctx.cancelled().await;
                Err("stopped".into())
            })
        };
        let ctx = ShardContext::new(&shard(60_000), 1, "r1", "w1", 1024);
        let replaced = execute(
            &slow(),
            ctx,
            Duration::from_secs(1),
            &CancellationToken::new(),
            tokio::time::sleep(Duration::from_millis(50)),
        )
        .await;
        assert_eq!(
            replaced,
            Ended::Stopped {
                output: "working\n".into(),
                output_truncated: false
            }
        );

        let ctx = ShardContext::new(&shard(60_000), 1, "r1", "w1", 1024);
        let seen = ctx.clone();
        let hand_back = CancellationToken::new();
        let fire = hand_back.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fire.cancel();
        });
        let ended = execute(
            &slow(),
            ctx,
            Duration::from_secs(1),
            &hand_back,
            std::future::pending(),
        )
        .await;
        assert_eq!(ended, Ended::Cancelled);
        assert!(seen.is_cancelled());
    }

    #[test]
    fn a_name_is_registered_once() {
        let mut hs = Handlers::default();
        let h = Handler::new(|_ctx| async { Ok(Output::empty()) });
        assert!(hs.insert("a", h.clone()));
        assert!(!hs.insert("a", h.clone()));
        assert!(hs.insert("b", h));
        assert_eq!(hs.names().collect::<Vec<_>>(), ["a", "b"]);
    }
}
