#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The connection options every binary takes, against nats-servers that
//! demand them: user and password, a token, an NKey seed file, and mutual
//! TLS (the server verifies the client's certificate). Each one connects
//! with the right credentials, is refused without them, and a scheduler
//! started with them takes the lease and answers its API.

use std::path::Path;

use jetcron_shared::Names;
use jetcron_shared::connect::{ConnectArgs, ConnectError, Patience};
use jetcron_tests::NatsServer;
use jetcron_tests::harness::{self, Scheduler};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

async fn connect(args: &ConnectArgs) -> Result<async_nats::Client, ConnectError> {
    args.connect("jetcron-test", Patience::FailFast).await
}

fn args(server: &NatsServer) -> ConnectArgs {
    ConnectArgs {
        nats_url: server.url(),
        ..ConnectArgs::default()
    }
}

/// Connects with `good`, then runs a scheduler with it: it must take the
/// lease and answer `status`.
async fn works(good: ConnectArgs) {
    let client = connect(&good).await.expect("connect with the credentials");
    let scheduler = Scheduler::start_with(jetcron_scheduler::SchedulerConfig {
        connect: good.clone(),
        ..harness::scheduler_config(&good.nats_url, "s1")
    });
    let api = harness::api(&client, &Names::default()).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(status) = api.status().await
            && status.leader.is_some_and(|l| l.holder == "s1")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    scheduler.stop().await;
}

/// Asserts that the connection was refused, for `why`.
fn refused(e: ConnectError, why: &str) {
    let text = e.to_string();
    assert!(
        text.starts_with("cannot connect to NATS at") && text.contains(why),
        "{text}"
    );
}

#[tokio::test]
async fn user_and_password_and_token() {
    let server = NatsServer::start_with_config(
        "authorization { users = [ { user: \"jetcron\", password: \"s3cret\" } ] }\n",
    )
    .await;
    let good = ConnectArgs {
        user: Some("jetcron".into()),
        password: Some("s3cret".into()),
        ..args(&server)
    };
    refused(
        connect(&args(&server)).await.unwrap_err(),
        "authorization violation",
    );
    let wrong = ConnectArgs {
        password: Some("guess".into()),
        ..good.clone()
    };
    refused(
        connect(&wrong).await.unwrap_err(),
        "authorization violation",
    );
    let half = ConnectArgs {
        password: None,
        ..good.clone()
    };
    assert_eq!(
        connect(&half).await.unwrap_err().to_string(),
        "--user and --password go together"
    );
    works(good).await;

    let server = NatsServer::start_with_config("authorization { token: \"t0ken\" }\n").await;
    refused(
        connect(&args(&server)).await.unwrap_err(),
        "authorization violation",
    );
    works(ConnectArgs {
        token: Some("t0ken".into()),
        ..args(&server)
    })
    .await;
}

#[tokio::test]
async fn an_nkey_seed_file_signs_in_its_user() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        user.public_key()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    refused(
        connect(&args(&server)).await.unwrap_err(),
        "authorization violation",
    );
    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    refused(
        connect(&ConnectArgs {
            nkey: Some(stranger),
            ..args(&server)
        })
        .await
        .unwrap_err(),
        "authorization violation",
    );
    let missing = dir.path().join("missing.nk");
    let e = connect(&ConnectArgs {
        nkey: Some(missing.clone()),
        ..args(&server)
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read NKey seed file {}", missing.display())),
        "{e}"
    );
    works(ConnectArgs {
        nkey: Some(seed),
        ..args(&server)
    })
    .await;
}

/// Writes `cert` and `key` as PEM files named `<name>.pem`, `<name>.key`.
fn write_pair(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) {
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn mutual_tls_wants_a_client_certificate_from_the_authority() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        ),
        ("client", vec!["jetcron-scheduler".to_string()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        write_pair(d, name, &cert, &key);
    }
    let path = |f: &str| d.join(f).display().to_string();
    let server = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem")
    ))
    .await;
    let tls = ConnectArgs {
        tls_ca: Some(d.join("ca.pem")),
        ..args(&server)
    };
    // The server is verified, but the client shows no certificate.
    refused(connect(&tls).await.unwrap_err(), "CertificateRequired");
    let half = ConnectArgs {
        tls_cert: Some(d.join("client.pem")),
        ..tls.clone()
    };
    assert_eq!(
        connect(&half).await.unwrap_err().to_string(),
        "--tls-cert and --tls-key go together"
    );
    works(ConnectArgs {
        tls_cert: Some(d.join("client.pem")),
        tls_key: Some(d.join("client.key")),
        ..tls
    })
    .await;
}
