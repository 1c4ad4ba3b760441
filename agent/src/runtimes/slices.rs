//! The network slicing runtime: slices and the workload ports in them are
//! applied as one set through [`network_slicing::Slicer`], which reads the
//! kernel back, so every call is idempotent and a slice no longer desired
//! is removed by the next apply. The reconciler tells the runtime the whole
//! desired set at the start of each pass ([`Runtime::desired_set`]);
//! applying one slice then never removes another that the same pass has
//! yet to reach.
//!
//! Slices and ports live in one [`SliceNet`](crate::slice_net::SliceNet),
//! shared with the container and VM runtimes: each adds a workload's port
//! once the workload's veth (container) or tap (VM) exists, and every
//! apply (of a slice or a port) carries all of them, so none undoes
//! another.

use network_slicing::names::{link_name, Role};
use network_slicing::Slice;

use super::{ObjectKind, ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};
use crate::config::SlicingConfig;
use crate::slice_net::{SharedSliceNet, SliceNet};

/// Slices on this box's network namespace.
pub struct SliceRuntime {
    net: SharedSliceNet,
}

impl SliceRuntime {
    /// Connects to the kernel (netlink and nf_tables). Call inside the
    /// agent's tokio runtime.
    pub fn connect(config: &SlicingConfig) -> Result<SliceRuntime, RuntimeError> {
        Ok(SliceRuntime {
            net: SliceNet::connect(config)?,
        })
    }

    /// The shared slice state, for the workload runtimes.
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
            Ok(mut net) => net.set_slices(slices),
            Err(_) => tracing::error!("slice state busy; desired slices not updated this pass"),
        }
    }

    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let ObjectSpec::Slice(slice) = spec else {
                return Err(RuntimeError::wrong_kind(spec, ObjectKind::Slice));
            };
            let mut net = self.net.lock().await;
            net.put_slice(Slice::from_spec(slice));
            net.converge().await
        })
    }

    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut net = self.net.lock().await;
            net.drop_slice(name);
            net.converge().await
        })
    }

    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async move {
            let kernel = self.net.lock().await.kernel().clone();
            let links = kernel.links().await.map_err(RuntimeError::failed)?;
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
