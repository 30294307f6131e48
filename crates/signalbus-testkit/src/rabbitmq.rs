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

/// A private RabbitMQ node (own node name, ports, data directory and configuration) that a
/// test may stop, kill and start again; the shared node on 5672 is never touched. It shares
/// the machine's epmd, as every node does.
pub struct PrivateNode {
    child: Option<std::process::Child>,
    /// Its AMQP port on 127.0.0.1.
    pub port: u16,
    dist_port: u16,
    /// Its configuration, data and logs.
    pub dir: std::path::PathBuf,
}

impl PrivateNode {
    /// Start a node on `port` with everything it keeps in `dir`; [`PrivateNode::wait_ready`]
    /// waits until it takes connections (a node boots in several seconds).
    pub fn start(dir: &std::path::Path, port: u16) -> std::io::Result<PrivateNode> {
        Self::start_in_cluster(dir, port, &[])
    }

    /// The Erlang node name of the private node on `port`.
    pub fn node_name(port: u16) -> String {
        format!("sbchaos{port}@localhost")
    }

    /// Start a node on `port` that joins the cluster of the private nodes on `peers` (their
    /// AMQP ports; classic peer discovery). A node joins the first peer that runs when it
    /// boots with no data of its own: start them one after the other, each once the one
    /// before takes connections, or several clusters may form. Restarted, a node rejoins
    /// its cluster from its data.
    pub fn start_in_cluster(
        dir: &std::path::Path,
        port: u16,
        peers: &[u16],
    ) -> std::io::Result<PrivateNode> {
        std::fs::create_dir_all(dir)?;
        let mut config = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\nlog.file.level = warning\n\
             log.console = false\n"
        );
        if !peers.is_empty() {
            config.push_str("cluster_formation.peer_discovery_backend = classic_config\n");
            for (n, peer) in peers.iter().enumerate() {
                config.push_str(&format!(
                    "cluster_formation.classic_config.nodes.{} = {}\n",
                    n + 1,
                    Self::node_name(*peer)
                ));
            }
        }
        std::fs::write(dir.join("rabbitmq.conf"), config)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        // Not the machine's rabbitmq-env.conf, which names the shared node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let mut node = PrivateNode {
            child: None,
            port,
            dist_port: crate::nats::free_port(),
            dir: dir.to_owned(),
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let dir = &self.dir;
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            // The Erlang VM replaces the script: this child is the node, to signal directly.
            .env("RUNNING_UNDER_SYSTEMD", "1")
            .env_remove("NOTIFY_SOCKET")
            .env("RABBITMQ_NODENAME", Self::node_name(self.port))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // Where a crashing node writes its dump (`MnesiaCore.*`, `erl_crash.dump`).
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start rabbitmq-server (the rabbitmq-server package): {e}"
                ))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait until it accepts connections (at most `limit`); `false` when it did not.
    pub async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        crate::process::wait_for_port(self.port, limit).await
    }

    /// Stop it: gracefully (SIGTERM, as `rabbitmqctl stop`) or as a crash (SIGKILL).
    pub fn stop(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            // A node flushes its queues on SIGTERM; give it time to.
            let grace = std::time::Duration::from_secs(30);
            crate::process::stop_child(&mut child, graceful, grace);
        }
    }

    /// Start it again, with the data it kept.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop(true);
        self.spawn()
    }

    /// Freeze it (SIGSTOP): to its clients and its peers a node behind a network that drops
    /// everything; or let it run again (SIGCONT). A no-op when it is stopped.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "STOP" } else { "CONT" };
            crate::process::signal(&child.id().to_string(), signal);
        }
    }

    /// Start it again after [`PrivateNode::stop`].
    pub fn start_again(&mut self) -> std::io::Result<()> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.stop(false);
    }
}
