//! Guest boot time inside the emulated edge boxes: the Debian kernel and
//! the marker-printing initramfs of `images/guest/` on `edge-agent vmm`,
//! as `hil-tests/tests/vm_in_box.rs` runs them, with the console in a log
//! directory whose lines carry timestamps; and the same guest on QEMU with
//! KVM in the same box ([`super::qemu_peer`]), runs alternating.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mecvisor_hil::images::BootImage;
use mecvisor_hil::{missing_prerequisite, Arch, EdgeBox, Lab};

use super::qemu_peer::{self, peer, Peer};
use crate::bench::table::Table;
use crate::timing::percentile;

/// VMM runs per architecture (one box, booted once).
const RUNS: usize = 3;
/// The guest's init prints this first thing, once the kernel is up.
pub(super) const MARKER: &str = "MECVISOR-GUEST-BOOTED";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest runs under KVM nested inside QEMU's emulation: slow.
const GUEST_RUN: Duration = Duration::from_secs(600);

/// The command lines of `hil-tests/tests/vm_in_box.rs`.
const CMDLINES: [(Arch, &str); 2] = [
    (
        Arch::X86_64,
        "console=ttyS0 reboot=k panic=-1 pci=off loglevel=4 i8042.noaux i8042.nomux i8042.dumbkbd",
    ),
    (Arch::Aarch64, "console=ttyS0 panic=-1 loglevel=4"),
];

fn metric(arch: Arch) -> String {
    format!(
        "box: VMM start to {MARKER}, {}, median (min / max) of {RUNS}",
        arch.name()
    )
}

fn qemu_metric(arch: Arch) -> String {
    format!(
        "box: QEMU ({} {}) start to {MARKER}, {}, median (min / max) of {RUNS}",
        peer(arch).program,
        match arch {
            Arch::X86_64 => "-M microvm",
            Arch::Aarch64 => "-M virt",
        },
        arch.name()
    )
}

fn ratio_metric(arch: Arch) -> String {
    format!("box: VMM / QEMU boot time (medians), {}", arch.name())
}

/// Every row of `arch`, as ERROR rows with `err`.
fn all_errors(table: &mut Table, arch: Arch, err: &anyhow::Error) {
    for row in [metric(arch), qemu_metric(arch)] {
        table.error(&row, "", err);
    }
}

/// Adds the in-box rows; what cannot be measured becomes ERROR rows.
pub fn measure(table: &mut Table) {
    match crate::bench::lab::prepare_lab() {
        Ok(()) => {
            for (arch, cmdline) in CMDLINES {
                match boots(arch, cmdline) {
                    Ok(runs) => report(table, arch, &runs),
                    Err(err) => all_errors(table, arch, &err),
                }
            }
        }
        Err(err) => {
            for (arch, _) in CMDLINES {
                all_errors(table, arch, &err);
            }
        }
    }
    table.note(format!(
        "box figures: from just before `edge-agent vmm` starts in the box (busybox `ts '%.s'`) \
         to the timestamp of the guest's {MARKER} line in the VMM's console log; 128 MiB, \
         1 vCPU; the box is QEMU TCG and the guest runs under KVM nested in it (x86_64: nested \
         SVM, aarch64: emulated EL2), so real boxes boot the guest much faster"
    ));
    table.note(format!(
        "QEMU peer: Debian's qemu-system-x86_64 -M microvm -enable-kvm -cpu host (x86_64 box, \
         firmware from qemu-system-data) and qemu-system-aarch64 -M virt,gic-version=3 \
         -enable-kvm -cpu host (aarch64 box), unpacked with their libraries onto the box's \
         payload disk and started through the packaged loader; same kernel, initramfs, 128 MiB, \
         1 vCPU and command line (console=ttyAMA0 on virt), -nodefaults -no-reboot; from just \
         before QEMU starts to the {MARKER} line of its serial console, stamped by busybox \
         `ts '%.s'` as it arrives; runs alternate with the VMM's in the same box"
    ));
}

/// One guest boot in a box (on the VMM or on QEMU).
#[derive(Debug)]
pub(super) struct Boot {
    /// From just before the monitor starts to the guest's marker line.
    pub to_marker: Duration,
    /// The monitor's exit status.
    pub status: i32,
}

/// What one box gave: the VMM's boots and QEMU's, or why either could not
/// be measured.
struct BoxRuns {
    vmm: Result<Vec<Boot>>,
    qemu: Result<Vec<Boot>>,
}

/// Boots a box of `arch` with the guest image and QEMU on its payload disk
/// and boots the guest [`RUNS`] times on the VMM and on QEMU, alternating.
/// Fails only when the box cannot be had.
fn boots(arch: Arch, cmdline: &str) -> Result<BoxRuns> {
    if let Some(why) = missing_prerequisite(&[arch]) {
        bail!(why);
    }
    let payload = guest_payload(arch)?;
    let peer = peer(arch);
    let qemu_ready = peer.add_to_payload(arch, payload.path());

    let mut lab = Lab::start().map_err(|e| anyhow!(e))?;
    let name = format!("bench-vmm-{}", arch.name().replace('_', "-"));
    let mut edge = lab
        .boot_box_with_payload(arch, &name, Some(payload.path()))
        .map_err(|e| anyhow!(e))?;
    edge.wait_ready(BOOT_TIMEOUT).map_err(|e| anyhow!(e))?;
    let mut runs = BoxRuns {
        vmm: Ok(Vec::with_capacity(RUNS)),
        qemu: qemu_ready
            .and_then(|()| qemu_starts(&edge, &peer))
            .map(|()| Vec::new()),
    };
    let arch_name = arch.name();
    for run in 1..=RUNS {
        add_run(&mut runs.vmm, || {
            one_run(&edge, &script(run, cmdline), parse_run)
                .with_context(|| format!("VMM run {run} in the {arch_name} box"))
        });
        add_run(&mut runs.qemu, || {
            one_run(&edge, &peer.script(run, cmdline), qemu_peer::parse_run)
                .with_context(|| format!("QEMU run {run} in the {arch_name} box"))
        });
    }
    drop(edge);
    drop(lab);
    Ok(runs)
}

/// A payload directory with the guest image of `arch` (`vmlinuz`,
/// `initrd.img`).
fn guest_payload(arch: Arch) -> Result<tempfile::TempDir> {
    let guest = BootImage::load(arch, "guest").map_err(|e| anyhow!(e))?;
    let payload = tempfile::Builder::new()
        .prefix("mecvisor-bench-vmm-payload-")
        .tempdir()
        .context("creating the payload directory")?;
    for (from, to) in [(&guest.kernel, "vmlinuz"), (&guest.initramfs, "initrd.img")] {
        std::fs::copy(from, payload.path().join(to))
            .with_context(|| format!("copying {} to the payload", from.display()))?;
    }
    Ok(payload)
}

/// Checks that QEMU starts in the box (`--version`): an error with its
/// output (e.g. a missing library) if not.
fn qemu_starts(edge: &EdgeBox, peer: &Peer) -> Result<()> {
    let out = edge
        .run(&peer.version_command(), Duration::from_secs(120))
        .map_err(|e| anyhow!(e))?;
    if !out.success() {
        bail!(
            "{} does not start in the box (status {}): {}",
            peer.program,
            out.status,
            out.output.trim()
        );
    }
    Ok(())
}

/// Runs `script` in the box and parses its output with `parse`; a parse
/// error carries the output.
fn one_run(edge: &EdgeBox, script: &str, parse: fn(&str) -> Result<Boot>) -> Result<Boot> {
    let out = edge.run(script, GUEST_RUN).map_err(|e| anyhow!(e))?;
    parse(&out.output).with_context(|| format!("its output:\n{}", out.output))
}

/// Adds the boot `run` gives to `boots`, or turns `boots` into its error;
/// nothing runs once `boots` holds an error.
fn add_run(boots: &mut Result<Vec<Boot>>, run: impl FnOnce() -> Result<Boot>) {
    let Ok(list) = boots else {
        return;
    };
    match run() {
        Ok(boot) => list.push(boot),
        Err(err) => *boots = Err(err),
    }
}

/// The box script of run `run`: the start time, the VMM with its console
/// in `/tmp/vmlog.<run>`, its status, the marker line and the console's end.
fn script(run: usize, cmdline: &str) -> String {
    format!(
        "rm -rf /tmp/vmlog.{run}; \
         start=$(echo | ts '%.s'); \
         timeout -s TERM 580 edge-agent vmm \
         --kernel /mnt/payload/vmlinuz --initrd /mnt/payload/initrd.img \
         --memory-mib 128 --vcpus 1 --cmdline '{cmdline}' \
         --console-log /tmp/vmlog.{run} > /tmp/vmm.{run}.stderr 2>&1; \
         status=$?; \
         echo \"vmm-start=$start\"; echo \"vmm-status=$status\"; \
         grep -h '{MARKER}' /tmp/vmlog.{run}/container.log*; \
         echo '--- end of the console log'; tail -n 20 /tmp/vmlog.{run}/container.log; \
         echo '--- end of the VMM stderr'; tail -n 10 /tmp/vmm.{run}.stderr"
    )
}

/// The boot time and VMM status from a run's output.
fn parse_run(output: &str) -> Result<Boot> {
    let value = |key: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("no {key} line"))
    };
    let start = value("vmm-start=")?;
    let start = parse_epoch_micros(start).with_context(|| format!("bad start time {start:?}"))?;
    let status = value("vmm-status=")?;
    let status = status
        .parse()
        .with_context(|| format!("bad VMM status {status:?}"))?;
    let marker = output
        .lines()
        .filter(|l| l.contains(MARKER))
        .find_map(|l| parse_rfc3339_micros(l.split_whitespace().next()?))
        .with_context(|| format!("no timestamped {MARKER} line in the console log"))?;
    let micros = u64::try_from(marker - start)
        .map_err(|_| anyhow!("{MARKER} is stamped before the VMM started"))?;
    Ok(Boot {
        to_marker: Duration::from_micros(micros),
        status,
    })
}

/// The rows of one box: each monitor's median (or why not) and, when both
/// were measured, their ratio.
fn report(table: &mut Table, arch: Arch, runs: &BoxRuns) {
    let vmm = summary(table, &metric(arch), "the VMM", arch, &runs.vmm);
    let qemu = summary(table, &qemu_metric(arch), "QEMU", arch, &runs.qemu);
    if let (Some(vmm), Some(qemu)) = (vmm, qemu) {
        let ratio = vmm.as_secs_f64() / qemu.as_secs_f64();
        table.info(
            &ratio_metric(arch),
            format!(
                "{ratio:.2}x ({} vs {}; {})",
                secs(vmm),
                secs(qemu),
                if ratio < 1.0 {
                    "the VMM boots it faster"
                } else {
                    "QEMU boots it faster"
                }
            ),
        );
    }
}

/// Adds the row `row` for `who`'s boots (median, min and max) or its error
/// row; notes runs whose monitor did not exit 0. Returns the median.
fn summary(
    table: &mut Table,
    row: &str,
    who: &str,
    arch: Arch,
    boots: &Result<Vec<Boot>>,
) -> Option<Duration> {
    let boots = match boots {
        Ok(boots) => boots,
        Err(err) => {
            table.error(row, "", err);
            return None;
        }
    };
    let samples: Vec<Duration> = boots.iter().map(|b| b.to_marker).collect();
    let (Some(p50), Some(min), Some(max)) = (
        percentile(&samples, 50.0),
        samples.iter().min().copied(),
        samples.iter().max().copied(),
    ) else {
        return None;
    };
    table.info(
        row,
        format!("{} ({} / {})", secs(p50), secs(min), secs(max)),
    );
    for (run, boot) in boots.iter().enumerate() {
        if boot.status != 0 {
            table.note(format!(
                "{} run {}: {who} exited with status {} (0 expected after the guest's power-off)",
                arch.name(),
                run + 1,
                boot.status
            ));
        }
    }
    Some(p50)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Microseconds since the epoch from busybox `ts '%.s'` (`SECONDS.FRACTION`).
pub(super) fn parse_epoch_micros(text: &str) -> Option<i64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    Some(secs.parse::<i64>().ok()? * 1_000_000 + fraction_micros(frac)?)
}

/// Microseconds since the epoch from a UTC RFC 3339 time as the console log
/// writes it: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(secs * 1_000_000 + fraction_micros(frac)?)
}

/// Decimal fraction digits as microseconds (extra digits dropped).
fn fraction_micros(digits: &str) -> Option<i64> {
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let six: String = digits.chars().chain("000000".chars()).take(6).collect();
    six.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm, the inverse of the one the console log's writer uses).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn parses_the_console_logs_timestamps() {
        for micros in [
            0_i64,
            1_234_567_000,
            951_782_400_123_000,
            1_795_513_675_507_000,
        ] {
            let time = UNIX_EPOCH + Duration::from_micros(micros as u64);
            let text = containers::logs::rfc3339(time);
            assert_eq!(parse_rfc3339_micros(&text), Some(micros), "{text}");
        }
        assert_eq!(
            parse_rfc3339_micros("2026-11-24T09:50:43.821193Z"),
            Some(1_795_513_843_821_193)
        );
        assert_eq!(parse_rfc3339_micros("2026-11-24 09:50:43Z"), None);
        assert_eq!(parse_rfc3339_micros("stdout"), None);
        let now = SystemTime::now();
        let text = containers::logs::rfc3339(now);
        let parsed = parse_rfc3339_micros(&text).expect("parses");
        let exact = now
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_micros() as i64;
        assert!((exact - parsed).abs() < 1000, "{text}");
    }

    #[test]
    fn parses_busybox_ts_seconds() {
        assert_eq!(
            parse_epoch_micros("1795513675.507544"),
            Some(1_795_513_675_507_544)
        );
        assert_eq!(parse_epoch_micros("12.5"), Some(12_500_000));
        assert_eq!(parse_epoch_micros("12"), Some(12_000_000));
        assert_eq!(parse_epoch_micros("%.s"), None);
    }

    #[test]
    fn a_run_gives_the_time_from_start_to_the_marker() {
        let out = "vmm-start=1795513675.507544\nvmm-status=0\n\
                   2026-11-24T09:48:05.123Z stdout MECVISOR-GUEST-BOOTED x86_64 6.1.0-28-cloud-amd64\n\
                   --- end of the console log\n";
        let boot = parse_run(out).expect("parses");
        assert_eq!(boot.to_marker, Duration::from_micros(9_615_456));
        assert_eq!(boot.status, 0);
        let err = parse_run("vmm-start=1795513675.5\nvmm-status=1\n").expect_err("no marker");
        assert!(format!("{err}").contains(MARKER), "{err}");
    }
}
