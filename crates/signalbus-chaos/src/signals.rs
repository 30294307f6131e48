//! The harness' signal types and, per bus, where they go and how the broker is prepared.
//!
//! - [`Event`]: auto-flushed by the writer's commit (relays send what it could not).
//! - [`Keyed`]: per-key ordered, sent only by the relays' ordered lanes.
//! - [`Poison`]: planted at the start with a destination the broker refuses; must end parked.

use serde::{Deserialize, Serialize};
use signalbus::Signal;

/// An unordered signal, sent by the writer's auto-flush.
#[derive(Debug, Clone, Serialize, Deserialize, Signal)]
#[signal(name = "chaos_event", table = "chaos_event")]
pub struct Event {
    #[signal(destination)]
    pub destination: String,
    #[signal(routing_key)]
    pub route: String,
    /// The business row (`chaos_tx.id`) written in the same transaction.
    pub tx: i64,
    /// Its position among the transaction's signals.
    pub i: u32,
    /// When it was written (Unix ms).
    pub at_ms: i64,
}

/// A signal whose key's order must hold: `seq` grows by one per signal of `key`, in commit
/// order.
#[derive(Debug, Clone, Serialize, Deserialize, Signal)]
#[signal(name = "chaos_keyed", table = "chaos_keyed", autoflush = false)]
pub struct Keyed {
    #[signal(destination)]
    pub destination: String,
    #[signal(key)]
    pub key: String,
    pub seq: i64,
    pub tx: i64,
    pub i: u32,
    pub at_ms: i64,
}

/// A signal the broker refuses: three attempts, then parked.
#[derive(Debug, Clone, Serialize, Signal)]
#[signal(
    name = "chaos_poison",
    table = "chaos_poison",
    autoflush = false,
    max_attempts = 3,
    retry_base_ms = 200,
    retry_max_ms = 1000
)]
pub struct Poison {
    #[signal(destination)]
    pub destination: String,
    #[signal(routing_key)]
    pub route: String,
    pub n: u32,
}

/// The three signal tables.
pub const TABLES: [&str; 3] = ["chaos_event", "chaos_keyed", "chaos_poison"];

/// What a consumer reads of any of the harness' messages.
#[derive(Debug, Deserialize)]
pub struct Body {
    pub tx: i64,
    pub i: u32,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub seq: Option<i64>,
    pub at_ms: i64,
}

/// A message bus of the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    Amqp,
    Nats,
    Kafka,
}

impl Bus {
    pub const ALL: [Bus; 3] = [Bus::Amqp, Bus::Nats, Bus::Kafka];

    pub fn name(self) -> &'static str {
        match self {
            Bus::Amqp => "amqp",
            Bus::Nats => "nats",
            Bus::Kafka => "kafka",
        }
    }

    /// The database of this bus' writers and relays on the private cluster.
    pub fn database(self) -> String {
        format!("chaos_{}", self.name())
    }

    /// The bus URL for a broker (or its proxy) on `port`. Broker timeouts stay below the
    /// bus' publish timeout (see [`crate::roles::bus_for`]).
    pub fn url(self, port: u16) -> String {
        match self {
            Bus::Amqp => {
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f?mandatory=true&timeout_ms=4000")
            }
            Bus::Nats => format!("nats://127.0.0.1:{port}?timeout_ms=4000"),
            Bus::Kafka => format!("kafka://127.0.0.1:{port}?timeout_ms=4000"),
        }
    }

    /// The destination and routing key of [`Event`]s.
    pub fn event_route(self) -> (&'static str, &'static str) {
        ("chaos", "event")
    }

    /// The destination of [`Keyed`] signals (no routing key: on Kafka the ordering key is
    /// the message key, so a key stays in one partition).
    pub fn keyed_destination(self) -> &'static str {
        "chaos"
    }

    /// A route the broker refuses: an unbound routing key (RabbitMQ, mandatory), a subject
    /// no stream captures (NATS), a topic that does not exist (Kafka).
    pub fn poison_route(self) -> (&'static str, &'static str) {
        match self {
            Bus::Amqp => ("chaos", "poison"),
            Bus::Nats | Bus::Kafka => ("nowhere", "poison"),
        }
    }
}

/// Kafka partitions of the `chaos` topic.
pub const KAFKA_PARTITIONS: i32 = 3;
