//! The interface between the reconciler and whatever actually runs objects:
//! one [`Runtime`] per object kind (slice, container, vm), an
//! [`ArtifactStore`] that fetches images, kernels and disks, and the typed
//! [`RuntimeError`] they fail with.
//!
//! This module is the leaf: it names no runtime. Each runtime is a module
//! beside it that implements the interface: [`slices`] (network slicing),
//! [`containers`] (OCI containers through their runtime's CLI), [`vms`]
//! (one `edge-agent vmm` process per guest) and [`unsupported`] (a kind
//! this agent cannot run, with the reason). One place picks them from the
//! agent's config: [`crate::assembly`].

pub mod containers;
pub mod slices;
pub mod unsupported;
pub mod vms;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use mecvisor_protocol::{SliceSpec, WorkloadKind, WorkloadSpec};

/// Future returned by runtime operations. Not `Send`: the agent runs on a
/// single-threaded runtime.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + 'a>>;

/// Why a runtime operation failed. The reconciler decides on the variant
/// (never on the text, which is for operators): an unsupported object
/// waits for the box or the config to change, every other failure is
/// retried with backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// This agent cannot run objects of the kind (switched off in the
    /// config, a missing tool or device).
    #[error("{reason}")]
    Unsupported {
        /// What an operator reads: why, and what would change it.
        reason: String,
    },
    /// A runtime was handed an object of another kind (a bug in the caller).
    #[error("{name} is not a {expected}")]
    WrongKind {
        /// The object.
        name: String,
        /// The kind the runtime handles.
        expected: ObjectKind,
    },
    /// A blocking worker thread failed (panicked or was cancelled).
    #[error("worker thread failed: {0}")]
    Worker(String),
    /// The operation failed; what went wrong, for operators.
    #[error("{0}")]
    Failed(String),
}

impl RuntimeError {
    /// A failed operation, described by `e`.
    pub fn failed(e: impl fmt::Display) -> RuntimeError {
        RuntimeError::Failed(e.to_string())
    }

    /// `spec` handed to the runtime of `expected`, which it is not.
    pub fn wrong_kind(spec: &ObjectSpec, expected: ObjectKind) -> RuntimeError {
        RuntimeError::WrongKind {
            name: spec.name().to_string(),
            expected,
        }
    }

    /// A blocking worker thread that did not finish.
    pub fn worker(e: tokio::task::JoinError) -> RuntimeError {
        RuntimeError::Worker(e.to_string())
    }

    /// Whether the object can never run on this agent as configured.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, RuntimeError::Unsupported { .. })
    }
}

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
    /// Why this runtime can run nothing (`None` for a working one): the
    /// reconciler then neither fetches artifacts nor applies, and reports
    /// the kind's objects `unsupported` with this reason.
    fn unsupported(&self) -> Option<&str> {
        None
    }
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
    /// Why this store can fetch nothing (`None` for a working one).
    fn unsupported(&self) -> Option<&str> {
        None
    }
    /// Makes `reference` available locally; idempotent.
    fn ensure<'a>(&'a mut self, reference: &'a str) -> RuntimeFuture<'a, ()>;
    /// Drops whatever no reference in `references` needs (garbage
    /// collection). Does nothing by default.
    fn retain<'a>(&'a mut self, _references: &'a [String]) -> RuntimeFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The runtimes of this agent, one per kind (a working one or an
/// [`unsupported::Unsupported`] with its reason), the artifact store, and
/// the notification runtimes raise when an object needs attention.
pub struct Runtimes {
    /// Network slicing.
    pub slice: Box<dyn Runtime>,
    /// Containers.
    pub container: Box<dyn Runtime>,
    /// Virtual machines.
    pub vm: Box<dyn Runtime>,
    /// Artifact fetching for workloads.
    pub artifacts: Box<dyn ArtifactStore>,
    /// Notified by runtimes when an object needs attention before the next
    /// periodic pass (a container exited or turned unhealthy).
    pub wake: std::rc::Rc<tokio::sync::Notify>,
}

impl Default for Runtimes {
    /// Nothing runs: every kind and the artifact store unsupported.
    fn default() -> Runtimes {
        let none = |kind: ObjectKind| -> Box<dyn Runtime> {
            Box::new(unsupported::Unsupported::new(format!(
                "no {} runtime on this agent",
                kind.runtime_name()
            )))
        };
        Runtimes {
            slice: none(ObjectKind::Slice),
            container: none(ObjectKind::Container),
            vm: none(ObjectKind::Vm),
            artifacts: Box::new(unsupported::Unsupported::new(
                "no artifact store on this agent",
            )),
            wake: Default::default(),
        }
    }
}

impl Runtimes {
    /// The runtime of a kind.
    pub fn for_kind(&mut self, kind: ObjectKind) -> &mut dyn Runtime {
        match kind {
            ObjectKind::Slice => self.slice.as_mut(),
            ObjectKind::Container => self.container.as_mut(),
            ObjectKind::Vm => self.vm.as_mut(),
        }
    }

    /// Why a kind cannot run on this agent, `None` when it can.
    pub fn unsupported(&self, kind: ObjectKind) -> Option<&str> {
        match kind {
            ObjectKind::Slice => self.slice.unsupported(),
            ObjectKind::Container => self.container.unsupported(),
            ObjectKind::Vm => self.vm.unsupported(),
        }
    }
}
