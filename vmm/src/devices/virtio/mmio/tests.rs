//! The transport against a recording device model: what a driver may and
//! may not do through the registers.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{regs, MmioTransport, MAGIC, VENDOR_ID};
use crate::devices::mmio::MmioDevice;
use crate::devices::signal::Signal;
use crate::devices::virtio::testing::{
    ram, Driver, Ring, AVAIL_RING, DESC_TABLE, RAM_BYTES, USED_RING,
};
use crate::devices::virtio::{
    status, DeviceError, Interrupt, VirtioDevice, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER,
    VIRTIO_F_VERSION_1,
};

const FEATURE_LOW: u64 = 1 << 3;
const FEATURE_HIGH: u64 = 1 << 40;
const OFFERED: u64 = VIRTIO_F_VERSION_1 | FEATURE_LOW | FEATURE_HIGH;
const ACK_DRIVER: u32 = status::ACKNOWLEDGE | status::DRIVER;
const NEGOTIATED: u32 = ACK_DRIVER | status::FEATURES_OK;

/// What the device saw.
#[derive(Default)]
struct Log {
    /// Per activation: the features, then (ready, size) per queue.
    activations: Vec<(u64, Vec<(bool, u16)>)>,
    notified: Vec<u16>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

/// A device with two queues (16 and 8 entries) that records everything;
/// a notification of queue 1 breaks it.
struct Recorder {
    log: Arc<Mutex<Log>>,
    refuse_activation: bool,
    active: Option<(Vec<Queue>, GuestMemoryMmap, Interrupt)>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }

    fn features(&self) -> u64 {
        OFFERED
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset as u8 + i as u8;
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut log = self.log.lock().expect("lock");
        log.config_writes.push((offset, data.to_vec()));
    }

    fn activate(
        &mut self,
        features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        if self.refuse_activation {
            return Err(DeviceError::QueueNotReady(1));
        }
        let shape = queues.iter().map(|q| (q.ready(), q.size())).collect();
        self.log
            .lock()
            .expect("lock")
            .activations
            .push((features, shape));
        self.active = Some((queues, memory, interrupt));
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        self.log.lock().expect("lock").notified.push(index);
        if index == 1 {
            return Err(DeviceError::NotActive);
        }
        let (queues, memory, interrupt) = self.active.as_mut().ok_or(DeviceError::NotActive)?;
        let queue = &mut queues[usize::from(index)];
        while let Some(chain) = queue.pop_descriptor_chain(&*memory) {
            queue.add_used(memory, chain.head_index(), 0)?;
            interrupt.signal_used_buffer();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.log.lock().expect("lock").resets += 1;
        self.active = None;
    }
}

struct Setup {
    driver: Driver<Recorder>,
    log: Arc<Mutex<Log>>,
    line: Signal,
    memory: GuestMemoryMmap,
}

fn setup(refuse_activation: bool) -> Setup {
    let log = Arc::new(Mutex::new(Log::default()));
    let device = Recorder {
        log: log.clone(),
        refuse_activation,
        active: None,
    };
    let memory = ram();
    let line = Signal::new().expect("signal");
    let transport = MmioTransport::new(device, memory.clone(), Interrupt::new(line.clone()))
        .expect("transport");
    Setup {
        driver: Driver { transport },
        log,
        line,
        memory,
    }
}

impl Setup {
    fn activations(&self) -> Vec<(u64, Vec<(bool, u16)>)> {
        self.log.lock().expect("lock").activations.clone()
    }

    fn notified(&self) -> Vec<u16> {
        self.log.lock().expect("lock").notified.clone()
    }

    /// Negotiation, queue 0 on the standard rings, DRIVER_OK.
    fn start(&mut self) -> u32 {
        self.driver.start(16)
    }
}

#[test]
fn identification_and_config_registers() {
    let mut s = setup(false);
    let d = &mut s.driver;
    assert_eq!(d.read(regs::MAGIC_VALUE), MAGIC);
    assert_eq!(d.read(regs::VERSION), 2);
    assert_eq!(d.read(regs::DEVICE_ID), 42);
    assert_eq!(d.read(regs::VENDOR_ID), VENDOR_ID);
    for (queue, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
        d.write(regs::QUEUE_SEL, queue);
        assert_eq!(d.read(regs::QUEUE_NUM_MAX), max, "queue {queue}");
        assert_eq!(d.read(regs::QUEUE_READY), 0);
    }
    assert_eq!(d.read(regs::CONFIG_GENERATION), 0);
    let mut config = [0u8; 2];
    d.transport.read(regs::CONFIG + 4, &mut config);
    assert_eq!(config, [4, 5]);
    d.transport.write(regs::CONFIG + 1, &[9]);
    assert_eq!(
        s.log.lock().expect("lock").config_writes,
        vec![(1, vec![9])]
    );
}

#[test]
fn narrow_or_unaligned_register_accesses_are_refused() {
    let mut s = setup(false);
    let mut byte = [0xaa];
    s.driver.transport.read(regs::MAGIC_VALUE, &mut byte);
    assert_eq!(byte, [0]);
    let mut word = [0xaa; 4];
    s.driver.transport.read(regs::MAGIC_VALUE + 2, &mut word);
    assert_eq!(word, [0; 4]);
    s.driver.transport.write(regs::STATUS, &[1]);
    s.driver.transport.write(regs::STATUS + 1, &[1, 0, 0, 0]);
    s.driver
        .transport
        .write(regs::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(s.driver.read(regs::STATUS), 0);
}

#[test]
fn features_are_paged_and_only_offered_ones_are_accepted() {
    let mut s = setup(false);
    assert_eq!(s.driver.device_features(), OFFERED);
    s.driver.write(regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(s.driver.read(regs::DEVICE_FEATURES), 0);
    s.driver.write(regs::STATUS, status::ACKNOWLEDGE);
    s.driver.write(regs::STATUS, ACK_DRIVER);
    s.driver.write_driver_features(OFFERED);
    // Refused: unoffered bits (the whole write), a page past bit 63.
    s.driver.write(regs::DRIVER_FEATURES_SEL, 0);
    s.driver
        .write(regs::DRIVER_FEATURES, (FEATURE_LOW | 1 << 5) as u32);
    s.driver.write(regs::DRIVER_FEATURES_SEL, 2);
    s.driver.write(regs::DRIVER_FEATURES, 1);
    s.driver.write(regs::STATUS, NEGOTIATED);
    // Locked from FEATURES_OK on.
    s.driver.write(regs::DRIVER_FEATURES_SEL, 0);
    s.driver.write(regs::DRIVER_FEATURES, 0);
    assert_eq!(
        s.driver
            .setup_queue(0, 16, DESC_TABLE, AVAIL_RING, USED_RING),
        1
    );
    s.driver.write(regs::STATUS, NEGOTIATED | status::DRIVER_OK);
    assert_eq!(s.activations()[0].0, OFFERED);
}

#[test]
fn features_ok_needs_version_1() {
    let mut s = setup(false);
    let status = s.driver.negotiate(FEATURE_LOW);
    assert_eq!(status, ACK_DRIVER, "FEATURES_OK does not stick");
    s.driver.write(regs::STATUS, NEGOTIATED | status::DRIVER_OK);
    assert_eq!(s.driver.read(regs::STATUS), ACK_DRIVER);
    assert!(s.activations().is_empty());
}

#[test]
fn status_bits_cannot_be_skipped_cleared_or_set_by_the_driver() {
    let mut s = setup(false);
    let d = &mut s.driver;
    d.write(regs::STATUS, status::DRIVER);
    assert_eq!(d.read(regs::STATUS), 0, "DRIVER before ACKNOWLEDGE");
    d.write(regs::STATUS, status::ACKNOWLEDGE | status::FEATURES_OK);
    assert_eq!(d.read(regs::STATUS), 0, "FEATURES_OK before DRIVER");
    d.write(regs::STATUS, ACK_DRIVER);
    d.write(regs::STATUS, status::ACKNOWLEDGE);
    assert_eq!(d.read(regs::STATUS), ACK_DRIVER, "bits are not cleared");
    d.write(regs::STATUS, ACK_DRIVER | 0x10);
    assert_eq!(d.read(regs::STATUS), ACK_DRIVER, "unknown bits");
    d.write(regs::STATUS, ACK_DRIVER | status::DEVICE_NEEDS_RESET);
    assert_eq!(d.read(regs::STATUS), ACK_DRIVER, "the device's bit");
    d.write(regs::STATUS, ACK_DRIVER | status::FAILED);
    assert_eq!(d.read(regs::STATUS), ACK_DRIVER | status::FAILED);
}

#[test]
fn driver_ok_without_features_ok_is_refused() {
    let mut s = setup(false);
    s.driver.write(regs::STATUS, status::ACKNOWLEDGE);
    s.driver.write(regs::STATUS, ACK_DRIVER);
    s.driver.write_driver_features(VIRTIO_F_VERSION_1);
    s.driver.write(regs::STATUS, ACK_DRIVER | status::DRIVER_OK);
    assert_eq!(s.driver.read(regs::STATUS), ACK_DRIVER);
    assert!(s.activations().is_empty());
    s.driver.notify(0);
    assert!(s.notified().is_empty());
}

#[test]
fn queue_sizes_must_be_powers_of_two_up_to_the_max() {
    let mut s = setup(false);
    s.driver.negotiate(u64::MAX);
    s.driver.write(regs::QUEUE_SEL, 1);
    for refused in [0, 6, 16, 1 << 16 | 4] {
        s.driver.write(regs::QUEUE_NUM, refused);
    }
    s.driver.write(regs::QUEUE_SEL, 0);
    s.driver.write(regs::QUEUE_NUM, 4);
    s.driver.write(regs::QUEUE_READY, 0);
    s.driver.write(regs::QUEUE_DESC_LOW, DESC_TABLE as u32);
    s.driver.write(regs::QUEUE_AVAIL_LOW, AVAIL_RING as u32);
    s.driver.write(regs::QUEUE_USED_LOW, USED_RING as u32);
    s.driver.write(regs::QUEUE_READY, 1);
    s.driver.write(regs::QUEUE_NUM, 8);
    s.driver.write(regs::STATUS, NEGOTIATED | status::DRIVER_OK);
    let (_, queues) = &s.activations()[0];
    assert_eq!(
        queues,
        &vec![(true, 4), (false, 8)],
        "queue 1 kept its max, queue 0 its size while ready"
    );
}

#[test]
fn queue_ready_refuses_unaligned_or_out_of_ram_rings() {
    let mut s = setup(false);
    s.driver.negotiate(u64::MAX);
    let ram = RAM_BYTES as u64;
    let refused = [
        (DESC_TABLE + 8, AVAIL_RING, USED_RING),
        (DESC_TABLE, AVAIL_RING + 1, USED_RING),
        (DESC_TABLE, AVAIL_RING, USED_RING + 2),
        (ram - 16 * 8, AVAIL_RING, USED_RING),
        (DESC_TABLE, ram - 8, USED_RING),
        (DESC_TABLE, AVAIL_RING, ram - 64),
        (DESC_TABLE, AVAIL_RING, USED_RING | 1 << 32),
        (DESC_TABLE, 0, USED_RING),
        (u64::MAX - 15, AVAIL_RING, USED_RING),
    ];
    for (desc, avail, used) in refused {
        assert_eq!(
            s.driver.setup_queue(0, 16, desc, avail, used),
            0,
            "rings {desc:#x} {avail:#x} {used:#x}"
        );
    }
    assert_eq!(
        s.driver
            .setup_queue(0, 16, DESC_TABLE, AVAIL_RING, USED_RING),
        1
    );
    // A ready queue's setup is fixed.
    s.driver.write(regs::QUEUE_DESC_LOW, 0x4_0000);
    s.driver.write(regs::STATUS, NEGOTIATED | status::DRIVER_OK);
    assert_eq!(s.activations()[0].1[0], (true, 16));
    let mut ring = Ring::new(&s.memory, 16);
    ring.descriptor(0, 0x5_0000, 8, 0, 0);
    ring.publish(0);
    s.driver.notify(0);
    assert_eq!(
        ring.used_idx(),
        1,
        "the rings in use are the ones made ready"
    );
}

#[test]
fn queue_setup_is_refused_before_features_ok_and_after_driver_ok() {
    let mut s = setup(false);
    s.driver.write(regs::STATUS, status::ACKNOWLEDGE);
    s.driver.write(regs::STATUS, ACK_DRIVER);
    assert_eq!(
        s.driver
            .setup_queue(0, 16, DESC_TABLE, AVAIL_RING, USED_RING),
        0
    );
    let mut s = setup(false);
    s.start();
    assert_eq!(s.driver.setup_queue(1, 8, 0x4_0000, 0x4_1000, 0x4_2000), 0);
    s.driver.write(regs::QUEUE_SEL, 0);
    s.driver.write(regs::QUEUE_READY, 0);
    assert_eq!(s.driver.read(regs::QUEUE_READY), 1, "an active queue stays");
}

#[test]
fn notifications_reach_a_live_device_only() {
    let mut s = setup(false);
    s.driver.notify(0);
    s.driver.negotiate(u64::MAX);
    s.driver.notify(0);
    assert!(s.notified().is_empty());
    s.start();
    s.driver.notify(0);
    s.driver.notify(2);
    s.driver.notify(1 << 16);
    assert_eq!(s.notified(), vec![0]);
}

#[test]
fn used_buffers_raise_the_interrupt_until_acknowledged() {
    let mut s = setup(false);
    s.start();
    let mut ring = Ring::new(&s.memory, 16);
    ring.descriptor(0, 0x5_0000, 8, 0, 0);
    assert!(!s.line.take());
    ring.publish(0);
    s.driver.notify(0);
    assert!(s.line.take(), "the line was raised");
    assert_eq!(s.driver.read(regs::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    s.driver.write(regs::INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
    assert_eq!(s.driver.read(regs::INTERRUPT_STATUS), 0);
}

#[test]
fn a_failed_activation_sets_device_needs_reset() {
    let mut s = setup(true);
    let status = s.start();
    assert_eq!(
        status,
        NEGOTIATED | status::DRIVER_OK | status::DEVICE_NEEDS_RESET
    );
    assert_eq!(
        s.driver.read(regs::INTERRUPT_STATUS),
        INTERRUPT_CONFIG_CHANGE
    );
    assert!(s.line.take());
    s.driver.notify(0);
    assert!(s.notified().is_empty());
}

#[test]
fn a_device_error_sets_device_needs_reset() {
    let mut s = setup(false);
    s.driver.negotiate(u64::MAX);
    s.driver.setup_queue(1, 8, 0x4_0000, 0x4_1000, 0x4_2000);
    s.start_after_negotiation();
    s.driver.notify(1);
    assert_ne!(s.driver.read(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        s.driver.read(regs::INTERRUPT_STATUS),
        INTERRUPT_CONFIG_CHANGE
    );
    s.driver.notify(0);
    assert_eq!(s.notified(), vec![1], "a broken device is not notified");
    s.driver.write(regs::STATUS, 0);
    assert_eq!(s.driver.read(regs::STATUS), 0, "a reset clears it");
}

impl Setup {
    fn start_after_negotiation(&mut self) {
        assert_eq!(
            self.driver
                .setup_queue(0, 16, DESC_TABLE, AVAIL_RING, USED_RING),
            1
        );
        self.driver
            .write(regs::STATUS, NEGOTIATED | status::DRIVER_OK);
    }
}

#[test]
fn a_status_reset_returns_everything_to_the_initial_state() {
    let fresh = |d: &mut Driver<Recorder>| {
        let mut seen = Vec::new();
        for queue in 0..2 {
            d.write(regs::QUEUE_SEL, queue);
            seen.push((d.read(regs::QUEUE_NUM_MAX), d.read(regs::QUEUE_READY)));
        }
        d.write(regs::QUEUE_SEL, 0);
        seen.push((d.read(regs::STATUS), d.read(regs::INTERRUPT_STATUS)));
        seen.push((d.read(regs::DEVICE_FEATURES), 0));
        seen
    };
    let mut s = setup(false);
    let initial = fresh(&mut s.driver);
    s.driver.negotiate(u64::MAX);
    s.driver.write(regs::QUEUE_SEL, 0);
    s.driver.write(regs::QUEUE_NUM, 4);
    s.start_after_negotiation();
    let mut ring = Ring::new(&s.memory, 4);
    ring.descriptor(0, 0x5_0000, 8, 0, 0);
    ring.publish(0);
    s.driver.notify(0);
    assert_eq!(s.driver.read(regs::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    s.driver.write(regs::DEVICE_FEATURES_SEL, 1);

    let resets = s.log.lock().expect("lock").resets;
    s.driver.write(regs::STATUS, 0);
    assert_eq!(fresh(&mut s.driver), initial);
    assert_eq!(s.log.lock().expect("lock").resets, resets + 1);
    assert!(s.driver.transport.device().active.is_none());
    // Set up again from scratch: sizes are back to their maximum, and
    // the queue starts over at the beginning of the rings.
    let mut ring = Ring::new(&s.memory, 16);
    s.start();
    ring.descriptor(0, 0x5_0000, 8, 0, 0);
    ring.publish(0);
    s.driver.notify(0);
    assert_eq!(ring.used_idx(), 1);
    assert_eq!(s.activations()[1].1, vec![(true, 16), (false, 8)]);
    assert_eq!(s.activations()[1].0, OFFERED);
}
