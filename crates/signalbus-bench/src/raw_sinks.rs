//! `raw` for the sinks of plain requests: signed HTTP/1.1 POSTs with reqwest (8 in flight, as
//! the webhook publisher does per endpoint) and SQS `SendMessageBatch` with the AWS SDK (10
//! entries a request, 4 requests in flight), without signalbus. `receiver` is the HTTP
//! endpoint both the raw run and the webhook publisher post to.

use crate::raw::{Args, BoxError, DESTINATION, measure};
use futures_util::StreamExt;

const BODY: &str = r#"{"order_id":1234567,"amount":567}"#;

/// POST `args.batch` bodies to `args.bus` + `bench`, 8 at a time, each with the three
/// Standard Webhooks headers (signed with a fixed key, as the publisher signs).
pub async fn webhook(args: &Args) -> Result<(), BoxError> {
    let base = args
        .bus
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let url = format!("{base}/{DESTINATION}");
    let client = reqwest::Client::builder().no_proxy().build()?;
    let secrets = signalbus::webhook::Secrets::parse(crate::raw::WEBHOOK_SECRET)?;
    if args.setup_only {
        return Ok(());
    }
    measure(args, "webhook", || {
        let (client, url, secrets) = (client.clone(), url.clone(), secrets.clone());
        async move {
            let statuses: Vec<_> = futures_util::stream::iter(0..args.batch)
                .map(|_| {
                    let id = uuid::Uuid::now_v7().to_string();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    client
                        .post(&url)
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", now)
                        .header("webhook-signature", secrets.sign(&id, now, BODY.as_bytes()))
                        .header("content-type", "application/json")
                        .body(BODY)
                        .send()
                })
                .buffer_unordered(8)
                .collect()
                .await;
            for status in statuses {
                status?.error_for_status()?;
            }
            Ok(())
        }
    })
    .await
}

/// `SendMessageBatch` of 10 entries (with the attributes signalbus sets), 4 in flight, to the
/// queue `bench` (made if missing) of the endpoint in `args.bus` (`sqs://REGION?endpoint=…`).
pub async fn sqs(args: &Args) -> Result<(), BoxError> {
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let sqs = signalbus::aws::SqsPublisher::connect(&args.bus).await?;
    let client = sqs.client().clone();
    let url = client
        .create_queue()
        .queue_name(DESTINATION)
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    if args.setup_only {
        return Ok(());
    }
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
    };
    measure(args, "sqs", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let requests = args.batch.div_ceil(10);
            let results: Vec<_> = futures_util::stream::iter(0..requests)
                .map(|_| {
                    let entries: Vec<_> = (0..10)
                        .map(|n| {
                            SendMessageBatchRequestEntry::builder()
                                .id(n.to_string())
                                .message_body(BODY)
                                .message_attributes(
                                    "signalbus-message-id",
                                    attribute(&uuid::Uuid::now_v7().to_string()).unwrap(),
                                )
                                .message_attributes(
                                    "signalbus-signal",
                                    attribute("order_placed").unwrap(),
                                )
                                .message_attributes(
                                    "content-type",
                                    attribute("application/json").unwrap(),
                                )
                                .build()
                                .unwrap()
                        })
                        .collect();
                    client
                        .send_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                })
                .buffer_unordered(4)
                .collect()
                .await;
            for result in results {
                let output = result?;
                if !output.failed().is_empty() {
                    return Err("SQS failed entries".into());
                }
            }
            Ok(())
        }
    })
    .await?;
    client.purge_queue().queue_url(&url).send().await?;
    Ok(())
}

/// `receiver`: an HTTP endpoint on `port` that answers every POST with 204, counting them.
pub async fn receiver(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!(
        "receiver: http://127.0.0.1:{}/ answers 204",
        listener.local_addr()?.port()
    );
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
    axum::serve(listener, app).await?;
    Ok(())
}
