//! The figures measured on this host with the tiny guest: the VMM's RSS
//! without guest memory, and process start to the first guest instruction.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::elf;
use crate::bench::table::Table;
use crate::procs::tail;
use crate::timing::{ms, percentile};

/// Guest memory of the tiny guest, as in the brief's Firecracker comparison.
const GUEST_MIB: u64 = 256;
/// Firecracker's published figure: "memory overhead < 5 MiB".
const FIRECRACKER_OVERHEAD_KIB: u64 = 5 * 1024;
/// How long the VMM idles after the guest's first byte before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Runs of the start-to-first-instruction measurement.
const START_RUNS: usize = 20;
/// The DESIGN target: the guest runs within single-digit milliseconds.
const START_TARGET: Duration = Duration::from_millis(10);
/// How long the guest's first byte may take (generous: a cold page cache).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the VMM may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

const RSS_METRIC: &str =
    "VMM RSS without guest RAM (static edge-box binary, tiny guest, 256 MiB, 1 vCPU)";
const RSS_TARGET: &str = "< 5 MiB (Firecracker)";
const START_METRIC: &str = "process start to first guest instruction, p50";
const START_TARGET_TEXT: &str = "< 10 ms";

/// Adds the host rows; what cannot be measured becomes ERROR rows.
pub fn measure(table: &mut Table) {
    let setup = match setup() {
        Ok(setup) => setup,
        Err(err) => {
            table.error(RSS_METRIC, RSS_TARGET, &err);
            table.error(START_METRIC, START_TARGET_TEXT, &err);
            return;
        }
    };
    if let Err(err) = rss(&setup, table) {
        table.error(RSS_METRIC, RSS_TARGET, &err);
    }
    match start_latency(&setup) {
        Ok(samples) => report_start(table, &samples),
        Err(err) => table.error(START_METRIC, START_TARGET_TEXT, &err),
    }
}

/// The edge-box `edge-agent` (static, musl, release: the binary that ships)
/// and the tiny guest written to a scratch dir.
struct Setup {
    agent: PathBuf,
    kernel: PathBuf,
    dir: tempfile::TempDir,
}

fn setup() -> Result<Setup> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("cannot open /dev/kvm (needs root or the kvm group)")?;
    // The binary edge boxes run, not the host's glibc build: its RSS is
    // what a box pays per VM.
    #[cfg(target_arch = "x86_64")]
    let arch = crate::cross::Arch::X86_64;
    #[cfg(target_arch = "aarch64")]
    let arch = crate::cross::Arch::Aarch64;
    let agent = crate::cross::build_checked(arch)?.join("edge-agent");
    let dir = tempfile::Builder::new()
        .prefix("mecvisor-bench-vmm-")
        .tempdir()
        .context("creating a scratch directory")?;
    let kernel = dir.path().join("tiny-guest.elf");
    std::fs::write(&kernel, elf::tiny_guest())
        .with_context(|| format!("writing {}", kernel.display()))?;
    Ok(Setup { agent, kernel, dir })
}

/// Measures RSS once the guest runs, then checks that SIGTERM ends the VMM
/// with status 0.
fn rss(setup: &Setup, table: &mut Table) -> Result<()> {
    let mut vm = TinyVm::spawn(setup, "rss")?;
    vm.wait_first_byte()?;
    thread::sleep(SETTLE);
    vm.ensure_running()?;
    let path = format!("/proc/{}/smaps", vm.child.id());
    let smaps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let split = split_rss(&parse_smaps(&smaps), GUEST_MIB * 1024)?;
    let overhead = split.total_kib.saturating_sub(split.guest_kib);
    table.check(
        RSS_METRIC,
        format!(
            "{} ({:.2}x Firecracker's 5 MiB)",
            mib(overhead),
            overhead as f64 / FIRECRACKER_OVERHEAD_KIB as f64
        ),
        RSS_TARGET,
        overhead < FIRECRACKER_OVERHEAD_KIB,
    );
    table.info(
        &format!(
            "VMM process RSS, total (guest RAM resident: {} KiB)",
            split.guest_kib
        ),
        mib(split.total_kib),
    );
    let stopping = Instant::now();
    let status = vm.terminate()?;
    table.check(
        "SIGTERM ends the VMM",
        format!("{status} after {}", ms(stopping.elapsed())),
        "exit status 0",
        status.success(),
    );
    Ok(())
}

/// Process start to the guest's first byte on the stdout pipe, per run.
fn start_latency(setup: &Setup) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(START_RUNS);
    for run in 0..START_RUNS {
        let mut vm = TinyVm::spawn(setup, &format!("start-{run}"))?;
        samples.push(vm.wait_first_byte()?);
        let status = vm.terminate()?;
        if !status.success() {
            bail!("run {run}: the VMM ended with {status} on SIGTERM");
        }
    }
    Ok(samples)
}

fn report_start(table: &mut Table, samples: &[Duration]) {
    let (Some(p50), Some(p90)) = (percentile(samples, 50.0), percentile(samples, 90.0)) else {
        return;
    };
    table.info(
        &format!("process start to first guest instruction, p50 / p90 of {START_RUNS}"),
        format!("{} / {}", ms(p50), ms(p90)),
    );
    table.check(START_METRIC, ms(p50), START_TARGET_TEXT, p50 < START_TARGET);
    table.note(
        "first guest instruction: from spawning `edge-agent vmm` until the byte the tiny \
         guest's first instructions write to COM1 is readable on the VMM's stdout pipe \
         (Firecracker's published boot time is for a whole kernel, so no peer figure)"
            .to_string(),
    );
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// One `edge-agent vmm` running the tiny guest; its stdout is read by a
/// thread that reports when the first byte arrived. Killed when dropped.
struct TinyVm {
    child: Child,
    started: Instant,
    stderr_log: PathBuf,
    first_byte: mpsc::Receiver<(Instant, u8)>,
    reader: Option<JoinHandle<()>>,
}

impl TinyVm {
    /// Starts the VMM on the tiny guest; its stderr goes to a log named
    /// after `label` in the scratch directory.
    fn spawn(setup: &Setup, label: &str) -> Result<TinyVm> {
        let stderr_log = setup.dir.path().join(format!("vmm-{label}.stderr"));
        let stderr = std::fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = Command::new(&setup.agent);
        cmd.arg("vmm")
            .arg("--kernel")
            .arg(&setup.kernel)
            .args(["--memory-mib", &GUEST_MIB.to_string(), "--vcpus", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} vmm", setup.agent.display()))?;
        let mut stdout = child.stdout.take().context("the VMM's stdout pipe")?;
        let (tx, first_byte) = mpsc::channel();
        // Reads until EOF so the VMM never writes into a closed pipe.
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut tx = Some(tx);
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send((Instant::now(), buf[0]));
                }
            }
        });
        Ok(TinyVm {
            child,
            started,
            stderr_log,
            first_byte,
            reader: Some(reader),
        })
    }

    /// Waits for the guest's first byte and returns the time since spawn.
    fn wait_first_byte(&mut self) -> Result<Duration> {
        match self.first_byte.recv_timeout(FIRST_BYTE_TIMEOUT) {
            Ok((at, byte)) if byte == elf::MARKER => Ok(at.duration_since(self.started)),
            Ok((_, byte)) => Err(self.failure(&format!(
                "the guest's first byte was {byte:#04x}, not {:?}",
                char::from(elf::MARKER)
            ))),
            Err(_) => Err(self.failure(&format!(
                "no byte from the guest on stdout within {}s",
                FIRST_BYTE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Fails with the VMM's stderr when it has exited.
    fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("the VMM exited ({status})"))),
            Err(err) => Err(anyhow!(err).context("checking whether the VMM runs")),
        }
    }

    /// An error naming `what` with the end of the VMM's stderr.
    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!("{what}; stderr of the VMM:\n{}", tail(&self.stderr_log, 15))
    }

    /// Sends SIGTERM and waits for the exit; fails when the VMM had already
    /// exited or does not exit in time.
    fn terminate(&mut self) -> Result<ExitStatus> {
        self.ensure_running()?;
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("sending SIGTERM to the VMM")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the VMM")? {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "the VMM still ran {}s after SIGTERM",
                    STOP_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for TinyVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// One mapping of /proc/PID/smaps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    /// Backed by no file and unnamed (not `[heap]`, `[stack]`, ...).
    anonymous: bool,
    size_kib: u64,
    rss_kib: u64,
}

/// The mappings of a /proc/PID/smaps text.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        if is_range(first) {
            // address perms offset dev inode [path]
            let anonymous = words.nth(4).is_none();
            maps.push(Mapping {
                anonymous,
                size_kib: 0,
                rss_kib: 0,
            });
            continue;
        }
        let value = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        match (first, maps.last_mut()) {
            ("Size:", Some(map)) => map.size_kib = value().unwrap_or(0),
            ("Rss:", Some(map)) => map.rss_kib = value().unwrap_or(0),
            _ => {}
        }
    }
    maps
}

/// `start-end` in hex: the first word of a mapping's header line.
fn is_range(word: &str) -> bool {
    word.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.chars().chain(b.chars()).all(|c| c.is_ascii_hexdigit())
    })
}

/// Total RSS and the resident part of the guest RAM.
#[derive(Debug, PartialEq, Eq)]
struct RssSplit {
    total_kib: u64,
    guest_kib: u64,
}

/// Splits the RSS into guest RAM (the one anonymous mapping of exactly the
/// guest's size) and everything else.
fn split_rss(maps: &[Mapping], guest_kib: u64) -> Result<RssSplit> {
    let total_kib = maps.iter().map(|m| m.rss_kib).sum();
    let guest: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.anonymous && m.size_kib == guest_kib)
        .collect();
    match guest.as_slice() {
        [ram] => Ok(RssSplit {
            total_kib,
            guest_kib: ram.rss_kib,
        }),
        [] => {
            let largest = maps
                .iter()
                .filter(|m| m.anonymous)
                .map(|m| m.size_kib)
                .max()
                .unwrap_or(0);
            bail!(
                "no anonymous mapping of {guest_kib} KiB (the guest RAM) in smaps; \
                 the largest anonymous mapping is {largest} KiB"
            )
        }
        more => bail!(
            "{} anonymous mappings of {guest_kib} KiB in smaps: cannot tell which is the guest RAM",
            more.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55dbca56a000-55dbca799000 r--p 00000000 fe:00 5447785                    /usr/bin/edge-agent
Size:               2236 kB
Rss:                 920 kB
Pss:                 920 kB
7f1089000000-7f1099000000 rw-p 00000000 00:00 0 
Size:             262144 kB
KernelPageSize:        4 kB
Rss:                  32 kB
VmFlags: rd wr mr mw me ac sd
7f10a0000000-7f10a0021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                  12 kB
7ffc1c0d5000-7ffc1c0f6000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
";

    #[test]
    fn parses_mappings_and_tells_anonymous_ones() {
        let maps = parse_smaps(SMAPS);
        let expect = |anonymous, size_kib, rss_kib| Mapping {
            anonymous,
            size_kib,
            rss_kib,
        };
        assert_eq!(
            maps,
            vec![
                expect(false, 2236, 920),
                expect(true, 262_144, 32),
                expect(true, 132, 12),
                expect(false, 132, 16),
            ]
        );
    }

    #[test]
    fn guest_ram_is_the_anonymous_mapping_of_its_size() {
        let maps = parse_smaps(SMAPS);
        let split = split_rss(&maps, 256 * 1024).expect("guest RAM found");
        assert_eq!(
            split,
            RssSplit {
                total_kib: 920 + 32 + 12 + 16,
                guest_kib: 32
            }
        );
        let err = split_rss(&maps, 128 * 1024).expect_err("no such mapping");
        assert!(format!("{err}").contains("262144 KiB"), "{err}");
    }
}
