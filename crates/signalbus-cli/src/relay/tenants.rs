//! The relays of a fleet: how one database's relay starts, from its URL alone.

use super::start_relay;
use crate::args::RelayArgs;
use crate::config::Config;
use crate::connect::Connect;
use crate::error::CliError;
use signalbus::fleet::{Fleet, FleetBuilder};
use signalbus::{BoxPublisher, BurstShare, Relay};
use std::sync::Arc;
use std::time::Duration;

/// What every database's relay shares: how to connect, the signal types, the bus, the
/// relay's settings and the turns of its bursts.
#[derive(Debug)]
pub struct Tenants {
    /// How databases are reached and buses built.
    pub connect: Connect,
    /// The signal types.
    pub config: Config,
    /// The bus every relay publishes to.
    pub publisher: BoxPublisher,
    /// The relay's settings.
    pub args: RelayArgs,
    /// Turns shared by every database's bursts, when limited.
    pub share: Option<BurstShare>,
}

impl Tenants {
    /// A fleet whose relays start as these settings say; relays that cannot start are tried
    /// again after 1 s, doubling up to `retry_max`.
    pub fn fleet(self, retry_max: Duration) -> FleetBuilder {
        let tenants = Arc::new(self);
        let shutdown = tenants.args.shutdown_timeout;
        Fleet::builder(move |url: String| {
            let tenants = tenants.clone();
            async move { tenants.start(&url).await }
        })
        .retry(Duration::from_secs(1), retry_max)
        .shutdown_timeout(shutdown)
    }

    /// Open `url`'s pool and start its relay.
    async fn start(&self, url: &str) -> Result<Relay, CliError> {
        signalbus::with_database!(url, |DB| {
            let pool = self.connect.pool::<DB>(url).await?;
            let bus = self
                .connect
                .bus(pool, &self.config, self.publisher.clone(), url)?;
            start_relay(&bus, &self.args, Some(url), self.share.clone()).await
        })
        .map_err(|e| CliError::msg(e.to_string()))?
    }
}
