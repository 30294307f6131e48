//! Integration tests against real PostgreSQL, MariaDB and SQLite, and real brokers.

mod atomic;
mod autoflush;
mod backpressure;
mod bus_amqp;
mod bus_kafka;
mod bus_nats;
mod buses;
mod common;
mod crash;
mod explicit;
mod gated;
mod inbox;
mod keyed;
mod message_ids;
mod migrate;
mod ordered_backlog;
mod ordered_leases;
mod orm_diesel;
mod orm_seaorm;
mod outage;
mod poison;
mod relay;
mod relay_keyed;
mod relay_keyed_brokers;
mod signals;
mod trace_context;
