//! Choosing a publisher by URL, including the brokers compiled in by feature.

use signalbus_core::{BoxPublisher, Result};

/// Connect to the bus named by `url`.
///
/// `stdout:`, `file:PATH` and `memory:` always work; broker URLs (`amqp://`, `nats://`,
/// `kafka://`) need the feature of the same name. Passwords in `url` never appear in errors or
/// logs.
pub async fn connect_bus(url: &str) -> Result<BoxPublisher> {
    signalbus_core::publisher::from_url(url).await
}
