//! A private `nats-server` with JetStream on a free port and a directory of its own, that a
//! test may stop and start again (the shared server on 4222 is never stopped).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private nats-server process; killed when dropped.
pub struct PrivateServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its JetStream store.
    pub dir: PathBuf,
}

impl PrivateServer {
    /// Start one on `port`, storing JetStream data in `dir`.
    pub fn start(port: u16, dir: &Path) -> Self {
        Self::start_with(port, dir, &[])
    }

    /// With extra `nats-server` arguments, e.g. `--user`/`--pass`.
    pub fn start_with(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (/usr/sbin/nats-server)");
        PrivateServer {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// Wait until it accepts connections (at most 5 s).
    pub async fn wait_ready(&self) {
        if !crate::process::wait_for_port(self.port, Duration::from_secs(5)).await {
            panic!("private nats-server did not start on port {}", self.port);
        }
    }

    /// Stop it (SIGKILL); returns its port and directory, to start it again.
    pub fn stop(mut self) -> (u16, PathBuf) {
        self.kill();
        (self.port, std::mem::take(&mut self.dir))
    }

    /// Stop it gracefully (SIGTERM: JetStream flushes its store), SIGKILL after 10 s;
    /// returns its port and directory, to start it again.
    pub fn terminate(mut self) -> (u16, PathBuf) {
        crate::process::stop_child(&mut self.child, true, Duration::from_secs(10));
        (self.port, std::mem::take(&mut self.dir))
    }

    /// Freeze it (SIGSTOP): connections stay open and nothing answers, as with a hung
    /// server or a network that drops everything.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Let a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("the kill command (Debian package procps)");
        assert!(status.success(), "kill -{name} failed");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `nats-server` arguments of node `n` of a JetStream cluster on loopback whose nodes
/// listen for routes on `cluster_ports` (a full mesh), for [`PrivateServer::start_with`].
/// `advertise`: the `host:port` clients are told to reach this node at (a proxy in front of
/// it), instead of its own port.
pub fn cluster_args(n: usize, cluster_ports: &[u16], advertise: Option<&str>) -> Vec<String> {
    let route = |p: u16| format!("nats://127.0.0.1:{p}");
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(m, _)| *m != n)
        .map(|(_, p)| route(*p))
        .collect();
    let mut args = vec![
        "--server_name".to_owned(),
        format!("sbnode{n}"),
        "--cluster_name".to_owned(),
        "sbcluster".to_owned(),
        "--cluster".to_owned(),
        route(cluster_ports[n]),
        "--routes".to_owned(),
        routes.join(","),
    ];
    if let Some(address) = advertise {
        args.extend(["--client_advertise".to_owned(), address.to_owned()]);
    }
    args
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    // Never the same port twice in one process: the tests of a binary run at once, and the
    // system may hand a port just let go to the next test, whose server then cannot bind it
    // (and the first test talks to the other's server).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}
