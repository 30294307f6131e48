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
