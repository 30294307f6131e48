//! A server that shuts down waits for its walsenders' clients: the relay's work between two
//! reads of its stream gives way when the server waits on it.

use pgwire_replication::ReplicationMetrics;
use sqlx::postgres::PgConnectOptions;
use std::collections::VecDeque;
use std::time::Duration;

/// Replies to the server's keepalives within [`WINDOW`] that mean the server waits on the
/// relay (see [`unless_server_waits`]).
const WAITED_ON: u64 = 3;

/// How far back the replies are counted.
const WINDOW: Duration = Duration::from_secs(1);

/// How often the watch looks.
const TICK: Duration = Duration::from_millis(200);

/// Why the stream is closed when the server waits on the relay.
pub(super) const SERVER_WAITS: &str = "the server is shutting down and waits for the relay to \
                                       confirm the end of its WAL; the stream is closed and \
                                       opened again later";

/// Run `work` unless the server starts waiting on this relay first: `None` then, and the
/// work is dropped (its rows stay in the tables; a published one may go out again).
///
/// A server that shuts down waits until each walsender's client has confirmed the end of
/// the WAL. The relay confirms only what is settled, and its work can take longer than a
/// shutdown may wait (an ordered key's rounds through a slow bus, a bus that is down, a pool
/// waiting out a database that refuses connections). Two signs tell:
/// - the server asks for a reply again as soon as it has one: [`WAITED_ON`] replies within
///   [`WINDOW`] (in normal streaming it asks only after half of `wal_sender_timeout` without
///   a status update, seconds apart even with a short timeout);
/// - when the replication client cannot read its asking (its buffer is full while the relay
///   works), the stream's server (`server`: the replication connection's, not the pool's,
///   which may be a pooler) refuses a new connection with `cannot_connect_now`: asked once a
///   second while the work lasts past its first second.
pub(super) async fn unless_server_waits<T>(
    server: &PgConnectOptions,
    replies: &ReplicationMetrics,
    work: impl Future<Output = T>,
) -> Option<T> {
    let waits = async {
        let ticks = usize::try_from(WINDOW.as_millis() / TICK.as_millis()).unwrap_or(5);
        let mut seen = VecDeque::from([replies.keepalive_replies()]);
        let mut next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::time::sleep(TICK).await;
            let now = replies.keepalive_replies();
            seen.push_back(now);
            if seen.len() > ticks + 1 {
                seen.pop_front();
            }
            if now.saturating_sub(seen[0]) >= WAITED_ON {
                break;
            }
            if tokio::time::Instant::now() >= next_probe {
                if shutting_down(server).await {
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

/// Whether `server` refuses a new connection because it is shutting down (or not up).
async fn shutting_down(server: &PgConnectOptions) -> bool {
    use sqlx::Connection as _;
    let connect = sqlx::PgConnection::connect_with(server);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Err(sqlx::Error::Database(e))) => e.code().as_deref() == Some("57P03"),
        Ok(Ok(conn)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            false
        }
        _ => false,
    }
}
