//! `edge-agent vmm`: one KVM guest in this process, on mecvisor's
//! microVMM (`mecvisor-vmm`). The agent starts one per VM workload; people
//! can run it by hand too. The guest's serial console goes to stdout or to
//! a size-bounded log directory (`edge-agent logs` reads it).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The command line when none is given: console on the first serial port,
/// reboot through the i8042 (so a guest reboot ends the VMM), no PCI
/// probing (the devices are not on PCI), i8042 probing cut short.
#[cfg(target_arch = "x86_64")]
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
/// The command line when none is given: console on the serial port (a
/// 16550A, so `ttyS0`); a panic reboots at once, which ends the VMM.
#[cfg(not(target_arch = "x86_64"))]
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";

/// What `edge-agent vmm` was asked to run.
#[derive(Debug, Clone, clap::Args)]
pub struct VmmArgs {
    /// Kernel image: a bzImage or an ELF vmlinux (x86_64), e.g. Debian's
    /// /boot/vmlinuz-*-cloud-amd64 as shipped.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initramfs (any format the kernel unpacks).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. The default puts the console on the serial
    /// port and makes a guest reboot end this process.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = mecvisor_vmm::DEFAULT_MEMORY_MIB)]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// A raw disk image the guest sees as a virtio-blk device (`/dev/vda`,
    /// then `/dev/vdb`, ... in the order given); `,ro` after the path offers
    /// it read-only. Repeatable.
    #[arg(long = "disk", value_name = "FILE[,ro]", value_parser = parse_disk)]
    pub disks: Vec<mecvisor_vmm::machine::DiskConfig>,
    /// A network interface the guest sees as a virtio-net device (`eth0`,
    /// then `eth1`, ...), backed by a tap of this name that the VMM creates
    /// (and that goes away with it); `,mac=02:..` sets the guest's MAC
    /// (default: a locally administered address derived from the tap
    /// name). Repeatable.
    #[arg(long = "net", value_name = "TAP[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<mecvisor_vmm::machine::NetConfig>,
    /// A virtio-vsock device: host processes reach the guest's vsock
    /// ports by connecting to this Unix socket and writing
    /// `CONNECT <port>\n` (answered `OK <port>\n` once the guest
    /// accepts); the guest's connections to host port N go to the socket
    /// `PATH_N`. `,cid=N` sets the guest's context ID (default 3).
    #[arg(long, value_name = "PATH[,cid=N]", value_parser = parse_vsock)]
    pub vsock: Option<mecvisor_vmm::machine::VsockConfig>,
    /// Jail the VMM once the guest's files are open: its own mount
    /// namespace, a root holding only this directory (at its usual path),
    /// no capabilities, no new privileges. `--console-log` and
    /// `--exit-record` must lie inside it. The agent passes the VM's
    /// directory. Needs root (CAP_SYS_ADMIN) to set up.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// Do not install the seccomp filters. By default, once the guest is
    /// set up, each vCPU thread and the event loop may only make the
    /// system calls they need; a forbidden call is logged and ends the VMM
    /// with exit status 3. For debugging only.
    #[arg(long)]
    pub no_seccomp: bool,
    /// When the VMM ends, write how (JSON: `ended` = power-off, reset,
    /// shutdown, halted, terminated or failed, with `error` for a failure)
    /// to this file, through a rename so it is never half written. The
    /// agent's VM runtime reads it to apply the restart policy.
    #[arg(long, value_name = "FILE")]
    pub exit_record: Option<PathBuf>,
    /// Write the serial console, one timestamped line per record, to
    /// size-bounded rotating files in this directory instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub console_log: Option<PathBuf>,
}

/// `FILE` or `FILE,ro`.
fn parse_disk(text: &str) -> Result<mecvisor_vmm::machine::DiskConfig, String> {
    let (path, read_only) = match text.strip_suffix(",ro") {
        Some(path) => (path, true),
        None => (text, false),
    };
    if path.is_empty() {
        return Err("a disk needs a file path".into());
    }
    Ok(mecvisor_vmm::machine::DiskConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

/// The guest's vsock context ID when none is given (the first one not
/// reserved; each VMM has its own device, so guests need not differ).
pub const DEFAULT_VSOCK_CID: u64 = 3;

/// `PATH` or `PATH,cid=N`.
fn parse_vsock(text: &str) -> Result<mecvisor_vmm::machine::VsockConfig, String> {
    let (path, cid) = match text.rsplit_once(",cid=") {
        Some((path, cid)) => (
            path,
            cid.parse()
                .map_err(|_| format!("{cid:?} is not a vsock context ID"))?,
        ),
        None => (text, DEFAULT_VSOCK_CID),
    };
    if path.is_empty() {
        return Err("a vsock device needs a socket path".into());
    }
    Ok(mecvisor_vmm::machine::VsockConfig {
        cid,
        socket: PathBuf::from(path),
    })
}

/// `TAP` or `TAP,mac=aa:bb:cc:dd:ee:ff`.
fn parse_net(text: &str) -> Result<mecvisor_vmm::machine::NetConfig, String> {
    let (tap, mac) = match text.split_once(",mac=") {
        Some((tap, mac)) => (tap, parse_mac(mac)?),
        None => (text, mac_for(text)),
    };
    if tap.is_empty() {
        return Err("a network interface needs a tap name".into());
    }
    Ok(mecvisor_vmm::machine::NetConfig {
        tap: tap.to_string(),
        mac,
    })
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    <[u8; 6]>::try_from(bytes).map_err(|_| format!("{text:?} is not a MAC address (six bytes)"))
}

/// A locally administered unicast MAC (02:...) from the tap's name, so the
/// same VM keeps its address across restarts.
fn mac_for(tap: &str) -> [u8; 6] {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tap.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, d] = hash.to_be_bytes();
    [0x02, 0x6d, a, b, c, d]
}

/// The console as a log: complete lines go to the rotating files, with the
/// carriage returns of the guest's CRLF line ends dropped.
struct ConsoleLog(containers::logs::LogWriter);

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text: Vec<u8> = buf.iter().copied().filter(|b| *b != b'\r').collect();
        self.0.write(containers::logs::Stream::Stdout, &text)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the guest to its end. Exit status: 0 when the guest rebooted, shut
/// down or the process was told to stop (SIGTERM/SIGINT); 1 when the guest
/// could not be started or a vCPU failed; 2 for an invalid configuration;
/// 3 when a thread made a system call its seccomp filter forbids.
pub fn main(args: VmmArgs) -> ExitCode {
    use containers::logs::{LogLimits, LogWriter};

    let config = mecvisor_vmm::MachineConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        disks: args.disks,
        nets: args.nets,
        vsock: args.vsock.clone(),
    };
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    // Before any thread exists: the kernel gives only a single-threaded
    // process a new mount namespace.
    let jail = match &args.jail {
        Some(dir) => match jail_for(
            dir,
            args.console_log
                .iter()
                .chain(args.exit_record.iter())
                .chain(args.vsock.iter().map(|v| &v.socket))
                .map(PathBuf::as_path),
        ) {
            Ok(jail) => Some(jail),
            Err((code, e)) => {
                tracing::error!("{e}");
                return ExitCode::from(code);
            }
        },
        None => None,
    };
    // Before any thread exists, so the vCPU threads inherit the mask.
    let signals = match mecvisor_vmm::signals::TerminationSignals::block() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let confinement = mecvisor_vmm::sandbox::Confinement {
        jail,
        seccomp: !args.no_seccomp,
    };
    let booted = match args.console_log.clone() {
        Some(dir) => match LogWriter::open(&dir, LogLimits::default()) {
            Ok(log) => mecvisor_vmm::Machine::boot_confined(&config, ConsoleLog(log), confinement),
            Err(e) => {
                tracing::error!("cannot open the console log in {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        None => mecvisor_vmm::Machine::boot_confined(&config, std::io::stdout(), confinement),
    };
    let machine = match booted {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (record, code) = match machine.run(signals) {
        Ok(mecvisor_vmm::Ended::Failed(e)) => {
            tracing::error!("{e}");
            (
                exit_record("failed", Some(&e.to_string())),
                ExitCode::FAILURE,
            )
        }
        Ok(ended) => (exit_record(ended_name(&ended), None), ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{e}");
            (
                exit_record("failed", Some(&e.to_string())),
                ExitCode::FAILURE,
            )
        }
    };
    if let Some(path) = &args.exit_record {
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, record.to_string().as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!("cannot write the exit record {}: {e}", path.display());
        }
    }
    code
}

/// Checks that what the VMM writes after jailing lies inside `dir`, then
/// prepares the jail (exit status 2 for a bad layout, 1 when the kernel
/// refuses).
fn jail_for<'a>(
    dir: &std::path::Path,
    writes: impl Iterator<Item = &'a std::path::Path>,
) -> Result<mecvisor_vmm::sandbox::Jail, (u8, String)> {
    for path in writes {
        if !path.starts_with(dir) {
            return Err((
                2,
                format!(
                    "{} lies outside the jail {}; it would be unreachable from inside",
                    path.display(),
                    dir.display()
                ),
            ));
        }
    }
    mecvisor_vmm::sandbox::Jail::prepare(dir).map_err(|e| match e {
        mecvisor_vmm::sandbox::SandboxError::BadDirectory(_) => (2, e.to_string()),
        mecvisor_vmm::sandbox::SandboxError::Os { .. } => (1, e.to_string()),
    })
}

/// The exit record's name for how the guest ended.
fn ended_name(ended: &mecvisor_vmm::Ended) -> &'static str {
    match ended {
        mecvisor_vmm::Ended::Reset => "reset",
        mecvisor_vmm::Ended::PowerOff => "power-off",
        mecvisor_vmm::Ended::Shutdown => "shutdown",
        mecvisor_vmm::Ended::Halted => "halted",
        mecvisor_vmm::Ended::Terminated(_) => "terminated",
        mecvisor_vmm::Ended::Failed(_) => "failed",
    }
}

fn exit_record(ended: &str, error: Option<&str>) -> serde_json::Value {
    match error {
        Some(error) => serde_json::json!({ "ended": ended, "error": error }),
        None => serde_json::json!({ "ended": ended }),
    }
}
