//! A private PgBouncer (Debian package `pgbouncer`) in transaction pooling mode, on a port
//! and directory of its own, in front of the shared PostgreSQL server. Few server
//! connections and round-robin hand-out, so that consecutive transactions of one client
//! land on different server sessions: whatever relies on session state fails under it. After
//! a failed server login (the server restarting) it tries again after 1 s, not its default
//! 15 s.
//! PgBouncer refuses to run as root: then it runs as the `postgres` user (`runuser`).

use crate::postgres::check;
use std::path::PathBuf;
use std::process::Command;

/// A private PgBouncer; stopped when dropped.
pub struct PrivatePgBouncer {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

impl PrivatePgBouncer {
    /// Start PgBouncer on `port` in transaction mode, pooling at most `server_connections`
    /// server connections per database of the PostgreSQL server on 127.0.0.1:`upstream`
    /// (user `postgres`, trust).
    pub fn start(
        upstream: u16,
        port: u16,
        server_connections: u32,
    ) -> std::io::Result<PrivatePgBouncer> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n")?;
        std::fs::write(
            path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream} user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = transaction\ndefault_pool_size = {server_connections}\n\
                 min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 1000\n\
                 server_round_robin = 1\nserver_login_retry = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                users = path("users.txt").display(),
                log = path("pgbouncer.log").display(),
                pid = path("pgbouncer.pid").display(),
            ),
        )?;
        let as_postgres = crate::postgres::is_root();
        if as_postgres {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown PgBouncer's directory to postgres",
            )?;
        }
        let bouncer = PrivatePgBouncer {
            dir,
            port,
            as_postgres,
        };
        bouncer.launch()?;
        Ok(bouncer)
    }

    /// Start the daemon with this directory's configuration.
    fn launch(&self) -> std::io::Result<()> {
        // Debian installs it in /usr/sbin, which a user's PATH may not hold.
        let bin = if std::path::Path::new("/usr/sbin/pgbouncer").exists() {
            "/usr/sbin/pgbouncer"
        } else {
            "pgbouncer"
        };
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            Command::new(bin)
        };
        check(
            cmd.arg("-d").arg(self.dir.path().join("pgbouncer.ini")),
            "pgbouncer (install the Debian package pgbouncer: scripts/test-tools.sh)",
        )
    }

    /// Send `signal` (`KILL`, `TERM`, ...) to the daemon and wait until it is gone; after
    /// 10 s (PgBouncer 1.23 and later wait for their clients on SIGTERM) it is killed. Its
    /// clients' connections drop with it.
    pub fn stop_with(&self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
        for (signal, patience) in [(signal, 10), ("KILL", 10)] {
            crate::process::signal(&pid, signal);
            let began = std::time::Instant::now();
            while !gone() && began.elapsed() < std::time::Duration::from_secs(patience) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if gone() {
                // A killed daemon leaves its pid file, which would keep the next start from
                // running.
                let _ = std::fs::remove_file(self.dir.path().join("pgbouncer.pid"));
                return;
            }
        }
    }

    /// Start it again on the same port, after [`PrivatePgBouncer::stop_with`].
    pub fn start_again(&self) -> std::io::Result<()> {
        self.launch()
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    }

    /// The URL of `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Its log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.log")
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            crate::process::signal(&pid, "TERM");
        }
    }
}
