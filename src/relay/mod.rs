//! Where units' change events are published: a sink takes a batch of
//! events (JSON, in order) and answers once they are durable there; only
//! then does a unit's relay mark them published (`actors/unit/relay.rs`).
//! At least once: a batch may be taken again after a crash, and consumers
//! de-duplicate by `event_id`.
//!
//! `file.rs`: JSON lines appended to a file (the embedded default, and
//! whenever no broker is configured). `nats.rs`: NATS JetStream.

mod file;
mod nats;

pub use file::FileSink;
pub use nats::NatsSink;

use crate::storage::OutboxEvent;

/// A place events are published to.
#[derive(Debug)]
pub enum Sink {
    File(FileSink),
    Nats(Box<NatsSink>),
}

impl Sink {
    /// Publishes `events` of `unit` in order; `Ok` once they are durable.
    pub async fn publish(&self, unit: u16, events: &[OutboxEvent]) -> Result<(), String> {
        match self {
            Self::File(f) => f.publish(events).await,
            Self::Nats(n) => n.publish(unit, events).await,
        }
    }

    /// Where events go, for logs and `events tail`.
    pub fn describe(&self) -> String {
        match self {
            Self::File(f) => format!("file {}", f.path().display()),
            Self::Nats(n) => n.describe(),
        }
    }
}
