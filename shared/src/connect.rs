//! Connection options shared by every jetcron binary: server URL, prefix and
//! credentials, each settable by flag or environment variable.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::names::{InvalidPrefix, Names};

/// Flags common to `jetcron-scheduler`, `jetcron-worker` and `jetcron`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every bucket, stream and subject name.
    #[arg(long, env = "JETCRON_PREFIX", default_value = crate::names::DEFAULT_PREFIX)]
    pub prefix: String,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NKey seed file (`SU...`): sign in as the NKey user it belongs to.
    #[arg(long, env = "NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// CA certificate to verify the server's TLS certificate; implies TLS.
    #[arg(long, env = "NATS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (mutual
    /// TLS), with --tls-key; implies TLS.
    #[arg(long, env = "NATS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "NATS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl Default for ConnectArgs {
    fn default() -> Self {
        ConnectArgs {
            nats_url: "nats://127.0.0.1:4222".into(),
            prefix: crate::names::DEFAULT_PREFIX.into(),
            user: None,
            password: None,
            token: None,
            creds: None,
            nkey: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    #[error("--user and --password go together")]
    UserWithoutPassword,
    #[error("cannot read credentials file {path}: {source}")]
    Creds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read NKey seed file {path}: {source}")]
    NKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--tls-cert and --tls-key go together")]
    CertWithoutKey,
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// How hard to try when the server is not there yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Fail at once (interactive tools).
    FailFast,
    /// Keep trying in the background (long-running services).
    WaitForServer,
}

impl ConnectArgs {
    pub fn names(&self) -> Result<Names, InvalidPrefix> {
        Names::new(&self.prefix)
    }

    /// Connects with the configured credentials; `name` shows in server monitoring.
    pub async fn connect(
        &self,
        name: &str,
        patience: Patience,
    ) -> Result<async_nats::Client, ConnectError> {
        let opts = self.options(name, patience).await?;
        self.connect_with(opts).await
    }

    /// The connection options of [`ConnectArgs::connect`], for a caller
    /// that adds its own (an event callback) before connecting with
    /// [`ConnectArgs::connect_with`].
    pub async fn options(
        &self,
        name: &str,
        patience: Patience,
    ) -> Result<async_nats::ConnectOptions, ConnectError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            // Reconnect quickly after a server restart; the default backoff
            // grows to several seconds, which would show up as missed fires.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 50).min(250))
            });
        if patience == Patience::WaitForServer {
            opts = opts.retry_on_initial_connect();
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err(ConnectError::UserWithoutPassword),
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(path) = &self.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Creds {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::NKey {
                path: path.clone(),
                source,
            })?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                opts = opts
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err(ConnectError::CertWithoutKey),
        }
        Ok(opts)
    }

    /// Connects to the configured servers with `opts`.
    pub async fn connect_with(
        &self,
        opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, ConnectError> {
        let urls: Vec<&str> = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        opts.connect(urls)
            .await
            .map_err(|source| ConnectError::Connect {
                url: self.nats_url.clone(),
                source,
            })
    }
}
