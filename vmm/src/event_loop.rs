//! The VMM's event loop (rust-vmm's event-manager): the main thread waits
//! here while the vCPU threads run the guest, and wakes when a vCPU stops
//! or a termination signal arrives. Device back ends that wait on the host
//! side (a virtio-net tap receiving frames) are subscribers too.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::signal::Signal;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
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

/// A virtio-net device's receive side: frames arriving on its tap
/// (watched edge-triggered: frames stay in the tap while the guest has no
/// buffer) and its kick (the device stopped after a budget with buffers
/// left) make the device receive, under the transport's lock.
pub struct NetReceiver {
    transport: Arc<Mutex<MmioTransport<Net>>>,
    tap: RawFd,
    kick: RawFd,
}

impl NetReceiver {
    /// The receiver of `transport`'s device.
    pub fn new(transport: Arc<Mutex<MmioTransport<Net>>>) -> NetReceiver {
        let (tap, kick) = {
            let locked = transport.lock().unwrap_or_else(|p| p.into_inner());
            (locked.device().tap_fd(), locked.device().rx_kick_fd())
        };
        NetReceiver {
            transport,
            tap,
            kick,
        }
    }
}

impl MutEventSubscriber for NetReceiver {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        // Not live (not yet activated, or needing a reset): frames wait.
        let _ = transport.run_live(|net| net.process_rx());
    }

    fn init(&mut self, ops: &mut EventOps) {
        let watches = [
            Events::new_raw(self.tap, EventSet::IN | EventSet::EDGE_TRIGGERED),
            Events::new_raw(self.kick, EventSet::IN),
        ];
        for events in watches {
            if let Err(e) = ops.add(events) {
                tracing::error!(error = ?e, "cannot watch a network device");
            }
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

/// A device's host side the event loop serves (a [`NetReceiver`], a
/// vsock device's [`VsockBackend`](crate::devices::virtio::vsock::subscriber::VsockBackend)).
pub type Backend = Box<dyn MutEventSubscriber + Send>;

/// Waits until a vCPU raises `vcpu_exited` or a termination signal
/// arrives on `signals`, serving the device `backends` meanwhile.
pub fn wait(
    vcpu_exited: Signal,
    signals: TerminationSignals,
    backends: Vec<Backend>,
) -> Result<Wake, EventLoopError> {
    let wake = Arc::new(Mutex::new(None));
    let mut manager: EventManager<Backend> = EventManager::new().map_err(EventLoopError::Epoll)?;
    manager.add_subscriber(Box::new(VcpuWatcher {
        exited: vcpu_exited,
        wake: wake.clone(),
    }));
    manager.add_subscriber(Box::new(SignalWatcher {
        signals,
        wake: wake.clone(),
    }));
    for backend in backends {
        manager.add_subscriber(backend);
    }
    loop {
        manager.run().map_err(EventLoopError::Epoll)?;
        if let Some(why) = *wake.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(why);
        }
    }
}
