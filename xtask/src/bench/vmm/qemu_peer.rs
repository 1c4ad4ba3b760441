//! The peer of the in-box guest boot: the same guest (kernel, initramfs,
//! 128 MiB, 1 vCPU) on Debian's QEMU with KVM in the same box,
//! `qemu-system-x86_64 -M microvm` on x86_64 and `qemu-system-aarch64 -M
//! virt -cpu host` on aarch64. QEMU and its shared libraries are unpacked
//! from the box architecture's own packages onto the payload disk
//! ([`crate::images::tools::unpack_tool`]); microvm's firmware comes from
//! `qemu-system-data`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use mecvisor_hil::Arch;

use super::in_box::{parse_epoch_micros, Boot, MARKER};
use crate::cross::Arch as CrossArch;
use crate::images::tools;

/// Seconds the box lets one QEMU run take before it is stopped.
const RUN_LIMIT_SECS: u32 = 580;

/// How QEMU boots the guest on one architecture.
pub struct Peer {
    /// Debian package with the emulator.
    package: &'static str,
    /// The emulator program (a wrapper of that name on the payload disk).
    pub program: &'static str,
    /// Machine, accelerator and CPU arguments.
    machine: &'static str,
    /// The guest's serial console on that machine.
    console: &'static str,
    /// Debian package with the machine's firmware, if it needs any.
    firmware: Option<&'static str>,
}

/// The peer of `arch`. microvm and virt get `-cpu host` like the VMM's
/// vCPUs (KVM's supported CPUID / the host's CPU); virt's GIC is a v3 like
/// the VMM's (the box's emulated GICv3 has no v2 compatibility).
pub fn peer(arch: Arch) -> Peer {
    match arch {
        Arch::X86_64 => Peer {
            package: "qemu-system-x86",
            program: "qemu-system-x86_64",
            machine: "-M microvm -enable-kvm -cpu host",
            console: "ttyS0",
            firmware: Some("qemu-system-data"),
        },
        Arch::Aarch64 => Peer {
            package: "qemu-system-arm",
            program: "qemu-system-aarch64",
            machine: "-M virt,gic-version=3 -enable-kvm -cpu host",
            console: "ttyAMA0",
            firmware: None,
        },
    }
}

impl Peer {
    /// Puts QEMU (and its firmware) for `arch` into the payload directory.
    pub fn add_to_payload(&self, arch: Arch, payload: &Path) -> Result<()> {
        let arch = match arch {
            Arch::X86_64 => CrossArch::X86_64,
            Arch::Aarch64 => CrossArch::Aarch64,
        };
        tools::unpack_tool(arch, self.package, &[self.program], payload)
            .with_context(|| format!("unpacking {} for the box", self.package))?;
        if let Some(firmware) = self.firmware {
            tools::unpack_data(arch, firmware, payload)
                .with_context(|| format!("unpacking {firmware} for the box"))?;
        }
        Ok(())
    }

    /// The box command that shows QEMU starts at all (its libraries load).
    pub fn version_command(&self) -> String {
        format!("/mnt/payload/{} --version 2>&1", self.program)
    }

    /// The VMM's kernel command line with this machine's console.
    pub fn cmdline(&self, vmm_cmdline: &str) -> String {
        vmm_cmdline
            .split_whitespace()
            .map(|word| {
                if word.starts_with("console=") {
                    format!("console={}", self.console)
                } else {
                    word.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The QEMU command in the box for the guest on the payload disk.
    fn command(&self, cmdline: &str) -> String {
        let firmware = self
            .firmware
            .map(|package| format!("-L /mnt/payload/{package}-root/usr/share/qemu "))
            .unwrap_or_default();
        format!(
            "/mnt/payload/{} {} -m 128 -smp 1 -nodefaults -no-user-config -display none \
             -no-reboot {firmware}-serial stdio \
             -kernel /mnt/payload/vmlinuz -initrd /mnt/payload/initrd.img -append '{}'",
            self.program,
            self.machine,
            self.cmdline(cmdline)
        )
    }

    /// The box script of run `run`: the start time, QEMU with its serial
    /// console stamped line by line (busybox `ts '%.s'`) into
    /// `/tmp/qemu.<run>.console`, its status, the marker line and the ends
    /// of the console and of QEMU's stderr.
    pub fn script(&self, run: usize, vmm_cmdline: &str) -> String {
        format!(
            "rm -f /tmp/qemu.{run}.*; \
             start=$(echo | ts '%.s'); \
             ( timeout -s TERM {RUN_LIMIT_SECS} {} < /dev/null 2> /tmp/qemu.{run}.stderr; \
               echo \"qemu-status=$?\" ) | ts '%.s' > /tmp/qemu.{run}.console; \
             echo \"qemu-start=$start\"; \
             grep -h -e 'qemu-status=' -e '{MARKER}' /tmp/qemu.{run}.console; \
             echo '--- end of the console'; tail -n 20 /tmp/qemu.{run}.console; \
             echo '--- end of the QEMU stderr'; tail -n 10 /tmp/qemu.{run}.stderr",
            self.command(vmm_cmdline)
        )
    }
}

/// The boot time and QEMU's status from a run's output; an error with
/// QEMU's own words when the guest never printed its marker (e.g. no KVM).
pub fn parse_run(output: &str) -> Result<Boot> {
    let start = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("qemu-start="))
        .context("no qemu-start line")?
        .trim();
    let start = parse_epoch_micros(start).with_context(|| format!("bad start time {start:?}"))?;
    let status = output
        .lines()
        .find_map(|l| l.split_once("qemu-status=").map(|(_, s)| s.trim()))
        .context("no qemu-status line")?;
    let status: i32 = status
        .parse()
        .with_context(|| format!("bad QEMU status {status:?}"))?;
    let Some(marker) = output
        .lines()
        .filter(|l| l.contains(MARKER))
        .find_map(|l| parse_epoch_micros(l.split_whitespace().next()?))
    else {
        bail!(
            "QEMU exited with status {status} without the guest's {MARKER}; its stderr: {}",
            stderr_tail(output)
        );
    };
    let micros = u64::try_from(marker - start)
        .map_err(|_| anyhow!("{MARKER} is stamped before QEMU started"))?;
    Ok(Boot {
        to_marker: std::time::Duration::from_micros(micros),
        status,
    })
}

/// QEMU's stderr lines from a run's output, joined (`(empty)` if none).
fn stderr_tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .split_once("--- end of the QEMU stderr")
        .map(|(_, tail)| tail.lines().map(str::trim).filter(|l| !l.is_empty()))
        .into_iter()
        .flatten()
        .collect();
    if lines.is_empty() {
        "(empty)".to_string()
    } else {
        lines.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_console_follows_the_machine() {
        let vmm = "console=ttyS0 panic=-1 loglevel=4";
        assert_eq!(
            peer(Arch::Aarch64).cmdline(vmm),
            "console=ttyAMA0 panic=-1 loglevel=4"
        );
        assert_eq!(peer(Arch::X86_64).cmdline(vmm), vmm);
        let script = peer(Arch::X86_64).script(2, vmm);
        assert!(script.contains("-L /mnt/payload/qemu-system-data-root/usr/share/qemu"));
        assert!(script.contains("-M microvm -enable-kvm -cpu host -m 128 -smp 1"));
        assert!(!peer(Arch::Aarch64).script(1, vmm).contains(" -L "));
    }

    #[test]
    fn a_run_gives_the_time_from_start_to_the_marker() {
        let out = "qemu-start=1795513675.507544\n\
                   1795513680.000000 MECVISOR-GUEST-BOOTED x86_64 6.1.0-28-cloud-amd64\n\
                   1795513682.100000 qemu-status=0\n--- end of the console\n";
        let boot = parse_run(out).expect("parses");
        assert_eq!(boot.to_marker, Duration::from_micros(4_492_456));
        assert_eq!(boot.status, 0);
    }

    #[test]
    fn no_marker_gives_qemus_reason() {
        let out = "qemu-start=1795513675.5\n1795513675.9 qemu-status=1\n\
                   --- end of the console\n1795513675.9 qemu-status=1\n\
                   --- end of the QEMU stderr\n\
                   Could not access KVM kernel module: No such file or directory\n\
                   qemu-system-x86_64: failed to initialize kvm: No such file or directory\n";
        let err = parse_run(out).expect_err("no marker");
        let text = format!("{err}");
        assert!(text.contains("status 1"), "{text}");
        assert!(text.contains("failed to initialize kvm"), "{text}");
    }
}
