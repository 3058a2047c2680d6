//! Tests of the nats-server test helper itself, against real servers.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use jetcron_tests::{NatsCluster, NatsServer, nats_server_bin};
use tokio::time::{Instant, sleep, timeout};

/// Retries `attempt` until it returns `Ok` or `limit` has passed; panics with the last error.
async fn retry<T, E, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let last = match timeout(Duration::from_secs(10), attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "attempt timed out after 10s".to_owned(),
        };
        if Instant::now() >= deadline {
            panic!("{what}: still failing after {limit:?} ({tries} tries): {last}");
        }
        sleep(Duration::from_millis(250)).await;
    }
}

async fn create_stream(js: &jetstream::Context, name: &str, subject: &str, replicas: usize) {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        num_replicas: replicas,
        ..Default::default()
    };
    retry(
        &format!("create stream {name}"),
        Duration::from_secs(30),
        || js.get_or_create_stream(config.clone()),
    )
    .await;
}

async fn publish(js: &jetstream::Context, subject: &str, payload: &'static str) -> u64 {
    let ack = retry(
        &format!("publish to {subject}"),
        Duration::from_secs(45),
        || async {
            let ack = js
                .publish(subject.to_owned(), Bytes::from_static(payload.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        },
    )
    .await;
    ack.sequence
}

async fn read(js: &jetstream::Context, stream_name: &str, sequence: u64) -> Bytes {
    retry(
        &format!("read {stream_name} #{sequence}"),
        Duration::from_secs(45),
        || async {
            let stream = js
                .get_stream(stream_name)
                .await
                .map_err(|e| e.to_string())?;
            let message = stream
                .get_raw_message(sequence)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(message.payload)
        },
    )
    .await
}

#[test]
fn binary_is_found() {
    let bin = nats_server_bin();
    assert!(bin.is_file(), "{}", bin.display());
}

#[tokio::test]
async fn start_connect_and_use_key_value() {
    let server = NatsServer::start().await;
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.store_dir().is_dir());

    let client = server.client().await;
    assert_eq!(
        client.server_info().port,
        server.port(),
        "connected to a different server"
    );
    let js = jetstream::new(client);
    let kv = js
        .create_key_value(kv::Config {
            bucket: "helper_kv".to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create bucket: {e}\n{}", server.log_tail(40)));
    kv.put("greeting", Bytes::from_static(b"hello"))
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    let value = kv
        .get("greeting")
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(value, Some(Bytes::from_static(b"hello")));
    assert_eq!(
        kv.get("missing")
            .await
            .unwrap_or_else(|e| panic!("get: {e}")),
        None
    );
}

#[tokio::test]
async fn stop_and_restart_keeps_data_port_and_reconnects_clients() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    let store = server.store_dir().to_path_buf();
    let pid_before = server.pid();

    let client = server.client().await;
    let js = jetstream::new(client.clone());
    create_stream(&js, "PERSIST", "persist.>", 1).await;
    let sequence = publish(&js, "persist.one", "kept across restart").await;

    server.stop().await;
    assert!(!server.is_running());
    assert!(store.is_dir(), "stop must keep the store");
    // While the server is down, nothing answers (async-nats buffers the request until its
    // request timeout, 10 s by default, so only wait briefly here).
    let down = timeout(Duration::from_secs(2), js.get_stream("PERSIST")).await;
    assert!(
        !matches!(down, Ok(Ok(_))),
        "stream info answered while down"
    );

    server.restart().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart must reuse the port");
    assert_eq!(server.store_dir(), store, "restart must reuse the store");
    assert_ne!(server.pid(), pid_before, "restart must start a new process");

    // The client created before the stop reconnects by itself.
    let payload = read(&js, "PERSIST", sequence).await;
    assert_eq!(payload, Bytes::from_static(b"kept across restart"));
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    let next = publish(&js, "persist.two", "after restart").await;
    assert_eq!(next, sequence + 1);
}

#[tokio::test]
async fn kill_and_restart_keeps_data() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    {
        let js = jetstream::new(server.client().await);
        create_stream(&js, "CRASH", "crash.>", 1).await;
        let sequence = publish(&js, "crash.one", "survives a crash").await;
        assert_eq!(sequence, 1);
        // JetStream file store syncs on its own schedule; the write itself is done
        // before the ack, and that is what survives SIGKILL (page cache stays).
    }

    server.kill().await;
    assert!(!server.is_running());
    server.restart().await;
    assert_eq!(server.port(), port);

    let js = jetstream::new(server.client().await);
    let payload = read(&js, "CRASH", 1).await;
    assert_eq!(payload, Bytes::from_static(b"survives a crash"));

    // A second kill/restart cycle works as well.
    server.kill().await;
    server.restart().await;
    let js = jetstream::new(server.client().await);
    assert_eq!(
        read(&js, "CRASH", 1).await,
        Bytes::from_static(b"survives a crash")
    );
}

#[tokio::test]
async fn restart_of_a_running_server_stops_it_first() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    let pid = server.pid();
    server.restart().await;
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    let client = server.client().await;
    client
        .flush()
        .await
        .unwrap_or_else(|e| panic!("flush: {e}"));
}

#[tokio::test]
async fn dropping_the_server_kills_the_process_and_removes_the_store() {
    let server = NatsServer::start().await;
    let pid = server
        .pid()
        .unwrap_or_else(|| panic!("a started server has a pid"));
    let dir = server.store_dir().to_path_buf();
    let port = server.port();
    drop(server);
    assert!(!dir.exists(), "store dir must be removed on drop");
    // The process is gone (reaped): /proc/<pid> no longer exists, or belongs to something else.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("nats-server"),
        "nats-server pid {pid} still alive after drop"
    );
    // And nobody listens on its port any more.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepting connections after drop"
    );
}

#[tokio::test]
async fn cluster_survives_losing_the_stream_leader() {
    let mut cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.nodes.len(), 3);
    let names: Vec<&str> = cluster.nodes.iter().map(NatsServer::name).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3);
    for node in &cluster.nodes {
        assert!(urls.contains(&node.url()), "{urls} lacks {}", node.url());
    }

    // `urls()` split on commas is what async_nats::connect wants.
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap_or_else(|e| panic!("connect to {urls}: {e}{}", cluster.logs()));
    let js = jetstream::new(client);
    create_stream(&js, "REPLICATED", "replicated.>", 3).await;
    let first = publish(&js, "replicated.a", "before failover").await;
    assert_eq!(
        read(&js, "REPLICATED", first).await,
        Bytes::from_static(b"before failover")
    );

    let leader = retry("stream leader", Duration::from_secs(30), || async {
        let mut stream = js
            .get_stream("REPLICATED")
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        let cluster_info = info.cluster.clone().ok_or("no cluster info")?;
        let current = cluster_info.replicas.iter().filter(|p| p.current).count();
        match cluster_info.leader {
            Some(leader) if current == 2 => Ok(leader),
            Some(_) => Err(format!("{current} current followers, waiting for 2")),
            None => Err("no leader yet".to_owned()),
        }
    })
    .await;
    let index = cluster
        .index_of(&leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of our nodes"));

    cluster.nodes[index].kill().await;
    assert!(!cluster.nodes[index].is_running());

    // The remaining two nodes still have quorum: publishing works again after the election.
    let second = publish(&js, "replicated.b", "after failover").await;
    assert_eq!(second, first + 1);
    assert_eq!(
        read(&js, "REPLICATED", first).await,
        Bytes::from_static(b"before failover")
    );
    assert_eq!(
        read(&js, "REPLICATED", second).await,
        Bytes::from_static(b"after failover")
    );

    let new_leader = retry("new stream leader", Duration::from_secs(30), || async {
        let mut stream = js
            .get_stream("REPLICATED")
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        info.cluster
            .clone()
            .and_then(|c| c.leader)
            .ok_or_else(|| "no leader".to_owned())
    })
    .await;
    assert_ne!(new_leader, leader);

    // The killed node comes back on its port and catches up.
    cluster.nodes[index].restart().await;
    let node_client = cluster.nodes[index].client().await;
    assert_eq!(node_client.server_info().server_name, leader);
}
