//! `migrate` never touches a table that is not a signal table: a signal type whose table name
//! is already taken by a business table is refused with a message that says what to do, and
//! nothing at all is changed (not that table, and no other signal type's table is created).

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{Signal, SignalBus};

#[derive(Serialize, Signal)]
#[signal(table = "audit_signal")]
struct Audited {
    n: i64,
}

/// Its table name is the business table's.
#[derive(Serialize, Signal)]
#[signal(table = "orders")]
struct OrderNoted {
    n: i64,
}

/// The column names of `table`, sorted, read through a pool of the database's own type.
async fn columns<DB: TestBackend>(db: &TestDb<DB>, table: &str) -> Vec<String> {
    let mut names: Vec<String> = match DB::NAME {
        "PostgreSQL" => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let sql = "SELECT column_name::text FROM information_schema.columns \
                       WHERE table_schema = current_schema() AND table_name = $1";
            let names = sqlx::query_scalar(sql).bind(table).fetch_all(&pool).await;
            pool.close().await;
            names.unwrap()
        }
        "MySQL" => {
            let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
            let sql = "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                       WHERE table_schema = DATABASE() AND table_name = ?";
            let names = sqlx::query_scalar(sql).bind(table).fetch_all(&pool).await;
            pool.close().await;
            names.unwrap()
        }
        _ => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let sql = "SELECT name FROM pragma_table_info(?)";
            let names = sqlx::query_scalar(sql).bind(table).fetch_all(&pool).await;
            pool.close().await;
            names.unwrap()
        }
    };
    names.iter_mut().for_each(|n| *n = n.to_lowercase());
    names.sort();
    names
}

async fn migrate_refuses_a_business_table<DB: TestBackend>() {
    let db = DB::create(2).await;
    DB::create_business_table(&db.pool).await;
    let mut conn = db.pool.acquire().await.unwrap();
    DB::insert_business(&mut conn, 1).await.unwrap();
    drop(conn);
    let before = columns(&db, "orders").await;
    assert_eq!(before, ["id", "note"]);

    let bus = SignalBus::builder(db.pool.clone())
        .publisher(MemoryPublisher::new())
        .register::<Audited>()
        .register::<OrderNoted>()
        .build()
        .unwrap();
    let error = bus.migrate().await.unwrap_err().to_string();
    for part in [
        "`orders`",
        "not a signal table",
        "`message_id`",
        "changed nothing",
        "#[signal(table",
    ] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    assert_eq!(columns(&db, "orders").await, before, "orders untouched");
    assert_eq!(DB::count_business(&db.pool).await, 1);
    assert!(
        columns(&db, "audit_signal").await.is_empty(),
        "no other table created either: the check comes before any change"
    );
    // And again, with the offending type alone: the same answer, still nothing changed.
    let alone = SignalBus::builder(db.pool.clone())
        .publisher(MemoryPublisher::new())
        .register::<OrderNoted>()
        .build()
        .unwrap();
    assert!(alone.migrate().await.is_err());
    assert_eq!(columns(&db, "orders").await, before);
    db.cleanup().await;
}

on_every_database!(migrate_refuses_a_business_table);

/// A PostgreSQL error reads as the database's message and code, not sqlx's text with the
/// line of PostgreSQL's C source that raised it (`… at line 1850`).
#[tokio::test]
async fn postgres_errors_say_what_and_which_code_not_a_source_line() {
    let db = <sqlx::Postgres as TestBackend>::create(2).await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(MemoryPublisher::new())
        .register::<Audited>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    // A signal table someone broke by hand.
    sqlx::query("ALTER TABLE audit_signal DROP COLUMN attempts")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_signal (topic, body) VALUES ('a', '\\x31')")
        .execute(&db.pool)
        .await
        .unwrap();
    let error = bus
        .flush_many(&signalbus::Selection::all())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("column t.attempts") && text.contains("(code 42703)"),
        "{text}"
    );
    assert!(!text.contains(" at line "), "{text}");
    assert_eq!(error.database_code().as_deref(), Some("42703"));
    db.cleanup().await;
}

/// A table an older release made (without the columns added since) is refused by a relay of
/// this release, with what to do; `migrate` adds the columns, and the relay starts. The
/// relay would otherwise fail at its first refusal, which writes one of them.
async fn a_relay_refuses_a_table_older_than_its_release<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(2).await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(MemoryPublisher::new())
        .register::<Audited>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    // As the release before `last_attempt_at` made it.
    sqlx::raw_sql("ALTER TABLE audit_signal DROP COLUMN last_attempt_at")
        .execute(&db.pool)
        .await
        .unwrap();
    let e = bus.relay().start().await.unwrap_err().to_string();
    assert!(
        e.contains("`audit_signal` lacks the column `last_attempt_at`")
            && e.contains("run `signalbus migrate`"),
        "{e}"
    );
    bus.migrate().await.unwrap();
    assert!(
        columns(&db, "audit_signal")
            .await
            .contains(&"last_attempt_at".to_owned())
    );
    let relay = bus.relay().start().await.unwrap();
    assert!(relay.shutdown(std::time::Duration::from_secs(5)).await);
    db.cleanup().await;
}

on_every_database!(a_relay_refuses_a_table_older_than_its_release);
