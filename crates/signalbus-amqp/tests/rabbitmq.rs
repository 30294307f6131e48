//! Against the real RabbitMQ on 127.0.0.1:5672 (guest/guest; `rabbitmq-server -detached`).
//! Every test declares its own exchange and queue with a unique suffix and deletes them.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use signalbus_amqp::AmqpPublisher;
use signalbus_core::{Message, Publisher};
use signalbus_testkit::outcome::{reason, refused};
use signalbus_testkit::rabbitmq::close_connection_named;
use std::sync::Arc;
use std::time::Duration;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An exchange with one queue bound to `bound_key`, and a channel to read it back.
struct Fixture {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Fixture {
    async fn new(bound_key: &str, queue_args: FieldTable) -> Fixture {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
        let channel = conn.create_channel().await.unwrap();
        let exchange = unique("sbtest-x");
        let queue = unique("sbtest-q");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                queue_args,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                bound_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Fixture {
            _conn: conn,
            channel,
            exchange,
            queue,
        }
    }

    /// Everything in the queue, in order.
    async fn drain(&self) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m);
        }
        out
    }

    async fn cleanup(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
}

/// The message ids of `got`, each with how often it arrived.
fn arrivals(got: &[lapin::message::BasicGetMessage]) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for m in got {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn message(exchange: &str, key: &str, n: usize, headers: &[(&str, &str)]) -> Message {
    Message {
        id: format!("id-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: exchange.to_owned(),
        routing_key: Some(key.to_owned()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

#[tokio::test]
async fn batch_arrives_in_order_with_ids_headers_and_properties() {
    let fx = Fixture::new("order.placed", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(&format!("{URL}?app_id=sbtest"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..50)
        .map(|n| {
            message(
                &fx.exchange,
                "order.placed",
                n,
                &[
                    ("customer", "ada"),
                    ("amqp-correlation-id", "corr-1"),
                    ("amqp-priority", "3"),
                    ("amqp-type", "OrderPlaced"),
                ],
            )
        })
        .collect();
    publisher.publish(&batch).await.unwrap();
    let got = fx.drain().await;
    assert_eq!(got.len(), 50);
    for (sent, got) in batch.iter().zip(&got) {
        let p = &got.delivery.properties;
        assert_eq!(got.delivery.data, sent.body, "order and bodies kept");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), sent.id);
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "sbtest");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "corr-1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderPlaced");
        assert_eq!(*p.priority(), Some(3));
        assert_eq!(*p.delivery_mode(), Some(2), "persistent by default");
        assert!(p.timestamp().is_some());
        let headers = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.len(),
            1,
            "reserved headers are stripped: {headers:?}"
        );
        match headers.get("customer") {
            Some(AMQPValue::LongString(v)) => assert_eq!(v.to_string(), "ada"),
            other => panic!("customer header: {other:?}"),
        }
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn unroutable_messages_are_refused_by_default() {
    let fx = Fixture::new("order.placed", FieldTable::default()).await;
    // No parameter at all: an outbox must not lose a message under its default settings.
    let publisher = AmqpPublisher::connect(URL).await.unwrap();
    let batch = [
        message(&fx.exchange, "order.placed", 1, &[]),
        message(&fx.exchange, "nowhere", 2, &[]),
    ];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [1], "{outcome:?}");
    let why = reason(&outcome, 1);
    assert!(
        why.contains(&fx.exchange) && why.contains("`nowhere`") && why.contains("unroutable"),
        "{why}"
    );
    assert!(!why.contains("  "), "one space between words: {why}");
    // Opting out, named for what it does: RabbitMQ drops the message.
    let dropping = AmqpPublisher::connect(&format!("{URL}?unroutable=drop"))
        .await
        .unwrap();
    let outcome = dropping
        .publish(&[message(&fx.exchange, "nowhere", 3, &[])])
        .await
        .unwrap();
    assert!(
        outcome.is_all_stored(),
        "unroutable=drop: dropped by RabbitMQ"
    );
    // Per message (header) and per signal type (mandatory_signals) on a dropping publisher.
    let per_message = message(&fx.exchange, "nowhere", 4, &[("amqp-mandatory", "true")]);
    assert_eq!(
        refused(&dropping.publish(&[per_message]).await.unwrap()),
        [0]
    );
    let typed = AmqpPublisher::connect(&format!(
        "{URL}?unroutable=drop&mandatory_signals=order_placed"
    ))
    .await
    .unwrap();
    let outcome = typed
        .publish(&[message(&fx.exchange, "nowhere", 5, &[])])
        .await
        .unwrap();
    assert_eq!(refused(&outcome), [0]);
    // The channel survives returns: the next batch goes through.
    assert!(
        publisher
            .publish(&batch[..1])
            .await
            .unwrap()
            .is_all_stored()
    );
    assert_eq!(fx.drain().await.len(), 2);
    fx.cleanup().await;
}

/// Concurrent batches on clones of one publisher: a returned message is refused in its own
/// batch, never in another one, so an unroutable message is never counted as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_each_see_only_their_own_returns() {
    let fx = Fixture::new("order.placed", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(&format!("{URL}?mandatory=true"))
        .await
        .unwrap();
    for round in 0..100 {
        let good: Vec<Message> = (0..20)
            .map(|n| message(&fx.exchange, "order.placed", n, &[]))
            .collect();
        let bad = vec![message(&fx.exchange, "nowhere", round, &[])];
        let (a, b) = (publisher.clone(), publisher.clone());
        let (good_result, bad_result) = tokio::join!(
            tokio::spawn(async move { a.publish(&good).await }),
            tokio::spawn(async move { b.publish(&bad).await }),
        );
        let bad = bad_result.unwrap().unwrap();
        assert_eq!(
            refused(&bad),
            [0],
            "round {round}: the unroutable message counted as stored"
        );
        let good = good_result
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: a routable batch failed: {e}"));
        assert!(good.is_all_stored(), "round {round}: {good:?}");
    }
    assert_eq!(fx.drain().await.len(), 100 * 20);
    fx.cleanup().await;
}

#[tokio::test]
async fn nacked_messages_are_not_sent() {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let fx = Fixture::new("k", args).await;
    let publisher = AmqpPublisher::connect(URL).await.unwrap();
    let batch: Vec<_> = (0..4).map(|n| message(&fx.exchange, "k", n, &[])).collect();
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [2, 3], "the queue holds 2: {outcome:?}");
    assert!(reason(&outcome, 2).contains("nacked"), "{outcome:?}");
    assert_eq!(fx.drain().await.len(), 2);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_missing_exchange_is_named_and_the_publisher_recovers() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(URL).await.unwrap();
    let missing = unique("sbtest-missing");
    let outcome = publisher
        .publish(&[message(&missing, "k", 1, &[])])
        .await
        .unwrap();
    assert_eq!(refused(&outcome), [0]);
    let why = reason(&outcome, 0);
    assert!(
        why.contains(&format!("no exchange `{missing}`")) && why.contains("`k`"),
        "{why}"
    );
    let outcome = publisher
        .publish(&[message(&fx.exchange, "k", 2, &[])])
        .await
        .unwrap();
    assert!(outcome.is_all_stored(), "{outcome:?}");
    assert_eq!(fx.drain().await.len(), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn reconnects_after_the_server_closed_the_connection() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let name = unique("sbtest-conn");
    let publisher = AmqpPublisher::connect(&format!("{URL}?app_id={name}&timeout_ms=3000"))
        .await
        .unwrap();
    publisher
        .publish(&[message(&fx.exchange, "k", 1, &[])])
        .await
        .unwrap();
    close_connection_named(&name);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A batch may fail while the loss is noticed (it stays pending); one soon goes through.
    let mut sent = 1;
    let mut ok = false;
    for n in 2..6 {
        match publisher
            .publish(&[message(&fx.exchange, "k", n, &[])])
            .await
        {
            Ok(outcome) => {
                assert!(outcome.is_all_stored(), "{outcome:?}");
                sent += 1;
                ok = true;
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert!(ok, "the publisher did not reconnect");
    // A batch that failed while the connection went away may have reached the queue anyway
    // (at-least-once): every confirmed one must be there, extras are allowed.
    let drained = fx.drain().await.len();
    assert!(drained >= sent, "{drained} drained, {sent} confirmed");
    fx.cleanup().await;
}

/// A TCP proxy to the shared RabbitMQ that the test can cut: its port, and a handle whose
/// abort closes the listener and every connection through it.
async fn cuttable_proxy() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            conns.spawn(async move {
                let mut broker = tokio::net::TcpStream::connect("127.0.0.1:5672")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            });
        }
    });
    (port, task)
}

/// A connection that breaks under the publisher fails the whole call (retryable), even with
/// a message in the batch that RabbitMQ would refuse: nothing is reported stored or refused.
#[tokio::test]
async fn a_broken_connection_fails_the_whole_call() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let (port, proxy) = cuttable_proxy().await;
    let publisher = AmqpPublisher::connect(&format!(
        "amqp://guest:guest@127.0.0.1:{port}/%2f?mandatory=true&timeout_ms=2000"
    ))
    .await
    .unwrap();
    let batch = [
        message(&fx.exchange, "k", 1, &[]),
        message(&fx.exchange, "nowhere", 2, &[]),
    ];
    assert_eq!(refused(&publisher.publish(&batch).await.unwrap()), [1]);
    proxy.abort();
    let _ = proxy.await;
    let e = publisher.publish(&batch).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    fx.cleanup().await;
}

/// A URL naming several nodes: a node that does not answer is skipped, and when the node in
/// use goes away the publisher reconnects to another (each node here is a proxy to the
/// shared broker, so every message lands in one queue).
#[tokio::test]
async fn a_cluster_url_skips_a_dead_node_and_fails_over() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let dead = signalbus_testkit::nats::free_port();
    let (a, node_a) = cuttable_proxy().await;
    let (b, _node_b) = cuttable_proxy().await;
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{dead},127.0.0.1:{a},127.0.0.1:{b}/%2f?timeout_ms=2000"
    );
    let publisher = AmqpPublisher::connect(&url).await.unwrap();
    publisher
        .publish(&[message(&fx.exchange, "k", 1, &[])])
        .await
        .expect("the first node is dead: the second takes the connection");
    node_a.abort();
    let _ = node_a.await;
    let mut sent = 1;
    for n in 2..8 {
        match publisher
            .publish(&[message(&fx.exchange, "k", n, &[])])
            .await
        {
            Ok(outcome) => {
                assert!(outcome.is_all_stored(), "{outcome:?}");
                sent += 1;
                if sent == 3 {
                    break;
                }
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert_eq!(sent, 3, "the publisher did not move to the third node");
    let drained = fx.drain().await.len();
    assert!(drained >= sent, "{drained} drained, {sent} confirmed");
    fx.cleanup().await;
}

#[tokio::test]
async fn bad_urls_say_which_part_is_wrong_without_the_password() {
    let cases = [
        (
            "amqp://guest:hunter2@127.0.0.1:1/%2f",
            "cannot reach RabbitMQ at 127.0.0.1:1",
        ),
        (
            "amqp://guest:hunter2@no-such-host.invalid:5672/%2f",
            "no-such-host.invalid",
        ),
        (
            "amqp://guest:hunter2@127.0.0.1:5672/%2f",
            "credentials of user `guest`",
        ),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "vhost"),
        ("http://guest:hunter2@127.0.0.1/", "scheme `http:`"),
    ];
    for (url, expected) in cases {
        let e = AmqpPublisher::connect(url).await.unwrap_err().to_string();
        eprintln!("{e}");
        assert!(e.contains(expected), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[tokio::test]
async fn a_bad_reserved_header_refuses_that_message_without_sending_it() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(URL).await.unwrap();
    let batch = [
        message(&fx.exchange, "k", 1, &[]),
        message(&fx.exchange, "k", 2, &[("amqp-priority", "high")]),
    ];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [1]);
    assert!(reason(&outcome, 1).contains("amqp-priority"), "{outcome:?}");
    let got = fx.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery.data, batch[0].body);
    fx.cleanup().await;
}

/// One unroutable message in the middle of a mandatory batch: exactly it is refused, with a
/// reason naming where it went (never its body), and the others arrive once each.
#[tokio::test]
async fn one_unroutable_message_is_refused_and_the_rest_arrive_once() {
    let fx = Fixture::new("order.placed", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(&format!("{URL}?mandatory=true"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..10)
        .map(|n| {
            let key = if n == 6 { "nowhere" } else { "order.placed" };
            message(&fx.exchange, key, n, &[])
        })
        .collect();
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [6], "{outcome:?}");
    let why = reason(&outcome, 6);
    assert!(
        why.starts_with("unroutable: no queue bound for routing key `nowhere`")
            && why.contains(&fx.exchange),
        "{why}"
    );
    assert!(!why.contains(r#""n":6"#), "no body in the reason: {why}");
    let expected: std::collections::BTreeMap<String, usize> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 6)
        .map(|(_, m)| (m.id.clone(), 1))
        .collect();
    assert_eq!(arrivals(&fx.drain().await), expected);
    fx.cleanup().await;
}

/// A message to an exchange that does not exist makes RabbitMQ close the channel (404): that
/// message is refused, naming the exchange, and the others of the batch are still stored
/// (published again on a fresh channel when the closing lost their confirm). Messages
/// published before the culprit whose confirm the closing lost can arrive twice
/// (at-least-once; their `message_id` is the same), so only their arrival is checked; the
/// ones after it, which RabbitMQ dropped with the channel, arrive exactly once.
#[tokio::test]
async fn a_message_to_a_missing_exchange_is_refused_and_the_others_are_stored() {
    let fx = Fixture::new("k", FieldTable::default()).await;
    let publisher = AmqpPublisher::connect(URL).await.unwrap();
    let missing = unique("sbtest-missing");
    let batch: Vec<Message> = (0..8)
        .map(|n| {
            let exchange = if n == 3 { &missing } else { &fx.exchange };
            message(exchange, "k", n, &[])
        })
        .collect();
    // On a busy machine the closing can also cost the connection: that call fails as a
    // whole (retryable, nothing counts as stored) and the batch is sent again, as the flush
    // engine would; its messages may then arrive twice.
    let mut retried = false;
    let outcome = loop {
        match publisher.publish(&batch).await {
            Ok(outcome) => break outcome,
            Err(e) if e.is_retryable() && !retried => {
                eprintln!("publish failed as a whole, sending the batch again: {e}");
                retried = true;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused(&outcome), [3], "{outcome:?}");
    let why = reason(&outcome, 3);
    assert!(why.contains(&format!("no exchange `{missing}`")), "{why}");
    let got = arrivals(&fx.drain().await);
    for (i, m) in batch.iter().enumerate() {
        let times = got.get(&m.id).copied().unwrap_or(0);
        match i {
            3 => assert_eq!(times, 0),
            0..3 => assert!(times >= 1, "message {i} stored but not there"),
            _ if retried => assert!(times >= 1, "message {i} stored but not there"),
            _ => assert_eq!(times, 1, "message {i}"),
        }
    }
    // The publisher goes on (on a new connection: the closed channel was one of its own).
    let next = publisher
        .publish(&[message(&fx.exchange, "k", 9, &[])])
        .await
        .unwrap();
    assert!(next.is_all_stored(), "{next:?}");
    fx.cleanup().await;
}
