//! A consumer per bus that records every delivery, one line each, to its file before it
//! acknowledges it: what the checker reads. Where the broker keeps a position (a NATS stream
//! sequence, a Kafka offset), the line carries it and a restarted consumer resumes after the
//! last line written (the file is its offset store: at least once, never a gap).

use crate::signals::{Body, Bus, KAFKA_PARTITIONS};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    #[arg(long, value_enum)]
    pub bus: Bus,
    /// The broker (or its proxy): `host:port`, comma-separated for a cluster's nodes.
    #[arg(long)]
    pub broker: String,
    #[arg(long)]
    pub out: PathBuf,
}

/// One recorded delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tx: i64,
    pub i: u32,
    pub key: Option<String>,
    pub seq: Option<i64>,
    pub at_ms: i64,
    pub received_ms: i64,
    /// When the broker stored it, where the broker says (NATS' stream timestamp, the Kafka
    /// record's timestamp): what the recovery times measure, free of the consumer's delays.
    pub stored_ms: Option<i64>,
    /// The broker's position: stream sequence (NATS), partition and offset (Kafka).
    pub position: Option<(i32, i64)>,
    /// The signal's message id as the broker carried it (`-` when absent).
    pub message_id: String,
    /// RabbitMQ's redelivered flag: delivered before to a consumer that did not acknowledge.
    pub redelivered: bool,
}

impl Delivery {
    fn line(&self) -> String {
        let pos = self
            .position
            .map_or_else(|| "-".to_owned(), |(p, o)| format!("{p}:{o}"));
        format!(
            "{} {} {} {} {} {} {} {pos} {} {}\n",
            self.tx,
            self.i,
            self.key.as_deref().unwrap_or("-"),
            self.seq.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            self.at_ms,
            self.received_ms,
            self.stored_ms
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            self.message_id,
            u8::from(self.redelivered)
        )
    }

    /// A line as written; `None` for a line cut short by a kill.
    pub fn parse(line: &str) -> Option<Delivery> {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 10 {
            return None;
        }
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        Some(Delivery {
            tx: f[0].parse().ok()?,
            i: f[1].parse().ok()?,
            key: opt(f[2]),
            seq: match f[3] {
                "-" => None,
                s => Some(s.parse().ok()?),
            },
            at_ms: f[4].parse().ok()?,
            received_ms: f[5].parse().ok()?,
            stored_ms: match f[6] {
                "-" => None,
                s => Some(s.parse().ok()?),
            },
            position: match f[7] {
                "-" => None,
                s => {
                    let (p, o) = s.split_once(':')?;
                    Some((p.parse().ok()?, o.parse().ok()?))
                }
            },
            message_id: f[8].to_owned(),
            redelivered: f[9] == "1",
        })
    }
}

/// Every complete line of `path`, in order.
pub fn read_all(path: &Path) -> Vec<Delivery> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(Delivery::parse)
        .collect()
}

pub(super) struct Recorder {
    file: std::fs::File,
}

impl Recorder {
    pub(super) fn open(path: &Path) -> std::io::Result<Recorder> {
        // A line a kill cut short ends here, so that the next one starts on its own line.
        let ends_cleanly = std::fs::read(path)
            .map(|b| b.last().is_none_or(|c| *c == b'\n'))
            .unwrap_or(true);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if !ends_cleanly {
            file.write_all(b"\n")?;
        }
        Ok(Recorder { file })
    }

    pub(super) fn record(
        &mut self,
        body: &[u8],
        position: Option<(i32, i64)>,
        stored_ms: Option<i64>,
        message_id: Option<&str>,
        redelivered: bool,
    ) -> std::io::Result<()> {
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| std::io::Error::other(format!("not a harness message: {e}")))?;
        let d = Delivery {
            tx: body.tx,
            i: body.i,
            key: body.key,
            seq: body.seq,
            at_ms: body.at_ms,
            received_ms: super::now_ms(),
            stored_ms,
            position,
            // Ids are UUIDs; anything else is kept out of the space-separated line.
            message_id: message_id
                .filter(|id| !id.is_empty() && !id.contains(char::is_whitespace))
                .unwrap_or("-")
                .to_owned(),
            redelivered,
        };
        // One write per line: a kill leaves whole lines and at most one cut short.
        self.file.write_all(d.line().as_bytes())
    }
}

pub async fn run(args: ConsumerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let resume = read_all(&args.out);
    let mut recorder = Recorder::open(&args.out)?;
    match args.bus {
        Bus::Amqp => amqp(&args.broker, &mut recorder).await,
        Bus::Nats => {
            // What each stream sequence held when it was recorded (the last line's, for a
            // sequence recorded again after the stream reassigned it).
            let recorded = resume
                .iter()
                .filter_map(|d| Some((d.position?.1, d.message_id.clone())))
                .collect();
            nats(&args.broker, recorded, &mut recorder).await
        }
        Bus::Redis => {
            let last = resume.iter().filter_map(|d| d.position).map(|p| p.1).max();
            redis_stream(&args.broker, last, &mut recorder).await
        }
        Bus::Webhook => super::receiver::webhook(&args.broker, recorder).await,
        Bus::Sqs | Bus::Sns => super::queues::queues(&args.broker, recorder).await,
        Bus::Kafka => {
            let mut last: HashMap<i32, i64> = HashMap::new();
            for (p, o) in resume.iter().filter_map(|d| d.position) {
                let at = last.entry(p).or_insert(o);
                *at = (*at).max(o);
            }
            kafka(&args.broker, &last, &mut recorder).await
        }
    }
}

/// The durable queue `chaos`: acknowledged after the line is written; what a killed consumer
/// had not acknowledged is requeued in place and delivered again.
async fn amqp(broker: &str, recorder: &mut Recorder) -> Result<(), Box<dyn std::error::Error>> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    // The first node that takes the connection (a cluster's nodes share the quorum queue).
    let mut conn = Err("no RabbitMQ node given".into());
    for node in broker.split(',') {
        let url = format!("amqp://guest:guest@{node}/%2f");
        let attempt = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
        match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
            Ok(Ok(c)) => {
                conn = Ok(c);
                break;
            }
            Ok(Err(e)) => conn = Err(e.to_string()),
            Err(_) => conn = Err(format!("RabbitMQ at {node} did not answer within 5 s")),
        }
    }
    let conn = conn?;
    let channel = conn.create_channel().await?;
    channel.basic_qos(200, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            "chaos".into(),
            "chaos-consumer".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    // A connection that broke must end this process (the slot starts it again): lapin does
    // not always end the delivery stream or answer an ack then, so both are watched.
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            next = deliveries.next() => next,
            _ = check.tick() => {
                if conn.status().connected() && channel.status().connected() {
                    continue;
                }
                return Err("the RabbitMQ connection broke (seen by its status)".into());
            }
        };
        let Some(delivery) = next else {
            return Err("the RabbitMQ consumer was cancelled".into());
        };
        let delivery = delivery?;
        let id = signalbus::amqp::message_id(&delivery);
        recorder.record(&delivery.data, None, None, id, delivery.redelivered)?;
        let ack = delivery.ack(BasicAckOptions::default());
        match tokio::time::timeout(std::time::Duration::from_secs(10), ack).await {
            Ok(acked) => {
                acked?;
            }
            Err(_) => return Err("RabbitMQ took no ack within 10 s (a broken connection)".into()),
        }
    }
}

/// Empty pull batches in a row (0.5 s each) after which the NATS consumer sweeps the stream.
const IDLE_BATCHES: u32 = 6;

/// The stream `CHAOS` from the sequence after the last recorded, through a consumer of this
/// process alone (no acks: the file is the position), pulled in short batches so that a
/// quiet stream does not leave a pull pending for long; swept (see [`sweep`]) while quiet.
async fn nats(
    broker: &str,
    mut recorded: HashMap<i64, String>,
    recorder: &mut Recorder,
) -> Result<(), Box<dyn std::error::Error>> {
    use async_nats::jetstream::consumer::DeliverPolicy;
    // A consumer that lost its server starts afresh (the slot restarts it, resuming after
    // its last line): the recovery times measure signalbus, not this consumer's reconnects.
    let client = async_nats::ConnectOptions::new()
        .event_callback(|event| async move {
            if matches!(event, async_nats::Event::Disconnected) {
                eprintln!("chaos consumer: disconnected from NATS; starting afresh");
                std::process::exit(3);
            }
        })
        .connect(
            broker
                .split(',')
                .map(|node| format!("nats://{node}"))
                .collect::<Vec<_>>(),
        )
        .await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("CHAOS").await?;
    let last = recorded.keys().max().copied();
    let deliver_policy = match last {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: u64::try_from(seq + 1)?,
        },
        None => DeliverPolicy::All,
    };
    let consumer = pull_consumer(&stream, deliver_policy).await?;
    // No acks: a batch whose messages were on their way when it expired (a partition holds
    // them) counts them delivered, and the next batch starts after them. A jump in the
    // stream sequence ends this process, and the slot starts it again from the last line.
    let mut next = last.map(|seq| seq + 1);
    // Empty batches in a row, and the stream's last sequence at the last sweep.
    let (mut idle, mut swept_at) = (0, None);
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(500)
            .expires(std::time::Duration::from_millis(500))
            .messages()
            .await?;
        let mut got = false;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let seq = i64::try_from(info.stream_sequence)?;
            match next {
                Some(expected) if seq > expected => {
                    return Err(
                        format!("stream sequence {seq} after {}: a gap", expected - 1).into(),
                    );
                }
                Some(expected) if seq < expected => continue,
                _ => next = Some(seq + 1),
            }
            record_nats(recorder, &mut recorded, &message, &info, seq)?;
            got = true;
        }
        idle = if got { 0 } else { idle + 1 };
        // Quiet: sweep, unless the stream has not changed since the last sweep (messages
        // stored at sequences this consumer has passed change its last sequence too).
        if idle > 0 && idle % IDLE_BATCHES == 0 {
            let stream_last = stream.clone().info().await?.state.last_sequence;
            if swept_at != Some(stream_last) {
                sweep(&stream, stream_last, &mut recorded, recorder).await?;
                swept_at = Some(stream_last);
            }
        }
    }
}

/// A pull consumer of the stream without acks, from `deliver_policy` on.
async fn pull_consumer(
    stream: &async_nats::jetstream::stream::Stream,
    deliver_policy: async_nats::jetstream::consumer::DeliverPolicy,
) -> Result<async_nats::jetstream::consumer::PullConsumer, Box<dyn std::error::Error>> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    Ok(stream
        .create_consumer(pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await?)
}

/// Record the message at stream sequence `seq` (of its `info`), with the time the stream
/// stored it.
fn record_nats(
    recorder: &mut Recorder,
    recorded: &mut HashMap<i64, String>,
    message: &async_nats::jetstream::Message,
    info: &async_nats::jetstream::message::Info<'_>,
    seq: i64,
) -> std::io::Result<()> {
    let stored = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok();
    let id = signalbus::nats::message_id(message);
    recorder.record(&message.payload, Some((0, seq)), stored, id, false)?;
    recorded.insert(seq, id.unwrap_or("-").to_owned());
    Ok(())
}

/// Read the stream again up to the last sequence recorded, and record each message whose
/// sequence held another message when it was recorded. After two of three nodes died at once
/// (`broker_majority_killed`), JetStream has been seen to give a consumer messages at
/// sequences it later assigned to other messages (published during the outage and
/// acknowledged after it): a consumer that resumes by sequence never reads those. Run when
/// the stream has been quiet for 3 s (the drain, mostly), again only when the stream's last
/// sequence (`stream_last`) changed since.
async fn sweep(
    stream: &async_nats::jetstream::stream::Stream,
    stream_last: u64,
    recorded: &mut HashMap<i64, String>,
    recorder: &mut Recorder,
) -> Result<(), Box<dyn std::error::Error>> {
    use async_nats::jetstream::consumer::DeliverPolicy;
    // Up to what the stream holds now (a stream that lost its tail ends before our last).
    let Some(end) = recorded
        .keys()
        .max()
        .map(|&last| last.min(i64::try_from(stream_last).unwrap_or(i64::MAX)))
        .filter(|&end| end > 0)
    else {
        return Ok(());
    };
    let consumer = pull_consumer(stream, DeliverPolicy::All).await?;
    let mut messages = consumer.messages().await?;
    let mut rewritten = 0;
    let read = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let seq = i64::try_from(info.stream_sequence)?;
            let id = signalbus::nats::message_id(&message).unwrap_or("-");
            if recorded.get(&seq).is_some_and(|was| was != id) {
                record_nats(recorder, recorded, &message, &info, seq)?;
                rewritten += 1;
            }
            if seq >= end {
                break;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .map_err(|_| "the sweep of the stream took over 60 s")??;
    if rewritten > 0 {
        eprintln!(
            "chaos consumer: {rewritten} stream sequences held other messages than recorded; recorded again"
        );
    }
    Ok(())
}

/// Every partition of `chaos`, each from the offset after the last recorded.
async fn kafka(
    broker: &str,
    last: &HashMap<i32, i64>,
    recorder: &mut Recorder,
) -> Result<(), Box<dyn std::error::Error>> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "chaos-consumer")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..KAFKA_PARTITIONS {
        let offset = match last.get(&p) {
            Some(o) => rdkafka::Offset::Offset(o + 1),
            None => rdkafka::Offset::Beginning,
        };
        assignment.add_partition_offset("chaos", p, offset)?;
    }
    consumer.assign(&assignment)?;
    loop {
        let message = consumer.recv().await?;
        let body = message.payload().unwrap_or_default();
        let id = signalbus::kafka::message_id(&message);
        let stored = message.timestamp().to_millis();
        let position = Some((message.partition(), message.offset()));
        recorder.record(body, position, stored, id, false)?;
    }
}

/// A Redis stream entry id (`ms-seq`) as one ordered number (ms × 2^20 + seq), the
/// position of a recorded line.
fn redis_position(entry_id: &str) -> Option<i64> {
    let (ms, seq) = entry_id.split_once('-')?;
    let (ms, seq): (i64, i64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq < 1 << 20).then_some((ms << 20) + seq)
}

/// The entry id of a [`redis_position`].
fn redis_entry_id(position: i64) -> String {
    format!("{}-{}", position >> 20, position & ((1 << 20) - 1))
}

/// The stream `chaos` with `XREAD` from the entry after the last recorded (no group, no
/// acks: the file is the position). The stream's own order is the order of record; an
/// entry's id says when Redis stored it.
async fn redis_stream(
    broker: &str,
    last: Option<i64>,
    recorder: &mut Recorder,
) -> Result<(), Box<dyn std::error::Error>> {
    use redis::streams::{StreamReadOptions, StreamReadReply};
    let client = redis::Client::open(format!("redis://{broker}"))?;
    // A read that hangs (a partition) fails after 10 s and ends this process (the slot
    // starts it again); redis-rs' default limit (500 ms) would race `BLOCK 500`.
    let limit = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&limit)
        .await?;
    let mut after = last.map_or_else(|| "0-0".to_owned(), redis_entry_id);
    let options = StreamReadOptions::default().count(500).block(500);
    loop {
        let ids = [after.as_str()];
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut conn, &["chaos"], &ids, &options).await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let position = redis_position(&entry.id)
                    .ok_or_else(|| format!("entry id {} is not ms-seq", entry.id))?;
                let field = |name: &str| match entry.map.get(name) {
                    Some(redis::Value::BulkString(bytes)) => Some(bytes.clone()),
                    _ => None,
                };
                let body = field("body").unwrap_or_default();
                let id = field("id").and_then(|b| String::from_utf8(b).ok());
                let stored = position >> 20;
                recorder.record(
                    &body,
                    Some((0, position)),
                    Some(stored),
                    id.as_deref(),
                    false,
                )?;
                after = entry.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redis_entry_id, redis_position};

    #[test]
    fn redis_entry_ids_keep_their_order_as_positions() {
        let ids = ["1700000000000-0", "1700000000000-7", "1700000000001-0"];
        let positions: Vec<i64> = ids.iter().map(|id| redis_position(id).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        for (id, p) in ids.iter().zip(&positions) {
            assert_eq!(redis_entry_id(*p), *id);
            assert_eq!(p >> 20, 1_700_000_000_000 + i64::from(id.ends_with("1-0")));
        }
        assert_eq!(redis_position("x-1"), None);
        assert_eq!(redis_position("1-1048576"), None);
    }
}
