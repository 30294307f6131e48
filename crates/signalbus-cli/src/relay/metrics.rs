//! What the relay's `/metrics` says: the histograms' buckets and the metrics' descriptions.

/// Histogram buckets of the `*_seconds` metrics: from a millisecond to a minute.
pub(super) const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub(super) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "signalbus_relay_ready",
        "1 while the relay's database and broker answer (what /readyz says), else 0."
    );
    describe_gauge!(
        "signalbus_database_up",
        "1 while the relay of this database runs, 0 while it cannot start (fleet mode retries it)."
    );
    describe_counter!(
        "signalbus_database_start_failures_total",
        "Failed starts of this database's relay (unreachable, not migrated, ...)."
    );
    describe_gauge!(
        "signalbus_fleet_databases",
        "Databases on the relay's list (configuration, file and catalog)."
    );
    describe_gauge!(
        "signalbus_fleet_databases_up",
        "Databases whose relay runs and whose database and bus answer."
    );
    describe_gauge!(
        "signalbus_fleet_catalog_ok",
        "1 when the last load of the fleet's file and catalog worked, else 0 (the previous list stays)."
    );
    describe_counter!(
        "signalbus_signals_sent_total",
        "Signals the broker stored (rows deleted)."
    );
    describe_counter!(
        "signalbus_signals_refused_total",
        "Signals the broker refused (kept)."
    );
    describe_counter!(
        "signalbus_signals_retried_total",
        "Refused signals that will be tried again after a backoff."
    );
    describe_counter!(
        "signalbus_signals_parked_total",
        "Refused signals parked for an operator."
    );
    describe_counter!(
        "signalbus_signals_deferred_total",
        "Signals not stored because their part of the bus was out (one endpoint); no attempt spent."
    );
    describe_counter!(
        "signalbus_publish_failures_total",
        "Publish calls that failed as a whole (broker down, timeout)."
    );
    describe_histogram!(
        "signalbus_publish_seconds",
        metrics::Unit::Seconds,
        "Duration of one publish step."
    );
    describe_histogram!(
        "signalbus_delivery_seconds",
        metrics::Unit::Seconds,
        "From the commit (the row's created_at) to the broker's acknowledgement."
    );
    describe_gauge!(
        "signalbus_pending",
        "Rows in the signal table (backing-off and parked included)."
    );
    describe_gauge!(
        "signalbus_backing_off",
        "Signals waiting for their next attempt."
    );
    describe_gauge!(
        "signalbus_parked",
        "Parked signals, waiting for an operator."
    );
    describe_gauge!(
        "signalbus_oldest_pending_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending signal: the relay's lag."
    );
    describe_gauge!(
        "signalbus_capture_streaming",
        "WAL capture: 1 while this relay streams from the slot, else 0."
    );
    describe_gauge!(
        "signalbus_capture_lag_bytes",
        "WAL capture: WAL the server keeps for the slot."
    );
    describe_gauge!(
        "signalbus_capture_lag_seconds",
        metrics::Unit::Seconds,
        "WAL capture: age of the oldest transaction streamed but not yet confirmed."
    );
    describe_gauge!(
        "signalbus_ordered_held_back",
        "Ordered relays on PostgreSQL: signals the gap-safe watermark holds back behind a transaction still open on the server."
    );
    describe_gauge!(
        "signalbus_ordered_holder_age_seconds",
        metrics::Unit::Seconds,
        "Ordered relays on PostgreSQL: how long the transaction holding signals back has been open (0 when none is held)."
    );
}
