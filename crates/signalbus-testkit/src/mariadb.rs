//! A private MariaDB server (`mariadb-install-db` + `mariadbd`) on a port and data directory
//! of its own, that a test may restart or crash; the shared server on 3306 is never touched.
//! Its `root` user has no password on 127.0.0.1, as the shared one's.

use crate::postgres::{check, is_root};
use crate::process::stop_child;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private server; killed when dropped.
pub struct PrivateMariadb {
    child: Option<Child>,
    /// Its directory: `data/` and its error log.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateMariadb {
    /// Create a server in `dir` (its data directory must not exist yet) and start it on
    /// `port`.
    pub fn start(dir: &Path, port: u16) -> std::io::Result<PrivateMariadb> {
        std::fs::create_dir_all(dir)?;
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdout(Stdio::null());
        // mariadbd refuses to run as root unless told so, and a test may run as root (CI
        // does); as another user the install script would chown to root, and fail.
        if is_root() {
            install.arg("--user=root");
        }
        check(
            &mut install,
            "mariadb-install-db (apt-get install mariadb-server)",
        )?;
        let mut server = PrivateMariadb {
            child: None,
            dir: dir.to_owned(),
            port,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut server = Command::new("/usr/sbin/mariadbd");
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            // In /tmp, not in the data directory: a Unix socket's path has at most 107 bytes,
            // and a test's directory may be deep. Clients use TCP; the port keeps it unique.
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--port={}", self.port));
        if is_root() {
            server.arg("--user=root");
        }
        let child = server
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                // Small: a test server beside the shared one on a 2-core machine.
                "--innodb-buffer-pool-size=64M",
                "--max-connections=500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start /usr/sbin/mariadbd (apt-get install mariadb-server): {e}"
                ))
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/signalbus-mariadb-{}.sock", self.port))
    }

    /// The URL of `database` on 127.0.0.1:`port` (this server's port, or a proxy's).
    pub fn url(&self, port: u16, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{port}/{database}")
    }

    /// Stop it: SIGTERM and a clean shutdown (up to 30 s), or SIGKILL (crash recovery at the
    /// next start).
    pub fn stop(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, graceful, Duration::from_secs(30));
        }
    }

    /// Start it again after [`PrivateMariadb::stop`], with the data it kept; a no-op when it
    /// runs.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    /// Stop it gracefully and start it again.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop(true);
        self.start_again()
    }

    /// Kill it (SIGKILL) and start it again: crash recovery, as after a host failure.
    pub fn crash_restart(&mut self) -> std::io::Result<()> {
        self.stop(false);
        self.start_again()
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        self.stop(false);
        // A killed server leaves its socket file behind.
        let _ = std::fs::remove_file(self.socket());
    }
}
