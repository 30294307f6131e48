//! Against a real HTTP receiver on 127.0.0.1 (the test kit's, which checks every signature on
//! its own): what arrives, what each answer means, the allow-list, slow and dead endpoints.

use signalbus_core::{Message, Publisher};
use signalbus_testkit::webhook::{Answer, Receiver};
use signalbus_webhook::WebhookPublisher;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn message(destination: &str, n: usize) -> Message {
    Message {
        id: format!("id-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: destination.to_owned(),
        routing_key: None,
        headers: [("customer".to_owned(), format!("c{n}"))].into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

fn publisher(receiver: &Receiver, query: &str) -> WebhookPublisher {
    WebhookPublisher::connect(&format!("{}?secret={SECRET}&{query}", receiver.url())).unwrap()
}

#[tokio::test]
async fn signed_requests_carry_the_id_headers_and_any_body() {
    let receiver = Receiver::start(SECRET).await;
    let publisher = publisher(&receiver, "");
    let mut batch: Vec<_> = (0..20).map(|n| message("orders", n)).collect();
    batch[3].body = vec![0, 159, 146, 150, 255];
    batch[3].content_type = None;
    let outcome = publisher.publish(&batch).await.unwrap();
    assert!(outcome.is_all_stored(), "{outcome:?}");
    let got = receiver.accepted("/orders");
    assert_eq!(got.len(), 20);
    for sent in &batch {
        let r = got.iter().find(|r| r.id == sent.id).expect("arrived");
        assert!(r.signed, "the receiver's own check of the signature");
        assert_eq!(r.body, sent.body);
        assert_eq!(r.headers["customer"], sent.headers["customer"]);
        assert_eq!(r.headers["signalbus-signal"], "order_placed");
        let ct = sent
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        assert_eq!(r.headers["content-type"], ct);
    }
    publisher.check().await.unwrap();
    // A receiver with another key refuses every request (401): refused, not deferred.
    let other = Receiver::start("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    let outcome = self::publisher(&other, "")
        .publish(&batch[..1])
        .await
        .unwrap();
    assert!(
        outcome.refused()[0].reason.contains("HTTP 401"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn each_answer_means_what_the_docs_say() {
    let receiver = Receiver::start(SECRET).await;
    receiver.set("/reject", Answer::Status(422));
    receiver.set("/limited", Answer::TooMany(7));
    receiver.set("/down", Answer::Status(503));
    receiver.set("/moved", Answer::Status(301));
    receiver.set("/timeout", Answer::Status(408));
    let publisher = publisher(&receiver, "");
    let paths = ["ok", "reject", "limited", "down", "moved", "timeout"];
    let batch: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(n, p)| message(p, n))
        .collect();
    let outcome = publisher.publish(&batch).await.unwrap();
    let refused: Vec<_> = outcome
        .refused()
        .iter()
        .map(|r| (r.index, r.permanent))
        .collect();
    let mut refused = refused;
    refused.sort();
    assert_eq!(
        refused,
        [(1, false), (4, false)],
        "422 and 301: {outcome:?}"
    );
    let deferred: std::collections::HashMap<usize, Duration> = outcome
        .deferred()
        .iter()
        .map(|d| (d.index, d.retry_after))
        .collect();
    assert_eq!(deferred[&2], Duration::from_secs(7), "Retry-After honoured");
    assert_eq!(
        deferred[&3],
        Duration::from_secs(1),
        "a first failure pauses 1 s"
    );
    assert_eq!(
        deferred[&5],
        Duration::from_secs(1),
        "408 is the endpoint's, not the message's"
    );
    assert_eq!(deferred.len(), 3);
    assert!(outcome.deferred()[0].reason.contains("no attempt spent"));
    assert_eq!(receiver.accepted("/ok").len(), 1);

    // While paused, the endpoints get no request; the others still do.
    let before = receiver.requests().len();
    let again: Vec<_> = [2, 3, 0].iter().map(|&n| message(paths[n], n)).collect();
    let outcome = publisher.publish(&again).await.unwrap();
    assert_eq!(outcome.deferred().len(), 2, "{outcome:?}");
    assert_eq!(receiver.requests().len(), before + 1, "only /ok was asked");
    // Once the pause is over, a failure in a row doubles it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let outcome = publisher.publish(&again[1..2]).await.unwrap();
    assert_eq!(outcome.deferred()[0].retry_after, Duration::from_secs(2));
    // And an answer forgets the failures.
    receiver.set("/down", Answer::Ok);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        publisher
            .publish(&again[1..2])
            .await
            .unwrap()
            .is_all_stored()
    );
}

#[tokio::test]
async fn only_allowed_hosts_are_called() {
    let receiver = Receiver::start(SECRET).await;
    let port = receiver.port;
    let publisher = publisher(&receiver, &format!("allow=localhost:{port}"));
    let batch = vec![
        message("inside", 0),
        message(&format!("http://localhost:{port}/allowed"), 1),
        message(&format!("http://127.0.0.2:{port}/elsewhere"), 2),
        message("http://169.254.169.254/latest/meta-data", 3),
        message(&format!("//127.0.0.3:{port}/x"), 4),
        message(&format!("https://127.0.0.1:{port}/tls"), 5),
    ];
    let outcome = publisher.publish(&batch).await.unwrap();
    let mut refused: Vec<_> = outcome.refused().iter().map(|r| r.index).collect();
    refused.sort();
    assert_eq!(refused, [2, 3, 4], "{outcome:?}");
    assert!(outcome.refused().iter().all(|r| r.permanent));
    assert!(outcome.refused()[0].reason.contains("allow-list"));
    let paths: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/inside".to_owned()) && paths.contains(&"/allowed".to_owned()));
    assert!(!paths.iter().any(|p| p == "/elsewhere" || p == "/x"));
    // https:// to a plain HTTP server fails the TLS handshake: an outage of that endpoint.
    assert!(
        outcome.deferred().iter().any(|d| d.index == 5),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_dead_or_slow_endpoint_holds_up_no_other() {
    let receiver = Receiver::start(SECRET).await;
    receiver.set("/hang", Answer::Never);
    receiver.set("/slow", Answer::Slow(Duration::from_millis(100)));
    let publisher = publisher(&receiver, "timeout_ms=500&concurrency=4");
    let mut batch: Vec<_> = (0..12).map(|n| message("hang", n)).collect();
    batch.extend((12..20).map(|n| message("slow", n)));
    batch.extend((20..40).map(|n| message("ok", n)));
    let started = Instant::now();
    let outcome = publisher.publish(&batch).await.unwrap();
    let took = started.elapsed();
    assert_eq!(outcome.deferred().len(), 12, "{outcome:?}");
    assert!(outcome.refused().is_empty());
    // /hang: one round of 4 requests timed out, the other 8 were deferred without a request.
    let hang = receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/hang")
        .count();
    assert_eq!(hang, 4);
    assert!(
        took < Duration::from_secs(2),
        "one timeout, not three: {took:?}"
    );
    assert_eq!(receiver.accepted("/slow").len(), 8);
    assert_eq!(receiver.accepted("/ok").len(), 20);

    // The receiver goes away: the bus URL's host no longer accepts connections.
    let stopped = receiver.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(publisher.check().await.is_err());
    let outcome = publisher.publish(&batch[20..22]).await.unwrap();
    assert_eq!(outcome.deferred().len(), 2, "{outcome:?}");
    assert!(
        outcome.deferred()[0].reason.contains("cannot connect"),
        "{outcome:?}"
    );
    let receiver = stopped.restart().await;
    publisher.check().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        publisher
            .publish(&batch[20..22])
            .await
            .unwrap()
            .is_all_stored()
    );
    drop(receiver);
}

/// A slow endpoint makes progress call after call: a call ends within `budget_ms`, the
/// messages it had no time for are deferred (no attempt spent), not failed as a whole.
#[tokio::test]
async fn a_call_ends_within_its_budget() {
    let receiver = Receiver::start(SECRET).await;
    receiver.set("/slow", Answer::Slow(Duration::from_millis(300)));
    let publisher = publisher(&receiver, "budget_ms=700&concurrency=1");
    let batch: Vec<_> = (0..10).map(|n| message("slow", n)).collect();
    let started = Instant::now();
    let outcome = publisher.publish(&batch).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    let deferred = outcome.deferred().len();
    assert!((7..=9).contains(&deferred), "{outcome:?}");
    assert!(
        outcome
            .deferred()
            .iter()
            .all(|d| d.reason.contains("budget"))
    );
    assert!(outcome.refused().is_empty());
    assert!(
        publisher.check().await.is_ok(),
        "the endpoint is not paused for it"
    );
}
