//! The metrics signalbus records, through the [`metrics`](https://docs.rs/metrics) facade:
//! install any recorder (the command line's relay serves them for Prometheus on
//! `/metrics`) to export them. Every one carries the label `bus`, the bus'
//! [name](crate::SignalBusBuilder::name) (the command line names each bus after its
//! database URL without credentials); those per signal type also `signal`.
//!
//! Every flush (auto-flush, explicit flushes, the relay) records:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `signalbus_signals_sent_total` | counter | `bus`, `signal` | signals the broker stored (and whose rows were deleted) |
//! | `signalbus_signals_refused_total` | counter | `bus`, `signal` | signals the broker refused, of which: |
//! | `signalbus_signals_retried_total` | counter | `bus`, `signal` | … will be tried again after their backoff delay |
//! | `signalbus_signals_parked_total` | counter | `bus`, `signal` | … were parked (refused `max_attempts` times, or not valid signals) |
//! | `signalbus_signals_deferred_total` | counter | `bus`, `signal` | signals not stored because their part of the bus was out (one webhook endpoint down or rate-limiting): no attempt spent, sent again after the publisher's delay |
//! | `signalbus_publish_failures_total` | counter | `bus` | publish calls that failed as a whole (broker down, connection lost, timeout) |
//! | `signalbus_publish_seconds` | histogram | `bus` | one publish step |
//! | `signalbus_turns_missed_total` | counter | `bus`, `signal` | relays sharing turns (`--bursts-at-once`): bursts that waited for a turn longer than their claim could safely last; their rows were given back, unsent, and claimed again later |
//! | `signalbus_delivery_seconds` | histogram | `bus`, `signal` | from the commit (the row's `created_at`) to the broker's acknowledgement |
//!
//! A running [relay](crate::relay) adds gauges, refreshed every
//! [`stats_interval`](crate::RelayBuilder::stats_interval):
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `signalbus_pending` | gauge | `bus`, `signal` | rows in the table, backing-off and parked ones included |
//! | `signalbus_backing_off` | gauge | `bus`, `signal` | refused signals waiting for their next attempt |
//! | `signalbus_parked` | gauge | `bus`, `signal` | parked signals, waiting for an operator |
//! | `signalbus_oldest_pending_seconds` | gauge | `bus`, `signal` | age of the oldest pending signal: the lag to alert on |
//! | `signalbus_relay_ready` | gauge | `bus` | the `signalbus relay` command (with `--listen`): 1 while the database and the broker answer (what `/readyz` says), else 0; checked every 5 s |
//! | `signalbus_ordered_held_back` | gauge | `bus`, `signal` | ordered relay on PostgreSQL: rows the gap-safe watermark holds back behind a transaction still open on the server |
//! | `signalbus_ordered_holder_age_seconds` | gauge | `bus`, `signal` | how long that transaction has been open |
//! | `signalbus_capture_streaming` | gauge | `bus`, `slot` | WAL capture: 1 while this relay streams from the slot, else 0 |
//! | `signalbus_capture_lag_bytes` | gauge | `bus`, `slot` | WAL capture: WAL the server keeps for the slot (its position behind the server's) |
//! | `signalbus_capture_lag_seconds` | gauge | `bus`, `slot` | WAL capture: age of the oldest transaction streamed but not yet confirmed (0 when caught up) |
