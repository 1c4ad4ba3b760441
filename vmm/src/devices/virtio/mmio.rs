//! The virtio-mmio transport, version 2 (VIRTIO 1.1 section 4.2.2): the
//! register window a driver uses to negotiate features, set up the
//! virtqueues and notify one device model. Anything a driver may not do
//! (unoffered features, bad queue sizes or rings, skipping FEATURES_OK) is
//! refused: logged and ignored, so the driver sees it did not take.

#[cfg(test)]
mod tests;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{status, DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::mmio::MmioDevice;

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
pub const VERSION: u32 = 2;
/// Our vendor ID: "MECV", little endian.
pub const VENDOR_ID: u32 = 0x5643_454d;
/// Size of a device's register window (registers, then its config space).
pub const WINDOW_SIZE: u64 = 0x1000;

/// Register offsets (VIRTIO 1.1 section 4.2.2).
pub mod regs {
    /// R: [`super::MAGIC`].
    pub const MAGIC_VALUE: u64 = 0x000;
    /// R: [`super::VERSION`].
    pub const VERSION: u64 = 0x004;
    /// R: the virtio device ID.
    pub const DEVICE_ID: u64 = 0x008;
    /// R: [`super::VENDOR_ID`].
    pub const VENDOR_ID: u64 = 0x00c;
    /// R: 32 of the offered feature bits, per DeviceFeaturesSel.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// W: which 32 feature bits DeviceFeatures shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// W: 32 of the accepted feature bits, per DriverFeaturesSel.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// W: which 32 feature bits DriverFeatures sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// W: the queue the Queue* registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// R: the selected queue's largest size (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// W: the selected queue's size.
    pub const QUEUE_NUM: u64 = 0x038;
    /// RW: the selected queue is set up.
    pub const QUEUE_READY: u64 = 0x044;
    /// W: a queue index with new available buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// R: pending interrupt bits.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// W: interrupt bits the driver handled.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// RW: the device status (0 resets).
    pub const STATUS: u64 = 0x070;
    /// W: descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// W: descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// W: available ring address, low 32 bits.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// W: available ring address, high 32 bits.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// W: used ring address, low 32 bits.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// W: used ring address, high 32 bits.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// R: changes whenever the config space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// The device-specific configuration space starts here.
    pub const CONFIG: u64 = 0x100;
}

/// Why a transport could not be built around a device.
#[derive(Debug, thiserror::Error)]
pub enum MmioTransportError {
    /// The device declares a queue size virtio does not allow.
    #[error("queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    BadQueueMaxSize {
        /// Queue index.
        index: usize,
        /// Declared maximum size.
        size: u16,
    },
}

/// A driver action the transport refused (logged, then ignored).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}-byte access at register {1:#x}: registers take aligned 32-bit accesses")]
    Width(usize, u64),
    #[error("driver accepted features {0:#x} the device did not offer")]
    Unoffered(u64),
    #[error("driver accepted features {1:#x} of page {0}, past bit 63")]
    FeaturePage(u32, u32),
    #[error("feature change after FEATURES_OK")]
    FeaturesLocked,
    #[error("queue {0} does not exist")]
    NoQueue(u32),
    #[error("queue setup outside FEATURES_OK..DRIVER_OK (status {0:#x})")]
    QueueSetupNow(u32),
    #[error("queue {0} is ready: its setup is fixed")]
    QueueIsReady(u32),
    #[error("queue {0}: size {1} is not a power of two up to {2}")]
    QueueSize(u32, u32, u16),
    #[error("queue {0}: {1}")]
    Rings(u32, virtio_queue::Error),
    #[error("queue {0}: the available ring at 0 is not usable")]
    AvailAtZero(u32),
    #[error("queue {0}: rings are not all inside guest RAM")]
    RingsOutsideRam(u32),
    #[error("queue {0}: disabling a queue of an active device")]
    DisableActive(u32),
    #[error("status {new:#x} clears bits of {old:#x} (only a write of 0 resets)")]
    StatusCleared { old: u32, new: u32 },
    #[error("status bit {0:#x} set out of order or unknown")]
    StatusOrder(u32),
    #[error("FEATURES_OK without VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("notification of queue {0} while the device is not live")]
    NotLive(u32),
}

/// The registers of one queue as the driver set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueSetup {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> QueueSetup {
        QueueSetup {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }

    /// The queue as the device uses it, once its setup is checked: size,
    /// ring alignment (virtio-queue's setters), rings inside `memory`.
    fn queue(&self, index: u32, memory: &GuestMemoryMmap) -> Result<Queue, Refused> {
        let rings = |e| Refused::Rings(index, e);
        let mut queue = Queue::new(self.max_size).map_err(rings)?;
        queue.try_set_size(self.size).map_err(rings)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(rings)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(rings)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(rings)?;
        // virtio-queue treats an available ring at 0 as "not set up".
        if self.avail_ring == 0 {
            return Err(Refused::AvailAtZero(index));
        }
        queue.set_ready(true);
        if !queue.is_valid(memory) {
            return Err(Refused::RingsOutsideRam(index));
        }
        Ok(queue)
    }
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemoryMmap,
    interrupt: Interrupt,
    status: u32,
    active: bool,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    queues: Vec<QueueSetup>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` for a guest with `memory` (a clone of the guest RAM's
    /// mapping; clones share it), raising `interrupt` for the driver.
    pub fn new(
        device: D,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<MmioTransport<D>, MmioTransportError> {
        let mut queues = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(MmioTransportError::BadQueueMaxSize { index, size });
            }
            queues.push(QueueSetup::new(size));
        }
        Ok(MmioTransport {
            device,
            memory,
            interrupt,
            status: 0,
            active: false,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Runs `work` on the device outside a register access (e.g. the
    /// VMM's event loop receiving frames for a network device) if it is
    /// live: activated and not needing a reset. An error makes it need a
    /// reset, as one from a queue notification does. Returns what `work`
    /// returned, or `None` if it did not run or failed.
    pub fn run_live<T>(
        &mut self,
        work: impl FnOnce(&mut D) -> Result<T, DeviceError>,
    ) -> Option<T> {
        if !self.active || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return None;
        }
        match work(&mut self.device) {
            Ok(value) => Some(value),
            Err(e) => {
                self.needs_reset(&e);
                None
            }
        }
    }

    /// The interrupt it raises.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Back to the state before the driver found the device.
    fn reset(&mut self) {
        self.device.reset();
        self.status = 0;
        self.active = false;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for queue in &mut self.queues {
            *queue = QueueSetup::new(queue.max_size);
        }
        self.interrupt.acknowledge(u32::MAX);
    }

    /// The device hit an error only a reset clears.
    fn needs_reset(&mut self, error: &DeviceError) {
        tracing::warn!(
            "virtio device {}: {error}; it needs a reset",
            self.device.device_type()
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn register(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status,
            // The config spaces of our devices never change.
            regs::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn selected(&self) -> Option<&QueueSetup> {
        self.queues.get(self.queue_select as usize)
    }

    fn set_register(&mut self, offset: u64, value: u32) -> Result<(), Refused> {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::DRIVER_FEATURES => self.set_driver_features(value)?,
            regs::QUEUE_SEL => self.queue_select = value,
            regs::QUEUE_NUM => {
                let index = self.queue_select;
                let queue = self.queue_to_set_up()?;
                let max = queue.max_size;
                match u16::try_from(value) {
                    Ok(size) if size != 0 && size.is_power_of_two() && size <= max => {
                        queue.size = size
                    }
                    _ => return Err(Refused::QueueSize(index, value, max)),
                }
            }
            regs::QUEUE_READY => self.set_queue_ready(value != 0)?,
            regs::QUEUE_DESC_LOW => set_low(&mut self.queue_to_set_up()?.desc_table, value),
            regs::QUEUE_DESC_HIGH => set_high(&mut self.queue_to_set_up()?.desc_table, value),
            regs::QUEUE_AVAIL_LOW => set_low(&mut self.queue_to_set_up()?.avail_ring, value),
            regs::QUEUE_AVAIL_HIGH => set_high(&mut self.queue_to_set_up()?.avail_ring, value),
            regs::QUEUE_USED_LOW => set_low(&mut self.queue_to_set_up()?.used_ring, value),
            regs::QUEUE_USED_HIGH => set_high(&mut self.queue_to_set_up()?.used_ring, value),
            regs::QUEUE_NOTIFY => self.notify(value)?,
            regs::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            regs::STATUS => self.set_status(value)?,
            _ => tracing::debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
        Ok(())
    }

    fn set_driver_features(&mut self, value: u32) -> Result<(), Refused> {
        if self.status & status::FEATURES_OK != 0 {
            return Err(Refused::FeaturesLocked);
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            // No feature bits past 63 exist.
            select if value != 0 => return Err(Refused::FeaturePage(select, value)),
            _ => return Ok(()),
        };
        let bits = u64::from(value) << shift;
        let unoffered = bits & !self.device.features();
        if unoffered != 0 {
            return Err(Refused::Unoffered(unoffered));
        }
        let mask = 0xffff_ffff_u64 << shift;
        self.driver_features = (self.driver_features & !mask) | bits;
        Ok(())
    }

    /// The selected queue, if the driver may change its setup now: after
    /// FEATURES_OK, before DRIVER_OK, while the queue is not ready.
    fn queue_to_set_up(&mut self) -> Result<&mut QueueSetup, Refused> {
        let index = self.queue_select;
        let phase = status::FEATURES_OK | status::DRIVER_OK | status::DEVICE_NEEDS_RESET;
        if self.status & phase != status::FEATURES_OK {
            return Err(Refused::QueueSetupNow(self.status));
        }
        let queue = self
            .queues
            .get_mut(index as usize)
            .ok_or(Refused::NoQueue(index))?;
        if queue.ready {
            return Err(Refused::QueueIsReady(index));
        }
        Ok(queue)
    }

    fn set_queue_ready(&mut self, ready: bool) -> Result<(), Refused> {
        let index = self.queue_select;
        if !ready {
            if self.active {
                return Err(Refused::DisableActive(index));
            }
            if let Some(queue) = self.queues.get_mut(index as usize) {
                queue.ready = false;
            }
            return Ok(());
        }
        let memory = self.memory.clone();
        let queue = self.queue_to_set_up()?;
        queue.queue(index, &memory)?;
        queue.ready = true;
        Ok(())
    }

    fn set_status(&mut self, value: u32) -> Result<(), Refused> {
        if value == 0 {
            self.reset();
            return Ok(());
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET is the device's to set.
        let new = (value & !status::DEVICE_NEEDS_RESET) | (old & status::DEVICE_NEEDS_RESET);
        if new & old != old {
            return Err(Refused::StatusCleared { old, new });
        }
        let added = new & !old;
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        let needs = |bit: u32| match bit {
            status::DRIVER => status::ACKNOWLEDGE,
            status::FEATURES_OK => status::DRIVER,
            status::DRIVER_OK => status::FEATURES_OK,
            _ => 0,
        };
        for bit in (0..8).map(|b| 1u32 << b).filter(|b| added & b != 0) {
            if bit & known == 0 || new & needs(bit) != needs(bit) {
                return Err(Refused::StatusOrder(bit));
            }
        }
        if added & status::FEATURES_OK != 0 && self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            // The driver reads FEATURES_OK back and gives up.
            self.status = new & !(status::FEATURES_OK | status::DRIVER_OK);
            return Err(Refused::NoVersion1);
        }
        self.status = new;
        if added & status::DRIVER_OK != 0 && new & status::DEVICE_NEEDS_RESET == 0 {
            match self.activate() {
                Ok(()) => self.active = true,
                Err(e) => self.needs_reset(&e),
            }
        }
        Ok(())
    }

    fn activate(&mut self) -> Result<(), DeviceError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, setup) in self.queues.iter().enumerate() {
            let queue = if setup.ready {
                // Checked when the driver made it ready; RAM does not change.
                setup.queue(index as u32, &self.memory).map_err(|e| {
                    tracing::warn!("virtio-mmio: {e}");
                    DeviceError::QueueNotReady(index)
                })?
            } else {
                Queue::new(setup.max_size)?
            };
            queues.push(queue);
        }
        self.device.activate(
            self.driver_features,
            queues,
            self.memory.clone(),
            self.interrupt.clone(),
        )
    }

    fn notify(&mut self, value: u32) -> Result<(), Refused> {
        let live = self.active && self.status & status::DEVICE_NEEDS_RESET == 0;
        let index = u16::try_from(value)
            .ok()
            .filter(|&i| usize::from(i) < self.queues.len());
        match index {
            Some(index) if live => {
                if let Err(e) = self.device.process_queue(index) {
                    self.needs_reset(&e);
                }
                Ok(())
            }
            Some(_) => Err(Refused::NotLive(value)),
            None => Err(Refused::NoQueue(value)),
        }
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset & 3 == 0 => *word = self.register(offset).to_le_bytes(),
            _ => {
                tracing::warn!("virtio-mmio: {}", Refused::Width(data.len(), offset));
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        let result = match <[u8; 4]>::try_from(data) {
            Ok(word) if offset & 3 == 0 => self.set_register(offset, u32::from_le_bytes(word)),
            _ => Err(Refused::Width(data.len(), offset)),
        };
        if let Err(refused) = result {
            tracing::warn!("virtio-mmio: refused: {refused}");
        }
    }
}
