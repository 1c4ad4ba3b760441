//! Messages an agent sends to the controller: hello, ack and reports.
//!
//! They are not signed: the broker authenticates the device (TLS client
//! certificate) and its ACL confines each device to its own topic subtree.

use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Sent by an agent on every (re)connect so the controller can tell whether the
/// device is behind and must be sent the current document.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Hello {
    /// Device name.
    #[n(0)]
    pub device: String,
    /// CPU architecture of the box (`x86_64`, `aarch64`).
    #[n(1)]
    pub arch: String,
    /// Version of the running agent.
    #[n(2)]
    pub agent_version: String,
    /// Generation of the last desired state the agent accepted (0: none).
    #[n(3)]
    pub last_applied_generation: u64,
    /// Content hash of that document (empty: none).
    #[n(4)]
    pub last_applied_hash: String,
    /// Per-object versions: the generation at which each object last changed.
    #[n(5)]
    pub objects: Vec<ObjectVersion>,
    /// Labels from the agent's configuration, used by manifest selectors.
    #[n(6)]
    pub labels: Vec<Label>,
}

/// The generation at which one object was last changed on the device.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Object name (slice or workload).
    #[n(0)]
    pub name: String,
    /// Generation of the document that last changed it.
    #[n(1)]
    pub generation: u64,
}

/// A `key=value` label of a device.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Label {
    /// Label key.
    #[n(0)]
    pub key: String,
    /// Label value.
    #[n(1)]
    pub value: String,
}

/// The agent's answer to a desired-state document.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Ack {
    /// Device name.
    #[n(0)]
    pub device: String,
    /// Generation of the document answered (0 when it could not be decoded).
    #[n(1)]
    pub generation: u64,
    /// Content hash of the document answered (empty when unknown).
    #[n(2)]
    pub content_hash: String,
    /// Whether the agent accepted and stored it.
    #[n(3)]
    pub outcome: AckOutcome,
}

/// Accepted, or refused with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Stored durably; the reconciler works towards it.
    #[n(0)]
    Accepted,
    /// Refused; nothing that was applied changed.
    #[n(1)]
    Rejected(#[n(0)] String),
}

/// The controller's end-to-end receipt for reports it has stored durably.
///
/// A broker's PubAck only says the broker has a message; with no controller
/// subscribed at that moment it may drop it. So the agent keeps every report
/// in its outbox until a receipt names its seq, and sends again what stays
/// unreceipted. Sent on `mecv/v1/<device>/receipt`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Receipt {
    /// Device name.
    #[n(0)]
    pub device: String,
    /// Outbox seqs of reports now stored (also those stored before:
    /// duplicates). Empty in the answer to a hello: "heard you".
    #[n(1)]
    pub seqs: Vec<u64>,
}

/// One durable report from the agent's outbox.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Report {
    /// Device name.
    #[n(0)]
    pub device: String,
    /// Outbox sequence number, unique per device; the controller stores each once.
    #[n(1)]
    pub seq: u64,
    /// When the agent created it, milliseconds since the Unix epoch.
    #[n(2)]
    pub created_ms: u64,
    /// What it reports.
    #[n(3)]
    pub body: ReportBody,
    /// Random identity of the agent's store, made when the store is created.
    /// A re-provisioned box (new store) restarts `seq` at 1; the controller
    /// dedups by (device, store_id, seq) so its new reports are not taken
    /// for duplicates of the old store's.
    #[n(4)]
    pub store_id: Option<u64>,
}

/// The kinds of report.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub enum ReportBody {
    /// Actual state of every object.
    #[n(0)]
    State(#[n(0)] ActualState),
    /// Something that happened.
    #[n(1)]
    Event(#[n(0)] Event),
    /// Agent metrics; the first to be dropped when the outbox is full.
    #[n(2)]
    Metrics(#[n(0)] AgentMetrics),
}

/// What the device actually runs.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ActualState {
    /// Generation the agent is converging on.
    #[n(0)]
    pub applied_generation: u64,
    /// Per-object state.
    #[n(1)]
    pub objects: Vec<ObjectStatus>,
}

/// State of one object on the device.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// Object name.
    #[n(0)]
    pub name: String,
    /// `slice`, `container` or `vm`.
    #[n(1)]
    pub kind: String,
    /// Where it is in its life cycle.
    #[n(2)]
    pub phase: Phase,
    /// Last error or explanation; empty when none.
    #[n(3)]
    pub message: String,
    /// How many times it was restarted.
    #[n(4)]
    pub restarts: u32,
    /// Generation that last changed its desired spec.
    #[n(5)]
    pub generation: u64,
}

/// Life-cycle phase of an object, as the reconciler names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cbor(index_only)]
pub enum Phase {
    /// Desired, not yet acted on.
    #[n(0)]
    Pending,
    /// Being created or changed.
    #[n(1)]
    Applying,
    /// Up and as desired.
    #[n(2)]
    Running,
    /// Failed; retried with backoff.
    #[n(3)]
    Failed,
    /// No longer desired; being torn down.
    #[n(4)]
    Removing,
    /// No runtime for this kind exists on the device; nothing runs.
    #[n(5)]
    Unsupported,
}

impl Phase {
    /// Lowercase name, as shown by the CLIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Applying => "applying",
            Phase::Running => "running",
            Phase::Failed => "failed",
            Phase::Removing => "removing",
            Phase::Unsupported => "unsupported",
        }
    }
}

/// Something that happened on the device.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Event {
    /// How serious it is.
    #[n(0)]
    pub severity: Severity,
    /// Object it concerns, if any.
    #[n(1)]
    pub object: Option<String>,
    /// What happened.
    #[n(2)]
    pub message: String,
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cbor(index_only)]
pub enum Severity {
    /// Informational.
    #[n(0)]
    Info,
    /// Something went wrong but the agent carries on.
    #[n(1)]
    Warning,
    /// An operation failed.
    #[n(2)]
    Error,
}

/// Agent self-metrics.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct AgentMetrics {
    /// Resident set size of the agent process in bytes.
    #[n(0)]
    pub rss_bytes: u64,
    /// Reports waiting in the outbox.
    #[n(1)]
    pub outbox_depth: u64,
    /// Seconds since the agent started.
    #[n(2)]
    pub uptime_s: u64,
}
