//! The interface between the reconciler and whatever actually runs objects:
//! one [`Runtime`] per object kind (slice, container, vm) and an
//! [`ArtifactStore`] that fetches images, kernels and disks.
//!
//! Network slicing ([`crate::slicing`], when the config enables it),
//! containers ([`crate::containers`], unless switched off or the OCI
//! runtime is missing) and VMs ([`crate::vms`], where /dev/kvm opens).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use mecvisor_protocol::{SliceSpec, WorkloadKind, WorkloadSpec};

/// Future returned by runtime operations. Not `Send`: the agent runs on a
/// single-threaded runtime.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + 'a>>;

/// Why a runtime operation failed; the message is shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// The kinds of object the reconciler manages, in apply order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A network slice.
    Slice,
    /// An OCI container.
    Container,
    /// A KVM guest.
    Vm,
}

impl ObjectKind {
    /// Name used in reports: `slice`, `container`, `vm`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Slice => "slice",
            ObjectKind::Container => "container",
            ObjectKind::Vm => "vm",
        }
    }

    /// Parses a report name back.
    pub fn parse(text: &str) -> Option<ObjectKind> {
        match text {
            "slice" => Some(ObjectKind::Slice),
            "container" => Some(ObjectKind::Container),
            "vm" => Some(ObjectKind::Vm),
            _ => None,
        }
    }

    /// What an operator calls the runtime of this kind.
    pub fn runtime_name(self) -> &'static str {
        match self {
            ObjectKind::Slice => "network slicing",
            ObjectKind::Container => "container",
            ObjectKind::Vm => "microVM",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The desired spec of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSpec {
    /// A slice.
    Slice(SliceSpec),
    /// A container or VM.
    Workload(Box<WorkloadSpec>),
}

impl ObjectSpec {
    /// Object name.
    pub fn name(&self) -> &str {
        match self {
            ObjectSpec::Slice(s) => &s.name,
            ObjectSpec::Workload(w) => &w.name,
        }
    }

    /// Object kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            ObjectSpec::Slice(_) => ObjectKind::Slice,
            ObjectSpec::Workload(w) => match w.kind {
                WorkloadKind::Container(_) => ObjectKind::Container,
                WorkloadKind::Vm(_) => ObjectKind::Vm,
            },
        }
    }

    /// CBOR of the spec, compared to tell whether a new document changes it.
    pub fn fingerprint(&self) -> Vec<u8> {
        match self {
            ObjectSpec::Slice(s) => mecvisor_protocol::encode(s),
            ObjectSpec::Workload(w) => mecvisor_protocol::encode(w.as_ref()),
        }
    }

    /// Artifact references (images, kernels, disks) a workload needs before it
    /// can be applied; none for slices.
    pub fn artifacts(&self) -> Vec<String> {
        match self {
            ObjectSpec::Slice(_) => Vec::new(),
            ObjectSpec::Workload(w) => match &w.kind {
                WorkloadKind::Container(c) => vec![c.image.clone()],
                WorkloadKind::Vm(vm) => {
                    let mut refs = vec![vm.kernel.clone()];
                    refs.extend(vm.initrd.clone());
                    refs.extend(vm.disks.iter().map(|d| d.image.clone()));
                    refs
                }
            },
        }
    }
}

/// What a runtime observes of an object it applied earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Up and as desired.
    Running,
    /// It stopped; `success` is whether it exited cleanly.
    Stopped {
        /// Exit status or reason.
        message: String,
        /// Clean exit (relevant to the on-failure restart policy).
        success: bool,
    },
    /// The runtime does not know the object (e.g. lost across a reboot).
    Missing,
}

/// Creates, changes, removes and observes objects of one kind. Every
/// operation must be idempotent: the reconciler retries after crashes.
pub trait Runtime {
    /// Tells the runtime every desired object of its kind before a pass
    /// applies or removes any of them (a runtime that applies a whole set
    /// at once keeps it). Does nothing by default.
    fn desired_set(&mut self, _specs: &[ObjectSpec]) {}
    /// Makes the object exist exactly as `spec` says.
    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()>;
    /// Tears the object down; succeeding when it is already gone.
    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()>;
    /// Reports how the object is doing.
    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed>;
    /// Names of every object of this kind the runtime finds on the box,
    /// whether or not anyone asked for it (the reconciler removes those it
    /// has no record of: left behind by a crash). None by default.
    fn present(&mut self) -> RuntimeFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Fetches and verifies artifacts (by digest) into the local content store.
pub trait ArtifactStore {
    /// Makes `reference` available locally; idempotent.
    fn ensure<'a>(&'a mut self, reference: &'a str) -> RuntimeFuture<'a, ()>;
    /// Drops whatever no reference in `references` needs (garbage
    /// collection). Does nothing by default.
    fn retain<'a>(&'a mut self, _references: &'a [String]) -> RuntimeFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The runtimes present on this agent; `None` means the kind is unsupported.
#[derive(Default)]
pub struct Runtimes {
    /// Network slicing.
    pub slice: Option<Box<dyn Runtime>>,
    /// Containers.
    pub container: Option<Box<dyn Runtime>>,
    /// Virtual machines.
    pub vm: Option<Box<dyn Runtime>>,
    /// Artifact fetching for workloads.
    pub artifacts: Option<Box<dyn ArtifactStore>>,
    /// Why a kind has no runtime, when there is more to say than "not
    /// built yet" (e.g. switched off in the config).
    pub why_missing: std::collections::BTreeMap<ObjectKind, String>,
    /// Notified by runtimes when an object needs attention before the next
    /// periodic pass (a container exited or turned unhealthy).
    pub wake: std::rc::Rc<tokio::sync::Notify>,
}

impl Runtimes {
    /// What this agent has: network slicing when `slicing.enabled` (and
    /// the kernel can be reached); the content store; containers unless
    /// `containers.enabled = false` (or the OCI runtime is missing); VMs
    /// where /dev/kvm can be opened. A
    /// runtime that cannot start leaves its kind `unsupported` with the
    /// reason logged and reported. Must run on the agent's `LocalSet`.
    pub fn available(config: &crate::config::Config) -> Runtimes {
        let mut runtimes = Runtimes::default();
        let mut slice_net = None;
        let slicing = &config.slicing;
        if slicing.enabled {
            match crate::slicing::SliceRuntime::connect(slicing) {
                Ok(runtime) => {
                    slice_net = Some(runtime.shared());
                    runtimes.slice = Some(Box::new(runtime));
                }
                Err(e) => {
                    tracing::error!(error = %e, "network slicing is enabled but cannot start");
                    runtimes.why_missing.insert(
                        ObjectKind::Slice,
                        format!("network slicing cannot start: {e}"),
                    );
                }
            }
        } else {
            tracing::info!("network slicing is off ([slicing] enabled = false): slices are reported unsupported");
            runtimes.why_missing.insert(
                ObjectKind::Slice,
                "network slicing is off in this agent's config ([slicing] enabled = false)".into(),
            );
        }
        let mut options = content_store::StoreOptions::at(&config.content.dir);
        options.registries = config.content.registries.clone();
        let store = match content_store::ContentStore::open(options) {
            Ok(store) => std::sync::Arc::new(store),
            Err(e) => {
                tracing::error!(error = %e, "content store cannot open");
                for kind in [ObjectKind::Container, ObjectKind::Vm] {
                    runtimes
                        .why_missing
                        .insert(kind, format!("content store cannot open: {e}"));
                }
                return runtimes;
            }
        };
        runtimes.artifacts = Some(Box::new(crate::containers::ContentArtifacts::new(
            store.clone(),
        )));
        runtimes.add_containers(config, store.clone(), slice_net.clone());
        runtimes.add_vms(config, store, slice_net);
        runtimes
    }

    fn add_vms(
        &mut self,
        config: &crate::config::Config,
        store: std::sync::Arc<content_store::ContentStore>,
        slice_net: Option<crate::slicing::SharedSliceNet>,
    ) {
        match crate::vms::VmRuntime::start(&config.data_dir, store, slice_net, self.wake.clone()) {
            Ok(runtime) => self.vm = Some(Box::new(runtime)),
            Err(e) => {
                tracing::info!(reason = %e, "VMs are reported unsupported");
                self.why_missing
                    .insert(ObjectKind::Vm, format!("no VMs on this box: {e}"));
            }
        }
    }

    fn add_containers(
        &mut self,
        config: &crate::config::Config,
        store: std::sync::Arc<content_store::ContentStore>,
        slice_net: Option<crate::slicing::SharedSliceNet>,
    ) {
        if !config.containers.enabled {
            tracing::info!("containers are off ([containers] enabled = false): containers are reported unsupported");
            self.why_missing.insert(
                ObjectKind::Container,
                "containers are off in this agent's config ([containers] enabled = false)".into(),
            );
            return;
        }
        match crate::containers::ContainerRuntime::start(
            &config.containers,
            store,
            slice_net,
            self.wake.clone(),
        ) {
            Ok(runtime) => self.container = Some(Box::new(runtime)),
            Err(e) => {
                tracing::error!(error = %e, "container runtime cannot start");
                self.why_missing.insert(
                    ObjectKind::Container,
                    format!(
                        "container runtime {} cannot start: {e}",
                        config.containers.runtime.display()
                    ),
                );
            }
        }
    }

    /// Why `kind` has no runtime on this agent.
    pub fn missing_reason(&self, kind: ObjectKind) -> String {
        self.why_missing
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| format!("no {} runtime on this agent yet", kind.runtime_name()))
    }

    /// The runtime for a kind, if present.
    pub fn for_kind(&mut self, kind: ObjectKind) -> Option<&mut (dyn Runtime + 'static)> {
        match kind {
            ObjectKind::Slice => self.slice.as_deref_mut(),
            ObjectKind::Container => self.container.as_deref_mut(),
            ObjectKind::Vm => self.vm.as_deref_mut(),
        }
    }

    /// Whether a kind has a runtime.
    pub fn has(&self, kind: ObjectKind) -> bool {
        match kind {
            ObjectKind::Slice => self.slice.is_some(),
            ObjectKind::Container => self.container.is_some(),
            ObjectKind::Vm => self.vm.is_some(),
        }
    }
}
