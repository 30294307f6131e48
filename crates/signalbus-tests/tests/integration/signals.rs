//! Signal types shared by the tests.

use serde::Serialize;
use signalbus::Signal;

#[derive(Debug, Clone, Serialize, Signal)]
#[signal(
    name = "order_placed",
    table = "order_placed_signal",
    destination = "orders",
    routing_key = "order.placed"
)]
pub struct OrderPlaced {
    pub order_id: i64,
    #[signal(header)]
    pub customer: String,
    #[signal(header = "x-note")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Signal)]
#[signal(name = "invoice_sent", destination = "billing", burst = 7)]
pub struct InvoiceSent {
    pub invoice: i64,
    #[signal(routing_key)]
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Signal)]
#[signal(autoflush = false)]
pub struct AuditTrail {
    pub line: String,
}

pub fn order(id: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: id,
        customer: format!("customer-{id}"),
        note: None,
    }
}

/// Derive edge cases: raw identifiers, an acronym in the type name, an optional routing key.
#[derive(Debug, Clone, Serialize, Signal)]
pub struct HTTPHookFired {
    #[signal(header)]
    pub r#type: String,
    #[signal(routing_key)]
    pub tenant: Option<String>,
}

#[test]
fn derive_edge_cases() {
    let ty = HTTPHookFired::signal_type();
    assert_eq!(
        (ty.name(), ty.table_name()),
        ("HTTPHookFired", "http_hook_fired")
    );
    let with = HTTPHookFired {
        r#type: "push".into(),
        tenant: Some("acme".into()),
    };
    assert_eq!(with.headers()["type"], "push");
    assert_eq!(with.routing_key().as_deref(), Some("acme"));
    let without = HTTPHookFired {
        tenant: None,
        ..with
    };
    assert_eq!(without.routing_key(), None);
    let body: serde_json::Value = serde_json::from_slice(&without.body().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"type": "push", "tenant": null}));
}
