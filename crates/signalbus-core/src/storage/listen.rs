//! The connection a relay listens on for wake-ups: PostgreSQL's `LISTEN` on the channel the
//! trigger `migrate` installs notifies; nothing on the other databases.

use crate::error::Result;
use std::future::Future;
use std::pin::Pin;

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
