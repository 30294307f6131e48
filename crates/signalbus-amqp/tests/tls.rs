//! `amqps://` against the real RabbitMQ: the shared broker on 127.0.0.1:5672 listens without
//! TLS and its configuration is never changed, so each test runs a TLS-terminating proxy in
//! front of it with certificates from a CA made for that test (rcgen). The proxy requires a
//! client certificate from the same CA, so one run checks the server verification
//! (`cacertfile`), the client certificate (`certfile`, `keyfile`) and what the error says
//! when the CA is not trusted.

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use signalbus_amqp::AmqpPublisher;
use signalbus_core::{Message, Publisher};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};

const PLAIN: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BROKER: &str = "127.0.0.1:5672";

/// A CA, a server certificate for 127.0.0.1 and a client certificate: the CA and the client's
/// files are written to `dir`; returns the proxy's TLS configuration, which requires a client
/// certificate from that CA.
fn make_pki(dir: &Path) -> ServerConfig {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "signalbus test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    server_params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "signalbus test client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap()
}

/// Accept TLS on a free port of 127.0.0.1 and forward the plain stream to RabbitMQ.
async fn start_proxy(config: ServerConfig) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (untrusted CA, no client certificate) just ends here.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut broker = tokio::net::TcpStream::connect(BROKER)
                    .await
                    .expect("RabbitMQ must run on 127.0.0.1:5672");
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    port
}

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
    let port = start_proxy(make_pki(dir.path())).await;
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
