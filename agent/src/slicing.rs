//! The network slicing runtime: slices and the workload ports in them are
//! applied as one set through [`network_slicing::Slicer`], which reads the
//! kernel back, so every call is idempotent and a slice no longer desired
//! is removed by the next apply. The reconciler tells the runtime the whole
//! desired set at the start of each pass ([`Runtime::desired_set`]);
//! applying one slice then never removes another that the same pass has
//! yet to reach.
//!
//! Slices and ports live in one [`SliceNet`], shared with the container
//! and VM runtimes: each adds a workload's port once the workload's veth
//! (container) or tap (VM) exists, and every apply (of a slice or a port)
//! carries all of them, so none undoes another.

use std::collections::BTreeMap;
use std::rc::Rc;

use network_slicing::isolation::NfTables;
use network_slicing::kernel::Kernel;
use network_slicing::names::{link_name, Role};
use network_slicing::{Port, Slice, Slicer};
use tracing::info;

use crate::config::SlicingConfig;
use crate::runtime::{ObjectKind, ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};

/// What the slicer applies: desired slices and the workload ports that
/// exist, by workload name, each with the kind of runtime that owns it.
pub struct SliceNet {
    slicer: Slicer,
    kernel: Kernel,
    slices: BTreeMap<String, Slice>,
    ports: BTreeMap<String, (ObjectKind, Port)>,
}

/// The slice state shared by the slicing and container runtimes (the agent
/// is single-threaded; the lock is held across a whole apply).
pub type SharedSliceNet = Rc<tokio::sync::Mutex<SliceNet>>;

impl SliceNet {
    /// Applies the slices with their ports.
    pub async fn converge(&mut self) -> Result<(), RuntimeError> {
        let slices: Vec<Slice> = self.slices.values().cloned().collect();
        let ports: Vec<Port> = self.ports.values().map(|(_, p)| p.clone()).collect();
        let report = self
            .slicer
            .apply_with_ports(&slices, &ports)
            .await
            .map_err(|e| RuntimeError(e.to_string()))?;
        if !report.changes.is_empty() {
            info!(
                changes = report.changes.len(),
                ports = ports.len(),
                "slices converged"
            );
        }
        Ok(())
    }

    /// A desired slice.
    pub fn slice(&self, name: &str) -> Option<&Slice> {
        self.slices.get(name)
    }

    /// The netlink connection to the box's namespace.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Sets (or, with `None`, drops) the port of workload `workload`, a
    /// workload of `kind`; whether that changed anything.
    pub fn set_port(&mut self, kind: ObjectKind, workload: &str, port: Option<Port>) -> bool {
        let before = match port.clone() {
            Some(p) => self.ports.insert(workload.to_string(), (kind, p)),
            None => self.ports.remove(workload),
        };
        before.map(|(_, p)| p) != port
    }

    /// Replaces every port of `kind`'s workloads (that runtime's view of
    /// which desired workloads have one); other kinds' ports stay.
    pub fn set_ports(&mut self, kind: ObjectKind, ports: BTreeMap<String, Port>) {
        self.ports.retain(|_, (owner, _)| *owner != kind);
        self.ports
            .extend(ports.into_iter().map(|(name, port)| (name, (kind, port))));
    }
}

/// Slices on this box's network namespace.
pub struct SliceRuntime {
    net: SharedSliceNet,
}

impl SliceRuntime {
    /// Connects to the kernel (netlink and nf_tables). Call inside the
    /// agent's tokio runtime.
    pub fn connect(config: &SlicingConfig) -> Result<SliceRuntime, RuntimeError> {
        let kernel = Kernel::connect().map_err(|e| RuntimeError(e.to_string()))?;
        let nft = NfTables::open().map_err(|e| RuntimeError(e.to_string()))?;
        let net = SliceNet {
            slicer: Slicer::new(kernel.clone(), nft, config.capacity_kbit.clone()),
            kernel,
            slices: BTreeMap::new(),
            ports: BTreeMap::new(),
        };
        Ok(SliceRuntime {
            net: Rc::new(tokio::sync::Mutex::new(net)),
        })
    }

    /// The shared slice state, for the container runtime.
    pub fn shared(&self) -> SharedSliceNet {
        self.net.clone()
    }
}

impl Runtime for SliceRuntime {
    fn desired_set(&mut self, specs: &[ObjectSpec]) {
        let slices = specs
            .iter()
            .filter_map(|spec| match spec {
                ObjectSpec::Slice(s) => Some((s.name.clone(), Slice::from_spec(s))),
                ObjectSpec::Workload(_) => None,
            })
            .collect();
        // Nothing else holds the lock between passes (applies finish
        // within a pass, and the reconciler calls this before any).
        match self.net.try_lock() {
            Ok(mut net) => net.slices = slices,
            Err(_) => tracing::error!("slice state busy; desired slices not updated this pass"),
        }
    }

    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let ObjectSpec::Slice(slice) = spec else {
                return Err(RuntimeError(format!("{} is not a slice", spec.name())));
            };
            let mut net = self.net.lock().await;
            net.slices
                .insert(slice.name.clone(), Slice::from_spec(slice));
            net.converge().await
        })
    }

    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut net = self.net.lock().await;
            net.slices.remove(name);
            net.converge().await
        })
    }

    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async move {
            let kernel = self.net.lock().await.kernel.clone();
            let links = kernel
                .links()
                .await
                .map_err(|e| RuntimeError(e.to_string()))?;
            let up = |role| {
                let wanted = link_name(name, role);
                links
                    .iter()
                    .any(|l| l.name == wanted && l.is_ours() && l.up)
            };
            Ok(if up(Role::Bridge) && up(Role::Vlan) {
                Observed::Running
            } else {
                Observed::Missing
            })
        })
    }
}
