//! What SQS and SNS publishing share: a batch split per queue or topic, encoded, packed into
//! requests of 10 within the size limit, and every answer sorted into stored, refused,
//! deferred, or an outage of the whole call.

use crate::encode::{Encoded, batches, encode, group_id};
use crate::errors::Failure;
use crate::options::AwsOptions;
use futures_util::StreamExt;
use futures_util::future::join_all;
use signalbus_core::{BatchOutcome, Message, ORDERING_KEY_HEADER, PublishError};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long an entry the service failed on its side (`SenderFault: false`), or that met an
/// outage while others of the call were stored, waits before it is sent again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Requests in flight at once to one standard queue or topic (FIFO ones get one at a time,
/// in order, and stop at the first message not stored).
const IN_FLIGHT: usize = 4;

/// One entry of a batch request.
pub(crate) struct Entry {
    /// The message's position in the publish call's batch.
    pub index: usize,
    pub encoded: Encoded,
    /// FIFO only: the message group (the ordering key) and the deduplication id.
    pub fifo: Option<Fifo>,
}

pub(crate) struct Fifo {
    pub group: String,
    pub deduplication: String,
}

/// The service's answer for one entry of a request that went through.
pub(crate) enum Answer {
    Stored,
    /// `SenderFault: true`: the entry's own fault.
    Refused(String),
    /// `SenderFault: false`: the service's; sent again, no attempt spent.
    Retry(String),
}

/// One failed entry of a batch answer, as SQS and SNS report it.
pub(crate) struct FailedEntry<'a> {
    pub id: &'a str,
    pub sender_fault: bool,
    pub code: &'a str,
    pub message: Option<&'a str>,
}

/// The answers to a request of `n` entries (ids `0`..`n`) from the ids the service stored and
/// the entries it failed (`SenderFault: true` refused, else retried); an entry in neither is
/// retried. `service` (`SQS`, `SNS`) is named in the reasons.
pub(crate) fn answers<'a>(
    what: &str,
    service: &str,
    n: usize,
    stored: impl Iterator<Item = &'a str>,
    failed: impl Iterator<Item = FailedEntry<'a>>,
) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
    let slot = |id: &str| id.parse::<usize>().ok().filter(|&i| i < n);
    for id in stored {
        if let Some(i) = slot(id) {
            answers[i] = Some(Answer::Stored);
        }
    }
    for entry in failed {
        let Some(i) = slot(entry.id) else {
            continue;
        };
        let said = format!(
            "{what}: {service} refused the entry: {}: {}",
            entry.code,
            entry.message.unwrap_or("")
        );
        answers[i] = Some(if entry.sender_fault {
            Answer::Refused(said)
        } else {
            Answer::Retry(said)
        });
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Answer::Retry(format!("{what}: no answer for the entry"))))
        .collect()
}

/// What became of one message, before it is written into the outcome.
enum Fate {
    Stored,
    Refused(String),
    Permanent(String),
    Retry(String),
    /// Not sent in this call (its budget spent, or behind an unsent message of its FIFO
    /// queue): deferred as briefly as the engine allows.
    Later(String),
    Outage(String),
}

/// SQS or SNS.
pub(crate) trait Service: Sync {
    /// What a destination names: a queue URL, a topic ARN.
    fn resolve(&self, destination: &str) -> impl Future<Output = Result<String, Failure>> + Send;
    /// Send one request of up to 10 entries to `target`; an answer per entry, in order.
    fn send(
        &self,
        target: &str,
        entries: &[Entry],
    ) -> impl Future<Output = Result<Vec<Answer>, Failure>> + Send;
}

/// Publish `batch` through `service` (see the crate docs for what each answer means).
pub(crate) async fn publish<S: Service>(
    service: &S,
    options: &AwsOptions,
    batch: &[Message],
) -> Result<BatchOutcome, PublishError> {
    let mut per_destination: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, message) in batch.iter().enumerate() {
        per_destination
            .entry(message.destination.as_str())
            .or_default()
            .push(index);
    }
    let deadline = Instant::now() + options.budget;
    let fates = join_all(per_destination.into_iter().map(|(destination, indices)| {
        one_destination(service, options, batch, destination, indices, deadline)
    }))
    .await;
    let mut outcome = BatchOutcome::all_stored();
    let mut outages = Vec::new();
    let mut stored = false;
    for (index, fate) in fates.into_iter().flatten() {
        match fate {
            Fate::Stored => stored = true,
            Fate::Refused(reason) => outcome.refuse(index, reason),
            Fate::Permanent(reason) => outcome.refuse_permanently(index, reason),
            Fate::Retry(reason) => outcome.defer(index, reason, RETRY_AFTER),
            Fate::Later(reason) => outcome.defer(index, reason, Duration::ZERO),
            Fate::Outage(reason) => outages.push((index, reason)),
        }
    }
    match outages.first() {
        // Nothing went through: the service is out, the whole call fails (the burst is given
        // back, no attempt spent).
        Some((_, reason)) if !stored => Err(PublishError::unavailable(format!(
            "{reason}; the batch stays pending"
        ))),
        // Some messages were stored: the others wait, no attempt spent.
        _ => {
            for (index, reason) in outages {
                outcome.defer(index, reason, RETRY_AFTER);
            }
            Ok(outcome)
        }
    }
}

/// The messages of one queue or topic: resolved, encoded, sent in requests of 10.
async fn one_destination<S: Service>(
    service: &S,
    options: &AwsOptions,
    batch: &[Message],
    destination: &str,
    indices: Vec<usize>,
    deadline: Instant,
) -> Vec<(usize, Fate)> {
    let failed = |failure: &Failure, indices: &[usize]| -> Vec<(usize, Fate)> {
        indices
            .iter()
            .map(|&i| {
                let fate = match failure {
                    Failure::Refused(r) => Fate::Refused(r.clone()),
                    Failure::Outage(r) => Fate::Outage(r.clone()),
                };
                (i, fate)
            })
            .collect()
    };
    let target = match service.resolve(destination).await {
        Ok(target) => target,
        Err(failure) => return failed(&failure, &indices),
    };
    let fifo = target.ends_with(".fifo");
    let mut fates = Vec::with_capacity(indices.len());
    let mut entries = Vec::with_capacity(indices.len());
    for index in indices {
        let message = &batch[index];
        let encoded = encode(message);
        if encoded.size > options.max_bytes {
            fates.push((
                index,
                Fate::Permanent(format!(
                    "message {} to `{destination}` is {} bytes with its attributes, more than \
                     the {} bytes the service takes (`max_bytes` of the bus URL)",
                    message.id, encoded.size, options.max_bytes
                )),
            ));
            continue;
        }
        let fifo = if fifo {
            let key = message.headers.get(ORDERING_KEY_HEADER);
            let group = key.map_or(Some(options.fifo_group.as_str()), |k| group_id(k));
            let Some(group) = group else {
                fates.push((
                    index,
                    Fate::Permanent(format!(
                        "message {}: its ordering key cannot be a FIFO message group (1 to 128 \
                         letters, digits or punctuation)",
                        message.id
                    )),
                ));
                continue;
            };
            Some(Fifo {
                group: group.to_owned(),
                deduplication: message.id.clone(),
            })
        } else {
            None
        };
        entries.push(Entry {
            index,
            encoded,
            fifo,
        });
    }
    let sizes: Vec<usize> = entries.iter().map(|e| e.encoded.size).collect();
    let positions: Vec<usize> = (0..entries.len()).collect();
    let requests = batches(&positions, &sizes, options.max_bytes);
    let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
    let requests: Vec<Vec<Entry>> = requests
        .into_iter()
        .map(|positions| {
            positions
                .into_iter()
                .filter_map(|p| slots[p].take())
                .collect()
        })
        .collect();
    let later = |indices: &[usize], why: &str| -> Vec<(usize, Fate)> {
        indices
            .iter()
            .map(|&i| {
                (
                    i,
                    Fate::Later(format!("`{destination}`: {why}; no attempt spent")),
                )
            })
            .collect()
    };
    let send = |request: Vec<Entry>| {
        let target = target.as_str();
        async move {
            let indices: Vec<usize> = request.iter().map(|e| e.index).collect();
            // No request starts after the budget; one in flight is never cut short (it may
            // have been stored, and would be sent twice).
            if Instant::now() >= deadline {
                return later(&indices, "not sent within this call's budget (`budget_ms`)");
            }
            match service.send(target, &request).await {
                Ok(answers) => indices
                    .into_iter()
                    .zip(
                        answers
                            .into_iter()
                            .map(Some)
                            .chain(std::iter::repeat_with(|| None)),
                    )
                    .map(|(i, answer)| {
                        let fate = match answer {
                            Some(Answer::Stored) => Fate::Stored,
                            Some(Answer::Refused(r)) => Fate::Refused(r),
                            Some(Answer::Retry(r)) => Fate::Retry(r),
                            None => Fate::Retry(format!(
                                "`{destination}`: the service did not answer for this entry"
                            )),
                        };
                        (i, fate)
                    })
                    .collect::<Vec<_>>(),
                Err(failure) => failed(&failure, &indices),
            }
        }
    };
    if fifo {
        // One request at a time, in order; after a message that was not stored, nothing
        // more goes to this queue or topic in this call: a later message of its group would
        // overtake it.
        let mut stopped = false;
        for request in requests {
            if stopped {
                let indices: Vec<usize> = request.iter().map(|e| e.index).collect();
                fates.extend(later(
                    &indices,
                    "sent after an earlier message of this FIFO queue or topic that was not stored",
                ));
                continue;
            }
            let sent = send(request).await;
            stopped = sent.iter().any(|(_, fate)| !matches!(fate, Fate::Stored));
            fates.extend(sent);
        }
        return fates;
    }
    let sent: Vec<Vec<(usize, Fate)>> = futures_util::stream::iter(requests)
        .map(send)
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    fates.extend(sent.into_iter().flatten());
    fates
}
