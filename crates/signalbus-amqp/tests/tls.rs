//! `amqps://` against the real RabbitMQ: the shared broker on 127.0.0.1:5672 listens without
//! TLS and its configuration is never changed, so each test runs a TLS-terminating proxy in
//! front of it with certificates from a CA made for that test (rcgen). The proxy requires a
//! client certificate from the same CA, so one run checks the server verification
//! (`cacertfile`), the client certificate (`certfile`, `keyfile`) and what the error says
//! when the CA is not trusted.

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use signalbus_amqp::AmqpPublisher;
use signalbus_core::{Message, Publisher};
use signalbus_testkit::tls::{TestCa, proxy};
use std::sync::Arc;

const PLAIN: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BROKER: &str = "127.0.0.1:5672";

fn message(queue: &str, n: usize) -> Message {
    Message {
        id: format!("tls-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: String::new(), // the default exchange: routed to the queue by name
        routing_key: Some(queue.to_owned()),
        headers: Default::default(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

#[tokio::test]
async fn amqps_verifies_the_broker_and_presents_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // The proxy requires a client certificate of the test's CA.
    let port = proxy(TestCa::new(dir.path()).server_requiring_clients(), BROKER).await;
    let d = dir.path().display();

    // The broker's certificate comes from a CA the system does not trust.
    let e = AmqpPublisher::connect(&format!(
        "amqps://guest:guest@127.0.0.1:{port}/%2f?timeout_ms=5000"
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("TLS handshake") && e.contains("cacertfile") && !e.contains("guest:guest"),
        "{e}"
    );

    // Trusting the CA is not enough: this broker also wants a client certificate.
    let e = AmqpPublisher::connect(&format!(
        "amqps://guest:guest@127.0.0.1:{port}/%2f?timeout_ms=5000&cacertfile={d}/ca.pem"
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("TLS handshake") && e.contains("certfile") && !e.contains("guest:guest"),
        "{e}"
    );

    let queue = format!("sbtest-tls-{}", uuid::Uuid::new_v4().simple());
    let plain = Connection::connect(PLAIN, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672");
    let channel = plain.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let publisher = AmqpPublisher::connect(&format!(
        "amqps://guest:guest@127.0.0.1:{port}/%2f?timeout_ms=5000&cacertfile={d}/ca.pem\
         &certfile={d}/client.pem&keyfile={d}/client.key"
    ))
    .await
    .expect("the CA and the client certificate are accepted");
    let batch: Vec<_> = (0..5).map(|n| message(&queue, n)).collect();
    publisher.publish(&batch).await.unwrap();

    for sent in &batch {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("every confirmed message is in the queue");
        assert_eq!(got.delivery.data, sent.body, "order kept");
        assert_eq!(
            got.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(sent.id.as_str())
        );
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[test]
fn tls_files_are_checked_when_the_url_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let from_url = |url: String| {
        signalbus_amqp::AmqpOptions::from_url(&url)
            .unwrap_err()
            .to_string()
    };
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let missing = dir.path().join("nope.pem").display().to_string();
    let e = from_url(format!("amqps://u:secret@h/%2f?cacertfile={missing}"));
    assert!(
        e.contains("cannot read `cacertfile`") && !e.contains("secret"),
        "{e}"
    );
    let text = file("ca.txt", "not a certificate");
    let e = from_url(format!("amqps://h/%2f?cacertfile={text}"));
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let cert = file(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let e = from_url(format!("amqp://h/%2f?cacertfile={cert}"));
    assert!(e.contains("use `amqps://`"), "{e}");
    let e = from_url(format!("amqps://h/%2f?certfile={cert}"));
    assert!(e.contains("needs both `certfile` and `keyfile`"), "{e}");
    let encrypted = file(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let e = from_url(format!("amqps://h/%2f?certfile={cert}&keyfile={encrypted}"));
    assert!(e.contains("encrypted key"), "{e}");
    let e = from_url(format!("amqps://h/%2f?certfile={cert}&keyfile={cert}"));
    assert!(e.contains("holds no PEM private key"), "{e}");
}
