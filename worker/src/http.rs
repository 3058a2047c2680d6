//! Runs one attempt of an HTTP job (`run.http`): one request, its status
//! judged against `expect`, the tail of its response body kept as output.
//!
//! The request carries the shard's context as the job chose (see
//! `jetcron_shared::job::http`): variables substituted into the URL
//! (percent-encoded), header values and body, or, for a POST, PUT or PATCH
//! without a body, the [`envelope`] as JSON.
//!
//! Redirects are not followed: a 3xx that `expect` does not list fails,
//! naming where it pointed. A connection that cannot be made, a TLS
//! handshake that fails, a response cut off: failed, with the cause in
//! `error`. The job's timeout (or `run.http.timeout`) bounds the whole
//! exchange, body included: `timed_out`.
//!
//! It ends like a shell command ([`crate::execute`]): the cancel token
//! (shutdown's hand-back) drops the request at once, the `stop` future (its
//! fire was replaced) drops it and keeps the body read so far. Dropping the
//! request closes its connection, which is all a server can be told.
//!
//! Operators restrict what workers call: `--no-http` refuses every HTTP
//! job, `--allow-http-host` patterns refuse the hosts they do not match.
//! A refused request is reported as a failed attempt with the reason, as
//! a shell job on a worker without `--allow-shell`.

use std::time::Duration;

use chrono::SecondsFormat;
use jetcron_shared::job::http::{self as spec, HttpSpec};
use jetcron_shared::wire::{RunStatus, ShardMessage};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION};
use serde_json::{Map, Value, json};
use thiserror::Error;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::execute::{Ended, Outcome};
use crate::output::Tail;

/// A `--allow-http-host` pattern the worker cannot use.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("allow_http_host: {pattern:?} {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// Which hosts a pattern admits: `*` any, `*.example.com` any name below
/// example.com (not example.com itself), else exactly that name or address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Below(String),
    Exact(String),
}

/// One `--allow-http-host` pattern: a host, optionally with a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

impl HostPattern {
    /// `host`, `host:port`, `*.domain`, `*.domain:port`, `10.0.0.5:8080`,
    /// `[::1]:8080`, `*`.
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        let bad = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim().to_ascii_lowercase();
        if t.is_empty() {
            return Err(bad("is empty"));
        }
        if t.contains('/') || t.contains('@') {
            return Err(bad(
                "is not a host pattern: write a host or host:port, without scheme or path",
            ));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has no closing ]"))?;
            match after {
                "" => (inside.to_string(), None),
                p => (
                    inside.to_string(),
                    Some(p.strip_prefix(':').ok_or_else(|| bad("has text after ]"))?),
                ),
            }
        } else {
            match t.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad(
                        "holds an IPv6 address: write it in brackets, [::1]:8080",
                    ));
                }
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (t.clone(), None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
            .map(|p| p.ok_or_else(|| bad("has a port that is not 1-65535")))
            .transpose()?;
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("has a * that is not the whole first label"));
            }
            HostMatch::Below(domain.to_string())
        } else if host.is_empty() || host.contains('*') {
            return Err(bad("has a * that is not the whole first label"));
        } else {
            HostMatch::Exact(host)
        };
        Ok(HostPattern { host, port })
    }

    /// Whether `host` (lower case, IPv6 without brackets) and `port` match.
    fn admits(&self, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Below(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostMatch::Exact(name) => host == name,
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// What a worker lets HTTP jobs do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// `--no-http`: nothing.
    Off,
    /// No `--allow-http-host`: any host.
    Any,
    /// Only hosts one of the patterns admits.
    Only(Vec<HostPattern>),
}

impl HostPolicy {
    pub fn new(no_http: bool, patterns: &[String]) -> Result<HostPolicy, PatternError> {
        if no_http {
            return Ok(HostPolicy::Off);
        }
        if patterns.is_empty() {
            return Ok(HostPolicy::Any);
        }
        patterns
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<_, _>>()
            .map(HostPolicy::Only)
    }
}

/// The HTTP client of one worker, and its policy.
#[derive(Debug)]
pub struct HttpRunner {
    /// Built once: it holds the connection pool and the root certificates.
    /// An error (no usable root store) fails HTTP jobs, not the worker.
    client: Result<reqwest::Client, String>,
    policy: HostPolicy,
    patterns: Vec<String>,
}

impl HttpRunner {
    /// `roots`: certificate authorities trusted besides the machine's.
    pub fn new(
        policy: HostPolicy,
        patterns: &[String],
        roots: Vec<reqwest::Certificate>,
    ) -> HttpRunner {
        let client = match policy {
            HostPolicy::Off => Err("unused".to_string()),
            _ => roots
                .into_iter()
                .fold(reqwest::Client::builder(), |b, cert| {
                    b.add_root_certificate(cert)
                })
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("jetcron-worker/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| chain(&e)),
        };
        if let Err(e) = &client
            && policy != HostPolicy::Off
        {
            warn!(error = %e, "cannot set up the HTTP client; HTTP jobs will fail");
        }
        HttpRunner {
            client,
            policy,
            patterns: patterns.to_vec(),
        }
    }
}

/// One request to make.
#[derive(Debug)]
pub struct HttpCall<'a> {
    pub spec: &'a HttpSpec,
    /// The variables, which are also the envelope ([`envelope`]).
    pub vars: Map<String, Value>,
    pub timeout: Duration,
    pub max_output: usize,
    /// This worker's id, for refusals.
    pub worker: &'a str,
}

/// The shard's context: the template variables, and the JSON body of a
/// request whose definition gives none.
pub fn envelope(
    shard: &ShardMessage,
    attempt: u32,
    run_id: &str,
    worker: &str,
) -> Map<String, Value> {
    let v = json!({
        "job": shard.job,
        "instant": shard.instant.to_rfc3339_opts(SecondsFormat::Millis, true),
        "fire_id": shard.fire_id(),
        "shard": shard.shard,
        "shards": shard.shards,
        "param": shard.param,
        "attempt": attempt,
        "run_id": run_id,
        "worker": worker,
        "payload": shard.payload,
        "parent": shard.parent,
    });
    match v {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Makes the request: to its end, its timeout, until `stop` completes, or
/// until `cancel` fires.
pub async fn execute(
    runner: &HttpRunner,
    call: HttpCall<'_>,
    cancel: &CancellationToken,
    stop: impl Future<Output = ()>,
) -> Ended {
    let request = match prepare(runner, &call) {
        Ok(request) => request,
        Err(refused) => return Ended::Finished(Outcome::refused(refused)),
    };
    let deadline = Instant::now() + call.timeout;
    let mut stop = std::pin::pin!(stop);
    let mut tail = Tail::new(call.max_output);
    let timed_out = |status: Option<u16>, tail: Tail, what: &str| {
        let (output, output_truncated) = tail.into_text();
        Ended::Finished(Outcome {
            status: RunStatus::TimedOut,
            exit_code: None,
            output,
            output_truncated,
            error: Some(format!(
                "timed out after {} {what}",
                humantime::format_duration(call.timeout)
            )),
            http_status: status,
        })
    };
    let mut response = tokio::select! {
        _ = cancel.cancelled() => return Ended::Cancelled,
        _ = &mut stop => return stopped(tail),
        _ = sleep_until(deadline) => return timed_out(None, tail, "waiting for the response"),
        sent = request.send() => match sent {
            Ok(response) => response,
            Err(e) => return Ended::Finished(Outcome::refused(request_error(&e))),
        },
    };
    let status = response.status();
    let code = status.as_u16();
    debug!(status = code, "response");
    let mut broken = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            _ = &mut stop => return stopped(tail),
            _ = sleep_until(deadline) => {
                return timed_out(Some(code), tail, &format!("reading the response body (status {code})"));
            }
            chunk = response.chunk() => match chunk {
                Ok(Some(bytes)) => tail.push(&bytes),
                Ok(None) => break,
                Err(e) => {
                    broken = Some(format!(
                        "the response (status {code}) broke off before its end: {}",
                        chain(&e)
                    ));
                    break;
                }
            },
        }
    }
    let (output, output_truncated) = tail.into_text();
    let expected = call.spec.expects(code);
    let error = if let Some(broken) = broken {
        Some(broken)
    } else if expected {
        None
    } else if status.is_redirection() {
        let to = response
            .headers()
            .get(LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_default();
        Some(format!(
            "redirected ({status}) to '{to}'; redirects are not followed: call the final URL, \
             or list {code} in expect"
        ))
    } else {
        Some(format!(
            "status {status}, expected {}",
            call.spec.expected()
        ))
    };
    Ended::Finished(Outcome {
        status: if error.is_none() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        },
        exit_code: None,
        output,
        output_truncated,
        error,
        http_status: Some(code),
    })
}

fn stopped(tail: Tail) -> Ended {
    let (output, output_truncated) = tail.into_text();
    Ended::Stopped {
        output,
        output_truncated,
    }
}

/// The request as the shard makes it, or why this worker does not make it.
fn prepare(runner: &HttpRunner, call: &HttpCall<'_>) -> Result<reqwest::RequestBuilder, String> {
    let s = call.spec;
    if runner.policy == HostPolicy::Off {
        return Err(format!(
            "http jobs are disabled on worker {}: it was started with --no-http",
            call.worker
        ));
    }
    let url = spec::render(&s.url, |name| {
        percent_encode(&spec::text_of(call.vars.get(name)))
    })
    .map_err(|e| format!("run.http.url: {e}"))?;
    let url = reqwest::Url::parse(&url)
        .map_err(|e| format!("run.http.url: '{url}' is not a URL after substitution: {e}"))?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(0);
    if let HostPolicy::Only(patterns) = &runner.policy
        && !patterns.iter().any(|p| p.admits(&host, port))
    {
        return Err(format!(
            "host {host}:{port} is not allowed on worker {} (--allow-http-host {})",
            call.worker,
            runner.patterns.join(", ")
        ));
    }
    let client = runner
        .client
        .as_ref()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    let method = reqwest::Method::from_bytes(s.method().as_bytes())
        .map_err(|e| format!("run.http.method: {e}"))?;
    let mut request = client.request(method, url);
    let mut has_type = false;
    for (name, value) in &s.headers {
        let value = spec::render_text(value, &call.vars)
            .map_err(|e| format!("run.http.headers.{name}: {e}"))?;
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("run.http.headers.{name}: {e}"))?;
        let value = HeaderValue::from_str(&value).map_err(|_| {
            format!("run.http.headers.{name}: the value after substitution cannot be a header")
        })?;
        has_type |= header == CONTENT_TYPE;
        request = request.header(header, value);
    }
    let (body, json_body) = match &s.body {
        Some(Value::String(text)) => (
            Some(spec::render_text(text, &call.vars).map_err(|e| format!("run.http.body: {e}"))?),
            false,
        ),
        Some(value) => {
            let rendered =
                spec::render_json(value, &call.vars).map_err(|e| format!("run.http.body: {e}"))?;
            (Some(rendered.to_string()), true)
        }
        None if s.sends_envelope() => (Some(Value::Object(call.vars.clone()).to_string()), true),
        None => (None, false),
    };
    if json_body && !has_type {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    Ok(request)
}

/// Every byte but the unreserved ones (RFC 3986) as `%XX`, so that a value
/// stays one piece of the URL wherever it is put.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a request got no response, with the causes reqwest wraps.
fn request_error(e: &reqwest::Error) -> String {
    let https = e.url().is_some_and(|u| u.scheme() == "https");
    let what = if e.is_connect() && https {
        "cannot connect (TCP or TLS handshake)"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_builder() {
        "cannot build the request"
    } else {
        "the request failed"
    };
    let url = e.url().map(|u| format!(" to {u}")).unwrap_or_default();
    format!("{what}{url}: {}", causes(e))
}

/// The error and every source below it, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The sources below a reqwest error (its own text repeats the URL).
fn causes(e: &reqwest::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => chain(source),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::job::http::VARIABLES;

    fn pattern(p: &str) -> HostPattern {
        HostPattern::parse(p).unwrap()
    }

    #[test]
    fn host_patterns_match_names_ports_and_subdomains() {
        let sub = pattern("*.Example.com");
        assert!(sub.admits("api.example.com", 443));
        assert!(sub.admits("a.b.example.com", 80));
        assert!(!sub.admits("example.com", 443));
        assert!(!sub.admits("badexample.com", 443));
        let ip = pattern("10.0.0.5:8080");
        assert!(ip.admits("10.0.0.5", 8080));
        assert!(!ip.admits("10.0.0.5", 80));
        let v6 = pattern("[::1]:9000");
        assert!(v6.admits("::1", 9000));
        assert!(pattern("[::1]").admits("::1", 1));
        assert!(pattern("*").admits("anything", 1));
        assert!(pattern("*:443").admits("anything", 443));
        assert!(!pattern("*:443").admits("anything", 80));
        for (bad, reason) in [
            ("", "is empty"),
            (
                "https://x.com",
                "is not a host pattern: write a host or host:port, without scheme or path",
            ),
            ("x.com:0", "has a port that is not 1-65535"),
            ("x.com:http", "has a port that is not 1-65535"),
            ("a*.x.com", "has a * that is not the whole first label"),
            ("*.", "has a * that is not the whole first label"),
            (
                "::1",
                "holds an IPv6 address: write it in brackets, [::1]:8080",
            ),
            ("[::1", "has no closing ]"),
        ] {
            assert_eq!(HostPattern::parse(bad).unwrap_err().reason, reason, "{bad}");
        }
        assert_eq!(HostPolicy::new(true, &["x".into()]), Ok(HostPolicy::Off));
        assert_eq!(HostPolicy::new(false, &[]), Ok(HostPolicy::Any));
    }

    #[test]
    fn values_in_a_url_are_percent_encoded() {
        assert_eq!(percent_encode("new york/é?&"), "new%20york%2F%C3%A9%3F%26");
        assert_eq!(percent_encode("a-b_c.d~9"), "a-b_c.d~9");
    }

    #[test]
    fn the_envelope_holds_exactly_the_variables() {
        let job = jetcron_shared::Job::decode(
            br#"{"id":"sync","schedule":"@hourly","shards":["eu","us"],"run":{"http":{"url":"http://h"}},"payload":{"n":1}}"#,
            None,
        )
        .unwrap();
        let at = chrono::DateTime::from_timestamp_millis(1_767_322_800_123).unwrap();
        let shard = ShardMessage::new(&job, at, 1, 7, jetcron_shared::wire::Cause::Schedule);
        let env = envelope(&shard, 2, "RUN1", "w1");
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        let mut want = VARIABLES.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(
            Value::Object(env),
            json!({"job": "sync", "instant": "2026-01-02T03:00:00.123Z",
                   "fire_id": "sync:1767322800123", "shard": 1, "shards": 2, "param": "us",
                   "attempt": 2, "run_id": "RUN1", "worker": "w1", "payload": {"n": 1},
                   "parent": null})
        );
    }
}
