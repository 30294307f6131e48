//! Trace context across the bus (feature `otel`), on each broker: a signal written inside a
//! traced span arrives with that span's trace (W3C `traceparent`), a signal written outside
//! any span arrives with none, and the publish span links to the writer's trace. Spans go to
//! the OpenTelemetry SDK's in-memory exporter.

use crate::buses::{BusEvent, BusFixture, event};
use crate::common::TestBackend;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use signalbus::SignalBus;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Run on a current-thread runtime: the subscriber is this thread's default, and the
/// auto-flush task runs on this thread too.
pub async fn trace_travels<F: BusFixture>(fx: F) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("signalbus-test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let db = <sqlx::Sqlite as TestBackend>::create(2).await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(fx.publisher().await)
        .register::<BusEvent>()
        .publish_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let route = fx.ready();
    // tracing caches per call site whether anyone listens; a call site first met by another
    // test's thread while this subscriber was being registered may have cached "nobody" (a
    // race of tracing-core's cache between threads): computed again, with this subscriber.
    tracing::callsite::rebuild_interest_cache();

    let writer = tracing::info_span!("place order");
    let trace_id = writer.context().span().span_context().trace_id();
    async {
        let mut tx = bus.begin().await.unwrap();
        tx.send(&event(&route, 0)).await.unwrap();
        assert_eq!(tx.commit_and_wait().await.unwrap().sent, 1);
    }
    .instrument(writer)
    .await;
    // Outside any span.
    let mut tx = bus.begin().await.unwrap();
    tx.send(&event(&route, 1)).await.unwrap();
    assert_eq!(tx.commit_and_wait().await.unwrap().sent, 1);

    let got = fx.received(&route, 2).await;
    assert_eq!(got.len(), 2);
    let carried = got[0]
        .traceparent
        .as_deref()
        .expect("the writer's traceparent travels with the message");
    let cx = signalbus::otel::extract([("traceparent", carried)]);
    assert_eq!(cx.span().span_context().trace_id(), trace_id);
    assert!(cx.span().span_context().is_remote());
    assert_eq!(got[1].traceparent, None, "no span, no trace header");

    // The auto-flush's publish span is linked to the writer's trace.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let linked = spans.iter().any(|s| {
        s.name == "signalbus.publish"
            && s.links
                .links
                .iter()
                .any(|l| l.span_context.trace_id() == trace_id)
    });
    assert!(
        linked,
        "a publish span links to the writer's trace: {spans:#?}"
    );
    bus.close(std::time::Duration::from_secs(5)).await;
    fx.cleanup().await;
    db.cleanup().await;
}
