//! One emulated edge box: a QEMU machine with a state disk, a tap on the lab
//! bridge, a console log and a command channel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mecvisor_e2e::Child;

use crate::images::BootImage;
use crate::lab::LabNet;
use crate::qemu::{MachineSpec, Net};
use crate::shell::{self, CommandOutput};
use crate::Arch;

/// Size of the state disk (ext4, made on the host).
const STATE_DISK_MIB: u64 = 64;
/// Printed by the box's rcS when setup is done.
pub const READY_MARKER: &str = "mecvisor-init: ready";

/// A running (or powered-off) edge box.
pub struct EdgeBox {
    /// Device name of its agent.
    pub name: String,
    /// Architecture.
    pub arch: Arch,
    /// Its tap on the lab bridge.
    pub tap: String,
    spec: MachineSpec,
    qemu: Option<Child>,
    /// Console log length when the current boot started.
    boot_offset: u64,
    /// When QEMU was last started.
    powered_on: Instant,
    boots: u32,
    net: Rc<LabNet>,
}

/// What the lab decided for a new box.
pub(crate) struct BoxSetup<'a> {
    /// Architecture.
    pub arch: Arch,
    /// Device name.
    pub name: &'a str,
    /// Directory for its disks and logs.
    pub dir: &'a Path,
    /// Its tap on the lab bridge.
    pub tap: String,
    /// Last byte of its address (also of its MAC).
    pub host: u8,
    /// Kernel command line after `console=`.
    pub append: String,
    /// Directory of files for its payload disk, if any.
    pub payload: Option<&'a Path>,
}

impl EdgeBox {
    /// Makes the state disk (and payload disk) and starts the machine.
    pub(crate) fn boot(net: Rc<LabNet>, setup: BoxSetup<'_>) -> Result<Self, String> {
        let BoxSetup {
            arch,
            name,
            dir,
            tap,
            host,
            append,
            payload,
        } = setup;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let disk = dir.join("state.img");
        make_state_disk(&disk)?;
        let payload = match payload {
            Some(files) => {
                let image = dir.join("payload.img");
                make_payload_disk(&image, files)?;
                Some(image)
            }
            None => None,
        };
        let spec = MachineSpec {
            arch,
            image: BootImage::load(arch, "edge-box")?,
            append,
            memory_mib: 512,
            disk: Some(disk),
            payload,
            net: Net::Tap {
                netns: net.netns.clone(),
                ifname: tap.clone(),
                mac: format!("52:54:00:77:00:{host:02x}"),
            },
            console_log: dir.join("console.log"),
            shell_socket: Some(dir.join("shell.sock")),
            no_reboot: false,
        };
        let mut edge_box = EdgeBox {
            name: name.to_string(),
            arch,
            tap,
            spec,
            qemu: None,
            boot_offset: 0,
            powered_on: Instant::now(),
            boots: 0,
            net,
        };
        edge_box.power_on()?;
        Ok(edge_box)
    }

    fn power_on(&mut self) -> Result<(), String> {
        self.boots += 1;
        let note = format!(
            "\n===== hil: power on #{} of {} =====\n",
            self.boots, self.name
        );
        append(&self.spec.console_log, &note)?;
        self.boot_offset = file_len(&self.spec.console_log);
        if let Some(socket) = &self.spec.shell_socket {
            let _ = std::fs::remove_file(socket);
        }
        let stderr = std::fs::File::create(self.dir().join("qemu.stderr"))
            .map_err(|e| format!("qemu stderr file: {e}"))?;
        let mut cmd = self.spec.command();
        cmd.stderr(stderr);
        self.powered_on = Instant::now();
        self.qemu = Some(Child::spawn(self.arch.qemu_binary(), &mut cmd));
        Ok(())
    }

    /// The box's directory (disk, console log, sockets).
    pub fn dir(&self) -> PathBuf {
        self.spec
            .console_log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Where the console log ends now, in bytes: a mark for
    /// [`EdgeBox::console_since`] and [`EdgeBox::logged_since`].
    pub fn console_mark(&self) -> u64 {
        file_len(&self.spec.console_log)
    }

    /// The console output after byte `mark` (invalid UTF-8 replaced).
    pub fn console_since(&self, mark: u64) -> String {
        let all = std::fs::read(&self.spec.console_log).unwrap_or_default();
        let start = usize::try_from(mark).unwrap_or(usize::MAX).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    /// The whole console log (every boot).
    pub fn console_text(&self) -> String {
        self.console_since(0)
    }

    /// The console output of the current boot.
    pub fn boot_console(&self) -> String {
        self.console_since(self.boot_offset)
    }

    /// Waits up to `timeout` for `needle` on the console after byte `mark`
    /// (e.g. a line the agent logs); returns whether it came.
    pub fn logged_since(&self, mark: u64, needle: &str, timeout: Duration) -> bool {
        mecvisor_e2e::wait_until(timeout, || {
            self.console_since(mark).contains(needle).then_some(())
        })
        .is_some()
    }

    /// Waits until the current boot printed `needle` on the console and
    /// returns the time since power-on; fails (with the console) when QEMU
    /// exits or `timeout` passes.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.boot_console().contains(needle) {
                return Ok(self.powered_on.elapsed());
            }
            if !self.is_running() {
                return Err(format!(
                    "{}: QEMU exited before {needle:?}; stderr: {}\nconsole:\n{}",
                    self.name,
                    std::fs::read_to_string(self.dir().join("qemu.stderr")).unwrap_or_default(),
                    self.boot_console()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{}: no {needle:?} on the console after {timeout:?}; console:\n{}",
            self.name,
            self.boot_console()
        ))
    }

    /// Waits for the box's setup to finish (the agent is being started).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        self.wait_console(READY_MARKER, timeout)
    }

    /// Whether QEMU is running.
    pub fn is_running(&mut self) -> bool {
        self.qemu.as_mut().is_some_and(|q| q.is_running())
    }

    /// Runs a shell script inside the box over the command channel.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<CommandOutput, String> {
        let socket = self
            .spec
            .shell_socket
            .as_ref()
            .ok_or("this box has no command channel")?;
        shell::run(socket, script, timeout).map_err(|e| format!("{}: {e}", self.name))
    }

    /// Runs a shell script inside the box (60 s at most) and returns its
    /// output; a broken command channel panics with the boot console (for
    /// tests).
    pub fn sh(&self, script: &str) -> String {
        self.run(script, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", self.boot_console()))
            .output
    }

    /// Kills the agent (`edge-agent run`, matched on its whole command line:
    /// container monitors and VMMs are edge-agent too) with SIGKILL; the
    /// box's init starts it again. Returns the console's mark before the
    /// kill, to find what the new agent logs.
    pub fn kill_agent(&self) -> u64 {
        let mark = self.console_mark();
        self.sh(
            "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null | \
             grep -q '^/usr/bin/edge-agent run ' && kill -9 ${d#/proc/}; done; true",
        );
        mark
    }

    /// Cuts the box's link (its tap goes down; the box sees nothing, like a
    /// cable pulled at the far end).
    pub fn cut_link(&self) -> Result<(), String> {
        self.net.ip(&["link", "set", &self.tap, "down"])
    }

    /// Restores the link cut by [`EdgeBox::cut_link`].
    pub fn restore_link(&self) -> Result<(), String> {
        self.net.ip(&["link", "set", &self.tap, "up"])
    }

    /// Hard power cycle: QEMU is killed (no shutdown inside the box) and the
    /// machine started again with the same state disk. A cut link stays cut.
    pub fn power_cycle(&mut self) -> Result<(), String> {
        self.power_off();
        self.power_on()
    }

    /// Pulls the plug (SIGKILL to QEMU).
    pub fn power_off(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            qemu.kill();
        }
    }
}

impl Drop for EdgeBox {
    fn drop(&mut self) {
        self.power_off();
    }
}

/// Creates a sparse raw disk with an empty ext4 filesystem.
fn make_state_disk(path: &Path) -> Result<(), String> {
    mkfs(path, STATE_DISK_MIB << 20, "mecvisor-state", None)
}

/// Creates an ext4 disk holding the files of `files` (mounted read-only at
/// /mnt/payload in the box).
fn make_payload_disk(path: &Path, files: &Path) -> Result<(), String> {
    let bytes = tree_bytes(files)?;
    mkfs(
        path,
        bytes * 2 + (16 << 20),
        "mecvisor-payload",
        Some(files),
    )
}

/// Disk space the files below `dir` take: each file rounded up to 4 KiB
/// blocks, plus a block per entry (directories, symlinks, inodes).
fn tree_bytes(dir: &Path) -> Result<u64, String> {
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        bytes += 4096;
        if meta.is_dir() {
            bytes += tree_bytes(&entry.path())?;
        } else if meta.is_file() {
            bytes += meta.len().next_multiple_of(4096);
        }
    }
    Ok(bytes)
}

fn mkfs(path: &Path, size: u64, label: &str, files: Option<&Path>) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", label]);
    if let Some(files) = files {
        cmd.arg("-d").arg(files);
    }
    let out = cmd
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
