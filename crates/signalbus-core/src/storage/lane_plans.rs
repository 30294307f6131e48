//! How PostgreSQL plans the reads of ordered lanes, on a table filled just before and
//! analysed when it held other rows (as right after a bulk insert, and always where
//! autovacuum is off). A lane's read and the probe of the lanes must come from the lane
//! index, whatever the statistics say: when the read was planned on the `(txid, id)` index,
//! each look at a lane walked the rows of every other lane (with a backlog in one lane, the
//! whole backlog for each look at another). And a lane's read and the probe must stop at
//! the watermark: while a long transaction holds it back, the rows above it (a large insert
//! still running among them) are not walked at all.

use super::repository::Values;
use super::sealed::Store as _;
use super::statements::{Ordered, Statements};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Postgres};
use std::time::Duration;

/// `EXPLAIN (ANALYZE, BUFFERS)` of `sql` with `params`, as lines.
async fn explain(
    conn: &mut sqlx::PgConnection,
    sql: &sqlx::SqlStr,
    params: &[super::Param<'_>],
) -> Vec<String> {
    let text = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}", sql.as_str());
    let text = sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(text));
    Postgres::fetch_texts(conn, &text, params).await.unwrap()
}

/// The numbers after `label` in the plan's lines, summed.
fn sum_of(plan: &[String], label: &str) -> u64 {
    plan.iter()
        .filter_map(|line| line.split(label).nth(1))
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().unwrap()
        })
        .sum()
}

/// The pages the plan's top node touched (its first `Buffers:` line).
fn pages(plan: &[String]) -> u64 {
    let top = plan.iter().position(|line| line.contains("Buffers:"));
    let line = top.map_or(&[][..], |i| &plan[i..=i]);
    sum_of(line, "hit=") + sum_of(line, "read=")
}

/// The plan of a burst's read of `lane`, in the transaction and with the settings a burst
/// reads in.
async fn lane_read(
    conn: &mut sqlx::PgConnection,
    turn: &sqlx::SqlStr,
    read: &super::statements::Stmt,
    lane: u32,
) -> Vec<String> {
    let mut tx = conn.begin().await.unwrap();
    Postgres::execute_script(&mut tx, turn).await.unwrap();
    let values = Values {
        limit: 1000,
        lane,
        ..Values::default()
    };
    let plan = explain(&mut tx, &read.sql, &values.bind(read)).await;
    tx.rollback().await.unwrap();
    plan
}

#[tokio::test]
async fn lanes_are_read_from_their_index_whatever_the_statistics_say() {
    // A database of its own (the table, the claims table and the trigger function).
    super::test_database::on_own_database("lane_plans", plans).await;
}

async fn plans(options: PgConnectOptions) {
    let mut conn = options.connect().await.unwrap();
    let name = "lane_plans";
    let (table, sql) = super::test_database::signal_table(&mut conn, name).await;
    // Statistics only as this test writes them.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {table} SET (autovacuum_enabled = off)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let Ordered::Watermark { turn, settled, .. } = &sql.ordered.read else {
        panic!("PostgreSQL reads in txid order")
    };
    let lane_index = format!("{name}_lane8");
    let probe = &sql.lane_sql.as_ref().unwrap().with_rows;

    // Statistics of the table as it was (100,000 rows over 1,000 keys: every lane as full
    // as the others), then what it holds now, never analysed: 100,000 rows without a key
    // (all in one lane), then 10 rows of each of 16 keys after them. With these statistics
    // the planner took the `(txid, id)` index for a lane with few rows. What it holds now is
    // written while another transaction is open, inserting 50,000 rows without a key: above
    // the watermark.
    let sql_text = |text: String| sqlx::raw_sql(sqlx::AssertSqlSafe(text));
    sql_text(format!(
        "INSERT INTO {table} (topic, body, ordering_key) \
         SELECT 't', '\\x00'::bytea, 'k' || (i % 1000) FROM generate_series(1, 100000) AS i; \
         ANALYZE {table}; TRUNCATE {table}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let mut holder = options.connect().await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sql_text(format!(
        "INSERT INTO {table} (topic, body) SELECT 't', '\\x00'::bytea FROM generate_series(1, 50000)"
    ))
    .execute(&mut *held)
    .await
    .unwrap();
    sql_text(format!(
        "INSERT INTO {table} (topic, body) SELECT 't', '\\x00'::bytea FROM generate_series(1, 100000); \
         INSERT INTO {table} (topic, body, ordering_key) \
         SELECT 't', '\\x00'::bytea, 'k' || (i % 16) FROM generate_series(1, 160) AS i"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    // A flusher's session, for the probe of the lanes.
    let lanes = Postgres::DIALECT.lanes.clone().unwrap();
    let session = sqlx::SqlSafeStr::into_sql_str(lanes.session);
    Postgres::execute_script(&mut conn, &session).await.unwrap();

    // Held back by the open transaction, a lane's read stops at the watermark: a few pages,
    // not the lane's 100,000 entries above it.
    for lane in 0..8 {
        let plan = lane_read(&mut conn, turn, settled, lane).await;
        assert!(
            pages(&plan) < 20,
            "lane {lane} read past the watermark: {plan:#?}"
        );
    }
    // Nothing can be sent, and the probe finds that out without walking the insert.
    assert_eq!(
        sql.lanes_with_rows::<Postgres>(&mut conn).await.unwrap(),
        Vec::<u32>::new()
    );
    let plan = explain(&mut conn, probe, &[]).await;
    assert!(
        pages(&plan) < 100,
        "the probe walked past the watermark: {plan:#?}"
    );
    held.rollback().await.unwrap();

    let expected: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT (hashtextextended(COALESCE(ordering_key, ''), 0) & 7) AS l \
         FROM {table} ORDER BY l"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();

    // The probe of the lanes.
    let with_rows = sql.lanes_with_rows::<Postgres>(&mut conn).await.unwrap();
    assert_eq!(
        with_rows.iter().map(|&l| i64::from(l)).collect::<Vec<_>>(),
        expected
    );
    let plan = explain(&mut conn, probe, &[]).await;
    assert!(
        plan.iter().any(|l| l.contains(&lane_index))
            && sum_of(&plan, "Rows Removed by Filter: ") == 0,
        "the probe of the lanes: {plan:#?}"
    );

    // Each lane's read: from the lane index, no sort, no row of another lane looked at.
    for lane in 0..8 {
        let plan = lane_read(&mut conn, turn, settled, lane).await;
        assert!(
            plan.iter().any(|l| l.contains(&lane_index))
                && !plan.iter().any(|l| l.contains("Sort")),
            "lane {lane}: {plan:#?}"
        );
        assert!(
            sum_of(&plan, "Rows Removed by Filter: ") < 100,
            "lane {lane} looked at the rows of other lanes: {plan:#?}"
        );
    }

    // A type with its own `order_by`: the lane index still, and an incremental sort of each
    // transaction's rows (never a sort of the lane).
    let by_time = Statements::new(
        Postgres::DIALECT,
        &table,
        &[crate::signal::OrderColumn {
            column: "created_at".to_owned(),
            descending: false,
        }],
        Duration::from_secs(5),
        false,
    );
    let Ordered::Watermark { turn, settled, .. } = &by_time.ordered.read else {
        panic!("PostgreSQL reads in txid order")
    };
    for lane in 0..8 {
        let plan = lane_read(&mut conn, turn, settled, lane).await;
        assert!(
            plan.iter().any(|l| l.contains(&lane_index))
                && !plan
                    .iter()
                    .any(|l| l.contains("Sort (") && !l.contains("Incremental Sort (")),
            "lane {lane}, ordered by created_at: {plan:#?}"
        );
    }
}
