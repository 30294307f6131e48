//! The webhook bus' receiver: an HTTP server on the broker's port (behind the proxy) that
//! checks each request's Standard Webhooks signature, records the delivery to the file and
//! only then answers 200 — the webhook's "stored". Killing it is the receiver going down:
//! the relays defer its messages until it is back.

use super::consumer::Recorder;
use crate::signals::WEBHOOK_SECRET;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use signalbus::webhook::Secrets;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub async fn webhook(address: &str, recorder: Recorder) -> Result<(), Box<dyn std::error::Error>> {
    let secrets = Arc::new(Secrets::parse(WEBHOOK_SECRET)?);
    let recorder = Arc::new(Mutex::new(recorder));
    let app = axum::Router::new().route(
        "/hooks/chaos",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (secrets, recorder) = (secrets.clone(), recorder.clone());
            async move { receive(&secrets, &recorder, &headers, &body) }
        }),
    );
    // The port of a receiver killed a moment ago may still be held by its sockets.
    let listener = loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(l) => break l,
            Err(e) => {
                eprintln!("chaos receiver: cannot listen on {address} yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    axum::serve(listener, app).await?;
    Err("the webhook receiver stopped".into())
}

/// 200 once the delivery is recorded; 401 for a signature that does not verify (the relay
/// then refuses the message, and the run fails on it as lost).
fn receive(
    secrets: &Secrets,
    recorder: &Mutex<Recorder>,
    headers: &HeaderMap,
    body: &[u8],
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<u64>().ok()),
        header("webhook-signature"),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = u64::try_from(super::now_ms() / 1000).unwrap_or_default();
    if !secrets.verify(
        id,
        timestamp,
        body,
        signature,
        now,
        Duration::from_secs(300),
    ) {
        eprintln!("chaos receiver: a request whose signature does not verify (id {id})");
        return StatusCode::UNAUTHORIZED;
    }
    let mut recorder = recorder.lock().unwrap_or_else(|p| p.into_inner());
    match recorder.record(body, None, None, Some(id), false) {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            eprintln!("chaos receiver: cannot record: {e}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers of a request signed over `signed_body`.
    fn signed(secrets: &Secrets, id: &str, signed_body: &[u8]) -> HeaderMap {
        let now = u64::try_from(crate::roles::now_ms() / 1000).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let signature = secrets.sign(id, now, signed_body);
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers
    }

    #[test]
    fn records_a_signed_delivery_and_refuses_a_forged_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("webhook-deliveries.txt");
        let recorder = Mutex::new(Recorder::open(&out).unwrap());
        let secrets = Secrets::parse(WEBHOOK_SECRET).unwrap();
        let body = br#"{"tx":7,"i":1,"at_ms":5}"#;
        let headers = signed(&secrets, "msg-1", body);
        assert_eq!(receive(&secrets, &recorder, &headers, body), StatusCode::OK);
        let forged = signed(&secrets, "msg-2", b"something else");
        assert_eq!(
            receive(&secrets, &recorder, &forged, body),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            receive(&secrets, &recorder, &HeaderMap::new(), body),
            StatusCode::BAD_REQUEST
        );
        let lines = std::fs::read_to_string(&out).unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(
            lines.starts_with("7 1 - - 5 ") && lines.contains(" msg-1 0"),
            "{lines}"
        );
    }
}
