//! Trace context across the bus (feature `otel`): the consumer's span continues the trace of
//! the request that wrote the signal.
//!
//! Set up `tracing` with the `tracing-opentelemetry` layer as usual. A signal written inside
//! a span that this layer traces then carries the span's W3C trace context.
//! [`Transaction::send`](crate::Transaction::send) takes the context of
//! [`tracing::Span::current`], encodes it with `opentelemetry_sdk`'s `TraceContextPropagator`,
//! and stores it with the row as the headers `traceparent` (and `tracestate`, when there is
//! one). Every bus carries headers: AMQP message headers, NATS headers and Kafka record
//! headers. A consumer continues the trace with [`extract`]:
//!
//! ```
//! use signalbus_core::otel::OpenTelemetrySpanExt;
//!
//! // The headers as the consumer read them from the broker.
//! let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
//! let span = tracing::info_span!("handle message");
//! let _ = span.set_parent(signalbus_core::otel::extract(headers));
//! ```
//!
//! Each publish call of an auto-flush, a flush or the relay runs in a `signalbus.publish`
//! span, linked to the trace of every message it carries. A signal written with no traced
//! span has no trace headers.

use crate::message::{Headers, Message};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
/// `set_parent`, `context`, `add_link` on `tracing` spans, from the `tracing-opentelemetry`
/// version signalbus uses.
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Extract<'a>(Vec<(&'a str, &'a str)>);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Header names are case-insensitive on some buses.
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Add the trace context of the current span to `headers`; nothing when no span is traced.
pub(crate) fn inject_current(headers: &mut Headers) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
    }
}

/// The trace context that a message's headers carry, for the consumer's span
/// (`span.set_parent(extract(headers))`); an empty context when they carry none.
pub fn extract<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Extract(headers.into_iter().collect()))
}

/// The span context `headers` carry, if a valid one.
fn carried(headers: &Headers) -> Option<SpanContext> {
    let cx = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The span of one publish call of `messages`, linked to the trace of each.
pub(crate) fn publish_span(messages: &[Message]) -> tracing::Span {
    let span = tracing::info_span!("signalbus.publish", messages = messages.len());
    for message in messages {
        if let Some(linked) = carried(&message.headers) {
            span.add_link(linked);
        }
    }
    span
}
