//! The NATS connection and the API client, from the common flags.

use jetcron_shared::Names;
use jetcron_shared::api::ApiClient;
use jetcron_shared::connect::{ConnectArgs, ConnectError, Patience};

use crate::Failure;

/// Connects at once or fails: an operator waiting at a prompt wants to know.
pub async fn connect(args: &ConnectArgs) -> Result<(async_nats::Client, Names), Failure> {
    let names = args.names().map_err(|e| Failure::Input(e.to_string()))?;
    let client = args
        .connect("jetcron cli", Patience::FailFast)
        .await
        .map_err(|e| match e {
            ConnectError::Connect { .. } => Failure::Unavailable(e.to_string()),
            ConnectError::Prefix(_)
            | ConnectError::UserWithoutPassword
            | ConnectError::Creds { .. }
            | ConnectError::NKey { .. }
            | ConnectError::CertWithoutKey => Failure::Input(e.to_string()),
        })?;
    Ok((client, names))
}

pub async fn api(args: &ConnectArgs) -> Result<ApiClient, Failure> {
    let (client, names) = connect(args).await?;
    Ok(ApiClient::new(client, names))
}
