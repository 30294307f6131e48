//! Test support shared by the workspace's broker tests (the publisher crates' own tests, the
//! facade's end-to-end tests and the fault-injection harness), so that each helper exists
//! once: private servers to stop and restart, a fault-injecting TCP proxy, a database of its
//! own per test (feature `databases`). Not published.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "databases")]
pub mod database;
pub mod example;
pub mod kafka;
pub mod mariadb;
pub mod moto;
pub mod nats;
pub mod outcome;
#[cfg(feature = "databases")]
pub mod pgbouncer;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod rabbitmq;
pub mod redis;
#[cfg(feature = "tls")]
pub mod tls;
pub mod webhook;
