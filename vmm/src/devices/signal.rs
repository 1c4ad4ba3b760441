//! Events devices raise: an eventfd the VMM's event loop (or KVM, as an
//! irqfd) waits on, plus a flag the vCPU's run loop can check right after
//! the access that raised it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A raised-or-not event, shared by the device that raises it and whoever
/// reacts to it.
#[derive(Clone)]
pub struct Signal {
    event: Arc<EventFd>,
    raised: Arc<AtomicBool>,
}

impl Signal {
    /// A new, not yet raised signal.
    pub fn new() -> std::io::Result<Signal> {
        Ok(Signal {
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            raised: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether it was raised since the last [`Signal::take`].
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Clears it; returns whether it had been raised.
    pub fn take(&self) -> bool {
        let _ = self.event.read();
        self.raised.swap(false, Ordering::AcqRel)
    }

    /// The eventfd (for an event loop or a KVM irqfd).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl vm_superio::Trigger for Signal {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.raised.store(true, Ordering::Release);
        self.event.write(1)
    }
}
