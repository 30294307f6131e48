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
    /// Redis Streams (a sink: one stream, read by the consumer with `XREAD`).
    Redis,
    /// Signed webhooks (a sink: the consumer is the HTTP receiver, behind the proxy).
    Webhook,
    /// Amazon SQS on a private moto server: events to the standard queue `chaos`, keyed
    /// signals to the FIFO queue `chaos.fifo` (the key is the message group).
    Sqs,
    /// Amazon SNS on a private moto server: the topics `chaos` and `chaos.fifo`, each with
    /// the queue of the same name subscribed (raw delivery), which the consumer reads.
    Sns,
}

impl Bus {
    pub const ALL: [Bus; 7] = [
        Bus::Amqp,
        Bus::Nats,
        Bus::Kafka,
        Bus::Redis,
        Bus::Webhook,
        Bus::Sqs,
        Bus::Sns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bus::Amqp => "amqp",
            Bus::Nats => "nats",
            Bus::Kafka => "kafka",
            Bus::Redis => "redis",
            Bus::Webhook => "webhook",
            Bus::Sqs => "sqs",
            Bus::Sns => "sns",
        }
    }

    /// The database of this bus' writers and relays on the private cluster.
    pub fn database(self) -> String {
        format!("chaos_{}", self.name())
    }

    /// The database of tenant `t` in fleet mode (`--fleet`); tenant 0's is [`Bus::database`].
    pub fn tenant_database(self, t: u32) -> String {
        match t {
            0 => self.database(),
            t => format!("chaos_{}_t{t}", self.name()),
        }
    }

    /// The bus URL for a broker (or its proxy) at `hosts` (`host:port`, comma-separated
    /// for a cluster). Broker timeouts stay below the bus' publish timeout (see
    /// [`crate::roles::bus_for`]).
    pub fn url(self, hosts: &str) -> String {
        match self {
            Bus::Amqp => {
                format!("amqp://guest:guest@{hosts}/%2f?mandatory=true&timeout_ms=4000")
            }
            Bus::Nats => format!("nats://{hosts}?timeout_ms=4000"),
            Bus::Kafka => format!("kafka://{hosts}?timeout_ms=4000"),
            Bus::Redis => format!("redis://{hosts}?timeout_ms=4000"),
            // Requests and the call's budget within the publish timeout; an endpoint paused
            // after failures waits 5 s at most (300 s by default), so recoveries stay short.
            Bus::Webhook => format!(
                "http://{hosts}/hooks?secret={WEBHOOK_SECRET}&timeout_ms=3000&budget_ms=2000\
                 &max_pause_s=5"
            ),
            // The same limits as the webhook's. Credentials: [`AWS_ENV`].
            Bus::Sqs | Bus::Sns => format!(
                "{}://{AWS_REGION}?endpoint=http://{hosts}&timeout_ms=3000&budget_ms=2000",
                self.name()
            ),
        }
    }

    /// The most transactions a second a writer of this bus commits (`--rate` is capped): moto
    /// answers some 50 requests a second, and its consumer deletes one message a request.
    pub fn max_rate(self) -> u32 {
        match self {
            Bus::Sqs | Bus::Sns => 5,
            _ => u32::MAX,
        }
    }

    /// The destination and routing key of [`Event`]s.
    pub fn event_route(self) -> (&'static str, &'static str) {
        ("chaos", "event")
    }

    /// The destination of [`Keyed`] signals (no routing key: on Kafka the ordering key is
    /// the message key, so a key stays in one partition).
    pub fn keyed_destination(self) -> &'static str {
        match self {
            // FIFO: the key is the message group, whose order SQS keeps.
            Bus::Sqs | Bus::Sns => "chaos.fifo",
            _ => "chaos",
        }
    }

    /// A route the broker refuses: an unbound routing key (RabbitMQ, mandatory), a subject
    /// no stream captures (NATS), a topic that does not exist (Kafka), a key that holds no
    /// stream (Redis: `WRONGTYPE`), a host off the webhook's allow-list, a queue or topic
    /// that does not exist (SQS, SNS).
    pub fn poison_route(self) -> (&'static str, &'static str) {
        match self {
            Bus::Amqp => ("chaos", "poison"),
            Bus::Nats | Bus::Kafka | Bus::Redis | Bus::Sqs | Bus::Sns => ("nowhere", "poison"),
            // A host off the allow-list: parked at once, nothing sent.
            Bus::Webhook => ("http://192.0.2.1/nowhere", "poison"),
        }
    }
}

/// The webhook bus' signing secret (Standard Webhooks), known to the receiver.
pub const WEBHOOK_SECRET: &str = "whsec_c2lnbmFsYnVzLWNoYW9zLXdlYmhvb2stc2VjcmV0ISE=";

/// The region of the SQS and SNS buses (moto takes any).
pub const AWS_REGION: &str = "us-east-1";

/// The credentials every process of the harness is given (moto takes any); the bus URLs
/// carry none.
pub const AWS_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "chaos"),
    ("AWS_SECRET_ACCESS_KEY", "chaos"),
];

/// The queues (and, on SNS, the topics) of the SQS and SNS buses.
pub const AWS_QUEUES: [&str; 2] = ["chaos", "chaos.fifo"];

/// Kafka partitions of the `chaos` topic.
pub const KAFKA_PARTITIONS: i32 = 3;
