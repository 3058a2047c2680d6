//! A failed command: one line for stderr and an exit code that scripts can
//! branch on.

use async_nats::RequestErrorKind;
use jetcron_shared::api::{ClientError, ErrorCode};
use thiserror::Error;

/// Why a command failed. The message is printed as `jetcron: <message>`.
#[derive(Debug, Error)]
pub enum Failure {
    /// The API answered and refused: invalid definition, unknown job,
    /// conflicting write, bad request. Exit code 1.
    #[error("{0}")]
    Refused(String),
    /// Bad usage or local input: unreadable or invalid file, bad flag value.
    /// Exit code 2 (as for clap's own usage errors).
    #[error("{0}")]
    Input(String),
    /// NATS is unreachable, or no scheduler answers the API. Exit code 3.
    #[error("{0}")]
    Unavailable(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Input(_) => 2,
            Failure::Unavailable(_) => 3,
        }
    }

    /// The message on one line, whatever the API or a library put in it.
    pub fn one_line(&self) -> String {
        let text = self.to_string();
        let parts: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        parts.join(" ")
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api(api) => match api.code {
                // The store behind the API failed: like an unreachable server,
                // retrying later may help.
                ErrorCode::Unavailable => Failure::Unavailable(api.message),
                ErrorCode::BadRequest
                | ErrorCode::InvalidJob
                | ErrorCode::NotFound
                | ErrorCode::Conflict
                | ErrorCode::Internal => Failure::Refused(api.message),
            },
            ClientError::Request { subject, source } => Failure::Unavailable(match source.kind() {
                RequestErrorKind::NoResponders => format!(
                    "nothing answers {subject} (no responders): is a jetcron scheduler running \
                     with this --prefix, and recent enough for this command?"
                ),
                RequestErrorKind::TimedOut => format!(
                    "no reply from {subject} in time: is a jetcron scheduler running with this \
                     --prefix?"
                ),
                _ => format!("request to {subject} failed: {source}"),
            }),
            ClientError::Reply { .. } => Failure::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::api::ApiError;

    #[test]
    fn api_errors_map_to_exit_codes() {
        let refused = |code| Failure::from(ClientError::Api(ApiError::new(code, "m")));
        assert!(matches!(refused(ErrorCode::NotFound), Failure::Refused(_)));
        assert!(matches!(refused(ErrorCode::Conflict), Failure::Refused(_)));
        assert!(matches!(
            refused(ErrorCode::InvalidJob),
            Failure::Refused(_)
        ));
        assert!(matches!(
            refused(ErrorCode::Unavailable),
            Failure::Unavailable(_)
        ));
        assert_eq!(Failure::Refused("x".into()).exit_code(), 1);
        assert_eq!(Failure::Input("x".into()).exit_code(), 2);
        assert_eq!(Failure::Unavailable("x".into()).exit_code(), 3);
    }

    #[test]
    fn messages_are_flattened_to_one_line() {
        let f = Failure::Refused("first\n  second\n\nthird".into());
        assert_eq!(f.one_line(), "first second third");
    }
}
