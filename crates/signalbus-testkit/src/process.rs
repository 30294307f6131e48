//! Starting and stopping the private servers' processes.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Send the signal `name` (`TERM`, `KILL`, `STOP`, ...) to process `pid` with the kill
/// command; whether it was delivered.
pub(crate) fn signal(pid: &str, name: &str) -> bool {
    Command::new("kill")
        .args([format!("-{name}"), pid.to_owned()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Stop `child`: with `graceful`, SIGTERM and up to `grace` for it to exit; SIGKILL then, or
/// at once without `graceful`.
pub(crate) fn stop_child(child: &mut Child, graceful: bool, grace: Duration) {
    if graceful {
        signal(&child.id().to_string(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Wait until something accepts connections on 127.0.0.1:`port`, at most `limit`; whether
/// it did.
pub async fn wait_for_port(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A child process killed (and reaped) when this is dropped: a test that fails before it
/// stops its children leaves none running, holding ports and database connections, for the
/// tests after it.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
