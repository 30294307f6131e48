//! The workload's processes, each in a slot that restarts it after it dies (killed by the
//! harness, crashed at a fail point, or exited on an error), until the slot is stopped.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a slot is asked to do.
#[derive(Debug)]
enum Control {
    /// SIGKILL the process now (it is started again).
    Kill,
    /// SIGTERM it and start no other.
    Stop,
}

/// A process slot: a command line, started again after every death.
pub struct Slot {
    control: mpsc::UnboundedSender<Control>,
    /// Started incarnations.
    pub starts: Arc<AtomicU32>,
    /// The running incarnation's process id (0 while none runs): what the soak samples.
    pub pid: Arc<AtomicU32>,
    done: watch::Receiver<bool>,
}

/// Builds the command line of an incarnation (its number given), e.g. with a fail point.
pub type Command = Box<dyn FnMut(u32) -> tokio::process::Command + Send>;

impl Slot {
    pub fn start(name: String, mut command: Command) -> Slot {
        let (control, mut rx) = mpsc::unbounded_channel();
        let starts = Arc::new(AtomicU32::new(0));
        let pid = Arc::new(AtomicU32::new(0));
        let (done_tx, done) = watch::channel(false);
        let counter = starts.clone();
        let running = pid.clone();
        let label = name.clone();
        tokio::spawn(async move {
            loop {
                // A kill asked for while no process ran is for that one, not the next.
                loop {
                    match rx.try_recv() {
                        Ok(Control::Kill) => continue,
                        Ok(Control::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => {
                            let _ = done_tx.send(true);
                            return;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    }
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let mut child = match command(n).kill_on_drop(true).spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("chaos: cannot start {label}: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                running.store(child.id().unwrap_or(0), Ordering::Relaxed);
                let mut stopping = false;
                let status = loop {
                    tokio::select! {
                        status = child.wait() => break status,
                        ctl = rx.recv() => match ctl {
                            Some(Control::Kill) => { let _ = child.start_kill(); }
                            Some(Control::Stop) | None => {
                                stopping = true;
                                terminate(&child);
                                match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                                    Ok(status) => break status,
                                    Err(_) => { let _ = child.start_kill(); }
                                }
                            }
                        },
                    }
                };
                running.store(0, Ordering::Relaxed);
                if let Ok(status) = status
                    && !stopping
                    && status.signal().is_none()
                    && !status.success()
                {
                    // An error exit (a consumer that lost its broker, say): logged, restarted.
                    tracing::debug!(slot = %label, ?status, "exited");
                }
                if stopping {
                    let _ = done_tx.send(true);
                    return;
                }
                // Restarted after a moment, as a process manager would.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Slot {
            control,
            starts,
            pid,
            done,
        }
    }

    /// SIGKILL the current process.
    pub fn kill(&self) {
        let _ = self.control.send(Control::Kill);
    }

    /// SIGTERM the current process and wait until it has ended; nothing is started again.
    pub async fn stop(&self) {
        let _ = self.control.send(Control::Stop);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}
