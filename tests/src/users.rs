//! The least-privilege users of `deploy/jetcron-users.conf`, for tests that
//! start nats-server with that very file.

use jetcron_shared::connect::ConnectArgs;

use crate::NatsServer;

/// The file's four users.
pub const ROLES: [&str; 4] = ["scheduler", "worker", "operator", "viewer"];

/// The committed users file, each password variable replaced by a
/// literal `pw-<role>` (a test cannot set nats-server's environment).
pub fn users_conf() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/jetcron-users.conf");
    let mut text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the users file {path}: {e}"));
    for role in ROLES {
        let var = format!("${}", format!("JETCRON_{role}_PASSWORD").to_uppercase());
        assert!(text.contains(&var), "{var} not in the users file");
        text = text.replace(&var, &format!("\"pw-{role}\""));
    }
    text
}

/// Connection settings of `role` on `server`.
pub fn as_role(server: &NatsServer, role: &str) -> ConnectArgs {
    ConnectArgs {
        nats_url: server.url(),
        user: Some(role.into()),
        password: Some(format!("pw-{role}")),
        ..ConnectArgs::default()
    }
}
