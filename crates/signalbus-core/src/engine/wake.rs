//! What wakes a relay: PostgreSQL notifications from the trigger `migrate` installs, with a
//! poll as the fallback; an adaptive poll on the other databases.

use super::context::Shared;
use crate::registry::TypeIdx;
use crate::storage::Backend;
use crate::storage::listen::Heard;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// The lanes of one relay, by table name, and whether notifications currently reach them.
pub(crate) struct Wakers {
    pub lanes: Vec<(String, Arc<Notify>)>,
    /// Set while a listening connection is up: lanes then poll only as a fallback.
    pub listening: AtomicBool,
}

impl Wakers {
    fn wake(&self, table: &str) {
        for (name, notify) in &self.lanes {
            if name == table {
                notify.notify_one();
            }
        }
    }

    fn wake_all(&self) {
        for (_, notify) in &self.lanes {
            notify.notify_one();
        }
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

/// Listen until `stop` fires, waking the lanes of the tables notified; reconnect after a
/// failure (waking every lane, since notifications may have been missed). Returns at once
/// when the database has no notifications.
pub(crate) async fn listen<DB: crate::storage::Backend>(
    pool: sqlx::Pool<DB>,
    bus: String,
    wakers: Arc<Wakers>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let mut listener = match DB::listener(&pool).await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                failures += 1;
                let wait = super::relay::failure_wait(failures);
                tracing::warn!(bus = %bus, error = %e, retry_in = ?wait, "cannot listen for new signals; polling meanwhile");
                if stopped_within(&mut stop, wait).await {
                    return;
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(bus = %bus, "listening for new signals again");
        }
        failures = 0;
        wakers.listening.store(true, Ordering::Relaxed);
        // Whatever was inserted while nobody listened.
        wakers.wake_all();
        loop {
            let heard = tokio::select! {
                heard = listener.next() => heard,
                _ = stop.changed() => return,
            };
            match heard {
                Ok(Heard::Table(table)) => wakers.wake(&table),
                Ok(Heard::Lost) => {
                    tracing::info!(bus = %bus, "the listening connection was lost; reconnecting");
                    wakers.wake_all();
                }
                Err(e) => {
                    tracing::warn!(bus = %bus, error = %e, "listening for new signals failed; reconnecting");
                    wakers.listening.store(false, Ordering::Relaxed);
                    wakers.wake_all();
                    break;
                }
            }
        }
    }
}

/// Sleep `wait`; true when `stop` fired first.
pub(crate) async fn stopped_within(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The idle locks of one relay's tables, on a connection of their own (PostgreSQL): a lane
/// that found nothing to send says so, and the table's insert trigger notifies only while a
/// relay holds its lock; a lane that wakes gives it up, so that busy writers skip NOTIFY and
/// its database-wide lock at commit.
pub(crate) struct IdleGate {
    commands: mpsc::UnboundedSender<GateCommand>,
}

enum GateCommand {
    /// A lane of this type is idle; the reply: whether a notification will wake it.
    Idle {
        idx: TypeIdx,
        reply: oneshot::Sender<bool>,
    },
    /// A lane of this type is busy again.
    Busy { idx: TypeIdx },
}

impl IdleGate {
    /// The gate of `types`, its task added to `tasks`; `None` when none of their tables has
    /// an idle lock (not PostgreSQL).
    pub fn start<DB: Backend>(
        shared: &Arc<Shared<DB>>,
        types: &[TypeIdx],
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Option<Arc<IdleGate>> {
        if !types
            .iter()
            .any(|&i| shared.registry().get(i).sql.has_idle_gate())
        {
            return None;
        }
        let (commands, rx) = mpsc::unbounded_channel();
        tasks.spawn(gate(shared.clone(), rx));
        Some(Arc::new(IdleGate { commands }))
    }

    /// This lane of type `idx` found nothing to send: take the table's idle lock (waiting for
    /// the writers that skipped notifying to commit). Whether a notification will come for new
    /// rows: this relay holds the lock, or another idle one does; `false` (the lane must poll)
    /// when neither could be made sure of.
    pub async fn idle(&self, idx: TypeIdx) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(GateCommand::Idle { idx, reply })
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// This lane of type `idx` is busy again.
    pub fn busy(&self, idx: TypeIdx) {
        let _ = self.commands.send(GateCommand::Busy { idx });
    }
}

/// The gate's task: counts the idle lanes per type; the first takes the lock, the last to
/// wake gives it up. Ends when every lane has ended (its connection, and so its locks, close).
async fn gate<DB: Backend>(
    shared: Arc<Shared<DB>>,
    mut commands: mpsc::UnboundedReceiver<GateCommand>,
) {
    let mut conn: Option<DB::Connection> = None;
    let mut idle: HashMap<TypeIdx, Idle> = HashMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            GateCommand::Idle { idx, reply } => {
                let state = idle.entry(idx).or_default();
                state.lanes += 1;
                if state.lanes == 1 {
                    (state.held, state.covered) = take(&shared, &mut conn, idx).await;
                }
                let _ = reply.send(state.covered);
            }
            GateCommand::Busy { idx } => {
                let Some(state) = idle.get_mut(&idx) else {
                    continue;
                };
                state.lanes = state.lanes.saturating_sub(1);
                if state.lanes > 0 || !std::mem::take(&mut state.held) {
                    continue;
                }
                let sql = &shared.registry().get(idx).sql;
                if let Some(c) = conn.as_mut()
                    && let Err(e) = sql.idle_unlock::<DB>(c).await
                {
                    tracing::warn!(bus = %shared.name(), error = %e, "relay: cannot give up an idle lock; its connection is closed");
                    // Its locks went with it.
                    conn = None;
                    idle.values_mut().for_each(|s| s.held = false);
                }
            }
        }
    }
}

/// The idle lanes of one type, and its lock.
#[derive(Default)]
struct Idle {
    lanes: usize,
    /// This relay holds the lock.
    held: bool,
    /// A notification will come: the lock is held here or by another idle relay.
    covered: bool,
}

/// Take type `idx`'s idle lock on the gate's connection (opened when needed): whether it was
/// taken, and whether a notification will come (taken, or held by another idle relay).
async fn take<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut Option<DB::Connection>,
    idx: TypeIdx,
) -> (bool, bool) {
    let sql = &shared.registry().get(idx).sql;
    if conn.is_none() {
        let opened = async {
            let mut c = shared.pool().acquire().await?.detach();
            sql.idle_gate_setup::<DB>(&mut c).await?;
            Ok::<_, crate::error::Error>(c)
        };
        match opened.await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                tracing::warn!(bus = %shared.name(), error = %e, "relay: cannot open the idle-lock connection; the lanes poll meanwhile");
                return (false, false);
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return (false, false);
    };
    match sql.idle_lock::<DB>(c).await {
        Ok(()) => (true, true),
        // A writer that skipped notifying is still running (a long transaction), or another
        // relay is idle and holds the lock: then its notifications come.
        Err(e) if e.database_code().as_deref() == Some("55P03") => {
            let elsewhere = sql.idle_held_elsewhere::<DB>(c).await.unwrap_or(false);
            (false, elsewhere)
        }
        Err(e) => {
            tracing::warn!(bus = %shared.name(), error = %e, "relay: cannot take an idle lock; the lanes poll meanwhile");
            *conn = None;
            (false, false)
        }
    }
}
