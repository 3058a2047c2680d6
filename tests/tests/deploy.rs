#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The deployment files, checked without a container runtime: the
//! properties `docker-compose.yml` promises, read from the file itself; the
//! Dockerfile's cached dependencies; and nats-server's own test of the
//! compose file's server config with the least-privilege users.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(file)
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn services(c: &Value) -> Vec<(String, Value)> {
    c["services"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn command(s: &Value) -> Vec<String> {
    s["command"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Seconds in a compose duration such as `45s`, `1m30s`.
fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text).unwrap().as_secs()
}

#[test]
fn compose_pins_nats_with_auth_on_loopback_with_health_checks() {
    let c = compose();
    let all = services(&c);
    let nats = &c["services"]["nats"];
    assert!(
        nats["image"].as_str().unwrap().starts_with("nats:2.15"),
        "{nats}"
    );
    assert_eq!(command(nats), ["-c", "/etc/nats/nats-server.conf"]);
    let mounts: Vec<&str> = nats["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"./deploy/jetcron-users.conf:/etc/nats/jetcron-users.conf:ro"));
    assert!(mounts.contains(&"./deploy/nats-server.conf:/etc/nats/nats-server.conf:ro"));
    for (name, s) in &all {
        for port in s["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        let profiles = s["profiles"].as_array().cloned().unwrap_or_default();
        if profiles.is_empty() {
            assert!(
                s["healthcheck"]["test"].is_array(),
                "{name} has no health check"
            );
        }
    }
}

#[test]
fn every_jetcron_service_runs_the_one_image_as_its_own_user() {
    let c = compose();
    let jetcron: Vec<(String, Value)> = services(&c)
        .into_iter()
        .filter(|(name, _)| name != "nats")
        .collect();
    let images: BTreeSet<&str> = jetcron
        .iter()
        .map(|(_, s)| s["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, BTreeSet::from(["jetcron:local"]));
    let built: Vec<&str> = jetcron
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        built.len(),
        1,
        "the image is built by exactly one service: {built:?}"
    );
    for (name, s) in &jetcron {
        let env = &s["environment"];
        let user = env["NATS_USER"].as_str().unwrap_or_default();
        let want = match command(s).first().map(String::as_str) {
            Some("jetcron-scheduler") => "scheduler",
            Some("jetcron-worker") => "worker",
            _ => "operator",
        };
        assert_eq!(user, want, "{name}");
        let password = env["NATS_PASSWORD"].as_str().unwrap_or_default();
        assert_eq!(
            password,
            format!(
                "${{JETCRON_{}_PASSWORD:?set JETCRON_{}_PASSWORD}}",
                want.to_uppercase(),
                want.to_uppercase()
            ),
            "{name}"
        );
        assert_eq!(
            s["depends_on"]["nats"]["condition"], "service_healthy",
            "{name}"
        );
    }
}

#[test]
fn workers_have_an_init_and_time_to_hand_their_runs_back() {
    let c = compose();
    let workers: Vec<(String, Value)> = services(&c)
        .into_iter()
        .filter(|(_, s)| command(s).first().map(String::as_str) == Some("jetcron-worker"))
        .collect();
    assert!(workers.len() >= 2);
    for (name, s) in &workers {
        assert_eq!(s["init"], true, "{name}");
        let cmd = command(s);
        let grace = cmd
            .iter()
            .position(|a| a == "--shutdown-grace")
            .map(|i| seconds(&cmd[i + 1]))
            .unwrap_or(jetcron_worker::config::DEFAULT_SHUTDOWN_GRACE.as_secs());
        let stop = seconds(s["stop_grace_period"].as_str().unwrap());
        // Past the grace, runs are killed and handed back: that takes a few
        // seconds more (HAND_BACK_LIMIT at most).
        let hand_back = jetcron_worker::shutdown::HAND_BACK_LIMIT.as_secs();
        assert!(
            stop >= grace + hand_back,
            "{name}: stop_grace_period {stop}s < --shutdown-grace {grace}s + {hand_back}s"
        );
    }
}

#[test]
fn the_dockerfile_keeps_dependencies_cached_and_runs_unprivileged() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(text.contains("--mount=type=cache,target=/usr/local/cargo/registry"));
    assert!(text.contains("--mount=type=cache,target=/src/target"));
    assert!(text.contains("cargo build --release --locked"));
    assert!(text.trim_end().ends_with("USER nobody"), "{text}");
    let ignored = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    // `.env` holds the compose file's passwords.
    for path in ["target", ".tools", ".git", ".env"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            "{path} is sent to the build"
        );
    }
}

/// nats-server's verdict on the compose file's config (`-t`), with these
/// passwords in its environment.
fn nats_server_test(passwords: &[&str]) -> (bool, String) {
    let out = Command::new(jetcron_tests::nats_server_bin())
        .args(["-t", "-c"])
        .arg(repo("deploy/nats-server.conf"))
        .env_clear()
        .envs(
            passwords
                .iter()
                .map(|r| (format!("JETCRON_{r}_PASSWORD"), format!("pw-{r}"))),
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn nats_server_accepts_the_compose_config_with_the_users_file() {
    let (ok, text) = nats_server_test(&["SCHEDULER", "WORKER", "OPERATOR", "VIEWER"]);
    assert!(ok && text.contains("is valid"), "{text}");
    // The users file is read: without a password its variable is missing.
    let (ok, text) = nats_server_test(&["SCHEDULER", "WORKER", "OPERATOR"]);
    assert!(!ok && text.contains("JETCRON_VIEWER_PASSWORD"), "{text}");
}
