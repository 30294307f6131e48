//! The JSON API under `/console/api`: the same reads and actions as the pages, for scripts
//! (`Authorization: Bearer <token>`). Described by `/console/api/openapi.json`.

use crate::access::{Caller, Role};
use crate::error::ConsoleError;
use crate::guard::{Proof, caller, is_json, may_act};
use crate::query;
use crate::{Shared, State};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as With};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Serialize;
use signalbus_core::inspection::{
    AuditEntry, AuditRecord, BulkAction, FailureGroup, Matched, SignalDetail, SignalFilter,
    SignalState, SignalSummary,
};
use std::time::Duration;

type Answer<T> = Result<Json<T>, ConsoleError>;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/console/api/openapi.json", get(openapi))
        .route("/console/api/overview", get(overview))
        .route("/console/api/audit", get(audit))
        .route("/console/api/databases/{db}/signals/{signal}", get(list))
        .route(
            "/console/api/databases/{db}/signals/{signal}/count",
            get(count),
        )
        .route(
            "/console/api/databases/{db}/signals/{signal}/groups",
            get(groups),
        )
        .route(
            "/console/api/databases/{db}/signals/{signal}/rows/{id}",
            get(detail),
        )
        .route(
            "/console/api/databases/{db}/signals/{signal}/actions",
            post(act),
        )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Whole seconds, as the API and the pages show ages.
pub(crate) fn secs(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_secs())
}

/// One signal type's numbers.
#[derive(Debug, Serialize)]
pub(crate) struct TypeNumbers {
    pub name: String,
    pub pending: u64,
    pub in_flight: u64,
    pub backing_off: u64,
    pub parked: u64,
    pub oldest_pending_age_s: Option<u64>,
    pub oldest_backing_off_age_s: Option<u64>,
    pub oldest_parked_age_s: Option<u64>,
    /// Signals sent a second over the last minute (beside a relay only).
    pub sent_per_s: Option<f64>,
    /// Signals refused a second over the last minute (beside a relay only).
    pub refused_per_s: Option<f64>,
}

/// One database's numbers, or why it could not answer.
#[derive(Debug, Serialize)]
pub(crate) struct DatabaseNumbers {
    pub name: String,
    pub signals: Vec<TypeNumbers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rate of `signal` on `bus`, rounded to hundredths.
fn rate(
    state: &State,
    bus: &str,
    signal: &str,
    which: impl Fn(crate::rates::TypeRates) -> f64,
) -> Option<f64> {
    let r = state.rates.as_ref()?.of(bus, signal)?;
    Some((which(r) * 100.0).round() / 100.0)
}

/// The overview of every database, each read on its own (one that cannot answer says so
/// and the others still show).
pub(crate) async fn read_overview(state: &State) -> Vec<DatabaseNumbers> {
    let mut out = Vec::with_capacity(state.sources.len());
    for source in &state.sources {
        let mut db = DatabaseNumbers {
            name: source.name().to_owned(),
            signals: Vec::new(),
            error: None,
        };
        for signal in source.signals() {
            match source.overview(&signal).await {
                Ok(o) => db.signals.push(TypeNumbers {
                    sent_per_s: rate(state, source.name(), &signal, |r| r.sent),
                    refused_per_s: rate(state, source.name(), &signal, |r| r.refused),
                    name: signal,
                    pending: o.stats.count,
                    in_flight: o.in_flight,
                    backing_off: o.stats.backing_off,
                    parked: o.stats.parked,
                    oldest_pending_age_s: secs(o.stats.oldest_age),
                    oldest_backing_off_age_s: secs(o.stats.oldest_backing_off_age),
                    oldest_parked_age_s: secs(o.stats.oldest_parked_age),
                }),
                Err(e) => {
                    db.error = Some(ConsoleError::from_bus(source.name(), e).to_string());
                    break;
                }
            }
        }
        out.push(db);
    }
    out
}

#[derive(Serialize)]
struct Overview {
    databases: Vec<DatabaseNumbers>,
}

async fn overview(With(state): With<Shared>, headers: HeaderMap) -> Answer<Overview> {
    caller(&state, &headers)?;
    Ok(Json(Overview {
        databases: read_overview(&state).await,
    }))
}

/// A signal as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct SignalView {
    id: i64,
    message_id: String,
    state: &'static str,
    destination: String,
    routing_key: Option<String>,
    ordering_key: Option<String>,
    content_type: Option<String>,
    attempts: u64,
    last_error: Option<String>,
    group: Option<String>,
    age_s: Option<u64>,
    last_attempt_s: Option<u64>,
    parked_for_s: Option<u64>,
    next_attempt_in_s: Option<u64>,
    in_flight: bool,
    body_bytes: u64,
}

impl From<&SignalSummary> for SignalView {
    fn from(s: &SignalSummary) -> Self {
        SignalView {
            id: s.id,
            message_id: s.message_id.clone(),
            state: s.state.as_str(),
            destination: s.destination.clone(),
            routing_key: s.routing_key.clone(),
            ordering_key: s.ordering_key.clone(),
            content_type: s.content_type.clone(),
            attempts: s.attempts,
            last_error: s.last_error.clone(),
            group: s.group.clone(),
            age_s: secs(s.age),
            last_attempt_s: secs(s.last_attempt),
            parked_for_s: secs(s.parked_for),
            next_attempt_in_s: secs(s.next_attempt_in),
            in_flight: s.in_flight,
            body_bytes: s.body_bytes,
        }
    }
}

#[derive(Serialize)]
struct Page {
    signals: Vec<SignalView>,
    next_after: Option<i64>,
}

async fn list(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer<Page> {
    caller(&state, &headers)?;
    let q = query::list(raw.as_deref())?;
    let source = state.find(&db, &signal)?;
    let page = source
        .list(&signal, &q.filter, q.after, q.limit)
        .await
        .map_err(|e| ConsoleError::from_bus(&db, e))?;
    Ok(Json(Page {
        signals: page.signals.iter().map(SignalView::from).collect(),
        next_after: page.next_after,
    }))
}

async fn count(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer<Matched> {
    caller(&state, &headers)?;
    let (filter, _) = query::parse(&query::pairs(raw.as_deref())?, &[])?;
    let source = state.find(&db, &signal)?;
    let matched = source
        .count(&signal, &filter)
        .await
        .map_err(|e| ConsoleError::from_bus(&db, e))?;
    Ok(Json(matched))
}

#[derive(Serialize)]
struct Groups {
    groups: Vec<FailureGroup>,
}

async fn groups(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer<Groups> {
    caller(&state, &headers)?;
    let (filter, _) = query::parse(&query::pairs(raw.as_deref())?, &[])?;
    let source = state.find(&db, &signal)?;
    let groups = source
        .groups(&signal, &filter)
        .await
        .map_err(|e| ConsoleError::from_bus(&db, e))?;
    Ok(Json(Groups { groups }))
}

/// Why a body is not shown, or `None` when it is.
pub(crate) fn body_hidden(state: &State, caller: &Caller) -> Option<&'static str> {
    if state.hide_bodies {
        Some("bodies are hidden by the console's configuration")
    } else if caller.role < Role::Operator {
        Some("bodies are shown to operators only")
    } else {
        None
    }
}

#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    signal: SignalView,
    headers: Option<serde_json::Value>,
    held_behind: u64,
    body_hidden: Option<&'static str>,
    body_text: Option<String>,
    body_hex: Option<String>,
    body_truncated: bool,
}

/// A signal's detail, read with the body only when `caller` may see it.
pub(crate) async fn read_detail(
    state: &State,
    caller: &Caller,
    db: &str,
    signal: &str,
    id: &str,
) -> Result<SignalDetail, ConsoleError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ConsoleError::BadRequest(format!("`{id}` is not a row id")))?;
    let source = state.find(db, signal)?;
    let cap = if body_hidden(state, caller).is_some() {
        0
    } else {
        state.body_cap
    };
    source
        .detail(signal, id, cap)
        .await
        .map_err(|e| ConsoleError::from_bus(db, e))?
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "signal `{signal}` has no row {id} in `{db}`: it was sent or purged"
            ))
        })
}

async fn detail(
    With(state): With<Shared>,
    Path((db, signal, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Answer<Detail> {
    let who = caller(&state, &headers)?;
    let d = read_detail(&state, &who, &db, &signal, &id).await?;
    let hidden = body_hidden(&state, &who);
    let text = match hidden {
        None => body_text(&d.body, d.body_truncated),
        Some(_) => None,
    };
    let hex = match (hidden, &text) {
        (None, None) => Some(d.body.iter().map(|b| format!("{b:02x}")).collect()),
        _ => None,
    };
    Ok(Json(Detail {
        signal: SignalView::from(&d.summary),
        headers: d.headers.as_deref().map(|h| {
            serde_json::from_str(h).unwrap_or_else(|_| serde_json::Value::String(h.to_owned()))
        }),
        held_behind: d.held_behind,
        body_hidden: hidden,
        body_text: text,
        body_hex: hex,
        body_truncated: d.body_truncated && hidden.is_none(),
    }))
}

/// An action as the API takes it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    action: String,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    filter: SignalFilter,
    #[serde(default)]
    through_id: Option<i64>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Serialize)]
struct ActionAnswer {
    action: BulkAction,
    dry_run: bool,
    /// Signals the action matched (parked ones, or backing-off ones for `retry`; the dry
    /// run: would touch).
    matched: u64,
    /// The highest id the dry run matched: pass it back as `through_id`.
    through_id: Option<i64>,
    changed: u64,
}

/// A body as text when it is UTF-8; a body cut at the cap may end inside a character, which
/// does not make it binary.
pub(crate) fn body_text(body: &[u8], truncated: bool) -> Option<String> {
    match std::str::from_utf8(body) {
        Ok(text) => Some(text.to_owned()),
        Err(e) if truncated && e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&body[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

/// The signals among those `filter` matches that `action` changes: parked ones (unpark,
/// purge) or backing-off ones (retry). A filter of only the other kind is refused.
pub(crate) fn scoped(
    filter: &SignalFilter,
    action: BulkAction,
) -> Result<SignalFilter, ConsoleError> {
    let acts_on = action.acts_on();
    let other = match acts_on {
        SignalState::Parked => SignalState::BackingOff,
        _ => SignalState::Parked,
    };
    if filter.state == other {
        return Err(ConsoleError::BadRequest(format!(
            "`{}` acts on {} signals, and the filter selects {} ones only (choose state {}, \
             held or pending)",
            action.as_str(),
            acts_on.as_str(),
            other.as_str(),
            acts_on.as_str()
        )));
    }
    let mut scoped = filter.clone();
    scoped.state = acts_on;
    Ok(scoped)
}

/// What an action acts on.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The signals a filter matches that the action changes, up to an id (the dry run's,
    /// taken at the time of the action when `None`).
    Filter {
        filter: SignalFilter,
        through_id: Option<i64>,
    },
    /// One signal.
    One(i64),
}

/// Run `action` on `target`, write the audit line, and say how many signals matched and how
/// many were changed.
pub(crate) async fn run_action(
    state: &State,
    who: &Caller,
    db: &str,
    signal: &str,
    action: BulkAction,
    target: &Target,
) -> Result<(u64, u64), ConsoleError> {
    let source = state.find(db, signal)?;
    let bus = |e| ConsoleError::from_bus(db, e);
    let (matched, changed, described) = match target {
        Target::Filter { filter, through_id } => {
            let filter = &scoped(filter, action)?;
            let matched = source.count(signal, filter).await.map_err(bus)?;
            let through = through_id.or(matched.through_id);
            let changed = match through {
                None => 0,
                Some(through) => source
                    .act(signal, filter, action, Some(through), state.batch)
                    .await
                    .map_err(bus)?,
            };
            let mut described = serde_json::to_value(filter).unwrap_or_default();
            if let (Some(map), Some(through)) = (described.as_object_mut(), through) {
                map.insert("through_id".to_owned(), through.into());
            }
            (matched.signals, changed, described.to_string())
        }
        Target::One(id) => {
            let changed = source.act_one(signal, *id, action).await.map_err(bus)?;
            (
                changed,
                changed,
                serde_json::json!({ "id": id }).to_string(),
            )
        }
    };
    tracing::info!(
        target: "signalbus_console::audit",
        actor = %who.name,
        role = who.role.as_str(),
        action = action.as_str(),
        database = db,
        signal,
        filter = %described,
        matched,
        changed,
        "console action"
    );
    source
        .record_audit(AuditRecord {
            actor: &who.name,
            role: who.role.as_str(),
            action: action.as_str(),
            signal,
            filter: &described,
            matched,
            changed,
        })
        .await
        .map_err(|e| {
            tracing::error!(database = db, error = %e, "the console could not write its audit log");
            ConsoleError::Unavailable(format!(
                "{changed} signal(s) were changed, but the audit log of `{db}` could not be \
                 written ({e}); the action is in the process log"
            ))
        })?;
    Ok((matched, changed))
}

async fn act(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<ActionAnswer> {
    let who = caller(&state, &headers)?;
    if !is_json(&headers) {
        return Err(ConsoleError::BadRequest(
            "send the action as JSON, with `Content-Type: application/json`".to_owned(),
        ));
    }
    may_act(&state, &who, &headers, Proof::Json)?;
    let request: ActionRequest = serde_json::from_slice(&body).map_err(|e| {
        ConsoleError::BadRequest(format!(
            "the body must be JSON like {{\"action\": \"unpark\", \"filter\": {{\"group\": \
             \"…\"}}, \"dry_run\": true}}: {e}"
        ))
    })?;
    let action = query::action(&request.action)?;
    request
        .filter
        .validate()
        .map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
    if request.id.is_some() && request.filter != SignalFilter::default() {
        return Err(ConsoleError::BadRequest(
            "give either `id` (one signal) or `filter`, not both".to_owned(),
        ));
    }
    if request.dry_run {
        let source = state.find(&db, &signal)?;
        let bus = |e| ConsoleError::from_bus(&db, e);
        let (matched, through_id) = match request.id {
            Some(id) => {
                let d = source.detail(&signal, id, 0).await.map_err(bus)?;
                let acts = d.is_some_and(|d| d.summary.state == action.acts_on());
                (u64::from(acts), acts.then_some(id))
            }
            None => {
                let scoped = scoped(&request.filter, action)?;
                let m = source.count(&signal, &scoped).await.map_err(bus)?;
                (m.signals, m.through_id)
            }
        };
        return Ok(Json(ActionAnswer {
            action,
            dry_run: true,
            matched,
            through_id,
            changed: 0,
        }));
    }
    let target = match request.id {
        Some(id) => Target::One(id),
        None => Target::Filter {
            filter: request.filter,
            through_id: request.through_id,
        },
    };
    let (matched, changed) = run_action(&state, &who, &db, &signal, action, &target).await?;
    Ok(Json(ActionAnswer {
        action,
        dry_run: false,
        matched,
        through_id: None,
        changed,
    }))
}

#[derive(Serialize)]
pub(crate) struct DatabaseAudit {
    pub name: String,
    pub entries: Vec<AuditEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(crate) async fn read_audit(state: &State, limit: usize) -> Vec<DatabaseAudit> {
    let mut out = Vec::new();
    for source in &state.sources {
        let (entries, error) = match source.audit_log(limit).await {
            Ok(entries) => (entries, None),
            Err(e) => (
                Vec::new(),
                Some(ConsoleError::from_bus(source.name(), e).to_string()),
            ),
        };
        out.push(DatabaseAudit {
            name: source.name().to_owned(),
            entries,
            error,
        });
    }
    out
}

#[derive(Serialize)]
struct Audit {
    databases: Vec<DatabaseAudit>,
}

async fn audit(
    With(state): With<Shared>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer<Audit> {
    caller(&state, &headers)?;
    let pairs = query::pairs(raw.as_deref())?;
    let mut limit = 100;
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ConsoleError::BadRequest(format!(
                            "`limit` must be a number from 1 to 1000, got {value:?}"
                        ))
                    })?
            }
            other => {
                return Err(ConsoleError::BadRequest(format!(
                    "unknown parameter `{other}`; known: limit"
                )));
            }
        }
    }
    Ok(Json(Audit {
        databases: read_audit(&state, limit).await,
    }))
}
