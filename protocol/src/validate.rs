//! Validation of desired state: every problem, each with the path to it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::spec::{
    ContainerSpec, DesiredState, DeviceSpec, HealthCheck, QosSpec, SliceSpec, WorkloadKind,
    WorkloadSpec,
};

/// One problem found in a document, e.g. `workloads[2].slice: unknown slice "video"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `slices[0].vlan_id`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in a document; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(Problem::to_string).collect();
        write!(f, "{}", lines.join("; "))
    }
}

/// Longest object or device name.
pub const MAX_NAME_LEN: usize = 63;
/// Smallest guest memory a VM may ask for.
pub const MIN_VM_MEMORY_MIB: u32 = 64;
/// Most vCPUs a VM may ask for.
pub const MAX_VCPUS: u8 = 32;

/// Checks a device or object name: 1..=63 of `a-z 0-9 -`, not starting or
/// ending with `-`. Such names are safe in MQTT topics, file names and
/// interface names.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {name:?} must be 1 to {MAX_NAME_LEN} characters"
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "name {name:?} may hold only a-z, 0-9 and '-', and not start or end with '-'"
        ));
    }
    Ok(())
}

/// Checks a container image reference: `[registry/]repository[:tag]` or
/// `[registry/]repository@sha256:<64 hex>`.
pub fn check_container_image(reference: &str) -> Result<(), String> {
    if reference.contains('@') {
        return check_image_ref(reference);
    }
    let well_formed = !reference.is_empty()
        && reference.len() <= 512
        && !reference.starts_with(['/', ':', '.', '-'])
        && !reference.ends_with(['/', ':'])
        && !reference.contains("//")
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'));
    if !well_formed {
        return Err(format!(
            "image {reference:?} is not a reference: [registry/]repository[:tag] or [registry/]repository@sha256:<64 hex digits>"
        ));
    }
    Ok(())
}

/// Checks an image reference pinned by digest: `<repo>@sha256:<64 hex>`.
pub fn check_image_ref(reference: &str) -> Result<(), String> {
    let Some((repo, digest)) = reference.split_once('@') else {
        return Err(format!(
            "image {reference:?} must be pinned by digest: <repository>@sha256:<64 hex digits>"
        ));
    };
    let hex_ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if repo.is_empty() || repo.contains(char::is_whitespace) || !hex_ok {
        return Err(format!(
            "image {reference:?} must be pinned by digest: <repository>@sha256:<64 hex digits>"
        ));
    }
    Ok(())
}

/// An IPv4 network parsed from CIDR text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// Network address (host bits cleared).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/len`; host bits must be zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = || format!("{text:?} is not an IPv4 network like 10.20.0.0/24");
        let (addr, len) = text.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = len.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        let net = Ipv4Net { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!("{text:?} has host bits set"));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

impl DesiredState {
    /// Validates the whole document, including that its content hash matches.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut problems = Vec::new();
        if let Err(message) = check_name(&self.device) {
            problems.push(Problem {
                path: "device".into(),
                message,
            });
        }
        if self.generation == 0 {
            problems.push(Problem {
                path: "generation".into(),
                message: "generation must be at least 1".into(),
            });
        }
        let hash = self.spec.content_hash();
        if self.content_hash != hash {
            problems.push(Problem {
                path: "content_hash".into(),
                message: format!("is {:?} but the spec hashes to {hash:?}", self.content_hash),
            });
        }
        problems.extend(self.spec.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Invalid(problems))
        }
    }
}

impl DeviceSpec {
    /// Validates slices and workloads and the references between them.
    pub fn validate(&self) -> Result<(), Invalid> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Invalid(problems))
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        let mut vlans: HashMap<(&str, u16), &str> = HashMap::new();
        let mut subnets: Vec<(&str, Ipv4Net)> = Vec::new();
        for (i, slice) in self.slices.iter().enumerate() {
            let at = |field: &str| format!("slices[{i}].{field}");
            slice_problems(slice, &at, &mut out);
            if !names.insert(slice.name.as_str()) {
                out.push(Problem {
                    path: at("name"),
                    message: format!("duplicate slice name {:?}", slice.name),
                });
            }
            if let Some(other) = vlans.insert((&slice.uplink, slice.vlan_id), &slice.name) {
                out.push(Problem {
                    path: at("vlan_id"),
                    message: format!(
                        "VLAN {} on uplink {:?} is already used by slice {other:?}",
                        slice.vlan_id, slice.uplink
                    ),
                });
            }
            if let Some(Ok(net)) = slice.subnet.as_deref().map(Ipv4Net::parse) {
                if let Some((other, _)) = subnets.iter().find(|(_, n)| n.overlaps(&net)) {
                    out.push(Problem {
                        path: at("subnet"),
                        message: format!("overlaps the subnet of slice {other:?}"),
                    });
                }
                subnets.push((&slice.name, net));
            }
        }
        let slice_names: HashSet<&str> = self.slices.iter().map(|s| s.name.as_str()).collect();
        let mut workload_names = HashSet::new();
        let mut addresses: HashMap<(&str, &str), &str> = HashMap::new();
        for (i, workload) in self.workloads.iter().enumerate() {
            let at = |field: &str| format!("workloads[{i}].{field}");
            workload_problems(workload, &at, &mut out);
            if !workload_names.insert(workload.name.as_str()) {
                out.push(Problem {
                    path: at("name"),
                    message: format!("duplicate workload name {:?}", workload.name),
                });
            }
            if let Some(slice) = &workload.slice {
                if !slice_names.contains(slice.as_str()) {
                    out.push(Problem {
                        path: at("slice"),
                        message: format!("unknown slice {slice:?}"),
                    });
                }
            }
            network_problems(workload, &slice_names, &at, &mut out);
            if let Some(address) = &workload.address {
                let slice = workload
                    .slice
                    .as_deref()
                    .and_then(|name| self.slices.iter().find(|s| s.name == name));
                let problem = match slice {
                    None if workload.slice.is_none() => {
                        Some("an address needs the workload to join a slice".to_string())
                    }
                    None => None, // the unknown slice is reported already
                    Some(s) if s.subnet.is_none() => Some(format!(
                        "slice {:?} has no subnet to take an address from",
                        s.name
                    )),
                    Some(s) if s.gateway.as_deref() == Some(address.as_str()) => {
                        Some(format!("{address} is the gateway of slice {:?}", s.name))
                    }
                    Some(s) => check_gateway(address, s.subnet.as_deref())
                        .err()
                        .or_else(|| {
                            addresses
                                .insert((&s.name, address), &workload.name)
                                .map(|other| format!("{address} is already workload {other:?}'s"))
                        }),
                };
                if let Some(message) = problem {
                    out.push(Problem {
                        path: at("address"),
                        message,
                    });
                }
            }
        }
        out
    }

    /// `sha256:<hex>` of the CBOR encoding of this spec.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(crate::codec::encode(self));
        format!("sha256:{}", hex::encode(digest))
    }
}

/// Allow rules and port shaping: they need a slice, and allow rules name
/// another known slice and a port only for TCP or UDP.
fn network_problems(
    w: &WorkloadSpec,
    slices: &HashSet<&str>,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<Problem>,
) {
    if w.slice.is_none() && (!w.allow.is_empty() || w.port_qos.is_some()) {
        out.push(Problem {
            path: at("slice"),
            message: "allow rules and port_qos need the workload to join a slice".into(),
        });
    }
    for (j, rule) in w.allow.iter().enumerate() {
        let path = || at(&format!("allow[{j}]"));
        if !slices.contains(rule.from_slice.as_str()) {
            out.push(Problem {
                path: format!("{}.from_slice", path()),
                message: format!("unknown slice {:?}", rule.from_slice),
            });
        } else if w.slice.as_deref() == Some(rule.from_slice.as_str()) {
            out.push(Problem {
                path: format!("{}.from_slice", path()),
                message: "traffic within the workload's own slice is always allowed".into(),
            });
        }
        match (rule.protocol, rule.port) {
            (crate::spec::IpProtocol::Icmp, Some(_)) => out.push(Problem {
                path: format!("{}.port", path()),
                message: "ICMP has no ports".into(),
            }),
            (_, Some(0)) => out.push(Problem {
                path: format!("{}.port", path()),
                message: "port must be 1 to 65535".into(),
            }),
            _ => {}
        }
    }
    if let Some(qos) = &w.port_qos {
        qos_problems(
            qos,
            &|field: &str| at(&field.replacen("qos", "port_qos", 1)),
            out,
        );
    }
}

fn push(out: &mut Vec<Problem>, path: String, result: Result<(), String>) {
    if let Err(message) = result {
        out.push(Problem { path, message });
    }
}

fn slice_problems(slice: &SliceSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    push(out, at("name"), check_name(&slice.name));
    if !(1..=4094).contains(&slice.vlan_id) {
        out.push(Problem {
            path: at("vlan_id"),
            message: format!("VLAN {} is outside 1..4094", slice.vlan_id),
        });
    }
    let uplink_ok = !slice.uplink.is_empty()
        && slice.uplink.len() < 16
        && !slice.uplink.contains(['/', ' ', '\0']);
    if !uplink_ok {
        out.push(Problem {
            path: at("uplink"),
            message: format!(
                "uplink {:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)",
                slice.uplink
            ),
        });
    }
    qos_problems(&slice.qos, at, out);
    if let Some(subnet) = &slice.subnet {
        push(out, at("subnet"), Ipv4Net::parse(subnet).map(|_| ()));
    }
    if let Some(gateway) = &slice.gateway {
        push(
            out,
            at("gateway"),
            check_gateway(gateway, slice.subnet.as_deref()),
        );
    }
}

/// A gateway (or a workload's address) is a host address inside the
/// slice's subnet.
fn check_gateway(gateway: &str, subnet: Option<&str>) -> Result<(), String> {
    let address: std::net::Ipv4Addr = gateway
        .parse()
        .map_err(|_| format!("{gateway:?} is not an IPv4 address"))?;
    let subnet = subnet.ok_or("a gateway needs the slice's subnet")?;
    let net = Ipv4Net::parse(subnet).map_err(|_| "the subnet is invalid".to_string())?;
    let host = Ipv4Net::parse(&format!("{address}/32")).map_err(|e| e.to_string())?;
    let size = 1u64 << (32 - u32::from(net.prefix));
    let offset = u64::from(u32::from(address)).wrapping_sub(u64::from(u32::from(net.addr)));
    if !net.overlaps(&host) {
        return Err(format!("{gateway} is outside the subnet {subnet}"));
    }
    if net.prefix < 31 && (offset == 0 || offset == size - 1) {
        return Err(format!(
            "{gateway} is the network or broadcast address of {subnet}"
        ));
    }
    Ok(())
}

fn qos_problems(qos: &QosSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    if qos.tier.is_none() && qos.cir_kbit.is_none() {
        out.push(Problem {
            path: at("qos"),
            message: "give a tier (gold, silver, bronze) or an explicit cir_kbit".into(),
        });
    }
    if qos.cir_kbit == Some(0) {
        out.push(Problem {
            path: at("qos.cir_kbit"),
            message: "CIR must be above 0".into(),
        });
    }
    if let (Some(cir), Some(pir)) = (qos.cir_kbit, qos.pir_kbit) {
        if pir < cir {
            out.push(Problem {
                path: at("qos.pir_kbit"),
                message: format!("PIR {pir} kbit/s is below the CIR {cir} kbit/s"),
            });
        }
    }
    if qos.priority.is_some_and(|p| p > 7) {
        out.push(Problem {
            path: at("qos.priority"),
            message: "priority must be 0..=7".into(),
        });
    }
    if qos
        .burst_bytes
        .is_some_and(|b| !(1_514..=100_000_000).contains(&b))
    {
        out.push(Problem {
            path: at("qos.burst_bytes"),
            message: "burst must be 1514 (one frame) to 100000000 bytes".into(),
        });
    }
}

fn absolute_path(path: &str) -> Result<(), String> {
    let clean =
        path.starts_with('/') && !path.contains('\0') && !path.split('/').any(|part| part == "..");
    if clean {
        Ok(())
    } else {
        Err(format!("{path:?} must be an absolute path without '..'"))
    }
}

fn container_problems(c: &ContainerSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    if let Some(dir) = &c.working_dir {
        push(out, at("container.working_dir"), absolute_path(dir));
    }
    if let Some(user) = &c.user {
        let ok = !user.is_empty()
            && user.split(':').count() <= 2
            && user
                .split(':')
                .all(|p| !p.is_empty() && p.len() <= 32 && !p.contains(['/', '\0']));
        if !ok {
            out.push(Problem {
                path: at("container.user"),
                message: format!("{user:?} is not uid[:gid] or user[:group]"),
            });
        }
    }
    let mut names = std::collections::BTreeSet::new();
    let mut paths = std::collections::BTreeSet::new();
    for (j, v) in c.volumes.iter().enumerate() {
        push(
            out,
            at(&format!("container.volumes[{j}].name")),
            check_name(&v.name),
        );
        push(
            out,
            at(&format!("container.volumes[{j}].path")),
            absolute_path(&v.path),
        );
        if v.path == "/" {
            out.push(Problem {
                path: at(&format!("container.volumes[{j}].path")),
                message: "a volume cannot replace the root file system".into(),
            });
        }
        if !names.insert(&v.name) {
            out.push(Problem {
                path: at(&format!("container.volumes[{j}].name")),
                message: format!("volume {:?} is listed twice", v.name),
            });
        }
        if !paths.insert(&v.path) {
            out.push(Problem {
                path: at(&format!("container.volumes[{j}].path")),
                message: format!("two volumes are mounted at {:?}", v.path),
            });
        }
    }
    if c.pids_limit == Some(0) {
        out.push(Problem {
            path: at("container.pids_limit"),
            message: "must be at least 1".into(),
        });
    }
    if let Some(h) = &c.health {
        health_problems(h, HealthOf::Container, at, out);
    }
}

/// Which kind of workload a health check is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HealthOf {
    Container,
    Vm,
}

fn health_problems(
    h: &HealthCheck,
    of: HealthOf,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<Problem>,
) {
    let prefix = match of {
        HealthOf::Container => "container.health",
        HealthOf::Vm => "vm.health",
    };
    let field = |key: &str| at(&format!("{prefix}.{key}"));
    let container_probes = usize::from(h.exec.is_some())
        + usize::from(h.tcp_port.is_some())
        + usize::from(h.http.is_some());
    match of {
        HealthOf::Container if container_probes != 1 || h.guest_agent => out.push(Problem {
            path: at(prefix),
            message: "give exactly one of exec, tcp_port, http".into(),
        }),
        HealthOf::Vm if container_probes != 0 || !h.guest_agent => out.push(Problem {
            path: at(prefix),
            message: "a VM is checked through its guest agent: give guest_agent: true (and no exec, tcp_port, http)".into(),
        }),
        _ => {}
    }
    if h.exec
        .as_ref()
        .is_some_and(|cmd| cmd.is_empty() || cmd[0].is_empty())
    {
        out.push(Problem {
            path: field("exec"),
            message: "needs a command".into(),
        });
    }
    if h.tcp_port == Some(0) || h.http.as_ref().is_some_and(|p| p.port == 0) {
        out.push(Problem {
            path: at(prefix),
            message: "port 0 cannot be probed".into(),
        });
    }
    if let Some(p) = &h.http {
        if !p.path.starts_with('/')
            || p.path
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            out.push(Problem {
                path: field("http.path"),
                message: format!("{:?} must start with '/' and hold no spaces", p.path),
            });
        }
    }
    for (key, value) in [
        ("interval_s", h.interval_s),
        ("timeout_s", h.timeout_s),
        ("retries", h.retries),
    ] {
        if value == Some(0) {
            out.push(Problem {
                path: field(key),
                message: "must be at least 1".into(),
            });
        }
    }
}

fn workload_problems(w: &WorkloadSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    push(out, at("name"), check_name(&w.name));
    if w.resources.memory_mib == 0 {
        out.push(Problem {
            path: at("resources.memory_mib"),
            message: "memory must be at least 1 MiB".into(),
        });
    }
    match &w.kind {
        WorkloadKind::Container(c) => {
            push(out, at("container.image"), check_container_image(&c.image));
            for (j, var) in c.env.iter().enumerate() {
                if var.name.is_empty() || var.name.contains(['=', '\0']) {
                    out.push(Problem {
                        path: at(&format!("container.env[{j}].name")),
                        message: format!("{:?} is not a valid variable name", var.name),
                    });
                }
            }
            container_problems(c, at, out);
        }
        WorkloadKind::Vm(vm) => {
            push(out, at("vm.kernel"), check_image_ref(&vm.kernel));
            if let Some(initrd) = &vm.initrd {
                push(out, at("vm.initrd"), check_image_ref(initrd));
            }
            for (j, disk) in vm.disks.iter().enumerate() {
                push(
                    out,
                    at(&format!("vm.disks[{j}].image")),
                    check_image_ref(&disk.image),
                );
            }
            if !(1..=MAX_VCPUS).contains(&vm.vcpus) {
                out.push(Problem {
                    path: at("vm.vcpus"),
                    message: format!("vcpus must be 1..={MAX_VCPUS}"),
                });
            }
            if let Some(h) = &vm.health {
                health_problems(h, HealthOf::Vm, at, out);
            }
            if w.resources.memory_mib != 0 && w.resources.memory_mib < MIN_VM_MEMORY_MIB {
                out.push(Problem {
                    path: at("resources.memory_mib"),
                    message: format!("a VM needs at least {MIN_VM_MEMORY_MIB} MiB"),
                });
            }
        }
    }
}
