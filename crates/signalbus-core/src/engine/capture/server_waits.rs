//! A server that shuts down waits for its walsenders' clients: the relay's work between two
//! reads of its stream gives way when the server waits on it.

use crate::engine::context::Shared;
use pgwire_replication::ReplicationMetrics;
use sqlx::Postgres;
use std::time::Duration;

/// Replies to the server's keepalives during one piece of work that mean the server waits on
/// the relay (see [`unless_server_waits`]).
const WAITED_ON: u64 = 3;

/// Why the stream is closed when the server waits on the relay.
pub(super) const SERVER_WAITS: &str = "the server is shutting down and waits for the relay to confirm \
                            the end of its WAL; the stream is closed and opened again later";

/// Run `work` unless the server starts waiting on this relay first: `None` then, and the
/// work is dropped (its rows stay in the tables; a published one may go out again).
///
/// A server that shuts down waits until each walsender's client has confirmed the end of
/// the WAL. The relay confirms only what is settled, and its work can take longer than a
/// shutdown may wait (an ordered key's rounds through a slow bus, a pool waiting out a
/// database that refuses connections). Two signs tell: the server asks for replies again and
/// again (in normal streaming it asks only after half of `wal_sender_timeout` without a
/// status update, and the client sends one every few seconds); and, when the replication
/// client cannot read them (its buffer is full while the relay works), a new connection is
/// refused with `cannot_connect_now`, asked once a second while the work lasts.
pub(super) async fn unless_server_waits<T>(
    shared: &Shared<Postgres>,
    replies: &ReplicationMetrics,
    work: impl Future<Output = T>,
) -> Option<T> {
    let asked = replies.keepalive_replies();
    let waits = async {
        let mut next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if replies.keepalive_replies().saturating_sub(asked) >= WAITED_ON {
                break;
            }
            if tokio::time::Instant::now() >= next_probe {
                if shutting_down(shared).await {
                    break;
                }
                next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    };
    tokio::select! {
        biased;
        out = work => Some(out),
        () = waits => None,
    }
}

/// Whether the server refuses a new connection because it is shutting down (or not up).
async fn shutting_down(shared: &Shared<Postgres>) -> bool {
    use sqlx::Connection as _;
    let options = shared.pool().connect_options();
    let connect = sqlx::PgConnection::connect_with(&*options);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Err(sqlx::Error::Database(e))) => e.code().as_deref() == Some("57P03"),
        Ok(Ok(conn)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            false
        }
        _ => false,
    }
}
