//! A private `redis-server` on a free port and a directory of its own, that a test may stop
//! and start again (the shared server on 6379 is never stopped).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private redis-server process, appending every write to its AOF (`appendfsync always`),
/// so that a restart on the same directory keeps what it acknowledged; killed when dropped.
pub struct PrivateRedis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
}

impl PrivateRedis {
    /// Start one on `port`, keeping its data in `dir`.
    pub fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        PrivateRedis {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Wait until it accepts connections (at most 5 s).
    pub async fn wait_ready(&self) {
        if !crate::process::wait_for_port(self.port, Duration::from_secs(5)).await {
            panic!("private redis-server did not start on port {}", self.port);
        }
    }

    /// Stop it (SIGKILL); returns its port and directory, to start it again.
    pub fn stop(mut self) -> (u16, PathBuf) {
        self.kill();
        (self.port, std::mem::take(&mut self.dir))
    }

    /// Stop it gracefully (SIGTERM: it writes what it holds and exits), SIGKILL after 10 s;
    /// returns its port and directory, to start it again.
    pub fn terminate(mut self) -> (u16, PathBuf) {
        crate::process::stop_child(&mut self.child, true, Duration::from_secs(10));
        (self.port, std::mem::take(&mut self.dir))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
