//! What wakes a relay: PostgreSQL notifications from the trigger `migrate` installs, with a
//! poll as the fallback; an adaptive poll on the other databases.

use crate::storage::listen::Heard;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

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
