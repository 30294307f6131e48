//! The console's pages: server-rendered HTML (maud escapes every value), no scripts. Every
//! action is a form POST that carries the session's CSRF token, after a confirmation page
//! that shows the dry run's count.

use crate::access::{COOKIE, Caller, Role};
use crate::api::{self, Target, body_hidden, secs};
use crate::error::ConsoleError;
use crate::guard::{Proof, caller, may_act, same_origin};
use crate::query::{self, ListQuery, filter_pairs, filter_query};
use crate::{Shared, State};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as With};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use signalbus_core::inspection::{BulkAction, SignalFilter, SignalState, SignalSummary};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/audit", get(audit))
        .route("/console/databases/{db}/signals/{signal}", get(list))
        .route(
            "/console/databases/{db}/signals/{signal}/groups",
            get(groups),
        )
        .route(
            "/console/databases/{db}/signals/{signal}/rows/{id}",
            get(detail),
        )
        .route(
            "/console/databases/{db}/signals/{signal}/confirm",
            get(confirm),
        )
        .route(
            "/console/databases/{db}/signals/{signal}/act",
            axum::routing::post(act),
        )
}

/// A page, or an error shown as one (the login form for a caller without credentials).
type PageResult = Result<Response, PageError>;

pub(crate) struct PageError(ConsoleError);

impl From<ConsoleError> for PageError {
    fn from(e: ConsoleError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if self.0 == ConsoleError::Unauthorized {
            return (status, login_page(None)).into_response();
        }
        let body = layout(
            "Error",
            None,
            html! {
                h1 { "Error " (status.as_u16()) }
                p.error { (self.0.to_string()) }
                p { a href="/console" { "Back to the overview" } }
            },
        );
        (status, body).into_response()
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#1b1f24;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em 1.5em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.error{color:#a40000;font-weight:600}.note{color:#555}.warn{background:#fff4e5;padding:.6em;border-left:4px solid #f59e0b}\
form.filter{display:flex;flex-wrap:wrap;gap:.6em;align-items:end;margin:.5em 0 1em}form.filter label{display:flex;flex-direction:column;font-size:.85em}\
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-width:100%}code{font-size:.9em}\
button{padding:.3em .8em}button.danger{background:#a40000;color:#fff;border:0}";

fn layout(title: &str, who: Option<(&Caller, &str)>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · signalbus console" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        strong { "signalbus console" }
                        a href="/console" { "Overview" }
                        a href="/console/audit" { "Audit log" }
                        @if let Some((who, csrf)) = who {
                            form method="post" action="/console/logout" {
                                span #who { (who.name) " (" (who.role.as_str()) ") " }
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

fn page(state: &State, who: &Caller, title: &str, body: Markup) -> Response {
    let csrf = state.access.csrf(who);
    let show = state.access.required().then_some((who, csrf.as_str()));
    layout(title, show, body).into_response()
}

fn age(seconds: Option<u64>) -> String {
    match seconds {
        None => "–".to_owned(),
        Some(s) if s < 120 => format!("{s} s"),
        Some(s) if s < 7200 => format!("{} min", s / 60),
        Some(s) if s < 172_800 => format!("{} h", s / 3600),
        Some(s) => format!("{} d", s / 86_400),
    }
}

/// A rate, or a dash where there is none (a console without a relay's metrics).
fn per_second(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
}

fn signal_url(db: &str, signal: &str) -> String {
    format!("/console/databases/{}/signals/{}", enc(db), enc(signal))
}

/// A path segment, percent-encoded.
fn enc(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|s| s.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

fn with_query(url: String, query: &str) -> String {
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

async fn overview(With(state): With<Shared>, headers: HeaderMap) -> PageResult {
    let who = caller(&state, &headers)?;
    let databases = api::read_overview(&state).await;
    let body = html! {
        h1 { "Overview" }
        @if state.rates.is_none() {
            p.note { "Send and refuse rates show beside a relay (signalbus relay --console); \
                      the Grafana dashboard has them too." }
        }
        p.note { "Pending: every row waiting to be sent. Backing off: refused or deferred, \
                  waiting for the next attempt. Parked: refused too often, never sent again \
                  until unparked." }
        @for db in &databases {
            h2 { "Database " code { (db.name) } }
            @if let Some(e) = &db.error { p.error { (e) } }
            table #overview {
                tr { th { "Signal type" } th { "Pending" } th { "In flight" } th { "Backing off" }
                     th { "Parked" } th { "Oldest pending" } th { "Oldest backing off" } th { "Oldest parked" }
                     th { "Sent/s" } th { "Refused/s" } }
                @for t in &db.signals {
                    tr {
                        td { a href=(signal_url(&db.name, &t.name)) { (t.name) } }
                        td.n { (t.pending) } td.n { (t.in_flight) } td.n { (t.backing_off) }
                        td.n { @if t.parked > 0 {
                            a href=(with_query(signal_url(&db.name, &t.name), "state=parked")) { (t.parked) }
                        } @else { "0" } }
                        td.n { (age(t.oldest_pending_age_s)) }
                        td.n { (age(t.oldest_backing_off_age_s)) }
                        td.n { (age(t.oldest_parked_age_s)) }
                        td.n { (per_second(t.sent_per_s)) }
                        td.n { (per_second(t.refused_per_s)) }
                    }
                }
            }
        }
    };
    Ok(page(&state, &who, "Overview", body))
}

fn filter_form(action: &str, filter: &SignalFilter) -> Markup {
    let value = |name: &str| {
        filter_pairs(filter)
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    let state = filter.state;
    html! {
        form.filter method="get" action=(action) {
            label { "State"
                select name="state" {
                    @for s in [SignalState::Held, SignalState::Parked, SignalState::BackingOff, SignalState::Pending] {
                        option value=(s.as_str()) selected[s == state] { (s.as_str().replace('_', " ")) }
                    }
                }
            }
            label { "Ordering key" input name="key" value=(value("key")); }
            label { "Error contains" input name="error" value=(value("error")); }
            label { "Header (name:value)" input name="header" value=(value("header")); }
            label { "Older than (s)" input name="older_than" size="8" value=(value("older_than")); }
            label { "Newer than (s)" input name="newer_than" size="8" value=(value("newer_than")); }
            label { "Failure group" input name="group" size="17" value=(value("group")); }
            button type="submit" { "Filter" }
        }
    }
}

fn state_name(s: &SignalSummary) -> String {
    match (s.state, s.in_flight) {
        (_, true) => "in flight".to_owned(),
        (SignalState::BackingOff, _) => match s.next_attempt_in {
            Some(d) => format!("backing off ({})", age(Some(d.as_secs()))),
            None => "backing off".to_owned(),
        },
        (other, _) => other.as_str().replace('_', " "),
    }
}

async fn list(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    let who = caller(&state, &headers)?;
    let ListQuery {
        filter,
        after,
        limit,
    } = query::list(raw.as_deref())?;
    let source = state.find(&db, &signal)?;
    let bus = |e| ConsoleError::from_bus(&db, e);
    let page_rows = source
        .list(&signal, &filter, after, limit)
        .await
        .map_err(bus)?;
    // Counted on the first page only: a count reads every matching row (0.2–0.5 s over a
    // million), a page a few hundred; the confirm page counts again before any action.
    let matched = match after {
        None => Some(source.count(&signal, &filter).await.map_err(bus)?),
        Some(_) => None,
    };
    let base = signal_url(&db, &signal);
    let fq = filter_query(&filter);
    let next = page_rows.next_after.map(|n| {
        let mut q = format!("after={n}&limit={limit}");
        if !fq.is_empty() {
            q = format!("{fq}&{q}");
        }
        with_query(base.clone(), &q)
    });
    let operator = who.role == Role::Operator;
    let body = html! {
        h1 { code { (signal) } " in " code { (db) } }
        (filter_form(&base, &filter))
        @match (&matched, after) {
            (Some(m), _) => p #matched { (m.signals) " signal(s) match, " (m.parked) " of them parked. "
                a href=(with_query(format!("{base}/groups"), &fq)) { "Failure groups" } },
            (None, after) => p #matched { "Signals after id " (after.unwrap_or(0)) ". "
                a href=(with_query(base.clone(), &fq)) { "First page (with the count)" } " · "
                a href=(with_query(format!("{base}/groups"), &fq)) { "Failure groups" } },
        }
        @if operator && matched.as_ref().is_none_or(|m| m.parked > 0) && filter.state != SignalState::BackingOff {
            p {
                a #unpark-all href=(with_query(format!("{base}/confirm"), &join(&fq, "action=unpark"))) { "Unpark the parked ones…" }
                " · "
                a #purge-all href=(with_query(format!("{base}/confirm"), &join(&fq, "action=purge"))) { "Purge the parked ones…" }
            }
        }
        @if operator && matched.as_ref().is_none_or(|m| m.signals > m.parked) && matches!(filter.state, SignalState::Held | SignalState::BackingOff) {
            p {
                a #retry-all href=(with_query(format!("{base}/confirm"), &join(&fq, "action=retry"))) { "Retry the backing-off ones now…" }
            }
        }
        table #signals {
            tr { th { "Id" } th { "State" } th { "Destination" } th { "Routing key" } th { "Ordering key" }
                 th { "Attempts" } th { "Last error" } th { "Age" } }
            @for s in &page_rows.signals {
                tr {
                    td.n { a href=(format!("{base}/rows/{}", s.id)) { (s.id) } }
                    td { (state_name(s)) }
                    td { (s.destination) }
                    td { (s.routing_key.as_deref().unwrap_or("")) }
                    td { (s.ordering_key.as_deref().unwrap_or("")) }
                    td.n { (s.attempts) }
                    td { (s.last_error.as_deref().unwrap_or("")) }
                    td.n { (age(secs(s.age))) }
                }
            }
        }
        @if page_rows.signals.is_empty() {
            @if next.is_some() {
                p.note { "None of the rows read for this page is in the group; the next page reads on." }
            } @else { p.note { "Nothing matches." } }
        }
        @if let Some(next) = next { p { a #next href=(next) { "Next page →" } } }
    };
    Ok(page(&state, &who, &signal, body))
}

fn with_group(filter: &SignalFilter, group: &str) -> SignalFilter {
    let mut f = filter.clone();
    f.group = Some(group.to_owned());
    f
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}&{b}"),
    }
}

async fn groups(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    let who = caller(&state, &headers)?;
    let (filter, _) = query::parse(&query::pairs(raw.as_deref())?, &[])?;
    let source = state.find(&db, &signal)?;
    let groups = source
        .groups(&signal, &filter)
        .await
        .map_err(|e| ConsoleError::from_bus(&db, e))?;
    let base = signal_url(&db, &signal);
    let operator = who.role == Role::Operator;
    let body = html! {
        h1 { "Failure groups of " code { (signal) } " in " code { (db) } }
        p.note { "Held signals whose last errors differ only in what is particular to each \
                  (destination, routing key, numbers, ids)." }
        (filter_form(&format!("{base}/groups"), &filter))
        table #groups {
            tr { th { "Group" } th { "Error" } th { "Signals" } th { "Parked" } th { "First seen" }
                 th { "Last seen" } @if operator { th { "Act" } } }
            @for g in &groups {
                @let q = filter_query(&with_group(&filter, &g.id));
                tr {
                    td { a href=(with_query(base.clone(), &q)) { code { (g.id) } } }
                    td { (g.fingerprint) br; span.note { "e.g. " (g.example) } }
                    td.n { (g.signals) } td.n { (g.parked) }
                    td.n { (age(g.oldest_age_s)) " ago" } td.n { (age(g.newest_age_s)) " ago" }
                    @if operator { td {
                        @if g.parked > 0 {
                            a.unpark-group href=(with_query(format!("{base}/confirm"), &join(&q, "action=unpark"))) { "Unpark…" }
                            " "
                            a href=(with_query(format!("{base}/confirm"), &join(&q, "action=purge"))) { "Purge…" }
                        }
                        @if g.signals > g.parked {
                            " "
                            a.retry-group href=(with_query(format!("{base}/confirm"), &join(&q, "action=retry"))) { "Retry now…" }
                        }
                    } }
                }
            }
        }
        @if groups.is_empty() { p.note { "No held signal matches." } }
    };
    Ok(page(&state, &who, "Failure groups", body))
}

async fn detail(
    With(state): With<Shared>,
    Path((db, signal, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> PageResult {
    let who = caller(&state, &headers)?;
    let d = api::read_detail(&state, &who, &db, &signal, &id).await?;
    let s = &d.summary;
    let base = signal_url(&db, &signal);
    let hidden = body_hidden(&state, &who);
    let body_text = match api::body_text(&d.body, d.body_truncated) {
        Some(text) => text,
        // Binary: shown as hexadecimal, 32 bytes a line.
        None => d
            .body
            .chunks(32)
            .map(|c| {
                c.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let headers_text = d.headers.as_deref().map(|h| {
        serde_json::from_str::<serde_json::Value>(h)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| h.to_owned())
    });
    let row = |name: &str, value: String| html! { tr { th { (name) } td { (value) } } };
    let body = html! {
        h1 { code { (signal) } " #" (s.id) }
        table #detail {
            (row("State", state_name(s)))
            (row("Message id", s.message_id.clone()))
            (row("Destination", s.destination.clone()))
            (row("Routing key", s.routing_key.clone().unwrap_or_default()))
            (row("Ordering key", s.ordering_key.clone().unwrap_or_default()))
            (row("Content type", s.content_type.clone().unwrap_or_default()))
            (row("Attempts", s.attempts.to_string()))
            (row("Last error", s.last_error.clone().unwrap_or_default()))
            tr { th { "Failure group" } td { @if let Some(g) = &s.group {
                a href=(with_query(base.clone(), &format!("group={g}"))) { code { (g) } } } } }
            (row("Written", format!("{} ago", age(secs(s.age)))))
            (row("Last attempt", s.last_attempt.map(|d| format!("refused {} ago", age(Some(d.as_secs())))).unwrap_or_else(|| "–".to_owned())))
            (row("In flight", if s.in_flight { "yes: a flusher holds it now" } else { "no" }.to_owned()))
            (row("Parked", s.parked_for.map(|d| format!("{} ago", age(Some(d.as_secs())))).unwrap_or_else(|| "no".to_owned())))
            (row("Next attempt", s.next_attempt_in.map(|d| format!("in {}", age(Some(d.as_secs())))).unwrap_or_else(|| "–".to_owned())))
            (row("Holds back", format!("{} later signal(s) of its ordering key", d.held_behind)))
            (row("Body size", format!("{} bytes", s.body_bytes)))
        }
        h2 { "Headers" }
        pre { (headers_text.unwrap_or_else(|| "(none)".to_owned())) }
        h2 { "Body" }
        @match hidden {
            Some(why) => p.note #body-hidden { (why) },
            None => {
                pre #body { (body_text) }
                @if d.body_truncated { p.note { "Only the first " (d.body.len()) " bytes are shown." } }
            }
        }
        @if who.role == Role::Operator && s.state == SignalState::Parked {
            p {
                a #unpark-one href=(format!("{base}/confirm?action=unpark&id={}", s.id)) { "Unpark this signal…" }
                " · "
                a href=(format!("{base}/confirm?action=purge&id={}", s.id)) { "Purge this signal…" }
            }
        }
        @if who.role == Role::Operator && s.state == SignalState::BackingOff {
            p { a #retry-one href=(format!("{base}/confirm?action=retry&id={}", s.id)) { "Retry this signal now…" } }
        }
    };
    Ok(page(&state, &who, "Signal", body))
}

/// The dry run: how many signals the action would touch, and the form that runs it.
async fn confirm(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    let who = caller(&state, &headers)?;
    if who.role != Role::Operator {
        return Err(ConsoleError::Forbidden(format!(
            "`{}` is a viewer: unparking, purging and retrying need an operator token",
            who.name
        ))
        .into());
    }
    let (filter, extra) = query::parse(&query::pairs(raw.as_deref())?, &["action", "id"])?;
    let action = query::action(extra[0].as_deref().unwrap_or(""))?;
    let id = parse_id(extra[1].as_deref())?;
    let source = state.find(&db, &signal)?;
    let bus = |e| ConsoleError::from_bus(&db, e);
    let (count, through) = match id {
        Some(id) => {
            let d = source.detail(&signal, id, 0).await.map_err(bus)?;
            let acts = d.is_some_and(|d| d.summary.state == action.acts_on());
            (u64::from(acts), acts.then_some(id))
        }
        None => {
            let m = source
                .count(&signal, &api::scoped(&filter, action)?)
                .await
                .map_err(bus)?;
            (m.signals, m.through_id)
        }
    };
    let csrf = state.access.csrf(&who);
    let verb = match action {
        BulkAction::Unpark => "unpark",
        BulkAction::Purge => "purge (delete for good)",
        BulkAction::Retry => "retry now",
    };
    let which = match action.acts_on() {
        SignalState::Parked => "parked",
        _ => "backing-off",
    };
    let base = signal_url(&db, &signal);
    let body = html! {
        h1 { "Confirm: " (action.as_str()) }
        p #dry-run { "This will " (verb) " " strong #dry-run-count { (count) } " " (which) " signal(s) of "
            code { (signal) } " in " code { (db) } @if id.is_none() { ", matching:" } }
        @if id.is_none() {
            pre { (serde_json::to_string_pretty(&filter).unwrap_or_default()) }
            p.note { "Only " (which) " signals change, and none with an id above "
                     (through.map(|t| t.to_string()).unwrap_or_else(|| "–".into()))
                     ": signals written after this page was made are left alone." }
        }
        @if count > 0 {
            form method="post" action=(format!("{base}/act")) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="action" value=(action.as_str());
                @if let Some(id) = id { input type="hidden" name="id" value=(id); }
                @if let Some(t) = through { input type="hidden" name="through_id" value=(t); }
                @for (k, v) in filter_pairs(&filter) { input type="hidden" name=(k) value=(v); }
                button #confirm .danger[action == BulkAction::Purge] type="submit" { "Yes, " (action.as_str()) " " (count) }
            }
        } @else {
            p.note { "Nothing to do." }
        }
        p { a href=(base) { "Cancel" } }
    };
    Ok(page(&state, &who, "Confirm", body))
}

fn parse_id(value: Option<&str>) -> Result<Option<i64>, ConsoleError> {
    value
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ConsoleError::BadRequest(format!("`{v}` is not a row id")))
        })
        .transpose()
}

async fn act(
    With(state): With<Shared>,
    Path((db, signal)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let who = caller(&state, &headers)?;
    let raw = std::str::from_utf8(&body)
        .map_err(|_| ConsoleError::BadRequest("the form is not UTF-8".to_owned()))?;
    let (filter, extra) = query::parse(
        &query::pairs(Some(raw))?,
        &["csrf", "action", "through_id", "id"],
    )?;
    may_act(&state, &who, &headers, Proof::Form(extra[0].as_deref()))?;
    let action = query::action(extra[1].as_deref().unwrap_or(""))?;
    let through_id = parse_id(extra[2].as_deref())?;
    let target = match parse_id(extra[3].as_deref())? {
        Some(id) => Target::One(id),
        None => Target::Filter {
            filter: filter.clone(),
            through_id,
        },
    };
    let (matched, changed) = api::run_action(&state, &who, &db, &signal, action, &target).await?;
    let base = signal_url(&db, &signal);
    let next = match action {
        BulkAction::Unpark => "the relay or the next flush sends them",
        BulkAction::Purge => "they are gone",
        BulkAction::Retry => "the relay or the next flush sends them now",
    };
    let body = html! {
        h1 { "Done" }
        p #result { (action.as_str()) ": changed " strong #changed { (changed) } " of "
            (matched) " parked signal(s) matched; " (next) "." }
        @if changed < matched { p.note { "The others were no longer parked (sent, purged or \
            unparked by someone else)." } }
        p { a href=(with_query(base, &filter_query(&filter))) { "Back to the list" } }
    };
    Ok(page(&state, &who, "Done", body))
}

async fn audit(With(state): With<Shared>, headers: HeaderMap) -> PageResult {
    let who = caller(&state, &headers)?;
    let databases = api::read_audit(&state, 200).await;
    let body = html! {
        h1 { "Audit log" }
        @for db in &databases {
            h2 { "Database " code { (db.name) } }
            @if let Some(e) = &db.error { p.error { (e) } }
            table.audit {
                tr { th { "When" } th { "Who" } th { "Role" } th { "Action" } th { "Signal type" }
                     th { "Filter" } th { "Matched" } th { "Changed" } }
                @for e in &db.entries {
                    tr { td { (age(e.age_s)) " ago" } td { (e.actor) } td { (e.role) } td { (e.action) }
                         td { (e.signal) } td { code { (e.filter) } } td.n { (e.matched) } td.n { (e.changed) } }
                }
            }
            @if db.entries.is_empty() { p.note { "Nothing yet." } }
        }
    };
    Ok(page(&state, &who, "Audit log", body))
}

fn login_page(error: Option<&str>) -> Html<String> {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error #login-error { (e) } }
            form method="post" action="/console/login" {
                label { "Console token " input #token type="password" name="token" autocomplete="off"; }
                " "
                button #login type="submit" { "Log in" }
            }
        },
    )
}

async fn login_form() -> Response {
    login_page(None).into_response()
}

async fn login(With(state): With<Shared>, headers: HeaderMap, body: Bytes) -> PageResult {
    same_origin(&headers)?;
    let pairs = query::pairs(std::str::from_utf8(&body).ok())?;
    let secret = pairs
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim())
        .unwrap_or("");
    let Some(token) = state.access.by_secret(secret) else {
        tracing::warn!("a console login with an unknown token was refused");
        return Ok((
            StatusCode::UNAUTHORIZED,
            login_page(Some("That token is not one of this console's.")),
        )
            .into_response());
    };
    tracing::info!(actor = %token.name, role = token.role.as_str(), "console login");
    // `Secure` when the browser came over HTTPS (directly, or through a proxy that says so):
    // the cookie then never travels in clear text.
    let secure = if over_https(&headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        state.access.cookie_for(token),
        crate::access::SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/console").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|_| ConsoleError::BadRequest("the session cookie cannot be set".to_owned()))?,
    );
    Ok(response)
}

async fn logout(With(state): With<Shared>, headers: HeaderMap, body: Bytes) -> PageResult {
    let who = caller(&state, &headers)?;
    let pairs = query::pairs(std::str::from_utf8(&body).ok())?;
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    same_origin(&headers)?;
    if !csrf.is_some_and(|c| state.access.csrf_ok(&who, c)) {
        return Err(ConsoleError::Forbidden(
            "the form's CSRF token is missing or wrong: reload the page and log out from there"
                .to_owned(),
        )
        .into());
    }
    if let Some(session) = crate::guard::cookie(&headers, COOKIE) {
        state.access.end_session(&session);
    }
    tracing::info!(actor = %who.name, "console logout");
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "signalbus_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

/// Whether the request came over HTTPS: `X-Forwarded-Proto: https` or `Forwarded: …
/// proto=https` from a proxy in front (the console itself serves plain HTTP).
fn over_https(headers: &HeaderMap) -> bool {
    let says = |name: &str, wants: &dyn Fn(&str) -> bool| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(wants)
    };
    says("x-forwarded-proto", &|v| {
        v.split(',').any(|p| p.trim().eq_ignore_ascii_case("https"))
    }) || says("forwarded", &|v| {
        v.split([';', ','])
            .any(|p| p.trim().eq_ignore_ascii_case("proto=https"))
    })
}
