//! The `signalbus` binary, run as a process against real databases: output, names, exit
//! codes, errors, `--repeat` with SIGTERM (commands.rs), parked signals (parked.rs), and
//! concurrent `flushmany` processes (processes.rs). Shared helpers here.

mod alerts;
mod commands;
mod console;
mod fleet;
mod operating;
mod parked;
mod processes;
mod relay;
mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_signalbus");

/// A scratch directory with a configuration file and a SQLite database.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("signalbus.toml"), config).unwrap();
        Scratch { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn sqlite_url(&self) -> String {
        format!("sqlite:{}", self.path("db.sqlite").display())
    }
    /// The SQLite database after `signalbus migrate` (asserted to succeed): its URL, and a
    /// pool on it for setting up and checking rows.
    pub async fn migrated_sqlite(&self) -> (String, sqlx::SqlitePool) {
        let url = self.sqlite_url();
        let out = self.run(&url, &["migrate"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let pool = sqlite_pool(&url).await;
        (url, pool)
    }
    pub fn bus(&self, name: &str) -> String {
        format!("file:{}", self.path(name).display())
    }
    /// `signalbus` with this directory's config and database and a clean environment.
    pub fn cmd(&self, db_url: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("DATABASE_URL")
            .env_remove("SIGNALBUS_BUS_URL")
            .env_remove("RUST_LOG")
            .env("SIGNALBUS_CONFIG", self.path("signalbus.toml"))
            .env("DATABASE_URL", db_url);
        cmd
    }
    pub fn run(&self, db_url: &str, args: &[&str]) -> Output {
        self.cmd(db_url).args(args).output().unwrap()
    }
}

/// Send `child` the signal `name` (`TERM`, `HUP`, ...) with kill(1).
pub fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The messages a `file:` bus received: (signal, body) per line.
pub fn received(path: &Path) -> Vec<(String, String)> {
    let Ok(content) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    content
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["signal"].as_str().unwrap().to_owned(),
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub const TWO_TYPES: &str = r#"
[[signal]]
name = "alpha"
table = "alpha_signal"
burst = 2

[[signal]]
name = "beta"
"#;

pub async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    sqlx::SqlitePool::connect_with(options.busy_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
}

/// Writes rows the way a service in another language would: plain INSERTs of the contract.
pub async fn insert_sqlite(pool: &sqlx::SqlitePool, table: &str, bodies: &[&str]) {
    for body in bodies {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, routing_key, headers, body) VALUES ('t', 'k', '{{\"h\":\"v\"}}', ?)"
        )))
        .bind(body.as_bytes())
        .execute(pool)
        .await
        .unwrap();
    }
}
