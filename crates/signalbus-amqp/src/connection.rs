//! The one connection a publisher reuses, its confirm channels, and their replacement after
//! the broker closed them.

use crate::error::connect_error;
use crate::options::AmqpOptions;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use signalbus_core::{PublishError, PublishErrorKind};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Confirm channels per connection: batches in flight at once (auto-flush rounds, explicit
/// flushes). Each batch has a channel to itself, because lapin hands a `basic.return` to
/// whichever confirm of the channel it completes next, not to the returned message's own.
pub(crate) const CHANNELS: usize = 4;

/// A connected connection with its confirm-mode channels.
pub(crate) struct Live {
    /// Which connection this is, so that a failure discards only the one it happened on.
    pub generation: u64,
    pub connection: Connection,
    /// Each channel with the lock a batch holds while it uses it.
    pub channels: Vec<(tokio::sync::Mutex<()>, Channel)>,
}

impl Live {
    pub fn is_usable(&self) -> bool {
        self.connection.status().connected()
            && self.channels.iter().all(|(_, c)| c.status().connected())
    }

    /// A channel no other batch uses, waiting for one when all are busy.
    pub async fn take_channel(&self) -> (tokio::sync::MutexGuard<'_, ()>, &Channel) {
        for (lock, channel) in &self.channels {
            if let Ok(guard) = lock.try_lock() {
                return (guard, channel);
            }
        }
        // All busy: wait for any of them.
        let waits = self
            .channels
            .iter()
            .map(|(lock, channel)| Box::pin(async move { (lock.lock().await, channel) }));
        futures_util::future::select_all(waits).await.0
    }
}

/// `fut`, or a Timeout error saying what did not finish. lapin can hang when the server
/// closes the connection (lapin issue 409), so every wait on the broker goes through here.
pub(crate) async fn bounded<T>(
    limit: Duration,
    during: &str,
    fut: impl Future<Output = Result<T, PublishError>>,
) -> Result<T, PublishError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(PublishError::new(
            PublishErrorKind::Timeout,
            format!("RabbitMQ did not answer within {limit:?} while {during}"),
        ))
    })
}

/// Open a connection and its confirm channels: to the first node of the URL that answers.
/// The first connection starts at the first node listed and each new one a node further
/// along, so that after the node in use went away another is tried first. Each attempt has
/// the whole `timeout`: with nodes that do not answer, a connect takes up to that many times
/// as long (the bus' publish timeout still bounds the call).
pub(crate) async fn open(
    options: &AmqpOptions,
    generation: u64,
) -> Result<Arc<Live>, PublishError> {
    let nodes = options.uris.len();
    // Generations count from 1: the first connection goes to the first node listed.
    let first = usize::try_from(generation.saturating_sub(1)).unwrap_or_default() % nodes;
    let mut failed = None;
    for uri in options.uris.iter().cycle().skip(first).take(nodes) {
        match open_on(options, uri, generation).await {
            Ok(live) => return Ok(live),
            Err(e) => {
                if nodes > 1 {
                    tracing::info!(error = %e, "RabbitMQ node unusable; trying the next one");
                }
                failed = Some(e);
            }
        }
    }
    Err(failed.expect("a URL names at least one node"))
}

async fn open_on(
    options: &AmqpOptions,
    uri: &str,
    generation: u64,
) -> Result<Arc<Live>, PublishError> {
    let url = url::Url::parse(uri).expect("validated by AmqpOptions::from_url");
    let shown = &options.display;
    let name = options.app_id.clone().unwrap_or_else(|| "signalbus".into());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = bounded(options.timeout, "connecting", async {
        DefaultConnectionBuilder::new()
            .map_err(|e| connect_error(e, shown, &url))?
            .with_uri_str(uri.to_owned())
            .with_properties(properties)
            .with_tls_config(options.tls.clone())
            .connect()
            .await
            .map_err(|e| connect_error(e, shown, &url))
    })
    .await?;
    let setup = async {
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| connect_error(e, shown, &url))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| connect_error(e, shown, &url))?;
            channels.push((tokio::sync::Mutex::new(()), channel));
        }
        Ok(channels)
    };
    match bounded(options.timeout, "opening the confirm channels", setup).await {
        Ok(channels) => {
            tracing::debug!(url = %shown, generation, "connected to RabbitMQ");
            Ok(Arc::new(Live {
                generation,
                connection,
                channels,
            }))
        }
        Err(e) => {
            let limit = options.timeout;
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(limit, connection.close(200, "setup failed".into())).await;
            });
            Err(e)
        }
    }
}

/// Close a connection we gave up on without waiting for it (it may hang).
pub(crate) fn close_later(live: Arc<Live>, limit: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            limit,
            live.connection.close(200, "signalbus reconnects".into()),
        )
        .await;
    });
}
