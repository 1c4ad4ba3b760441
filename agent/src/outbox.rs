//! Typed helpers that put acks and reports into the store's durable outbox,
//! and turn outbox entries back into wire messages.

use mecvisor_protocol::{Ack, DecodeError, Report, ReportBody};

use crate::store::{Enqueued, OutboxEntry, OutboxKind, Store, StoreError};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Outbox kind of a report body.
pub fn kind_of(body: &ReportBody) -> OutboxKind {
    match body {
        ReportBody::State(_) => OutboxKind::State,
        ReportBody::Event(_) => OutboxKind::Event,
        ReportBody::Metrics(_) => OutboxKind::Metrics,
    }
}

/// Enqueues an ack of a desired document.
pub fn push_ack(store: &mut Store, ack: &Ack) -> Result<Enqueued, StoreError> {
    store.enqueue(OutboxKind::Ack, &mecvisor_protocol::encode(ack), now_ms())
}

/// Enqueues a report; its sequence number is assigned by the outbox.
pub fn push_report(store: &mut Store, body: &ReportBody) -> Result<Enqueued, StoreError> {
    let kind = kind_of(body);
    let result = store.enqueue(kind, &mecvisor_protocol::encode(body), now_ms());
    match &result {
        Ok(e) if e.dropped_metrics > 0 => {
            tracing::warn!(
                dropped = e.dropped_metrics,
                "outbox full: dropped oldest metrics"
            )
        }
        Err(e @ StoreError::OutboxFull { .. }) => tracing::error!("{e}"),
        _ => {}
    }
    result
}

/// What goes on the wire for one outbox entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// Publish on the `ack` topic.
    Ack(Vec<u8>),
    /// Publish on the `report` topic.
    Report(Vec<u8>),
}

/// Builds the wire message for an entry: acks go as stored, report bodies
/// are wrapped in a [`Report`] carrying the entry's seq and the store's id.
pub fn to_wire(device: &str, store_id: u64, entry: &OutboxEntry) -> Result<Wire, DecodeError> {
    match entry.kind {
        OutboxKind::Ack => {
            // Check it still decodes, so a corrupt row is reported, not sent.
            mecvisor_protocol::decode::<Ack>(&entry.payload)?;
            Ok(Wire::Ack(entry.payload.clone()))
        }
        OutboxKind::Event | OutboxKind::State | OutboxKind::Metrics => {
            let body: ReportBody = mecvisor_protocol::decode(&entry.payload)?;
            let report = Report {
                device: device.to_string(),
                seq: entry.seq,
                created_ms: entry.created_ms,
                body,
                store_id: Some(store_id),
            };
            Ok(Wire::Report(mecvisor_protocol::encode(&report)))
        }
    }
}
