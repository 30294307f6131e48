//! What wakes a relay: PostgreSQL notifications from the trigger `migrate` installs, with a
//! poll as the fallback; an adaptive poll on the other databases.

use crate::error::Result;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The channel the trigger notifies, with the table's name as the payload.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) const CHANNEL: &str = "signalbus";

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a listening connection heard.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Heard {
    /// Rows were inserted into the table of this name (without its schema).
    Table(String),
    /// The connection was lost and is being opened again: notifications may have been
    /// missed meanwhile.
    Lost,
}

/// A connection that receives the wake-up notifications.
pub(crate) trait Listen: Send {
    fn next(&mut self) -> BoxFuture<'_, Result<Heard>>;
}

/// For databases without notifications.
#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))]
pub(crate) async fn no_listener<DB: sqlx::Database>(
    _: &sqlx::Pool<DB>,
) -> Result<Option<Box<dyn Listen>>> {
    Ok(None)
}

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use super::{BoxFuture, CHANNEL, Heard, Listen};
    use crate::error::Result;
    use sqlx::postgres::PgListener;

    struct Listener(PgListener);

    impl Listen for Listener {
        fn next(&mut self) -> BoxFuture<'_, Result<Heard>> {
            Box::pin(async move {
                Ok(match self.0.try_recv().await? {
                    Some(notification) => Heard::Table(notification.payload().to_owned()),
                    // sqlx reconnects (and listens again) on the next call.
                    None => Heard::Lost,
                })
            })
        }
    }

    /// A connection of its own (with the pool's settings) listening on [`CHANNEL`].
    pub(crate) async fn listener(
        pool: &sqlx::Pool<sqlx::Postgres>,
    ) -> Result<Option<Box<dyn Listen>>> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Box::new(Listener(listener))))
    }
}

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
                let wait = super::failure_wait(failures);
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
