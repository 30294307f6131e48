//! WAL capture's table scan claims only rows that had ids when the scan before it ran:
//! newer rows are the stream's, and a scan that took them (or whose range covered them) made
//! the stream wait for its burst (each such row went out seconds late when the scan's burst
//! waited for a pooled connection).

use super::ClaimOf;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Postgres};
use std::time::Duration;

#[tokio::test]
async fn the_scan_beside_capture_leaves_new_rows_to_the_stream() {
    super::test_database::on_own_database("scan_claims", scan).await;
}

async fn scan(options: PgConnectOptions) {
    let mut conn = options.connect().await.unwrap();
    let (table, sql) = super::test_database::signal_table(&mut conn, "scan_claims").await;
    let insert = |n: u32| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, body) SELECT 't', '\\x00'::bytea FROM generate_series(1, {n})"
        )))
    };
    let lease = Duration::from_secs(30);
    let ids = |rows: Vec<super::StoredRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(sql.last_id::<Postgres>(&mut conn).await.unwrap(), 0);

    // Rows 1-3 were there at the scan before (rows from before the slot, retries); 4-5 came
    // since, and the stream brings them.
    insert(3).execute(&mut conn).await.unwrap();
    let before = sql.last_id::<Postgres>(&mut conn).await.unwrap();
    assert_eq!(before, 3);
    insert(2).execute(&mut conn).await.unwrap();
    let scanned = sql
        .claim::<Postgres>(&mut conn, ClaimOf::UpTo(before), 100, lease, "scan")
        .await
        .unwrap();
    assert_eq!(ids(scanned), [1, 2, 3]);
    // While the scan's range is live, the stream claims the new rows (a range over them
    // would keep them from it).
    let streamed = sql
        .claim_listed::<Postgres>(&mut conn, &[4, 5], lease, "stream")
        .await
        .unwrap();
    assert_eq!(ids(streamed), [4, 5]);
    assert_eq!(sql.last_id::<Postgres>(&mut conn).await.unwrap(), 5);

    // A row written with an id of its own, above the sequence (a copy from elsewhere): the
    // bound reaches it, so the scan after the next takes it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, topic, body) VALUES (1000, 't', '\\x00'::bytea)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let before = sql.last_id::<Postgres>(&mut conn).await.unwrap();
    assert_eq!(before, 1000);
    sql.free_range::<Postgres>(&mut conn, "scan").await.unwrap();
    let scanned = sql
        .claim::<Postgres>(&mut conn, ClaimOf::UpTo(before), 100, lease, "scan")
        .await
        .unwrap();
    assert_eq!(ids(scanned), [1, 2, 3, 1000]);
}
