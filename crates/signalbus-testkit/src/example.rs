//! The inbox example consumers as processes, for the crash tests next to them: start one,
//! wait until it says how far it got, kill it, stop it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
/// (`INBOX_EXAMPLE_PAUSE_BEFORE_ACK`); return once it printed `{what} {id}`. Fails, rather
/// than waits, when it prints nothing for 60 s or applies a message it should skip.
pub fn start_until(name: &str, args: &[&str], pause: bool, what: &str, id: &str) -> Child {
    start_until_with(name, args, &[], pause, what, id)
}

/// [`start_until`] with these environment variables (credentials, say).
pub fn start_until_with(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    pause: bool,
    what: &str,
    id: &str,
) -> Child {
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if pause {
        cmd.env("INBOX_EXAMPLE_PAUSE_BEFORE_ACK", "1");
    }
    let mut child = cmd.spawn().expect("the example starts");
    // Read on a thread of its own (so the pipe never fills), handed over with a time limit.
    let stdout = child.stdout.take().expect("its stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let expected = format!("{what} {id}");
    let applied = format!("applied {id}");
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not print `{expected}` ({e})");
            }
        };
        if line == expected {
            return child;
        }
        if what == "duplicate" && line == applied {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} applied {id} again instead of skipping it");
        }
    }
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
