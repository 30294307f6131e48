//! Signals written inside a diesel-async transaction, on PostgreSQL and MariaDB: a commit
//! sends exactly the transaction's signals, a rollback none, a bus that is down leaves them
//! pending and a later flush sends them.

use crate::common::TestBackend;
use diesel_async::{AsyncConnection, RunQueryDsl};
use signalbus::SignalBus;
use signalbus::publisher::MemoryPublisher;

#[derive(Debug, serde::Serialize, signalbus::Signal)]
#[signal(name = "orm_event", table = "orm_event")]
struct OrmEvent {
    n: i64,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// One test per database: `$db` the sqlx backend of the bus, `$conn` diesel-async's
/// connection, `$send` the function that writes a signal through it.
macro_rules! diesel_transactions {
    ($name:ident, $db:ty, $conn:ty, $send:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let db = <$db as TestBackend>::create(5).await;
            <$db as TestBackend>::create_business_table(&db.pool).await;
            let outbox = MemoryPublisher::new();
            let bus = SignalBus::builder(db.pool.clone())
                .publisher(outbox.clone())
                .register::<OrmEvent>()
                .build()
                .unwrap();
            bus.migrate().await.unwrap();
            let mut conn = <$conn>::establish(&db.url).await.unwrap();
            let rows = || <$db as TestBackend>::count_rows(&db.pool, "orm_event");

            // A commit sends the transaction's signals, and only those.
            let mut signals = bus.recorder();
            conn.transaction(async |conn| {
                diesel::sql_query("INSERT INTO orders (id, note) VALUES (1, 'x')")
                    .execute(conn)
                    .await?;
                for n in 0..2 {
                    $send(conn, &mut signals, &OrmEvent { n }).await?;
                }
                Ok::<_, Failure>(())
            })
            .await
            .unwrap();
            let report = signals.after_commit().await;
            assert_eq!((report.sent, report.pending), (2, 0), "{report:?}");
            assert_eq!(outbox.len(), 2);
            assert_eq!(rows().await, 0);

            // A transaction that fails rolls back: nothing is sent.
            let mut signals = bus.recorder();
            let failed = conn
                .transaction(async |conn| {
                    $send(conn, &mut signals, &OrmEvent { n: 9 }).await?;
                    Err::<(), Failure>("the handler failed".into())
                })
                .await;
            assert!(failed.is_err());
            assert_eq!(signals.after_commit().await.sent, 0);
            assert_eq!(outbox.len(), 2);
            assert_eq!(rows().await, 0);

            // The bus is down: committed, pending; a flush sends them later.
            outbox.set_down(true);
            let mut signals = bus.recorder();
            conn.transaction(async |conn| {
                for n in 10..12 {
                    $send(conn, &mut signals, &OrmEvent { n }).await?;
                }
                Ok::<_, Failure>(())
            })
            .await
            .unwrap();
            let report = signals.after_commit().await;
            assert_eq!((report.sent, report.pending), (0, 2), "{report:?}");
            assert_eq!(rows().await, 2);
            outbox.set_down(false);
            crate::common::flush_until(&bus, 2).await;
            assert_eq!(rows().await, 0);
            assert_eq!(crate::common::sent_numbers(&outbox), [0, 1, 10, 11]);
            drop(conn);
            bus.close(std::time::Duration::from_secs(5)).await;
            db.cleanup().await;
        }
    };
}

diesel_transactions!(
    diesel_postgres,
    sqlx::Postgres,
    diesel_async::AsyncPgConnection,
    signalbus::diesel::send_pg
);
diesel_transactions!(
    diesel_mariadb,
    sqlx::MySql,
    diesel_async::AsyncMysqlConnection,
    signalbus::diesel::send_mysql
);
