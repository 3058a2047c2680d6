#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! HTTP jobs against an HTTPS target: a TLS server on loopback whose
//! certificate an authority made here signed. A worker given that
//! authority with `--http-ca` (on top of the machine's roots) completes the
//! request; one without it fails the attempt at the handshake, saying why.
//! A CA file that cannot be read or holds no certificate stops the worker
//! at start, naming the file.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jetcron_shared::wire::RunStatus;
use jetcron_tests::harness::Worker;
use jetcron_tests::stack::{LIMIT, Stack};
use jetcron_worker::{WorkerConfig, WorkerError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A certificate authority's PEM, and a TLS server for `localhost` whose
/// certificate it signed. The server answers every request `200 hello over
/// tls` and counts them.
async fn tls_server() -> (String, u16, Arc<AtomicUsize>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate ends here.
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = "hello over tls";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (ca_cert.pem(), port, served)
}

#[tokio::test]
async fn an_https_target_signed_by_a_trusted_authority_is_reached_and_others_are_refused() {
    let env = Stack::start().await;
    let (ca_pem, port, served) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    env.put(json!({
        "id": "secure", "schedule": "@manual",
        "run": {"http": {"method": "GET", "url": format!("https://localhost:{port}/ok")}}
    }))
    .await;

    let trusting = Worker::start_with(WorkerConfig {
        http_ca: Some(ca_file.clone()),
        ..env.worker_config("trusting")
    });
    env.trigger("secure", None).await;
    let ok = env.results_of("secure", 1).await.remove(0);
    assert_eq!(
        (
            ok.status,
            ok.http_status,
            ok.output.as_str(),
            ok.worker.as_str()
        ),
        (
            RunStatus::Succeeded,
            Some(200),
            "hello over tls",
            "trusting"
        ),
        "{ok:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
    trusting.stop(LIMIT).await;

    // The machine's roots alone do not know this authority.
    let doubting = Worker::start_with(env.worker_config("doubting"));
    env.trigger("secure", None).await;
    let refused = env.results_of("secure", 2).await.remove(1);
    assert_eq!(
        (refused.status, refused.http_status, refused.worker.as_str()),
        (RunStatus::Failed, None, "doubting"),
        "{refused:?}"
    );
    let error = refused.error.clone().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1, "no request got through");
    doubting.stop(LIMIT).await;
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_stops_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    for (file, reason) in [
        (&missing, "cannot read it"),
        (&empty, "holds no PEM certificate"),
    ] {
        let config = WorkerConfig {
            http_ca: Some(file.clone()),
            ..WorkerConfig::default()
        };
        match jetcron_worker::Worker::builder(config).build() {
            Err(WorkerError::Config(e)) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("http_ca: {}: {reason}", file.display())),
                    "{text}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
