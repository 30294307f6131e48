//! RabbitMQ through `rabbitmqctl` (the shared broker runs on this machine).

use std::process::{Command, Stdio};

/// Close the connection whose client properties contain `name` (a test's own, unique app
/// id) from the server side; never the other tests' connections.
pub fn close_connection_named(name: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl is needed to close a connection from the server side");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{listing}"))
        .to_owned();
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "signalbus test closes it"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}
