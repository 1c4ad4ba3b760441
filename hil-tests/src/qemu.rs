//! The QEMU command line of one machine.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::images::BootImage;
use crate::Arch;

/// Everything a machine is started with.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Architecture (emulator, machine type, console device).
    pub arch: Arch,
    /// Kernel and initramfs.
    pub image: BootImage,
    /// Kernel command line after `console=...`.
    pub append: String,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// Raw disk image attached as the first virtio disk (`/dev/vda`).
    pub disk: Option<PathBuf>,
    /// Raw disk image attached read-only as the second virtio disk
    /// (`/dev/vdb`), e.g. test binaries for the box.
    pub payload: Option<PathBuf>,
    /// Network: a tap (by name) in `netns`, or QEMU's user-mode network.
    pub net: Net,
    /// File the serial console is appended to.
    pub console_log: PathBuf,
    /// Unix socket for the command channel (virtio console `hvc0`), if any.
    pub shell_socket: Option<PathBuf>,
    /// Exit instead of rebooting when the guest reboots.
    pub no_reboot: bool,
}

/// The machine's network link.
#[derive(Debug, Clone)]
pub enum Net {
    /// No network device.
    None,
    /// A virtio NIC on an existing tap device, QEMU started inside the
    /// namespace that holds it.
    Tap {
        /// Network namespace holding the tap.
        netns: String,
        /// Tap device name.
        ifname: String,
        /// MAC address of the NIC.
        mac: String,
    },
    /// A virtio NIC on QEMU's user-mode network (no host setup needed).
    User,
}

impl MachineSpec {
    /// The command that starts the machine (stdio to /dev/null; it dies with
    /// the thread that started it).
    pub fn command(&self) -> Command {
        let mut cmd = match &self.net {
            Net::Tap { netns, .. } => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", netns, self.arch.qemu_binary()]);
                cmd
            }
            _ => Command::new(self.arch.qemu_binary()),
        };
        cmd.args(self.arch.machine_args())
            .args([
                "-accel",
                "tcg",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
            ])
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initramfs)
            .arg("-append")
            .arg(format!("console={} {}", self.arch.console(), self.append))
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.console_log.display()
            ))
            .args(["-serial", "chardev:console"]);
        if let Some(disk) = &self.disk {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=disk0,cache=writeback",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=disk0"]);
        }
        if let Some(payload) = &self.payload {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=disk1,readonly=on",
                    payload.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=disk1"]);
        }
        match &self.net {
            Net::None => {}
            Net::Tap { ifname, mac, .. } => {
                cmd.arg("-netdev")
                    .arg(format!(
                        "tap,id=net0,ifname={ifname},script=no,downscript=no"
                    ))
                    .arg("-device")
                    .arg(format!("virtio-net-pci,netdev=net0,mac={mac}"));
            }
            Net::User => {
                cmd.args([
                    "-netdev",
                    "user,id=net0",
                    "-device",
                    "virtio-net-pci,netdev=net0",
                ]);
            }
        }
        if let Some(socket) = &self.shell_socket {
            cmd.args(["-device", "virtio-serial-pci"])
                .arg("-chardev")
                .arg(format!(
                    "socket,id=shell,path={},server=on,wait=off",
                    socket.display()
                ))
                .args(["-device", "virtconsole,chardev=shell"]);
        }
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this (forked, not yet
        // exec'd) process's own death signal; it allocates nothing and is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }
}

impl MachineSpec {
    /// Starts the machine and waits for it to power off by itself (set
    /// `no_reboot`); returns its console output. Killed after `timeout`.
    pub fn run_to_exit(&self, timeout: Duration) -> Result<String, String> {
        let _ = std::fs::remove_file(&self.console_log);
        let mut cmd = self.command();
        cmd.stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.arch.qemu_binary()))?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not power off within {timeout:?}; console:\n{}",
                        self.arch.qemu_binary(),
                        std::fs::read_to_string(&self.console_log).unwrap_or_default()
                    ));
                }
            }
        }
        std::fs::read_to_string(&self.console_log)
            .map_err(|e| format!("{}: {e}", self.console_log.display()))
    }
}
