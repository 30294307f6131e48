//! The checker: once the faults are healed and everything drained, what the database says
//! was committed against what the consumers recorded.
//!
//! - **lost**: a signal of a committed transaction (a `chaos_tx` row) never recorded;
//! - **phantom**: a recorded signal of no committed transaction (a rolled-back one, say);
//! - **order violations**: per key, in the broker's order (NATS stream sequence, Kafka
//!   offset, the RabbitMQ queue's delivery order), a signal whose first delivery comes after
//!   the first delivery of a later signal of its key;
//! - **duplicates**: deliveries beyond the first (allowed: at-least-once), split into those
//!   the broker stored twice (published again after a crash or a lost confirm) and those
//!   it delivered again (RabbitMQ's redelivered flag: the consumer died before its ack);
//! - **id mismatches**: copies of one signal that carry different message ids (the id is
//!   what a consumer deduplicates by, so it must be the same on every copy);
//! - **left**: rows still in the signal tables, beyond the parked rows the run planted.

use crate::roles::consumer::Delivery;
use crate::signals::Bus;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What was committed on one bus' database.
pub struct Committed {
    /// (tx, i) → (key, seq) of every signal of every committed transaction.
    pub signals: HashMap<(i64, u32), Option<(String, i64)>>,
    pub transactions: usize,
    /// Ids of the transactions the writers rolled back.
    pub rolled_back: HashSet<i64>,
    /// Rows left in the signal tables that should not be there, and parked rows planted.
    pub left: i64,
    pub parked: i64,
    /// (tx, i) of the signals whose rows are still in the tables (not sent, or not yet
    /// known to be sent).
    pub pending: HashSet<(i64, u32)>,
}

/// A fault, for recovery times: when it began and when its effect ended, and on which buses.
pub struct Healed {
    pub kind: String,
    pub bus: Option<Bus>,
    pub began_ms: i64,
    pub healed_ms: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct BusVerdict {
    pub transactions_committed: usize,
    pub rolled_back: usize,
    pub signals_committed: usize,
    pub signals_delivered: usize,
    pub deliveries: usize,
    pub lost: usize,
    pub phantom: usize,
    pub rolled_back_delivered: usize,
    pub duplicates: usize,
    pub duplicates_redelivered: usize,
    pub duplicates_published_again: usize,
    pub id_mismatches: usize,
    /// Records at a broker position recorded again later with another message (a NATS
    /// stream that reassigned sequences after losing its majority): not counted as
    /// deliveries of their signals, nor in a key's order.
    pub superseded: usize,
    pub order_violations: usize,
    pub keys: usize,
    pub left_in_tables: i64,
    pub parked: i64,
    /// Faults after which no signal written later was delivered (near the end of the run).
    pub unmeasured_recoveries: usize,
    /// Faults whose recovery waited for the watchdog to restart a wedged broker (not counted
    /// in the recovery times: the broker, not signalbus, was down).
    pub recoveries_behind_wedged_broker: usize,
    pub max_recovery_ms: i64,
    /// Per fault kind, the longest time from the end of the fault to the first delivery of
    /// a signal written after it.
    pub recovery_ms: HashMap<String, i64>,
    /// The three slowest recoveries: fault, when it ended (Unix ms, as in `faults.log`), ms.
    pub slowest_recoveries: Vec<(String, i64, i64)>,
    /// Up to ten lost signals (tx, i), to look up.
    pub lost_sample: Vec<(i64, u32)>,
    /// Of the lost signals, how many are still rows in the signal tables: never confirmed by
    /// the broker, so kept (undelivered when the drain ran out, not lost by signalbus).
    pub lost_still_pending: usize,
    /// Of the lost signals, how many the broker's own store holds (stored, never read back);
    /// the others never reached it or were dropped by it. Kafka (tansu) only, when some are
    /// lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_but_in_broker_store: Option<usize>,
    /// Of the lost signals, those neither still pending nor in the broker's store (where the
    /// store can be read; else lost less pending): lost by someone.
    pub lost_unaccounted: usize,
    /// Every lost signal (tx, i): written to the run directory, not to the summary.
    #[serde(skip)]
    pub lost_all: Vec<(i64, u32)>,
    /// Up to ten order violations: key, the sequence number, the later one first delivered.
    pub violation_sample: Vec<(String, i64, i64)>,
}

pub fn check(
    bus: Bus,
    committed: &Committed,
    mut deliveries: Vec<Delivery>,
    faults: &[Healed],
    wedges: &[(i64, i64)],
) -> BusVerdict {
    let mut v = BusVerdict {
        transactions_committed: committed.transactions,
        rolled_back: committed.rolled_back.len(),
        signals_committed: committed.signals.len(),
        deliveries: deliveries.len(),
        left_in_tables: committed.left,
        parked: committed.parked,
        ..BusVerdict::default()
    };
    // A position recorded twice held another message the second time (a NATS stream that
    // reassigned sequences after losing its majority; see the consumer's sweep): the stream
    // holds the later one there, and the earlier record is no delivery of its signal unless
    // the stream holds that signal at another position too (else the broker dropped it:
    // lost).
    let superseded = superseded(&deliveries);
    v.superseded = superseded.len();
    let mut seen: HashSet<(i64, u32)> = HashSet::new();
    let mut ids: HashMap<(i64, u32), &str> = HashMap::new();
    for (n, d) in deliveries.iter().enumerate() {
        if superseded.contains(&n) {
            continue;
        }
        let id = ids.entry((d.tx, d.i)).or_insert(d.message_id.as_str());
        if *id != d.message_id {
            v.id_mismatches += 1;
        }
        if !seen.insert((d.tx, d.i)) {
            v.duplicates += 1;
            if d.redelivered {
                v.duplicates_redelivered += 1;
            } else {
                v.duplicates_published_again += 1;
            }
            continue;
        }
        if !committed.signals.contains_key(&(d.tx, d.i)) {
            v.phantom += 1;
        }
        if committed.rolled_back.contains(&d.tx) {
            v.rolled_back_delivered += 1;
        }
    }
    v.signals_delivered = seen.len() - v.phantom;
    let mut lost: Vec<(i64, u32)> = committed
        .signals
        .keys()
        .filter(|k| !seen.contains(k))
        .copied()
        .collect();
    lost.sort();
    v.lost = lost.len();
    v.lost_still_pending = lost
        .iter()
        .filter(|k| committed.pending.contains(k))
        .count();
    v.lost_unaccounted = v.lost - v.lost_still_pending;
    v.lost_sample = lost.iter().take(10).copied().collect();
    v.lost_all = lost;

    // Order: the broker's own order where it has one (superseded records left out).
    let mut n = 0;
    deliveries.retain(|_| {
        n += 1;
        !superseded.contains(&(n - 1))
    });
    if bus != Bus::Amqp {
        deliveries.sort_by_key(|d| d.position);
    }
    let mut first_max: HashMap<&str, i64> = HashMap::new();
    let mut first_seen: HashSet<(&str, i64)> = HashSet::new();
    for d in &deliveries {
        let (Some(key), Some(seq)) = (d.key.as_deref(), d.seq) else {
            continue;
        };
        if !first_seen.insert((key, seq)) {
            continue;
        }
        let max = first_max.entry(key).or_insert(i64::MIN);
        if seq < *max {
            v.order_violations += 1;
            if v.violation_sample.len() < 10 {
                v.violation_sample.push((key.to_owned(), seq, *max));
            }
        } else {
            *max = seq;
        }
    }
    v.keys = first_max.len();

    // Recovery: from a fault's end to the first signal written after it reaching the broker.
    // Stored by the broker where it says when, received otherwise (RabbitMQ).
    let mut by_write: Vec<(i64, i64)> = deliveries
        .iter()
        .map(|d| (d.at_ms, d.stored_ms.unwrap_or(d.received_ms)))
        .collect();
    by_write.sort();
    let mut earliest_after = vec![i64::MAX; by_write.len() + 1];
    for (n, (_, received)) in by_write.iter().enumerate().rev() {
        earliest_after[n] = earliest_after[n + 1].min(*received);
    }
    for f in faults.iter().filter(|f| f.bus.is_none_or(|b| b == bus)) {
        let from = by_write.partition_point(|(at, _)| *at < f.healed_ms);
        let first = earliest_after[from];
        if first == i64::MAX {
            v.unmeasured_recoveries += 1;
            continue;
        }
        // The broker was wedged (and restarted by the watchdog) while this recovery waited.
        if wedges
            .iter()
            .any(|&(from, to)| from <= first && f.healed_ms <= to)
        {
            v.recoveries_behind_wedged_broker += 1;
            continue;
        }
        let took = (first - f.healed_ms).max(0);
        v.slowest_recoveries
            .push((f.kind.clone(), f.healed_ms, took));
        v.max_recovery_ms = v.max_recovery_ms.max(took);
        let worst = v.recovery_ms.entry(f.kind.clone()).or_insert(0);
        *worst = (*worst).max(took);
    }
    v.slowest_recoveries.sort_by_key(|r| std::cmp::Reverse(r.2));
    v.slowest_recoveries.truncate(3);
    v
}

/// Whether a verdict fails the run.
/// The records (by their place in `deliveries`, the consumer's file order) at a position that
/// was recorded again later.
fn superseded(deliveries: &[Delivery]) -> HashSet<usize> {
    let mut last: HashMap<(i32, i64), usize> = HashMap::new();
    for (n, d) in deliveries.iter().enumerate() {
        if let Some(p) = d.position {
            last.insert(p, n);
        }
    }
    deliveries
        .iter()
        .enumerate()
        .filter(|(n, d)| d.position.is_some_and(|p| last[&p] != *n))
        .map(|(n, _)| n)
        .collect()
}

pub fn failed(v: &BusVerdict) -> bool {
    v.lost > 0
        || v.phantom > 0
        || v.order_violations > 0
        || v.left_in_tables > 0
        || v.id_mismatches > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed signal: (tx, i) and its key and sequence number, if keyed.
    type Row<'a> = ((i64, u32), Option<(&'a str, i64)>);

    fn committed(signals: &[Row<'_>]) -> Committed {
        Committed {
            signals: signals
                .iter()
                .map(|(k, v)| (*k, v.map(|(key, seq)| (key.to_owned(), seq))))
                .collect(),
            transactions: signals.len(),
            rolled_back: HashSet::from([99]),
            left: 0,
            parked: 0,
            pending: HashSet::new(),
        }
    }

    fn delivery(tx: i64, i: u32, key: Option<(&str, i64)>, pos: i64) -> Delivery {
        Delivery {
            tx,
            i,
            key: key.map(|k| k.0.to_owned()),
            seq: key.map(|k| k.1),
            at_ms: 1000 + pos,
            received_ms: 1010 + pos,
            stored_ms: None,
            position: Some((0, pos)),
            message_id: format!("m{tx}-{i}"),
            redelivered: false,
        }
    }

    #[test]
    fn counts_lost_phantom_duplicates_and_order() {
        let c = committed(&[
            ((1, 0), Some(("a", 0))),
            ((2, 0), Some(("a", 1))),
            ((3, 0), Some(("a", 2))),
            ((4, 0), None),
        ]);
        // a1 before a0 in the stream, a0 twice, 3 lost, 99 rolled back yet delivered.
        let got = vec![
            delivery(2, 0, Some(("a", 1)), 1),
            delivery(1, 0, Some(("a", 0)), 2),
            delivery(1, 0, Some(("a", 0)), 3),
            delivery(4, 0, None, 4),
            delivery(99, 0, None, 5),
        ];
        let faults = [Healed {
            kind: "k".into(),
            bus: None,
            began_ms: 1000,
            healed_ms: 1003,
        }];
        let v = check(Bus::Nats, &c, got, &faults, &[]);
        assert_eq!((v.lost, v.phantom, v.duplicates), (1, 1, 1), "{v:?}");
        assert_eq!(v.rolled_back_delivered, 1);
        assert_eq!(v.order_violations, 1, "{v:?}");
        assert_eq!(v.signals_delivered, 3);
        assert_eq!(v.max_recovery_ms, 10, "written at 1003, received at 1013");
        assert!(failed(&v));
    }

    /// A NATS stream that reassigned sequence 2 after losing its majority: the consumer read
    /// a1 there first (published again later at 4), and its sweep recorded what sequence 2
    /// holds now, a0. The stream's order is a0 (2), a1 (4): no violation, nothing lost, no
    /// duplicate (the stream holds a1 once), one record superseded.
    #[test]
    fn a_position_recorded_again_supersedes_the_first_record() {
        let c = committed(&[((1, 0), Some(("a", 0))), ((2, 0), Some(("a", 1)))]);
        let got = vec![
            delivery(2, 0, Some(("a", 1)), 2),
            delivery(2, 0, Some(("a", 1)), 4),
            delivery(1, 0, Some(("a", 0)), 2),
        ];
        let v = check(Bus::Nats, &c, got, &[], &[]);
        assert_eq!(
            (v.lost, v.duplicates, v.order_violations, v.superseded),
            (0, 0, 0, 1),
            "{v:?}"
        );
        assert!(!failed(&v));
    }

    /// A signal recorded only at a position that later held another message: the stream no
    /// longer holds it anywhere, so it is lost (the broker dropped it), not delivered.
    #[test]
    fn a_signal_seen_only_at_a_superseded_position_is_lost() {
        let c = committed(&[((1, 0), None), ((2, 0), None)]);
        let got = vec![delivery(2, 0, None, 2), delivery(1, 0, None, 2)];
        let v = check(Bus::Nats, &c, got, &[], &[]);
        assert_eq!((v.lost, v.lost_sample.clone()), (1, vec![(2, 0)]), "{v:?}");
        assert!(failed(&v));
    }

    #[test]
    fn lost_signals_still_in_the_tables_are_told_apart() {
        let mut c = committed(&[((1, 0), None), ((2, 0), None), ((3, 0), None)]);
        // 2 still a row (never confirmed), 3 neither a row nor delivered, 1 delivered and its
        // row not yet deleted (a crash after the publish).
        c.pending = HashSet::from([(1, 0), (2, 0)]);
        let v = check(Bus::Nats, &c, vec![delivery(1, 0, None, 1)], &[], &[]);
        assert_eq!((v.lost, v.lost_still_pending), (2, 1), "{v:?}");
        assert_eq!(v.lost_unaccounted, 1);
        assert_eq!(v.lost_all, vec![(2, 0), (3, 0)]);
        assert!(
            failed(&v),
            "undelivered at the end fails the run, pending or not"
        );
    }

    #[test]
    fn a_copy_with_another_id_fails() {
        let c = committed(&[((1, 0), None)]);
        let mut again = delivery(1, 0, None, 2);
        again.message_id = "other".into();
        again.redelivered = true;
        let v = check(
            Bus::Amqp,
            &c,
            vec![delivery(1, 0, None, 1), again],
            &[],
            &[],
        );
        assert_eq!((v.id_mismatches, v.duplicates_redelivered), (1, 1), "{v:?}");
        assert!(failed(&v));
    }

    #[test]
    fn redelivered_in_order_is_no_violation() {
        let c = committed(&[((1, 0), Some(("a", 0))), ((1, 1), Some(("a", 1)))]);
        let got = vec![
            delivery(1, 0, Some(("a", 0)), 1),
            delivery(1, 0, Some(("a", 0)), 2),
            delivery(1, 1, Some(("a", 1)), 3),
            delivery(1, 0, Some(("a", 0)), 4),
        ];
        let v = check(Bus::Kafka, &c, got, &[], &[]);
        assert_eq!(
            (v.lost, v.order_violations, v.duplicates),
            (0, 0, 2),
            "{v:?}"
        );
        assert_eq!(v.id_mismatches, 0);
        assert!(!failed(&v));
    }
}
