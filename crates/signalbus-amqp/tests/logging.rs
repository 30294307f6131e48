//! What lapin logs when RabbitMQ returns a message, against the real RabbitMQ on
//! 127.0.0.1:5672. lapin logs every returned message at `warn` (target
//! `lapin::returned_messages`, "Server returned us a message") with its `Debug` form: the
//! body (as bytes) and every property and header. That happens inside lapin as the frames
//! arrive, before the publisher sees the return, so the publisher cannot stop it; the crate
//! docs tell applications to filter that target. This test checks that the filter the docs
//! give keeps bodies and headers out of the log while a plain `warn` shows them. Its own
//! binary, because it installs the process' global subscriber.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use signalbus_amqp::AmqpPublisher;
use signalbus_core::{Message, Publisher};
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The filter the crate docs recommend.
const RECOMMENDED: &str = "warn,lapin::returned_messages=error";

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn layer<S>(sink: &Sink, filter: &str) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let sink = sink.clone();
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .with_filter(EnvFilter::new(filter))
}

#[tokio::test]
async fn the_recommended_filter_keeps_returned_bodies_and_headers_out_of_the_log() {
    let (plain, recommended) = (Sink::default(), Sink::default());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(layer(&plain, "warn"))
            .with(layer(&recommended, RECOMMENDED)),
    )
    .unwrap();

    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
    let channel = conn.create_channel().await.unwrap();
    let exchange = format!("sbtest-x-{}", uuid::Uuid::new_v4().simple());
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let publisher = AmqpPublisher::connect(&format!("{URL}?mandatory=true"))
        .await
        .unwrap();
    let body = br#"{"card":"4111-secret"}"#.to_vec();
    let header = "header-secret-7";
    let message = Message {
        id: uuid::Uuid::new_v4().to_string(),
        signal: Arc::from("payment_taken"),
        destination: exchange.clone(),
        routing_key: Some("nowhere".into()),
        headers: [("note".to_owned(), header.to_owned())].into(),
        body: body.clone(),
        content_type: Some("application/json".into()),
    };
    let outcome = publisher.publish(&[message]).await.unwrap();
    assert_eq!(outcome.refused().len(), 1, "{outcome:?}");
    assert!(
        !outcome.refused()[0].reason.contains("secret"),
        "{outcome:?}"
    );
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    // The Debug form of bytes: how lapin prints the body and header values.
    let as_logged = |bytes: &[u8]| format!("{bytes:?}").trim_matches(['[', ']']).to_owned();
    let secrets = [as_logged(&body), as_logged(header.as_bytes())];
    let plain = plain.text();
    eprintln!("with `warn`:\n{plain}");
    assert!(
        plain.contains("Server returned us a message") && secrets.iter().all(|s| plain.contains(s)),
        "lapin no longer logs returned bodies at warn; update the crate docs: {plain}"
    );
    let recommended = recommended.text();
    eprintln!("with `{RECOMMENDED}`:\n{recommended}");
    assert!(
        secrets.iter().all(|s| !recommended.contains(s)),
        "the recommended filter lets the body or headers through: {recommended}"
    );
}
