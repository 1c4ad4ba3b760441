//! Virtio devices (VIRTIO 1.1, modern only): what a device model provides
//! ([`VirtioDevice`]), and how it tells the driver about used buffers
//! ([`Interrupt`]).
//! - [`mmio`]: the virtio-mmio transport (version 2), the registers the
//!   guest's driver programs, wrapping one device model;
//! - [`block`]: virtio-blk over a raw image file;
//! - [`net`]: virtio-net over a Linux tap device;
//! - [`vsock`]: virtio-vsock, host side on Unix sockets.

pub mod block;
mod chain;
pub mod mmio;
pub mod net;
#[cfg(test)]
mod testing;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::signal::Signal;

/// Device status bits the driver sets (VIRTIO 1.1 section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 0x01;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 0x02;
    /// The driver is set up: the device may process queues.
    pub const DRIVER_OK: u32 = 0x04;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 0x08;
    /// The device hit an error only a reset clears (set by the device).
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Feature bit: the device follows VIRTIO 1.0 or later (mandatory for the
/// modern transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bit: buffers were added to a used ring.
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
/// InterruptStatus bit: the device configuration changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// Why a device could not start or stopped serving its queues; the
/// transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The transport handed over the wrong number of queues.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A notification or request before activation.
    #[error("the device is not active")]
    NotActive,
    /// The driver broke a virtqueue (e.g. an available index running
    /// ahead by more than the queue size, a used ring outside RAM).
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
}

/// What a virtio device model provides to its transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 for a network device, 2 for a block device).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// The largest size of each of its queues (powers of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// The driver reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver is ready (DRIVER_OK): serve `queues` (one per entry of
    /// [`VirtioDevice::queue_max_sizes`], only the ready ones set up) in
    /// `memory`, with the negotiated `features`, raising `interrupt` for
    /// used buffers.
    fn activate(
        &mut self,
        features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError>;
    /// The driver notified queue `index`: process what it made available.
    /// An error means the device cannot go on (it then needs a reset).
    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError>;
    /// The driver reset the device: drop the queues and memory, back to
    /// the state before activation.
    fn reset(&mut self);
}

/// A device's interrupt: the InterruptStatus bits the driver reads and
/// acknowledges through the transport, and the line (a [`Signal`], a KVM
/// irqfd on x86) raised whenever a bit is set.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Signal,
}

impl Interrupt {
    /// An interrupt with no bits set, raised on `line`.
    pub fn new(line: Signal) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            line,
        }
    }

    /// Buffers were added to a used ring.
    pub fn signal_used_buffer(&self) {
        self.raise(INTERRUPT_USED_BUFFER);
    }

    /// The device configuration changed (or the device needs a reset).
    pub fn signal_config_change(&self) {
        self.raise(INTERRUPT_CONFIG_CHANGE);
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::AcqRel);
        if let Err(e) = self.line.trigger() {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The driver acknowledged `bits` (InterruptACK).
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The line it is raised on.
    pub fn line(&self) -> &Signal {
        &self.line
    }
}
