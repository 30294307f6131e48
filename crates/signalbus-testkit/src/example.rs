//! The inbox example consumers as processes, for the crash tests next to them: start one,
//! wait until it says how far it got, kill it, stop it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The example `name`, built by `cargo test --workspace` next to the test binaries.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps")
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace --all-features` (scripts/test.sh) or \
         `cargo build --workspace --all-features --examples`",
        bin.display()
    );
    bin
}

/// Start example `name` with `args`, waiting after its commits when `pause`
/// (`INBOX_EXAMPLE_PAUSE_BEFORE_ACK`); return once it printed `{what} {id}`.
pub fn start_until(name: &str, args: &[&str], pause: bool, what: &str, id: &str) -> Child {
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if pause {
        cmd.env("INBOX_EXAMPLE_PAUSE_BEFORE_ACK", "1");
    }
    let mut child = cmd.spawn().expect("the example starts");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    let expected = format!("{what} {id}");
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{name} ended before printing `{expected}`"))
            .expect("a line of its output");
        if line == expected {
            break;
        }
    }
    // Keep reading in the background so the pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    child
}

/// SIGKILL `child` (the crash between its commit and its ack).
pub fn kill(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("it ends");
}

/// SIGTERM `child`; it must exit cleanly.
pub fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("the kill command (Debian package procps)");
    assert!(status.success());
    assert!(
        child.wait().expect("it ends").success(),
        "SIGTERM stops it cleanly"
    );
}
