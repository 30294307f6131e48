//! The one error type of signalbus, and the error a publisher returns.

use std::fmt;

/// Everything that can go wrong in signalbus.
///
/// Database errors keep sqlx's error, so the database's own error code stays available
/// through [`Error::database_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error, or could not be reached.
    #[error("database error: {}", DatabaseText(.0))]
    Database(#[source] sqlx::Error),

    /// The message bus did not take the messages; their rows stay pending.
    #[error("{0}")]
    Publish(#[from] PublishError),

    /// A signal of a type that was never registered with the bus.
    #[error(
        "signal type `{0}` is not registered with this bus: add it with \
         `SignalBus::builder(..).register::<YourSignal>()`"
    )]
    NotRegistered(String),

    /// A signal name that no registered signal type has.
    #[error("unknown signal name `{name}`; known signals: {known}")]
    UnknownSignal {
        /// The name that was asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },

    /// A table or column name that is not a plain SQL identifier.
    #[error("invalid SQL identifier {ident:?}: {reason}")]
    InvalidIdentifier {
        /// The rejected identifier.
        ident: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A configuration value that cannot work (bad URL, bad signal type, bad option).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The database library the caller writes with (sea-orm, diesel) could not insert a
    /// signal row; the transaction is the caller's to roll back.
    #[error("{library} could not insert the signal row: {source}")]
    Orm {
        /// Which library.
        library: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A signal could not be turned into a message body.
    #[error("could not encode signal `{signal}`: {source}")]
    Encode {
        /// Name of the signal type.
        signal: String,
        /// What the encoder said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A pending row that cannot be turned into a message (e.g. headers that are not a JSON
    /// object of strings). The row is left untouched.
    #[error(
        "row id={id} of signal table `{table}` is not a valid signal ({reason}); fix or delete \
         that row, other rows are not affected"
    )]
    InvalidRow {
        /// Table of the row.
        table: String,
        /// Primary key of the row.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },

    /// An atomic block gave up after retrying.
    #[error("transaction still failing after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error: the block's own error when signalbus can hold it as a
        /// standard error (its own and sqlx's errors, boxed errors, anyhow and eyre with their
        /// features), otherwise its message and database code ([`InnerError`]).
        #[source]
        last: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A nested atomic block failed, and the outer block went on and returned `Ok`: the
    /// transaction was rolled back rather than committed with part of its work missing.
    #[error(
        "a nested atomic block failed ({source}) but the outer block went on; the whole \
         transaction was rolled back"
    )]
    InnerBlockFailed {
        /// What the nested block failed with (its message and database code: the error
        /// itself went back to the outer block's code).
        #[source]
        source: InnerError,
    },

    /// `Transaction::atomic_retrying_races` outside an atomic block: nothing would run the
    /// transaction again.
    #[error(
        "atomic_retrying_races must run inside an atomic block (`bus.atomic(|tx| ..)`): \
         only the block can run the transaction again"
    )]
    NotInAtomicBlock,

    /// The auto-flush queue is full (the bus is slower than the commits): the transaction's
    /// signals stay pending for the next flush or the relay. See
    /// `SignalBusBuilder::queue_capacity`.
    #[error(
        "the auto-flush queue is full ({capacity} transactions waiting); the signals stay \
         pending until the next flush"
    )]
    QueueFull {
        /// The queue's capacity, in transactions.
        capacity: usize,
    },

    /// The bus was closed (`SignalBus::close`): the signals stay pending for the next flush.
    #[error("the signal bus is closed; the signals stay pending until the next flush")]
    Closed,

    /// The bus' background auto-flush task is gone (the runtime is shutting down).
    #[error("the auto-flush task of the signal bus has stopped")]
    Stopped,

    /// The auto-flush round panicked (usually in the publisher); its signals stay pending.
    #[error("the auto-flush round panicked: {0}; the signals stay pending")]
    Panicked(String),
}

impl Error {
    /// The database's error code as sqlx reports it: the SQLSTATE on PostgreSQL and
    /// MySQL/MariaDB (e.g. `40001`), the extended result code on SQLite (e.g. `2067`). The
    /// MySQL error number (e.g. 1213) is on the sqlx error itself:
    /// `MySqlDatabaseError::number()`; [`crate::atomic::is_conflict`] looks at it.
    ///
    /// Found through the error's sources too, so the code of the last attempt of an atomic
    /// block that gave up, or of a nested block that failed, is seen here.
    ///
    /// ```no_run
    /// # fn demo(result: signalbus_core::Result<()>) {
    /// match result {
    ///     Err(e) if e.database_code().as_deref() == Some("23505") => {
    ///         // PostgreSQL unique violation: the order was placed already
    ///     }
    ///     Err(e) => eprintln!("{e}"), // the database's message, code, detail and hint
    ///     Ok(()) => {}
    /// }
    /// # }
    /// ```
    pub fn database_code(&self) -> Option<String> {
        if let Error::InnerBlockFailed { source } = self {
            return source.database_code().map(str::to_owned);
        }
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = current {
            if let Some(inner) = e.downcast_ref::<InnerError>() {
                return inner.database_code().map(str::to_owned);
            }
            if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
                return db.code().map(|c| c.into_owned());
            }
            current = e.source();
        }
        None
    }

    pub(crate) fn encode(
        signal: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Encode {
            signal: signal.to_owned(),
            source: Box::new(source),
        }
    }
}

/// What a nested atomic block failed with, kept when its error itself went back to the outer
/// block: its message and database code, so that [`Error::database_code`] still sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerError {
    message: String,
    code: Option<String>,
}

impl InnerError {
    pub(crate) fn new(message: String, code: Option<String>) -> Self {
        InnerError { message, code }
    }

    /// The database's error code of the nested block's failure, if it was a database error.
    pub fn database_code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl fmt::Display for InnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InnerError {}

/// What kind of failure a [`PublishError`] is; decides whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The broker cannot be reached or dropped the connection. Retrying later can help.
    Unavailable,
    /// The broker refused the messages (unroutable, negative acknowledgement, no such
    /// stream). Retrying the same messages will not help until the broker is reconfigured.
    Rejected,
    /// The broker did not confirm in time; some messages may have been stored.
    Timeout,
    /// The messages could not be written (e.g. an I/O error of a file publisher).
    Io,
    /// Anything else.
    Other,
}

/// A publisher's failure to deliver a batch. The whole batch counts as not sent, so its rows
/// stay pending; messages the broker did store before the failure may be sent again later
/// (at-least-once delivery).
#[derive(Debug)]
pub struct PublishError {
    kind: PublishErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PublishError {
    /// A new error of `kind`, with a message that says what to do about it.
    pub fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        PublishError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The broker could not be reached.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(PublishErrorKind::Unavailable, message)
    }

    /// The broker refused the messages.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(PublishErrorKind::Rejected, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// Whether sending the same batch again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            PublishErrorKind::Unavailable | PublishErrorKind::Timeout | PublishErrorKind::Io
        )
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "publishing failed ({:?}): {}", self.kind, self.message)
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        // Where an atomic block learns of a conflict its own error type may not show.
        crate::seen::note(&error);
        Error::Database(error)
    }
}

/// Result type of signalbus.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database error as an operator reads it: the database's message, its code, and (on
/// PostgreSQL) its detail and hint — not the line of PostgreSQL's C source that raised it,
/// which sqlx's own text ends with (`… at line 1850`).
struct DatabaseText<'a>(&'a sqlx::Error);

impl fmt::Display for DatabaseText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sqlx::Error::Database(db) = self.0 else {
            return fmt::Display::fmt(self.0, f);
        };
        f.write_str(db.message())?;
        if let Some(code) = db.code() {
            write!(f, " (code {code})")?;
        }
        #[cfg(feature = "postgres")]
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            if let Some(detail) = pg.detail() {
                write!(f, "; {detail}")?;
            }
            if let Some(hint) = pg.hint() {
                write!(f, "; hint: {hint}")?;
            }
        }
        Ok(())
    }
}

/// The database error `error` carries: itself or one of its sources — a signalbus or sqlx
/// error, or the boxed database error inside one (which an `#[error(transparent)]` wrapper of
/// a `sqlx::Error` gives as its source, skipping the `sqlx::Error` itself).
pub(crate) fn database_error<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e dyn sqlx::error::DatabaseError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(Error::Database(sqlx::Error::Database(db))) = e.downcast_ref::<Error>() {
            return Some(&**db);
        }
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return Some(&**db);
        }
        // What `sqlx::Error::Database` gives as its source.
        if let Some(db) = e.downcast_ref::<Box<dyn sqlx::error::DatabaseError>>() {
            return Some(&**db);
        }
        current = e.source();
    }
    None
}
