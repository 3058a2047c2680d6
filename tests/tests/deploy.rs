#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The deployment files, checked without a container runtime or systemd:
//! the properties `docker-compose.yml` and the systemd units in
//! `deploy/systemd/` promise, read from the files themselves (flags and
//! variables against README.md's *Configuration*); the Dockerfile's cached
//! dependencies; nats-server's own test (`-t`) of both server configs with
//! the least-privilege users; and three nodes started from
//! `deploy/nats-cluster.conf` that hold a scheduler's resources at three
//! replicas.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jetcron_shared::Names;
use jetcron_shared::connect::{ConnectArgs, Patience};
use jetcron_tests::harness::{self, Scheduler};
use jetcron_tests::server::free_ports;
use serde_json::Value;
use tokio::time::{Instant, sleep, timeout};

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

/// The web console is served inside the network and published on
/// loopback, with a way to sign in the users file already has.
#[test]
fn compose_serves_the_console_on_loopback() {
    let c = compose();
    let s = &c["services"]["scheduler-1"];
    let cmd = command(s);
    let at = cmd
        .iter()
        .position(|a| a == "--http-addr")
        .expect("scheduler-1 serves the console");
    let port = cmd[at + 1].rsplit(':').next().unwrap().to_string();
    assert!(
        cmd[at + 1].starts_with("0.0.0.0:"),
        "{cmd:?}: reachable from the host's port"
    );
    assert!(
        cmd.iter().any(|a| a == "--console-nats-login"),
        "{cmd:?}: people sign in as the users of the users file"
    );
    let published: Vec<&str> = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        published.contains(&format!("127.0.0.1:{port}:{port}").as_str()),
        "{published:?}"
    );
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

/// nats-server's verdict (`-t`) on `config` with exactly `env` as its
/// environment.
fn nats_server_test(config: &Path, env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(jetcron_tests::nats_server_bin())
        .args(["-t", "-c"])
        .arg(config)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The users file's password variables, for these roles, set to `pw-<role>`.
fn passwords(roles: &[&str]) -> Vec<(String, String)> {
    roles
        .iter()
        .map(|r| {
            (
                format!("JETCRON_{}_PASSWORD", r.to_uppercase()),
                format!("pw-{r}"),
            )
        })
        .collect()
}

const ROLES: [&str; 4] = ["scheduler", "worker", "operator", "viewer"];

#[test]
fn nats_server_accepts_the_compose_config_with_the_users_file() {
    let config = repo("deploy/nats-server.conf");
    let (ok, text) = nats_server_test(&config, &passwords(&ROLES));
    assert!(ok && text.contains("is valid"), "{text}");
    // The users file is read: without a password its variable is missing.
    let (ok, text) = nats_server_test(&config, &passwords(&ROLES[..3]));
    assert!(!ok && text.contains("JETCRON_VIEWER_PASSWORD"), "{text}");
}

// --- systemd -------------------------------------------------------------

/// A systemd unit file of `deploy/systemd/`: its settings in file order,
/// `(section, key, value)`, comments and blank lines left out,
/// continuation lines joined.
#[derive(Debug)]
struct Unit {
    name: String,
    settings: Vec<(String, String, String)>,
}

impl Unit {
    fn read(name: &str) -> Unit {
        let text = std::fs::read_to_string(repo(&format!("deploy/systemd/{name}"))).unwrap();
        let mut settings = Vec::new();
        let mut section = String::new();
        let mut line = String::new();
        for raw in text.lines() {
            let raw = raw.trim();
            if line.is_empty() && (raw.is_empty() || raw.starts_with('#') || raw.starts_with(';')) {
                continue;
            }
            if let Some(head) = raw.strip_suffix('\\') {
                line.push_str(head);
                line.push(' ');
                continue;
            }
            line.push_str(raw);
            let whole = std::mem::take(&mut line);
            if let Some(name) = whole.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = whole
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not a setting: {whole}"));
            settings.push((section.clone(), key.trim().into(), value.trim().into()));
        }
        Unit {
            name: name.into(),
            settings,
        }
    }

    /// Every value of `key` in `section`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of `key` in `section`, which must be set exactly once.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key)[..] {
            [value] => value,
            ref values => panic!("{}: [{section}] {key} is set {values:?}", self.name),
        }
    }

    /// The words of every value of a list setting (`After=`, `Wants=`).
    fn words(&self, section: &str, key: &str) -> Vec<&str> {
        self.all(section, key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    fn service(&self, key: &str) -> &str {
        self.one("Service", key)
    }
}

/// A systemd time span in seconds: `45s`, `1min`, or a bare number.
fn span(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| humantime::parse_duration(text).unwrap().as_secs())
}

/// The assignments of an example env file of `deploy/systemd/`, also
/// those commented out (`# NAME=value`): `(name, value, commented)`.
fn env_example(name: &str) -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(repo(&format!("deploy/systemd/{name}"))).unwrap();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (body, commented) = match line.strip_prefix('#') {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            let (key, value) = body.split_once('=')?;
            let is_name = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !is_name {
                assert!(
                    commented || line.is_empty(),
                    "{name}: not an assignment: {line}"
                );
                return None;
            }
            let value = value.trim().trim_matches('"').to_string();
            Some((key.to_string(), value, commented))
        })
        .collect()
}

/// The value an example env file sets (not commented out) for `key`.
fn env_value(name: &str, key: &str) -> Option<String> {
    env_example(name)
        .into_iter()
        .find(|(k, _, commented)| k == key && !commented)
        .map(|(_, v, _)| v)
}

/// The flags and environment variables README.md's *Configuration* gives
/// `binary`: the ones every binary takes (the prose before the tables) and
/// its own table's.
fn documented(binary: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme.find("\n## Configuration\n").unwrap();
    let end = start + readme[start..].find("\n## Production\n").unwrap();
    let section = &readme[start..end];
    let scheduler = section.find("\n`jetcron-scheduler`:\n").unwrap();
    let worker = section.find("\n`jetcron-worker`:\n").unwrap();
    let own = match binary {
        "jetcron-scheduler" => &section[scheduler..worker],
        "jetcron-worker" => &section[worker..],
        other => panic!("no table for {other}"),
    };
    let (mut flags, mut env) = (BTreeSet::new(), BTreeSet::new());
    for text in [&section[..scheduler], own] {
        // What is in backquotes: `--user`/`--password`, `NATS_URL`, ...
        for quoted in text.split('`').skip(1).step_by(2) {
            for word in quoted.split(|c: char| c.is_whitespace() || "/,=|()[]".contains(c)) {
                if word.len() > 2 && word.starts_with("--") {
                    flags.insert(word.to_string());
                } else if word.contains('_')
                    && word
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    env.insert(word.to_string());
                }
            }
        }
    }
    (flags, env)
}

/// What one jetcron unit runs and reads.
#[derive(Debug)]
struct Service {
    unit: &'static str,
    binary: &'static str,
    /// Its env file on the machine, and the example of it here.
    env_file: &'static str,
    example: &'static str,
    /// Its user in deploy/jetcron-users.conf.
    role: &'static str,
    /// The env file's variable for the flags without a variable of their own.
    flags_var: &'static str,
}

const SERVICES: [Service; 2] = [
    Service {
        unit: "jetcron-scheduler.service",
        binary: "jetcron-scheduler",
        env_file: "/etc/jetcron/scheduler.env",
        example: "scheduler.env.example",
        role: "scheduler",
        flags_var: "JETCRON_SCHEDULER_FLAGS",
    },
    Service {
        unit: "jetcron-worker.service",
        binary: "jetcron-worker",
        env_file: "/etc/jetcron/worker.env",
        example: "worker.env.example",
        role: "worker",
        flags_var: "JETCRON_WORKER_FLAGS",
    },
];

/// The words the unit runs for `s`: its `ExecStart` with the flags
/// variable replaced by the example's value of it.
fn command_line(s: &Service) -> Vec<String> {
    let unit = Unit::read(s.unit);
    let flags = env_value(s.example, s.flags_var).unwrap_or_default();
    unit.service("ExecStart")
        .split_whitespace()
        .flat_map(|word| {
            if word.starts_with('$') {
                let var = word.trim_start_matches('$');
                let var = var.trim_start_matches('{').trim_end_matches('}');
                assert_eq!(var, s.flags_var, "{}: ExecStart uses ${var}", s.unit);
                flags.split_whitespace().map(str::to_string).collect()
            } else {
                vec![word.to_string()]
            }
        })
        .collect()
}

#[test]
fn the_units_run_the_installed_binaries_with_flags_and_variables_they_have() {
    for s in &SERVICES {
        let unit = Unit::read(s.unit);
        let (flags, env) = documented(s.binary);
        // The README's tables were found: a few that must be in them.
        for flag in ["--nats-url", "--user", "--metrics-addr", "--replicas"] {
            assert!(
                flags.contains(flag),
                "{}: {flag} not found in README",
                s.binary
            );
        }
        for var in [
            "NATS_URL",
            "NATS_PASSWORD",
            "JETCRON_LOG_FORMAT",
            "RUST_LOG",
        ] {
            assert!(env.contains(var), "{}: {var} not found in README", s.binary);
        }

        let line = command_line(s);
        assert_eq!(
            line[0],
            format!("/usr/local/bin/{}", s.binary),
            "{}",
            s.unit
        );
        for word in &line[1..] {
            let flag = word.split('=').next().unwrap();
            if flag.starts_with('-') {
                assert!(
                    flags.contains(flag),
                    "{}: {flag} is not a flag of {} (README, Configuration)",
                    s.unit,
                    s.binary
                );
            }
        }

        // The env file must exist (no `-` prefix): it holds the password.
        assert_eq!(unit.service("EnvironmentFile"), s.env_file, "{}", s.unit);
        for assignment in unit.all("Service", "Environment") {
            for pair in assignment.split_whitespace() {
                let var = pair.split('=').next().unwrap();
                assert!(
                    env.contains(var),
                    "{}: {var} is not read by {}",
                    s.unit,
                    s.binary
                );
            }
        }
        let example = env_example(s.example);
        assert!(example.iter().any(|(k, _, c)| k == "NATS_URL" && !c));
        for (var, _, _) in &example {
            assert!(
                env.contains(var) || var == s.flags_var,
                "{}: {var} is not read by {} (README, Configuration)",
                s.example,
                s.binary
            );
        }
        // The flags variable, commented out or not, holds flags of the binary.
        for (_, value, _) in example.iter().filter(|(k, _, _)| k == s.flags_var) {
            for word in value.split_whitespace().filter(|w| w.starts_with('-')) {
                let flag = word.split('=').next().unwrap();
                assert!(
                    flags.contains(flag),
                    "{}: {flag} is not a flag of {}",
                    s.example,
                    s.binary
                );
            }
        }
    }
}

#[test]
fn the_units_run_unprivileged_hardened_and_restart_after_a_failure() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let production = &readme[readme.find("\n## Production\n").unwrap()..];
    for name in [SERVICES[0].unit, SERVICES[1].unit, "nats-server.service"] {
        let unit = Unit::read(name);
        let user = unit.service("User");
        assert!(!user.is_empty() && user != "root", "{name}: User={user}");
        assert_eq!(unit.service("Group"), user, "{name}");
        // README's install steps create that user.
        assert!(
            production
                .lines()
                .any(|l| l.contains("useradd --system")
                    && l.trim_end().ends_with(&format!(" {user}"))),
            "README.md, Production, creates no user {user} for {name}"
        );
        assert_eq!(unit.service("Restart"), "on-failure", "{name}");
        assert!(span(unit.service("RestartSec")) >= 1, "{name}");
        assert!(
            unit.words("Unit", "Wants")
                .contains(&"network-online.target"),
            "{name}"
        );
        assert!(
            unit.words("Unit", "After")
                .contains(&"network-online.target"),
            "{name}"
        );
        assert_eq!(
            unit.one("Install", "WantedBy"),
            "multi-user.target",
            "{name}"
        );
        assert_eq!(unit.service("NoNewPrivileges"), "yes", "{name}");
        assert_eq!(unit.service("PrivateTmp"), "yes", "{name}");
        assert_eq!(unit.service("CapabilityBoundingSet"), "", "{name}");
        assert!(
            ["full", "strict"].contains(&unit.service("ProtectSystem")),
            "{name}"
        );
    }
    // Each jetcron process signs in as its own user of the users file, and
    // no example ships a password.
    for s in &SERVICES {
        assert_eq!(env_value(s.example, "NATS_USER").as_deref(), Some(s.role));
        assert_eq!(env_value(s.example, "NATS_PASSWORD").as_deref(), Some(""));
    }
    assert_ne!(
        Unit::read(SERVICES[0].unit).service("User"),
        Unit::read(SERVICES[1].unit).service("User"),
        "shell jobs run as the worker's user: the scheduler needs its own"
    );
}

#[test]
fn the_worker_unit_lets_the_worker_stop_its_runs_and_hand_them_back() {
    let s = &SERVICES[1];
    let unit = Unit::read(s.unit);
    // SIGTERM to the worker alone: under the default (control-group) every
    // shell job would get it at the same moment, before its grace.
    assert_eq!(unit.service("KillMode"), "mixed");
    assert!(
        unit.all("Service", "KillSignal")
            .iter()
            .all(|v| *v == "SIGTERM")
    );
    let line = command_line(s);
    let grace = line
        .iter()
        .enumerate()
        .find_map(|(i, w)| match w.strip_prefix("--shutdown-grace") {
            Some("") => Some(humantime::parse_duration(&line[i + 1]).unwrap()),
            Some(rest) => rest
                .strip_prefix('=')
                .map(|v| humantime::parse_duration(v).unwrap()),
            None => None,
        })
        .unwrap_or(jetcron_worker::config::DEFAULT_SHUTDOWN_GRACE)
        .as_secs();
    let hand_back = jetcron_worker::shutdown::HAND_BACK_LIMIT.as_secs();
    let stop = span(unit.service("TimeoutStopSec"));
    assert!(
        stop > grace + hand_back,
        "TimeoutStopSec {stop}s <= --shutdown-grace {grace}s + hand-back {hand_back}s"
    );
    // Shell jobs inherit the hardening: nothing that breaks ordinary
    // commands (JIT runtimes, sockets of any kind, writing files).
    for key in [
        "MemoryDenyWriteExecute",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "PrivateNetwork",
        "PrivateUsers",
    ] {
        assert!(unit.all("Service", key).is_empty(), "{key} in {}", s.unit);
    }
    assert_eq!(unit.service("ProtectSystem"), "full");
    // Jobs start in a directory the worker's user may write.
    assert_eq!(
        unit.service("WorkingDirectory"),
        format!("/var/lib/{}", unit.service("StateDirectory"))
    );
}

// --- the three-machine cluster ---------------------------------------------

const ROUTE_PASSWORD: &str = "0a1b2c3d4e5f";

/// nats-server's environment for node `name` from `nats.env.example`, the
/// routes' hosts (`node-1:6222`, ...) replaced by the local cluster ports.
fn node_env(name: &str, cluster_ports: &[u16]) -> Vec<(String, String)> {
    env_example("nats.env.example")
        .into_iter()
        .filter(|(_, _, commented)| !commented)
        .map(|(key, value, _)| {
            let value = match key.as_str() {
                "NATS_SERVER_NAME" => name.to_string(),
                "NATS_ROUTE_PASSWORD" => ROUTE_PASSWORD.to_string(),
                "NATS_ROUTES" => {
                    let mut routes = value.replace("ROUTE_PASSWORD", ROUTE_PASSWORD);
                    for (i, port) in cluster_ports.iter().enumerate() {
                        let host = format!("node-{}:6222", i + 1);
                        assert!(routes.contains(&host), "{host} not in NATS_ROUTES: {value}");
                        routes = routes.replace(&host, &format!("127.0.0.1:{port}"));
                    }
                    routes
                }
                _ => match ROLES
                    .iter()
                    .find(|r| key == format!("JETCRON_{}_PASSWORD", r.to_uppercase()))
                {
                    Some(role) => format!("pw-{role}"),
                    None => panic!("nats.env.example: {key} is unknown to this test"),
                },
            };
            (key, value)
        })
        .collect()
}

/// `deploy/nats-cluster.conf` and the users file in `dir`, the config's
/// ports and store replaced by these (each replaced text must be there
/// once). Returns the config's path.
fn local_cluster_conf(dir: &Path, client: u16, cluster: u16, http: u16) -> PathBuf {
    let mut text = std::fs::read_to_string(repo("deploy/nats-cluster.conf")).unwrap();
    let store = dir.join("store");
    for (from, to) in [
        (
            "listen: 0.0.0.0:4222",
            format!("listen: 127.0.0.1:{client}"),
        ),
        (
            "listen: 0.0.0.0:6222",
            format!("listen: 127.0.0.1:{cluster}"),
        ),
        ("http: 127.0.0.1:8222", format!("http: 127.0.0.1:{http}")),
        (
            "store_dir: /var/lib/nats",
            format!("store_dir: {}", Value::from(store.to_string_lossy())),
        ),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} in nats-cluster.conf"
        );
        text = text.replace(from, &to);
    }
    std::fs::copy(
        repo("deploy/jetcron-users.conf"),
        dir.join("jetcron-users.conf"),
    )
    .unwrap();
    let config = dir.join("nats-server.conf");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn the_nats_unit_runs_the_cluster_config_that_nats_server_accepts() {
    let unit = Unit::read("nats-server.service");
    assert_eq!(
        unit.service("ExecStart"),
        "/usr/local/bin/nats-server -c /etc/nats/nats-cluster.conf"
    );
    assert_eq!(unit.service("EnvironmentFile"), "/etc/nats/nats.env");
    // The store dir of the config is the unit's state directory.
    let config = std::fs::read_to_string(repo("deploy/nats-cluster.conf")).unwrap();
    let store = format!("store_dir: /var/lib/{}", unit.service("StateDirectory"));
    assert!(config.contains(&store), "{store} not in nats-cluster.conf");
    assert!(config.contains("\ninclude ./jetcron-users.conf"));

    let dir = tempfile::tempdir().unwrap();
    let config = local_cluster_conf(dir.path(), 14222, 16222, 18222);
    let env = node_env("nats-1", &[16222, 16223, 16224]);
    let (ok, text) = nats_server_test(&config, &env);
    assert!(ok && text.contains("is valid"), "{text}");
    // The users file is read, and the routes and their password come from
    // the environment.
    for missing in [
        "JETCRON_VIEWER_PASSWORD",
        "NATS_ROUTE_PASSWORD",
        "NATS_ROUTES",
    ] {
        let fewer: Vec<_> = env.iter().filter(|(k, _)| k != missing).cloned().collect();
        let (ok, text) = nats_server_test(&config, &fewer);
        assert!(!ok && text.contains(missing), "{text}");
    }
}

/// A node started from the cluster config; killed when dropped.
#[derive(Debug)]
struct Node {
    name: String,
    url: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes, `nats-1` to `nats-3`, from the cluster config and the
/// example environment, on loopback.
fn start_nodes() -> Vec<Node> {
    let ports = free_ports(9);
    let (client, rest) = ports.split_at(3);
    let (cluster, http) = rest.split_at(3);
    (0..3)
        .map(|i| {
            let name = format!("nats-{}", i + 1);
            let dir = tempfile::Builder::new()
                .prefix("jetcron-deploy-")
                .tempdir()
                .unwrap();
            let config = local_cluster_conf(dir.path(), client[i], cluster[i], http[i]);
            let log = dir.path().join("nats-server.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(jetcron_tests::nats_server_bin())
                .arg("-c")
                .arg(&config)
                .env_clear()
                .envs(node_env(&name, cluster))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            Node {
                name,
                url: format!("nats://127.0.0.1:{}", client[i]),
                child,
                log,
                _dir: dir,
            }
        })
        .collect()
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("\n--- log of {}:\n{}", n.name, n.log_tail()))
        .collect()
}

/// How long the cluster may take to elect, and the scheduler to create
/// its resources on it.
const CLUSTER_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_the_cluster_config_hold_the_resources_at_three_replicas() {
    harness::init_tracing();
    let mut nodes = start_nodes();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let as_role = |role: &str, url: String| ConnectArgs {
        nats_url: url,
        user: Some(role.into()),
        password: Some(format!("pw-{role}")),
        ..ConnectArgs::default()
    };
    // A scheduler as the README sets one up: the scheduler user, every
    // node in its URL, the replicas of the example env file.
    let replicas: usize = env_value("scheduler.env.example", "JETCRON_REPLICAS")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(replicas, 3);
    let mut config = harness::scheduler_config(&urls.join(","), "deploy-scheduler");
    config.connect = as_role("scheduler", urls.join(","));
    config.setup.replicas = replicas;
    let scheduler = Scheduler::start_with(config);

    let client = as_role("scheduler", urls.join(","))
        .connect("deploy test", Patience::WaitForServer)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let names = Names::new("jetcron").unwrap();
    let mut streams = vec![
        names.work_stream(),
        names.results_stream(),
        names.events_stream(),
        names.ends_stream(),
    ];
    for bucket in [
        names.jobs_bucket(),
        names.state_bucket(),
        names.lease_bucket(),
        names.runs_bucket(),
        names.workers_bucket(),
    ] {
        streams.push(format!("KV_{bucket}"));
    }
    let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let deadline = Instant::now() + CLUSTER_LIMIT;
    let mut pending = streams.clone();
    let mut last = String::from("nothing checked yet");
    while !pending.is_empty() {
        for i in 0..nodes.len() {
            if let Some(status) = nodes[i].child.try_wait().unwrap() {
                panic!("{} exited ({status}){}", nodes[i].name, logs(&nodes));
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every resource at {replicas} replicas within {CLUSTER_LIMIT:?}: {pending:?}, \
             last: {last}{}",
            logs(&nodes)
        );
        let mut still = Vec::new();
        for name in pending {
            let info = timeout(Duration::from_secs(2), js.get_stream(&name)).await;
            let in_sync = match info {
                Ok(Ok(stream)) => {
                    let info = stream.cached_info();
                    let cluster = info.cluster.clone().unwrap_or_default();
                    last = format!("{name}: {} replicas, {cluster:?}", info.config.num_replicas);
                    info.config.num_replicas == replicas
                        && cluster.leader.is_some_and(|l| node_names.contains(&l))
                        && cluster.replicas.len() == replicas - 1
                        && cluster.replicas.iter().all(|p| p.current && !p.offline)
                }
                Ok(Err(e)) => {
                    last = format!("{name}: {e}");
                    false
                }
                Err(_) => {
                    last = format!("{name}: no answer within 2s");
                    false
                }
            };
            if !in_sync {
                still.push(name);
            }
        }
        pending = still;
        if !pending.is_empty() {
            sleep(Duration::from_millis(200)).await;
        }
    }

    // Every route and every client signed in: a route URL with a wrong
    // password would go unnoticed otherwise, since the other end dials too.
    for node in &nodes {
        let log = std::fs::read_to_string(&node.log).unwrap();
        assert!(
            !log.contains("uthentication"),
            "{} refused a connection{}",
            node.name,
            logs(&nodes)
        );
    }

    // An operator connected to one node only reaches the scheduler's API,
    // which names it as the leader.
    let operator = as_role("operator", urls[2].clone())
        .connect("deploy test operator", Patience::FailFast)
        .await
        .unwrap();
    let api = jetcron_shared::api::ApiClient::new(operator, names.clone())
        .with_timeout(Duration::from_secs(2));
    loop {
        let status = api.status().await;
        if let Ok(status) = &status
            && status.leader.as_ref().map(|l| l.holder.as_str()) == Some("deploy-scheduler")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status through {} never named the leader: {status:?}{}",
            urls[2],
            logs(&nodes)
        );
        sleep(Duration::from_millis(200)).await;
    }
    scheduler.stop().await;
}
