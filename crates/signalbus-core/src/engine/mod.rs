//! The flushing engine: a private context shared by everything that sends ([`context`]),
//! publish-and-settle ([`settle`]), the bursts of explicit flushes and of the relay
//! ([`bursts`], ordered ones [`ordered`]) and the turns they take ([`turns`]), the auto-flush task and its admission
//! ([`auto`]), the relay and its wake-up ([`relay`], [`wake`]), the connection a relay lane
//! keeps for itself ([`own_conn`]), and what operators do to the tables ([`operator`]).
//!
//! Metrics are listed in [`crate::metrics`].

pub(crate) mod auto;
pub(crate) mod bursts;
#[cfg(feature = "wal")]
pub mod capture;
pub(crate) mod context;
pub(crate) mod inspect;
pub(crate) mod operator;
pub(crate) mod ordered;
pub(crate) mod own_conn;
pub mod relay;
pub(crate) mod settle;
pub(crate) mod turns;
pub(crate) mod wake;

pub(crate) use context::{Config, Engine};
