//! A private PostgreSQL cluster (`initdb` + `pg_ctl`) on a port and data directory of its
//! own, that a test may restart or crash; the shared server on 5432 is never touched.
//! PostgreSQL refuses to run as root: when the test runs as root, the cluster runs as the
//! `postgres` user (`runuser`), which owns its data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A private cluster; stopped (immediately) when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    /// Its data directory (also its socket directory and log).
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// Server settings given at every start (`name=value`).
    settings: Vec<String>,
}

/// `pg_ctl`'s arguments for a clean restart: sessions ended, a checkpoint written.
const RESTART: [&str; 4] = ["restart", "-w", "-m", "fast"];

/// The newest installed PostgreSQL's binaries (Debian keeps them out of PATH).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        // Elsewhere, initdb and pg_ctl on PATH.
        PathBuf::new()
    })
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Create a cluster in `dir` (which must not exist yet) and start it on `port`.
    pub fn start(dir: &Path, port: u16) -> std::io::Result<PrivatePostgres> {
        Self::start_with(dir, port, &[])
    }

    /// [`PrivatePostgres::start`] with server settings (`name=value`, e.g.
    /// `wal_level=logical`, which only a start can change).
    pub fn start_with(
        dir: &Path,
        port: u16,
        settings: &[&str],
    ) -> std::io::Result<PrivatePostgres> {
        let pg = PrivatePostgres {
            bin: bin_dir(),
            dir: dir.to_owned(),
            port,
            as_postgres: is_root(),
            settings: settings.iter().map(|s| format!(" -c {s}")).collect(),
        };
        std::fs::create_dir_all(dir)?;
        if pg.as_postgres {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir),
                "chown the data directory to postgres",
            )?;
        }
        let data = dir.join("data");
        check(
            pg.command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
            "initdb (the postgresql package)",
        )?;
        pg.pg_ctl(&["start", "-w"])?;
        Ok(pg)
    }

    /// The URL of `database` on this cluster (through `port`, e.g. a proxy's).
    pub fn url(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }

    /// `pg_ctl restart -m fast`: sessions are ended, a checkpoint is written.
    pub fn restart(&self) -> std::io::Result<()> {
        self.pg_ctl(&RESTART)
    }

    /// Crash and come back, as after a failover: `pg_ctl stop -m immediate` (no checkpoint,
    /// crash recovery at start), then start.
    pub fn crash_restart(&self) -> std::io::Result<()> {
        self.pg_ctl(&["stop", "-w", "-m", "immediate"])?;
        self.pg_ctl(&["start", "-w"])
    }

    /// [`PrivatePostgres::restart`] without blocking the caller's thread (its runtime's
    /// other tasks, and the futures the caller polls beside it, go on meanwhile).
    pub async fn restart_async(&self) -> std::io::Result<()> {
        let out = tokio::process::Command::from(self.pg_ctl_command(&RESTART))
            .output()
            .await
            .map_err(|e| std::io::Error::other(format!("pg_ctl restart: cannot run it: {e}")))?;
        checked(out, "pg_ctl restart")
    }

    fn pg_ctl(&self, args: &[&str]) -> std::io::Result<()> {
        check(
            &mut self.pg_ctl_command(args),
            &format!("pg_ctl {}", args[0]),
        )
    }

    fn pg_ctl_command(&self, args: &[&str]) -> Command {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=400{}",
            self.port,
            self.dir.display(),
            self.settings.concat()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &options, "-t", "60"])
            .args(args);
        cmd
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
    }
}

/// Run `cmd`; an error that names `what` and carries its stderr when it fails.
pub(crate) fn check(cmd: &mut Command, what: &str) -> std::io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| std::io::Error::other(format!("{what}: cannot run it: {e}")))?;
    checked(out, what)
}

/// A command's outcome as [`check`] gives it.
fn checked(out: std::process::Output, what: &str) -> std::io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
