//! One database the console looks at: a [`SignalBus`] of any database, behind an
//! object-safe trait so that one console holds buses of PostgreSQL, MySQL and SQLite side
//! by side. Private: users hand the console their bus.

use futures_util::future::BoxFuture;
use signalbus_core::inspection::{
    AuditEntry, AuditRecord, BulkAction, FailureGroup, Matched, SignalDetail, SignalFilter,
    SignalPage, TypeOverview,
};
use signalbus_core::{Backend, ParkedRows, Result, Selection, SignalBus};

pub(crate) trait Source: Send + Sync + 'static {
    /// The database's name in URLs and pages (the bus' name).
    fn name(&self) -> &str;
    /// Its signal types, in registration order.
    fn signals(&self) -> Vec<String>;
    fn overview<'a>(&'a self, signal: &'a str) -> BoxFuture<'a, Result<TypeOverview>>;
    fn list<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
        after: Option<i64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<SignalPage>>;
    fn count<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
    ) -> BoxFuture<'a, Result<Matched>>;
    fn groups<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
    ) -> BoxFuture<'a, Result<Vec<FailureGroup>>>;
    fn detail<'a>(
        &'a self,
        signal: &'a str,
        id: i64,
        body_cap: usize,
    ) -> BoxFuture<'a, Result<Option<SignalDetail>>>;
    fn act<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
        action: BulkAction,
        through_id: Option<i64>,
        batch: usize,
    ) -> BoxFuture<'a, Result<u64>>;
    /// Unpark or purge the one parked signal `id`, or retry it when it backs off; how many
    /// were changed (0 or 1).
    fn act_one<'a>(
        &'a self,
        signal: &'a str,
        id: i64,
        action: BulkAction,
    ) -> BoxFuture<'a, Result<u64>>;
    fn record_audit<'a>(&'a self, record: AuditRecord<'a>) -> BoxFuture<'a, Result<()>>;
    fn audit_log(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>>>;
}

impl<DB: Backend> Source for SignalBus<DB> {
    fn name(&self) -> &str {
        SignalBus::name(self)
    }

    fn signals(&self) -> Vec<String> {
        self.signal_types().map(|t| t.name().to_owned()).collect()
    }

    fn overview<'a>(&'a self, signal: &'a str) -> BoxFuture<'a, Result<TypeOverview>> {
        Box::pin(SignalBus::overview(self, signal))
    }

    fn list<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
        after: Option<i64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<SignalPage>> {
        Box::pin(self.list_signals(signal, filter, after, limit))
    }

    fn count<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
    ) -> BoxFuture<'a, Result<Matched>> {
        Box::pin(self.count_signals(signal, filter))
    }

    fn groups<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
    ) -> BoxFuture<'a, Result<Vec<FailureGroup>>> {
        Box::pin(self.failure_groups(signal, filter))
    }

    fn detail<'a>(
        &'a self,
        signal: &'a str,
        id: i64,
        body_cap: usize,
    ) -> BoxFuture<'a, Result<Option<SignalDetail>>> {
        Box::pin(self.signal_detail(signal, id, body_cap))
    }

    fn act<'a>(
        &'a self,
        signal: &'a str,
        filter: &'a SignalFilter,
        action: BulkAction,
        through_id: Option<i64>,
        batch: usize,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.act_on_held(signal, filter, action, through_id, batch))
    }

    fn act_one<'a>(
        &'a self,
        signal: &'a str,
        id: i64,
        action: BulkAction,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let selection = Selection::only([signal]);
            let ids = [id];
            match action {
                BulkAction::Unpark => self.unpark(&selection, ParkedRows::Ids(&ids)).await,
                BulkAction::Purge => self.purge_parked(&selection, ParkedRows::Ids(&ids)).await,
                BulkAction::Retry => self.retry_now(&selection, &ids).await,
            }
        })
    }

    fn record_audit<'a>(&'a self, record: AuditRecord<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { SignalBus::record_audit(self, &record).await })
    }

    fn audit_log(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>>> {
        Box::pin(SignalBus::audit_log(self, limit))
    }
}
