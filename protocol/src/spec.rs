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
    /// The workload's IPv4 address on its slice (inside the slice's
    /// subnet, not its gateway), e.g. `10.100.0.10`; the slice's gateway is
    /// its default route. Without one the port carries no address.
    #[n(7)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Image reference by tag or digest: `registry/repo:tag` or
    /// `registry/repo@sha256:<64 hex>` (a digest pins exactly one image;
    /// a tag is looked up on every apply and the last pulled copy is used
    /// while the registry is out of reach).
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
    /// Environment variables, in order (override the image's).
    #[n(3)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory (absolute); default the image's, else `/`.
    #[n(4)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User to run as: `uid[:gid]` or names from the image's
    /// /etc/passwd and /etc/group; default the image's, else root.
    #[n(5)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Volumes: directories on the box that persist across restarts,
    /// agent upgrades and reboots (removed with the workload).
    #[n(6)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Mount the image's root file system read-only.
    #[n(7)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root: bool,
    /// Largest number of processes (fork bombs stop here).
    #[n(8)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// Health check; its result is part of the reported state and an
    /// unhealthy container is restarted by its restart policy.
    #[n(9)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Run in a user namespace (root inside is an unprivileged id outside).
    #[n(10)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub user_namespace: bool,
    /// Seconds between the stop signal and SIGKILL (default 10).
    #[n(11)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_s: Option<u32>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A volume of a container.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Volume name, unique in the workload (lowercase letters, digits, `-`).
    #[n(0)]
    pub name: String,
    /// Absolute path inside the container.
    #[n(1)]
    pub path: String,
    /// Mount read-only.
    #[n(2)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// How the agent checks a workload is healthy: for a container exactly one
/// of `exec`, `tcp_port`, `http`; for a VM `guest_agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A command run inside the container; healthy when it exits 0.
    #[n(0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// A TCP port in the container's network namespace; healthy when it
    /// accepts a connection.
    #[n(1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// An HTTP GET in the container's network namespace; healthy on 2xx/3xx.
    #[n(2)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// Seconds between checks (default 10).
    #[n(3)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u32>,
    /// Seconds a check may take (default 3).
    #[n(4)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Consecutive failures that make the container unhealthy (default 3).
    #[n(5)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds after start during which failures do not count (default 0).
    #[n(6)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_s: Option<u32>,
    /// VMs only: the guest agent (`mecvisor-guest`, vsock port 1024)
    /// answers HEALTH; healthy when it does.
    #[n(7)]
    #[cbor(default)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub guest_agent: bool,
}

/// An HTTP health probe.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Port.
    #[n(0)]
    pub port: u16,
    /// Path, e.g. `/healthz` (default `/`).
    #[n(1)]
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".to_string()
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
    /// Number of vCPUs, 1..=32.
    #[n(4)]
    pub vcpus: u8,
    /// How the agent checks the guest is healthy: `guest_agent: true` (the
    /// guest agent, `mecvisor-guest`, answers over vsock); an unhealthy VM
    /// is restarted by its policy.
    #[n(5)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
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
