//! moto's server (SQS and SNS) for the tests: the shared one that `scripts/moto.sh start`
//! runs on 127.0.0.1:4577, and private ones on ports of their own that a test may stop and
//! start again (moto keeps its state in memory: a restarted one has no queues).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The endpoint of the shared moto server (`SIGNALBUS_TEST_MOTO_URL` overrides it).
pub fn endpoint() -> String {
    std::env::var("SIGNALBUS_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:4577".into())
}

/// The `moto_server` that `scripts/moto.sh install` put in its virtual environment.
pub fn binary() -> PathBuf {
    let venv = std::env::var_os("SIGNALBUS_MOTO_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/signalbus/moto"),
        PathBuf::from,
    );
    let bin = venv.join("bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: run `bash scripts/moto.sh install` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A private moto server; killed when dropped.
pub struct PrivateMoto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateMoto {
    /// Start one on `port` and wait until it listens (at most 30 s).
    pub async fn start(port: u16) -> Self {
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        if !crate::process::wait_for_port(port, Duration::from_secs(30)).await {
            panic!("private moto_server did not start on port {port}");
        }
        PrivateMoto { child, port }
    }

    /// Its endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL); returns its port, to start it again.
    pub fn stop(mut self) -> u16 {
        self.kill();
        self.port
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        self.kill();
    }
}
