//! Integration tests against real PostgreSQL, MariaDB and SQLite, and real brokers.

mod atomic;
mod autoflush;
#[cfg(feature = "amqp")]
mod bus_amqp;
#[cfg(feature = "kafka")]
mod bus_kafka;
#[cfg(feature = "nats")]
mod bus_nats;
#[cfg(any(feature = "amqp", feature = "nats", feature = "kafka"))]
mod buses;
mod common;
mod crash;
mod explicit;
mod signals;
