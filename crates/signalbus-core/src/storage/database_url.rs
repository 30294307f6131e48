//! The database a URL names, for programs that learn it at run time (the command line, the
//! benchmarks, the examples, the tests): which one ([`DatabaseKind`]), a pool on it
//! ([`open_pool`]), and code generic over the database run with the type the URL names
//! ([`with_database!`](crate::with_database)). The one place that maps a URL to a database.

use super::Backend;
use crate::redact::redact_url;
use std::fmt;
use std::time::Duration;

/// A database signalbus keeps signals in, as a URL names it by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://…` or `postgresql://…`: `sqlx::Postgres` (feature `postgres`).
    Postgres,
    /// `mysql://…` or `mariadb://…`: `sqlx::MySql` (feature `mysql`).
    MySql,
    /// `sqlite:PATH` or `sqlite::memory:`: `sqlx::Sqlite` (feature `sqlite`).
    Sqlite,
}

impl DatabaseKind {
    /// The database `url` names, when this build has it.
    ///
    /// ```
    /// use signalbus_core::storage::DatabaseKind;
    ///
    /// let e = DatabaseKind::of("redis://bob:s3cret@cache/0").unwrap_err();
    /// assert!(e.to_string().starts_with("unsupported database URL `redis://bob:***@cache/0`"));
    /// # #[cfg(feature = "postgres")]
    /// assert_eq!(DatabaseKind::of("postgresql://db/app"), Ok(DatabaseKind::Postgres));
    /// ```
    pub fn of(url: &str) -> Result<Self, UnknownDatabase> {
        let kind = match url.split(':').next().unwrap_or_default() {
            "postgres" | "postgresql" => DatabaseKind::Postgres,
            "mysql" | "mariadb" => DatabaseKind::MySql,
            "sqlite" => DatabaseKind::Sqlite,
            _ => {
                return Err(UnknownDatabase {
                    url: redact_url(url),
                    missing_feature: None,
                });
            }
        };
        if kind.built() {
            Ok(kind)
        } else {
            Err(UnknownDatabase {
                url: redact_url(url),
                missing_feature: Some(kind.feature()),
            })
        }
    }

    /// The feature of signalbus that builds this database in.
    pub fn feature(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::MySql => "mysql",
            DatabaseKind::Sqlite => "sqlite",
        }
    }

    /// Whether this build has it.
    pub fn built(self) -> bool {
        match self {
            DatabaseKind::Postgres => cfg!(feature = "postgres"),
            DatabaseKind::MySql => cfg!(feature = "mysql"),
            DatabaseKind::Sqlite => cfg!(feature = "sqlite"),
        }
    }
}

/// A URL that names no database this build has ([`DatabaseKind::of`]); it says so with the
/// URL, its password hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDatabase {
    url: String,
    missing_feature: Option<&'static str>,
}

impl fmt::Display for UnknownDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.missing_feature {
            None => write!(
                f,
                "unsupported database URL `{}`: use postgres://, mysql:// or sqlite:PATH",
                self.url
            ),
            Some(feature) => write!(
                f,
                "database URL `{}`: signalbus is built without its feature `{feature}`",
                self.url
            ),
        }
    }
}

impl std::error::Error for UnknownDatabase {}

impl From<UnknownDatabase> for crate::error::Error {
    fn from(e: UnknownDatabase) -> Self {
        crate::error::Error::Config(e.to_string())
    }
}

/// How [`open_pool`] opens a pool: sqlx's defaults, SQLite's file left as it is.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    max_connections: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    lazy: bool,
    // Read by SQLite's connect options alone.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    create_sqlite_file: bool,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    busy_timeout: Duration,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    sqlite_wal: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            lazy: false,
            create_sqlite_file: false,
            busy_timeout: Duration::from_secs(5),
            sqlite_wal: false,
        }
    }
}

impl PoolSettings {
    /// The defaults: 10 connections, 30 s to acquire one, connected at once.
    pub fn new() -> Self {
        PoolSettings::default()
    }

    /// Connections at most (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long taking a connection from the pool may wait (default 30 s).
    pub fn acquire_timeout(mut self, limit: Duration) -> Self {
        self.acquire_timeout = limit;
        self
    }

    /// Close a connection that stayed idle in the pool this long (default 10 minutes, as
    /// sqlx; `None`: never). A relay over many databases closes the connections of quiet
    /// ones sooner.
    pub fn idle_timeout(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = limit.into();
        self
    }

    /// Open no connection until the first use (default: off, so that a database that cannot
    /// be reached fails [`open_pool`] itself).
    pub fn lazy(mut self, on: bool) -> Self {
        self.lazy = on;
        self
    }

    /// SQLite: create the file when it is missing (default: off, so that a mistyped path
    /// fails instead of starting an empty database).
    pub fn create_sqlite_file(mut self, on: bool) -> Self {
        self.create_sqlite_file = on;
        self
    }

    /// SQLite: how long a statement waits for another connection's write lock (default 5 s).
    pub fn busy_timeout(mut self, limit: Duration) -> Self {
        self.busy_timeout = limit;
        self
    }

    /// SQLite: write-ahead log and `synchronous = NORMAL`, for many writers (default: the
    /// file's own journal mode).
    pub fn sqlite_wal(mut self, on: bool) -> Self {
        self.sqlite_wal = on;
        self
    }

    /// sqlx's pool options of these settings.
    pub fn pool_options<DB: sqlx::Database>(&self) -> sqlx::pool::PoolOptions<DB> {
        sqlx::pool::PoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
    }
}

/// A pool on the database `url` names, of type `DB` (see [`with_database!`](crate::with_database)
/// for choosing `DB` by the URL): sqlx's own errors, a malformed URL's included.
pub async fn open_pool<DB: Backend>(
    url: &str,
    settings: &PoolSettings,
) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    let options = DB::connect_options(url, settings)?;
    let pool = settings.pool_options::<DB>();
    if settings.lazy {
        Ok(pool.connect_lazy_with(options))
    } else {
        pool.connect_with(options).await
    }
}

/// PostgreSQL's and MySQL's connect options: the URL's own.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn server_options<O: sqlx::ConnectOptions>(
    url: &str,
    _: &PoolSettings,
) -> Result<O, sqlx::Error> {
    url.parse()
}

/// SQLite's connect options: the URL's, with the file, busy timeout and journal settings.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_options(
    url: &str,
    settings: &PoolSettings,
) -> Result<sqlx::sqlite::SqliteConnectOptions, sqlx::Error> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let options: SqliteConnectOptions = url.parse()?;
    let options = options
        .create_if_missing(settings.create_sqlite_file)
        .busy_timeout(settings.busy_timeout);
    Ok(if settings.sqlite_wal {
        options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    } else {
        options
    })
}

/// Runs `$body` with the type `$db` naming the database that `$url` names by its scheme
/// (`sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite`): `Ok` with the body's value, or
/// [`UnknownDatabase`](crate::storage::UnknownDatabase) when this build has no such database.
///
/// The body is compiled once per database this build has, with `$db` a concrete type: it may
/// call code that needs more of the database than [`Backend`](crate::Backend) (a trait of the
/// caller's own, implemented for each), which a generic closure or a trait with a generic
/// method cannot express. `?` and `return` in it leave the caller's function; an unlabeled
/// `break` or `continue` cannot reach a loop around it (the body is inside a labeled block).
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use signalbus_core::storage::{PoolSettings, open_pool};
/// use signalbus_core::{Backend, SignalBus, SignalType, publisher::MemoryPublisher};
///
/// // What the program does, written once, generic over the database.
/// async fn migrate<DB: Backend>(url: &str) -> signalbus_core::Result<()> {
///     let pool = open_pool::<DB>(url, &PoolSettings::new().create_sqlite_file(true)).await?;
///     let bus = SignalBus::builder(pool)
///         .publisher(MemoryPublisher::new())
///         .register_type(SignalType::new("order_placed"))
///         .autoflush(false)
///         .build()?;
///     bus.migrate().await
/// }
///
/// let url = "sqlite::memory:"; // from the command line, say
/// signalbus_core::with_database!(url, |DB| migrate::<DB>(url).await)??;
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! with_database {
    ($url:expr, |$db:ident| $body:expr) => {
        match $crate::storage::DatabaseKind::of($url) {
            ::core::result::Result::Err(unknown) => ::core::result::Result::Err(unknown),
            ::core::result::Result::Ok(kind) => 'database: {
                $crate::__with_postgres! {
                    if kind == $crate::storage::DatabaseKind::Postgres {
                        type $db = $crate::storage::__backends::Postgres;
                        break 'database ::core::result::Result::Ok($body);
                    }
                }
                $crate::__with_mysql! {
                    if kind == $crate::storage::DatabaseKind::MySql {
                        type $db = $crate::storage::__backends::MySql;
                        break 'database ::core::result::Result::Ok($body);
                    }
                }
                $crate::__with_sqlite! {
                    if kind == $crate::storage::DatabaseKind::Sqlite {
                        type $db = $crate::storage::__backends::Sqlite;
                        break 'database ::core::result::Result::Ok($body);
                    }
                }
                ::core::unreachable!(
                    "{kind:?}: DatabaseKind::of answers only the databases of this build"
                )
            }
        }
    };
}

// One arm of `with_database!` per database, kept or dropped by signalbus' features: a
// `#[cfg]` inside the macro would be checked against the caller's features instead.
#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_postgres {
    ($($arm:tt)*) => { $($arm)* };
}
#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_postgres {
    ($($arm:tt)*) => {};
}
#[cfg(feature = "mysql")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_mysql {
    ($($arm:tt)*) => { $($arm)* };
}
#[cfg(not(feature = "mysql"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_mysql {
    ($($arm:tt)*) => {};
}
#[cfg(feature = "sqlite")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_sqlite {
    ($($arm:tt)*) => { $($arm)* };
}
#[cfg(not(feature = "sqlite"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_sqlite {
    ($($arm:tt)*) => {};
}

/// The database types `with_database!` names, whatever the caller's own dependencies.
#[doc(hidden)]
pub mod __backends {
    #[cfg(feature = "mysql")]
    pub use sqlx::MySql;
    #[cfg(feature = "postgres")]
    pub use sqlx::Postgres;
    #[cfg(feature = "sqlite")]
    pub use sqlx::Sqlite;
}
