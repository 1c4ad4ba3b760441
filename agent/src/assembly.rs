//! The one place that picks the agent's runtimes from its config: network
//! slicing when `[slicing] enabled` (and the kernel can be reached), the
//! content store, containers unless `[containers] enabled = false` (or the
//! OCI runtime is missing), VMs where /dev/kvm opens. A runtime that cannot
//! start leaves its kind [`Unsupported`] with the reason, logged here and
//! reported with every object of the kind.

use std::rc::Rc;
use std::sync::Arc;

use content_store::ContentStore;
use tokio::sync::Notify;

use crate::artifacts::ContentArtifacts;
use crate::config::Config;
use crate::runtimes::containers::ContainerRuntime;
use crate::runtimes::slices::SliceRuntime;
use crate::runtimes::unsupported::Unsupported;
use crate::runtimes::vms::VmRuntime;
use crate::runtimes::{Runtime, Runtimes};
use crate::slice_net::SharedSliceNet;

/// The runtimes `config` asks for, as far as this box has them. Must run on
/// the agent's `LocalSet` (the runtimes start their watchers there).
pub fn runtimes(config: &Config) -> Runtimes {
    let wake = Rc::new(Notify::new());
    let (slice, slice_net) = slicing(config);
    let mut options = content_store::StoreOptions::at(&config.content.dir);
    options.registries = config.content.registries.clone();
    let store = match ContentStore::open(options) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            tracing::error!(error = %e, "content store cannot open");
            let reason = format!("content store cannot open: {e}");
            return Runtimes {
                slice,
                container: Box::new(Unsupported::new(reason.clone())),
                vm: Box::new(Unsupported::new(reason.clone())),
                artifacts: Box::new(Unsupported::new(reason)),
                wake,
            };
        }
    };
    Runtimes {
        slice,
        container: containers(config, store.clone(), slice_net.clone(), wake.clone()),
        vm: vms(config, store.clone(), slice_net, wake.clone()),
        artifacts: Box::new(ContentArtifacts::new(store)),
        wake,
    }
}

/// The slice runtime, and the slice state workloads' ports join.
fn slicing(config: &Config) -> (Box<dyn Runtime>, Option<SharedSliceNet>) {
    if !config.slicing.enabled {
        tracing::info!(
            "network slicing is off ([slicing] enabled = false): slices are reported unsupported"
        );
        let reason = "network slicing is off in this agent's config ([slicing] enabled = false)";
        return (Box::new(Unsupported::new(reason)), None);
    }
    match SliceRuntime::connect(&config.slicing) {
        Ok(runtime) => {
            let shared = runtime.shared();
            (Box::new(runtime), Some(shared))
        }
        Err(e) => {
            tracing::error!(error = %e, "network slicing is enabled but cannot start");
            let reason = format!("network slicing cannot start: {e}");
            (Box::new(Unsupported::new(reason)), None)
        }
    }
}

fn containers(
    config: &Config,
    store: Arc<ContentStore>,
    slice_net: Option<SharedSliceNet>,
    wake: Rc<Notify>,
) -> Box<dyn Runtime> {
    if !config.containers.enabled {
        tracing::info!(
            "containers are off ([containers] enabled = false): containers are reported unsupported"
        );
        return Box::new(Unsupported::new(
            "containers are off in this agent's config ([containers] enabled = false)",
        ));
    }
    match ContainerRuntime::start(&config.containers, store, slice_net, wake) {
        Ok(runtime) => Box::new(runtime),
        Err(e) => {
            tracing::error!(error = %e, "container runtime cannot start");
            Box::new(Unsupported::new(format!(
                "container runtime {} cannot start: {e}",
                config.containers.runtime.display()
            )))
        }
    }
}

fn vms(
    config: &Config,
    store: Arc<ContentStore>,
    slice_net: Option<SharedSliceNet>,
    wake: Rc<Notify>,
) -> Box<dyn Runtime> {
    match VmRuntime::start(&config.data_dir, store, slice_net, wake) {
        Ok(runtime) => Box::new(runtime),
        Err(e) => {
            tracing::info!(reason = %e, "VMs are reported unsupported");
            Box::new(Unsupported::new(format!("no VMs on this box: {e}")))
        }
    }
}
