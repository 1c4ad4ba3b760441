//! The lab network: a private network namespace with a bridge on which the
//! fleet controller (and its embedded broker) listens, and one tap per box.
//! Nothing outside the namespace is touched; deleting the namespace removes
//! the bridge and every tap with it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};

use mecvisor_e2e::site::{Broker, Controller};

use crate::edge_box::{BoxSetup, EdgeBox};
use crate::Arch;

/// The bridge's address: where boxes reach the controller.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Prefix length of the lab subnet.
pub const PREFIX: u8 = 24;
/// MQTT port of the controller's embedded broker on the bridge.
pub const MQTT_PORT: u16 = 1883;

const NETNS_PREFIX: &str = "mecv-hil-";

/// The namespace itself; deleted when the last holder (lab, boxes) drops.
pub struct LabNet {
    /// Namespace name, `mecv-hil-<pid>-<n>`.
    pub netns: String,
}

impl LabNet {
    fn create() -> Result<Self, String> {
        remove_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let netns = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &netns])?;
        let net = LabNet { netns };
        let bridge = format!("{BRIDGE_IP}/{PREFIX}");
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["link", "add", "br0", "type", "bridge"])?;
        net.ip(&["addr", "add", &bridge, "dev", "br0"])?;
        net.ip(&["link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// Runs `ip -n <netns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        delete_namespace(&self.netns);
    }
}

/// Kills whatever still runs in the namespace (e.g. a controller whose test
/// process was killed), then deletes it with its bridge and taps.
fn delete_namespace(netns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = ip(&["netns", "del", netns]);
}

/// A lab: namespace + bridge + fleet controller, and the boxes on it.
pub struct Lab {
    /// The fleet controller, inside the namespace.
    pub controller: Controller,
    net: Rc<LabNet>,
    dir: tempfile::TempDir,
    next_host: u8,
}

impl Lab {
    /// Creates the namespace and bridge and starts the controller on it.
    pub fn start() -> Result<Self, String> {
        let net = Rc::new(LabNet::create()?);
        let mut dir = tempfile::Builder::new()
            .prefix("mecvisor-hil-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if std::env::var_os("MECVISOR_HIL_KEEP").is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!(
                "hil: keeping {} (MECVISOR_HIL_KEEP=1)",
                dir.path().display()
            );
        }
        let broker = Broker::EmbeddedOn {
            addr: SocketAddr::V4(SocketAddrV4::new(BRIDGE_IP, MQTT_PORT)),
        };
        let controller = Controller::start_in_netns(dir.path(), &net.netns, broker);
        Ok(Lab {
            controller,
            net,
            dir,
            next_host: 10,
        })
    }

    /// The lab's working directory (controller data, box disks and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespace name.
    pub fn netns(&self) -> &str {
        &self.net.netns
    }

    /// Creates a tap for a new box and boots it; returns once QEMU runs (use
    /// [`EdgeBox::wait_ready`] to wait for the agent).
    pub fn boot_box(&mut self, arch: Arch, name: &str) -> Result<EdgeBox, String> {
        self.boot_box_with_payload(arch, name, None)
    }

    /// Like [`Lab::boot_box`], with the files of the directory `payload`
    /// on a second disk, mounted read-only at /mnt/payload in the box.
    pub fn boot_box_with_payload(
        &mut self,
        arch: Arch,
        name: &str,
        payload: Option<&Path>,
    ) -> Result<EdgeBox, String> {
        self.boot_box_with(arch, name, payload, "")
    }

    /// Like [`Lab::boot_box_with_payload`], with `extra` appended to the
    /// kernel command line (e.g. `mecvisor.slicing=eth0:100000`).
    pub fn boot_box_with(
        &mut self,
        arch: Arch,
        name: &str,
        payload: Option<&Path>,
        extra: &str,
    ) -> Result<EdgeBox, String> {
        let host = self.next_host;
        self.next_host += 1;
        let tap = format!("tap{host}");
        self.net.ip(&["tuntap", "add", &tap, "mode", "tap"])?;
        self.net.ip(&["link", "set", &tap, "master", "br0"])?;
        self.net.ip(&["link", "set", &tap, "up"])?;
        let address = Ipv4Addr::new(10, 77, 0, host);
        let key = self.controller.public_key();
        let broker = format!("mqtt://{BRIDGE_IP}:{MQTT_PORT}");
        let append = format!(
            "panic=-1 loglevel=4 mecvisor.device={name} mecvisor.key={key} \
             mecvisor.broker={broker} mecvisor.ip={address}/{PREFIX} mecvisor.gw={BRIDGE_IP} {extra}"
        );
        EdgeBox::boot(
            Rc::clone(&self.net),
            BoxSetup {
                arch,
                name,
                dir: &self.dir.path().join(name),
                tap,
                host,
                append,
                payload,
            },
        )
    }

    /// The controller's log (for failure messages).
    pub fn controller_log(&self) -> String {
        self.controller.log_text()
    }

    /// Fails a test about `edge`: panics with `what`, the box's console and
    /// the controller's log.
    pub fn fail(&self, edge: &EdgeBox, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- box console ---\n{}\n--- controller log ---\n{}",
            edge.name,
            edge.console_text(),
            self.controller_log()
        )
    }
}

/// Runs `ip <args>`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes lab namespaces left by test processes that no longer exist
/// (e.g. killed by a CI timeout), so the next run starts clean.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                delete_namespace(name);
            }
        }
    }
}
