//! Row helpers: get or lock a row by its primary key, for any sqlx `FromRow` type that says
//! where it lives ([`TableRow`]). Table and column names go through [`Ident`].

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::locking::RowLock;
use crate::storage::Backend;
use crate::transaction::Transaction;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, FromRow, Type};

/// A row type with a primary key: the table it lives in and the key's columns.
///
/// ```
/// // Usually `#[derive(sqlx::FromRow)]` (sqlx's `derive` feature); any `FromRow` will do.
/// struct Account { id: i64, balance: i64 }
/// # impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for Account
/// # where
/// #     &'static str: sqlx::ColumnIndex<R>,
/// #     i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
/// # {
/// #     fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
/// #         Ok(Account { id: row.try_get("id")?, balance: row.try_get("balance")? })
/// #     }
/// # }
///
/// impl signalbus_core::atomic::TableRow for Account {
///     const TABLE: &'static str = "accounts";
///     const PRIMARY_KEY: &'static [&'static str] = &["id"];
///     type Key = i64;
///     fn primary_key(&self) -> i64 { self.id }
/// }
/// ```
///
/// A composite key is a tuple: `PRIMARY_KEY = &["tenant", "id"]`, `type Key = (String, i64)`.
///
/// Code generic over the database needs the bounds the helpers need:
/// `R: for<'r> sqlx::FromRow<'r, DB::Row>, R::Key: PrimaryKey<DB>`; code for one database
/// needs none.
pub trait TableRow: Send + Unpin + Sized {
    /// The table, optionally `schema.table`.
    const TABLE: &'static str;
    /// The primary-key columns, in the order of [`TableRow::Key`]'s values.
    const PRIMARY_KEY: &'static [&'static str];
    /// The columns to read; empty (the default) reads `*`.
    const COLUMNS: &'static [&'static str] = &[];
    /// The primary key's value(s): a single value or a tuple (see [`PrimaryKey`]).
    type Key;
    /// The primary-key value(s) of this row.
    fn primary_key(&self) -> Self::Key;
}

/// Values of a primary key that can be bound as query parameters: tuples of up to four values
/// of any type sqlx can encode (`(uuid,)` for a single value of any type), and the common
/// scalars (`i16`, `i32`, `i64`, `String`, `&str`, `bool`, `Vec<u8>`) without a tuple.
pub trait PrimaryKey<DB: Database>: Send {
    /// How many values.
    const LEN: usize;
    /// Bind the values, in order.
    fn add_to(self, args: &mut DB::Arguments) -> Result<(), BoxDynError>;
}

macro_rules! tuple_key {
    ($len:expr; $($T:ident $i:tt),+) => {
        impl<DB: Database, $($T),+> PrimaryKey<DB> for ($($T,)+)
        where
            $($T: for<'q> Encode<'q, DB> + Type<DB> + Send),+
        {
            const LEN: usize = $len;
            fn add_to(self, args: &mut DB::Arguments) -> Result<(), BoxDynError> {
                $(args.add(self.$i)?;)+
                Ok(())
            }
        }
    };
}
tuple_key!(1; A 0);
tuple_key!(2; A 0, B 1);
tuple_key!(3; A 0, B 1, C 2);
tuple_key!(4; A 0, B 1, C 2, D 3);

macro_rules! scalar_key {
    ($($T:ty),+) => {$(
        impl<DB: Database> PrimaryKey<DB> for $T
        where
            $T: for<'q> Encode<'q, DB> + Type<DB>,
        {
            const LEN: usize = 1;
            fn add_to(self, args: &mut DB::Arguments) -> Result<(), BoxDynError> {
                args.add(self)
            }
        }
    )+};
}
scalar_key!(i16, i32, i64, String, bool, Vec<u8>);

impl<'a, DB: Database> PrimaryKey<DB> for &'a str
where
    &'a str: for<'q> Encode<'q, DB> + Type<DB>,
{
    const LEN: usize = 1;
    fn add_to(self, args: &mut DB::Arguments) -> Result<(), BoxDynError> {
        args.add(self)
    }
}

fn column(name: &str) -> Result<Ident> {
    if name.contains('.') {
        return Err(Error::InvalidIdentifier {
            ident: name.to_owned(),
            reason: "a column name cannot have a `.`",
        });
    }
    Ident::new(name)
}

/// `SELECT .. FROM table WHERE pk1 = ? AND ..`, plus the lock clause.
fn select_sql<DB: Backend, R: TableRow>(key_len: usize, lock: Option<RowLock>) -> Result<String> {
    let q = DB::DIALECT.quote;
    if R::PRIMARY_KEY.is_empty() || R::PRIMARY_KEY.len() != key_len {
        return Err(Error::Config(format!(
            "TableRow for table `{}`: PRIMARY_KEY names {} column(s) but Key has {} value(s)",
            R::TABLE,
            R::PRIMARY_KEY.len(),
            key_len
        )));
    }
    let columns = if R::COLUMNS.is_empty() {
        "*".to_owned()
    } else {
        let quoted: Result<Vec<_>> = R::COLUMNS
            .iter()
            .map(|c| Ok(column(c)?.quoted(q)))
            .collect();
        quoted?.join(", ")
    };
    let mut sql = format!(
        "SELECT {columns} FROM {} WHERE ",
        Ident::new(R::TABLE)?.quoted(q)
    );
    for (i, name) in R::PRIMARY_KEY.iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        sql.push_str(&column(name)?.quoted(q));
        sql.push_str(" = ");
        sql.push_str(&DB::DIALECT.placeholder(i + 1));
    }
    if let Some(lock) = lock {
        sql.push_str((DB::DIALECT.row_lock)(lock));
    }
    Ok(sql)
}

async fn fetch<DB, R>(
    conn: &mut DB::Connection,
    key: R::Key,
    lock: Option<RowLock>,
) -> Result<Option<R>>
where
    DB: Backend,
    R: TableRow + for<'r> FromRow<'r, DB::Row>,
    R::Key: PrimaryKey<DB>,
{
    let sql = select_sql::<DB, R>(<R::Key as PrimaryKey<DB>>::LEN, lock)?;
    let mut args = DB::Arguments::default();
    key.add_to(&mut args)
        .map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
    DB::fetch_optional_with(conn, sql, args).await
}

/// The row of `R` whose primary key is `key`, if there is one.
pub async fn get_row<DB, R>(conn: &mut DB::Connection, key: R::Key) -> Result<Option<R>>
where
    DB: Backend,
    R: TableRow + for<'r> FromRow<'r, DB::Row>,
    R::Key: PrimaryKey<DB>,
{
    fetch::<DB, R>(conn, key, None).await
}

/// The row of `R` whose primary key is `key`, locked until the transaction ends
/// (`SELECT .. FOR UPDATE` and friends, see [`RowLock`]). `None` when there is no such row,
/// or it is locked and `lock` skips locked rows.
pub async fn lock_row<DB, R>(
    conn: &mut DB::Connection,
    key: R::Key,
    lock: RowLock,
) -> Result<Option<R>>
where
    DB: Backend,
    R: TableRow + for<'r> FromRow<'r, DB::Row>,
    R::Key: PrimaryKey<DB>,
{
    fetch::<DB, R>(conn, key, Some(lock)).await
}

impl<DB: Backend> Transaction<'_, DB> {
    /// The row of `R` with primary key `key`, read in this transaction ([`get_row`]).
    pub async fn get_row<R>(&mut self, key: R::Key) -> Result<Option<R>>
    where
        R: TableRow + for<'r> FromRow<'r, DB::Row>,
        R::Key: PrimaryKey<DB>,
    {
        get_row::<DB, R>(self, key).await
    }

    /// The row of `R` with primary key `key`, locked until this transaction ends
    /// ([`lock_row`]).
    pub async fn lock_row<R>(&mut self, key: R::Key, lock: RowLock) -> Result<Option<R>>
    where
        R: TableRow + for<'r> FromRow<'r, DB::Row>,
        R::Key: PrimaryKey<DB>,
    {
        lock_row::<DB, R>(self, key, lock).await
    }

    /// `record` as it is now in the database (read by its primary key), or `None` if its row
    /// is gone.
    pub async fn reload<R>(&mut self, record: &R) -> Result<Option<R>>
    where
        R: TableRow + for<'r> FromRow<'r, DB::Row>,
        R::Key: PrimaryKey<DB>,
    {
        get_row::<DB, R>(self, record.primary_key()).await
    }
}

#[cfg(all(test, feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod tests {
    use super::*;

    struct Member;
    impl TableRow for Member {
        const TABLE: &'static str = "app.members";
        const PRIMARY_KEY: &'static [&'static str] = &["tenant", "id"];
        type Key = (String, i64);
        fn primary_key(&self) -> (String, i64) {
            (String::new(), 0)
        }
    }

    #[test]
    fn select_sql_per_database() {
        assert_eq!(
            select_sql::<sqlx::Postgres, Member>(2, Some(RowLock::UPDATE.nowait())).unwrap(),
            r#"SELECT * FROM "app"."members" WHERE "tenant" = $1 AND "id" = $2 FOR UPDATE NOWAIT"#
        );
        assert_eq!(
            select_sql::<sqlx::MySql, Member>(2, Some(RowLock::SHARE.skip_locked())).unwrap(),
            "SELECT * FROM `app`.`members` WHERE `tenant` = ? AND `id` = ? \
             LOCK IN SHARE MODE SKIP LOCKED"
        );
        assert_eq!(
            select_sql::<sqlx::Sqlite, Member>(2, Some(RowLock::UPDATE)).unwrap(),
            r#"SELECT * FROM "app"."members" WHERE "tenant" = ? AND "id" = ?"#
        );
        assert!(matches!(
            select_sql::<sqlx::Postgres, Member>(1, None),
            Err(Error::Config(_))
        ));
    }
}
