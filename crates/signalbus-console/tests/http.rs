//! The console over HTTP, on a real server and a SQLite database of parked signals (the
//! browser journey with a real broker is in signalbus-tests' `console_browser.rs`): who may
//! read and act, what a forged or malformed request gets, the API's actions and audit log.

mod common;

use common::{OPERATOR, VIEWER, serve, with_tokens};
use signalbus_console::{Console, Role};
use signalbus_core::Selection;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post_json(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn viewers_read_operators_act_and_nobody_else_gets_in() {
    let s = serve(with_tokens).await;
    let api = format!("{}/console/api", s.base);
    let signals = format!("{api}/databases/shop/signals/order_placed");

    // No credentials, or wrong ones: 401 with what to do, for the API and the pages.
    let (status, body) = get(&format!("{api}/overview"), None).await;
    assert_eq!(status, 401);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    assert_eq!(
        get(&format!("{api}/overview"), Some("not-a-token-at-all-0000"))
            .await
            .0,
        401
    );
    let (status, page) = get(&format!("{}/console", s.base), None).await;
    assert_eq!(status, 401);
    assert!(page.contains("Console token"), "the login form: {page}");

    // A viewer sees the numbers and the groups, not the bodies, and cannot act.
    let (status, body) = get(&format!("{api}/overview"), Some(VIEWER)).await;
    assert_eq!(status, 200, "{body}");
    let numbers = &json(&body)["databases"][0]["signals"][0];
    assert_eq!(
        (numbers["pending"].as_u64(), numbers["parked"].as_u64()),
        (Some(12), Some(12))
    );
    let (_, body) = get(&format!("{signals}/groups"), Some(VIEWER)).await;
    let groups = json(&body)["groups"].clone();
    assert_eq!(
        groups.as_array().unwrap().len(),
        1,
        "eu and us are one group: {groups}"
    );
    let group = groups[0]["id"].as_str().unwrap().to_owned();
    let (_, body) = get(&format!("{signals}?state=parked&limit=1"), Some(VIEWER)).await;
    let id = json(&body)["signals"][0]["id"].as_i64().unwrap();
    let (status, body) = get(&format!("{signals}/rows/{id}"), Some(VIEWER)).await;
    assert_eq!(status, 200);
    assert!(!body.contains("secret-body"), "no body for viewers: {body}");
    assert_eq!(
        json(&body)["body_hidden"],
        "bodies are shown to operators only"
    );
    let (status, page) = get(
        &format!(
            "{}/console/databases/shop/signals/order_placed/rows/{id}",
            s.base
        ),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!page.contains("secret-body") && page.contains("operators only"));
    let action = format!(r#"{{"action": "unpark", "filter": {{"group": "{group}"}}}}"#);
    let (status, body) = post_json(&format!("{signals}/actions"), Some(VIEWER), &action).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");

    // The operator sees the body, runs the dry run, then the action; the audit log has it.
    let (_, body) = get(&format!("{signals}/rows/{id}"), Some(OPERATOR)).await;
    assert!(
        json(&body)["body_text"]
            .as_str()
            .unwrap()
            .contains("secret-body")
    );
    let dry = format!(
        r#"{{"action": "unpark", "filter": {{"group": "{group}", "header": ["tenant", "eu"]}}, "dry_run": true}}"#
    );
    let (status, body) = post_json(&format!("{signals}/actions"), Some(OPERATOR), &dry).await;
    assert_eq!(
        (status, body["matched"].as_u64()),
        (200, Some(12)),
        "{body}"
    );
    let through = body["through_id"].as_i64().unwrap();
    // Retry acts on backing-off signals: none here, all are parked.
    let retry =
        format!(r#"{{"action": "retry", "filter": {{"group": "{group}"}}, "dry_run": true}}"#);
    let (status, body) = post_json(&format!("{signals}/actions"), Some(OPERATOR), &retry).await;
    assert_eq!((status, body["matched"].as_u64()), (200, Some(0)), "{body}");
    s.outbox.accept_destination("nowhere.eu");
    s.outbox.accept_destination("nowhere.us");
    let run = format!(
        r#"{{"action": "unpark", "filter": {{"group": "{group}"}}, "through_id": {through}}}"#
    );
    let (status, body) = post_json(&format!("{signals}/actions"), Some(OPERATOR), &run).await;
    assert_eq!(
        (status, body["changed"].as_u64()),
        (200, Some(12)),
        "{body}"
    );
    assert_eq!(s.bus.flush_many(&Selection::all()).await.unwrap(), 12);
    assert_eq!(s.outbox.len(), 15);
    let (_, body) = get(&format!("{api}/audit"), Some(VIEWER)).await;
    let entry = &json(&body)["databases"][0]["entries"][0];
    assert_eq!(
        (
            entry["actor"].as_str(),
            entry["action"].as_str(),
            entry["changed"].as_u64()
        ),
        (Some("alice"), Some("unpark"), Some(12))
    );
    assert!(entry["filter"].as_str().unwrap().contains(&group));
}

#[tokio::test]
async fn bad_requests_get_a_reason_and_never_a_server_error() {
    let s = serve(with_tokens).await;
    let signals = format!("{}/console/api/databases/shop/signals/order_placed", s.base);
    for (url, says) in [
        (
            format!("{signals}?older_than=an-hour"),
            "whole number of seconds",
        ),
        (
            format!("{signals}?colour=red"),
            "unknown parameter `colour`",
        ),
        (format!("{signals}?group=xyz"), "failure group id"),
        (format!("{signals}?header=tenant"), "name:value"),
        (format!("{signals}?limit=100000"), "from 1 to 500"),
        (format!("{signals}?state=stuck"), "unknown state"),
        (format!("{signals}/rows/abc"), "not a row id"),
        (format!("{signals}/groups?key=a&key=b"), "twice"),
        (
            format!("{}/console/api/audit?limit=0", s.base),
            "from 1 to 1000",
        ),
    ] {
        let (status, body) = get(&url, Some(VIEWER)).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains(says),
            "{url}: {body}"
        );
    }
    for (url, says) in [
        (
            format!("{}/console/api/databases/nope/signals/order_placed", s.base),
            "no database `nope`",
        ),
        (
            format!("{}/console/api/databases/shop/signals/nope/count", s.base),
            "no signal type `nope`",
        ),
        (format!("{signals}/rows/999999"), "no row 999999"),
    ] {
        let (status, body) = get(&url, Some(VIEWER)).await;
        assert_eq!(status, 404, "{url}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains(says),
            "{url}: {body}"
        );
    }
    // Malformed pages are pages too, with the reason.
    let (status, page) = get(
        &format!(
            "{}/console/databases/shop/signals/order_placed?older_than=x",
            s.base
        ),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("whole number of seconds"), "{page}");
    // Actions: bad JSON, a bad action, a filter field that does not exist, no JSON type.
    let actions = format!("{signals}/actions");
    for (body, says) in [
        ("{", "must be JSON"),
        (r#"{"action": "delete"}"#, "unknown action"),
        (
            r#"{"action": "purge", "filter": {"colour": "red"}}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"action": "purge", "id": 1, "filter": {"state": "parked"}}"#,
            "either `id`",
        ),
        (
            r#"{"action": "purge", "filter": {"state": "backing_off"}, "dry_run": true}"#,
            "acts on parked signals",
        ),
        (
            r#"{"action": "retry", "filter": {"state": "parked"}, "dry_run": true}"#,
            "acts on backing_off signals",
        ),
    ] {
        let (status, answer) = post_json(&actions, Some(OPERATOR), body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let response = client()
        .post(&actions)
        .bearer_auth(OPERATOR)
        .body(r#"{"action": "purge"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        s.bus.pending(&Selection::all()).await.unwrap()[0].1.parked,
        12,
        "nothing changed"
    );
}

/// The browser's way in: a login form, a session cookie without the token in it, a CSRF
/// token on every form; a forged POST (no CSRF token, another site's origin) is refused.
#[tokio::test]
async fn forms_need_the_session_and_its_csrf_token() {
    let s = serve(with_tokens).await;
    let c = client();
    let response = c
        .post(format!("{}/console/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPERATOR}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(OPERATOR),
        "the cookie never holds the token"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    let base = format!("{}/console/databases/shop/signals/order_placed", s.base);
    // The first page of a list counts what matches; the next pages do not count again.
    for (query, count_shown) in [("state=parked", true), ("state=parked&after=1", false)] {
        let list = c
            .get(format!("{base}?{query}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(list.contains("signal(s) match"), count_shown, "{list}");
        assert_eq!(list.contains("Signals after id 1."), !count_shown, "{list}");
        assert!(
            list.contains("id=\"purge-all\""),
            "operators act from any page"
        );
    }
    let page = c
        .get(format!("{base}/confirm?action=purge&state=parked"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"dry-run-count\">12<"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let through = page
        .split("name=\"through_id\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    let act = |form: String, origin: Option<&'static str>| {
        let mut request = c
            .post(format!("{base}/act"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(o) = origin {
            request = request.header("origin", o);
        }
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, page) = act(
        format!("action=purge&state=parked&through_id={through}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "no CSRF token: {page}");
    assert!(page.contains("CSRF token"));
    let (status, page) = act(
        format!("csrf={csrf}&action=purge&state=parked"),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "another site: {page}");
    assert!(page.contains("another site"));
    let (status, page) = act(format!("csrf=00{csrf}&action=purge&state=parked"), None).await;
    assert_eq!(status, 403, "a wrong token: {page}");
    assert_eq!(
        s.bus.pending(&Selection::all()).await.unwrap()[0].1.parked,
        12,
        "nothing changed"
    );

    let origin: &'static str = Box::leak(s.base.clone().into_boxed_str());
    let (status, page) = act(
        format!("csrf={csrf}&action=purge&state=parked&through_id={through}"),
        Some(origin),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"changed\">12<"), "{page}");
    assert_eq!(
        s.bus.pending(&Selection::all()).await.unwrap()[0].1.count,
        0
    );
    // A cookie made for one name does not pass for another.
    let forged = session.replace(".alice.", ".bob.");
    let r = c
        .get(format!("{}/console", s.base))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        cookie.contains("Max-Age=43200") && !cookie.contains("Secure"),
        "{cookie}"
    );

    // Logging out ends the session here: a copy of its cookie is refused from then on.
    let r = c
        .post(format!("{}/console/logout", s.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = c
        .get(format!("{}/console", s.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the ended session's cookie");

    // Behind a proxy that says the browser came over HTTPS, the cookie is `Secure`.
    let response = c
        .post(format!("{}/console/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https")
        .body(format!("token={OPERATOR}"))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn an_open_console_stays_on_loopback() {
    let open = Console::new();
    assert!(
        open.check_address(&"127.0.0.1:9187".parse().unwrap())
            .is_ok()
    );
    let e = open
        .check_address(&"0.0.0.0:9187".parse().unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("open to anyone"), "{e}");
    let closed = with_tokens(Console::new());
    assert!(
        closed
            .check_address(&"0.0.0.0:9187".parse().unwrap())
            .is_ok()
    );
    assert!(
        Console::new()
            .token("x", Role::Viewer, "short")
            .unwrap_err()
            .to_string()
            .contains("shorter")
    );
    assert!(
        Console::new()
            .router()
            .unwrap_err()
            .to_string()
            .contains("no database")
    );

    // Open on loopback: no login, but forms still need their CSRF token.
    let s = serve(|c| c).await;
    let (status, page) = get(&format!("{}/console", s.base), None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("order_placed"));
    // Another name for the same address (DNS rebinding: a site whose name points at
    // 127.0.0.1) gets nothing from an open console.
    let r = client()
        .get(format!("{}/console/api/overview", s.base))
        .header("host", "evil.example:9187")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("only requests to localhost")
    );
    let r = client()
        .post(format!(
            "{}/console/databases/shop/signals/order_placed/act",
            s.base
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=purge&state=parked")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
