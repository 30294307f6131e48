//! Row helpers: get, lock (NOWAIT / SKIP LOCKED), reload, composite keys, name validation.

use super::{Account, AtomicDb, fast, setup};
use crate::{on_every_database, on_server_databases};
use signalbus::Error;
use signalbus::atomic::{PrimaryKey, RowLock, TableRow, get_row, is_conflict};

on_every_database!(
    get_lock_and_reload_rows,
    composite_keys,
    names_are_validated
);
on_server_databases!(nowait_and_skip_locked);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    tenant: String,
    id: i64,
    role: String,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for Member
where
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Member {
            tenant: row.try_get("tenant")?,
            id: row.try_get("id")?,
            role: row.try_get("role")?,
        })
    }
}

impl TableRow for Member {
    const TABLE: &'static str = "members";
    const PRIMARY_KEY: &'static [&'static str] = &["tenant", "id"];
    const COLUMNS: &'static [&'static str] = &["tenant", "id", "role"];
    type Key = (String, i64);
    fn primary_key(&self) -> (String, i64) {
        (self.tenant.clone(), self.id)
    }
}

async fn get_lock_and_reload_rows<DB: AtomicDb>()
where
    Account: for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: PrimaryKey<DB>,
{
    let (db, bus, _) = setup::<DB>(4).await;
    DB::add_accounts(&db.pool, 3, 100).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let three = get_row::<DB, Account>(&mut conn, 3).await.unwrap();
    assert_eq!(
        three,
        Some(Account {
            id: 3,
            balance: 100
        })
    );
    drop(conn);

    let (before, after) = bus
        .atomic(|tx| {
            Box::pin(async move {
                assert_eq!(tx.get_row::<Account>(99).await?, None);
                let one = tx.lock_row::<Account>(1, RowLock::UPDATE).await?.unwrap();
                assert_eq!(one.primary_key(), 1);
                DB::add_balance(tx, 1, 5).await?;
                let reloaded = tx.reload(&one).await?.unwrap();
                let shared = tx.lock_row::<Account>(2, RowLock::SHARE).await?;
                assert_eq!(shared.map(|a| a.balance), Some(100));
                Ok::<_, Error>((one, reloaded))
            })
        })
        .await
        .unwrap();
    assert_eq!((before.balance, after.balance), (100, 105));
    db.cleanup().await;
}

async fn composite_keys<DB: AtomicDb>()
where
    Member: for<'r> sqlx::FromRow<'r, DB::Row>,
    (String, i64): PrimaryKey<DB>,
{
    let (db, bus, _) = setup::<DB>(4).await;
    for (tenant, id, role) in [
        ("acme", 1, "admin"),
        ("acme", 2, "dev"),
        ("globex", 1, "ops"),
    ] {
        DB::insert_member(&db.pool, tenant, id, role).await;
    }
    let found = bus
        .atomic(|tx| {
            Box::pin(async move {
                let ops = tx.get_row::<Member>(("globex".into(), 1)).await?.unwrap();
                assert_eq!(ops.primary_key(), ("globex".to_owned(), 1));
                assert_eq!(tx.get_row::<Member>(("acme".into(), 3)).await?, None);
                let dev = tx
                    .lock_row::<Member>(("acme".into(), 2), RowLock::UPDATE)
                    .await?
                    .unwrap();
                assert_eq!(tx.reload(&dev).await?.as_ref(), Some(&dev));
                Ok::<_, Error>((ops.role, dev.role))
            })
        })
        .await
        .unwrap();
    assert_eq!(found, ("ops".to_owned(), "dev".to_owned()));
    db.cleanup().await;
}

struct Evil;
impl TableRow for Evil {
    const TABLE: &'static str = "accounts; DROP TABLE accounts";
    const PRIMARY_KEY: &'static [&'static str] = &["id"];
    type Key = i64;
    fn primary_key(&self) -> i64 {
        0
    }
}

struct EvilColumn;
impl TableRow for EvilColumn {
    const TABLE: &'static str = "accounts";
    const PRIMARY_KEY: &'static [&'static str] = &["id = id OR 1 = 1 --"];
    type Key = i64;
    fn primary_key(&self) -> i64 {
        0
    }
}

struct WrongArity;
impl TableRow for WrongArity {
    const TABLE: &'static str = "accounts";
    const PRIMARY_KEY: &'static [&'static str] = &["id", "balance"];
    type Key = i64;
    fn primary_key(&self) -> i64 {
        0
    }
}

macro_rules! account_row {
    ($($T:ty),*) => {$(
        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $T {
            fn from_row(_: &'r R) -> Result<Self, sqlx::Error> {
                unreachable!("never queried")
            }
        }
    )*};
}
account_row!(Evil, EvilColumn, WrongArity);

async fn names_are_validated<DB: AtomicDb>()
where
    i64: PrimaryKey<DB>,
{
    let (db, _bus, _) = setup::<DB>(2).await;
    DB::add_accounts(&db.pool, 1, 100).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let e = get_row::<DB, Evil>(&mut conn, 1).await.err().unwrap();
    assert!(matches!(e, Error::InvalidIdentifier { .. }), "{e:?}");
    let e = get_row::<DB, EvilColumn>(&mut conn, 1).await.err().unwrap();
    assert!(matches!(e, Error::InvalidIdentifier { .. }), "{e:?}");
    let e = get_row::<DB, WrongArity>(&mut conn, 1).await.err().unwrap();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    drop(conn);
    assert_eq!(DB::balances(&db.pool).await, vec![(1, 100)]);
    db.cleanup().await;
}

/// A row held by another transaction: NOWAIT fails at once (a conflict, so an atomic block
/// retries it up to its cap), SKIP LOCKED reads nothing, a shared lock shares.
async fn nowait_and_skip_locked<DB: AtomicDb>()
where
    Account: for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: PrimaryKey<DB>,
{
    let (db, bus, _) = setup::<DB>(4).await;
    DB::add_accounts(&db.pool, 2, 100).await;
    let mut holder = bus.begin().await.unwrap();
    holder
        .lock_row::<Account>(1, RowLock::UPDATE)
        .await
        .unwrap()
        .unwrap();

    let error = bus
        .atomic(|tx| {
            Box::pin(async move { tx.lock_row::<Account>(1, RowLock::UPDATE.nowait()).await })
        })
        .options(fast(3))
        .await
        .unwrap_err();
    match &error {
        Error::RetriesExhausted { attempts: 3, last } => assert!(is_conflict::<DB>(&**last)),
        other => panic!("expected 3 attempts: {other:?}"),
    }
    let skipped = bus
        .atomic(|tx| {
            Box::pin(async move {
                let one = tx
                    .lock_row::<Account>(1, RowLock::UPDATE.skip_locked())
                    .await?;
                let two = tx
                    .lock_row::<Account>(2, RowLock::UPDATE.skip_locked())
                    .await?;
                Ok::<_, Error>((one, two.map(|a| a.id)))
            })
        })
        .await
        .unwrap();
    assert_eq!(skipped, (None, Some(2)));
    holder.rollback().await.unwrap();

    // Shared locks: another shared lock is granted at once, an exclusive one is not.
    let mut holder = bus.begin().await.unwrap();
    holder
        .lock_row::<Account>(2, RowLock::SHARE)
        .await
        .unwrap()
        .unwrap();
    let shared = bus
        .atomic(|tx| {
            Box::pin(async move { tx.lock_row::<Account>(2, RowLock::SHARE.nowait()).await })
        })
        .await
        .unwrap();
    assert_eq!(shared.map(|a| a.id), Some(2));
    let error = bus
        .atomic(|tx| {
            Box::pin(async move { tx.lock_row::<Account>(2, RowLock::UPDATE.nowait()).await })
        })
        .options(fast(1))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("after 1 attempts"), "{error}");
    holder.commit().await.unwrap();
    let free = bus
        .atomic(|tx| {
            Box::pin(async move { tx.lock_row::<Account>(1, RowLock::UPDATE.nowait()).await })
        })
        .await
        .unwrap();
    assert_eq!(free.map(|a| a.balance), Some(100));
    db.cleanup().await;
}
