//! Who is signed in to the console, and as what.
//!
//! Two ways in:
//! - A console token (`--console-token operator:SECRET`): the session's
//!   requests go through the scheduler's own connection, and the console
//!   lets a `viewer` call only the endpoints that read.
//! - A NATS user and password (`--console-nats-login`): the console opens
//!   a connection as that user for the session, and every request of the
//!   session goes through it, so the NATS server's permissions decide. A
//!   request the server refuses (its publish is a permissions violation)
//!   fails at once with the server's words. The role shown is found at
//!   sign-in by asking `job.pause` with an empty body: an operator's
//!   request reaches the API and is answered (a bad request, which changes
//!   nothing), a viewer's is refused by the server (one permissions
//!   violation in the server's log per sign-in).
//!
//! Sessions live in the scheduler's memory: a restart signs everyone out.
//! One idle for [`IDLE_LIMIT`] ends.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jetcron_shared::Names;
use jetcron_shared::api::{ApiClient, endpoint};
use jetcron_shared::connect::{ConnectArgs, Patience};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{App, CALL_LIMIT, Refusal, refusal};

/// The session cookie's name.
const COOKIE: &str = "jetcron_session";
/// A session unused this long ends.
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);
/// The header a changing request must carry (a page of another site
/// cannot set it without the console agreeing, which it never does).
pub const INTENT_HEADER: &str = "x-jetcron";
/// Shortest console token accepted.
const MIN_SECRET: usize = 16;
/// Longest wait for the role probe of a NATS sign-in.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also pauses, resumes, triggers, retries and deletes.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// A console token and the role it signs in as: `operator:SECRET` or
/// `viewer:SECRET` on the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleToken {
    pub role: Role,
    pub secret: String,
}

impl fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConsoleToken({}:***)", self.role.as_str())
    }
}

impl FromStr for ConsoleToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, secret) = s.split_once(':').ok_or_else(|| {
            "console_token: expected ROLE:SECRET (operator:... or viewer:...)".to_string()
        })?;
        let role = match role {
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            other => {
                return Err(format!(
                    "console_token: '{other}' is not a role (operator or viewer)"
                ));
            }
        };
        if secret.chars().count() < MIN_SECRET {
            return Err(format!(
                "console_token: the {} secret is shorter than {MIN_SECRET} characters",
                role.as_str()
            ));
        }
        Ok(ConsoleToken {
            role,
            secret: secret.to_string(),
        })
    }
}

/// Whose requests a session's connection carries.
#[derive(Debug)]
enum Via {
    /// The scheduler's own connection; the console checks the role.
    Console,
    /// A connection as the signed-in NATS user; what the server refused
    /// on it.
    Nats { refused: broadcast::Sender<String> },
}

#[derive(Debug)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The control API on the session's connection.
    api: ApiClient,
    client: async_nats::Client,
    via: Via,
    last_seen: Mutex<Instant>,
}

impl Session {
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the session acts as a NATS user of its own (whose
    /// permissions the server enforces).
    pub fn is_nats_user(&self) -> bool {
        matches!(self.via, Via::Nats { .. })
    }

    /// A control API request; a failure is the response to give.
    pub async fn request(&self, endpoint: &str, body: Bytes) -> Result<Bytes, Refusal> {
        let send = self.api.call_raw(endpoint, body);
        let reply = match &self.via {
            Via::Console => send.await,
            Via::Nats { refused, .. } => {
                let mut refused = refused.subscribe();
                let quoted = format!("\"{}\"", self.api.subject(endpoint));
                let refusal_of_this = async {
                    loop {
                        match refused.recv().await {
                            Ok(why) if why.contains(&quoted) => return why,
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                };
                tokio::select! {
                    r = send => r,
                    why = refusal_of_this => {
                        return Err(refusal(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            format!("the NATS server refused user {}: {why}", self.name),
                        ));
                    }
                }
            }
        };
        reply.map_err(|e| refusal(StatusCode::GATEWAY_TIMEOUT, "unavailable", e.to_string()))
    }
}

#[derive(Debug)]
pub struct Sessions {
    client: async_nats::Client,
    connect: ConnectArgs,
    names: Names,
    tokens: Vec<ConsoleToken>,
    nats_login: bool,
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new(
        client: async_nats::Client,
        connect: ConnectArgs,
        names: Names,
        tokens: Vec<ConsoleToken>,
        nats_login: bool,
    ) -> Sessions {
        Sessions {
            client,
            connect,
            names,
            tokens,
            nats_login,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The session of the request's cookie; a changing request must also
    /// carry [`INTENT_HEADER`].
    pub fn signed_in(&self, headers: &HeaderMap, changing: bool) -> Result<Arc<Session>, Refusal> {
        if changing && !headers.contains_key(INTENT_HEADER) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("a changing request needs the {INTENT_HEADER} header"),
            ));
        }
        let session = cookie(headers).and_then(|id| {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(id).cloned()
        });
        let Some(session) = session else {
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "not signed in",
            ));
        };
        let mut seen = session.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.elapsed() > IDLE_LIMIT {
            drop(seen);
            self.end(headers);
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the session ended after 12 hours unused; sign in again",
            ));
        }
        *seen = Instant::now();
        drop(seen);
        Ok(session)
    }

    /// Opens `session`; None when no safe id can be made.
    fn start(&self, session: Session) -> Option<String> {
        let id = session_id()?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| {
            s.last_seen
                .lock()
                .is_ok_and(|seen| seen.elapsed() <= IDLE_LIMIT)
        });
        open.insert(id.clone(), Arc::new(session));
        Some(id)
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(id);
        }
    }

    /// The control API over `client`, waiting at most [`CALL_LIMIT`].
    fn api(&self, client: &async_nats::Client) -> ApiClient {
        ApiClient::new(client.clone(), self.names.clone()).with_timeout(CALL_LIMIT)
    }

    fn by_token(&self, given: &str) -> Option<Session> {
        let token = self
            .tokens
            .iter()
            .find(|t| same(t.secret.as_bytes(), given.as_bytes()))?;
        Some(Session {
            name: format!("{} token", token.role.as_str()),
            role: token.role,
            api: self.api(&self.client),
            client: self.client.clone(),
            via: Via::Console,
            last_seen: Mutex::new(Instant::now()),
        })
    }

    async fn by_nats_user(&self, user: &str, password: &str) -> Result<Session, String> {
        let args = ConnectArgs {
            user: Some(user.to_string()),
            password: Some(password.to_string()),
            token: None,
            creds: None,
            nkey: None,
            ..self.connect.clone()
        };
        let (refused, _) = broadcast::channel(16);
        let events = refused.clone();
        let opts = args
            .options(&format!("jetcron-console {user}"), Patience::FailFast)
            .await
            .map_err(|e| e.to_string())?
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(why)) =
                        event
                        && why.to_lowercase().contains("permissions violation")
                    {
                        let _ = events.send(why);
                    }
                }
            });
        let client = args.connect_with(opts).await.map_err(|e| match e {
            jetcron_shared::connect::ConnectError::Connect { source, .. } => {
                format!("the NATS server did not accept user {user}: {source}")
            }
            other => other.to_string(),
        })?;
        let mut session = Session {
            name: user.to_string(),
            role: Role::Viewer,
            api: self.api(&client),
            client,
            via: Via::Nats { refused },
            last_seen: Mutex::new(Instant::now()),
        };
        // The probe: an empty pause changes nothing wherever it goes.
        let probe = session.request(endpoint::JOB_PAUSE, Bytes::from_static(b"{}"));
        if let Ok(Ok(reply)) = tokio::time::timeout(PROBE_LIMIT, probe).await
            && serde_json::from_slice::<serde_json::Value>(&reply).is_ok()
        {
            session.role = Role::Operator;
        }
        Ok(session)
    }
}

/// The session id in the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// 32 random bytes from the operating system, in hex; None when it gives
/// none (then no session id is safe to hand out).
fn session_id() -> Option<String> {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        warn!(error = %e, "the operating system gave no random bytes for a session id");
        return None;
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body of `POST /login`: a token, or a NATS user and password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !headers.contains_key(INTENT_HEADER) {
        return refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("signing in needs the {INTENT_HEADER} header"),
        )
        .into_response();
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("login: {e}"),
            )
            .into_response();
        }
    };
    let sessions = &app.sessions;
    let session = match (login.token, login.user, login.password) {
        (Some(token), None, None) if !sessions.tokens.is_empty() => sessions
            .by_token(&token)
            .ok_or_else(|| "token: not a console token".to_string()),
        (Some(_), None, None) => Err("token: this console takes no tokens".to_string()),
        (None, Some(user), Some(password)) if sessions.nats_login => {
            sessions.by_nats_user(&user, &password).await
        }
        (None, Some(_), Some(_)) => {
            Err("user: this console does not sign in NATS users".to_string())
        }
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "login: give a token, or a user and a password",
            )
            .into_response();
        }
    };
    let session = match session {
        Ok(s) => s,
        Err(why) => {
            warn!(reason = %why, "console sign-in refused");
            return refusal(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
        }
    };
    info!(name = %session.name, role = session.role.as_str(), "console sign-in");
    let answer = json!({"ok": true, "name": session.name, "role": session.role.as_str()});
    let Some(id) = sessions.start(session) else {
        return refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no session id could be made: the operating system gave no random bytes",
        )
        .into_response();
    };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        IDLE_LIMIT.as_secs()
    );
    let mut r = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.sessions.end(&headers);
    let mut r = Json(json!({"ok": true})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("jetcron_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// `GET /api/session`: who is signed in, or how one may sign in.
pub async fn session(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ways = json!({
        "token": !app.sessions.tokens.is_empty(),
        "nats": app.sessions.nats_login,
    });
    match app.sessions.signed_in(&headers, false) {
        Ok(s) => Json(json!({
            "ok": true,
            "name": s.name,
            "role": s.role.as_str(),
            "prefix": app.names.prefix(),
            "login": ways,
        }))
        .into_response(),
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"ok": false, "login": ways})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_role_and_are_long_enough() {
        let t: ConsoleToken = "operator:0123456789abcdef".parse().unwrap();
        assert_eq!(t.role, Role::Operator);
        assert_eq!(t.secret, "0123456789abcdef");
        let t: ConsoleToken = "viewer:a:b:0123456789abcdef".parse().unwrap();
        assert_eq!(
            (t.role, t.secret.as_str()),
            (Role::Viewer, "a:b:0123456789abcdef")
        );
        assert_eq!(
            "admin:0123456789abcdef"
                .parse::<ConsoleToken>()
                .unwrap_err(),
            "console_token: 'admin' is not a role (operator or viewer)"
        );
        assert_eq!(
            "viewer:short".parse::<ConsoleToken>().unwrap_err(),
            "console_token: the viewer secret is shorter than 16 characters"
        );
        assert!(
            "nocolon"
                .parse::<ConsoleToken>()
                .unwrap_err()
                .contains("ROLE:SECRET")
        );
        // The secret never shows in logs.
        assert_eq!(format!("{t:?}"), "ConsoleToken(viewer:***)");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; jetcron_session=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("jetcron_sessionx=abc"),
        );
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        let (a, b) = (session_id().unwrap(), session_id().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
