//! The web console (`--http-addr`): a page set served by the scheduler, with
//! its assets compiled into the binary, that shows jobs, their runs, the
//! workers and the live events, and pauses, resumes, triggers, retries and
//! deletes jobs.
//!
//! The console holds no state of its own and has no API of its own: every
//! read and every action is a request to the control API the CLI uses,
//! made by the server on the signed-in person's behalf. People sign in
//! with a console token (`--console-token operator:SECRET`, whose role the
//! console enforces) or with a NATS user and password (the console then
//! connects as that user, and the NATS server's permissions decide what
//! goes through; see [`auth`]). The live feed is the events and results
//! subjects, relayed as server-sent events.
//!
//! Requests that change something must carry the `X-Jetcron` header and
//! the session cookie is `SameSite=Strict`, so another site's page cannot
//! make a signed-in browser act.

mod auth;
mod feed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jetcron_shared::Names;
use jetcron_shared::api::{ListRequest, endpoint};
use jetcron_shared::connect::ConnectArgs;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::{ConsoleToken, Role};
use auth::{Session, Sessions};

/// Longest wait for a control API reply.
const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Instants shown per job in the jobs list.
const NEXT_SHOWN: u32 = 2;

/// Endpoints anyone signed in may call.
const READS: [&str; 6] = [
    endpoint::STATUS,
    endpoint::WORKERS,
    endpoint::JOB_GET,
    endpoint::JOB_LIST,
    endpoint::JOB_NEXT,
    endpoint::JOB_RUNS,
];
/// Endpoints only operators may call.
const ACTIONS: [&str; 5] = [
    endpoint::JOB_PAUSE,
    endpoint::JOB_RESUME,
    endpoint::JOB_TRIGGER,
    endpoint::JOB_RETRY,
    endpoint::JOB_DELETE,
];

/// How the console is served and who may sign in.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub addr: SocketAddr,
    /// Tokens people sign in with, each with its role.
    pub tokens: Vec<ConsoleToken>,
    /// Whether people may sign in with a NATS user and password.
    pub nats_login: bool,
}

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("http_addr: cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error(
        "http_addr: nobody could sign in; give --console-token ROLE:SECRET, or --console-nats-login"
    )]
    NoLogin,
}

/// What every request handler shares.
#[derive(Debug)]
struct App {
    names: Names,
    sessions: Sessions,
    /// Cancelled when the scheduler stops: live feeds end with it, so that
    /// the server's graceful stop is not held open by them.
    stopping: CancellationToken,
}

/// A bound console; [`Console::serve`] answers until shutdown.
#[derive(Debug)]
pub struct Console {
    listener: TcpListener,
    app: Arc<App>,
}

impl Console {
    /// Binds `config.addr`; `client` (the scheduler's own connection)
    /// serves token sessions, `connect` opens NATS users' sessions. It
    /// answers until `shutdown`.
    pub async fn bind(
        config: &ConsoleConfig,
        client: async_nats::Client,
        connect: ConnectArgs,
        names: Names,
        shutdown: CancellationToken,
    ) -> Result<Console, ConsoleError> {
        if config.tokens.is_empty() && !config.nats_login {
            return Err(ConsoleError::NoLogin);
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| ConsoleError::Bind {
                addr: config.addr,
                reason: e.to_string(),
            })?;
        let sessions = Sessions::new(
            client,
            connect,
            names.clone(),
            config.tokens.clone(),
            config.nats_login,
        );
        Ok(Console {
            listener,
            app: Arc::new(App {
                names,
                sessions,
                stopping: shutdown,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self) {
        let addr = self.local_addr().ok();
        info!(addr = ?addr, "web console up");
        let stopping = self.app.stopping.clone();
        let router = Router::new()
            .route("/", get(page))
            .route("/app.js", get(script))
            .route("/app.css", get(style))
            .route("/login", post(auth::login))
            .route("/logout", post(auth::logout))
            .route("/api/session", get(auth::session))
            .route("/api/jobs", get(jobs))
            .route("/api/feed", get(feed::feed))
            .route("/api/call/{endpoint}", post(call))
            .with_state(self.app);
        if let Err(e) = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { stopping.cancelled().await })
            .await
        {
            warn!(error = %e, "web console stopped");
        }
    }
}

const INDEX_HTML: &str = include_str!("console/assets/index.html");
const APP_JS: &str = include_str!("console/assets/app.js");
const APP_CSS: &str = include_str!("console/assets/app.css");

/// Headers of every page and asset: nothing from elsewhere runs or loads.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// A request not answered: in the control API's own shape, `{"ok": false,
/// "error": {"code", "message"}}`, with an HTTP status to match.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"ok": false, "error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) fn refusal(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn json_reply(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `POST /api/call/<endpoint>`: the body goes to the control API as it
/// is, and its reply comes back as it is.
async fn call(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(ep): Path<String>,
    body: Bytes,
) -> Response {
    let session = match app.sessions.signed_in(&headers, true) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if !READS.contains(&ep.as_str()) && !ACTIONS.contains(&ep.as_str()) {
        return refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("endpoint: '{ep}' is not one the console calls"),
        )
        .into_response();
    }
    // A NATS user's session carries the user's own permissions: the
    // server decides for it.
    if ACTIONS.contains(&ep.as_str()) && session.role == Role::Viewer && !session.is_nats_user() {
        return refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} is a viewer: {ep} needs an operator", session.name),
        )
        .into_response();
    }
    match session.request(&ep, body).await {
        Ok(reply) => json_reply(reply),
        Err(r) => r.into_response(),
    }
}

/// `GET /api/jobs`: one page of `job.list` (its query: `limit`, `cursor`,
/// `group`, `state`), each job with its next instants (`job.next`) and its
/// latest fire (`job.runs`), fetched side by side.
async fn jobs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(list): Query<ListRequest>,
) -> Response {
    let session = match app.sessions.signed_in(&headers, false) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    let page = match session.request(endpoint::JOB_LIST, body).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Ok(mut page) = serde_json::from_slice::<Value>(&page) else {
        return refusal(
            StatusCode::BAD_GATEWAY,
            "internal",
            "job.list answered with something that is not JSON",
        )
        .into_response();
    };
    if page["ok"] != Value::Bool(true) {
        return (StatusCode::BAD_REQUEST, axum::Json(page)).into_response();
    }
    if let Some(list) = page["jobs"].as_array_mut() {
        let details = futures::future::join_all(
            list.iter()
                .map(|job| job_details(&session, job["id"].as_str().unwrap_or(""))),
        )
        .await;
        for (job, (next, last)) in list.iter_mut().zip(details) {
            job["next_instants"] = next;
            job["last_fire"] = last;
        }
    }
    axum::Json(page).into_response()
}

/// A job's next instants and latest fire, each `null` when not known.
async fn job_details(session: &Session, id: &str) -> (Value, Value) {
    let ask = |ep: &'static str, body: Value| async move {
        let reply = session
            .request(ep, Bytes::from(body.to_string()))
            .await
            .ok()?;
        serde_json::from_slice::<Value>(&reply)
            .ok()
            .filter(|v| v["ok"] == Value::Bool(true))
    };
    let (next, runs) = tokio::join!(
        ask(endpoint::JOB_NEXT, json!({"id": id, "count": NEXT_SHOWN})),
        ask(endpoint::JOB_RUNS, json!({"id": id, "limit": 1})),
    );
    let next = next.map_or(Value::Null, |mut n| n["instants"].take());
    let last = runs.map_or(Value::Null, |mut r| {
        r["runs"]
            .as_array_mut()
            .and_then(|runs| runs.first_mut())
            .map_or(Value::Null, |fire| {
                json!({
                    "fire_id": fire["fire_id"].take(),
                    "instant": fire["instant"].take(),
                    "state": fire["state"].take(),
                })
            })
    });
    (next, last)
}
