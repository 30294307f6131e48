//! The SQS and SNS buses' consumer: the library's own SQS runner
//! (`signalbus::aws::consumer::consume`) on both queues at once — the standard queue `chaos`
//! and the FIFO queue `chaos.fifo` — each in `signalbus::consume::reconnecting`, which starts
//! a session again after a failure (the proxy cut or black-holed the connection). A message
//! is recorded before the runner deletes it: a consumer killed in between gets it again after
//! its visibility timeout (a duplicate, marked redelivered).
//!
//! moto 5.2 breaks a FIFO group's order in two ways SQS does not (docs/reliability.md), so
//! the FIFO queue is read so that neither can happen:
//! - several messages of a group in flight that become visible again together (their
//!   consumer died) come back last first: the FIFO queue is read one message at a time, so
//!   a group has at most one in flight;
//! - a poll takes the next message of a group whose message is in flight to a concurrent
//!   poll (each checks the groups in flight as they were when it began), and a poll whose
//!   client is gone (killed, its connection cut) runs on in moto until its wait is over: the
//!   client makes no retry of its own (a failed receive ends the session), and each session
//!   first waits out any earlier poll.

use super::consumer::Recorder;
use crate::signals::{AWS_QUEUES, Bus};
use signalbus::aws::SqsPublisher;
use signalbus::aws::consumer::{ConsumerConfig, Received, consume};
use signalbus::consume::{Reconnect, reconnecting};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Handlers at once on the standard queue (one on the FIFO queue, see above).
const CONCURRENCY: usize = 4;
/// One receive's long poll.
const WAIT: Duration = Duration::from_secs(2);
/// How long a session waits before it receives: a poll of an earlier session or process
/// (moto polls in steps of 1 s) is over by then.
const SETTLE: Duration = Duration::from_secs(4);

/// Read the bus' queues at `broker` (moto's proxy) until the process is killed; the
/// credentials come from the environment (`AWS_ENV`).
pub async fn queues(broker: &str, recorder: Recorder) -> Result<(), Box<dyn std::error::Error>> {
    let sqs = SqsPublisher::connect(&Bus::Sqs.url(broker)).await?;
    let client = aws_sdk_sqs::Client::from_conf(
        sqs.client()
            .config()
            .to_builder()
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .build(),
    );
    let recorder = Arc::new(Mutex::new(recorder));
    let config = |queue_url: String| {
        ConsumerConfig::new(queue_url)
            .wait(WAIT)
            .visibility(Duration::from_secs(10))
            .retry_after(Duration::from_secs(1))
    };
    let readers = AWS_QUEUES.map(|name| {
        let (client, recorder) = (client.clone(), recorder.clone());
        let session = move |stop| {
            let (client, recorder) = (client.clone(), recorder.clone());
            async move {
                tokio::time::sleep(SETTLE).await;
                let found = client.get_queue_url().queue_name(name).send().await;
                let queue_url = found
                    .map_err(|e| format!("cannot find the queue {name}: {e}"))?
                    .queue_url
                    .ok_or("no queue URL")?;
                let handler = move |m: Received| {
                    let recorder = recorder.clone();
                    async move {
                        let body = m.body().map_err(|e| e.to_string())?;
                        let redelivered = m.receive_count().is_some_and(|n| n > 1);
                        recorder
                            .lock()
                            .expect("not poisoned")
                            .record(&body, None, None, m.message_id(), redelivered)
                            .map_err(|e| e.to_string())
                    }
                };
                let handlers = if name.ends_with(".fifo") {
                    1
                } else {
                    CONCURRENCY
                };
                consume(&client, &config(queue_url), handlers, handler, stop)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let policy = Reconnect::new(Duration::from_millis(100), Duration::from_secs(2));
        reconnecting(session, policy, std::future::pending())
    });
    let [standard, fifo] = readers;
    tokio::join!(standard, fifo);
    Err("the SQS consumer stopped".into())
}
