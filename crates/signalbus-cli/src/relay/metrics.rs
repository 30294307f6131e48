//! What the relay's `/metrics` says: the histograms' buckets, the metrics' descriptions, and
//! only the series of the databases on the list.

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

/// `text` (Prometheus' text format) without the series of a database no longer on the list:
/// those whose `bus` label `is_member` refuses. The exporter cannot forget a series, and a
/// removed tenant's last `signalbus_pending` would otherwise stay, and keep its alerts firing,
/// until the relay restarts. Series without a `bus` label are kept.
pub(super) fn only_members(text: &str, is_member: impl Fn(&str) -> bool) -> String {
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.starts_with('#') || bus_label(line).is_none_or(|bus| is_member(&bus)) {
            kept.push_str(line);
        }
    }
    kept
}

/// The value of a series line's `bus` label, unescaped (`\\`, `\"`, `\n`).
fn bus_label(line: &str) -> Option<String> {
    let labels = &line[line.find('{')? + 1..];
    let mut rest = labels;
    loop {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        if name.trim_start_matches(',') == "bus" {
            return Some(value);
        }
        rest = &after[end + 1..];
        if rest.starts_with('}') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::only_members;

    #[test]
    fn series_of_databases_off_the_list_are_left_out() {
        let text = "# HELP signalbus_pending Rows waiting.\n\
                    # TYPE signalbus_pending gauge\n\
                    signalbus_pending{bus=\"t1\",signal=\"a\"} 3\n\
                    signalbus_pending{signal=\"a\",bus=\"gone\"} 7\n\
                    signalbus_pending{signal=\"b=\\\"x\\\"\",bus=\"t\\\"2\"} 1\n\
                    signalbus_fleet_databases 2\n\
                    signalbus_relay_ready{bus=\"gone\"} 1\n";
        let kept = only_members(text, |bus| bus == "t1" || bus == "t\"2");
        assert_eq!(
            kept,
            "# HELP signalbus_pending Rows waiting.\n\
             # TYPE signalbus_pending gauge\n\
             signalbus_pending{bus=\"t1\",signal=\"a\"} 3\n\
             signalbus_pending{signal=\"b=\\\"x\\\"\",bus=\"t\\\"2\"} 1\n\
             signalbus_fleet_databases 2\n"
        );
    }
}
