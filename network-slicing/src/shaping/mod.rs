//! Shaping: one HTB per uplink with a class per slice (rate = CIR, ceil =
//! PIR, explicit burst and quantum, priority), all borrowing from a class
//! that holds the uplink's capacity, so a slice gets its CIR when the
//! uplink is full and up to its PIR when it is not. The same tree on the
//! uplink's ifb shapes incoming slice traffic, which a filter on the
//! uplink's ingress redirects there. Packets find their class by VLAN id
//! ([`classifier`]).
//!
//! Ownership: mecvisor's qdiscs have handle `0x6d76:` ("mv"), its filters
//! priority [`FILTER_PREF`]. An uplink whose root qdisc is someone else's
//! (a non-zero handle other than mecvisor's) is refused as a conflict; the
//! kernel's default root qdisc (handle 0) is replaced and comes back when
//! the uplink carries no slice any more.
//!
//! Like links, tc state is read back and diffed ([`plan`] is pure), so a
//! second apply changes nothing.

pub mod classifier;
pub mod htb;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use classifier::{class_minor, TCA_BPF_ACT};
pub use htb::ClassParams;

use crate::kernel::{Counters, Kernel, KernelError, Link, CLSACT_PARENT, INGRESS_PARENT};
use crate::model::{Port, Slice};
use crate::names::{link_name, Role};

/// Major number of every qdisc mecvisor adds (`0x6d76:`, "mv").
pub const MAJOR: u16 = 0x6d76;
/// Minor number of the class that holds an uplink's capacity.
pub const ROOT_MINOR: u16 = 1;
/// Priority of mecvisor's filters.
pub const FILTER_PREF: u16 = 0x6d76;

/// Handle of mecvisor's root qdisc.
pub const fn qdisc_handle() -> u32 {
    (MAJOR as u32) << 16
}

/// Class id `MAJOR:minor`.
pub const fn classid(minor: u16) -> u32 {
    qdisc_handle() | minor as u32
}

/// The shaping one uplink needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkShaping {
    /// The uplink.
    pub uplink: String,
    /// Its ifb (ingress shaping).
    pub ifb: String,
    /// The class every slice borrows from.
    pub root: ClassParams,
    /// Per slice: class minor -> (slice, parameters).
    pub classes: BTreeMap<u16, (String, ClassParams)>,
}

/// Shaping for `slices`, one entry per uplink they use. An uplink without a
/// configured capacity gets the sum of its slices' PIRs (borrowing then
/// never runs dry in HTB; the CIR guarantee needs the real capacity).
pub fn desired(slices: &[Slice], capacities: &BTreeMap<String, u64>) -> Vec<UplinkShaping> {
    let mut by_uplink: BTreeMap<&str, Vec<&Slice>> = BTreeMap::new();
    for slice in slices {
        by_uplink.entry(&slice.uplink).or_default().push(slice);
    }
    by_uplink
        .into_iter()
        .map(|(uplink, slices)| {
            let capacity = capacities
                .get(uplink)
                .copied()
                .unwrap_or_else(|| slices.iter().map(|s| s.rates.pir_kbit).sum());
            UplinkShaping {
                uplink: uplink.to_string(),
                ifb: link_name(uplink, Role::Ingress),
                root: ClassParams::for_uplink(capacity),
                classes: slices
                    .iter()
                    .map(|s| {
                        (
                            class_minor(s.vlan_id),
                            (s.name.clone(), ClassParams::for_slice(&s.rates)),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Shaping of one workload's port: one class holding all its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortShaping {
    /// The port's link name.
    pub device: String,
    /// Its class.
    pub params: ClassParams,
}

/// Shaping for the ports that have a limit.
pub fn desired_ports(ports: &[Port]) -> Vec<PortShaping> {
    ports
        .iter()
        .filter_map(|port| {
            port.limit.as_ref().map(|rates| PortShaping {
                device: port.name.clone(),
                params: ClassParams::for_slice(rates),
            })
        })
        .collect()
}

/// What tc holds on one interface, as far as mecvisor is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTc {
    /// Interface index.
    pub index: u32,
    /// Root qdisc (kind, handle), if the interface has one.
    pub root: Option<(String, u32)>,
    /// mecvisor's classes under its root qdisc: minor -> parameters.
    pub classes: BTreeMap<u16, ClassParams>,
    /// Their counters.
    pub counters: BTreeMap<u16, Counters>,
    /// Whether mecvisor's classifier sits on its root qdisc.
    pub classifier: bool,
    /// Whether the interface has a clsact qdisc.
    pub clsact: bool,
    /// Where mecvisor's ingress filter redirects to (interface index).
    pub redirect: Option<u32>,
    /// Ingress filters of any owner (priorities).
    pub ingress_filters: usize,
}

impl DeviceTc {
    /// Whether the root qdisc is mecvisor's.
    pub fn root_is_ours(&self) -> bool {
        self.root
            .as_ref()
            .is_some_and(|(kind, handle)| kind == "htb" && *handle == qdisc_handle())
    }

    /// The root qdisc if it belongs to someone else (not mecvisor's, not
    /// the kernel's default).
    pub fn foreign_root(&self) -> Option<(String, u32)> {
        self.root
            .clone()
            .filter(|(_, handle)| *handle != 0 && !self.root_is_ours())
    }
}

/// Reads tc state of every interface in `links`.
pub async fn observe(
    kernel: &Kernel,
    links: &[Link],
) -> Result<BTreeMap<String, DeviceTc>, KernelError> {
    let qdiscs = kernel.qdiscs().await?;
    let mut out = BTreeMap::new();
    for link in links {
        let mut device = DeviceTc {
            index: link.index,
            ..DeviceTc::default()
        };
        for qdisc in qdiscs.iter().filter(|q| q.index == link.index) {
            if qdisc.parent == u32::MAX {
                device.root = Some((qdisc.kind.clone(), qdisc.handle));
            }
            if qdisc.parent == CLSACT_PARENT {
                device.clsact = true;
            }
        }
        if device.root_is_ours() {
            for class in kernel.classes(link.index).await? {
                if class.kind != "htb" || class.handle >> 16 != u32::from(MAJOR) {
                    continue;
                }
                let minor = (class.handle & 0xffff) as u16;
                // A class that cannot be read is treated as wrong: it is set again.
                let params = ClassParams::decode(&class.options).unwrap_or(ClassParams {
                    rate: 0,
                    ceil: 0,
                    buffer: 0,
                    cbuffer: 0,
                    quantum: 0,
                    prio: u32::MAX,
                });
                device.classes.insert(minor, params);
                device.counters.insert(minor, class.counters);
            }
            device.classifier = kernel
                .filters(link.index, qdisc_handle())
                .await?
                .iter()
                .any(|f| f.pref == FILTER_PREF && f.kind == "bpf");
        }
        if device.clsact {
            let filters = kernel.filters(link.index, INGRESS_PARENT).await?;
            device.ingress_filters = filters.len();
            device.redirect = filters
                .iter()
                .find(|f| f.pref == FILTER_PREF && f.kind == "bpf")
                .map(|f| {
                    f.actions
                        .as_deref()
                        .and_then(|a| classifier::redirect_target(a).ok().flatten())
                        .unwrap_or(0)
                });
        }
        out.insert(link.name.clone(), device);
    }
    Ok(out)
}

/// One tc change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcAction {
    /// Add mecvisor's HTB as the root qdisc of `device`.
    AddRoot {
        /// Interface name.
        device: String,
        /// Class of unclassified packets (0: they bypass the classes).
        default_class: u16,
    },
    /// Remove mecvisor's root qdisc (the kernel's default comes back).
    DeleteRoot {
        /// Interface name.
        device: String,
    },
    /// Create or change a class.
    SetClass {
        /// Interface name.
        device: String,
        /// Class minor.
        minor: u16,
        /// Its parameters.
        params: ClassParams,
        /// The slice it shapes (`None` for the uplink's class).
        slice: Option<String>,
        /// Whether the class exists already (changed, not created).
        change: bool,
    },
    /// Remove a class no slice wants.
    DeleteClass {
        /// Interface name.
        device: String,
        /// Class minor.
        minor: u16,
    },
    /// Put the VLAN classifier on mecvisor's root qdisc.
    AddClassifier {
        /// Interface name.
        device: String,
    },
    /// Add a clsact qdisc (for the ingress redirect).
    AddClsact {
        /// Interface name.
        device: String,
    },
    /// Redirect the uplink's incoming slice traffic to its ifb.
    AddRedirect {
        /// The uplink.
        uplink: String,
        /// The ifb.
        ifb: String,
    },
    /// Remove mecvisor's ingress filter.
    DeleteRedirect {
        /// The uplink.
        uplink: String,
    },
    /// Remove a clsact qdisc left without filters.
    DeleteClsact {
        /// Interface name.
        device: String,
    },
}

impl fmt::Display for TcAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcAction::AddRoot { device, .. } => write!(f, "add HTB root qdisc {MAJOR:x}: on {device}"),
            TcAction::DeleteRoot { device } => {
                write!(f, "delete HTB root qdisc {MAJOR:x}: on {device} (no slice uses it)")
            }
            TcAction::SetClass {
                device,
                minor,
                params,
                slice,
                change,
            } => write!(
                f,
                "{} class {MAJOR:x}:{minor:x} on {device} ({}rate {} kbit/s, ceil {} kbit/s, prio {})",
                if *change { "change" } else { "add" },
                slice.as_ref().map(|s| format!("slice {s}, ")).unwrap_or_default(),
                params.rate / 125,
                params.ceil / 125,
                params.prio
            ),
            TcAction::DeleteClass { device, minor } => {
                write!(f, "delete class {MAJOR:x}:{minor:x} on {device} (no slice uses it)")
            }
            TcAction::AddClassifier { device } => write!(f, "add VLAN classifier on {device}"),
            TcAction::AddClsact { device } => write!(f, "add clsact qdisc on {device}"),
            TcAction::AddRedirect { uplink, ifb } => {
                write!(f, "redirect slice traffic arriving on {uplink} to {ifb}")
            }
            TcAction::DeleteRedirect { uplink } => {
                write!(f, "delete the ingress redirect on {uplink}")
            }
            TcAction::DeleteClsact { device } => write!(f, "delete clsact qdisc on {device}"),
        }
    }
}

/// The tc changes that turn `observed` into `desired`. `ifb_index` gives
/// the current index of each desired ifb (an ingress redirect pointing
/// anywhere else is replaced).
pub fn plan(
    desired: &[UplinkShaping],
    ports: &[PortShaping],
    observed: &BTreeMap<String, DeviceTc>,
    ifb_index: &BTreeMap<String, u32>,
) -> Vec<TcAction> {
    let mut actions = Vec::new();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for port in ports {
        wanted.insert(&port.device);
        let observed = observed.get(&port.device).filter(|d| d.root_is_ours());
        if observed.is_none() {
            actions.push(TcAction::AddRoot {
                device: port.device.clone(),
                default_class: ROOT_MINOR,
            });
        }
        let current = observed.and_then(|d| d.classes.get(&ROOT_MINOR));
        if current != Some(&port.params) {
            actions.push(TcAction::SetClass {
                device: port.device.clone(),
                minor: ROOT_MINOR,
                params: port.params,
                slice: None,
                change: current.is_some(),
            });
        }
    }
    for shaping in desired {
        wanted.insert(&shaping.uplink);
        wanted.insert(&shaping.ifb);
        for device in [&shaping.uplink, &shaping.ifb] {
            device_plan(device, shaping, observed.get(device.as_str()), &mut actions);
        }
        let uplink = observed.get(shaping.uplink.as_str());
        if !uplink.is_some_and(|u| u.clsact) {
            actions.push(TcAction::AddClsact {
                device: shaping.uplink.clone(),
            });
        }
        let redirect = uplink.and_then(|u| u.redirect);
        let target = ifb_index.get(&shaping.ifb).copied();
        if redirect.is_none() || redirect != target {
            if redirect.is_some() {
                actions.push(TcAction::DeleteRedirect {
                    uplink: shaping.uplink.clone(),
                });
            }
            actions.push(TcAction::AddRedirect {
                uplink: shaping.uplink.clone(),
                ifb: shaping.ifb.clone(),
            });
        }
    }
    for (name, device) in observed {
        if wanted.contains(name.as_str()) {
            continue;
        }
        if device.root_is_ours() {
            actions.push(TcAction::DeleteRoot {
                device: name.clone(),
            });
        }
        if device.redirect.is_some() {
            actions.push(TcAction::DeleteRedirect {
                uplink: name.clone(),
            });
            if device.ingress_filters <= 1 {
                actions.push(TcAction::DeleteClsact {
                    device: name.clone(),
                });
            }
        }
    }
    actions
}

fn device_plan(
    device: &str,
    shaping: &UplinkShaping,
    observed: Option<&DeviceTc>,
    actions: &mut Vec<TcAction>,
) {
    let observed = observed.filter(|d| d.root_is_ours());
    if observed.is_none() {
        actions.push(TcAction::AddRoot {
            device: device.to_string(),
            default_class: 0,
        });
    }
    let have = |minor: u16| observed.and_then(|d| d.classes.get(&minor));
    let mut set = |minor: u16, params: ClassParams, slice: Option<&String>| {
        let current = have(minor);
        if current != Some(&params) {
            actions.push(TcAction::SetClass {
                device: device.to_string(),
                minor,
                params,
                slice: slice.cloned(),
                change: current.is_some(),
            });
        }
    };
    set(ROOT_MINOR, shaping.root, None);
    for (minor, (slice, params)) in &shaping.classes {
        set(*minor, *params, Some(slice));
    }
    if let Some(observed) = observed {
        for minor in observed.classes.keys() {
            if *minor != ROOT_MINOR && !shaping.classes.contains_key(minor) {
                actions.push(TcAction::DeleteClass {
                    device: device.to_string(),
                    minor: *minor,
                });
            }
        }
    }
    if !observed.is_some_and(|d| d.classifier) {
        actions.push(TcAction::AddClassifier {
            device: device.to_string(),
        });
    }
}

/// Makes tc match `desired` on every interface of the namespace: reads
/// links and tc back, plans, runs. Returns the changes made; on failure the
/// failed action and the kernel's refusal. Inverse actions of what was
/// created are appended to `undo` as it goes.
#[tracing::instrument(name = "shaping_apply", skip_all, fields(uplinks = desired.len()))]
pub async fn reconcile(
    kernel: &Kernel,
    desired: &[UplinkShaping],
    ports: &[PortShaping],
    undo: &mut Vec<TcAction>,
) -> Result<Vec<String>, (String, KernelError)> {
    let read = |e| ("read tc state".to_string(), e);
    let links = kernel.links().await.map_err(read)?;
    let observed = observe(kernel, &links).await.map_err(read)?;
    let ifb_index: BTreeMap<String, u32> = desired
        .iter()
        .filter_map(|w| links.iter().find(|l| l.name == w.ifb))
        .map(|l| (l.name.clone(), l.index))
        .collect();
    let mut changes = Vec::new();
    for action in plan(desired, ports, &observed, &ifb_index) {
        run(kernel, &action, undo)
            .await
            .map_err(|e| (action.to_string(), e))?;
        tracing::info!(%action, "shaping change");
        changes.push(action.to_string());
    }
    Ok(changes)
}

/// Carries out one action; the inverse actions that undo it (if it created
/// something) are appended to `undo`.
pub async fn run(
    kernel: &Kernel,
    action: &TcAction,
    undo: &mut Vec<TcAction>,
) -> Result<(), KernelError> {
    let what = action.to_string();
    match action {
        TcAction::AddRoot {
            device,
            default_class,
        } => {
            let index = kernel.index_of(device).await?;
            kernel
                .add_htb_root(index, MAJOR, *default_class, &what)
                .await?;
            undo.push(TcAction::DeleteRoot {
                device: device.clone(),
            });
        }
        TcAction::DeleteRoot { device } => {
            let index = kernel.index_of(device).await?;
            kernel.delete_root_qdisc(index, &what).await?;
        }
        TcAction::SetClass {
            device,
            minor,
            params,
            change,
            ..
        } => {
            let index = kernel.index_of(device).await?;
            let parent = if *minor == ROOT_MINOR {
                qdisc_handle()
            } else {
                classid(ROOT_MINOR)
            };
            kernel
                .set_htb_class(index, classid(*minor), parent, params.encode(), &what)
                .await?;
            if !change && *minor != ROOT_MINOR {
                undo.push(TcAction::DeleteClass {
                    device: device.clone(),
                    minor: *minor,
                });
            }
        }
        TcAction::DeleteClass { device, minor } => {
            let index = kernel.index_of(device).await?;
            kernel.delete_class(index, classid(*minor), &what).await?;
        }
        TcAction::AddClassifier { device } => {
            let index = kernel.index_of(device).await?;
            let options = classifier::filter_options(MAJOR, None);
            kernel
                .add_bpf_filter(index, qdisc_handle(), FILTER_PREF, options, &what)
                .await?;
        }
        TcAction::AddClsact { device } => {
            let index = kernel.index_of(device).await?;
            kernel.add_clsact(index, &what).await?;
            undo.push(TcAction::DeleteClsact {
                device: device.clone(),
            });
        }
        TcAction::AddRedirect { uplink, ifb } => {
            let index = kernel.index_of(uplink).await?;
            let target = kernel.index_of(ifb).await?;
            let options = classifier::filter_options(MAJOR, Some(target));
            kernel
                .add_bpf_filter(index, INGRESS_PARENT, FILTER_PREF, options, &what)
                .await?;
            undo.push(TcAction::DeleteRedirect {
                uplink: uplink.clone(),
            });
        }
        TcAction::DeleteRedirect { uplink } => {
            let index = kernel.index_of(uplink).await?;
            kernel
                .delete_filter(index, INGRESS_PARENT, FILTER_PREF, &what)
                .await?;
        }
        TcAction::DeleteClsact { device } => {
            let index = kernel.index_of(device).await?;
            kernel.delete_clsact(index, &what).await?;
        }
    }
    Ok(())
}
