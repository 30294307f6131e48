//! Signal types: what a kind of message is called, where its rows live and how it is flushed.

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::message::Headers;
use std::borrow::Cow;
use std::time::Duration;

/// Columns of the table contract that `order_by` may name.
pub const ORDERABLE_COLUMNS: &[&str] = &["id", "created_at", "topic", "routing_key", "message_id"];

/// Default number of signals sent and deleted in one database transaction.
pub const DEFAULT_BURST: usize = 1000;

/// The policy of one signal type: its name, table and flushing options.
///
/// Built by `#[derive(Signal)]` for typed signals, or by hand (the command line builds them
/// from its configuration file). Validated when it is registered with a bus.
///
/// ```
/// use signalbus_core::SignalType;
///
/// let ty = SignalType::new("order_placed") // its table is `order_placed` too
///     .destination("orders") // exchange, subject or topic
///     .routing_key("order.placed")
///     .burst(500) // signals per burst of an explicit flush
///     .ordered(true); // the relay sends it in order (per ordering key)
/// assert!(ty.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalType {
    name: Cow<'static, str>,
    table: Cow<'static, str>,
    destination: Option<Cow<'static, str>>,
    routing_key: Option<Cow<'static, str>>,
    autoflush: bool,
    burst: usize,
    batch: bool,
    ordered: bool,
    order_by: Vec<OrderColumn>,
    retry: RetryPolicy,
}

/// How a signal type's messages are retried when the bus refuses them: exponential backoff
/// with jitter, then parking.
///
/// ```
/// use signalbus_core::{RetryPolicy, SignalType};
/// use std::time::Duration;
///
/// // 5 attempts, 2 s doubling to at most a minute, then parked for an operator.
/// let ty = SignalType::new("payment_made").retry(RetryPolicy {
///     max_attempts: 5,
///     base: Duration::from_secs(2),
///     max: Duration::from_secs(60),
/// });
/// assert_eq!(ty.retry_policy().max_attempts, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Refusals after which a message is parked (kept, never sent again until unparked).
    pub max_attempts: u32,
    /// The delay after the first refusal (before jitter); it doubles after each one.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 1 s doubling to at most 10 minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt of a message refused `refusals` times (from 1): half
    /// of `min(max, base × 2^(refusals-1))` plus a random part of the other half, so that
    /// delays grow and refused messages of one burst do not all come back at once.
    pub fn delay(&self, refusals: u32) -> Duration {
        let exp = refusals.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.max);
        let half = ceiling / 2;
        let jitter = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::Rng::random_range(&mut rand::rng(), 0..=jitter))
    }
}

/// One column of a signal type's `order_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderColumn {
    /// The column.
    pub column: String,
    /// Descending instead of ascending.
    pub descending: bool,
}

impl SignalType {
    /// A signal type called `name`, stored in a table of the same name, auto-flushed, sent in
    /// batched bursts of [`DEFAULT_BURST`], in insertion order.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        SignalType {
            table: name.clone(),
            name,
            destination: None,
            routing_key: None,
            autoflush: true,
            burst: DEFAULT_BURST,
            batch: true,
            ordered: false,
            order_by: Vec::new(),
            retry: RetryPolicy::default(),
        }
    }

    /// Store the signals in `table` (may be `schema.table`).
    pub fn table(mut self, table: impl Into<Cow<'static, str>>) -> Self {
        self.table = table.into();
        self
    }

    /// The default destination (exchange, subject or topic) of messages of this type. Without
    /// it, the signal's name is the destination.
    pub fn destination(mut self, destination: impl Into<Cow<'static, str>>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// The default routing key of messages of this type.
    pub fn routing_key(mut self, key: impl Into<Cow<'static, str>>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// `false` leaves signals of this type pending after commit, for explicit flushing.
    pub fn autoflush(mut self, on: bool) -> Self {
        self.autoflush = on;
        self
    }

    /// How many signals are sent and deleted in one database transaction.
    pub fn burst(mut self, burst: usize) -> Self {
        self.burst = burst;
        self
    }

    /// `true`: a relay sends this type in order (as `flushordered` does: per ordering key,
    /// gap-safe), whatever its own ordered setting says; other types of the same relay go
    /// out as they come. Turn auto-flush off for such a type: the auto-flush keeps no order.
    pub fn ordered(mut self, on: bool) -> Self {
        self.ordered = on;
        self
    }

    /// Whether a relay sends this type in order ([`SignalType::ordered`]).
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// `false` sends messages of this type one publish call at a time instead of in batches.
    pub fn batch(mut self, on: bool) -> Self {
        self.batch = on;
        self
    }

    /// Columns that define the order of `flushordered`, e.g. `["id"]` or `["created_at DESC",
    /// "id"]`. Without it, signals are ordered by insertion.
    pub fn order_by<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.order_by = columns
            .into_iter()
            .map(|c| {
                let c = c.as_ref().trim();
                let (column, descending) = match c.rsplit_once(char::is_whitespace) {
                    Some((col, dir)) if dir.eq_ignore_ascii_case("desc") => (col.trim(), true),
                    Some((col, dir)) if dir.eq_ignore_ascii_case("asc") => (col.trim(), false),
                    _ => (c, false),
                };
                OrderColumn {
                    column: column.to_owned(),
                    descending,
                }
            })
            .collect();
        self
    }

    /// The name of the signal type.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table name as given (validated by [`SignalType::validate`]).
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The default destination: the configured one, or the signal's name.
    pub fn default_destination(&self) -> &str {
        self.destination.as_deref().unwrap_or(&self.name)
    }

    /// The default routing key.
    pub fn default_routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }

    /// Whether signals of this type are sent right after commit.
    pub fn is_autoflush(&self) -> bool {
        self.autoflush
    }

    /// Signals per database transaction when flushing.
    pub fn burst_size(&self) -> usize {
        self.burst
    }

    /// How refused messages are retried, then parked (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Whether messages are published in batches.
    pub fn is_batched(&self) -> bool {
        self.batch
    }

    /// The `order_by` columns (empty: insertion order).
    pub fn order_columns(&self) -> &[OrderColumn] {
        &self.order_by
    }

    /// Check the name, table and options; returns the validated table identifier.
    pub fn validate(&self) -> Result<Ident> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "signal name {:?} must be non-empty printable text",
                self.name
            )));
        }
        if self.retry.max_attempts == 0
            || self.retry.base.is_zero()
            || self.retry.max < self.retry.base
        {
            return Err(Error::Config(format!(
                "signal `{}`: the retry policy needs max_attempts ≥ 1 and 0 < base ≤ max",
                self.name
            )));
        }
        if self.burst == 0 {
            return Err(Error::Config(format!(
                "signal `{}`: burst must be at least 1",
                self.name
            )));
        }
        for col in &self.order_by {
            Ident::new(&col.column)?;
            if !ORDERABLE_COLUMNS.contains(&col.column.as_str()) {
                return Err(Error::Config(format!(
                    "signal `{}`: order_by column `{}` is not a column of a signal table (one of {})",
                    self.name,
                    col.column,
                    ORDERABLE_COLUMNS.join(", ")
                )));
            }
        }
        Ident::new(&self.table)
    }
}

/// A Rust type whose values are signals: one row in the type's table, one message on the bus.
///
/// Usually derived: `#[derive(Serialize, Signal)]` with `#[signal(...)]` attributes gives the
/// policy and a JSON body built with serde. Implement it by hand to compute the destination,
/// routing key or headers from the value, or to use another body encoding.
///
/// ```
/// use signalbus_core::{Signal, SignalType, Headers, Result};
/// use std::borrow::Cow;
/// use std::sync::OnceLock;
///
/// #[derive(serde::Serialize)]
/// struct PaymentMade { account: String, cents: i64 }
///
/// impl Signal for PaymentMade {
///     fn signal_type() -> &'static SignalType {
///         static TYPE: OnceLock<SignalType> = OnceLock::new();
///         TYPE.get_or_init(|| SignalType::new("payment_made").destination("payments"))
///     }
///     fn routing_key(&self) -> Option<Cow<'_, str>> {
///         Some(Cow::Owned(format!("account.{}", self.account)))
///     }
///     fn body(&self) -> Result<Vec<u8>> {
///         signalbus_core::json_body(self)
///     }
/// }
/// ```
pub trait Signal: Send + Sync {
    /// The policy of this signal type.
    fn signal_type() -> &'static SignalType
    where
        Self: Sized;

    /// The destination of this message (exchange, subject or topic).
    fn destination(&self) -> Cow<'_, str>
    where
        Self: Sized,
    {
        Cow::Borrowed(Self::signal_type().default_destination())
    }

    /// The routing key (AMQP) or key (Kafka) of this message.
    fn routing_key(&self) -> Option<Cow<'_, str>>
    where
        Self: Sized,
    {
        Self::signal_type().default_routing_key().map(Cow::Borrowed)
    }

    /// The ordering key of this message (`#[signal(key)]` on a field when derived): ordered
    /// flushing ([`SignalBus::flush_ordered`](crate::SignalBus::flush_ordered), the relay's
    /// ordered mode) keeps the order of the signals of one key and sends different keys in
    /// parallel; a refused signal holds back only the later ones of its key. Stored in the
    /// `ordering_key` column; it is the Kafka message key unless a routing key is set, and
    /// travels as the header [`ORDERING_KEY_HEADER`](crate::ORDERING_KEY_HEADER). `None` (the
    /// default): the signal belongs to the type's one sequence of signals without a key.
    fn ordering_key(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The headers of this message.
    fn headers(&self) -> Headers {
        Headers::new()
    }

    /// The MIME type of [`Signal::body`].
    fn content_type(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("application/json"))
    }

    /// The message body.
    fn body(&self) -> Result<Vec<u8>>;
}

/// The default body of a signal: its fields as JSON, via serde.
pub fn json_body<S: serde::Serialize + Signal>(signal: &S) -> Result<Vec<u8>> {
    serde_json::to_vec(signal).map_err(|e| Error::encode(S::signal_type().name(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_parses_directions_and_checks_columns() {
        let t = SignalType::new("x").order_by(["created_at DESC", "id asc", "id"]);
        let cols: Vec<_> = t
            .order_columns()
            .iter()
            .map(|c| (c.column.as_str(), c.descending))
            .collect();
        assert_eq!(cols, [("created_at", true), ("id", false), ("id", false)]);
        assert!(t.validate().is_ok());
        assert!(
            SignalType::new("x")
                .order_by(["body; drop"])
                .validate()
                .is_err()
        );
        assert!(SignalType::new("x").order_by(["nope"]).validate().is_err());
    }

    #[test]
    fn validation_rejects_bad_tables_and_bursts() {
        assert!(SignalType::new("x").table("bad table").validate().is_err());
        assert!(SignalType::new("x").burst(0).validate().is_err());
        assert!(SignalType::new("").validate().is_err());
        assert_eq!(SignalType::new("x").validate().unwrap().name(), "x");
        assert_eq!(SignalType::new("x").default_destination(), "x");
    }
}
