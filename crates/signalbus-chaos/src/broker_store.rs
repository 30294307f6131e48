//! What a broker stored, read from its own files after the run. For a lost signal this tells
//! two failures apart: the broker has it (acknowledged and stored, but never read back by the
//! consumer) or it does not (never reached the broker, or the broker acknowledged and dropped
//! it). Only tansu keeps its records where the harness can read them (an SQLite file).

use crate::signals::Body;
use std::collections::HashSet;
use std::path::Path;

/// Those of `lost` that are in the records of the tansu store `file` (its `record` table: one
/// row per record, the value as stored).
pub async fn in_tansu_store(
    file: &Path,
    lost: &[(i64, u32)],
) -> Result<HashSet<(i64, u32)>, sqlx::Error> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    // Read-only: the broker may still run, and its file is never changed by the harness.
    let options = SqliteConnectOptions::new().filename(file).read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let values: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT CAST(v AS BLOB) FROM record")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    let stored: HashSet<(i64, u32)> = values
        .iter()
        .filter_map(|(v,)| serde_json::from_slice::<Body>(v).ok())
        .map(|b| (b.tx, b.i))
        .collect();
    Ok(lost
        .iter()
        .filter(|k| stored.contains(k))
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_the_lost_signals_the_store_has() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tansu.db");
        {
            use sqlx::sqlite::SqliteConnectOptions;
            let options = SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            // The columns of tansu 0.6's table that matter here.
            sqlx::raw_sql("CREATE TABLE record (topition INTEGER, offset_id INTEGER, v BLOB)")
                .execute(&pool)
                .await
                .unwrap();
            for (offset, tx, i) in [(0, 1, 0), (1, 1, 1), (2, 2, 0)] {
                let body = format!(r#"{{"tx":{tx},"i":{i},"at_ms":0}}"#);
                sqlx::query("INSERT INTO record VALUES (0, ?, ?)")
                    .bind(offset)
                    .bind(body.into_bytes())
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        let lost = [(1, 1), (2, 0), (3, 0)];
        assert_eq!(
            in_tansu_store(&file, &lost).await.unwrap(),
            HashSet::from([(1, 1), (2, 0)])
        );
    }
}
