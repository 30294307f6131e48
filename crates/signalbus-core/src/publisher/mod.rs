//! The publisher: the one small trait that delivers messages to a bus.
//!
//! A publisher gets a batch of messages and says what the broker did with each: a
//! [`BatchOutcome`] lists the messages it *refused* (unroutable, too large, no such stream);
//! every other message was stored, and its row is deleted. A refused message stays and is
//! retried with backoff, then parked, without holding back the others. A failure of the whole
//! call (an error, a timeout: the broker is down or the connection broke) leaves the whole
//! batch pending, to be sent again later, and consumes none of the messages' attempts.
//! Timeouts and retries are separate, composable layers ([`PublisherExt`]), as in tower.
//!
//! A publisher that can only say "all or nothing" still works: it returns
//! [`BatchOutcome::all_stored`] or an error. When such an error says the broker *refused*
//! ([`PublishErrorKind::Rejected`](crate::PublishErrorKind::Rejected)) a batch of several
//! messages, the flush engine sends them again one by one to find the refused one.
//!
//! A custom publisher is a few lines (a complete one that POSTs to an HTTP webhook is the
//! `webhook` example of the `signalbus` crate):
//!
//! ```
//! use signalbus_core::{BatchOutcome, Message, PublishError, Publisher};
//!
//! struct Webhook { url: String }
//!
//! impl Publisher for Webhook {
//!     async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
//!         let mut outcome = BatchOutcome::all_stored();
//!         for (i, message) in batch.iter().enumerate() {
//!             // e.g. POST message.body to self.url: a 4xx refuses this message,
//!             // `outcome.refuse(i, "HTTP 422: ...")`; a connection failure fails the call,
//!             // `return Err(PublishError::unavailable("webhook down: ..."))`
//!             let _ = (&self.url, message, i);
//!         }
//!         Ok(outcome)
//!     }
//! }
//! ```

mod file;
mod memory;
mod outcome;
mod publish;
mod retry;
mod stdout;
mod timeout;

pub use file::FilePublisher;
pub use memory::MemoryPublisher;
pub use outcome::{BatchOutcome, Deferred, Refused};
pub use publish::{BoxPublisher, Publisher, PublisherExt};
pub use retry::{Backoff, Retry};
pub use stdout::StdoutPublisher;
pub use timeout::Timeout;
