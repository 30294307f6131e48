//! Who is asking, and whether they may: credentials from the bearer header, the session
//! cookie or (with no tokens configured) nobody; the checks of every POST (same origin,
//! CSRF token, role); the headers every answer carries.

use crate::State;
use crate::access::{COOKIE, Caller, Role};
use crate::error::ConsoleError;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

/// The caller of a request: a bearer token, else the session cookie, else the open
/// console's operator; a wrong credential is refused, never passed over.
pub(crate) fn caller(state: &State, headers: &HeaderMap) -> Result<Caller, ConsoleError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or("");
        let Some(secret) = value.strip_prefix("Bearer ") else {
            return Err(ConsoleError::Unauthorized);
        };
        return state
            .access
            .bearer(secret.trim())
            .ok_or(ConsoleError::Unauthorized);
    }
    if let Some(session) = cookie(headers, COOKIE) {
        return state
            .access
            .caller_of_cookie(&session)
            .ok_or(ConsoleError::Unauthorized);
    }
    if !state.access.required() && !loopback_host(headers) {
        // A page of another site whose name was made to point at 127.0.0.1 (DNS
        // rebinding) sends its own name as Host: the open console answers loopback names
        // only.
        return Err(ConsoleError::Forbidden(
            "this console has no tokens and answers only requests to localhost, 127.0.0.1 or \
             [::1]; to reach it under another name, give it console tokens"
                .to_owned(),
        ));
    }
    state.access.anonymous().ok_or(ConsoleError::Unauthorized)
}

/// Whether the request's Host is a loopback name or address (any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A POST from another site (its `Origin` is not this host) is refused: the browser says
/// where a request comes from, and only the console's own pages may act.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    // The host the browser asked for: Host, or the one a proxy in front passed on (a header
    // that a form on another site cannot set).
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|h| h.to_str().ok()))
        .filter(|h| !h.is_empty())
        .collect();
    let own = ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|o| hosts.contains(&o))
    });
    if own {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "a request from another site ({origin}) cannot act on the console"
        )))
    }
}

/// How a POST proves it comes from the console's own pages or a script.
pub(crate) enum Proof<'a> {
    /// A form's CSRF token (if it had one).
    Form(Option<&'a str>),
    /// A JSON body (`Content-Type: application/json`): another site's page cannot send one
    /// without a CORS preflight, which the console never grants.
    Json,
}

/// What a POST that changes signals must pass: same origin, the CSRF token of the caller's
/// session when the browser sent the credentials by itself, and the operator role.
pub(crate) fn may_act(
    state: &State,
    caller: &Caller,
    headers: &HeaderMap,
    proof: Proof<'_>,
) -> Result<(), ConsoleError> {
    same_origin(headers)?;
    let proven = match proof {
        Proof::Json => true,
        Proof::Form(csrf) => csrf.is_some_and(|t| state.access.csrf_ok(caller, t)),
    };
    if caller.ambient && !proven {
        return Err(ConsoleError::Forbidden(
            "the form's CSRF token is missing or wrong: reload the console's page and submit \
             it from there"
                .to_owned(),
        ));
    }
    if caller.role < Role::Operator {
        return Err(ConsoleError::Forbidden(format!(
            "`{}` is a viewer: unparking and purging need an operator token",
            caller.name
        )));
    }
    Ok(())
}

/// Whether the request's body is declared JSON.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Every answer: not cached, not framed, no scripts, no referrer to other sites, forms only
/// to itself.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on
    // the console's own form POSTs, which the origin check would refuse.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    response
}
