//! Test fixture: a private network namespace with a veth pair whose one end
//! (`up0`, 192.168.77.2/24) stands in for a box's uplink. Fixtures are made
//! with iproute2 (the code under test uses netlink only); the namespace and
//! everything in it is deleted when the fixture drops, also on panic.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace for one test.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates the namespace with lo up and the uplink `up0`.
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mecv-slice-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
        ns.ip(&["addr", "add", "192.168.77.2/24", "dev", "up0"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["link", "set", "up0p", "up"]);
        ns
    }

    /// Path for setns.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `ip -n <ns> <args>`; whether it succeeded.
    pub fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `ip -o link` of the namespace: one line per link, with aliases.
    pub fn links_text(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "-d", "link", "show"])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Link names in the namespace, sorted.
    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .links_text()
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why these tests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "`ip netns` does not work here".into())
}

/// Whether the kernel can make 802.1Q VLAN links (this development host's
/// kernel cannot; the emulated edge boxes can).
pub fn vlan_supported(ns: &Netns) -> bool {
    let ok = ns.try_ip(&[
        "link", "add", "link", "up0", "name", "vprobe", "type", "vlan", "id", "4094",
    ]);
    if ok {
        ns.ip(&["link", "del", "vprobe"]);
    }
    ok
}
