//! Integration tests against real PostgreSQL, MariaDB and SQLite.

mod atomic;
mod autoflush;
mod common;
mod crash;
mod explicit;
mod signals;
