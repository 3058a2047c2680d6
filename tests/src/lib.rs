//! Integration tests for jetcron, run against a real `nats-server` (no mocks).
//!
//! The tests in `tests/tests/` start their own JetStream servers through the helper in
//! [`server`]:
//!
//! - [`NatsServer`]: one standalone server with JetStream on a random `127.0.0.1` port and a
//!   private temporary store; it can be stopped, killed (crash) and restarted on the same port
//!   with the same store.
//! - [`NatsCluster`]: an n-node JetStream cluster on loopback (`n1`, `n2`, ...), for fail-over
//!   tests.
//!
//! The binary is found by [`nats_server_bin`]: `$NATS_SERVER_BIN`, then the pinned version in
//! `<workspace>/.tools/nats-server/bin/nats-server` (install it with
//! `./scripts/install-nats-server.sh`), then `nats-server` on `PATH`.
//!
//! - [`stack::Stack`]: a server, a scheduler and its API, with every result and event
//!   collected, for tests that run workers of their own.
//! - [`users`]: the least-privilege users file, for servers started with it.
//! - [`browser::Browser`]: a headless Chromium over WebDriver, for the web console.
//! - [`Proxy`]: a TCP proxy in front of a server that a test can pause (the client's writes
//!   wait in the socket buffers and all arrive on resume) or cut.
//!
//! Servers are killed and their stores removed when the handles are dropped, also when a test
//! panics, so no `nats-server` process outlives the test that started it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is a failed test

pub mod browser;
pub mod harness;
pub mod proxy;
pub mod server;
pub mod stack;
pub mod users;

pub use proxy::Proxy;
pub use server::{NatsCluster, NatsServer, nats_server_bin};
