//! The slices and workload ports of this box, as one set the slicer
//! applies ([`network_slicing::Slicer`]): shared by the slice runtime
//! (which sets the slices) and the container and VM runtimes (which add a
//! workload's port once its veth or tap exists), so no apply undoes
//! another's work.

use std::collections::BTreeMap;
use std::rc::Rc;

use network_slicing::isolation::NfTables;
use network_slicing::kernel::Kernel;
use network_slicing::{Port, Slice, Slicer};
use tracing::info;

use crate::config::SlicingConfig;
use crate::runtimes::{ObjectKind, RuntimeError};

/// What the slicer applies: desired slices and the workload ports that
/// exist, by workload name, each with the kind of runtime that owns it.
pub struct SliceNet {
    slicer: Slicer,
    kernel: Kernel,
    slices: BTreeMap<String, Slice>,
    ports: BTreeMap<String, (ObjectKind, Port)>,
}

/// The slice state shared by the slicing, container and VM runtimes (the
/// agent is single-threaded; the lock is held across a whole apply).
pub type SharedSliceNet = Rc<tokio::sync::Mutex<SliceNet>>;

impl SliceNet {
    /// Connects to the kernel (netlink and nf_tables) with no slices yet.
    /// Call inside the agent's tokio runtime.
    pub fn connect(config: &SlicingConfig) -> Result<SharedSliceNet, RuntimeError> {
        let kernel = Kernel::connect().map_err(RuntimeError::failed)?;
        let nft = NfTables::open().map_err(RuntimeError::failed)?;
        Ok(Rc::new(tokio::sync::Mutex::new(SliceNet {
            slicer: Slicer::new(kernel.clone(), nft, config.capacity_kbit.clone()),
            kernel,
            slices: BTreeMap::new(),
            ports: BTreeMap::new(),
        })))
    }

    /// Replaces the desired slices (by name); ports stay.
    pub fn set_slices(&mut self, slices: BTreeMap<String, Slice>) {
        self.slices = slices;
    }

    /// Adds or changes one desired slice.
    pub fn put_slice(&mut self, slice: Slice) {
        self.slices.insert(slice.name.clone(), slice);
    }

    /// Drops one slice from the desired set.
    pub fn drop_slice(&mut self, name: &str) {
        self.slices.remove(name);
    }

    /// Applies the slices with their ports.
    pub async fn converge(&mut self) -> Result<(), RuntimeError> {
        let slices: Vec<Slice> = self.slices.values().cloned().collect();
        let ports: Vec<Port> = self.ports.values().map(|(_, p)| p.clone()).collect();
        let report = self
            .slicer
            .apply_with_ports(&slices, &ports)
            .await
            .map_err(RuntimeError::failed)?;
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
