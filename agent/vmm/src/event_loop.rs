//! The VMM's event loop (rust-vmm's event-manager): the main thread waits
//! here while the vCPU threads run the guest, and wakes when a vCPU stops
//! or a termination signal arrives. Device back ends (virtio queues) will
//! be subscribers too.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::signal::Signal;
use crate::signals::TerminationSignals;

/// Why the event loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A vCPU stopped (the guest reset, shut down, or failed).
    VcpuStopped,
    /// The process got this termination signal.
    Terminated(i32),
}

/// Wakes on a vCPU's exit signal.
struct VcpuWatcher {
    exited: Signal,
    wake: Arc<Mutex<Option<Wake>>>,
}

impl MutEventSubscriber for VcpuWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.exited.take();
        set_wake(&self.wake, Wake::VcpuStopped);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exited.event(), EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the vCPU exit signal");
        }
    }
}

/// Wakes on SIGTERM / SIGINT.
struct SignalWatcher {
    signals: TerminationSignals,
    wake: Arc<Mutex<Option<Wake>>>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if let Some(signal) = self.signals.take() {
            set_wake(&self.wake, Wake::Terminated(signal));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.signals, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch termination signals");
        }
    }
}

fn set_wake(wake: &Mutex<Option<Wake>>, why: Wake) {
    let mut slot = wake.lock().unwrap_or_else(|p| p.into_inner());
    // A termination signal outranks a vCPU stop seen in the same round.
    if !matches!(*slot, Some(Wake::Terminated(_))) {
        *slot = Some(why);
    }
}

/// Why the loop could not run.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll failed.
    #[error("event loop: {0:?}")]
    Epoll(event_manager::Error),
}

/// Waits until a vCPU raises `vcpu_exited` or a termination signal
/// arrives on `signals`.
pub fn wait(vcpu_exited: Signal, signals: TerminationSignals) -> Result<Wake, EventLoopError> {
    let wake = Arc::new(Mutex::new(None));
    let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().map_err(EventLoopError::Epoll)?;
    manager.add_subscriber(Box::new(VcpuWatcher {
        exited: vcpu_exited,
        wake: wake.clone(),
    }));
    manager.add_subscriber(Box::new(SignalWatcher {
        signals,
        wake: wake.clone(),
    }));
    loop {
        manager.run().map_err(EventLoopError::Epoll)?;
        if let Some(why) = *wake.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(why);
        }
    }
}
