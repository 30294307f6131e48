//! Test support shared by the workspace's broker tests (the publisher crates' own tests and
//! the facade's end-to-end tests), so that each helper exists once. Not published.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kafka;
pub mod nats;
pub mod outcome;
pub mod rabbitmq;
