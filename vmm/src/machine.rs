//! A whole guest: RAM, the VM with its interrupt controllers, the devices,
//! the Linux kernel loaded, and the vCPU threads running; then the event
//! loop until the guest ends or the process is told to stop.
//!
//! States, in order: [`MachineConfig`] (validated) -> [`Machine::boot`]
//! (vCPUs running) -> [`Machine::run`] (returns how it [`Ended`]).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, info_span, warn};

use crate::arch::{self, LinuxBootError};
use crate::devices::mmio::{MmioBusError, MmioDeviceInfo};
use crate::devices::pio::BusError;
use crate::devices::signal::Signal;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportError};
use crate::devices::virtio::net::tap::{Tap, TapError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::vsock::subscriber::VsockBackend;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Devices, Platform, SharedDevices};
use crate::event_loop::{self, Backend, EventLoopError, NetReceiver, Wake};
use crate::memory::MemoryError;
use crate::sandbox::{Confinement, SandboxError};
use crate::seccomp::{SeccompError, ThreadFilter, ThreadKind};
use crate::signals::TerminationSignals;
use crate::vcpu::{RunningVcpu, Stop, VcpuError};
use crate::vm::{Vm, VmError};

/// Smallest guest RAM accepted: a distribution kernel and a small
/// initramfs need this much to reach user space.
pub const MIN_MEMORY_MIB: u32 = 64;
pub use crate::arch::{MAX_MEMORY_MIB, MAX_VCPUS};

/// A disk image the guest sees as a virtio-blk device (`/dev/vda`,
/// `/dev/vdb`, ... in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Offer it read-only (and open it so).
    pub read_only: bool,
}

/// A network interface the guest sees as a virtio-net device (`eth0`,
/// `eth1`, ... in order), backed by a tap the VMM opens (and which goes
/// away with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name (at most 15 characters of `A-Za-z0-9._-`).
    pub tap: String,
    /// The guest's MAC address (unicast, not all zero).
    pub mac: [u8; 6],
}

/// A virtio-vsock device: the guest's sockets reach host processes
/// through Unix sockets (see [`crate::devices::virtio::vsock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; each VMM has its own, so every
    /// guest may use the same).
    pub cid: u64,
    /// The Unix socket host processes connect to; guest connections to
    /// host port N go to `<socket>_N`. A stale socket left by an earlier
    /// VMM is replaced.
    pub socket: PathBuf,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Kernel image (bzImage or ELF vmlinux).
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces, in the order the guest sees them.
    pub nets: Vec<NetConfig>,
    /// A socket device, if any.
    pub vsock: Option<VsockConfig>,
}

/// Why a guest could not be started or run.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The configuration is invalid (nothing was started).
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
    /// A file named in the configuration cannot be opened.
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// Which file ("kernel", "initramfs").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM refused a step.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The kernel, initramfs or boot state was refused.
    #[error(transparent)]
    Boot(#[from] LinuxBootError),
    /// A device could not be placed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A device could not be placed on the MMIO bus.
    #[error(transparent)]
    MmioBus(#[from] MmioBusError),
    /// A disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] MmioTransportError),
    /// The jail could not be entered.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A network device could not be made.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The socket device could not be made.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A thread, eventfd or signalfd could not be created.
    #[error("{what}: {source}")]
    Os {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// How a guest ended.
#[derive(Debug)]
pub enum Ended {
    /// The guest rebooted (x86_64: the i8042 reset; aarch64: PSCI).
    Reset,
    /// The guest powered off (x86_64: the ACPI sleep control register;
    /// aarch64: PSCI).
    PowerOff,
    /// The guest shut down (triple fault).
    Shutdown,
    /// The guest halted with no interrupt controller to wake it.
    Halted,
    /// The VMM got this termination signal and stopped the guest.
    Terminated(i32),
    /// A vCPU failed.
    Failed(VcpuError),
}

impl MachineConfig {
    /// Checks the configuration without touching anything.
    pub fn validate(&self) -> Result<(), MachineError> {
        let mut problems = Vec::new();
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            problems.push(format!(
                "memory of {} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB",
                self.memory_mib
            ));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            problems.push(format!(
                "{} vCPUs requested; this VMM runs 1..={MAX_VCPUS}",
                self.vcpus
            ));
        }
        if !self.kernel.is_file() {
            problems.push(format!(
                "kernel {} is not a readable file",
                self.kernel.display()
            ));
        }
        let devices = self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some());
        if arch::virtio_mmio_slot(devices.saturating_sub(1)).is_none() {
            problems.push(format!(
                "{} disks, {} network interfaces and {} socket devices: more than this machine has virtio-mmio slots for",
                self.disks.len(),
                self.nets.len(),
                usize::from(self.vsock.is_some())
            ));
        }
        if let Some(vsock) = &self.vsock {
            if !(3..u64::from(u32::MAX)).contains(&vsock.cid) {
                problems.push(format!(
                    "vsock CID {} is reserved or past 32 bits (3..=4294967294)",
                    vsock.cid
                ));
            }
            if !vsock.socket.parent().is_some_and(|d| d.is_dir()) {
                problems.push(format!(
                    "the vsock socket {} is not in an existing directory",
                    vsock.socket.display()
                ));
            }
            if vsock.socket.exists() && !is_socket(&vsock.socket) {
                problems.push(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    vsock.socket.display()
                ));
            }
        }
        for disk in self.disks.iter().filter(|d| !d.path.is_file()) {
            problems.push(format!(
                "disk {} is not a readable file",
                disk.path.display()
            ));
        }
        if let Some(initrd) = self.initrd.as_ref().filter(|p| !p.is_file()) {
            problems.push(format!(
                "initramfs {} is not a readable file",
                initrd.display()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MachineError::Invalid(problems.join("; ")))
        }
    }
}

/// A running guest.
pub struct Machine {
    // Kept alive while the vCPUs run: it owns guest RAM and the VM fd.
    _vm: Vm,
    devices: SharedDevices,
    reset: Signal,
    power_off: Signal,
    vcpu_exited: Signal,
    vcpus: Vec<RunningVcpu<SharedDevices>>,
    backends: Vec<Backend>,
    event_loop_filter: Option<ThreadFilter>,
}

fn is_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> MachineError {
    move |source| MachineError::Os { what, source }
}

fn open(what: &'static str, path: &PathBuf) -> Result<File, MachineError> {
    File::open(path).map_err(|source| MachineError::Open {
        what,
        path: path.clone(),
        source,
    })
}

/// Puts `device` on the platform's MMIO bus as `name`, in the virtio-mmio
/// slot after `announced` (which it extends), with an interrupt line of its
/// own; returns its transport, which the event loop shares when the device
/// has a host side to serve.
fn attach<D: VirtioDevice + 'static>(
    platform: &mut Platform,
    vm: &Vm,
    name: &str,
    device: D,
    announced: &mut Vec<MmioDeviceInfo>,
) -> Result<Arc<Mutex<MmioTransport<D>>>, MachineError> {
    let slot = arch::virtio_mmio_slot(announced.len())
        .ok_or_else(|| MachineError::Invalid(format!("no virtio-mmio slot for {name}")))?;
    let interrupt = Signal::new().map_err(os("create a virtio interrupt"))?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        vm.ram().memory().clone(),
        Interrupt::new(interrupt.clone()),
    )?));
    platform
        .mmio
        .insert(name, slot.base, slot.size, Box::new(transport.clone()))?;
    platform.interrupts.push((interrupt, slot.irq));
    info!(
        device = name,
        base = format_args!("{:#x}", slot.base),
        irq = slot.irq,
        "virtio device attached"
    );
    announced.push(slot);
    Ok(transport)
}

/// Puts a virtio-blk device per disk on the platform's MMIO bus, in the
/// slots after `announced`.
fn add_disks(
    platform: &mut Platform,
    vm: &Vm,
    disks: &[DiskConfig],
    announced: &mut Vec<MmioDeviceInfo>,
) -> Result<(), MachineError> {
    for (index, disk) in disks.iter().enumerate() {
        let block = Block::open(&disk.path, disk.read_only, &format!("mecvisor-disk{index}"))?;
        attach(
            platform,
            vm,
            &format!("virtio-blk{index}"),
            block,
            announced,
        )?;
        info!(disk = %disk.path.display(), read_only = disk.read_only, "disk attached");
    }
    Ok(())
}

/// Puts a virtio-net device per interface on the platform's MMIO bus, in
/// the slots after `announced`; returns their receive sides for the event
/// loop.
fn add_nets(
    platform: &mut Platform,
    vm: &Vm,
    nets: &[NetConfig],
    announced: &mut Vec<MmioDeviceInfo>,
) -> Result<Vec<Backend>, MachineError> {
    let mut receivers: Vec<Backend> = Vec::new();
    for (index, net) in nets.iter().enumerate() {
        let device = Net::new(Tap::open(&net.tap)?, net.mac)?;
        let transport = attach(
            platform,
            vm,
            &format!("virtio-net{index}"),
            device,
            announced,
        )?;
        info!(tap = %net.tap, "network interface attached");
        receivers.push(Box::new(NetReceiver::new(transport)));
    }
    Ok(receivers)
}

/// Puts the virtio-vsock device (if configured) on the platform's MMIO
/// bus in the slot after `announced`; returns its host side for the event
/// loop.
fn add_vsock(
    platform: &mut Platform,
    vm: &Vm,
    vsock: Option<&VsockConfig>,
    announced: &mut Vec<MmioDeviceInfo>,
) -> Result<Option<Backend>, MachineError> {
    let Some(config) = vsock else {
        return Ok(None);
    };
    if is_socket(&config.socket) {
        // Left by an earlier VMM of this guest (validated as a socket).
        std::fs::remove_file(&config.socket).map_err(os("remove a stale vsock socket"))?;
    }
    let device = Vsock::new(config.cid, &config.socket)?;
    let transport = attach(platform, vm, "virtio-vsock", device, announced)?;
    info!(cid = config.cid, socket = %config.socket.display(), "vsock attached");
    Ok(Some(Box::new(VsockBackend::new(transport))))
}

impl Machine {
    /// Validates `config`, builds the guest with its serial console
    /// writing to `console`, and starts the vCPUs.
    pub fn boot<W: Write + Send + 'static>(
        config: &MachineConfig,
        console: W,
    ) -> Result<Machine, MachineError> {
        Machine::boot_confined(config, console, Confinement::default())
    }

    /// Like [`Machine::boot`], confined: entering the jail once everything
    /// is open and before the vCPU threads start (so they inherit it); each
    /// vCPU thread installs its seccomp filter before running guest code,
    /// and [`Machine::run`] installs the event loop's.
    pub fn boot_confined<W: Write + Send + 'static>(
        config: &MachineConfig,
        console: W,
        confinement: Confinement,
    ) -> Result<Machine, MachineError> {
        let span =
            info_span!("boot", kernel = %config.kernel.display(), memory_mib = config.memory_mib);
        let _enter = span.enter();
        config.validate()?;
        let mut kernel = open("kernel", &config.kernel)?;
        let mut initrd = match &config.initrd {
            Some(path) => Some(open("initramfs", path)?),
            None => None,
        };
        let mut vm = Vm::new(arch::guest_ram(u64::from(config.memory_mib) << 20)?)?;
        let reset = Signal::new().map_err(os("create the reset signal"))?;
        let power_off = Signal::new().map_err(os("create the power-off signal"))?;
        let mut platform = arch::platform(console, &reset, &power_off)?;
        let mut virtio = Vec::new();
        add_disks(&mut platform, &vm, &config.disks, &mut virtio)?;
        let mut backends = add_nets(&mut platform, &vm, &config.nets, &mut virtio)?;
        backends.extend(add_vsock(
            &mut platform,
            &vm,
            config.vsock.as_ref(),
            &mut virtio,
        )?);
        let mut devices = Devices::with_mmio(platform.ports, platform.mmio, reset.clone());
        devices.stop_on(power_off.clone());
        let devices = SharedDevices::new(devices);

        let vcpus = arch::boot_linux(
            &mut vm,
            config.vcpus,
            &mut kernel,
            initrd.as_mut(),
            &config.cmdline,
            &virtio,
        )?;
        for (signal, line) in &platform.interrupts {
            vm.register_irqfd(signal.event(), *line)?;
        }
        info!("kernel loaded");
        let (vcpu_filter, event_loop_filter) = if confinement.seccomp {
            (
                Some(ThreadFilter::new(ThreadKind::Vcpu)?),
                Some(ThreadFilter::new(ThreadKind::EventLoop)?),
            )
        } else {
            (None, None)
        };
        if let Some(jail) = confinement.jail {
            let keeps = jail.keeps().display().to_string();
            jail.enter()?;
            info!(keeps = %keeps, "in the jail: own mount namespace, chroot, no capabilities");
        }
        let vcpu_exited = Signal::new().map_err(os("create the vCPU exit signal"))?;
        let mut running = Vec::new();
        for vcpu in vcpus {
            running.push(
                vcpu.spawn_notifying(
                    devices.clone(),
                    Some(vcpu_exited.clone()),
                    vcpu_filter.clone(),
                )
                .map_err(os("start a vCPU thread"))?,
            );
        }
        info!(
            vcpus = config.vcpus,
            seccomp = vcpu_filter.is_some(),
            "guest started"
        );
        Ok(Machine {
            _vm: vm,
            devices,
            reset,
            power_off,
            vcpu_exited,
            vcpus: running,
            backends,
            event_loop_filter,
        })
    }

    /// Runs the event loop until a vCPU stops (the guest ended) or a
    /// termination signal arrives, then stops every vCPU and says how the
    /// guest ended. When the machine was booted with seccomp, the calling
    /// thread installs the event loop's filter first and keeps it.
    pub fn run(self, signals: TerminationSignals) -> Result<Ended, MachineError> {
        let confined = match &self.event_loop_filter {
            Some(filter) => filter.apply().map_err(MachineError::from),
            None => Ok(()),
        };
        let wake = confined.and_then(|()| {
            Ok(event_loop::wait(
                self.vcpu_exited.clone(),
                signals,
                self.backends,
            )?)
        });
        let mut first_error = None;
        let mut stops = Vec::new();
        for vcpu in self.vcpus {
            let (result, _) = vcpu.stop();
            match result {
                Ok(stop) => stops.push(stop),
                Err(e) => {
                    warn!(error = %e, "vCPU failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        let ended = match wake? {
            Wake::Terminated(signal) => Ended::Terminated(signal),
            Wake::VcpuStopped => match first_error {
                Some(e) => Ended::Failed(e),
                None if self.reset.is_raised()
                    || self.devices.lock().reset_requested()
                    || stops.contains(&Stop::Reset) =>
                {
                    Ended::Reset
                }
                None if self.power_off.is_raised() || stops.contains(&Stop::PowerOff) => {
                    Ended::PowerOff
                }
                None if stops.contains(&Stop::Shutdown) => Ended::Shutdown,
                None => Ended::Halted,
            },
        };
        info!(?ended, "guest ended");
        Ok(ended)
    }
}
