//! Where units' change events are published: a sink takes a batch of
//! events (JSON, in order) and answers once they are durable there; only
//! then does a unit's relay mark them published (`actors/unit/relay.rs`).
//! At least once: a batch may be taken again after a crash, and consumers
//! de-duplicate by `event_id`.
//!
//! `file.rs`: JSON lines appended to a file (the embedded default, and
//! whenever no broker is configured).

mod file;

pub use file::FileSink;

use serde_json::Value;

/// A place events are published to.
#[derive(Debug)]
pub enum Sink {
    File(FileSink),
}

impl Sink {
    /// Publishes `events` in order; `Ok` once they are durable.
    pub async fn publish(&self, events: &[Value]) -> Result<(), String> {
        match self {
            Self::File(f) => f.publish(events).await,
        }
    }

    /// Where events go, for logs and `events tail`.
    pub fn describe(&self) -> String {
        match self {
            Self::File(f) => format!("file {}", f.path().display()),
        }
    }
}
