//! Events published to NATS JetStream: each on `<prefix>.<unit>.<type>`
//! (`orders.3.order.paid`) with `Nats-Msg-Id` set to its `event_id`, so
//! the stream drops a republished event it already holds (within its
//! duplicate window, two minutes by default). The stream is created when
//! missing, over `<prefix>.>`.
//!
//! A batch counts as published once the broker has acknowledged every
//! event. Events go out in waves: a wave holds at most one event of an
//! order and is sent without waiting (up to `IN_FLIGHT` acks pending);
//! the next wave waits for every ack of this one. If an event is lost (a
//! connection cut, a broker restart), the batch fails and is published
//! again whole; the events of other orders that did arrive are dropped as
//! duplicates, and a later event of the same order was never sent, so
//! each order's events reach the stream in version order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use crate::config::mask_url;
use crate::storage::OutboxEvent;

/// How long connecting, and each publish's ack, may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes one unit's relay has in flight at most (awaiting their acks).
const IN_FLIGHT: usize = 512;
/// Publishes the whole process may have in flight: past it a publish fails
/// (and its batch goes again next round) rather than waiting. The client's
/// own default, 5,000 with waiting, hung the relay for good once one
/// batch's wave passed it: the wave's acks were awaited only after all of
/// it was sent, and the sends waited for those acks' permits.
const IN_FLIGHT_PER_PROCESS: usize = 1 << 16;

pub struct NatsSink {
    url: String,
    stream: String,
    prefix: String,
    /// Connected (and the stream made sure of) on the first batch; the
    /// client reconnects by itself after that.
    js: Mutex<Option<jetstream::Context>>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &mask_url(&self.url))
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl NatsSink {
    pub fn new(url: &str, stream: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            stream: stream.to_owned(),
            prefix: prefix.to_owned(),
            js: Mutex::new(None),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "NATS {} stream {} subjects {}.>",
            mask_url(&self.url),
            self.stream,
            self.prefix
        )
    }

    /// Publishes `events` of `unit` in order; `Ok` once the broker holds
    /// every one.
    pub async fn publish(&self, unit: u16, events: &[OutboxEvent]) -> Result<(), String> {
        let js = self.context().await?;
        let sent = self.send(&js, unit, events).await;
        if sent.is_err() {
            // Connected afresh next time, and the stream made sure of
            // again (it may have been deleted).
            *self.js.lock().await = None;
        }
        sent
    }

    async fn send(
        &self,
        js: &jetstream::Context,
        unit: u16,
        events: &[OutboxEvent],
    ) -> Result<(), String> {
        let mut rest = events;
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT.min(events.len()));
        // A subject per event type, shared by the batch's events (a clone
        // is a reference count).
        let mut subjects: HashMap<&str, Subject> = HashMap::new();
        while !rest.is_empty() {
            let wave = wave_len(rest);
            for e in &rest[..wave] {
                // Within a wave acks may come in any order: the oldest is
                // awaited once this unit has its share in flight.
                if in_flight.len() == IN_FLIGHT {
                    let (e, ack): (&OutboxEvent, PublishAckFuture) =
                        in_flight.pop_front().expect("full");
                    ack.await.map_err(|err| self.failed(e, err))?;
                }
                let subject = subjects
                    .entry(e.event_type.as_str())
                    .or_insert_with(|| format!("{}.{unit}.{}", self.prefix, e.event_type).into())
                    .clone();
                let message = PublishMessage::build()
                    .message_id(&e.event_id)
                    .payload(e.json.clone().into());
                let ack = js.send_publish(subject, message).await;
                in_flight.push_back((e, ack.map_err(|err| self.failed(e, err))?));
            }
            for (e, ack) in in_flight.drain(..) {
                ack.await.map_err(|err| self.failed(e, err))?;
            }
            rest = &rest[wave..];
        }
        Ok(())
    }

    fn failed(&self, e: &OutboxEvent, err: impl std::fmt::Display) -> String {
        format!(
            "NATS {}: event {} not acknowledged: {err}",
            mask_url(&self.url),
            e.event_id
        )
    }

    /// The JetStream context, connecting and creating the stream first.
    async fn context(&self) -> Result<jetstream::Context, String> {
        let mut held = self.js.lock().await;
        if let Some(js) = held.as_ref() {
            return Ok(js.clone());
        }
        let url = mask_url(&self.url);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(TIMEOUT)
            .connect(self.url.as_str())
            .await
            .map_err(|e| format!("NATS {url}: {e}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(TIMEOUT)
            .max_ack_inflight(IN_FLIGHT_PER_PROCESS)
            .backpressure_on_inflight(false)
            .build(client);
        js.get_or_create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("NATS {url}: stream {}: {e}", self.stream))?;
        *held = Some(js.clone());
        Ok(js)
    }
}

impl NatsSink {
    /// Hands each event of the stream (its JSON) to `print`, from the
    /// stream's start or its end, until `print` answers `false` (through
    /// an ordered consumer: gaps and broker restarts are recovered by the
    /// client). Connecting or the stream failing is the error.
    pub async fn follow(
        &self,
        from_start: bool,
        mut print: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), String> {
        let js = self.context().await?;
        let url = mask_url(&self.url);
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("NATS {url}: stream {}: {e}", self.stream))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: if from_start {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::New
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("NATS {url}: consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("NATS {url}: consumer: {e}"))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| format!("NATS {url}: {e}"))?;
            if !print(&message.payload) {
                break;
            }
        }
        Ok(())
    }
}

/// How many of `events` (at least one) can be in flight together: up to
/// the second event of an order.
fn wave_len(events: &[OutboxEvent]) -> usize {
    let mut orders = HashSet::with_capacity(events.len());
    events
        .iter()
        .position(|e| !orders.insert(e.order_id.as_str()))
        .unwrap_or(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: &str, version: u32) -> OutboxEvent {
        OutboxEvent {
            record_id: 1,
            event_id: format!("{order}.{version}"),
            order_id: order.into(),
            event_type: "order.paid".into(),
            json: "{}".into(),
        }
    }

    #[test]
    fn a_wave_holds_one_event_of_an_order() {
        let batch = [event("a", 1), event("b", 1), event("a", 2), event("c", 1)];
        assert_eq!(wave_len(&batch), 2);
        assert_eq!(wave_len(&batch[2..]), 2);
        assert_eq!(wave_len(&batch[..1]), 1);
    }

    #[test]
    fn the_password_is_never_shown() {
        let sink = NatsSink::new("nats://app:s3cret@127.0.0.1:4222", "ORDERS", "orders");
        assert!(!format!("{sink:?}").contains("s3cret"));
        assert!(!sink.describe().contains("s3cret"));
    }
}
