//! The controller's state machine: applies and deletes manifests, recomposes
//! and signs per-device documents, and answers read queries. Every change is
//! committed to the store before anything is published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ed25519_dalek::SigningKey;
use mecvisor_protocol::{codec, topics, DesiredState, DeviceSpec, SignedDesired, WorkloadKind};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, info_span, warn};

use crate::compose::{compose, next_generation};
use crate::manifest::{Manifest, ManifestError};
use crate::store::{now_ms, DesiredRow, DeviceRow, EventRow, Store, StoreError, Tx};
use crate::views::{
    ApplyResponse, DeleteManifestResponse, DeviceDetail, DeviceGeneration, DeviceSummary,
    EventView, ManifestSummary, ObjectView,
};

/// How many events `describe` shows.
pub const RECENT_EVENTS: u32 = 20;

/// Why a fleet operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request is invalid; nothing changed.
    #[error("{summary}")]
    Invalid {
        /// Summary.
        summary: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An internal failure (a handler panicked); nothing was committed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ManifestError> for FleetError {
    fn from(e: ManifestError) -> Self {
        FleetError::Invalid {
            summary: "invalid manifest".into(),
            problems: e.problems,
        }
    }
}

/// A message for the controller's MQTT client to publish (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Publish {
    /// The publish that delivers a stored desired document.
    pub fn desired(row: &DesiredRow) -> Self {
        Publish {
            topic: topics::desired(&row.device),
            payload: row.signed.clone(),
        }
    }
}

/// The controller: store, signing key, and the queue of messages to publish.
pub struct Fleet {
    store: Mutex<Store>,
    key: SigningKey,
    outbox: UnboundedSender<Publish>,
}

impl Fleet {
    /// Builds the controller around an open store and its signing key;
    /// documents to publish are sent to `outbox`.
    pub fn new(store: Store, key: SigningKey, outbox: UnboundedSender<Publish>) -> Self {
        Fleet {
            store: Mutex::new(store),
            key,
            outbox,
        }
    }

    /// Hex public key agents verify documents with.
    pub fn public_key_hex(&self) -> String {
        mecvisor_protocol::envelope::verifying_key_to_hex(&self.key.verifying_key())
    }

    /// Locks the store. A panic while holding the lock cannot leave a
    /// half-written state (transactions roll back on drop), so a poisoned lock
    /// is recovered.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues documents for publishing (after they were committed).
    pub(crate) fn publish(&self, docs: &[DesiredRow]) {
        for row in docs {
            info!(device = %row.device, generation = row.generation, "publishing desired document");
            if self.outbox.send(Publish::desired(row)).is_err() {
                warn!(device = %row.device, "MQTT link is gone; the device will get the document on its next hello");
            }
        }
    }

    /// Queues a raw publish.
    pub(crate) fn publish_raw(&self, msg: Publish) {
        if self.outbox.send(msg).is_err() {
            warn!("MQTT link is gone; message dropped");
        }
    }

    /// Validates and stores a manifest, recomposes every device and publishes
    /// new documents. Refused with every problem when the manifest or any
    /// composed spec is invalid; then nothing changes.
    pub fn apply_manifest(&self, yaml: &str) -> Result<ApplyResponse, FleetError> {
        let manifest = Manifest::parse(yaml)?;
        let span = info_span!("apply_manifest", manifest = %manifest.name);
        let _guard = span.enter();
        let mut store = self.lock();
        let tx = store.transaction()?;
        for d in &manifest.devices {
            if tx.ensure_device(d)? {
                info!(device = %d, "registered device named by manifest");
            }
        }
        tx.put_manifest(&manifest)?;
        let manifests = tx.manifests()?;
        let devices = tx.devices()?;
        let docs = recompose(&tx, &self.key, &manifests, &devices, 0)?;
        let matched = generations_of(&tx, &devices, &manifest)?;
        tx.commit()?;
        drop(store);
        info!(
            devices = matched.len(),
            new_documents = docs.len(),
            "manifest applied"
        );
        self.publish(&docs);
        Ok(ApplyResponse {
            manifest: manifest.name,
            devices: matched,
        })
    }

    /// Deletes a manifest and recomposes every device it matched.
    pub fn delete_manifest(&self, name: &str) -> Result<DeleteManifestResponse, FleetError> {
        let span = info_span!("delete_manifest", manifest = %name);
        let _guard = span.enter();
        let mut store = self.lock();
        let tx = store.transaction()?;
        let Some(old) = tx.manifests()?.into_iter().find(|m| m.name == name) else {
            return Err(FleetError::NotFound(format!("manifest {name:?}")));
        };
        tx.delete_manifest(name)?;
        let manifests = tx.manifests()?;
        let devices = tx.devices()?;
        let docs = recompose(&tx, &self.key, &manifests, &devices, 0)?;
        let matched = generations_of(&tx, &devices, &old)?;
        tx.commit()?;
        drop(store);
        info!(new_documents = docs.len(), "manifest deleted");
        self.publish(&docs);
        Ok(DeleteManifestResponse {
            deleted: name.to_string(),
            devices: matched,
        })
    }

    /// Forgets a device and everything recorded about it.
    pub fn delete_device(&self, name: &str) -> Result<(), FleetError> {
        let mut store = self.lock();
        let tx = store.transaction()?;
        if !tx.delete_device(name)? {
            return Err(FleetError::NotFound(format!("device {name:?}")));
        }
        tx.commit()?;
        info!(device = %name, "device forgotten");
        Ok(())
    }

    /// Summaries of every manifest.
    pub fn manifest_summaries(&self) -> Result<Vec<ManifestSummary>, FleetError> {
        let manifests = self.lock().manifests()?;
        Ok(manifests
            .into_iter()
            .map(|m| ManifestSummary {
                slices: m.slices.len(),
                workloads: m.workloads.len(),
                name: m.name,
                devices: m.devices,
                selector: m.selector,
            })
            .collect())
    }

    /// Summaries of every device.
    pub fn device_summaries(&self) -> Result<Vec<DeviceSummary>, FleetError> {
        let store = self.lock();
        let desired: BTreeMap<String, u64> = store
            .all_desired()?
            .into_iter()
            .map(|r| (r.device, r.generation))
            .collect();
        Ok(store
            .devices()?
            .into_iter()
            .map(|d| DeviceSummary {
                desired_generation: desired.get(&d.name).copied().unwrap_or(0),
                name: d.name,
                arch: d.arch,
                agent_version: d.agent_version,
                online: d.online,
                acked_generation: d.acked_generation,
                applied_generation: d.applied_generation,
                last_seen_ms: d.last_seen_ms,
            })
            .collect())
    }

    /// Everything known about one device.
    pub fn device_detail(&self, name: &str) -> Result<DeviceDetail, FleetError> {
        let store = self.lock();
        let device = store
            .device(name)?
            .ok_or_else(|| FleetError::NotFound(format!("device {name:?}")))?;
        let desired = store.desired(name)?;
        let events = store.events(name, RECENT_EVENTS)?;
        drop(store);
        let spec = desired.as_ref().and_then(|row| {
            decode_spec(&row.signed)
                .map_err(|e| warn!(device = %name, error = %e, "stored desired document does not decode"))
                .ok()
        });
        Ok(DeviceDetail {
            objects: object_views(spec.as_ref(), &device),
            events: events
                .into_iter()
                .map(|e| EventView {
                    created_ms: e.created_ms,
                    severity: e.severity,
                    object: e.object,
                    message: e.message,
                })
                .collect(),
            desired_generation: desired.as_ref().map_or(0, |r| r.generation),
            desired_hash: desired.map(|r| r.content_hash).unwrap_or_default(),
            name: device.name,
            arch: device.arch,
            agent_version: device.agent_version,
            online: device.online,
            labels: device.labels,
            acked_generation: device.acked_generation,
            applied_generation: device.applied_generation,
            last_error: device.last_error,
        })
    }

    /// Every stored document of a device that has not acked it yet (used after
    /// the controller's MQTT link (re)connects).
    pub fn unacked_documents(&self) -> Result<Vec<DesiredRow>, FleetError> {
        let store = self.lock();
        let devices: BTreeMap<String, u64> = store
            .devices()?
            .into_iter()
            .map(|d| (d.name, d.acked_generation))
            .collect();
        Ok(store
            .all_desired()?
            .into_iter()
            .filter(|r| {
                devices
                    .get(&r.device)
                    .is_some_and(|acked| *acked < r.generation)
            })
            .collect())
    }

    /// The signing key (for signing inside sync handlers).
    pub(crate) fn key(&self) -> &SigningKey {
        &self.key
    }
}

/// Decodes the spec inside a stored signed document.
fn decode_spec(signed: &[u8]) -> Result<DeviceSpec, codec::DecodeError> {
    let envelope: SignedDesired = codec::decode(signed)?;
    let state: DesiredState = codec::decode(&envelope.payload)?;
    Ok(state.spec)
}

fn object_views(spec: Option<&DeviceSpec>, device: &DeviceRow) -> Vec<ObjectView> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let reported = |name: &str, kind: &str| {
        device
            .objects
            .iter()
            .find(|o| o.name == name && o.kind == kind)
    };
    let mut desired: Vec<(String, String)> = Vec::new();
    if let Some(spec) = spec {
        desired.extend(
            spec.slices
                .iter()
                .map(|s| (s.name.clone(), "slice".to_string())),
        );
        desired.extend(spec.workloads.iter().map(|w| {
            let kind = match &w.kind {
                WorkloadKind::Container(_) => "container",
                WorkloadKind::Vm(_) => "vm",
            };
            (w.name.clone(), kind.to_string())
        }));
    }
    for (name, kind) in desired {
        let r = reported(&name, &kind);
        seen.insert((name.clone(), kind.clone()));
        out.push(ObjectView {
            phase: r.map_or_else(|| "unknown".to_string(), |o| o.phase.clone()),
            message: r.map(|o| o.message.clone()).unwrap_or_default(),
            restarts: r.map_or(0, |o| o.restarts),
            name,
            kind,
            desired: true,
        });
    }
    for o in &device.objects {
        if !seen.contains(&(o.name.clone(), o.kind.clone())) {
            out.push(ObjectView {
                name: o.name.clone(),
                kind: o.kind.clone(),
                desired: false,
                phase: o.phase.clone(),
                message: o.message.clone(),
                restarts: o.restarts,
            });
        }
    }
    out
}

/// Recomposes every device in `devices` against `manifests`, storing a new
/// signed document for each device whose content changed. `floor_for` gives
/// extra generation floors (from hellos). Returns the new documents, or every
/// composition problem (then the caller must not commit).
pub(crate) fn recompose(
    tx: &Tx<'_>,
    key: &SigningKey,
    manifests: &[Manifest],
    devices: &[DeviceRow],
    extra_floor: u64,
) -> Result<Vec<DesiredRow>, FleetError> {
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for device in devices {
        match compose(&device.name, &device.labels, manifests) {
            Err(p) => problems.extend(p),
            Ok(composed) => {
                let hash = composed.spec.content_hash();
                let current = tx.desired(&device.name)?;
                let floor = device.hello_generation.max(extra_floor);
                let Some(generation) = next_generation(
                    current
                        .as_ref()
                        .map(|r| (r.generation, r.content_hash.as_str())),
                    &composed.spec,
                    &hash,
                    floor,
                ) else {
                    continue;
                };
                let state = DesiredState {
                    device: device.name.clone(),
                    generation,
                    content_hash: hash.clone(),
                    spec: composed.spec,
                };
                let row = DesiredRow {
                    device: device.name.clone(),
                    generation,
                    content_hash: hash,
                    signed: SignedDesired::sign(&state, key).to_bytes(),
                };
                tx.put_desired(&row)?;
                tx.add_event(
                    &device.name,
                    &EventRow {
                        created_ms: now_ms(),
                        severity: "info".into(),
                        object: None,
                        message: format!(
                            "desired generation {generation} from manifests [{}]",
                            composed.manifests.join(", ")
                        ),
                    },
                )?;
                info!(device = %device.name, generation, "new desired document");
                docs.push(row);
            }
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(FleetError::Invalid {
            summary: "the change would make a device's desired state invalid".into(),
            problems,
        })
    }
}

/// The current desired generation of every device `manifest` selects.
fn generations_of(
    tx: &Tx<'_>,
    devices: &[DeviceRow],
    manifest: &Manifest,
) -> Result<Vec<DeviceGeneration>, FleetError> {
    let mut matched = Vec::new();
    for d in devices
        .iter()
        .filter(|d| manifest.matches(&d.name, &d.labels))
    {
        matched.push(DeviceGeneration {
            device: d.name.clone(),
            generation: tx.desired(&d.name)?.map_or(0, |r| r.generation),
        });
    }
    Ok(matched)
}
