//! The one connection and confirm channel a publisher reuses, and their replacement after
//! the broker closed them.

use crate::error::connect_error;
use crate::options::AmqpOptions;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use signalbus_core::{PublishError, PublishErrorKind};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A connected connection with its confirm-mode channel.
pub(crate) struct Live {
    /// Which connection this is, so that a failure discards only the one it happened on.
    pub generation: u64,
    pub connection: Connection,
    pub channel: Channel,
}

impl Live {
    pub fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
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

/// Open a connection and a confirm channel.
pub(crate) async fn open(
    options: &AmqpOptions,
    generation: u64,
) -> Result<Arc<Live>, PublishError> {
    let url = url::Url::parse(&options.uri).expect("validated by AmqpOptions::from_url");
    let shown = &options.display;
    let name = options.app_id.clone().unwrap_or_else(|| "signalbus".into());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = bounded(options.timeout, "connecting", async {
        Connection::connect(&options.uri, properties)
            .await
            .map_err(|e| connect_error(e, shown, &url))
    })
    .await?;
    let setup = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| connect_error(e, shown, &url))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| connect_error(e, shown, &url))?;
        Ok(channel)
    };
    match bounded(options.timeout, "opening the confirm channel", setup).await {
        Ok(channel) => {
            tracing::debug!(url = %shown, generation, "connected to RabbitMQ");
            Ok(Arc::new(Live {
                generation,
                connection,
                channel,
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
