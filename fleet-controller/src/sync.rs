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
    let applied = hello.last_applied_generation;
    let issued = tx.desired(&hello.device)?;
    let behind_floor = issued.as_ref().is_none_or(|r| r.generation < applied);
    // Same generation, other content: the device accepted a document this
    // controller no longer has (its database was restored or lost); only a
    // newer generation can replace it.
    let conflicting = issued
        .as_ref()
        .is_some_and(|r| r.generation == applied && r.content_hash != hello.last_applied_hash);
    if labels_changed || (behind_floor && applied > 0) || conflicting {
        let manifests = tx.manifests()?;
        let device = tx.device(&hello.device)?.into_iter().collect::<Vec<_>>();
        let floor = if conflicting { applied + 1 } else { 0 };
        match recompose(&tx, fleet.key(), &manifests, &device, floor) {
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
    let in_sync = current.as_ref().is_some_and(|row| {
        row.generation == hello.last_applied_generation
            && row.content_hash == hello.last_applied_hash
    });
    if let (true, Some(row)) = (in_sync, &current) {
        // The device holds the current document: that is an ack, even if
        // the ack message itself was lost.
        tx.record_ack_accepted(&hello.device, row.generation)?;
    }
    tx.commit()?;
    drop(store);
    // An empty receipt answers every hello, so the agent knows it was heard
    // (a hello sent before this controller subscribed is lost otherwise).
    send_receipt(fleet, &hello.device, vec![]);
    if let Some(row) = current {
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
        AckOutcome::Rejected(reason)
            if ack.generation > 0
                && tx
                    .desired(&ack.device)?
                    .is_some_and(|r| ack.generation < r.generation) =>
        {
            // An older document overtaken by a newer one (e.g. a hello's
            // resend racing an apply): the refusal is expected, not an error.
            debug!(%reason, "rejection of a superseded document ignored");
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
    let store_id = report.store_id.unwrap_or(0);
    if tx.switch_store(&report.device, store_id)? {
        info!(
            store_id,
            "reports now come from a new agent store (re-provisioned box); sequence restarts"
        );
    }
    if !tx.insert_report(
        &report.device,
        store_id,
        report.seq,
        report.created_ms,
        &body_json,
    )? {
        debug!("duplicate report ignored");
        tx.commit()?;
        drop(store);
        send_receipt(fleet, &report.device, vec![report.seq]);
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
    send_receipt(fleet, &report.device, vec![report.seq]);
    Ok(())
}

/// Tells the agent these reports are stored (committed by the caller), so it
/// may drop them from its outbox; with no seqs, that its hello was heard.
fn send_receipt(fleet: &Fleet, device: &str, seqs: Vec<u64>) {
    let receipt = Receipt {
        device: device.to_string(),
        seqs,
    };
    fleet.publish_raw(Publish {
        topic: topics::receipt(device),
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
