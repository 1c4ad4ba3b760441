//! Desired-state types: what the controller wants a device to run.
//!
//! Every CBOR field carries an explicit index (`#[n(..)]`). New fields get new
//! indices and must be optional (or have a default), so an old agent decodes a
//! newer document by skipping what it does not know, protobuf style. The same
//! types derive serde so operators can write them by hand in YAML manifests.

use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// The complete desired state of one device at one generation.
///
/// Always sent whole, never as a delta, so a deletion can never be missed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DesiredState {
    /// Device this document is for; an agent refuses documents for others.
    #[n(0)]
    pub device: String,
    /// Monotonically increasing per device; an agent refuses older ones (replay).
    #[n(1)]
    pub generation: u64,
    /// `sha256:<hex>` of the CBOR encoding of `spec`; see [`DeviceSpec::content_hash`].
    #[n(2)]
    pub content_hash: String,
    /// What the device should run.
    #[n(3)]
    pub spec: DeviceSpec,
}

/// The objects a device should have: network slices and workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Network slices, reconciled before any workload.
    #[n(0)]
    #[serde(default)]
    pub slices: Vec<SliceSpec>,
    /// Containers and VMs.
    #[n(1)]
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
}

/// A network slice: a VLAN on an uplink, a bridge, shaping and isolation.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSpec {
    /// Slice name, unique on the device (lowercase letters, digits, `-`).
    #[n(0)]
    pub name: String,
    /// 802.1Q VLAN id, 1..=4094, unique per uplink.
    #[n(1)]
    pub vlan_id: u16,
    /// Host interface that carries the slice's VLAN.
    #[n(2)]
    pub uplink: String,
    /// Committed / peak rates.
    #[n(3)]
    #[serde(default)]
    pub qos: QosSpec,
    /// Optional IPv4 subnet in CIDR form, e.g. `10.20.0.0/24`.
    #[n(4)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The slice's gateway address in its subnet (set on the slice's
    /// bridge), e.g. `10.20.0.1`; needs `subnet`.
    #[n(5)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Service tiers as operators name them; each maps to default rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cbor(index_only)]
pub enum QosTier {
    /// Highest priority, largest guaranteed share.
    #[n(0)]
    Gold,
    /// Middle tier.
    #[n(1)]
    Silver,
    /// Best effort.
    #[n(2)]
    Bronze,
}

/// Quality of service of a slice: a tier, explicit rates, or both (explicit wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosSpec {
    /// Tier whose defaults apply to every rate not given explicitly.
    #[n(0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<QosTier>,
    /// Committed information rate in kbit/s.
    #[n(1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cir_kbit: Option<u64>,
    /// Peak information rate in kbit/s; at least the CIR.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pir_kbit: Option<u64>,
    /// Priority, 0 (highest) ..= 7.
    #[n(3)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Burst in bytes sent at line rate above the rates (default: 10 ms
    /// at the PIR, at least ten full frames).
    #[n(4)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u32>,
}

/// One workload: a container or a VM, with resources and a restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Workload name, unique on the device.
    #[n(0)]
    pub name: String,
    /// What to run.
    #[n(1)]
    #[serde(flatten)]
    pub kind: WorkloadKind,
    /// Slice the workload's network port joins; none means no network.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// CPU and memory limits.
    #[n(3)]
    pub resources: Resources,
    /// What to do when the workload exits.
    #[n(4)]
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Traffic from other slices this workload accepts; everything else
    /// that tries to cross from another slice is dropped.
    #[n(5)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// Shaping of the workload's own port (towards the workload), within
    /// its slice's: explicit `cir_kbit`/`pir_kbit` or a tier.
    #[n(6)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_qos: Option<QosSpec>,
}

/// Traffic from another slice that a workload accepts.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The slice the traffic comes from.
    #[n(0)]
    pub from_slice: String,
    /// Its protocol.
    #[n(1)]
    pub protocol: IpProtocol,
    /// Destination port (TCP and UDP only); none means every port.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// IP protocols an allow rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cbor(index_only)]
pub enum IpProtocol {
    /// TCP.
    #[n(0)]
    Tcp,
    /// UDP.
    #[n(1)]
    Udp,
    /// ICMP (echo and the rest).
    #[n(2)]
    Icmp,
}

/// The two kinds of workload.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// An OCI container.
    #[n(0)]
    Container(#[n(0)] ContainerSpec),
    /// A KVM guest run by mecvisor's microVMM.
    #[n(1)]
    Vm(#[n(0)] VmSpec),
}

impl WorkloadKind {
    /// Short name of the kind, as shown in reports and CLIs.
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Container(_) => "container",
            WorkloadKind::Vm(_) => "vm",
        }
    }
}

/// An OCI container.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Image reference pinned by digest: `registry/repo@sha256:<64 hex>`.
    #[n(0)]
    pub image: String,
    /// Entrypoint override; empty keeps the image's.
    #[n(1)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments override; empty keeps the image's.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in order.
    #[n(3)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    #[n(0)]
    pub name: String,
    /// Variable value.
    #[n(1)]
    pub value: String,
}

/// A KVM guest.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Kernel artifact pinned by digest.
    #[n(0)]
    pub kernel: String,
    /// Optional initramfs artifact pinned by digest.
    #[n(1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Disk images, attached as virtio-blk in order.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// Kernel command line.
    #[n(3)]
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs, 1..=64.
    #[n(4)]
    pub vcpus: u8,
}

/// A disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Raw disk image artifact pinned by digest.
    #[n(0)]
    pub image: String,
    /// Attach read-only.
    #[n(1)]
    #[serde(default)]
    pub read_only: bool,
}

/// Resource limits of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU limit in thousandths of a core; 0 means no limit.
    #[n(0)]
    #[serde(default)]
    pub cpu_millis: u32,
    /// Memory limit (container) or guest memory (VM) in MiB; at least 1.
    #[n(1)]
    pub memory_mib: u32,
}

/// Restart policy of a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cbor(index_only)]
pub enum RestartPolicy {
    /// Restart whenever it exits, with backoff.
    #[n(0)]
    #[default]
    Always,
    /// Restart only after a non-zero exit, with backoff.
    #[n(1)]
    OnFailure,
    /// Never restart.
    #[n(2)]
    Never,
}
