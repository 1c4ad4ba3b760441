//! The event loop's side of a socket device: an event-manager subscriber
//! that watches the device's listener, kick, timer and connection
//! streams (see the module documentation of [`super`]), serves the
//! device when any is ready, and adds and removes stream watches as
//! connections come and go.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::watch::HostWatch;
use super::Vsock;
use crate::devices::virtio::mmio::MmioTransport;

/// What a connection stream is watched for.
fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// A socket device's host side in the event loop.
pub struct VsockBackend {
    transport: Arc<Mutex<MmioTransport<Vsock>>>,
    watch: HostWatch,
    listener: RawFd,
}

impl VsockBackend {
    /// The host side of `transport`'s device.
    pub fn new(transport: Arc<Mutex<MmioTransport<Vsock>>>) -> VsockBackend {
        let (watch, listener) = {
            let locked = transport.lock().unwrap_or_else(|p| p.into_inner());
            (locked.device().watch(), locked.device().listener_fd())
        };
        VsockBackend {
            transport,
            watch,
            listener,
        }
    }

    /// Starts and stops watching streams as the device asked.
    fn apply(&mut self, ops: &mut EventOps) {
        let changes = self.watch.take_changes();
        for fd in changes.added {
            if let Err(e) = ops.add(Events::new_raw(fd, stream_events())) {
                tracing::error!(error = ?e, "cannot watch a vsock connection");
            }
        }
        for stream in changes.retired {
            // Still open: the descriptor is the one watched.
            if let Err(e) = ops.remove(Events::new_raw(stream.as_raw_fd(), stream_events())) {
                tracing::warn!(error = ?e, "cannot unwatch a vsock connection");
            }
        }
    }
}

impl MutEventSubscriber for VsockBackend {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        self.watch.clear();
        {
            let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
            // Not live (not yet activated, or needing a reset): nothing
            // to serve; a later activation kicks.
            let _ = transport.run_live(|vsock| vsock.process_host_events());
        }
        self.apply(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let watches = [
            Events::new_raw(self.listener, EventSet::IN | EventSet::EDGE_TRIGGERED),
            Events::new_raw(self.watch.kick_fd(), EventSet::IN),
            Events::new_raw(self.watch.timer_fd(), EventSet::IN),
        ];
        for events in watches {
            if let Err(e) = ops.add(events) {
                tracing::error!(error = ?e, "cannot watch a vsock device");
            }
        }
        self.apply(ops);
    }
}
