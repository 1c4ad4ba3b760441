//! Handling of agent -> controller messages: hello, ack, report, presence.
//!
//! Everything here is untrusted network input: bad bytes, a device name in the
//! payload that differs from the topic, or unknown topics are logged with the
//! topic and dropped. Every handler is idempotent (at-least-once delivery).

use std::collections::BTreeMap;

use mecvisor_protocol::topics::{parse_uplink, Uplink};
use mecvisor_protocol::{
    codec, topics, Ack, AckOutcome, Hello, Receipt, Report, ReportBody, Severity,
};
use tracing::{debug, info, info_span, warn};

use crate::fleet::{recompose, Fleet, FleetError, Publish};
use crate::store::{now_ms, EventRow, ReportedObject, StoreError};

/// Why an uplink message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Not an agent -> controller topic.
    #[error("not an uplink topic")]
    UnknownTopic,
    /// The payload does not decode.
    #[error("undecodable payload: {0}")]
    Decode(#[from] codec::DecodeError),
    /// The payload names another device than the topic.
    #[error("payload is for device {payload:?}, topic is for {topic:?}")]
    WrongDevice {
        /// Device in the topic.
        topic: String,
        /// Device in the payload.
        payload: String,
    },
    /// The presence payload is neither `online` nor `offline`.
    #[error("presence payload must be \"online\" or \"offline\"")]
    BadPresence,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recomposition failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Handles one message from the broker; errors are logged, never propagated.
pub fn handle_message(fleet: &Fleet, topic: &str, payload: &[u8]) {
    if let Err(e) = try_handle(fleet, topic, payload) {
        warn!(%topic, bytes = payload.len(), error = %e, "dropped uplink message");
    }
}

/// Handles one message, returning why it was dropped.
pub fn try_handle(fleet: &Fleet, topic: &str, payload: &[u8]) -> Result<(), SyncError> {
    let (device, kind) = parse_uplink(topic).ok_or(SyncError::UnknownTopic)?;
    let check = |named: &str| {
        if named == device {
            Ok(())
        } else {
            Err(SyncError::WrongDevice {
                topic: device.to_string(),
                payload: named.to_string(),
            })
        }
    };
    match kind {
        Uplink::Hello => {
            let hello: Hello = codec::decode(payload)?;
            check(&hello.device)?;
            on_hello(fleet, hello)
        }
        Uplink::Ack => {
            let ack: Ack = codec::decode(payload)?;
            check(&ack.device)?;
            on_ack(fleet, ack)
        }
        Uplink::Report => {
            let report: Report = codec::decode(payload)?;
            check(&report.device)?;
            on_report(fleet, report)
        }
        Uplink::Presence => {
            let online = match payload {
                b"online" => true,
                b"offline" => false,
                _ => return Err(SyncError::BadPresence),
            };
            on_presence(fleet, device, online)
        }
    }
}

fn on_hello(fleet: &Fleet, hello: Hello) -> Result<(), SyncError> {
    let span =
        info_span!("hello", device = %hello.device, last_applied = hello.last_applied_generation);
    let _guard = span.enter();
    let labels: BTreeMap<String, String> = hello
        .labels
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect();
    let mut store = fleet.lock();
    let tx = store.transaction()?;
    let before = tx.device(&hello.device)?;
    tx.record_hello(
        &hello.device,
        &hello.arch,
        &hello.agent_version,
        &labels,
        hello.last_applied_generation,
    )?;
    let labels_changed = before.as_ref().is_none_or(|d| d.labels != labels);
    let behind_floor = tx
        .desired(&hello.device)?
        .is_none_or(|r| r.generation < hello.last_applied_generation);
    if labels_changed || (behind_floor && hello.last_applied_generation > 0) {
        let manifests = tx.manifests()?;
        let device = tx.device(&hello.device)?.into_iter().collect::<Vec<_>>();
        match recompose(&tx, fleet.key(), &manifests, &device, 0) {
            Ok(_) => {}
            Err(FleetError::Invalid { problems, .. }) => {
                // The device's new labels pull in manifests that conflict; keep
                // its current document and say why.
                let message = format!(
                    "labels match manifests that cannot be composed: {}",
                    problems.join("; ")
                );
                warn!(%message, "keeping the current desired document");
                tx.add_event(
                    &hello.device,
                    &EventRow {
                        created_ms: now_ms(),
                        severity: "error".into(),
                        object: None,
                        message,
                    },
                )?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let current = tx.desired(&hello.device)?;
    tx.commit()?;
    drop(store);
    if let Some(row) = current {
        let in_sync = row.generation == hello.last_applied_generation
            && row.content_hash == hello.last_applied_hash;
        if in_sync {
            debug!(generation = row.generation, "device is in sync");
        } else {
            info!(
                desired = row.generation,
                "device is behind; sending the current document"
            );
            fleet.publish_raw(Publish::desired(&row));
        }
    } else {
        info!("device has no desired document yet");
    }
    Ok(())
}

fn on_ack(fleet: &Fleet, ack: Ack) -> Result<(), SyncError> {
    let span = info_span!("ack", device = %ack.device, generation = ack.generation);
    let _guard = span.enter();
    let mut store = fleet.lock();
    let tx = store.transaction()?;
    if tx.device(&ack.device)?.is_none() {
        warn!("ack from an unknown device ignored");
        return Ok(());
    }
    match &ack.outcome {
        AckOutcome::Accepted => {
            let desired = tx.desired(&ack.device)?;
            let matches = desired.as_ref().is_some_and(|r| {
                r.generation >= ack.generation
                    && (r.generation != ack.generation || r.content_hash == ack.content_hash)
            });
            if !matches {
                warn!(hash = %ack.content_hash, "ack for a document this controller never issued; ignored");
                return Ok(());
            }
            tx.record_ack_accepted(&ack.device, ack.generation)?;
            info!("device accepted the document");
        }
        AckOutcome::Rejected(reason) => {
            tx.record_ack_rejected(&ack.device, reason)?;
            tx.add_event(
                &ack.device,
                &EventRow {
                    created_ms: now_ms(),
                    severity: "error".into(),
                    object: None,
                    message: format!("generation {} rejected: {reason}", ack.generation),
                },
            )?;
            warn!(%reason, "device rejected the document");
        }
    }
    tx.commit()?;
    Ok(())
}

fn on_report(fleet: &Fleet, report: Report) -> Result<(), SyncError> {
    let span = info_span!("report", device = %report.device, seq = report.seq);
    let _guard = span.enter();
    let body_json = serde_json::to_string(&report.body).unwrap_or_else(|e| {
        // Serializing plain data types cannot fail; keep going with a marker.
        format!("{{\"unserializable\":{:?}}}", e.to_string())
    });
    let mut store = fleet.lock();
    let tx = store.transaction()?;
    if tx.device(&report.device)?.is_none() {
        warn!("report from an unknown device ignored (it must say hello first)");
        return Ok(());
    }
    if !tx.insert_report(&report.device, report.seq, report.created_ms, &body_json)? {
        debug!("duplicate report ignored");
        tx.commit()?;
        drop(store);
        send_receipt(fleet, &report);
        return Ok(());
    }
    match &report.body {
        ReportBody::State(state) => {
            let objects: Vec<ReportedObject> = state
                .objects
                .iter()
                .map(|o| ReportedObject {
                    name: o.name.clone(),
                    kind: o.kind.clone(),
                    phase: o.phase.as_str().to_string(),
                    message: o.message.clone(),
                    restarts: o.restarts,
                })
                .collect();
            if tx.record_state(
                &report.device,
                report.seq,
                state.applied_generation,
                &objects,
            )? {
                info!(
                    applied = state.applied_generation,
                    objects = objects.len(),
                    "actual state updated"
                );
            } else {
                debug!("older state report stored but not applied");
            }
        }
        ReportBody::Event(event) => {
            let severity = match event.severity {
                Severity::Info => "info",
                Severity::Warning => "warning",
                Severity::Error => "error",
            };
            tx.add_event(
                &report.device,
                &EventRow {
                    created_ms: report.created_ms,
                    severity: severity.into(),
                    object: event.object.clone(),
                    message: event.message.clone(),
                },
            )?;
            info!(%severity, message = %event.message, "device event");
        }
        ReportBody::Metrics(m) => {
            debug!(rss = m.rss_bytes, outbox = m.outbox_depth, "metrics stored");
        }
    }
    tx.commit()?;
    drop(store);
    send_receipt(fleet, &report);
    Ok(())
}

/// Tells the agent the report is stored (committed above), so it may drop it
/// from its outbox.
fn send_receipt(fleet: &Fleet, report: &Report) {
    let receipt = Receipt {
        device: report.device.clone(),
        seqs: vec![report.seq],
    };
    fleet.publish_raw(Publish {
        topic: topics::receipt(&report.device),
        payload: codec::encode(&receipt),
    });
}

fn on_presence(fleet: &Fleet, device: &str, online: bool) -> Result<(), SyncError> {
    let mut store = fleet.lock();
    let tx = store.transaction()?;
    if tx.set_online(device, online)? {
        info!(%device, online, "presence");
    } else {
        debug!(%device, "presence of an unknown device ignored");
    }
    tx.commit()?;
    Ok(())
}
