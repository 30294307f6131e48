//! The receiving side: a runner over an rdkafka consumer that hands each record to a handler
//! and commits its offset only once the handler succeeded.
//!
//! The handler does the record's work, usually one database transaction that records the
//! message id ([`crate::message_id`]) in the inbox (`signalbus::inbox`) together with the
//! effects. [`consume`] then:
//!
//! - commits the record's offset when the handler returns `Ok`, after the handler's commit;
//! - when the handler returns `Err`, seeks its partition back to the record, so the record
//!   comes again, after a pause that doubles from 100 ms up to 10 s while it keeps failing;
//! - on `shutdown`, stops between records: the handler in flight finishes and its offset is
//!   committed.
//!
//! One record at a time: Kafka keeps one offset per partition, so a record can only be
//! acknowledged once every earlier record of its partition is. Run more consumers in the
//! group for more parallelism; each gets its own partitions. The consumer must have
//! `enable.auto.commit=false`: an automatic commit would acknowledge records whose handler
//! has not finished.
//!
//! rdkafka reconnects to the brokers by itself; when [`consume`] fails all the same (a
//! commit refused, the group gone), it returns the error. To run on, with backoff, run it in
//! [`signalbus_core::consume::reconnecting`], which opens a new session (a new consumer)
//! after each failure and hands it the shutdown.

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::future::Future;
use std::time::Duration;

pub use signalbus_core::consume::ConsumeReport;

/// Consume from `consumer` (subscribed or assigned already) until `shutdown` resolves (see
/// the [module documentation](self)). Fails when the consumer reports an error.
pub async fn consume<H, Fut, E>(
    consumer: &StreamConsumer,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeReport, rdkafka::error::KafkaError>
where
    H: Fn(OwnedMessage) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut report = ConsumeReport::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let record = tokio::select! {
            record = consumer.recv() => record?.detach(),
            _ = &mut shutdown => return Ok(report),
        };
        let (topic, partition, offset) = (
            record.topic().to_owned(),
            record.partition(),
            record.offset(),
        );
        match handler(record).await {
            Ok(()) => {
                failures = 0;
                let mut next = TopicPartitionList::new();
                next.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
                consumer.commit(&next, CommitMode::Async)?;
                report.acked += 1;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100)
                    .saturating_mul(1 << (failures - 1).min(7))
                    .min(Duration::from_secs(10));
                tracing::warn!(error = %e, topic, partition, offset, retry_in = ?pause, "the handler failed; the record comes again");
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )?;
                report.rejected += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut shutdown => return Ok(report),
                }
            }
        }
    }
}
