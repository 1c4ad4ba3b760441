//! JSON shapes of the HTTP API, shared by the server and `fleetctl`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An error answer: `{"error": "...", "problems": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Summary.
    pub error: String,
    /// Every problem, as `where: what`.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// A device and the generation its new document has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGeneration {
    /// Device name.
    pub device: String,
    /// Its desired generation after the change (0: it has no document).
    pub generation: u64,
}

/// Answer to `POST /v1/manifests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// Manifest name.
    pub manifest: String,
    /// Devices the manifest matches, with their desired generation.
    pub devices: Vec<DeviceGeneration>,
}

/// Answer to `DELETE /v1/manifests/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteManifestResponse {
    /// Manifest name.
    pub deleted: String,
    /// Devices it matched, with their new desired generation.
    pub devices: Vec<DeviceGeneration>,
}

/// One entry of `GET /v1/manifests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSummary {
    /// Manifest name.
    pub name: String,
    /// Explicitly named devices.
    pub devices: Vec<String>,
    /// Label selector.
    pub selector: BTreeMap<String, String>,
    /// Number of slices.
    pub slices: usize,
    /// Number of workloads.
    pub workloads: usize,
}

/// One entry of `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device name.
    pub name: String,
    /// CPU architecture (empty before its first hello).
    pub arch: String,
    /// Agent version (empty before its first hello).
    pub agent_version: String,
    /// Whether it is connected.
    pub online: bool,
    /// Generation of its current desired document (0: none).
    pub desired_generation: u64,
    /// Last generation it accepted.
    pub acked_generation: u64,
    /// Generation it reports converging on.
    pub applied_generation: u64,
    /// Last time it was heard from, ms since the epoch (0: never).
    pub last_seen_ms: u64,
}

/// `GET /v1/devices/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// Device name.
    pub name: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// Whether it is connected.
    pub online: bool,
    /// Labels from its hello.
    pub labels: BTreeMap<String, String>,
    /// Generation of its current desired document (0: none).
    pub desired_generation: u64,
    /// Content hash of that document (empty: none).
    pub desired_hash: String,
    /// Last generation it accepted.
    pub acked_generation: u64,
    /// Generation it reports converging on.
    pub applied_generation: u64,
    /// Last rejection reason (empty: none).
    pub last_error: String,
    /// Desired and reported objects.
    pub objects: Vec<ObjectView>,
    /// The last 20 events, oldest first.
    pub events: Vec<EventView>,
}

/// One object of a device: desired, reported, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectView {
    /// Object name.
    pub name: String,
    /// `slice`, `container` or `vm`.
    pub kind: String,
    /// Whether the current desired document contains it.
    pub desired: bool,
    /// Reported phase (`unknown` until the device reports it).
    pub phase: String,
    /// Reported message.
    pub message: String,
    /// Reported restart count.
    pub restarts: u32,
}

/// One event of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// When, ms since the epoch.
    pub created_ms: u64,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Object it concerns.
    pub object: Option<String>,
    /// What happened.
    pub message: String,
}

/// `GET /v1/pubkey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubkeyResponse {
    /// Hex Ed25519 public key of the controller.
    pub public_key: String,
}
