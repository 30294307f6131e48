//! The guide's examples (docs/guide/*.md), compiled and run as doc tests so that it stays
//! true: one item per guide page that has a Rust code block. A new page with a Rust block gets
//! an item here.

#[doc = include_str!("../../../docs/guide/signal-types.md")]
pub struct SignalTypes;

#[doc = include_str!("../../../docs/guide/atomic-blocks.md")]
pub struct AtomicBlocks;

#[doc = include_str!("../../../docs/guide/buses.md")]
pub struct MessageBuses;

#[doc = include_str!("../../../docs/guide/orms.md")]
pub struct Orms;

#[doc = include_str!("../../../docs/guide/inbox.md")]
pub struct Inbox;

#[doc = include_str!("../../../docs/guide/trace-context.md")]
pub struct TraceContext;
