//! virtio-net (VIRTIO 1.1 section 5.1) on a tap device: one receive queue
//! (0) and one transmit queue (1), no control queue. Offered: VERSION_1
//! and MAC (the config space holds the 6-byte MAC, nothing else); no
//! offloads, no mergeable receive buffers, so every frame comes with a
//! 12-byte `virtio_net_hdr_v1` whose flags and GSO fields are zero and
//! each receive buffer must hold a whole frame. The parts:
//! - [`tap`]: the host side, a Linux tap interface;
//! - `tx`: the guest's frames, from the transmit queue to the tap;
//! - `rx`: the host's frames, from the tap into receive buffers;
//! - `chain`: the checks on a descriptor chain shared by both.
//!
//! # Threading
//!
//! The device sits behind its [`MmioTransport`](super::mmio::MmioTransport)
//! in the mutex the vCPU threads share: a notification of the transmit
//! queue sends on the vCPU thread, one of the receive queue (the guest
//! added buffers) receives what the tap holds. Frames arriving on the tap
//! are the VMM event loop's business: it watches [`Net::tap_fd`] for
//! readability **edge-triggered** (EPOLLIN | EPOLLET: frames are left in
//! the tap while the guest has no buffer, so a level-triggered watch
//! would spin) and [`Net::rx_kick_fd`] (level-triggered), and on either
//! locks the device and calls [`Net::process_rx`] (through
//! [`MmioTransport::run_live`](super::mmio::MmioTransport::run_live), so
//! that a device needing a reset is left alone).

use super::chain;
mod rx;
pub mod tap;
mod tx;

#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
pub use tap::{Tap, TapError};

/// The virtio device ID of a network device.
pub const DEVICE_TYPE: u32 = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Feature: the config space holds the device's MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`) before each frame,
/// on the queues and on the tap.
pub const HEADER_LEN: usize = 12;
/// Largest frame (without the header) sent or received; the guest's
/// larger ones are dropped.
pub const MAX_FRAME: usize = 64 << 10;
/// Smallest frame sent: an Ethernet header (the tap refuses less).
pub const MIN_FRAME: usize = 14;

/// Why a network device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC is not a unicast address, or is all zeroes.
    #[error("MAC {0:02x?} is not a unicast address")]
    BadMac([u8; 6]),
    /// The eventfd behind [`Net::rx_kick_fd`] could not be created.
    #[error("cannot create the receive kick eventfd: {0}")]
    Kick(io::Error),
}

/// Where the device's frames go and come from: a tap ([`Tap`]) for the
/// VMM, an in-memory stand-in for tests of descriptor handling.
pub trait FrameIo: Send {
    /// Reads one frame, its 12-byte vnet header first, into `buf`;
    /// returns its length (cut to `buf`'s). `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame, its 12-byte vnet header first.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// What the device did with frames since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Their bytes (without headers).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (a device-writable or
    /// out-of-RAM buffer, no end, too long, shorter than header and an
    /// Ethernet header).
    pub tx_malformed: u64,
    /// Frames the tap did not take (full, or an error).
    pub tx_dropped: u64,
    /// Frames put in receive buffers.
    pub rx_frames: u64,
    /// Their bytes (without headers).
    pub rx_bytes: u64,
    /// Frames dropped for a malformed receive chain (a device-readable or
    /// out-of-RAM buffer, no end, too many descriptors).
    pub rx_malformed: u64,
    /// Frames dropped because the receive chain was too small for them,
    /// or they were larger than [`MAX_FRAME`] or shorter than a header.
    pub rx_dropped: u64,
}

/// What the device holds between DRIVER_OK and a reset.
struct Active {
    rx: Queue,
    tx: Queue,
    memory: GuestMemoryMmap,
    interrupt: Interrupt,
}

/// A virtio network device over `F` (a [`Tap`] in the VMM).
pub struct Net<F: FrameIo = Tap> {
    frames: F,
    mac: [u8; 6],
    counters: NetCounters,
    transmit: tx::Transmit,
    receive: rx::Receive,
    rx_kick: EventFd,
    active: Option<Active>,
}

impl<F: FrameIo> Net<F> {
    /// A device with the given `mac` over `frames` (for the VMM, a tap
    /// from [`Tap::open`]).
    pub fn new(frames: F, mac: [u8; 6]) -> Result<Net<F>, NetError> {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::BadMac(mac));
        }
        Ok(Net {
            frames,
            mac,
            counters: NetCounters::default(),
            transmit: tx::Transmit::new(),
            receive: rx::Receive::new(),
            rx_kick: EventFd::new(EFD_NONBLOCK).map_err(NetError::Kick)?,
            active: None,
        })
    }

    /// The MAC the guest is told.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What happened to frames so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Where frames go and come from.
    pub fn frames(&self) -> &F {
        &self.frames
    }

    /// Whether the driver set it up and it moves frames.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// An eventfd the device writes when it stopped receiving with frames
    /// possibly left and buffers to put them in (it moves at most a
    /// queue's worth per call, so as not to hold the vCPUs' lock long):
    /// the event loop watches it (level-triggered) and calls
    /// [`Net::process_rx`] again. Each call clears it.
    pub fn rx_kick_fd(&self) -> RawFd {
        self.rx_kick.as_raw_fd()
    }

    /// Moves frames waiting in the tap into the guest's receive buffers
    /// while it has some, raising the interrupt once if any buffer was
    /// used. Without buffers the frames stay in the tap: the guest's next
    /// notification of the receive queue resumes. Called by the event
    /// loop when the tap is readable (see the module documentation).
    /// Errors as for a queue notification: not active, or a broken
    /// receive queue (the device then needs a reset).
    pub fn process_rx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Err(DeviceError::NotActive);
        };
        // Cleared before the work that may set it again.
        let _ = self.rx_kick.read();
        let outcome = self.receive.serve(
            &mut active.rx,
            &active.memory,
            &mut self.frames,
            &mut self.counters,
        )?;
        if outcome.used {
            active.interrupt.signal_used_buffer();
        }
        if outcome.budget_spent {
            if let Err(e) = self.rx_kick.write(1) {
                tracing::warn!("virtio-net: cannot kick the receive path: {e}");
            }
        }
        Ok(())
    }

    fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Err(DeviceError::NotActive);
        };
        let used = self.transmit.serve(
            &mut active.tx,
            &active.memory,
            &mut self.frames,
            &mut self.counters,
        )?;
        if used {
            active.interrupt.signal_used_buffer();
        }
        Ok(())
    }
}

impl<F: FrameIo + AsRawFd> Net<F> {
    /// The tap's file descriptor, for the event loop to watch for
    /// readability (edge-triggered, see the module documentation).
    pub fn tap_fd(&self) -> RawFd {
        self.frames.as_raw_fd()
    }
}

/// How many chains the driver made available that the device has not
/// taken yet (no more than the queue's size, or the queue is broken).
fn pending(queue: &Queue, memory: &GuestMemoryMmap) -> Result<u16, DeviceError> {
    let available = queue.avail_idx(memory, Ordering::Acquire)?;
    let pending = (available - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(virtio_queue::Error::InvalidAvailRingIndex.into());
    }
    Ok(pending)
}

impl<F: FrameIo> VirtioDevice for Net<F> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.mac.get(start..start.checked_add(data.len())?));
        match bytes {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (legacy
        // drivers wrote it; modern ones do not).
        tracing::debug!("virtio-net: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        _features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(DeviceError::QueueCount { expected: 2, got });
        };
        for (index, queue) in [&rx, &tx].into_iter().enumerate() {
            if !queue.ready() {
                return Err(DeviceError::QueueNotReady(index));
            }
        }
        self.active = Some(Active {
            rx,
            tx,
            memory,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        if self.active.is_none() {
            return Err(DeviceError::NotActive);
        }
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
