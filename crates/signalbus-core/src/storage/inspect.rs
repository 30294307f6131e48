//! The SQL of what operators read and do ([`crate::inspection`]): a filter as a `WHERE`
//! clause with its bound values, lists paged by id, counts, failure-group aggregates, one
//! signal's detail, and the audit log. Built per request (filters vary); every value is
//! bound, and the only names in the text are the validated table name and our own columns.

use super::backend::{Backend, Param};
use super::dialect::Dialect;
use super::session::owned_sql;
use crate::error::Result;
use crate::inspection::{AuditRecord, SignalFilter, SignalState};

/// Held back by a refusal or a deferral, and not parked (as `pending_stats` counts it).
pub(crate) const BACKING_OFF: &str = "t.parked_at IS NULL AND (t.attempts > 0 OR (t.claim IS NULL \
     AND t.next_attempt_at IS NOT NULL AND t.last_error IS NOT NULL))";
/// Parked.
pub(crate) const PARKED: &str = "t.parked_at IS NOT NULL";

/// The most failure groups (distinct fingerprints) a read of them keeps: beyond it the
/// operator is asked to narrow the filter. The distinct (error, destination, routing key)
/// triples behind them are streamed, however many (errors that name an id each are one group).
pub(crate) const MAX_GROUPS: usize = 10_000;

/// The audit log's table, in every database the console acts on.
pub(crate) const AUDIT_TABLE: &str = "signalbus_console_audit";

/// A bound value (owned: filters are built per request).
#[derive(Debug, Clone)]
enum Bound {
    Int(i64),
    Text(String),
}

/// One statement being built: its text and its bound values, in order.
#[derive(Debug)]
pub(crate) struct Query {
    d: &'static Dialect,
    sql: String,
    values: Vec<Bound>,
}

impl Query {
    fn new(d: &'static Dialect) -> Self {
        Query {
            d,
            sql: String::new(),
            values: Vec::new(),
        }
    }

    /// The placeholder of a new bound value.
    fn bind(&mut self, value: Bound) -> String {
        self.values.push(value);
        self.d.placeholder(self.values.len())
    }

    fn params(&self) -> Vec<Param<'_>> {
        self.values
            .iter()
            .map(|v| match v {
                Bound::Int(n) => Param::Int(*n),
                Bound::Text(t) => Param::Text(t),
            })
            .collect()
    }

    /// `t.created_at` compared with now minus `ms`.
    fn created_vs_now(&mut self, op: &str, ms: i64) -> String {
        let p = self.bind(Bound::Int(-ms));
        format!(
            "t.created_at {op} {}",
            self.d.now_plus_ms.replace("{ms}", &p)
        )
    }

    /// The `WHERE` condition of `filter` (its group is checked by the caller), plus
    /// `errors`: only these exact last errors (a failure group's, when there are few).
    fn condition(&mut self, filter: &SignalFilter, errors: Option<&[String]>) -> String {
        let mut parts: Vec<String> = vec![match filter.state {
            SignalState::Held => format!("({PARKED} OR ({BACKING_OFF}))"),
            SignalState::BackingOff => format!("({BACKING_OFF})"),
            SignalState::Parked => PARKED.to_owned(),
            SignalState::Pending => "1 = 1".to_owned(),
        }];
        if let Some(key) = &filter.ordering_key {
            let p = self.bind(Bound::Text(key.clone()));
            parts.push(format!("t.ordering_key = {p}"));
        }
        if let Some(text) = &filter.error_contains {
            // Lowered by the database on both sides: Rust's lowercase of a non-ASCII letter
            // is not what an ASCII-only LOWER (SQLite, PostgreSQL's C collation) makes.
            let pattern = format!("%{}%", like_escaped(text));
            let p = self.bind(Bound::Text(pattern));
            parts.push(format!("LOWER(t.last_error) LIKE LOWER({p}) ESCAPE '!'"));
        }
        if let Some((name, value)) = &filter.header {
            // Names were validated (letters, digits, `-_.:`): safe inside a quoted JSON path.
            let key = if self.d.header_by_path {
                format!("$.\"{name}\"")
            } else {
                name.clone()
            };
            let k = self.bind(Bound::Text(key));
            let v = self.bind(Bound::Text(value.clone()));
            let header = self.d.header_value.replace("{name}", &k);
            // Every JSON writer spells a value of plain characters the same way (others may
            // be escaped differently: `\u00e9` for `é`, `\/` for `/`, `\u002B` for `+` by
            // .NET), so its JSON text can be looked for before the headers are parsed.
            let plain = value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _-.:@=,;#~".contains(c));
            let header = match self.d.header_contains {
                Some(contains) if plain => {
                    let needle = self.bind(Bound::Text(format!("\"{value}\"")));
                    let test = contains.replace("{needle}", &needle);
                    format!("CASE WHEN {test} THEN {header} END")
                }
                _ => header,
            };
            parts.push(format!("{header} = {v}"));
        }
        if let Some(age) = filter.older_than {
            let c = self.created_vs_now("<=", super::millis(age));
            parts.push(c);
        }
        if let Some(age) = filter.newer_than {
            let c = self.created_vs_now(">=", super::millis(age));
            parts.push(c);
        }
        if let Some(errors) = errors {
            let list: Vec<String> = errors
                .iter()
                .map(|e| self.bind(Bound::Text(e.clone())))
                .collect();
            parts.push(format!("t.last_error IN ({})", list.join(", ")));
        }
        parts.join(" AND ")
    }

    pub async fn fetch_inspected<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<super::InspectedRow>> {
        DB::fetch_inspected(conn, &owned_sql(&self.sql), &self.params()).await
    }

    pub async fn fetch_groups<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<super::GroupRow>> {
        DB::fetch_groups(conn, &owned_sql(&self.sql), &self.params()).await
    }

    pub async fn each_group<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        each: &mut (dyn FnMut(super::GroupRow) -> Result<()> + Send),
    ) -> Result<()> {
        DB::each_group(conn, &owned_sql(&self.sql), &self.params(), each).await
    }

    pub async fn fetch_rows<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<super::StoredRow>> {
        DB::fetch_rows(conn, &owned_sql(&self.sql), &self.params()).await
    }

    pub async fn fetch_ids<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Vec<i64>> {
        DB::fetch_ids(conn, &owned_sql(&self.sql), &self.params()).await
    }

    pub async fn fetch_audit<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<super::AuditRow>> {
        DB::fetch_audit(conn, &owned_sql(&self.sql), &self.params()).await
    }

    pub async fn execute<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<u64> {
        DB::execute(conn, &owned_sql(&self.sql), &self.params()).await
    }
}

/// `text` with the `LIKE` wildcards and the escape character (`!`) escaped.
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// The SQL of inspection for one signal table (`t`: its quoted name).
pub(crate) struct Inspect {
    d: &'static Dialect,
    t: String,
    /// Where bursts claim ranges of ids: "the row is in a live range" (the row's own lease
    /// columns are not written then).
    in_range: Option<String>,
}

impl Inspect {
    pub fn new<DB: Backend>(table: &crate::ident::Ident) -> Self {
        let d = DB::DIALECT;
        let t = table.quoted(d.quote);
        // The table's name is a validated identifier: safe inside the literal.
        let in_range = d.range_claims.map(|r| {
            let live = r
                .live
                .replace("{name}", &table.to_string())
                .replace("{now}", d.now)
                .replace("{of_lane}", "");
            format!(
                "NOT ({})",
                r.outside.replace("{live}", &live).replace("{p}", "t.")
            )
        });
        Inspect { d, t, in_range }
    }

    fn age(&self, column: &str) -> String {
        self.d.age_micros.replace("{min}", column)
    }

    /// The columns of [`super::InspectedRow`], `body_cap` > 0 also reads up to that many
    /// bytes of the body (the detail).
    fn columns(&self) -> String {
        let d = self.d;
        let leased = format!("t.claim IS NOT NULL AND t.next_attempt_at > {}", d.now);
        let in_flight = d.flag.replace(
            "{c}",
            &match &self.in_range {
                Some(in_range) => format!("({leased}) OR {in_range}"),
                None => leased,
            },
        );
        let body = d.read_body.replace("{p}", "t.");
        format!(
            "t.id, t.message_id, t.topic, t.routing_key, t.ordering_key, t.content_type, \
             {}, t.last_error, {}, {}, {}, {in_flight}, {}, t.headers, {}",
            d.int8.replace("{e}", "t.attempts"),
            self.age("t.created_at"),
            self.age("t.parked_at"),
            self.age("t.next_attempt_at"),
            d.int8.replace("{e}", &format!("LENGTH({body})")),
            self.age("t.last_attempt_at"),
        )
    }

    /// Up to `limit` rows matching `filter` with ids above `after` (and at most `through`),
    /// lowest first.
    pub fn list(
        &self,
        filter: &SignalFilter,
        errors: Option<&[String]>,
        after: Option<i64>,
        through: Option<i64>,
        limit: usize,
    ) -> Query {
        let mut q = Query::new(self.d);
        let mut cond = q.condition(filter, errors);
        if let Some(after) = after {
            cond.push_str(&format!(" AND t.id > {}", q.bind(Bound::Int(after))));
        }
        if let Some(through) = through {
            cond.push_str(&format!(" AND t.id <= {}", q.bind(Bound::Int(through))));
        }
        let limit = q.bind(Bound::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        q.sql = format!(
            "SELECT {} FROM {} AS t WHERE {cond} ORDER BY t.id LIMIT {limit}",
            self.columns(),
            self.t
        );
        q
    }

    /// One row by id, whatever its state.
    pub fn one(&self, id: i64) -> Query {
        let mut q = Query::new(self.d);
        let p = q.bind(Bound::Int(id));
        q.sql = format!(
            "SELECT {} FROM {} AS t WHERE t.id = {p}",
            self.columns(),
            self.t
        );
        q
    }

    /// The row `id` as sent ([`super::StoredRow`]), its body cut at `cap` bytes.
    pub fn body(&self, id: i64, cap: usize) -> Query {
        let d = self.d;
        let mut q = Query::new(d);
        let body = d.read_body.replace("{p}", "t.");
        let cap = cap.min(1 << 30);
        let p = q.bind(Bound::Int(id));
        q.sql = format!(
            "SELECT t.id, t.message_id, t.topic, t.routing_key, t.headers, SUBSTR({body}, 1, {cap}), \
             t.content_type, {}, {}, {}, t.ordering_key FROM {} AS t WHERE t.id = {p}",
            d.int8.replace("{e}", "t.attempts"),
            d.flag.replace("{c}", "1 = 0"),
            self.age("t.created_at"),
            self.t
        );
        q
    }

    /// How many rows of `key` come after `id`.
    pub fn behind(&self, key: &str, id: i64) -> Query {
        let mut q = Query::new(self.d);
        let k = q.bind(Bound::Text(key.to_owned()));
        let p = q.bind(Bound::Int(id));
        q.sql = format!(
            "SELECT COUNT(*) FROM {} AS t WHERE t.ordering_key = {k} AND t.id > {p}",
            self.t
        );
        q
    }

    /// Per distinct (last error, destination, routing key) of the rows matching `filter`:
    /// how many, how many parked, the highest id, the ages of the oldest and newest. One
    /// aggregate row for the whole filter when `whole` (the count of a filter without a
    /// group).
    pub fn groups(&self, filter: &SignalFilter, errors: Option<&[String]>, whole: bool) -> Query {
        let mut q = Query::new(self.d);
        let cond = q.condition(filter, errors);
        let aggregates = format!(
            "COUNT(*), COUNT(CASE WHEN {PARKED} THEN 1 END), MAX(t.id), {}, {}",
            self.age("MIN(t.created_at)"),
            self.age("MAX(t.created_at)")
        );
        q.sql = if whole {
            format!(
                "SELECT MIN(t.last_error), MIN(t.topic), MIN(t.routing_key), {aggregates} \
                 FROM {} AS t WHERE {cond}",
                self.t
            )
        } else {
            format!(
                "SELECT t.last_error, t.topic, t.routing_key, {aggregates} FROM {} AS t \
                 WHERE {cond} GROUP BY t.last_error, t.topic, t.routing_key",
                self.t
            )
        };
        q
    }
}

/// The audit log's statements.
pub(crate) struct Audit;

impl Audit {
    /// Create the table when it is not there.
    pub fn create<DB: Backend>() -> String {
        let c = &DB::DIALECT.columns;
        format!(
            "CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (id {}, recorded_at {}, actor {s} NOT NULL, \
             actor_role {s} NOT NULL, action {s} NOT NULL, signal_name {s} NOT NULL, \
             filter_text {} NOT NULL, matched {}, changed {}){}",
            c.id,
            c.created_at,
            c.long_text,
            c.counter,
            c.counter,
            c.table_options,
            s = c.short_text,
        )
    }

    /// Insert one line.
    pub fn insert<DB: Backend>(r: &AuditRecord<'_>) -> Query {
        let mut q = Query::new(DB::DIALECT);
        let count = |n: u64| Bound::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let values = [
            Bound::Text(r.actor.to_owned()),
            Bound::Text(r.role.to_owned()),
            Bound::Text(r.action.to_owned()),
            Bound::Text(r.signal.to_owned()),
            Bound::Text(r.filter.to_owned()),
            count(r.matched),
            count(r.changed),
        ]
        .map(|v| q.bind(v));
        q.sql = format!(
            "INSERT INTO {AUDIT_TABLE} (actor, actor_role, action, signal_name, filter_text, \
             matched, changed) VALUES ({})",
            values.join(", ")
        );
        q
    }

    /// Reads no row; fails when the table is not there.
    pub fn probe<DB: Backend>() -> Query {
        let mut q = Query::new(DB::DIALECT);
        q.sql = format!("SELECT id FROM {AUDIT_TABLE} WHERE 1 = 0");
        q
    }

    /// The newest `limit` lines.
    pub fn newest<DB: Backend>(limit: usize) -> Query {
        let d = DB::DIALECT;
        let mut q = Query::new(d);
        let p = q.bind(Bound::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        q.sql = format!(
            "SELECT t.id, t.actor, t.actor_role, t.action, t.signal_name, t.filter_text, \
             {}, {}, {} FROM {AUDIT_TABLE} AS t ORDER BY t.id DESC LIMIT {p}",
            d.int8.replace("{e}", "t.matched"),
            d.int8.replace("{e}", "t.changed"),
            d.age_micros.replace("{min}", "t.recorded_at"),
        );
        q
    }
}

#[cfg(test)]
mod tests {
    use super::like_escaped;

    #[test]
    fn like_wildcards_are_taken_literally() {
        assert_eq!(like_escaped("50%_off!"), "50!%!_off!!");
    }
}
