//! The network slicing runtime: slices are applied as one set through
//! [`network_slicing::Slicer`], which reads the kernel back, so every call
//! is idempotent and a slice no longer desired is removed by the next
//! apply. The reconciler tells the runtime the whole desired set at the
//! start of each pass ([`Runtime::desired_set`]); applying one slice then
//! never removes another that the same pass has yet to reach.

use std::collections::BTreeMap;

use network_slicing::isolation::NfTables;
use network_slicing::kernel::Kernel;
use network_slicing::names::{link_name, Role};
use network_slicing::{Slice, Slicer};
use tracing::info;

use crate::config::SlicingConfig;
use crate::runtime::{ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};

/// Slices on this box's network namespace.
pub struct SliceRuntime {
    slicer: Slicer,
    kernel: Kernel,
    desired: BTreeMap<String, Slice>,
}

impl SliceRuntime {
    /// Connects to the kernel (netlink and nf_tables). Call inside the
    /// agent's tokio runtime.
    pub fn connect(config: &SlicingConfig) -> Result<SliceRuntime, RuntimeError> {
        let kernel = Kernel::connect().map_err(|e| RuntimeError(e.to_string()))?;
        let nft = NfTables::open().map_err(|e| RuntimeError(e.to_string()))?;
        Ok(SliceRuntime {
            slicer: Slicer::new(kernel.clone(), nft, config.capacity_kbit.clone()),
            kernel,
            desired: BTreeMap::new(),
        })
    }

    async fn converge(&mut self) -> Result<(), RuntimeError> {
        let slices: Vec<Slice> = self.desired.values().cloned().collect();
        let report = self
            .slicer
            .apply(&slices)
            .await
            .map_err(|e| RuntimeError(e.to_string()))?;
        if !report.changes.is_empty() {
            info!(changes = report.changes.len(), "slices converged");
        }
        Ok(())
    }
}

impl Runtime for SliceRuntime {
    fn desired_set(&mut self, specs: &[ObjectSpec]) {
        self.desired = specs
            .iter()
            .filter_map(|spec| match spec {
                ObjectSpec::Slice(s) => Some((s.name.clone(), Slice::from_spec(s))),
                ObjectSpec::Workload(_) => None,
            })
            .collect();
    }

    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let ObjectSpec::Slice(slice) = spec else {
                return Err(RuntimeError(format!("{} is not a slice", spec.name())));
            };
            self.desired
                .insert(slice.name.clone(), Slice::from_spec(slice));
            self.converge().await
        })
    }

    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.desired.remove(name);
            self.converge().await
        })
    }

    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async move {
            let links = self
                .kernel
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
