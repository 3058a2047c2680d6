//! What the CLI's end-to-end tests share: running the binary, and a server
//! with a scheduler whose control API answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // not every test file uses all

use std::path::Path;
use std::process::Command;

use jetcron_shared::Names;
use jetcron_shared::api::ApiClient;
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler};

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with everything the run printed unless it exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{self:#?}");
        self
    }

    pub fn ok(&self) -> &Run {
        self.expect_code(0)
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// The stderr of a failed run: exactly one line, `jetcron: ...`.
    pub fn error_line(&self) -> &str {
        let err = self.stderr.trim_end();
        assert_eq!(err.lines().count(), 1, "{self:#?}");
        assert!(err.starts_with("jetcron: "), "{self:#?}");
        err
    }
}

/// Runs `jetcron --nats-url URL ARGS...` off the async runtime.
pub async fn jetcron(url: &str, args: &[&str]) -> Run {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_jetcron"))
            .arg("--nats-url")
            .arg(&url)
            .args(&args)
            .output()
            .expect("run jetcron");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A nats-server and one scheduler replica whose API answers.
pub struct Deployment {
    pub server: NatsServer,
    pub scheduler: Option<Scheduler>,
    pub api: ApiClient,
    pub client: async_nats::Client,
}

impl Deployment {
    pub async fn start() -> Deployment {
        harness::init_tracing();
        let server = NatsServer::start().await;
        let client = server.client().await;
        let scheduler = Scheduler::start(&server.url(), "a");
        let api = harness::api(&client, &Names::default()).await;
        Deployment {
            server,
            scheduler: Some(scheduler),
            api,
            client,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.stop().await;
        }
    }

    /// Stored revision of every job, by id.
    pub async fn revisions(&self) -> Vec<(String, u64)> {
        let list = self.api.list().await.expect("job.list");
        list.jobs.into_iter().map(|j| (j.id, j.revision)).collect()
    }
}
