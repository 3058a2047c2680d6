//! What a shell command is handed besides the worker's own environment:
//! the `JETCRON_*` variables, and the payload.
//!
//! # The payload
//!
//! A payload is JSON of any size a job or a trigger may give it (up to
//! 256 KiB; see `MAX_PAYLOAD_BYTES` in `jetcron_shared::job`). Linux takes
//! at most 128 KiB in one environment string and about 2 MiB in the
//! arguments and environment together, and a command handed more does
//! not start at all (`Argument list too long`). So every payload is
//! written to a file of its own, readable by the worker's user only, whose
//! path is in `JETCRON_PAYLOAD_FILE`; the file is removed when the
//! attempt ends (a worker killed mid-run leaves it in the temporary
//! directory). A payload of at most [`ENV_PAYLOAD_MAX`] bytes is in
//! `JETCRON_PAYLOAD` too; a larger one is only in the file.
//!
//! Shard parameters are at most 4 KiB each (the job model refuses longer
//! ones), well inside those limits, so `JETCRON_SHARD_PARAM` always holds
//! the whole parameter.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use jetcron_shared::wire::ShardMessage;
use thiserror::Error;
use tracing::warn;

/// Largest payload (compact JSON, in bytes) also handed in `JETCRON_PAYLOAD`.
pub const ENV_PAYLOAD_MAX: usize = 64 * 1024;

#[derive(Debug, Error)]
#[error("cannot write the payload file {}: {source}", path.display())]
pub struct PayloadFileError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The variables of one attempt, and the payload file they name (removed
/// when this is dropped).
#[derive(Debug)]
pub struct Environment {
    pub vars: Vec<(String, String)>,
    payload_file: Option<PayloadFile>,
}

impl Environment {
    /// The environment of attempt `attempt` (execution `run_id` on
    /// `worker`) of `shard`; a payload is written to a file in `dir`.
    pub fn new(
        shard: &ShardMessage,
        attempt: u32,
        run_id: &str,
        worker: &str,
        dir: &Path,
    ) -> Result<Environment, PayloadFileError> {
        let mut vars = vec![
            ("JETCRON_JOB".to_string(), shard.job.clone()),
            (
                "JETCRON_INSTANT".to_string(),
                shard.instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
            ("JETCRON_SHARD".to_string(), shard.shard.to_string()),
            ("JETCRON_SHARDS".to_string(), shard.shards.to_string()),
            (
                "JETCRON_SHARD_PARAM".to_string(),
                shard.param.clone().unwrap_or_default(),
            ),
            ("JETCRON_ATTEMPT".to_string(), attempt.to_string()),
            ("JETCRON_RUN_ID".to_string(), run_id.to_string()),
            ("JETCRON_WORKER".to_string(), worker.to_string()),
        ];
        if let Some(parent) = &shard.parent {
            vars.push(("JETCRON_PARENT_FIRE".to_string(), parent.clone()));
        }
        let mut payload_file = None;
        if let Some(payload) = &shard.payload {
            let json = payload.to_string();
            let file =
                PayloadFile::write(dir.join(format!("jetcron-payload-{run_id}.json")), &json)?;
            vars.push((
                "JETCRON_PAYLOAD_FILE".to_string(),
                file.path.display().to_string(),
            ));
            if json.len() <= ENV_PAYLOAD_MAX {
                vars.push(("JETCRON_PAYLOAD".to_string(), json));
            }
            payload_file = Some(file);
        }
        Ok(Environment { vars, payload_file })
    }

    /// Where the payload is, if there is one.
    pub fn payload_path(&self) -> Option<&Path> {
        self.payload_file.as_ref().map(|f| f.path.as_path())
    }
}

/// A payload written for one attempt; removed on drop.
#[derive(Debug)]
struct PayloadFile {
    path: PathBuf,
}

impl PayloadFile {
    fn write(path: PathBuf, json: &str) -> Result<PayloadFile, PayloadFileError> {
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(json.as_bytes()));
        match written {
            Ok(()) => Ok(PayloadFile { path }),
            Err(source) => {
                // Whatever part of it was written goes too.
                let _ = std::fs::remove_file(&path);
                Err(PayloadFileError { path, source })
            }
        }
    }
}

impl Drop for PayloadFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot remove the payload file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use jetcron_shared::wire::Cause;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn shard(payload: Option<serde_json::Value>) -> ShardMessage {
        let job = jetcron_shared::Job::decode(
            br#"{"id":"sync","schedule":"@every 1h","shards":["a","b"],"run":{"shell":"true"}}"#,
            None,
        )
        .unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let mut shard = ShardMessage::new(&job, at, 1, 7, Cause::Schedule);
        shard.payload = payload;
        shard
    }

    fn vars(env: &Environment) -> HashMap<String, String> {
        env.vars.iter().cloned().collect()
    }

    #[test]
    fn the_command_sees_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let env = Environment::new(
            &shard(Some(serde_json::json!({"k": 1}))),
            2,
            "RUN1",
            "w7",
            dir.path(),
        )
        .unwrap();
        let v = vars(&env);
        assert_eq!(v["JETCRON_JOB"], "sync");
        assert_eq!(v["JETCRON_INSTANT"], "2026-01-02T03:04:05Z");
        assert_eq!(v["JETCRON_SHARD"], "1");
        assert_eq!(v["JETCRON_SHARDS"], "2");
        assert_eq!(v["JETCRON_SHARD_PARAM"], "b");
        assert_eq!(v["JETCRON_ATTEMPT"], "2");
        assert_eq!(v["JETCRON_RUN_ID"], "RUN1");
        assert_eq!(v["JETCRON_WORKER"], "w7");
        assert_eq!(v["JETCRON_PAYLOAD"], r#"{"k":1}"#);
        let path = dir.path().join("jetcron-payload-RUN1.json");
        assert_eq!(v["JETCRON_PAYLOAD_FILE"], path.display().to_string());
        assert_eq!(env.payload_path(), Some(path.as_path()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"k":1}"#);

        let mut bare = shard(None);
        bare.param = None;
        let env = Environment::new(&bare, 1, "RUN2", "w7", dir.path()).unwrap();
        let v = vars(&env);
        assert_eq!(v["JETCRON_SHARD_PARAM"], "");
        assert!(!v.contains_key("JETCRON_PAYLOAD"));
        assert!(!v.contains_key("JETCRON_PAYLOAD_FILE"));
        assert_eq!(env.payload_path(), None);
    }

    #[test]
    fn a_large_payload_is_only_in_its_file_which_goes_with_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let at_most = "x".repeat(ENV_PAYLOAD_MAX - 2);
        let env = Environment::new(
            &shard(Some(serde_json::Value::String(at_most.clone()))),
            1,
            "SMALL",
            "w",
            dir.path(),
        )
        .unwrap();
        assert_eq!(vars(&env)["JETCRON_PAYLOAD"], format!("\"{at_most}\""));

        let big = "x".repeat(ENV_PAYLOAD_MAX - 1);
        let env = Environment::new(
            &shard(Some(serde_json::Value::String(big.clone()))),
            1,
            "BIG",
            "w",
            dir.path(),
        )
        .unwrap();
        let v = vars(&env);
        assert!(!v.contains_key("JETCRON_PAYLOAD"));
        let path = PathBuf::from(&v["JETCRON_PAYLOAD_FILE"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("\"{big}\"")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(env);
        assert!(!path.exists(), "the payload file outlived its attempt");
    }

    #[test]
    fn a_payload_file_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let err = Environment::new(&shard(Some(serde_json::json!(1))), 1, "R", "w", &missing)
            .unwrap_err();
        assert_eq!(err.path, missing.join("jetcron-payload-R.json"));
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }
}
