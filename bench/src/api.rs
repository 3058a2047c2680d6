//! Scenario 4: control API latency with many jobs stored: `status`,
//! `job.get` and `job.list` (first page), each called in turn, one at a
//! time. A call that times out or is answered with an error counts as
//! failed and is reported as such.

use std::time::Duration;

use bytes::Bytes;
use jetcron_shared::Names;
use jetcron_shared::api::endpoint;
use serde::Serialize;
use tokio::time::{Instant, timeout};

use crate::deploy::job_id;
use crate::stats::percentile;
use crate::{Bench, say, scale};

/// Figures of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointFigures {
    pub endpoint: String,
    /// The request body sent.
    pub body: String,
    pub calls: usize,
    pub ok: usize,
    pub failed: usize,
    /// Of the successful calls, in ms (fractional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    pub jobs: usize,
    pub timeout_s: f64,
    pub endpoints: Vec<EndpointFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ApiReport {
    pub fn failed(jobs: usize, timeout: Duration, error: String) -> ApiReport {
        ApiReport {
            jobs,
            timeout_s: timeout.as_secs_f64(),
            endpoints: Vec::new(),
            error: Some(error),
        }
    }
}

/// How long one call may take.
pub fn call_timeout(bench: &Bench) -> Duration {
    if bench.config.smoke {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    }
}

/// The API scenario on its own: stores the jobs, starts a scheduler, waits
/// until it fires on time, then measures.
pub async fn standalone(bench: &Bench, jobs: usize) -> ApiReport {
    let limit = call_timeout(bench);
    let run = async {
        let loaded = scale::load(bench, jobs).await?;
        let (scheduler, _) = scale::cold_start(bench, &loaded, "scheduler-1").await?;
        let report = measure(bench, &loaded.dep.client, &loaded.dep.names, jobs).await;
        drop(scheduler);
        Ok::<_, crate::error::BenchError>(report)
    };
    run.await
        .unwrap_or_else(|e| ApiReport::failed(jobs, limit, e.to_string()))
}

/// Calls every endpoint `config.api_calls` times against a running scheduler.
pub async fn measure(
    bench: &Bench,
    client: &async_nats::Client,
    names: &Names,
    jobs: usize,
) -> ApiReport {
    let limit = call_timeout(bench);
    let get_body = serde_json::json!({"id": job_id("idle", jobs / 2)}).to_string();
    let calls = [
        (endpoint::STATUS, String::new()),
        (endpoint::JOB_GET, get_body),
        (endpoint::JOB_LIST, r#"{"limit": 100}"#.to_string()),
    ];
    let mut endpoints = Vec::new();
    for (ep, body) in calls {
        say(&format!(
            "api: {ep} x {} at {jobs} jobs",
            bench.config.api_calls
        ));
        let f = endpoint_figures(client, names, ep, &body, bench.config.api_calls, limit).await;
        say(&format!(
            "  ok {}, failed {}, p50 {:?} ms, p99 {:?} ms{}",
            f.ok,
            f.failed,
            f.p50_ms,
            f.p99_ms,
            f.first_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        endpoints.push(f);
    }
    ApiReport {
        jobs,
        timeout_s: limit.as_secs_f64(),
        endpoints,
        error: None,
    }
}

async fn endpoint_figures(
    client: &async_nats::Client,
    names: &Names,
    ep: &str,
    body: &str,
    calls: usize,
    limit: Duration,
) -> EndpointFigures {
    let subject = names.api_subject(ep);
    let mut micros = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..calls {
        let start = Instant::now();
        let request = async_nats::Request::new()
            .payload(Bytes::from(body.to_string()))
            .timeout(Some(limit));
        let outcome = match timeout(
            limit + Duration::from_secs(1),
            client.send_request(subject.clone(), request),
        )
        .await
        {
            Ok(Ok(reply)) => check_reply(&reply.payload),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(_) => Err(format!("no reply within {limit:?}")),
        };
        match outcome {
            Ok(()) => micros.push(start.elapsed().as_micros() as i64),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    micros.sort_unstable();
    let ms = |p: f64| percentile(&micros, p).map(|us| us as f64 / 1000.0);
    EndpointFigures {
        endpoint: ep.to_string(),
        body: body.to_string(),
        calls,
        ok: micros.len(),
        failed,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        first_error,
    }
}

/// `Ok` for `{"ok": true, ...}`, else what the reply says.
pub fn check_reply(payload: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("unparsable reply ({} bytes): {e}", payload.len()))?;
    if v.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(format!(
            "error reply: {}",
            v.get("error").cloned().unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ok_replies_count() {
        assert!(check_reply(br#"{"ok":true,"jobs":[]}"#).is_ok());
        let e = check_reply(br#"{"ok":false,"error":{"code":"bad_request","message":"x"}}"#)
            .unwrap_err();
        assert!(e.contains("bad_request"), "{e}");
        assert!(check_reply(b"").is_err());
    }
}
