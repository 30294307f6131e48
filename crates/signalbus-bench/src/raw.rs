//! `raw`: the broker's own ceiling, measured with the same client, batch size and durability
//! as signalbus' publisher but without signalbus (nor a database) in between: lapin with
//! persistent messages and pipelined confirms, async-nats awaiting every JetStream ack,
//! rdkafka with an idempotent `acks=all` producer, redis-rs with one pipeline of `XADD`s per
//! batch (the fields signalbus writes, `MAXLEN ~ 200000`). Also declares the topology the other
//! benchmarks publish to (destination `bench`, routing key `order.placed`).

use crate::stats::{Latencies, emit, round2};
use futures_util::future::join_all;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// `amqp://…`, `nats://…`, `kafka://host:port`, `redis://host:port`, `http://host:port/`
    /// (a `receiver`) or `sqs://REGION?endpoint=…`.
    #[arg(long, env = "SIGNALBUS_BUS_URL")]
    pub bus: String,
    /// Messages per batch (one wait for all confirms per batch).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Only declare the `bench` exchange/queue, stream or topic, then exit.
    #[arg(long)]
    pub setup_only: bool,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The signing key of the webhook benchmarks (`?secret=` of their bus URL): fixed, as the
/// receiver does not check it.
pub const WEBHOOK_SECRET: &str = "whsec_YmVuY2gtb25seS1zaWduYWxidXMtd2ViaG9vaw==";

/// Destination, routing key and body size of the other benchmarks' signal.
pub const DESTINATION: &str = "bench";
pub const ROUTING_KEY: &str = "order.placed";
const BODY: &[u8] = br#"{"order_id":1234567,"amount":567}"#;

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let scheme = args.bus.split("://").next().unwrap_or_default().to_owned();
    let result = match scheme.as_str() {
        "amqp" | "amqps" => amqp(&args).await,
        "nats" => nats(&args).await,
        "kafka" => kafka(&args).await,
        "redis" | "rediss" => redis(&args).await,
        "http" | "https" => crate::raw_sinks::webhook(&args).await,
        "sqs" => crate::raw_sinks::sqs(&args).await,
        other => Err(format!(
            "raw needs an amqp://, nats://, kafka://, redis://, http:// or sqs:// bus, not \
             `{other}:`"
        )
        .into()),
    };
    result.map_err(|e| e as Box<dyn std::error::Error>)
}

/// Publish batches until the time is up; `publish` sends one batch and waits for it.
pub async fn measure<F, Fut>(args: &Args, bus: &str, mut publish: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        publish().await?;
        latencies.push(t0.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = latencies.len() * args.batch;
    emit(serde_json::json!({
        "bench": "raw",
        "bus": bus,
        "batch": args.batch,
        "messages": messages,
        "seconds": round2(secs),
        "msgs_per_s": round2(messages as f64 / secs),
        "batch_p50_ms": round2(latencies.percentile_ms(50.0)),
        "batch_p99_ms": round2(latencies.percentile_ms(99.0)),
    }));
    Ok(())
}

async fn amqp(args: &Args) -> Result<(), BoxError> {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
    let conn = Connection::connect(&args.bus, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            DESTINATION.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Bounded, so that benchmark runs never fill the broker's disk.
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-max-length".into(), AMQPValue::LongInt(200_000));
    queue_args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(DESTINATION.into(), queue, queue_args)
        .await?;
    channel
        .queue_bind(
            DESTINATION.into(),
            DESTINATION.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if args.setup_only {
        return Ok(());
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut n = 0u64;
    measure(args, "amqp", || {
        let channel = channel.clone();
        let start = n;
        n += args.batch as u64;
        async move {
            let mut confirms = Vec::with_capacity(args.batch);
            for i in start..start + args.batch as u64 {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(i.to_string().into())
                    .with_content_type("application/json".into());
                confirms.push(
                    channel
                        .basic_publish(
                            DESTINATION.into(),
                            ROUTING_KEY.into(),
                            BasicPublishOptions::default(),
                            BODY,
                            props,
                        )
                        .await?,
                );
            }
            for confirm in join_all(confirms).await {
                if !matches!(confirm?, Confirmation::Ack(None)) {
                    return Err("a message was not acked".into());
                }
            }
            Ok(())
        }
    })
    .await?;
    channel
        .queue_purge(DESTINATION.into(), QueuePurgeOptions::default())
        .await?;
    Ok(())
}

async fn nats(args: &Args) -> Result<(), BoxError> {
    use async_nats::jetstream::{self, message::PublishMessage, stream};
    let client = async_nats::connect(args.bus.as_str()).await?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec![DESTINATION.into(), format!("{DESTINATION}.>")],
        max_messages: 200_000,
        ..Default::default()
    })
    .await?;
    if args.setup_only {
        return Ok(());
    }
    let subject = format!("{DESTINATION}.{ROUTING_KEY}");
    let mut n = 0u64;
    measure(args, "nats", || {
        let (js, subject) = (js.clone(), subject.clone());
        let start = n;
        n += args.batch as u64;
        async move {
            let mut acks = Vec::with_capacity(args.batch);
            for i in start..start + args.batch as u64 {
                let publish = PublishMessage::build()
                    .payload(bytes::Bytes::from_static(BODY))
                    .message_id(i.to_string());
                acks.push(
                    js.send_publish(subject.clone(), publish)
                        .await?
                        .into_future(),
                );
            }
            for ack in join_all(acks).await {
                ack?;
            }
            Ok(())
        }
    })
    .await?;
    js.get_stream("BENCH").await?.purge().await?;
    Ok(())
}

async fn kafka(args: &Args) -> Result<(), BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let servers = args
        .bus
        .trim_start_matches("kafka://")
        .split('?')
        .next()
        .unwrap_or_default();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", servers);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let topic = NewTopic::new(DESTINATION, 1, TopicReplication::Fixed(1));
    // Already existing is fine.
    let _ = admin.create_topics(&[topic], &AdminOptions::new()).await?;
    if args.setup_only {
        return Ok(());
    }
    let producer: FutureProducer = config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let mut n = 0u64;
    measure(args, "kafka", || {
        let producer = producer.clone();
        let start = n;
        n += args.batch as u64;
        async move {
            let mut reports = Vec::with_capacity(args.batch);
            for i in start..start + args.batch as u64 {
                let key = i.to_string();
                let record = FutureRecord::to(DESTINATION).key(&key).payload(BODY);
                reports.push(producer.send_result(record).map_err(|(e, _)| e)?);
            }
            for report in join_all(reports).await {
                report?.map_err(|(e, _)| e)?;
            }
            Ok(())
        }
    })
    .await
}

/// Bound of the `bench` stream (`MAXLEN ~`): give the other benchmarks' Redis bus URL
/// `?maxlen=200000` too, so that both trim alike and runs never fill the server's memory.
pub const REDIS_MAXLEN: u64 = 200_000;

async fn redis(args: &Args) -> Result<(), BoxError> {
    let url = args.bus.split('?').next().unwrap_or_default();
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    if args.setup_only {
        return Ok(());
    }
    measure(args, "redis", || {
        let mut connection = connection.clone();
        async move {
            let mut pipe = redis::pipe();
            for _ in 0..args.batch {
                pipe.cmd("XADD")
                    .arg(DESTINATION)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(REDIS_MAXLEN)
                    .arg("*")
                    .arg("id")
                    .arg(uuid::Uuid::now_v7().to_string())
                    .arg("signal")
                    .arg("order_placed")
                    .arg("routing-key")
                    .arg(ROUTING_KEY)
                    .arg("content-type")
                    .arg("application/json")
                    .arg("body")
                    .arg(BODY);
            }
            let ids: Vec<String> = pipe.query_async(&mut connection).await?;
            if ids.len() != args.batch {
                return Err("Redis did not answer every XADD".into());
            }
            Ok(())
        }
    })
    .await?;
    let _: i64 = redis::cmd("DEL")
        .arg(DESTINATION)
        .query_async(&mut connection)
        .await?;
    Ok(())
}
