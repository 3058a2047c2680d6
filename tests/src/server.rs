//! Running real `nats-server` processes for integration tests.
//!
//! [`NatsServer`] is one standalone JetStream server on a random loopback port with its own
//! temporary store; [`NatsCluster`] is an n-node JetStream cluster on loopback. Both own their
//! processes: dropping them (also while a test panics) kills the servers and removes the stores.
//!
//! Every wait in here has a deadline; when one expires the helper panics with the tail of the
//! server log(s), so a failing test says why the server was not usable.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep, timeout};

/// How long a standalone server may take to accept clients with JetStream enabled.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a cluster may take until every node answers JetStream requests and an R3 stream can
/// be created (meta leader elected, all peers known).
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(45);
/// How long `stop()` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the process to disappear after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts (each with fresh ports) when the server exits right away, e.g. because
/// somebody else grabbed the port between our probe and the server's bind.
const START_ATTEMPTS: usize = 3;
/// Restart attempts on the same port when the server exits right away.
const RESTART_ATTEMPTS: usize = 3;
/// Lines of server log shown in panic messages.
const LOG_TAIL_LINES: usize = 60;
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Name of the throw-away stream used to prove a cluster can place R3 streams.
/// The most a test server's streams may reserve on disk, set rather than
/// derived from the disk's free space (see [`NatsServer::create`]).
const MAX_FILE_STORE: &str = "1TB";
const CLUSTER_PROBE_STREAM: &str = "JETCRON_TESTS_CLUSTER_PROBE";
/// Cluster name used by [`NatsCluster`].
const CLUSTER_NAME: &str = "jetcron-test";
/// Environment variable that points at a specific nats-server binary.
const BIN_ENV: &str = "NATS_SERVER_BIN";

/// Locates the nats-server binary: `$NATS_SERVER_BIN`, then
/// `<workspace root>/.tools/nats-server/bin/nats-server` (where
/// `./scripts/install-nats-server.sh` puts the pinned version), then `nats-server` on `PATH`.
///
/// # Panics
///
/// When none of them exists, with a message explaining how to install the pinned server.
pub fn nats_server_bin() -> PathBuf {
    match find_bin(
        std::env::var_os(BIN_ENV),
        &pinned_bin_path(),
        std::env::var_os("PATH"),
    ) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

/// `<workspace root>/.tools/nats-server/bin/nats-server`; the workspace root is the parent of
/// this crate's directory.
fn pinned_bin_path() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .unwrap_or(manifest_dir)
        .join(".tools/nats-server/bin/nats-server")
}

/// The lookup behind [`nats_server_bin`], with its inputs passed in so it can be tested without
/// touching the process environment.
fn find_bin(
    env_value: Option<OsString>,
    tools_path: &Path,
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let candidate = PathBuf::from(value);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    if is_executable_file(tools_path) {
        return Ok(tools_path.to_path_buf());
    }
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(&path_var) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let candidate = dir.join("nats-server");
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "nats-server not found (looked in ${BIN_ENV}, {}, PATH). \
         Install the pinned one with: ./scripts/install-nats-server.sh",
        tools_path.display()
    ))
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Binds `127.0.0.1:0`, reads the port the kernel picked and releases it again. Somebody else
/// may take it before the server binds; callers retry with a fresh port when the server exits.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot read the local address of a probe listener: {e}"),
    }
}

/// `n` distinct free ports (all probe listeners are held at the same time, so no duplicates).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| match l.local_addr() {
            Ok(addr) => addr.port(),
            Err(e) => panic!("cannot read the local address of a probe listener: {e}"),
        })
        .collect()
}

/// The last `lines` lines of a log file (or a note why it could not be read).
fn tail_of(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Quotes a string for a nats-server config file (JSON string syntax is accepted there).
fn conf_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

fn pid_of(child: &Child) -> Pid {
    match i32::try_from(child.id()) {
        Ok(raw) => Pid::from_raw(raw),
        Err(_) => panic!("child pid {} does not fit in pid_t", child.id()),
    }
}

/// One connect + `$JS.API.INFO` round trip. `Ok` when JetStream answered without an error.
async fn js_info_ok(url: &str) -> Result<(), String> {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url);
    let client = match timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(format!("connect to {url}: {e}")),
        Err(_) => return Err(format!("connect to {url}: timed out")),
    };
    let request = client.request("$JS.API.INFO", bytes::Bytes::new());
    let reply = match timeout(Duration::from_secs(3), request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(format!("$JS.API.INFO on {url}: {e}")),
        Err(_) => return Err(format!("$JS.API.INFO on {url}: timed out")),
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| {
        format!(
            "$JS.API.INFO on {url}: unparsable reply {:?}: {e}",
            String::from_utf8_lossy(&reply.payload)
        )
    })?;
    match body.get("error") {
        Some(error) => Err(format!("$JS.API.INFO on {url}: {error}")),
        None => Ok(()),
    }
}

/// Creates (and deletes again) an R`replicas` stream through a client connected to `urls`.
async fn replicated_stream_ok(urls: &[String], replicas: usize) -> Result<(), String> {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(urls);
    let client = match timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(format!("connect to {urls:?}: {e}")),
        Err(_) => return Err(format!("connect to {urls:?}: timed out")),
    };
    let js = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: CLUSTER_PROBE_STREAM.to_owned(),
        subjects: vec!["jetcron-tests.cluster-probe".to_owned()],
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    match timeout(Duration::from_secs(10), js.get_or_create_stream(config)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("creating an R{replicas} probe stream: {e}")),
        Err(_) => return Err(format!("creating an R{replicas} probe stream: timed out")),
    }
    match timeout(
        Duration::from_secs(10),
        js.delete_stream(CLUSTER_PROBE_STREAM),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("deleting the probe stream: {e}")),
        Err(_) => Err("deleting the probe stream: timed out".to_owned()),
    }
}

/// Why a server did not become ready.
#[derive(Debug)]
enum NotReady {
    /// The process exited (typically: port already taken).
    Exited(ExitStatus),
    /// The deadline passed; the last probe error.
    TimedOut(String),
}

/// A real nats-server process with JetStream, on `127.0.0.1` and a private temporary store.
///
/// Dropping it kills the process (SIGKILL) and removes the temporary directory.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    name: String,
    port: u16,
    /// The server is started with `-c <config>`; written when it is created.
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Holds store, log and config; removed when the server is dropped.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a standalone nats-server with JetStream on a random free port of 127.0.0.1 and a
    /// fresh temporary store, and waits until it accepts clients and answers `$JS.API.INFO`.
    ///
    /// # Panics
    ///
    /// When the binary is missing, or the server does not become ready in time (the message
    /// contains the tail of the server log).
    pub async fn start() -> NatsServer {
        let bin = nats_server_bin();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let mut server = NatsServer::create(bin.clone(), format!("jetcron-{port}"), port, "");
            server.spawn(&format!("start attempt {attempt} on port {port}"));
            match server.wait_ready(Instant::now() + READY_TIMEOUT).await {
                Ok(()) => return server,
                Err(NotReady::Exited(status)) => {
                    let _ = write!(
                        failures,
                        "\n--- attempt {attempt} (port {port}): nats-server exited with {status}; log:\n{}",
                        server.log_tail(LOG_TAIL_LINES)
                    );
                }
                Err(NotReady::TimedOut(reason)) => panic!(
                    "nats-server on port {port} not ready within {READY_TIMEOUT:?}: {reason}\n\
                     --- server log ({}):\n{}",
                    server.log.display(),
                    server.log_tail(LOG_TAIL_LINES)
                ),
            }
        }
        panic!("nats-server failed to start {START_ATTEMPTS} times:{failures}")
    }

    /// Starts a standalone server like [`NatsServer::start`], with `extra`
    /// added to its config (an `authorization` or `tls` block, say). It is
    /// ready once it listens: a server that wants credentials cannot be
    /// probed without them.
    pub async fn start_with_config(extra: &str) -> NatsServer {
        let port = free_port();
        let mut server =
            NatsServer::create(nats_server_bin(), format!("jetcron-{port}"), port, extra);
        server.spawn("secured start");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.exited() {
                panic!(
                    "nats-server exited ({status:?}); log:\n{}",
                    server.log_tail(LOG_TAIL_LINES)
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                // Listening comes last in the server's start-up.
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not listening within {READY_TIMEOUT:?}; log:\n{}",
                server.log_tail(LOG_TAIL_LINES)
            );
            sleep(POLL_INTERVAL).await;
        }
    }

    /// A not yet running server with its own temporary directory and a config
    /// file for it: name, listen address, JetStream on the private store, and
    /// `extra` (a cluster block for cluster nodes).
    fn create(bin: PathBuf, name: String, port: u16, extra: &str) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("jetcron-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for nats-server: {e}"));
        let store = dir.path().join("store");
        if let Err(e) = std::fs::create_dir_all(&store) {
            panic!("cannot create {}: {e}", store.display());
        }
        // Without max_file_store the server takes 75% of the disk's free
        // space as the most its streams may reserve, and refuses jetcron's
        // bounded streams on a machine short of disk: the tests write little,
        // so they should not depend on how full the disk is.
        let text = format!(
            "server_name: {name}\n\
             listen: {listen}\n\
             jetstream {{\n  store_dir: {store}\n  max_file_store: {MAX_FILE_STORE}\n}}\n{extra}",
            name = conf_string(&name),
            listen = conf_string(&format!("127.0.0.1:{port}")),
            store = conf_string(&store.to_string_lossy()),
        );
        let config = dir.path().join("nats-server.conf");
        if let Err(e) = std::fs::write(&config, text) {
            panic!("cannot write {}: {e}", config.display());
        }
        let log = dir.path().join("nats-server.log");
        NatsServer {
            bin,
            name,
            port,
            config,
            store,
            log,
            child: None,
            _dir: dir,
        }
    }

    fn args(&self) -> Vec<OsString> {
        vec!["-c".into(), self.config.clone().into_os_string()]
    }

    /// Spawns the process, stdout and stderr appended to the log file.
    fn spawn(&mut self, why: &str) {
        assert!(
            self.child.is_none(),
            "nats-server {} is already running",
            self.name
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "===== jetcron-tests: spawning nats-server {} ({why}) =====",
            self.name
        );
        let stderr: File = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
        let child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// `Some(status)` when the process has exited (or was never started).
    fn exited(&mut self) -> Option<Result<ExitStatus, String>> {
        match self.child.as_mut() {
            None => Some(Err("not running".to_owned())),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(Ok(status)),
                Ok(None) => None,
                Err(e) => Some(Err(format!("try_wait failed: {e}"))),
            },
        }
    }

    /// Polls until the server answers `$JS.API.INFO`, the process exits, or `deadline`.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), NotReady> {
        let url = self.url();
        let mut last_error = "no probe finished yet".to_owned();
        loop {
            match self.exited() {
                Some(Ok(status)) => return Err(NotReady::Exited(status)),
                Some(Err(e)) => return Err(NotReady::TimedOut(e)),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut(last_error));
            }
            match js_info_ok(&url).await {
                // The probe may have reached somebody else's server on a port we lost in a race;
                // our own process must still be alive for the answer to count.
                Ok(()) if self.exited().is_none() => return Ok(()),
                Ok(()) => {}
                Err(e) => last_error = e,
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (stays the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across stop/kill/restart, removed on drop).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The server name (`n1`, `n2`, ... for cluster nodes), as reported e.g. in
    /// `stream info.cluster.leader`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the file that collects the server's stdout and stderr (all runs, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// The process id while the server process exists.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is currently running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends `signal` unless the process has already exited. The child is not reaped before
    /// we wait for it, so its pid cannot have been reused.
    fn signal(&mut self, signal: Signal) {
        if self.exited().is_some() {
            return;
        }
        if let Some(child) = self.child.as_ref()
            && let Err(e) = kill(pid_of(child), signal)
            // ESRCH: it died in between; anything else is unexpected.
            && e != nix::errno::Errno::ESRCH
        {
            panic!("cannot send {signal} to nats-server {}: {e}", self.name);
        }
    }

    /// Waits until the process has exited; `false` on timeout.
    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.exited().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL if it is still running after 10 s) and
    /// keeps the store. No-op if it is not running.
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if !self.wait_exit(STOP_TIMEOUT).await {
            self.signal(Signal::SIGKILL);
            if !self.wait_exit(KILL_TIMEOUT).await {
                panic!(
                    "nats-server {} (pid {:?}) did not exit after SIGTERM and SIGKILL\n{}",
                    self.name,
                    self.pid(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
        }
        self.child = None;
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed) and keeps the store.
    /// No-op if it is not running.
    pub async fn kill(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(Signal::SIGKILL);
        if !self.wait_exit(KILL_TIMEOUT).await {
            panic!(
                "nats-server {} (pid {:?}) did not exit after SIGKILL",
                self.name,
                self.pid()
            );
        }
        self.child = None;
    }

    /// Starts the server again on the same port with the same store (and, for cluster nodes,
    /// the same config), and waits until it is ready. A still running server is stopped first.
    ///
    /// # Panics
    ///
    /// When the server does not become ready in time (with the tail of its log).
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut failures = String::new();
        for attempt in 1..=RESTART_ATTEMPTS {
            self.spawn(&format!("restart attempt {attempt}"));
            match self.wait_ready(Instant::now() + READY_TIMEOUT).await {
                Ok(()) => return,
                Err(NotReady::Exited(status)) => {
                    self.child = None;
                    let _ = write!(
                        failures,
                        "\n--- restart attempt {attempt}: exited with {status}"
                    );
                    sleep(Duration::from_millis(500)).await;
                }
                Err(NotReady::TimedOut(reason)) => panic!(
                    "nats-server {} not ready within {READY_TIMEOUT:?} after restart on port {}: \
                     {reason}\n--- server log ({}):\n{}",
                    self.name,
                    self.port,
                    self.log.display(),
                    self.log_tail(LOG_TAIL_LINES)
                ),
            }
        }
        panic!(
            "nats-server {} could not be restarted on port {}:{failures}\n--- server log:\n{}",
            self.name,
            self.port,
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// A client connected to this server.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn client(&self) -> async_nats::Client {
        match async_nats::connect(self.url()).await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot connect to nats-server {} at {}: {e}\n{}",
                self.name,
                self.url(),
                self.log_tail(LOG_TAIL_LINES)
            ),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // std does not signal a child that it already reaped, so this cannot hit a reused pid.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        // `dir` (store, log, config) is removed when the TempDir field is dropped.
    }
}

/// An n-node JetStream cluster on loopback (`n1`, `n2`, ... in cluster `jetcron-test`), every
/// node with its own client port, cluster port and store, routed to all the others.
///
/// Nodes can be stopped, killed and restarted individually through [`nodes`](Self::nodes).
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes; `nodes[i].name()` is `n{i+1}`.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts an `n`-node cluster and waits until every node answers `$JS.API.INFO` (a meta
    /// leader exists) and an R`min(n, 3)` stream can be created.
    ///
    /// # Panics
    ///
    /// When `n == 0`, the binary is missing, or the cluster is not ready in time (with the log
    /// tails of all nodes).
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n > 0, "a cluster needs at least one node");
        let bin = nats_server_bin();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = NatsCluster::create(&bin, n);
            for node in &mut cluster.nodes {
                node.spawn(&format!("cluster start attempt {attempt}"));
            }
            match cluster
                .wait_ready(Instant::now() + CLUSTER_READY_TIMEOUT)
                .await
            {
                Ok(()) => return cluster,
                Err((index, NotReady::Exited(status))) => {
                    let _ = write!(
                        failures,
                        "\n--- attempt {attempt}: node {} exited with {status}; log:\n{}",
                        cluster.nodes[index].name,
                        cluster.nodes[index].log_tail(LOG_TAIL_LINES)
                    );
                }
                Err((_, NotReady::TimedOut(reason))) => panic!(
                    "nats cluster of {n} not ready within {CLUSTER_READY_TIMEOUT:?}: {reason}{}",
                    cluster.logs()
                ),
            }
        }
        panic!("nats cluster failed to start {START_ATTEMPTS} times:{failures}")
    }

    /// Nodes with config files written, not started.
    fn create(bin: &Path, n: usize) -> NatsCluster {
        let ports = free_ports(2 * n);
        let (client_ports, cluster_ports) = ports.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let routes: String = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, port)| {
                    format!(
                        "    {}\n",
                        conf_string(&format!("nats-route://127.0.0.1:{port}"))
                    )
                })
                .collect();
            let cluster = format!(
                "cluster {{\n  name: {cluster}\n  listen: {cluster_listen}\n  routes: [\n{routes}  ]\n}}\n",
                cluster = conf_string(CLUSTER_NAME),
                cluster_listen = conf_string(&format!("127.0.0.1:{}", cluster_ports[i])),
            );
            let node = NatsServer::create(
                bin.to_path_buf(),
                format!("n{}", i + 1),
                client_ports[i],
                &cluster,
            );
            nodes.push(node);
        }
        NatsCluster { nodes }
    }

    /// Polls all nodes: every node must answer `$JS.API.INFO`, then a replicated stream must be
    /// creatable. Returns the index of a node that exited, or the last error on timeout.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), (usize, NotReady)> {
        let urls = self.url_list();
        let replicas = self.nodes.len().min(3);
        let mut ready = vec![false; self.nodes.len()];
        let mut last_error = "no probe finished yet".to_owned();
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                match node.exited() {
                    Some(Ok(status)) => return Err((i, NotReady::Exited(status))),
                    Some(Err(e)) => return Err((i, NotReady::TimedOut(e))),
                    None => {}
                }
            }
            if Instant::now() >= deadline {
                return Err((0, NotReady::TimedOut(last_error)));
            }
            for (i, url) in urls.iter().enumerate() {
                if !ready[i] {
                    match js_info_ok(url).await {
                        Ok(()) => ready[i] = true,
                        Err(e) => last_error = e,
                    }
                }
            }
            if ready.iter().all(|r| *r) {
                match replicated_stream_ok(&urls, replicas).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = e,
                }
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Client URLs of all nodes, comma separated (`nats://127.0.0.1:P1,nats://127.0.0.1:P2,...`),
    /// e.g. for a `--nats-url` style option.
    ///
    /// Note: `async_nats::connect` does not split a single string on commas; pass
    /// [`url_list`](Self::url_list) (or `urls().split(',').collect::<Vec<_>>()`) to it.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Client URLs of all nodes, one per node, suitable for `async_nats::connect`.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Index into [`nodes`](Self::nodes) of the node with this server name (`n1` is 0).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// A client that knows all nodes (and fails over between them).
    ///
    /// # Panics
    ///
    /// When no node accepts the connection.
    pub async fn client(&self) -> async_nats::Client {
        match async_nats::connect(self.url_list()).await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot connect to the nats cluster {}: {e}{}",
                self.urls(),
                self.logs()
            ),
        }
    }

    /// Log tails of all nodes, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let _ = write!(
                out,
                "\n--- log of {} ({}):\n{}",
                node.name,
                node.log.display(),
                node.log_tail(LOG_TAIL_LINES)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_explains_how_to_install() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let tools = dir.path().join("no/such/nats-server");
        let err = find_bin(
            Some(dir.path().join("also-missing").into_os_string()),
            &tools,
            Some(OsString::new()),
        )
        .err()
        .unwrap_or_else(|| panic!("lookup must fail"));
        assert!(err.contains("./scripts/install-nats-server.sh"), "{err}");
        assert!(err.contains("$NATS_SERVER_BIN"), "{err}");
        assert!(err.contains(&tools.display().to_string()), "{err}");
        assert!(
            err.starts_with("nats-server not found (looked in "),
            "{err}"
        );

        let none = find_bin(None, &tools, None);
        assert!(none.is_err());
    }

    fn fake_binary(path: &Path, mode: u32) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        std::fs::write(path, "#!/bin/sh\n").unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod: {e}"));
    }

    #[test]
    fn lookup_order_env_then_tools_then_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let env_bin = dir.path().join("env/nats-server");
        let tools_bin = dir.path().join("tools/nats-server");
        let path_dir = dir.path().join("path");
        let path_bin = path_dir.join("nats-server");
        fake_binary(&env_bin, 0o755);
        fake_binary(&tools_bin, 0o755);
        fake_binary(&path_bin, 0o755);
        let path_var = std::env::join_paths([dir.path().join("empty"), path_dir.clone()])
            .unwrap_or_else(|e| panic!("{e}"));

        let found = find_bin(
            Some(env_bin.clone().into()),
            &tools_bin,
            Some(path_var.clone()),
        );
        assert_eq!(found, Ok(env_bin));

        let missing_env = dir.path().join("nope").into_os_string();
        let found = find_bin(
            Some(missing_env.clone()),
            &tools_bin,
            Some(path_var.clone()),
        );
        assert_eq!(found, Ok(tools_bin));

        let no_tools = dir.path().join("no-tools/nats-server");
        let found = find_bin(Some(OsString::new()), &no_tools, Some(path_var.clone()));
        assert_eq!(found, Ok(path_bin.clone()));

        // A non-executable file on PATH does not count.
        fake_binary(&path_bin, 0o644);
        assert!(find_bin(None, &no_tools, Some(path_var)).is_err());
    }

    #[test]
    fn pinned_path_is_under_the_workspace_root() {
        let pinned = pinned_bin_path();
        assert!(pinned.ends_with(".tools/nats-server/bin/nats-server"));
        let root = pinned
            .ancestors()
            .nth(4)
            .unwrap_or_else(|| panic!("no workspace root in {}", pinned.display()));
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(
            root.join("tests/Cargo.toml").is_file(),
            "{}",
            root.display()
        );
    }
}
