//! The operator console in a real browser (headless Chromium through chromedriver, both
//! from Debian: scripts/test-tools.sh installs them), over PostgreSQL and RabbitMQ:
//! signals the broker refuses are parked; the operator logs in, finds their failure group,
//! sees the dry run's count, unparks the group, and the signals reach their queue. A viewer
//! sees the same pages without the actions; a request without a token, a forged POST from
//! another site and a malformed filter each get a page that says why. Screenshots of the
//! main pages go to target/console-screenshots (docs/images/console holds a copy).

use crate::bus_amqp::Amqp;
use crate::buses::BusFixture;
use crate::common::{TestBackend, TestDb};
use fantoccini::{Client, ClientBuilder, Locator};
use signalbus::console::{Console, Role};
use signalbus::{RetryPolicy, Selection, SignalBus, SignalType};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OPERATOR: &str = "browser-operator-token-0123";
const VIEWER: &str = "browser-viewer-token-01234";

/// chromedriver on a port of its own, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = signalbus_testkit::nats::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver must be installed (Debian packages chromium and chromium-driver: \
                 scripts/test-tools.sh installs them)",
            );
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { child, port }
    }

    /// A fresh headless browser (its own profile: no cookies).
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// The text of the element `css`, waiting for it (a click's navigation may still be under
/// way).
async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn screenshot(c: &Client, name: &str) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.png")),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
}

async fn login(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/console/login")).await.unwrap();
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = text_of(c, "#who").await;
    assert!(who.contains('('), "logged in: {who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_unparks_a_failure_group_in_the_browser() {
    let db: TestDb<sqlx::Postgres> = sqlx::Postgres::create(4).await;
    let amqp = Amqp::new().await;
    let (exchange, later) = amqp.later();
    let bus = SignalBus::builder(db.pool.clone())
        .name("shop")
        .publisher(amqp.publisher().await)
        .register_type(
            SignalType::new("order_placed")
                .autoflush(false)
                .retry(RetryPolicy {
                    max_attempts: 1,
                    base: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                }),
        )
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    for i in 0..5 {
        sqlx::query(
            "INSERT INTO order_placed (topic, routing_key, body, headers, ordering_key) \
             VALUES ($1, $2, $3, '{\"tenant\":\"eu\"}', $4)",
        )
        .bind(&exchange)
        .bind(&later)
        .bind(format!("{{\"order\":{i}}}").into_bytes())
        .bind(format!("customer-{}", i % 2))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // The broker has no queue for the key yet: every one is refused, and parked at once.
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    assert_eq!(bus.pending(&Selection::all()).await.unwrap()[0].1.parked, 5);

    let console = Console::new()
        .database(bus.clone())
        .token("olga", Role::Operator, OPERATOR)
        .unwrap()
        .token("victor", Role::Viewer, VIEWER)
        .unwrap();
    let base = serve(console.router().unwrap()).await;
    let driver = Driver::start().await;
    let signals = format!("{base}/console/databases/shop/signals/order_placed");

    // Without a token: the login page, on every page.
    let c = driver.browser().await;
    c.goto(&format!("{signals}/groups")).await.unwrap();
    assert!(c.source().await.unwrap().contains("Console token"));

    // The operator: overview, the failure group, its dry run, the unpark.
    login(&c, &base, OPERATOR).await;
    let overview = text_of(&c, "#overview").await;
    assert!(overview.contains("order_placed"), "{overview}");
    screenshot(&c, "overview").await;
    c.find(Locator::LinkText("order_placed"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        text_of(&c, "#matched")
            .await
            .starts_with("5 signal(s) match, 5 of them parked")
    );
    screenshot(&c, "list").await;
    c.find(Locator::LinkText("Failure groups"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let groups = text_of(&c, "#groups").await;
    assert!(
        groups.contains("{routing_key}") || groups.contains("{destination}"),
        "{groups}"
    );
    screenshot(&c, "groups").await;
    c.find(Locator::Css("a.unpark-group"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&c, "#dry-run-count").await, "5");
    screenshot(&c, "confirm").await;
    amqp.open_later().await; // the route exists now
    c.find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&c, "#changed").await, "5");
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 5);
    let got = amqp.received(&(exchange.clone(), later.clone()), 5).await;
    assert_eq!(got.len(), 5, "delivered to the real broker");
    c.goto(&format!("{base}/console/audit")).await.unwrap();
    let audit = c.source().await.unwrap();
    assert!(
        audit.contains("olga") && audit.contains("unpark"),
        "{audit}"
    );
    screenshot(&c, "audit").await;

    // A forged POST from another site (another port: another origin) is refused.
    let evil = serve(axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let target = format!("{signals}/act");
            async move {
                axum::response::Html(format!(
                    "<form method=post action='{target}'><input type=hidden name=action \
                     value=purge><input type=hidden name=state value=pending>\
                     <button id=go>win a prize</button></form>"
                ))
            }
        }),
    ))
    .await;
    c.goto(&evil).await.unwrap();
    c.find(Locator::Css("#go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The form's navigation may still be under way when the click returns.
    let started = Instant::now();
    let refused = loop {
        let page = c.source().await.unwrap();
        if page.contains("another site") || page.contains("CSRF") {
            break page;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.contains("Error 403"), "{refused}");
    // A malformed filter: a page that says what is wrong.
    let signals = format!("{base}/console/databases/shop/signals/order_placed");
    c.goto(&format!("{signals}?older_than=yesterday"))
        .await
        .unwrap();
    assert!(
        c.source()
            .await
            .unwrap()
            .contains("whole number of seconds")
    );
    c.close().await.unwrap();

    // The viewer: the same pages, no actions, no bodies.
    for i in 0..2 {
        sqlx::query(
            "INSERT INTO order_placed (topic, routing_key, body) VALUES ($1, 'nowhere', $2)",
        )
        .bind(&exchange)
        .bind(format!("{{\"private\":{i}}}").into_bytes())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    bus.flush_many(&Selection::all()).await.unwrap();
    let v = driver.browser().await;
    login(&v, &base, VIEWER).await;
    v.goto(&format!("{signals}/groups")).await.unwrap();
    let page = v.source().await.unwrap();
    assert!(
        page.contains("nowhere") || page.contains("{routing_key}"),
        "{page}"
    );
    assert!(!page.contains("Unpark…"), "no actions for viewers");
    let id = bus
        .list_signals("order_placed", &Default::default(), None, 1)
        .await
        .unwrap()
        .signals[0]
        .id;
    v.goto(&format!("{signals}/rows/{id}")).await.unwrap();
    assert_eq!(
        text_of(&v, "#body-hidden").await,
        "bodies are shown to operators only"
    );
    assert!(!v.source().await.unwrap().contains("private"));
    screenshot(&v, "detail-viewer").await;
    v.goto(&format!("{signals}/confirm?action=purge&state=parked"))
        .await
        .unwrap();
    assert!(v.source().await.unwrap().contains("is a viewer"));
    v.close().await.unwrap();
    assert_eq!(
        bus.pending(&Selection::all()).await.unwrap()[0].1.parked,
        2,
        "nothing purged"
    );
    amqp.cleanup().await;
    db.cleanup().await;
}
