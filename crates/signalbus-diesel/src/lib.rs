//! Signals written inside a diesel-async transaction, on PostgreSQL ([`send_pg`], feature
//! `postgres`) and MySQL/MariaDB ([`send_mysql`], feature `mysql`).
//!
//! The signal row is inserted through the caller's diesel-async connection, so it commits or
//! rolls back with the caller's transaction. Only the SQL text and values cross over, so no
//! database driver has to match signalbus' own. After the commit,
//! [`Recorder::after_commit`] hands the signals to the bus' auto-flush, which sends them
//! through the bus' own (sqlx) pool, on the same database. The explicit flushes, the relay
//! and the command line work on the same tables.
//!
//! ```ignore
//! use diesel_async::AsyncConnection;
//!
//! let mut signals = bus.recorder();
//! conn.transaction(async |conn| {
//!     // ... the business writes through `conn` ...
//!     signalbus_diesel::send_pg(conn, &mut signals, &order_placed).await?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! })
//! .await?;
//! let report = signals.after_commit().await; // sent and deleted, or pending for a flush
//! ```
//!
//! As with any transaction the caller began, the auto-flush first claims the rows, so a
//! rolled-back transaction sends nothing, even if `after_commit` is called.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod insert {
    use diesel::sql_types::BigInt;
    use signalbus_core::{Error, InsertParam, PreparedSignal};

    /// The id of the inserted row.
    #[derive(diesel::QueryableByName)]
    pub struct NewId {
        #[diesel(sql_type = BigInt)]
        pub id: i64,
    }

    /// The statement's eight values, in the types diesel binds them as.
    pub type Values = (
        String,
        String,
        Option<String>,
        Option<String>,
        Vec<u8>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );

    fn text(p: &InsertParam<'_>) -> Option<String> {
        match *p {
            InsertParam::Text(t) => t.map(str::to_owned),
            _ => None,
        }
    }

    pub fn values(prepared: &PreparedSignal) -> Values {
        let p = prepared.params();
        let bytes = match p[4] {
            InsertParam::Bytes(b) => b.to_vec(),
            _ => Vec::new(),
        };
        let int = match p[6] {
            InsertParam::Int(n) => n,
            _ => None,
        };
        (
            text(&p[0]).unwrap_or_default(),
            text(&p[1]).unwrap_or_default(),
            text(&p[2]),
            text(&p[3]),
            bytes,
            text(&p[5]),
            int,
            text(&p[7]),
        )
    }

    /// The statement with its values bound, as `sql_query` takes them.
    macro_rules! bound {
        ($sql:expr, $v:expr) => {{
            let v = $v;
            diesel::sql_query($sql)
                .bind::<diesel::sql_types::Text, _>(v.0)
                .bind::<diesel::sql_types::Text, _>(v.1)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(v.2)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(v.3)
                .bind::<diesel::sql_types::Binary, _>(v.4)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(v.5)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>, _>(v.6)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(v.7)
        }};
    }
    pub(crate) use bound;

    pub fn orm(e: diesel::result::Error) -> Error {
        Error::Orm {
            library: "diesel",
            source: Box::new(e),
        }
    }
}

/// Write `signal` through `conn` (inside its diesel-async transaction, usually) on
/// PostgreSQL and record it in `recorder`; call [`Recorder::after_commit`] once the
/// transaction committed.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub async fn send_pg<S: signalbus_core::Signal>(
    conn: &mut diesel_async::AsyncPgConnection,
    recorder: &mut signalbus_core::Recorder<sqlx::Postgres>,
    signal: &S,
) -> signalbus_core::Result<signalbus_core::SignalId> {
    use diesel_async::RunQueryDsl;
    let prepared = recorder.prepare(signal)?;
    let row: insert::NewId = insert::bound!(prepared.sql(), insert::values(&prepared))
        .get_result(conn)
        .await
        .map_err(insert::orm)?;
    Ok(recorder.record(prepared, row.id))
}

/// Write `signal` through `conn` (inside its diesel-async transaction, usually) on
/// MySQL/MariaDB and record it in `recorder`; call [`Recorder::after_commit`] once the
/// transaction committed.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub async fn send_mysql<S: signalbus_core::Signal>(
    conn: &mut diesel_async::AsyncMysqlConnection,
    recorder: &mut signalbus_core::Recorder<sqlx::MySql>,
    signal: &S,
) -> signalbus_core::Result<signalbus_core::SignalId> {
    use diesel_async::RunQueryDsl;
    let prepared = recorder.prepare(signal)?;
    insert::bound!(prepared.sql(), insert::values(&prepared))
        .execute(conn)
        .await
        .map_err(insert::orm)?;
    // The same connection's last insert id: the row just written.
    let row: insert::NewId = diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id")
        .get_result(conn)
        .await
        .map_err(insert::orm)?;
    Ok(recorder.record(prepared, row.id))
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
#[doc(no_inline)]
pub use signalbus_core::Recorder;

/// The diesel and diesel-async this crate is built against.
pub use {diesel, diesel_async};
