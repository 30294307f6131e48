//! Against real NATS + JetStream: the shared server on 127.0.0.1:4222, and for the restart
//! test a private `nats-server` on a free port (the shared one is never stopped). Every test
//! uses its own stream and subjects, and deletes the stream.

use async_nats::jetstream::{self, stream};
use signalbus_core::{Message, Publisher};
use signalbus_nats::NatsPublisher;
use signalbus_testkit::nats::{PrivateServer, free_port};
use signalbus_testkit::outcome::{reason, refused};
use std::sync::Arc;
use std::time::Duration;

const URL: &str = "nats://127.0.0.1:4222";

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn message(subject_root: &str, n: usize) -> Message {
    Message {
        id: format!("id-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: subject_root.to_owned(),
        routing_key: Some("placed".into()),
        headers: [("customer".to_owned(), format!("c{n}"))].into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

async fn create_stream(js: &jetstream::Context, name: &str, root: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{root}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("JetStream must be enabled (nats-server -js)")
}

async fn shared() -> (NatsPublisher, jetstream::Context) {
    let publisher = NatsPublisher::connect(URL)
        .await
        .expect("NATS must run on 127.0.0.1:4222 with -js");
    let js = jetstream::new(publisher.client().clone());
    (publisher, js)
}

#[tokio::test]
async fn batch_is_acked_and_reads_back_in_order_with_ids_and_headers() {
    let (publisher, js) = shared().await;
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let mut stream = create_stream(&js, &name, &root).await;
    let batch: Vec<_> = (0..30).map(|n| message(&root, n)).collect();
    publisher.publish(&batch).await.unwrap();
    for (seq, sent) in (1..).zip(&batch) {
        let got = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(got.subject.as_str(), format!("{root}.placed"));
        assert_eq!(got.payload.as_ref(), sent.body.as_slice(), "order kept");
        assert_eq!(got.headers.get("Nats-Msg-Id").unwrap().as_str(), sent.id);
        assert_eq!(
            got.headers.get("customer").unwrap().as_str(),
            sent.headers["customer"]
        );
        assert_eq!(
            got.headers.get("Content-Type").unwrap().as_str(),
            "application/json"
        );
    }
    // A re-send of the same messages (a crash before the rows were deleted) is dropped.
    publisher.publish(&batch).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 30);
    js.delete_stream(&name).await.unwrap();
}

/// The `Nats-Msg-Id`s of everything in `stream`, in order.
async fn stored_ids(stream: &mut stream::Stream) -> Vec<String> {
    let count = stream.info().await.unwrap().state.messages;
    let mut ids = Vec::new();
    for seq in 1..=count {
        let got = stream.get_raw_message(seq).await.unwrap();
        ids.push(got.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned());
    }
    ids
}

/// The ids of `batch` but the one at `skip`, in order.
fn ids_but(batch: &[Message], skip: usize) -> Vec<String> {
    let others = batch.iter().enumerate().filter(|(i, _)| *i != skip);
    others.map(|(_, m)| m.id.clone()).collect()
}

#[tokio::test]
async fn a_subject_without_stream_is_refused_until_a_stream_exists() {
    let (publisher, js) = shared().await;
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let batch = [message(&root, 1), message(&root, 2)];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [0, 1]);
    let why = reason(&outcome, 0);
    assert!(why.contains(&format!("`{root}.placed`")), "{why}");
    let mut stream = create_stream(&js, &name, &root).await;
    assert!(publisher.publish(&batch).await.unwrap().is_all_stored());
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    js.delete_stream(&name).await.unwrap();
}

/// One message to a subject no stream captures, in the middle of a batch: exactly it is
/// refused, naming the subject (never the body), and the others are stored once each.
#[tokio::test]
async fn one_message_without_stream_is_refused_and_the_rest_are_stored_once() {
    let (publisher, js) = shared().await;
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let mut stream = create_stream(&js, &name, &root).await;
    let elsewhere = unique("sbtest_nostream");
    let batch: Vec<_> = (0..8)
        .map(|n| message(if n == 5 { &elsewhere } else { &root }, n))
        .collect();
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [5], "{outcome:?}");
    let why = reason(&outcome, 5);
    assert!(
        why.contains(&format!("`{elsewhere}.placed`")) && why.contains("no JetStream stream"),
        "{why}"
    );
    assert!(!why.contains(r#""n":5"#), "no body in the reason: {why}");
    assert_eq!(stored_ids(&mut stream).await, ids_but(&batch, 5));
    js.delete_stream(&name).await.unwrap();
}

/// A message larger than the stream's `max_msg_size`: the stream's error refuses it alone.
#[tokio::test]
async fn a_message_over_the_streams_size_limit_is_refused_alone() {
    let (publisher, js) = shared().await;
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let mut stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{root}.>")],
            max_message_size: 512,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch: Vec<_> = (0..4).map(|n| message(&root, n)).collect();
    batch[1].body = vec![b'x'; 2048];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [1], "{outcome:?}");
    let why = reason(&outcome, 1);
    assert!(why.contains(&format!("`{root}.placed`")), "{why}");
    assert!(!why.contains("xxxx"), "no body in the reason: {why}");
    assert_eq!(stored_ids(&mut stream).await, ids_but(&batch, 1));
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn a_restarted_server_loses_nothing_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = PrivateServer::start(port, dir.path());
    server.wait_ready().await;
    let publisher = NatsPublisher::connect(&format!("nats://127.0.0.1:{port}?timeout_ms=1000"))
        .await
        .unwrap();
    let js = jetstream::new(publisher.client().clone());
    let root = unique("sbtest");
    let mut stream = create_stream(&js, "RESTART", &root).await;
    publisher.publish(&[message(&root, 0)]).await.unwrap();

    let (port, path) = server.stop();
    let pending = [message(&root, 1), message(&root, 2)];
    let e = publisher.publish(&pending).await.unwrap_err();
    assert!(e.is_retryable(), "a down server is worth retrying: {e}");

    let server = PrivateServer::start(port, &path);
    server.wait_ready().await;
    let mut sent = false;
    for _ in 0..40 {
        if publisher.publish(&pending).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent, "the client did not reconnect");
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "stored once each"
    );
    server.stop();
}

/// Publish one message through `url` to a fresh stream; Ok when JetStream stored it.
async fn publish_one(url: &str) -> Result<(), String> {
    let publisher = NatsPublisher::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(publisher.client().clone());
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let mut stream = create_stream(&js, &name, &root).await;
    publisher
        .publish(&[message(&root, 1)])
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    Ok(())
}

#[tokio::test]
async fn user_password_and_token_credentials_are_used_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = PrivateServer::start_with(
        port,
        dir.path(),
        &["--user", "sbuser", "--pass", "s3cret-pw"],
    );
    server.wait_ready().await;
    publish_one(&format!(
        "nats://sbuser:s3cret-pw@127.0.0.1:{port}?timeout_ms=3000"
    ))
    .await
    .expect("the right user and password are accepted");
    for url in [
        format!("nats://sbuser:wrong-pw@127.0.0.1:{port}?timeout_ms=3000"),
        format!("nats://127.0.0.1:{port}?timeout_ms=3000"),
    ] {
        let e = publish_one(&url).await.unwrap_err();
        assert!(
            e.contains("refused the credentials") && !e.contains("wrong-pw"),
            "{url}: {e}"
        );
    }
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = PrivateServer::start_with(port, dir.path(), &["--auth", "t0ken-abc"]);
    server.wait_ready().await;
    publish_one(&format!(
        "nats://127.0.0.1:{port}?token=t0ken-abc&timeout_ms=3000"
    ))
    .await
    .expect("the right token is accepted");
    publish_one(&format!(
        "nats://t0ken-abc@127.0.0.1:{port}?timeout_ms=3000"
    ))
    .await
    .expect("a token before `@` is a token");
    let e = publish_one(&format!(
        "nats://127.0.0.1:{port}?token=t0ken-bad&timeout_ms=3000"
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("refused the credentials") && !e.contains("t0ken-bad"),
        "{e}"
    );
    server.stop();
}

#[tokio::test]
async fn bad_urls_say_why_without_the_password() {
    let e = NatsPublisher::connect("nats://u:hunter2@127.0.0.1:1?timeout_ms=2000")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NATS") && e.contains("127.0.0.1:1") && !e.contains("hunter2"),
        "{e}"
    );
    let e = NatsPublisher::connect("nats://u:hunter2@127.0.0.1:4222?nope=1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown query parameter `nope`") && !e.contains("hunter2"),
        "{e}"
    );
}

#[tokio::test]
async fn a_header_nats_cannot_carry_refuses_that_message_without_sending_it() {
    let (publisher, js) = shared().await;
    let (name, root) = (unique("SBTEST"), unique("sbtest"));
    let mut stream = create_stream(&js, &name, &root).await;
    let mut bad = message(&root, 2);
    bad.headers.insert("bad:name".into(), "x".into());
    let batch = [message(&root, 1), bad];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [1]);
    assert!(reason(&outcome, 1).contains("bad:name"), "{outcome:?}");
    assert_eq!(stored_ids(&mut stream).await, ids_but(&batch, 1));
    js.delete_stream(&name).await.unwrap();
}

/// A message over the server's `max_payload` (a private server configured with 1 KiB) is
/// refused before it is sent; the others are stored.
#[tokio::test]
async fn a_message_over_the_servers_max_payload_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 1024\n").unwrap();
    let port = free_port();
    let server = PrivateServer::start_with(port, dir.path(), &["-c", conf.to_str().unwrap()]);
    server.wait_ready().await;
    let publisher = NatsPublisher::connect(&format!("nats://127.0.0.1:{port}?timeout_ms=3000"))
        .await
        .unwrap();
    let js = jetstream::new(publisher.client().clone());
    let root = unique("sbtest");
    let mut stream = create_stream(&js, "PAYLOAD", &root).await;
    let mut batch: Vec<_> = (0..3).map(|n| message(&root, n)).collect();
    batch[2].body = vec![b'x'; 4096];
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [2], "{outcome:?}");
    let why = reason(&outcome, 2);
    assert!(
        why.contains("larger than the server allows") && why.contains(&root),
        "{why}"
    );
    // It would be too large on every attempt: parked at once, not retried ten times.
    assert!(outcome.refused()[0].permanent, "{outcome:?}");
    assert_eq!(stored_ids(&mut stream).await, ids_but(&batch, 2));
    // Likewise a header name NATS cannot carry.
    let mut bad = message(&root, 3);
    bad.headers.insert("bad name:".into(), "v".into());
    let outcome = publisher.publish(&[bad]).await.unwrap();
    assert_eq!(refused(&outcome), [0], "{outcome:?}");
    assert!(outcome.refused()[0].permanent, "{outcome:?}");
    server.stop();
}

/// A three-node cluster of private servers under `dir` and a stream of three replicas on it,
/// every replica current; a publisher whose URL names every node (`timeout_ms=2000`).
struct Cluster {
    ports: Vec<u16>,
    servers: Vec<Option<PrivateServer>>,
    publisher: NatsPublisher,
    stream: stream::Stream,
    root: String,
}

/// How many messages `stream` holds, asked for up to 20 s until it holds `expected`: after a
/// node was killed or frozen, the stream may elect its leader again, and its info can time
/// out meanwhile.
async fn messages_once_settled(stream: &mut stream::Stream, expected: u64) -> u64 {
    let mut stored = 0;
    for _ in 0..80 {
        if let Ok(info) = stream.info().await {
            stored = info.state.messages;
            if stored == expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stored
}

async fn r3_cluster(dir: &std::path::Path) -> Cluster {
    use signalbus_testkit::nats::cluster_args;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Option<PrivateServer>> = Vec::new();
    for (n, &port) in ports.iter().enumerate() {
        let args = cluster_args(n, &cluster_ports, None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let store = dir.join(format!("n{n}"));
        std::fs::create_dir_all(&store).unwrap();
        let server = PrivateServer::start_with(port, &store, &args);
        server.wait_ready().await;
        servers.push(Some(server));
    }
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("nats://{}?timeout_ms=2000", hosts.join(","));
    let publisher = NatsPublisher::connect(&url).await.unwrap();
    let js = jetstream::new(publisher.client().clone());
    let root = unique("sbtest");
    let config = stream::Config {
        name: "CLUSTERED".into(),
        subjects: vec![format!("{root}.>")],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    // A new cluster elects its meta leader first.
    let mut created = None;
    for _ in 0..60 {
        if let Ok(s) = js.create_stream(config.clone()).await {
            created = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut stream = created.expect("the cluster elects a leader and takes an R3 stream");
    // Every replica in place and current before the test leans on them.
    let mut ready = false;
    for _ in 0..120 {
        if let Ok(info) = stream.info().await
            && let Some(cluster) = &info.cluster
            && cluster.leader.is_some()
            && cluster.replicas.iter().filter(|r| r.current).count() == 2
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ready, "the stream's three replicas are not all current");
    Cluster {
        ports,
        servers,
        publisher,
        stream,
        root,
    }
}

/// A three-node cluster with a stream of three replicas, the URL naming every node: when the
/// node the client is connected to is killed, the publisher goes on through another, and
/// every message is stored once; no message is refused while the stream elects a leader, nor
/// while it has none (two nodes gone): the calls fail instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_fails_over_when_its_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        ports,
        mut servers,
        publisher,
        mut stream,
        root,
    } = r3_cluster(dir.path()).await;
    let first: Vec<Message> = (0..20).map(|n| message(&root, n)).collect();
    publisher.publish(&first).await.unwrap();

    // Kill the node this client talks to.
    let connected = publisher.client().server_info().port;
    let at = ports
        .iter()
        .position(|p| *p == connected)
        .expect("connected to a node of the URL");
    servers[at].take().unwrap().stop();
    let second: Vec<Message> = (20..40).map(|n| message(&root, n)).collect();
    // While the stream elects a new leader, JetStream answers "no responders": the call
    // fails (the stream exists), and no message is refused (a refusal spends an attempt, and
    // a failover could park a signal whose type allows few).
    let mut sent = false;
    for _ in 0..60 {
        if let Ok(outcome) = publisher.publish(&second).await {
            assert!(outcome.refused().is_empty(), "{outcome:?}");
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent, "the publisher did not move to another node");
    assert_ne!(publisher.client().server_info().port, connected);
    let stored = messages_once_settled(&mut stream, 40).await;
    assert_eq!(
        stored, 40,
        "every message stored once, through the surviving nodes"
    );

    // A second node killed: the stream has no quorum, so no leader, for as long as it lasts.
    // Its messages are not refused: the call fails, and says why.
    let other = (0..3)
        .find(|&n| servers[n].is_some() && ports[n] != publisher.client().server_info().port)
        .unwrap();
    servers[other].take().unwrap().stop();
    let third: Vec<Message> = (40..45).map(|n| message(&root, n)).collect();
    for _ in 0..3 {
        let failed = publisher.publish(&third).await;
        assert!(
            failed.is_err(),
            "a stream without a leader refused: {failed:?}"
        );
    }
}

/// A node that stops answering with its connections open (frozen: SIGSTOP, as a partition
/// that drops packets) is left for another node within about 1.5 timeouts (the pings every
/// half timeout), not after NATS' default of minutes: a call while it is frozen succeeds
/// through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_leaves_a_frozen_node() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        ports,
        servers,
        publisher,
        mut stream,
        root,
    } = r3_cluster(dir.path()).await;
    let connected = publisher.client().server_info().port;
    let at = ports.iter().position(|p| *p == connected).unwrap();
    let frozen = servers[at].as_ref().unwrap();
    frozen.freeze();
    let began = std::time::Instant::now();
    let batch: Vec<Message> = (0..10).map(|n| message(&root, n)).collect();
    let mut sent = None;
    // The freeze lasts 20 s; with the timeout of 2 s the client leaves after about 3 s.
    while began.elapsed() < Duration::from_secs(20) {
        if let Ok(outcome) = publisher.publish(&batch).await {
            assert!(outcome.refused().is_empty(), "{outcome:?}");
            sent = Some(began.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved_to = publisher.client().server_info().port;
    frozen.thaw();
    let sent = sent.expect("no call succeeded while the client's node was frozen for 20 s");
    assert_ne!(moved_to, connected, "still on the frozen node");
    eprintln!("left the frozen node; the first call through another succeeded after {sent:?}");
    let stored = messages_once_settled(&mut stream, 10).await;
    assert_eq!(stored, 10, "every message stored once");
}
