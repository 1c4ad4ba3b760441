//! Seccomp filters, one per kind of thread (seccompiler): once the guest
//! is set up, a vCPU thread may only run guest code, serve its devices
//! (disk and tap I/O, the console log) and end; the event-loop thread may
//! only wait on its fds, stop the vCPUs, write the exit record and end.
//! Everything else (network sockets, exec, mount, ptrace, new KVM VMs, ...)
//! traps:
//! the process logs the forbidden system call and exits with
//! [`FORBIDDEN_SYSCALL_EXIT`].
//!
//! A filter applies to the thread that installs it and to threads it
//! starts later, so each thread installs its own, after the work that
//! needs more (opening files, KVM setup) is done.

mod rules;
mod trap;

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use trap::FORBIDDEN_SYSCALL_EXIT;

/// The kinds of VMM thread, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN and the devices it exits to.
    Vcpu,
    /// The main thread's event loop: epoll, the vCPU kicks, the exit
    /// record.
    EventLoop,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in this module).
    #[error("cannot build the {thread} seccomp filter: {message}")]
    Build {
        /// The thread kind.
        thread: &'static str,
        /// seccompiler's error.
        message: String,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install the {thread} seccomp filter: {message}")]
    Install {
        /// The thread kind.
        thread: &'static str,
        /// seccompiler's error (it wraps the errno).
        message: String,
    },
}

/// A compiled filter for one kind of thread, cheap to clone and hand to
/// the thread that installs it.
#[derive(Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Arc<BpfProgram>,
}

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

impl ThreadFilter {
    /// Compiles the filter for `kind` threads on this architecture.
    pub fn new(kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
        let build = |message: String| SeccompError::Build {
            thread: kind.name(),
            message,
        };
        let rules: BTreeMap<i64, Vec<SeccompRule>> = match kind {
            ThreadKind::Vcpu => rules::vcpu(),
            ThreadKind::EventLoop => rules::event_loop(),
        }
        .map_err(|e| build(e.to_string()))?;
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TARGET)
            .map_err(|e| build(e.to_string()))?;
        let program = BpfProgram::try_from(filter).map_err(|e| build(e.to_string()))?;
        Ok(ThreadFilter {
            kind,
            program: Arc::new(program),
        })
    }

    /// Which threads it is for.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Installs the filter on the calling thread (and sets no_new_privs,
    /// which the kernel requires), after making sure a forbidden call gets
    /// reported before the process exits.
    pub fn apply(&self) -> Result<(), SeccompError> {
        trap::install_handler().map_err(SeccompError::Handler)?;
        seccompiler::apply_filter(&self.program).map_err(|e| SeccompError::Install {
            thread: self.kind.name(),
            message: e.to_string(),
        })
    }
}
