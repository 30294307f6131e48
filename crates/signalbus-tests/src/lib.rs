//! Nothing to use here: this crate holds signalbus' integration tests (`tests/integration`),
//! against real databases and brokers. It exists so that the broker clients the tests read
//! back with are not dev-dependencies of the `signalbus` facade.
#![forbid(unsafe_code)]
